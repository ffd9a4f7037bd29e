//! A ring request's bytes as a dispatcher [`Op`]: the per-opcode `fuse_*_in` struct from
//! `op_in` (exactly as long as the kernel sent it), names (NUL-terminated), WRITE data and
//! xattr values from the payload (uapi linux/fuse.h; the layout facts are in
//! `sys/fuse_abi.rs`). `None`: an opcode the dispatcher does not serve, or bytes that do
//! not add up; the request is answered ENOSYS or EIO (see `serve.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::RawRequest;
use crate::dispatch::{Op, TimeOrNow};
use crate::sys::fuse_abi::{self as abi, opcode, read, split_name};

/// `fuse_getattr_in.getattr_flags`: `fh` is set.
const FUSE_GETATTR_FH: u32 = 1;
/// `fuse_read_in.read_flags` / `fuse_write_in.write_flags`: `lock_owner` is set.
const FUSE_READ_LOCKOWNER: u32 = 2;
const FUSE_WRITE_LOCKOWNER: u32 = 2;
/// `fuse_release_in.release_flags`.
const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 2;
/// `fuse_fsync_in.fsync_flags`: data only.
const FUSE_FSYNC_FDATASYNC: u32 = 1;

/// `fuse_setattr_in.valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const FATTR_LOCKOWNER: u32 = 1 << 9;
const FATTR_CTIME: u32 = 1 << 10;
const FATTR_KILL_SUIDGID: u32 = 1 << 11;

/// Whether the dispatcher serves `opcode` (over the ring; FORGET, BATCH_FORGET and
/// INTERRUPT come over /dev/fuse, INIT and DESTROY are fuser's).
pub fn served(op: u32) -> bool {
    use opcode::*;
    matches!(
        op,
        LOOKUP
            | GETATTR
            | SETATTR
            | READLINK
            | SYMLINK
            | MKNOD
            | MKDIR
            | UNLINK
            | RMDIR
            | RENAME
            | RENAME2
            | LINK
            | OPEN
            | READ
            | WRITE
            | STATFS
            | RELEASE
            | FSYNC
            | SETXATTR
            | GETXATTR
            | LISTXATTR
            | REMOVEXATTR
            | FLUSH
            | OPENDIR
            | READDIR
            | READDIRPLUS
            | RELEASEDIR
            | FSYNCDIR
            | ACCESS
            | CREATE
            | FALLOCATE
            | LSEEK
            | IOCTL
            | COPY_FILE_RANGE
    )
}

/// The payload without its request extensions (`total_extlen` 8-byte units at its end).
fn args<'a>(r: &RawRequest<'a>) -> Option<&'a [u8]> {
    let ext = r.total_extlen as usize * 8;
    r.payload.get(..r.payload.len().checked_sub(ext)?)
}

/// The first NUL-terminated name of `bytes`, and what follows it.
fn name(bytes: &[u8]) -> Option<(&OsStr, &[u8])> {
    let (n, rest) = split_name(bytes)?;
    Some((OsStr::from_bytes(n), rest))
}

/// The one name a name-only request carries.
fn only_name<'a>(r: &RawRequest<'a>) -> Option<&'a OsStr> {
    name(args(r)?).map(|(n, _)| n)
}

/// Decodes a served opcode's request (see the module comment).
pub fn decode<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    match r.opcode {
        LOOKUP => Some(Op::Lookup {
            name: only_name(r)?,
        }),
        GETATTR => {
            let g: abi::FuseGetattrIn = read(r.op_in)?;
            let fh = (g.getattr_flags & FUSE_GETATTR_FH != 0).then_some(g.fh);
            Some(Op::Getattr { fh })
        }
        SETATTR => setattr(read(r.op_in)?),
        READLINK => Some(Op::Readlink),
        STATFS => Some(Op::Statfs),
        UNLINK => Some(Op::Unlink {
            name: only_name(r)?,
        }),
        RMDIR => Some(Op::Rmdir {
            name: only_name(r)?,
        }),
        REMOVEXATTR => Some(Op::Removexattr {
            name: only_name(r)?,
        }),
        SYMLINK | MKNOD | MKDIR | CREATE | LINK | RENAME | RENAME2 => names_op(r),
        OPEN | READ | WRITE | RELEASE | FLUSH | FSYNC | FALLOCATE | LSEEK | IOCTL
        | COPY_FILE_RANGE => file_op(r),
        OPENDIR | READDIR | READDIRPLUS | RELEASEDIR | FSYNCDIR => dir_op(r),
        SETXATTR | GETXATTR | LISTXATTR | ACCESS => xattr_op(r),
        _ => None,
    }
}

fn setattr<'a>(s: abi::FuseSetattrIn) -> Option<Op<'a>> {
    let v = s.valid;
    let on = |bit: u32| v & bit != 0;
    let time = |bit: u32, now: u32, secs: u64, nsecs: u32| {
        on(bit).then(|| {
            if on(now) {
                TimeOrNow::Now
            } else {
                TimeOrNow::At {
                    secs: secs as i64,
                    nsecs,
                }
            }
        })
    };
    Some(Op::Setattr {
        fh: on(FATTR_FH).then_some(s.fh),
        mode: on(FATTR_MODE).then_some(s.mode),
        uid: on(FATTR_UID).then_some(s.uid),
        gid: on(FATTR_GID).then_some(s.gid),
        size: on(FATTR_SIZE).then_some(s.size),
        atime: time(FATTR_ATIME, FATTR_ATIME_NOW, s.atime, s.atimensec),
        mtime: time(FATTR_MTIME, FATTR_MTIME_NOW, s.mtime, s.mtimensec),
        ctime: time(FATTR_CTIME, 0, s.ctime, s.ctimensec),
        lock_owner: on(FATTR_LOCKOWNER).then_some(s.lock_owner),
        kill_suidgid: on(FATTR_KILL_SUIDGID),
    })
}

/// The requests that create or move names.
fn names_op<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    let a = args(r)?;
    let (first, rest) = name(a)?;
    match r.opcode {
        SYMLINK => Some(Op::Symlink {
            name: first,
            target: name(rest)?.0,
        }),
        MKNOD => {
            let m: abi::FuseMknodIn = read(r.op_in)?;
            Some(Op::Mknod {
                name: first,
                mode: m.mode,
                rdev: m.rdev,
                umask: m.umask,
            })
        }
        MKDIR => {
            let m: abi::FuseMkdirIn = read(r.op_in)?;
            Some(Op::Mkdir {
                name: first,
                mode: m.mode,
                umask: m.umask,
            })
        }
        CREATE => {
            let c: abi::FuseCreateIn = read(r.op_in)?;
            Some(Op::Create {
                name: first,
                flags: c.flags as i32,
                mode: c.mode,
                umask: c.umask,
            })
        }
        LINK => Some(Op::Link {
            oldnodeid: read::<abi::FuseLinkIn>(r.op_in)?.oldnodeid,
            newname: first,
        }),
        // RENAME's fuse_rename_in is RENAME2's without the flags.
        RENAME | RENAME2 => {
            let newdir = read::<abi::FuseLinkIn>(r.op_in)?.oldnodeid;
            let flags = match r.opcode {
                RENAME2 => read::<abi::FuseRename2In>(r.op_in)?.flags,
                _ => 0,
            };
            Some(Op::Rename {
                newdir,
                name: first,
                newname: name(rest)?.0,
                flags,
            })
        }
        _ => None,
    }
}

/// The requests on an open file.
fn file_op<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    match r.opcode {
        OPEN => Some(Op::Open {
            flags: read::<abi::FuseOpenIn>(r.op_in)?.flags as i32,
        }),
        READ => {
            let i: abi::FuseReadIn = read(r.op_in)?;
            Some(Op::Read {
                fh: i.fh,
                offset: i.offset,
                size: i.size,
                flags: i.flags as i32,
                lock_owner: (i.read_flags & FUSE_READ_LOCKOWNER != 0).then_some(i.lock_owner),
            })
        }
        WRITE => {
            let i: abi::FuseWriteIn = read(r.op_in)?;
            Some(Op::Write {
                fh: i.fh,
                offset: i.offset,
                data: args(r)?.get(..i.size as usize)?,
                write_flags: i.write_flags,
                flags: i.flags as i32,
                lock_owner: (i.write_flags & FUSE_WRITE_LOCKOWNER != 0).then_some(i.lock_owner),
            })
        }
        RELEASE => {
            let i: abi::FuseReleaseIn = read(r.op_in)?;
            Some(Op::Release {
                fh: i.fh,
                flags: i.flags as i32,
                release_flags: i.release_flags,
                lock_owner: (i.release_flags & FUSE_RELEASE_FLOCK_UNLOCK != 0)
                    .then_some(i.lock_owner),
            })
        }
        FLUSH => {
            let i: abi::FuseFlushIn = read(r.op_in)?;
            Some(Op::Flush {
                fh: i.fh,
                lock_owner: i.lock_owner,
            })
        }
        FSYNC => {
            let i: abi::FuseFsyncIn = read(r.op_in)?;
            Some(Op::Fsync {
                fh: i.fh,
                datasync: i.fsync_flags & FUSE_FSYNC_FDATASYNC != 0,
            })
        }
        _ => file_op2(r),
    }
}

fn file_op2<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    match r.opcode {
        FALLOCATE => {
            let i: abi::FuseFallocateIn = read(r.op_in)?;
            Some(Op::Fallocate {
                fh: i.fh,
                offset: i.offset,
                length: i.length,
                mode: i.mode as i32,
            })
        }
        IOCTL => {
            let i: abi::FuseIoctlIn = read(r.op_in)?;
            Some(Op::Ioctl {
                fh: i.fh,
                flags: i.flags,
                cmd: i.cmd,
                in_data: args(r)?.get(..i.in_size as usize)?,
                out_size: i.out_size,
            })
        }
        LSEEK => {
            let i: abi::FuseLseekIn = read(r.op_in)?;
            Some(Op::Lseek {
                fh: i.fh,
                offset: i.offset as i64,
                whence: i.whence as i32,
            })
        }
        COPY_FILE_RANGE => {
            let i: abi::FuseCopyFileRangeIn = read(r.op_in)?;
            Some(Op::CopyFileRange {
                fh_in: i.fh_in,
                off_in: i.off_in,
                nodeid_out: i.nodeid_out,
                fh_out: i.fh_out,
                off_out: i.off_out,
                len: i.len,
                flags: i.flags,
            })
        }
        _ => None,
    }
}

/// The requests on a directory stream.
fn dir_op<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    match r.opcode {
        OPENDIR => Some(Op::Opendir {
            flags: read::<abi::FuseOpenIn>(r.op_in)?.flags as i32,
        }),
        READDIR | READDIRPLUS => {
            let i: abi::FuseReadIn = read(r.op_in)?;
            let (fh, offset, size) = (i.fh, i.offset, i.size);
            Some(if r.opcode == READDIR {
                Op::Readdir { fh, offset, size }
            } else {
                Op::Readdirplus { fh, offset, size }
            })
        }
        RELEASEDIR => Some(Op::Releasedir {
            fh: read::<abi::FuseReleaseIn>(r.op_in)?.fh,
        }),
        FSYNCDIR => {
            let i: abi::FuseFsyncIn = read(r.op_in)?;
            Some(Op::Fsyncdir {
                fh: i.fh,
                datasync: i.fsync_flags & FUSE_FSYNC_FDATASYNC != 0,
            })
        }
        _ => None,
    }
}

/// The xattr requests and ACCESS. SETXATTR's struct is 16 bytes with FUSE_SETXATTR_EXT
/// (`setxattr_flags` added), 8 without: op_in's length says which.
fn xattr_op<'a>(r: &RawRequest<'a>) -> Option<Op<'a>> {
    use opcode::*;
    match r.opcode {
        SETXATTR => {
            let size = u32::from_ne_bytes(r.op_in.get(0..4)?.try_into().ok()?);
            let flags = u32::from_ne_bytes(r.op_in.get(4..8)?.try_into().ok()?);
            let setxattr_flags = match r.op_in.len() {
                abi::FUSE_COMPAT_SETXATTR_IN_SIZE => 0,
                _ => read::<abi::FuseSetxattrIn>(r.op_in)?.setxattr_flags,
            };
            let (n, rest) = name(args(r)?)?;
            Some(Op::Setxattr {
                name: n,
                value: rest.get(..size as usize)?,
                flags: flags as i32,
                setxattr_flags,
            })
        }
        GETXATTR => Some(Op::Getxattr {
            name: only_name(r)?,
            size: read::<abi::FuseGetxattrIn>(r.op_in)?.size,
        }),
        LISTXATTR => Some(Op::Listxattr {
            size: read::<abi::FuseGetxattrIn>(r.op_in)?.size,
        }),
        ACCESS => Some(Op::Access {
            mask: read::<abi::FuseAccessIn>(r.op_in)?.mask as i32,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(opcode: u32, op_in: &'a [u8], payload: &'a [u8]) -> RawRequest<'a> {
        RawRequest {
            opcode,
            unique: 2,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 1,
            total_extlen: 0,
            qid: 0,
            op_in,
            payload,
        }
    }

    #[test]
    fn names_writes_and_xattrs_decode() {
        let r = req(opcode::LOOKUP, &[], b"abc\0");
        assert!(matches!(decode(&r), Some(Op::Lookup { name }) if name == "abc"));
        let rn = abi::FuseRename2In {
            newdir: 7,
            flags: 1,
            padding: 0,
        };
        let r = req(opcode::RENAME2, abi::bytes_of(&rn), b"a\0bb\0");
        assert!(matches!(decode(&r),
            Some(Op::Rename { newdir: 7, name, newname, flags: 1 }) if name == "a" && newname == "bb"));
        let r = req(opcode::RENAME, &abi::bytes_of(&rn)[..8], b"a\0bb\0");
        assert!(matches!(
            decode(&r),
            Some(Op::Rename {
                newdir: 7,
                flags: 0,
                ..
            })
        ));
        let w = abi::FuseWriteIn {
            fh: 3,
            size: 4,
            ..Default::default()
        };
        let r = req(opcode::WRITE, abi::bytes_of(&w), b"datamore");
        assert!(matches!(
            decode(&r),
            Some(Op::Write {
                fh: 3,
                data: b"data",
                ..
            })
        ));
        let x = abi::FuseSetxattrIn {
            size: 2,
            flags: 1,
            setxattr_flags: 4,
            padding: 0,
        };
        let r = req(opcode::SETXATTR, abi::bytes_of(&x), b"user.a\0vv");
        assert!(matches!(decode(&r),
            Some(Op::Setxattr { name, value: b"vv", flags: 1, setxattr_flags: 4 }) if name == "user.a"));
        let r = req(opcode::SETXATTR, &abi::bytes_of(&x)[..8], b"user.a\0vv");
        assert!(matches!(
            decode(&r),
            Some(Op::Setxattr {
                setxattr_flags: 0,
                ..
            })
        ));
        // A name without its NUL, data shorter than its size: not decoded.
        assert!(decode(&req(opcode::LOOKUP, &[], b"abc")).is_none());
        let w = abi::FuseWriteIn {
            size: 40,
            ..Default::default()
        };
        assert!(decode(&req(opcode::WRITE, abi::bytes_of(&w), b"short")).is_none());
        assert!(decode(&req(opcode::GETLK, &[], &[])).is_none());
    }

    #[test]
    fn setattr_valid_bits() {
        let s = abi::FuseSetattrIn {
            valid: FATTR_MODE | FATTR_MTIME | FATTR_MTIME_NOW | FATTR_ATIME | FATTR_CTIME,
            mode: 0o644,
            atime: 5,
            atimensec: 6,
            ctime: 7,
            ..Default::default()
        };
        let r = req(opcode::SETATTR, abi::bytes_of(&s), &[]);
        let Some(Op::Setattr {
            mode,
            uid,
            atime,
            mtime,
            ctime,
            fh,
            ..
        }) = decode(&r)
        else {
            panic!("setattr");
        };
        assert_eq!((mode, uid, fh), (Some(0o644), None, None));
        assert_eq!(atime, Some(TimeOrNow::At { secs: 5, nsecs: 6 }));
        assert_eq!(mtime, Some(TimeOrNow::Now));
        assert_eq!(ctime, Some(TimeOrNow::At { secs: 7, nsecs: 0 }));
    }
}

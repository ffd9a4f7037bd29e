//! A dispatcher [`Reply`] as the out-args of a ring reply (uapi linux/fuse.h `fuse_*_out`,
//! all in the payload: see `sys/fuse_abi.rs`), and the handler every ring thread runs:
//! decode, dispatch, encode.

use std::sync::Arc;
use std::time::Duration;

use super::decode::{decode, served};
use super::{Handler, RawReply, RawRequest};
use crate::dispatch::{Ctx, Dispatcher, EntryOut, FileAttrOut, OpenOut, Reply, Transport};
use crate::sys::fuse_abi::{self as abi, push};

/// Serves one ring request through `d`. An opcode the dispatcher does not serve gets
/// ENOSYS (as fuser answers it), one whose bytes do not add up EIO.
pub fn serve(d: &Arc<Dispatcher>, r: &RawRequest<'_>) -> RawReply {
    if !served(r.opcode) {
        return RawReply::Error(libc::ENOSYS);
    }
    let Some(op) = decode(r) else {
        log::warn!("fuse ring: malformed request (opcode {})", r.opcode);
        return RawReply::Error(libc::EIO);
    };
    let ctx = Ctx {
        unique: r.unique,
        nodeid: r.nodeid,
        uid: r.uid,
        gid: r.gid,
        pid: r.pid,
        transport: Transport::Uring,
    };
    match d.handle(&ctx, op) {
        // An OPEN that waits for other handles: parked, so that this thread and its entry's
        // queue go on serving (the RELEASEs that end the wait may come on this very queue);
        // answered when the wait is over. Off a ring thread, this thread waits with it.
        Reply::Wait(p) => match super::park() {
            Some(later) => {
                let d = d.clone();
                p.then(move |reply| later.send(finish(&d, &ctx, reply)));
                RawReply::Parked
            }
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                p.then(move |r| {
                    let _ = tx.send(r);
                });
                finish(d, &ctx, rx.recv().unwrap_or(Reply::Err(libc::EIO)))
            }
        },
        reply => finish(d, &ctx, reply),
    }
}

/// `reply` as the ring's out bytes, after what must follow a reply ([`Dispatcher::replied`]).
fn finish(d: &Dispatcher, ctx: &Ctx, reply: Reply) -> RawReply {
    match reply {
        // Moved, not cloned: the ring copies it into the entry's payload and gives a READ's
        // buffer back through `RingHandler::recycle` (what `Dispatcher::replied` does with it).
        Reply::Data(b) | Reply::Readlink(b) | Reply::XattrData(b) => RawReply::Data(b),
        reply => {
            let out = encode(&reply);
            d.replied(ctx, reply);
            out
        }
    }
}

/// What every ring thread runs: decode, dispatch, encode through the one dispatcher.
pub struct RingHandler(Arc<Dispatcher>);

impl Handler for RingHandler {
    fn handle(&mut self, r: &RawRequest<'_>) -> RawReply {
        serve(&self.0, r)
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        crate::dispatch::recycle_read_buf(buf);
    }
}

/// The handler for `Ring::start`.
pub fn handler(d: Arc<Dispatcher>) -> RingHandler {
    RingHandler(d)
}

/// `r` as out bytes (an error as its errno).
pub fn encode(r: &Reply) -> RawReply {
    let mut out = Vec::new();
    match r {
        Reply::Err(e) => return RawReply::Error(*e),
        Reply::Empty | Reply::NoReply | Reply::Wait(_) => {}
        Reply::Entry(e) => push(&mut out, &entry_out(e)),
        Reply::Attr { attr_valid, attr } => {
            let (secs, nsecs) = valid(*attr_valid);
            let a = abi::FuseAttrOut {
                attr_valid: secs,
                attr_valid_nsec: nsecs,
                dummy: 0,
                attr: attr_of(attr),
            };
            push(&mut out, &a);
        }
        Reply::Data(d) | Reply::Readlink(d) | Reply::XattrData(d) => {
            return RawReply::Data(d.clone())
        }
        Reply::Open(o) => push(&mut out, &open_out(o)),
        Reply::Create { entry, open } => {
            push(&mut out, &entry_out(entry));
            push(&mut out, &open_out(open));
        }
        Reply::Write { size } => push(
            &mut out,
            &abi::FuseWriteOut {
                size: *size,
                padding: 0,
            },
        ),
        Reply::Statfs(s) => push(&mut out, &statfs_out(s)),
        Reply::Xattr { size } => push(
            &mut out,
            &abi::FuseGetxattrOut {
                size: *size,
                padding: 0,
            },
        ),
        Reply::Lseek { offset } => push(
            &mut out,
            &abi::FuseLseekOut {
                offset: *offset as u64,
            },
        ),
        Reply::Ioctl { result, data } => {
            push(
                &mut out,
                &abi::FuseIoctlOut {
                    result: *result,
                    ..Default::default()
                },
            );
            out.extend_from_slice(data);
        }
        Reply::Dir(entries) => {
            for e in entries {
                let name = std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str());
                abi::push_dirent(&mut out, usize::MAX, e.ino, e.off, e.typ, name);
            }
        }
        Reply::DirPlus(entries) => {
            for e in entries {
                let name = std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str());
                push_direntplus(&mut out, &e.entry, e.off, name);
            }
        }
    }
    RawReply::Data(out)
}

/// A STATFS reply's `fuse_statfs_out`.
fn statfs_out(s: &crate::dispatch::StatfsOut) -> abi::FuseStatfsOut {
    let st = abi::FuseKstatfs {
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
        ..Default::default()
    };
    abi::FuseStatfsOut { st }
}

/// One `fuse_direntplus` and its name, padded to 8 bytes. The dirent's ino is the
/// attributes' (the number shown), its type their mode's; an entry not to be linked goes
/// out with node id 0, which the kernel lists without making a dentry (dispatch/dir.rs,
/// `unlinked_entry`).
fn push_direntplus(out: &mut Vec<u8>, e: &EntryOut, off: u64, name: &[u8]) {
    let rec = crate::dispatch::direntplus_size(name.len());
    let start = out.len();
    let d = abi::FuseDirentplus {
        entry_out: entry_out(e),
        dirent: abi::FuseDirent {
            ino: e.attr.ino,
            off,
            namelen: name.len() as u32,
            typ: (e.attr.mode >> 12) & 0xf,
        },
    };
    push(out, &d);
    out.extend_from_slice(name);
    out.resize(start + rec, 0);
}

fn valid(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

fn entry_out(e: &EntryOut) -> abi::FuseEntryOut {
    let (entry_valid, entry_valid_nsec) = valid(e.entry_valid);
    let (attr_valid, attr_valid_nsec) = valid(e.attr_valid);
    abi::FuseEntryOut {
        nodeid: e.nodeid,
        generation: e.generation,
        entry_valid,
        attr_valid,
        entry_valid_nsec,
        attr_valid_nsec,
        attr: attr_of(&e.attr),
    }
}

fn attr_of(a: &FileAttrOut) -> abi::FuseAttr {
    abi::FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime as u64,
        mtime: a.mtime as u64,
        ctime: a.ctime as u64,
        atimensec: a.atimensec,
        mtimensec: a.mtimensec,
        ctimensec: a.ctimensec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: a.flags,
    }
}

/// `fuse_open_out`: a passthrough open carries its backing id (FOPEN_PASSTHROUGH is in
/// the dispatcher's flags).
fn open_out(o: &OpenOut) -> abi::FuseOpenOut {
    abi::FuseOpenOut {
        fh: o.fh,
        open_flags: o.open_flags,
        backing_id: o.backing_id.map_or(0, |id| id as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::DirEntryPlusOut;

    fn attr(ino: u64) -> FileAttrOut {
        FileAttrOut {
            ino,
            size: 3,
            blocks: 1,
            atime: 1,
            mtime: 2,
            ctime: 3,
            atimensec: 0,
            mtimensec: 0,
            ctimensec: 0,
            mode: libc::S_IFREG | 0o644,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn replies_encode_as_the_kernel_reads_them() {
        let e = EntryOut {
            nodeid: 0,
            generation: 0,
            entry_valid: Duration::from_millis(1500),
            attr_valid: Duration::ZERO,
            attr: attr(42),
        };
        let r = encode(&Reply::DirPlus(vec![DirEntryPlusOut {
            entry: e,
            off: 9,
            name: "abc".into(),
        }]));
        let RawReply::Data(b) = r else { panic!() };
        assert_eq!(b.len(), 160);
        let d: abi::FuseDirentplus = abi::read(&b).unwrap();
        assert_eq!((d.entry_out.nodeid, d.dirent.ino, d.dirent.off), (0, 42, 9));
        assert_eq!((d.dirent.namelen, d.dirent.typ), (3, libc::DT_REG as u32));
        assert_eq!(
            (d.entry_out.entry_valid, d.entry_out.entry_valid_nsec),
            (1, 500_000_000)
        );
        assert_eq!(&b[152..155], b"abc");
        let o = OpenOut {
            fh: 5,
            open_flags: crate::dispatch::open::FOPEN_PASSTHROUGH,
            backing_id: Some(3),
        };
        let RawReply::Data(b) = encode(&Reply::Create { entry: e, open: o }) else {
            panic!()
        };
        assert_eq!(b.len(), 128 + 16);
        let oo: abi::FuseOpenOut = abi::read(&b[128..]).unwrap();
        assert_eq!((oo.fh, oo.backing_id), (5, 3));
        assert_eq!(
            encode(&Reply::Err(libc::ENOENT)),
            RawReply::Error(libc::ENOENT)
        );
        assert!(matches!(encode(&Reply::Empty), RawReply::Data(v) if v.is_empty()));
        let RawReply::Data(b) = encode(&Reply::Xattr { size: 7 }) else {
            panic!()
        };
        assert_eq!(b, [7, 0, 0, 0, 0, 0, 0, 0]);
    }
}

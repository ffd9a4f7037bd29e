//! The request and reply types every transport shares: what the kernel asks (one [`Op`]
//! per FUSE opcode served, its fields named and typed as in the kernel's `fuse_*_in`
//! structs of uapi linux/fuse.h) and what the daemon answers ([`Reply`], close to the
//! `fuse_*_out` structs). A transport decodes its wire format into these and encodes the
//! reply back; nothing here knows fuser or io_uring.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

pub use crate::types::Transport;

/// The request header (`struct fuse_in_header`) minus the opcode and length.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub transport: Transport,
}

/// A time a SETATTR sets: the kernel's `FATTR_*TIME` with or without `FATTR_*TIME_NOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOrNow {
    Now,
    /// Seconds since the epoch (negative before it) and nanoseconds (0..1e9).
    At {
        secs: i64,
        nsecs: u32,
    },
}

/// One request, by opcode. The node is `Ctx::nodeid` (the parent for the name ops).
#[derive(Debug)]
pub enum Op<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    /// (nodeid, nlookup) pairs.
    BatchForget(&'a [(u64, u64)]),
    Getattr {
        fh: Option<u64>,
    },
    /// One `Option` per `FATTR_*` bit of `fuse_setattr_in.valid` served.
    Setattr {
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<TimeOrNow>,
        lock_owner: Option<u64>,
        /// `FATTR_KILL_SUIDGID`. Not needed: the daemon drops setuid/setgid bits by the
        /// caller's credentials itself (cred.rs), as it does under fuser, which does not
        /// pass it on.
        kill_suidgid: bool,
    },
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        newdir: u64,
        name: &'a OsStr,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        oldnodeid: u64,
        newname: &'a OsStr,
    },
    Open {
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
        flags: i32,
        lock_owner: Option<u64>,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
        write_flags: u32,
        flags: i32,
        lock_owner: Option<u64>,
    },
    Statfs,
    Release {
        fh: u64,
        flags: i32,
        release_flags: u32,
        lock_owner: Option<u64>,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
        setxattr_flags: u32,
    },
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush {
        fh: u64,
        lock_owner: u64,
    },
    Opendir {
        flags: i32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir {
        fh: u64,
        datasync: bool,
    },
    Access {
        mask: i32,
    },
    Create {
        name: &'a OsStr,
        flags: i32,
        mode: u32,
        umask: u32,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    /// FUSE_IOCTL (`struct fuse_ioctl_in` and the in-data); only the file attribute
    /// commands are served (fileattr.rs).
    Ioctl {
        fh: u64,
        flags: u32,
        cmd: u32,
        in_data: &'a [u8],
        out_size: u32,
    },
    CopyFileRange {
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    },
}

/// `struct fuse_attr`. Times are signed (the kernel stores them in a time64_t).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrOut {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    /// With the type bits (`S_IFREG | 0644`, ...).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

/// `struct fuse_entry_out`. A negative entry has `nodeid` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: Duration,
    pub attr_valid: Duration,
    pub attr: FileAttrOut,
}

/// `struct fuse_open_out`; `backing_id` set for a passthrough open (then `open_flags`
/// has FOPEN_PASSTHROUGH). The id stays registered while the handle is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: Option<u32>,
}

/// `struct fuse_kstatfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// One `struct fuse_dirent` and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryOut {
    pub ino: u64,
    pub off: u64,
    /// The `DT_*` type (`mode >> 12`).
    pub typ: u32,
    pub name: OsString,
}

/// One `struct fuse_direntplus` and its name: the dirent's ino and type are the entry's
/// `attr.ino` and `attr.mode >> 12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryPlusOut {
    pub entry: EntryOut,
    pub off: u64,
    pub name: OsString,
}

/// `sizeof(struct fuse_dirent)` without the name.
pub const DIRENT_SIZE: usize = 24;
/// `sizeof(struct fuse_direntplus)` without the name: a `fuse_entry_out` (128 bytes) then
/// a `fuse_dirent`.
pub const DIRENTPLUS_SIZE: usize = 128 + DIRENT_SIZE;

/// The bytes one dirent with a name of `namelen` bytes takes in a READDIR reply (8-byte
/// aligned, as the kernel reads them).
pub fn dirent_size(namelen: usize) -> usize {
    (DIRENT_SIZE + namelen).next_multiple_of(8)
}

/// The bytes one direntplus takes in a READDIRPLUS reply.
pub fn direntplus_size(namelen: usize) -> usize {
    (DIRENTPLUS_SIZE + namelen).next_multiple_of(8)
}

/// The answer to one request.
#[derive(Debug)]
pub enum Reply {
    /// An errno (positive).
    Err(i32),
    Empty,
    Entry(EntryOut),
    Attr {
        attr_valid: Duration,
        attr: FileAttrOut,
    },
    /// READ: the bytes read. Give the buffer back with `Dispatcher::replied` once sent (it
    /// is the thread's read buffer, kept across requests).
    Data(Vec<u8>),
    Readlink(Vec<u8>),
    Open(OpenOut),
    Create {
        entry: EntryOut,
        open: OpenOut,
    },
    Write {
        size: u32,
    },
    Statfs(StatfsOut),
    /// An xattr request of size 0: the size the value (or list) needs.
    Xattr {
        size: u32,
    },
    XattrData(Vec<u8>),
    Lseek {
        offset: i64,
    },
    /// IOCTL: `fuse_ioctl_out.result` and the out-data (exactly the request's `out_size`
    /// bytes, which is what the kernel expects of a restricted ioctl).
    Ioctl {
        result: i32,
        data: Vec<u8>,
    },
    /// As many entries as fit in the request's size.
    Dir(Vec<DirEntryOut>),
    DirPlus(Vec<DirEntryPlusOut>),
    /// FORGET, BATCH_FORGET: nothing is sent.
    NoReply,
    /// An OPEN that must wait for another handle's release (backing.rs): answer it later,
    /// off the request thread, with [`Pending::then`].
    Wait(super::open::Pending),
}

/// Where READDIR entries go, in order: `add` returns false (adding nothing) when the entry
/// does not fit, and the reply ends before it.
pub trait DirSink {
    fn add(&mut self, ino: u64, off: u64, typ: u32, name: &OsStr) -> bool;
}

/// Where READDIRPLUS entries go (as [`DirSink`]).
pub trait DirPlusSink {
    fn add(&mut self, entry: &EntryOut, off: u64, name: &OsStr) -> bool;
}

/// Entries cut to a request's size, for [`Reply::Dir`] and [`Reply::DirPlus`].
pub struct SizedDir<T> {
    room: usize,
    pub entries: Vec<T>,
}

impl<T> SizedDir<T> {
    pub fn new(size: u32) -> Self {
        SizedDir {
            room: size as usize,
            entries: Vec::new(),
        }
    }

    fn take(&mut self, need: usize) -> bool {
        if need > self.room {
            return false;
        }
        self.room -= need;
        true
    }
}

impl DirSink for SizedDir<DirEntryOut> {
    fn add(&mut self, ino: u64, off: u64, typ: u32, name: &OsStr) -> bool {
        if !self.take(dirent_size(name.len())) {
            return false;
        }
        self.entries.push(DirEntryOut {
            ino,
            off,
            typ,
            name: name.to_owned(),
        });
        true
    }
}

impl DirPlusSink for SizedDir<DirEntryPlusOut> {
    fn add(&mut self, entry: &EntryOut, off: u64, name: &OsStr) -> bool {
        if !self.take(direntplus_size(name.len())) {
            return false;
        }
        self.entries.push(DirEntryPlusOut {
            entry: *entry,
            off,
            name: name.to_owned(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_are_cut_as_the_kernel_reads_them() {
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(direntplus_size(0), 152);
        assert_eq!(direntplus_size(1), 160);
        let mut d = SizedDir::<DirEntryOut>::new(64);
        assert!(d.add(1, 1, 4, OsStr::new("a")));
        assert!(d.add(2, 2, 8, OsStr::new("bcdefgh")));
        assert!(!d.add(3, 3, 8, OsStr::new("c")));
        assert_eq!(d.entries.len(), 2);
    }
}

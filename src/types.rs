//! What every layer shares, at the bottom of the imports (as the kernel's
//! fs/overlayfs/overlayfs.h is for its files): plain types that code above and below the
//! dispatcher both name. Imports run one way, down this list: `transport` (how requests
//! arrive) → `dispatch` (what a request asks of the daemon) → the operations (`dir`,
//! `file`, `attr`, `copy_up`, `udba`, ...) → the union (`fs`: the mount's state and its
//! lookups) → the model (`inode`, `readdir`, `lookup`, `layers`, `watch`, `whiteout`,
//! `channel`, ...) → `options` → `types` → `sys`. tests/layering.rs fails on any import
//! that closes a cycle.
//!
//! Here: who asks ([`Caller`]) and over what ([`Transport`]); the configuration values other
//! modules interpret ([`Atime`]/[`Policy`]: atime.rs, [`Udba`]: udba.rs, [`Level`]:
//! override_stat.rs); what an entry is ([`Kind`], [`Attr`]: attr.rs), an open file
//! ([`FileHandle`]: file.rs) and a directory listing ([`DirEntry`], [`DirState`]:
//! readdir.rs). Each type's behaviour stays in the file named after it; the definitions
//! are here so that the model can hold them without importing the operations.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

/// Who is asking (from the FUSE request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// The transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// read(2)/write(2) on /dev/fuse (fuser's session loop).
    Classic,
    /// FUSE over io_uring (`IORING_OP_URING_CMD` on /dev/fuse).
    Uring,
}

/// When a read updates the access time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atime {
    /// `noatime`: never.
    Never,
    /// `relatime` (the default): when the atime is not after the mtime or the ctime, or
    /// is a day old.
    Relative,
    /// `strictatime`: on every read.
    Strict,
}

/// A mount's access-time policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub atime: Atime,
    /// `nodiratime`: listing a directory never updates its atime.
    pub nodiratime: bool,
}

/// `udba=`: which changes made to the branches behind the mount's back are noticed (udba.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Udba {
    #[default]
    None,
    Reval,
    Notify,
}

/// Which xattr holds the overrides (`xattr_permissions=1|2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `security.fuseoverlayfs.override_stat` (privileged; also works on symlinks).
    Privileged,
    /// `user.containers.override_stat` (containers-storage's force_mask).
    Containers,
}

/// How a branch takes part in the union (aufs's branch permissions, `branch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `rw` (`rw+nolwh` too: every whiteout stratafs writes is a file of its own, never a
    /// hard link, which is all aufs's `nolwh` asks): writable. The upper, and with aufs's
    /// branch model any branch below it (`wbr_policy.rs`).
    Rw,
    /// `ro+wh`: read-only, its whiteouts and opaque markers are honoured. Every lower of a
    /// mount made from options is one (the kernel overlayfs honours them on every lower).
    RoWh,
    /// `ro`: read-only with no whiteouts: whiteouts and opaque markers on it are ignored
    /// (they hide nothing and are not listed), as aufs looks up no whiteouts on `ro`.
    Ro,
    /// `rr`: like `ro`, and promised never to change (a squashfs, an ISO image): nothing
    /// needs to watch or revalidate it (udba).
    Rr,
}

impl Mode {
    /// Do whiteouts and opaque markers on this branch hide what is below?
    pub fn honours_whiteouts(self) -> bool {
        matches!(self, Mode::Rw | Mode::RoWh)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Rw => "rw",
            Mode::RoWh => "ro+wh",
            Mode::Ro => "ro",
            Mode::Rr => "rr",
        }
    }
}

/// aufs's `create=`: where a new entry goes when several branches are writable
/// (`wbr_policy.rs`). Seconds are how long a measured free space is trusted; LOW a number
/// of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Create {
    /// `tdp` (top-down-parent, the default): the highest writable branch holding the
    /// parent directory; where none does, the parent is copied up bottom-up first.
    #[default]
    Tdp,
    /// `rr` (round-robin): the writable branches in turn.
    Rr,
    /// `mfs[:SECONDS]` (most-free-space).
    Mfs { secs: u64 },
    /// `mfsrr:LOW[:SECONDS]`: most-free-space while it is at least LOW, else round-robin.
    MfsRr { low: u64, secs: u64 },
    /// `pmfs[:SECONDS]` (parent-mfs): most-free-space among the branches holding the parent.
    Pmfs { secs: u64 },
    /// `pmfsrr:LOW[:SECONDS]`: pmfs while its free space is at least LOW, else round-robin.
    PmfsRr { low: u64, secs: u64 },
}

/// aufs's `cpup=`: the writable branch a copy-up goes to (`wbr_policy.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cpup {
    /// `tdp` (the default): the highest writable branch above the source holding the
    /// parent directory, else as `bu`.
    #[default]
    Tdp,
    /// `bup` (bottom-up-parent): the nearest writable branch above the source holding the
    /// parent directory, else as `bu`.
    Bup,
    /// `bu` (bottom-up): the nearest writable branch above the source; the parent is
    /// copied up to it where missing.
    Bu,
}

/// File type of a node; fixed for the node's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Attributes of a merged entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The st_ino shown.
    pub ino: u64,
    /// The node the entry is (its FUSE node id): `ino` except for name nodes (inode.rs).
    pub node: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// An open file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    pub(crate) fd: RwLock<Arc<OwnedFd>>,
    /// The open(2) flags it was opened with.
    pub flags: i32,
    /// The fd is a metacopy entry's data file, not the entry itself.
    pub data_only: bool,
    /// The kernel does this handle's I/O on the backing file itself (FUSE passthrough).
    pub(crate) passthrough: AtomicBool,
    /// Opened for write on a file with setuid/setgid bits: its writes go through this
    /// daemon, which drops the bits the kernel's rules say a write drops (cred.rs).
    pub(crate) guard_privs: AtomicBool,
    /// Opening it copied the file up: the kernel's cached attributes are the lower's
    /// (its ctime, and its size before an O_TRUNC) and must be dropped.
    pub copied_up: bool,
    /// It counts in `UnionFs::ro_lower_handles` (a lower file's passthrough, taken because
    /// the mount is read-only) until released (file.rs `reserve_ro_lower`).
    pub(crate) ro_lower: AtomicBool,
}

impl FileHandle {
    pub fn new(ino: u64, fd: OwnedFd, flags: i32, data_only: bool) -> Self {
        FileHandle {
            ino,
            fd: RwLock::new(Arc::new(fd)),
            flags,
            data_only,
            passthrough: AtomicBool::new(false),
            guard_privs: AtomicBool::new(false),
            copied_up: false,
            ro_lower: AtomicBool::new(false),
        }
    }

    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }

    /// Opened for writing.
    pub(crate) fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// Opened read-write: the only kind of descriptor a shared writable mapping can be
    /// made from (mmap(2) wants FMODE_READ for any mapping of a file, and FMODE_WRITE too
    /// for `MAP_SHARED` with `PROT_WRITE`: EACCES otherwise).
    pub(crate) fn may_map_shared_writable(&self) -> bool {
        self.flags & libc::O_ACCMODE == libc::O_RDWR
    }
}

/// One merged directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
    pub ino: u64,
    /// The offset that follows this entry: its cookie.
    pub off: u64,
}

/// A directory node's listing state (readdir.rs).
#[derive(Debug, Default)]
pub struct DirState {
    /// The listing its streams read on in, and the `UnionFs::names_gen` it was built at.
    pub(crate) listing: Option<(u64, Arc<Vec<DirEntry>>)>,
}

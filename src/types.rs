//! What every layer shares, at the bottom of the imports (as the kernel's
//! fs/overlayfs/overlayfs.h is for its files): plain types that code above and below the
//! dispatcher both name. Imports run one way, down this list: `transport` (how requests
//! arrive) → `dispatch` (what a request asks of the daemon) → the operations (`fs`, `dir`,
//! `file`, `attr`, `copy_up`, ...) → the model (`inode`, `layers`, `lookup`, `whiteout`,
//! ...) → `sys`; any of them may name `types`.

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

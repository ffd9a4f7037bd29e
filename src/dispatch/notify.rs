//! Cache invalidations the daemon sends the kernel (notify inval_entry/inval_inode). They
//! always go over /dev/fuse, written by fuser's [`Notifier`], whichever transport carries
//! the requests.

use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};
use log::debug;

/// Sends cache invalidations for changes the kernel did not see go through a request (a
/// branch change, `stack.rs`; a branch changed behind the mount's back). Each call returns
/// once the kernel has dropped the entry; call it with no daemon lock held (the kernel may
/// wait for a request on the same directory, which a daemon thread must be free to answer).
#[derive(Clone)]
pub struct Invalidator(Arc<OnceLock<Notifier>>);

impl Invalidator {
    pub(super) fn new(slot: Arc<OnceLock<Notifier>>) -> Self {
        Invalidator(slot)
    }
}

impl Invalidator {
    /// Drops the kernel's dentry `name` in `parent` (positive or negative); ENOENT (no
    /// such entry cached) is not an error.
    pub fn entry(&self, parent: u64, name: &std::ffi::OsStr) {
        if let Some(n) = self.0.get() {
            if let Err(e) = n.inval_entry(INodeNo(parent), name) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    debug!("inval_entry {parent:#x} {name:?}: {e}");
                }
            }
        }
    }

    /// Drops the kernel's cached attributes and pages (a directory's cached listing) of `ino`.
    pub fn inode(&self, ino: u64) {
        if let Some(n) = self.0.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    debug!("inval_inode {ino:#x}: {e}");
                }
            }
        }
    }

    /// Everything a branch change lists.
    pub fn apply(&self, inval: &crate::stack::Inval) {
        for (dir, name) in &inval.names {
            self.entry(*dir, name);
        }
        for d in &inval.dirs {
            self.inode(*d);
        }
    }
}

/// Sends one invalidation asked for by `udba=notify` (udba.rs) to the kernel. ENOENT (the
/// kernel holds nothing for it) is no error.
pub fn send_inval(n: &Notifier, i: &crate::udba::Inval) {
    use crate::udba::Inval;
    let r = match i {
        Inval::Entry(parent, name) => n.inval_entry(INodeNo(*parent), name),
        // Offset -1: the attributes only; 0: and every page (a directory's cached listing).
        Inval::Inode { ino, pages } => n.inval_inode(INodeNo(*ino), if *pages { 0 } else { -1 }, 0),
    };
    if let Err(e) = r {
        debug!("udba: {i:?}: {e}");
    }
}

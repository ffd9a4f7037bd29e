//! FUSE passthrough backing files, as the kernel allows them (fs/fuse/iomode.c): an inode
//! has at most one backing file at a time, and while it has one, every open of it must be a
//! passthrough open of that same file (any other open fails with EIO); while an inode has a
//! handle served by the daemon (cached I/O) no passthrough open is allowed. The kernel drops
//! an inode's backing file when its last passthrough handle is released, before it sends
//! the RELEASE request.
//!
//! [`Backings`] keeps, per FUSE inode, the backing file registered for it (keyed by the real
//! file's (dev, ino)) for as long as a handle holds it, and decides for each new open
//! ([`Backings::decide`]) whether it is passthrough, served by the daemon, or must wait:
//! an open that cannot share the inode's current backing file (after a copy-up, the real
//! file it needs is the upper copy while readers hold the lower one, `lower_passthrough`)
//! waits until those handles are closed ([`OPEN_WAIT`]), then is decided again.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::sys::backing::BackingFile;
use dashmap::DashMap;
use log::{debug, info};
use parking_lot::Mutex;

use crate::fs::UnionFs;

/// A real file's (st_dev, st_ino).
pub type RealId = (u64, u64);

/// How long an open that needs another backing file than the one its inode has waits for
/// the handles holding that one to be closed; after that it fails with ETXTBSY.
pub const OPEN_WAIT: Duration = Duration::from_secs(5);

/// What a new open does.
pub enum OpenIo {
    /// The kernel does its I/O on this backing file.
    Passthrough(Arc<BackingFile>),
    /// The daemon serves its I/O.
    Served,
    /// The inode has another backing file now: the open must wait for it to go.
    Wait,
}

/// The passthrough state of a mount; shared with the threads that finish waiting opens.
pub struct Backings {
    /// The kernel granted FUSE passthrough and registering a backing file has not failed.
    pub on: AtomicBool,
    /// One backing file per inode, keyed by the real file's (dev, ino); alive while a
    /// handle holds it.
    map: Mutex<HashMap<u64, (RealId, Weak<BackingFile>)>>,
    /// The backing file each passthrough handle holds.
    pub by_handle: DashMap<u64, Arc<BackingFile>>,
    /// Opens of one inode (striped by number) take their handle and decide between
    /// passthrough and daemon-served I/O one at a time: the kernel refuses (EIO) an open
    /// whose I/O mode differs from another open handle's, and without this a read-only open
    /// of a lower file racing with a copy-up could be served here while the writer got
    /// passthrough.
    open_locks: Vec<Mutex<()>>,
}

impl Default for Backings {
    fn default() -> Self {
        Backings {
            on: AtomicBool::new(false),
            map: Mutex::new(HashMap::new()),
            by_handle: DashMap::new(),
            open_locks: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Backings {
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The lock that serializes the opens of `ino`.
    pub fn open_lock(&self, ino: u64) -> &Mutex<()> {
        &self.open_locks[(ino % 64) as usize]
    }

    /// How handle `fh` of inode `ino` (just opened; its open lock held) does its I/O.
    /// `register` registers a backing file (`BackingFile::open` on the connection).
    pub fn decide(
        &self,
        fs: &UnionFs,
        fh: u64,
        ino: u64,
        register: impl FnOnce(&OwnedFd) -> std::io::Result<BackingFile>,
    ) -> OpenIo {
        if !self.enabled() {
            return OpenIo::Served;
        }
        let source = fs.passthrough_source(fh);
        let mut map = self.map.lock();
        if let Some((id, weak)) = map.get(&ino) {
            if let Some(b) = weak.upgrade() {
                return match source {
                    Some((_, ident)) if ident == *id => OpenIo::Passthrough(b),
                    // The kernel would refuse it (EIO) while that backing file is in use.
                    _ => OpenIo::Wait,
                };
            }
        }
        let Some((fd, ident)) = source else {
            return OpenIo::Served;
        };
        match register(&fd) {
            Ok(b) => {
                let b = Arc::new(b);
                map.insert(ino, (ident, Arc::downgrade(&b)));
                OpenIo::Passthrough(b)
            }
            // EPERM: passthrough needs CAP_SYS_ADMIN in the initial namespace; nothing can
            // use it then.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                info!("passthrough unavailable ({e}); serving reads and writes in the daemon");
                self.on.store(false, Ordering::Relaxed);
                OpenIo::Served
            }
            // Another error is about this file (a lower on a stacked filesystem deeper than
            // the negotiated stack depth, say): this open is served, the others may still
            // pass through.
            Err(e) => {
                debug!("passthrough refused for {ino:#x} ({e}); served by the daemon");
                OpenIo::Served
            }
        }
    }

    /// Handle `fh` of `ino` is released: it no longer holds its backing file, and the
    /// inode's entry goes with the last holder (one entry per inode ever opened through
    /// passthrough would otherwise stay for the mount's life).
    pub fn released(&self, fh: u64, ino: u64) {
        if self.by_handle.remove(&fh).is_some() {
            let mut map = self.map.lock();
            if map.get(&ino).is_some_and(|(_, w)| w.strong_count() == 0) {
                map.remove(&ino);
            }
        }
    }

    /// Whether inode `ino` still has a backing file some handle holds.
    /// The handles holding inode `ino`'s backing file (for the log of an open that gave up).
    pub fn holders(&self, ino: u64) -> Vec<u64> {
        let Some(b) = self.map.lock().get(&ino).and_then(|(_, w)| w.upgrade()) else {
            return Vec::new();
        };
        self.by_handle
            .iter()
            .filter(|e| Arc::ptr_eq(e.value(), &b))
            .map(|e| *e.key())
            .collect()
    }

    pub fn in_use(&self, ino: u64) -> bool {
        self.map
            .lock()
            .get(&ino)
            .is_some_and(|(_, w)| w.strong_count() > 0)
    }
}

//! The queue kick ([`super::Kick`]) of a mounted filesystem: one thread per ring queue,
//! pinned to that queue's CPU, which on demand makes one GETATTR of the mount's root
//! (`statx` of its path with `AT_STATX_FORCE_SYNC`, which the FUSE module always sends; no
//! descriptor is kept, which would make the mount busy). The kernel puts
//! a request on the queue of the CPU its caller runs on, so the request lands on the queue
//! that was kicked; its commit fetches the requests that waited there for an entry.
//! Demands that arrive while a kick is under way are merged into it.

use std::io;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;

use super::{possible_cpus, Kick};
use crate::sys::{self, uring};

/// A kick for the mount on `root` (reached when the first kick comes: the mount is live by
/// then). Its threads end when the last clone of the returned [`Kick`] is dropped.
pub fn kicker(root: PathBuf) -> io::Result<Kick> {
    let mut senders = Vec::new();
    for (qid, cpu) in possible_cpus()?.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<()>();
        let root = root.clone();
        std::thread::Builder::new()
            .name(format!("ring-kick-q{qid}"))
            .spawn(move || {
                if let Err(e) = uring::pin_to_cpu(cpu) {
                    log::warn!("fuse ring q{qid}: kick thread not pinned to cpu {cpu}: {e}");
                }
                while rx.recv().is_ok() {
                    while rx.try_recv().is_ok() {}
                    // By path each time: a descriptor kept on the root would make the mount
                    // busy for umount(8).
                    if let Err(e) = sys::statx_force_sync(&root) {
                        log::debug!("ring kick: {}: {e}", root.display());
                    }
                }
            })?;
        senders.push(Mutex::new(tx));
    }
    let kick = move |qid: u16| {
        if let Some(tx) = senders.get(usize::from(qid)) {
            let _ = tx.lock().send(());
        }
    };
    Ok(Kick(Arc::new(kick)))
}

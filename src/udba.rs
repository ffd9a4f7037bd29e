//! udba, aufs's "user's direct branch access": what the mount does about changes made to
//! the branches directly, behind its back. Every change made through the mount passes
//! through the daemon, which updates or drops what the kernel caches for it, so the kernel
//! may cache entries, attributes, listings and pages for a long time (`dispatch/`,
//! `DEFAULT_TTL`). A direct change is another matter; three answers, as aufs(5) has:
//! - [`Udba::None`] (the default): nothing is checked. The kernel keeps what it cached
//!   until `timeout=` expires (by default a day) or memory pressure drops it; the daemon
//!   itself keeps no copy of branch data, so what the kernel asks again is answered from
//!   the branches as they are. (The kernel overlayfs calls such changes undefined; aufs's
//!   default is `reval`. `none` keeps the fast path that fuse-overlayfs and podman expect.)
//! - [`Udba::Reval`]: checked on access. Entries and attributes are not cached (lifetime 0
//!   unless `timeout=` says otherwise), nor listings, nor pages across opens, and an open
//!   file's pages go when its size or mtime is seen to change (FUSE_AUTO_INVAL_DATA): every
//!   path walk looks each name up again, and a lookup resolves it across the branches
//!   afresh and refreshes the node's location.
//! - [`Udba::Notify`]: watched. [`Watches`] keeps an inotify watch on every real directory
//!   (upper and lowers) of every merged directory the kernel holds (the directory nodes of
//!   the inode table), made when the node is looked up and released when it is forgotten.
//!   A dedicated thread ([`spawn`]) reads the events and turns each into the kernel
//!   invalidations it calls for ([`Inval`]): the name's entry in the merged directory (and
//!   the name a `.wh.` whiteout file stands for), the directory's attributes and cached
//!   listing, the child node's attributes (and its pages when its data changed); the daemon
//!   first re-resolves a child directory whose real directories changed (a lower part
//!   added or removed) and makes open directory streams rebuild their listings. Caches stay
//!   as long as with `none`. A directory that cannot be watched (out of watches: the
//!   kernel's `max_user_watches`, or `udba_max_watches=`) is served as with `reval`: no
//!   cached entries for its names, attributes, listing or pages; one warning is logged.
//!
//! inotify rather than fanotify: inotify watches single directories, works for any user
//! and inside a user namespace (rootless podman), and names the child in each event.
//! fanotify's filesystem marks need CAP_SYS_ADMIN in the initial user namespace, report
//! every change on the whole filesystem (an upper on the root filesystem would see the
//! machine's every write) and name directories by file handle, which would need a handle
//! table of our own. What inotify cannot see, neither can `notify`: changes made by another
//! machine to a network or FUSE branch (NFS, GlusterFS); use `reval` there.
//!
//! A real directory removed directly is seen through its parent's watch (its own watch
//! reports the removal only once the daemon lets go of its fd): the merged directory is
//! then resolved again, and keeps the watches of the parts it still has.
//!
//! Assumptions: an event arrives after the change is visible on the branch (inotify queues
//! it after the operation), so a lookup after the invalidation sees the change. Changes
//! made through the mount raise events too (the daemon writes the upper): they cost a
//! redundant invalidation, never a wrong answer. If the event queue overflows, every entry
//! and attribute the kernel may cache for a known node is dropped (negative entries
//! directly in the mount root cannot be named and stay until their timeout).

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::fs::UnionFs;

pub use crate::types::Udba;

impl Udba {
    pub fn parse(v: &[u8]) -> Option<Udba> {
        match v {
            b"none" => Some(Udba::None),
            b"reval" => Some(Udba::Reval),
            b"notify" => Some(Udba::Notify),
            _ => None,
        }
    }
}

pub use crate::watch::{Batch, Inval, Watches};

impl UnionFs {
    /// The kernel may cache the entries of names in directory `dir`, and its listing.
    pub fn udba_covers_dir(&self, dir: u64) -> bool {
        match (self.udba, &self.watches) {
            (Udba::Notify, Some(w)) => w.covers_dir(dir),
            (Udba::Notify, None) => false,
            _ => true,
        }
    }

    /// The kernel may cache the attributes (and pages) of `node`.
    pub fn udba_covers_attrs(&self, node: u64) -> bool {
        match (self.udba, &self.watches) {
            (Udba::Notify, Some(w)) => w.covers_attrs(node),
            (Udba::Notify, None) => false,
            _ => true,
        }
    }

    /// The daemon's own part of a batch, done before the kernel is told: open streams'
    /// listings are rebuilt, and directory nodes whose real directories changed are
    /// resolved again (the kernel may keep using such a node without a lookup, as a
    /// process's working directory).
    pub fn direct_changes(&self, b: &Batch) {
        if b.names_changed {
            self.names_changed();
        }
        for (parent, name, id) in &b.reresolve {
            self.reresolve(*parent, name, *id);
        }
    }

    /// Resolves directory node `id` (`name` in `parent`) across the branches again and
    /// takes its new real directories, if the name still leads to the same directory.
    pub(crate) fn reresolve(&self, parent: u64, name: &OsStr, id: u64) {
        let (Some(p), Some(n)) = (self.inodes.get(parent), self.inodes.get(id)) else {
            return;
        };
        if !n.is_dir() {
            return;
        }
        // Not during a copy-up of the node (which adds its upper part to the location).
        let _g = n.copy_lock.lock();
        // Not during a branch change either (which re-resolves every node itself).
        let _stack = self.restack.read();
        {
            let cur = n.loc.read();
            if cur.parent != parent || cur.name != name {
                return; // moved through the mount meanwhile
            }
        }
        match crate::lookup::lookup(&self.layers, &p.loc(), name) {
            Ok(Some(f)) if f.is_dir() && f.ino == id => {
                {
                    let mut l = n.loc_mut();
                    l.top = f.top;
                    l.dirs = f.dirs;
                }
                self.inodes.located(id);
            }
            // Gone, or another object now: the kernel looks the name up again.
            _ => {}
        }
    }
}

/// Starts the thread that reads `fs`'s watch events and hands each invalidation to `send`
/// (after the daemon's own part, [`UnionFs::direct_changes`]). Nothing without watches.
pub fn spawn(fs: Arc<UnionFs>, send: impl Fn(&Inval) + Send + 'static) -> std::io::Result<()> {
    let Some(w) = fs.watches.clone() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("udba".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let events = match w.read_events(&mut buf) {
                    Ok(ev) => ev,
                    Err(e) => {
                        log::warn!("udba=notify: reading events failed ({e}); no more watching");
                        return;
                    }
                };
                let batch = w.translate(&events, fs.writeback_cache.load(Ordering::Relaxed));
                fs.direct_changes(&batch);
                for i in &batch.invals {
                    send(i);
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::ROOT_INO;
    use crate::sys::inotify::Event;
    use std::ffi::OsString;
    use std::fs;

    /// The core without a mount: a directory node's real directories are watched while it
    /// is in the table, a direct change comes back as the invalidations it needs, and a
    /// forget releases the watches.
    #[test]
    fn direct_changes_become_invalidations_and_forget_releases_watches() {
        let base = std::env::temp_dir().join(format!("sfs-udba-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (l, u, w, m) = (
            base.join("l"),
            base.join("u"),
            base.join("w"),
            base.join("m"),
        );
        for d in [&l, &u, &w, &m] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir(l.join("d")).unwrap();
        fs::create_dir(u.join("d")).unwrap();
        fs::write(u.join("d/f"), b"x").unwrap();
        let ufs = UnionFs::for_test(&l, &u, &w, &m, ",udba=notify");
        let wt = ufs.watches.clone().expect("watches");
        // The root: upper and lower.
        assert_eq!(wt.count(), 2);
        assert!(ufs.udba_covers_dir(ROOT_INO));
        let d = ufs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        let f = ufs.lookup(d.node, OsStr::new("f")).unwrap();
        assert_eq!(wt.count(), 4);
        assert!(ufs.udba_covers_dir(d.node) && ufs.udba_covers_attrs(f.node));

        fs::write(l.join("d/new"), b"n").unwrap();
        fs::write(u.join("d/f"), b"longer").unwrap();
        let mut buf = vec![0u8; 4096];
        let ev = wt.read_events(&mut buf).unwrap();
        let b = wt.translate(&ev, false);
        assert!(b.names_changed);
        assert!(
            b.invals.contains(&Inval::Entry(d.node, "new".into())),
            "{b:?}"
        );
        assert!(b.invals.contains(&Inval::Inode {
            ino: d.node,
            pages: true
        }));
        // The write may be read with the create or after it.
        let b2 = if b.invals.contains(&Inval::Inode {
            ino: f.node,
            pages: true,
        }) {
            b
        } else {
            wt.translate(&wt.read_events(&mut buf).unwrap(), false)
        };
        assert!(
            b2.invals.contains(&Inval::Inode {
                ino: f.node,
                pages: true
            }),
            "{b2:?}"
        );

        // An overflowed queue drops everything known.
        let overflow = Event {
            wd: -1,
            mask: libc::IN_Q_OVERFLOW,
            name: OsString::new(),
        };
        let b = wt.translate(&[overflow], false);
        for i in [
            Inval::Entry(ROOT_INO, "d".into()),
            Inval::Entry(d.node, "f".into()),
            Inval::Inode {
                ino: f.node,
                pages: true,
            },
        ] {
            assert!(b.invals.contains(&i), "{i:?} in {b:?}");
        }

        // d's lower part removed directly: the root's lower watch reports it (d's own
        // watch reports nothing while the daemon holds the directory's fd), d is resolved
        // again and keeps only its upper part and watch, and the kernel drops its entry.
        fs::remove_dir_all(l.join("d")).unwrap();
        let mut lost = Batch::default();
        while !lost.invals.contains(&Inval::Entry(ROOT_INO, "d".into())) {
            lost = wt.translate(&wt.read_events(&mut buf).unwrap(), false);
        }
        assert!(lost.reresolve.iter().any(|r| r.2 == d.node), "{lost:?}");
        ufs.direct_changes(&lost);
        assert_eq!(wt.count(), 3, "d's lower watch is gone");
        assert!(ufs.udba_covers_dir(d.node));
        assert_eq!(ufs.node(d.node).unwrap().loc().dirs.len(), 1);

        ufs.forget(f.node, 1);
        ufs.forget(d.node, 1);
        assert_eq!(wt.count(), 2, "d's other watch released");
        drop(ufs);
        let _ = fs::remove_dir_all(&base);
    }
}

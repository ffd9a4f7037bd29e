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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use crate::fs::UnionFs;
use crate::inode::{Node, Observer};
use crate::layers::{LayerId, ROOT_INO};
use crate::sys::inotify::{Event, Inotify};

/// `udba=`: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Udba {
    #[default]
    None,
    Reval,
    Notify,
}

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

/// One kernel cache entry to drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Inval {
    /// The entry (positive or negative) for `name` in directory node `parent`.
    Entry(u64, OsString),
    /// A node's cached attributes; with `pages`, its page cache or cached listing too.
    Inode { ino: u64, pages: bool },
}

/// What a batch of events calls for.
#[derive(Debug, Default)]
pub struct Batch {
    /// In order, without repeats.
    pub invals: Vec<Inval>,
    /// Names changed in some merged directory: open streams' listings are out of date.
    pub names_changed: bool,
    /// Directory nodes whose real directories may have changed: (parent, name, node).
    pub reresolve: Vec<(u64, OsString, u64)>,
    seen: HashSet<Inval>,
}

impl Batch {
    fn push(&mut self, i: Inval) {
        if self.seen.insert(i.clone()) {
            self.invals.push(i);
        }
    }
}

/// What the watcher knows of one node.
#[derive(Debug)]
struct Known {
    node: Weak<Node>,
    parent: u64,
    name: OsString,
    is_dir: bool,
    /// Directories: the watch on each real directory, by layer.
    watches: Vec<(LayerId, i32)>,
    /// Directories: every real directory is watched.
    complete: bool,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Known>,
    /// (parent node, name) → node: the child an event names.
    names: HashMap<(u64, OsString), u64>,
    /// Watch → the directory nodes it serves.
    wds: HashMap<i32, Vec<u64>>,
}

/// The watches of one mount (`udba=notify`). Lock: `state` is taken after any inode-table
/// lock is released (the table calls [`Observer`] methods with none held), and nothing
/// takes a table lock while holding it.
#[derive(Debug)]
pub struct Watches {
    inotify: Inotify,
    /// At most this many watches (`udba_max_watches=`).
    max: usize,
    state: RwLock<State>,
    /// The one "out of watches" warning was logged.
    warned: AtomicBool,
    /// Branches not watched: `rr` ones (aufs's "real read-only", promised never to change).
    unwatched: RwLock<HashSet<LayerId>>,
}

impl Watches {
    pub fn new(max: Option<usize>) -> std::io::Result<Watches> {
        Ok(Watches {
            inotify: Inotify::new()?,
            max: max.unwrap_or(usize::MAX),
            state: RwLock::new(State::default()),
            warned: AtomicBool::new(false),
            unwatched: RwLock::new(HashSet::new()),
        })
    }

    /// The branches whose directories get no watch from now on (`rr` branches: a branch
    /// change sets them before it re-resolves the nodes, which then drop their watches).
    pub fn set_unwatched(&self, layers: impl IntoIterator<Item = LayerId>) {
        *self.unwatched.write() = layers.into_iter().collect();
    }

    /// The inotify fd's number (tests count its watches in /proc/PID/fdinfo).
    pub fn fd(&self) -> i32 {
        self.inotify.raw()
    }

    /// Watches held now.
    pub fn count(&self) -> usize {
        self.state.read().wds.len()
    }

    /// Every real directory of directory node `dir` is watched: the kernel may cache its
    /// listing, its attributes and the entries of its names.
    pub fn covers_dir(&self, dir: u64) -> bool {
        let st = self.state.read();
        st.nodes.get(&dir).is_some_and(|k| k.is_dir && k.complete)
    }

    /// The kernel may cache the attributes of `node` (and pages, for a file): a directory
    /// covered itself, anything else in a covered directory.
    pub fn covers_attrs(&self, node: u64) -> bool {
        let st = self.state.read();
        let Some(k) = st.nodes.get(&node) else {
            return false;
        };
        let dir = if k.is_dir { node } else { k.parent };
        st.nodes.get(&dir).is_some_and(|d| d.is_dir && d.complete)
    }

    /// Watches `fd`'s directory for `node`: the watch, or None when out of watches.
    fn watch(&self, st: &mut State, fd: std::os::fd::BorrowedFd<'_>, node: u64) -> Option<i32> {
        let wd = match self.inotify.add_watch(fd) {
            Ok(wd) => wd,
            Err(e) => {
                self.out_of_watches(st.wds.len(), &e.to_string());
                return None;
            }
        };
        if !st.wds.contains_key(&wd) && st.wds.len() >= self.max {
            let _ = self.inotify.rm_watch(wd);
            self.out_of_watches(st.wds.len(), "udba_max_watches reached");
            return None;
        }
        let users = st.wds.entry(wd).or_default();
        if !users.contains(&node) {
            users.push(node);
        }
        Some(wd)
    }

    fn out_of_watches(&self, held: usize, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "udba=notify: cannot watch more directories ({why}; {held} watched): \
                 directories beyond are checked on access, as with udba=reval"
            );
        }
    }

    /// `node` no longer uses watch `wd`; the watch goes with its last user.
    fn unuse(&self, st: &mut State, wd: i32, node: u64) {
        let Some(users) = st.wds.get_mut(&wd) else {
            return;
        };
        users.retain(|&n| n != node);
        if users.is_empty() {
            st.wds.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// Turns events into what they call for (see the module docs). `writeback`: the
    /// kernel keeps files' size and mtime itself (the writeback cache: it never takes them
    /// from an attribute reply for an inode it holds), so a content change also drops the
    /// name's entry: the kernel then lets go of the inode unless it is open, and the next
    /// lookup makes a new one with the attributes as they are.
    pub fn translate(&self, events: &[Event], writeback: bool) -> Batch {
        use libc::{
            IN_ATTRIB, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MOVED_FROM,
            IN_MOVED_TO, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_UNMOUNT,
        };
        let mut st = self.state.write();
        let mut b = Batch::default();
        for e in events {
            if e.mask & IN_Q_OVERFLOW != 0 {
                log::warn!("udba=notify: event queue overflowed; dropping every cached entry");
                everything(&st, &mut b);
                continue;
            }
            if e.mask & (IN_IGNORED | IN_UNMOUNT) != 0 {
                self.lost(&mut st, e.wd, &mut b);
                continue;
            }
            let Some(users) = st.wds.get(&e.wd).cloned() else {
                continue;
            };
            if e.name.is_empty() {
                // The directory itself: its attributes (an opaque marker, say) or its
                // place changed. Its name is looked up again.
                for d in &users {
                    if let Some(k) = st.nodes.get(d) {
                        if *d != ROOT_INO {
                            b.push(Inval::Entry(k.parent, k.name.clone()));
                            b.reresolve.push((k.parent, k.name.clone(), *d));
                        }
                        b.push(Inval::Inode {
                            ino: *d,
                            pages: true,
                        });
                    }
                }
                if e.mask & (IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
                    // What it watches is no longer (there): a later lookup watches anew.
                    self.lost(&mut st, e.wd, &mut b);
                    let _ = self.inotify.rm_watch(e.wd);
                }
                continue;
            }
            let names =
                e.mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB) != 0;
            for d in users {
                if !names {
                    // Data changed (IN_MODIFY, IN_CLOSE_WRITE): the file's attributes and
                    // pages.
                    if let Some(&c) = st.names.get(&(d, e.name.clone())) {
                        b.push(Inval::Inode {
                            ino: c,
                            pages: true,
                        });
                        if writeback {
                            b.push(Inval::Entry(d, e.name.clone()));
                        }
                    }
                    continue;
                }
                b.names_changed = true;
                b.push(Inval::Inode {
                    ino: d,
                    pages: true,
                });
                for n in shown_names(&st, d, &e.name) {
                    child_changed(&st, d, n, &mut b);
                }
            }
        }
        b
    }

    /// Watch `wd` is gone (removed by the kernel or by us): its directories are no longer
    /// covered until looked up again.
    fn lost(&self, st: &mut State, wd: i32, b: &mut Batch) {
        let Some(users) = st.wds.remove(&wd) else {
            return;
        };
        for d in users {
            let Some(k) = st.nodes.get_mut(&d) else {
                continue;
            };
            k.watches.retain(|&(_, w)| w != wd);
            k.complete = false;
            if d != ROOT_INO {
                b.push(Inval::Entry(k.parent, k.name.clone()));
                b.reresolve.push((k.parent, k.name.clone(), d));
            }
            b.push(Inval::Inode {
                ino: d,
                pages: true,
            });
            b.names_changed = true;
        }
    }
}

/// The merged-view names a real name `n` in directory `d` stands for: itself, or for an
/// aufs whiteout `.wh.X` also X, and for the opaque marker every known child.
fn shown_names(st: &State, d: u64, n: &OsStr) -> Vec<OsString> {
    let b = n.as_bytes();
    if b == crate::whiteout::AUFS_OPAQUE {
        return st
            .names
            .keys()
            .filter(|(p, _)| *p == d)
            .map(|(_, n)| n.clone())
            .chain([n.to_os_string()])
            .collect();
    }
    match crate::whiteout::aufs_target(n) {
        Some(x) => vec![n.to_os_string(), x.to_os_string()],
        None => vec![n.to_os_string()],
    }
}

/// Name `n` in directory node `d` appeared, went, moved or changed attributes.
fn child_changed(st: &State, d: u64, n: OsString, b: &mut Batch) {
    if let Some(&c) = st.names.get(&(d, n.clone())) {
        // A directory's merge may have changed (a real part appeared or went): its cached
        // listing goes too.
        let dir = st.nodes.get(&c).is_some_and(|k| k.is_dir);
        b.push(Inval::Inode { ino: c, pages: dir });
        if dir {
            b.reresolve.push((d, n.clone(), c));
        }
    }
    b.push(Inval::Entry(d, n));
}

/// Everything known (the event queue overflowed).
fn everything(st: &State, b: &mut Batch) {
    for ((p, n), _) in st.names.iter() {
        b.push(Inval::Entry(*p, n.clone()));
    }
    for id in st.nodes.keys() {
        b.push(Inval::Inode {
            ino: *id,
            pages: true,
        });
    }
    b.names_changed = true;
}

impl Observer for Watches {
    fn located(&self, node: &Arc<Node>) {
        let id = node.id;
        // Copied out first (the location lock is a leaf): a file needs its name only.
        let (parent, name, dirs) = {
            let l = node.loc.read();
            let dirs = if node.is_dir() {
                l.dirs.clone()
            } else {
                Vec::new()
            };
            (l.parent, l.name.clone(), dirs)
        };
        let mut st = self.state.write();
        if !node.is_dir() {
            // The common case, a file looked up again where it was: nothing to do.
            if let Some(k) = st.nodes.get_mut(&id) {
                if k.parent == parent && k.name == name {
                    if !std::ptr::eq(k.node.as_ptr(), Arc::as_ptr(node)) {
                        k.node = Arc::downgrade(node);
                    }
                    return;
                }
            }
        }
        let loc = crate::inode::Loc {
            parent,
            name,
            top: 0,
            dirs,
            data: None,
            pinned: None,
            staged: None,
            lower_attr: None,
            lower_xattrs: None,
            indexed: None,
        };
        let (old_key, old_watches) = match st.nodes.get_mut(&id) {
            Some(k) => {
                let old = (k.parent, std::mem::replace(&mut k.name, loc.name.clone()));
                k.parent = loc.parent;
                k.node = Arc::downgrade(node);
                (Some(old), std::mem::take(&mut k.watches))
            }
            None => {
                st.nodes.insert(
                    id,
                    Known {
                        node: Arc::downgrade(node),
                        parent: loc.parent,
                        name: loc.name.clone(),
                        is_dir: node.is_dir(),
                        watches: Vec::new(),
                        complete: false,
                    },
                );
                (None, Vec::new())
            }
        };
        let key = (loc.parent, loc.name.clone());
        if let Some(old) = old_key.filter(|o| *o != key) {
            if st.names.get(&old) == Some(&id) {
                st.names.remove(&old);
            }
        }
        if id != ROOT_INO {
            st.names.insert(key, id);
        }
        if !node.is_dir() {
            return;
        }
        // Watch every real directory (watching one again gives its watch again).
        let mut watches = Vec::with_capacity(loc.dirs.len());
        let mut complete = true;
        let unwatched = self.unwatched.read();
        for (layer, fd) in &loc.dirs {
            if unwatched.contains(layer) {
                continue; // never changes: nothing to see
            }
            match self.watch(&mut st, fd.as_fd(), id) {
                Some(wd) => watches.push((*layer, wd)),
                None => complete = false,
            }
        }
        for (_, wd) in old_watches {
            if !watches.iter().any(|&(_, w)| w == wd) {
                self.unuse(&mut st, wd, id);
            }
        }
        if let Some(k) = st.nodes.get_mut(&id) {
            k.watches = watches;
            k.complete = complete;
        }
    }

    fn removed(&self, node: &Arc<Node>) {
        let mut st = self.state.write();
        let same = st
            .nodes
            .get(&node.id)
            .is_some_and(|k| std::ptr::eq(k.node.as_ptr(), Arc::as_ptr(node)));
        if !same {
            return; // a lookup made a new node with this id meanwhile
        }
        let Some(k) = st.nodes.remove(&node.id) else {
            return;
        };
        let key = (k.parent, k.name);
        if st.names.get(&key) == Some(&node.id) {
            st.names.remove(&key);
        }
        for (_, wd) in k.watches {
            self.unuse(&mut st, wd, node.id);
        }
    }
}

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
                let events = match w.inotify.read_events(&mut buf) {
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
        let ev = wt.inotify.read_events(&mut buf).unwrap();
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
            wt.translate(&wt.inotify.read_events(&mut buf).unwrap(), false)
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
            lost = wt.translate(&wt.inotify.read_events(&mut buf).unwrap(), false);
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

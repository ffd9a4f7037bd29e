//! The inotify watches of `udba=notify` (see `udba.rs`): one watch per real directory of
//! every directory node the kernel holds, kept in step with the inode table through its
//! [`Observer`] hooks, and the kernel cache entries an event calls to drop ([`Inval`]).
//! Part of the model, below the union (`fs.rs` holds a mount's [`Watches`]); `udba.rs`
//! reads the events and sends the invalidations.

use crate::inode::{Node, Observer};
use crate::layers::{LayerId, ROOT_INO};
use crate::sys::inotify::{Event, Inotify};
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

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
    /// Waits for the next events of every watch (`buf` holds them while they are parsed).
    pub fn read_events(&self, buf: &mut [u8]) -> std::io::Result<Vec<Event>> {
        self.inotify.read_events(buf)
    }

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
    /// Watches every real directory of directory node `id` (watching one again gives its
    /// watch again), then gives up those of `old` it no longer has.
    fn rewatch(
        &self,
        st: &mut State,
        id: u64,
        dirs: &[(LayerId, Arc<std::os::fd::OwnedFd>)],
        old: Vec<(LayerId, i32)>,
    ) {
        let mut watches = Vec::with_capacity(dirs.len());
        let mut complete = true;
        let unwatched = self.unwatched.read();
        for (layer, fd) in dirs {
            if unwatched.contains(layer) {
                continue; // never changes: nothing to see
            }
            match self.watch(st, fd.as_fd(), id) {
                Some(wd) => watches.push((*layer, wd)),
                None => complete = false,
            }
        }
        for (_, wd) in old {
            if !watches.iter().any(|&(_, w)| w == wd) {
                self.unuse(st, wd, id);
            }
        }
        if let Some(k) = st.nodes.get_mut(&id) {
            k.watches = watches;
            k.complete = complete;
        }
    }

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
        let is_dir = node.is_dir();
        let (old_key, old_watches) = match st.nodes.get_mut(&id) {
            Some(k) => {
                let old = (k.parent, std::mem::replace(&mut k.name, name.clone()));
                k.parent = parent;
                k.node = Arc::downgrade(node);
                (Some(old), std::mem::take(&mut k.watches))
            }
            None => {
                let known = Known {
                    node: Arc::downgrade(node),
                    parent,
                    name: name.clone(),
                    is_dir,
                    watches: Vec::new(),
                    complete: false,
                };
                st.nodes.insert(id, known);
                (None, Vec::new())
            }
        };
        let key = (parent, name);
        if let Some(old) = old_key.filter(|o| *o != key) {
            if st.names.get(&old) == Some(&id) {
                st.names.remove(&old);
            }
        }
        if id != ROOT_INO {
            st.names.insert(key, id);
        }
        if is_dir {
            self.rewatch(&mut st, id, &dirs, old_watches);
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

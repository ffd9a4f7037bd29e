//! A branch change applied to a live mount (aufs's `remount,add:/del:/mod:…`; the
//! operations are read and checked in `branch.rs`).
//!
//! **Model.** Layer ids are identities, never reused; the order is the current
//! `layers::Stack`, swapped whole. A node's `Loc` records where its entry was found in the
//! stack it was resolved in, with the fds it found. A change:
//! 1. plans the new stack (nothing touched on a refusal) and, for `del:`, refuses with
//!    EBUSY while the branch is in use (below);
//! 2. opens the new branches;
//! 3. under `UnionFs::restack` held exclusive (no lookup is between reading a parent's
//!    location and remembering its result), swaps the stack in and re-resolves every node
//!    the kernel holds, parents first, under the new stack:
//!    - a directory that resolves to the same object gets its new location (the layers it
//!      merges now); one that does not (hidden now, or another object in front of it) is
//!      *detached*: it keeps its old location, fds included, as a removed directory would;
//!    - a non-directory that resolves to the same real object keeps its location; any
//!      other is *pinned* to its real object (`Loc::pinned`, as a file unlinked while open
//!      is): its open files, attributes and data keep working, and its name leads to
//!      whatever the new stack has there;
//! 4. returns what the kernel must drop ([`Inval`]): every directory the kernel holds
//!    whose real directories changed (attributes and cached listing) and, in each, every
//!    name a real directory that came, went or changed mode has (whiteouts included),
//!    which covers the negative entries of names a new branch adds; a directory that
//!    merges the same real directories as before is left alone, and so are its files.
//!    The adapter sends those before the change is answered (`dispatch::Invalidator`).
//!
//! **In use.** A branch is in use while the daemon has an open file or directory handle
//! on a node whose entry lives in it (its `top` is that branch), or a process's working
//! or root directory or one of its open descriptors (from /proc) is such a node of this
//! mount. (A mount whose listings the kernel caches has no directory handles: OPENDIR is
//! answered ENOSYS there, dispatch/dir.rs, so its open directories are found in /proc only, and a
//! process of another PID namespace holding one open is not seen.) A directory merged from
//! several branches is in use only by the branch on top: removing a lower part of it
//! leaves the directory in place. `del!:DIR` removes a branch in use anyway: its open
//! files keep their fds and go on working; nothing is written anywhere.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::branch::{self, Current, Op, Planned};
use crate::error::{Error, Result};
use crate::inode::{Loc, Node};
use crate::layers::{Layer, LayerId, Mode, Stack, ROOT_INO};
use crate::lookup;
use crate::options::Config;
use crate::sys;
use crate::whiteout;
use crate::UnionFs;

/// What the kernel must forget after a branch change.
#[derive(Debug, Default)]
pub struct Inval {
    /// Directories whose attributes and cached listing go.
    pub dirs: Vec<u64>,
    /// (directory, name) entries, positive or negative, that go.
    pub names: Vec<(u64, OsString)>,
}

/// The result of a change.
#[derive(Debug, Default)]
pub struct Changed {
    /// One line per operation.
    pub lines: Vec<String>,
    pub inval: Inval,
    /// The lowers' paths after the change, top first (the mount's `lowerdir` now).
    pub lowerdirs: Vec<PathBuf>,
}

fn canon(p: &Path) -> std::result::Result<PathBuf, String> {
    let c = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !c.is_dir() {
        return Err(format!("{}: not a directory", p.display()));
    }
    Ok(c)
}

/// The raw names in the real directories `dirs` (an aufs whiteout `.wh.X` counts as X).
fn raw_names(dirs: &[(LayerId, Arc<OwnedFd>)], out: &mut HashSet<OsString>) {
    for (_, fd) in dirs {
        let Ok(d) = sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY) else {
            continue;
        };
        for e in sys::read_dir(d.as_fd()).unwrap_or_default() {
            if whiteout::is_marker_name(&e.name) {
                if let Some(t) = whiteout::aufs_target(&e.name) {
                    out.insert(t.to_os_string());
                }
            } else {
                out.insert(e.name);
            }
        }
    }
}

/// The real directories of `a` that `b` does not have (by layer and directory), or whose
/// layer changed mode.
fn changed(
    a: &[(LayerId, Arc<OwnedFd>)],
    b: &[(LayerId, Arc<OwnedFd>)],
    mode_changed: &dyn Fn(LayerId) -> bool,
) -> Vec<(LayerId, Arc<OwnedFd>)> {
    let key = |fd: &OwnedFd| sys::fstat(fd.as_fd()).map(|st| (st.st_dev, st.st_ino)).ok();
    a.iter()
        .filter(|(id, fd)| {
            mode_changed(*id)
                || !b
                    .iter()
                    .any(|(j, g)| j == id && key(g).is_some() && key(g) == key(fd))
        })
        .cloned()
        .collect()
}

impl UnionFs {
    /// The stack as `branch::plan` sees it.
    fn branch_current(&self, cfg: &Config) -> Current {
        let c = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Current {
            upper: self.layers.upper.as_ref().map(|u| c(&u.path)),
            work: self
                .layers
                .upper
                .as_ref()
                .and(cfg.workdir.as_deref())
                .map(c),
            lowers: self
                .layers
                .stack()
                .lowers
                .iter()
                .map(|l| Planned {
                    id: Some(l.id),
                    path: c(&l.path),
                    mode: l.mode,
                })
                .collect(),
        }
    }

    /// Carries out branch operations `ops` (see the module docs). `mount_dev`: the mount's
    /// device number, to find processes whose working directory is in a branch.
    pub fn change_branches(
        &self,
        cfg: &Config,
        ops: &[Op],
        mount_dev: Option<u64>,
    ) -> Result<Changed> {
        let _one = self.changing.lock();
        let cur = self.branch_current(cfg);
        // A directory of this mount itself would make every lookup in it a request to
        // this daemon while it serves one.
        let canon_outside = |p: &Path| {
            let c = canon(p)?;
            let dev = std::os::unix::fs::MetadataExt::dev(
                &std::fs::metadata(&c).map_err(|e| format!("{}: {e}", p.display()))?,
            );
            if Some(dev) == mount_dev {
                return Err(format!("{}: is inside this mount", p.display()));
            }
            Ok(c)
        };
        let plan =
            branch::plan(&cur, ops, &canon_outside).map_err(|e| Error::new(libc::EINVAL, e))?;
        let stack = self.layers.stack();
        self.check_removable(&stack, &plan.removed, mount_dev)?;
        let lowers = self.open_planned(cfg, &stack, &plan.lowers)?;
        let lowerdirs = lowers.iter().map(|l| l.path.clone()).collect();
        let inval = {
            let t = std::time::Instant::now();
            let _w = self.restack.write();
            let old = self.layers.stack();
            if let Some(w) = &self.watches {
                w.set_unwatched(
                    lowers
                        .iter()
                        .filter(|l| l.mode == crate::layers::Mode::Rr)
                        .map(|l| l.id),
                );
            }
            let gen = self.layers.set_lowers(lowers);
            let inval = self.reresolve_all(&old);
            log::info!(
                "branches: stack generation {gen}: {:?}; {} nodes re-resolved in {:?}, {} names to drop",
                plan.lines,
                self.inodes.len(),
                t.elapsed(),
                inval.names.len()
            );
            inval
        };
        self.names_changed();
        Ok(Changed {
            lines: plan.lines,
            inval,
            lowerdirs,
        })
    }

    /// EBUSY unless every branch of `removed` that is not forced out is unused
    /// (`branch_user`).
    fn check_removable(
        &self,
        stack: &Stack,
        removed: &[(LayerId, bool)],
        mount_dev: Option<u64>,
    ) -> Result<()> {
        for (id, force) in removed {
            if *force {
                continue;
            }
            if let Some(what) = self.branch_user(*id, mount_dev) {
                let path = stack
                    .lower(*id)
                    .map(|l| l.path.display().to_string())
                    .unwrap_or_default();
                return Err(Error::new(
                    libc::EBUSY,
                    format!("{path}: in use ({what}); del!:{path} removes it anyway"),
                ));
            }
        }
        Ok(())
    }

    /// The lowers of the new stack, in order: those of `stack` kept (or reopened for a
    /// new mode), new ones opened.
    fn open_planned(
        &self,
        cfg: &Config,
        stack: &Stack,
        planned: &[Planned],
    ) -> Result<Vec<Arc<Layer>>> {
        let mut lowers = Vec::with_capacity(planned.len());
        for p in planned {
            let l = match p.id.and_then(|id| stack.lower(id)) {
                Some(l) if l.mode == p.mode => l.clone(),
                // To or from writable: reached through another mount, with a staging
                // directory (`layers::open_branch`); the same id.
                Some(l) if l.mode == Mode::Rw || p.mode == Mode::Rw => {
                    Arc::new(self.layers.reopen_lower(cfg, l, p.mode)?)
                }
                Some(l) => Arc::new(Layer {
                    mode: p.mode,
                    ..Layer::clone(l)
                }),
                None => Arc::new(self.layers.open_lower(cfg, &p.path, p.mode)?),
            };
            if l.read_level.is_some() {
                self.shows_overrides.store(true, Ordering::Relaxed);
            }
            lowers.push(l);
        }
        Ok(lowers)
    }

    /// What uses branch `id`, if anything (see the module docs).
    fn branch_user(&self, id: LayerId, mount_dev: Option<u64>) -> Option<String> {
        let lives_in = |ino: u64| {
            self.inodes.get(ino).is_some_and(|n| {
                let l = n.loc.read();
                l.pinned.is_none() && l.top == id
            })
        };
        if let Some(h) = self.files.iter().find(|h| lives_in(h.ino)) {
            return Some(format!("an open file, node {:#x}", h.ino));
        }
        if let Some(d) = self.dirs.iter().find(|d| lives_in(d.ino)) {
            return Some(format!("an open directory, node {:#x}", d.ino));
        }
        let dev = mount_dev?;
        let procs = std::fs::read_dir("/proc").ok()?;
        for p in procs.flatten() {
            let name = p.file_name();
            if !name.as_bytes().iter().all(u8::is_ascii_digit) {
                continue;
            }
            for link in ["cwd", "root"] {
                let Ok(path) = CString::new(p.path().join(link).as_os_str().as_bytes()) else {
                    continue;
                };
                let Ok((d, ino)) = sys::statx_cached(&path) else {
                    continue;
                };
                if d == dev && lives_in(ino) {
                    return Some(format!(
                        "the {} directory of process {}",
                        if link == "cwd" { "working" } else { "root" },
                        name.to_string_lossy()
                    ));
                }
            }
            // Open directories (and files): on a mount that answers OPENDIR with ENOSYS
            // (dispatch/dir.rs) the daemon has no directory handles, so a process's open
            // descriptors are the only record of a directory it holds open.
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(path) = CString::new(fd.path().as_os_str().as_bytes()) else {
                    continue;
                };
                let Ok((d, ino)) = sys::statx_cached(&path) else {
                    continue;
                };
                if d == dev && lives_in(ino) {
                    return Some(format!(
                        "descriptor {} of process {}",
                        fd.file_name().to_string_lossy(),
                        name.to_string_lossy()
                    ));
                }
            }
        }
        None
    }

    /// Re-resolves every node under the stack just swapped in, `old` the one before
    /// (caller holds `restack`). A directory that merges the same layers in the same modes
    /// as before is *quiet*: its names resolve as before (a name's resolution depends only
    /// on its parent's real directories and their modes), so its non-directory children
    /// are not looked up again and nothing of it is dropped from the kernel. (Its child
    /// directories are, as an absolute redirect reaches into the stack itself; so are
    /// metacopy files, whose data may be found through one.)
    fn reresolve_all(&self, old_stack: &Stack) -> Inval {
        let new_stack = self.layers.stack();
        let same_dirs = |a: &Loc, b: &Loc| {
            a.dirs.len() == b.dirs.len()
                && a.dirs.iter().zip(&b.dirs).all(|((x, _), (y, _))| {
                    x == y
                        && old_stack.lower(*x).map(|l| l.mode)
                            == new_stack.lower(*x).map(|l| l.mode)
                })
        };
        let mode_changed = |id: LayerId| {
            old_stack.lower(id).map(|l| l.mode) != new_stack.lower(id).map(|l| l.mode)
        };
        let mut quiet: HashSet<u64> = HashSet::new();
        let nodes = self.inodes.all();
        let by_id: HashMap<u64, &Arc<Node>> = nodes.iter().map(|n| (n.id, n)).collect();
        // Parents before children.
        let mut depth: HashMap<u64, usize> = HashMap::new();
        for n in &nodes {
            let mut chain = vec![n.id];
            let mut at = n.loc.read().parent;
            let mut d = 0;
            while at != ROOT_INO && chain.len() < 4096 {
                if let Some(&k) = depth.get(&at) {
                    d = k;
                    break;
                }
                chain.push(at);
                at = by_id
                    .get(&at)
                    .map(|p| p.loc.read().parent)
                    .unwrap_or(ROOT_INO);
            }
            for (i, id) in chain.iter().rev().enumerate() {
                depth.entry(*id).or_insert(d + i + 1);
            }
        }
        let mut order: Vec<&Arc<Node>> = nodes.iter().collect();
        order.sort_by_key(|n| {
            if n.id == ROOT_INO {
                0
            } else {
                depth.get(&n.id).copied().unwrap_or(usize::MAX)
            }
        });
        let mut inval = Inval::default();
        let mut old_dirs: HashMap<u64, Loc> = HashMap::new();
        let mut detached: HashSet<u64> = HashSet::new();
        for node in order {
            let old = node.loc();
            if node.is_dir() {
                let new = if node.id == ROOT_INO {
                    let roots = self.layers.roots();
                    Some(Loc {
                        top: roots.first().map(|(l, _)| *l).unwrap_or(1),
                        dirs: roots,
                        lower_attr: None,
                        lower_xattrs: None,
                        indexed: None,
                        ..old.clone()
                    })
                } else if detached.contains(&old.parent) || old.pinned.is_some() {
                    None
                } else {
                    self.resolve_again(&old)
                        .filter(|f| f.is_dir() && f.ino == node.id)
                        .map(|f| Loc {
                            top: f.top,
                            dirs: f.dirs,
                            data: None,
                            pinned: None,
                            lower_attr: None,
                            lower_xattrs: None,
                            indexed: None,
                            ..old.clone()
                        })
                };
                if new.as_ref().is_some_and(|n| same_dirs(&old, n)) {
                    quiet.insert(node.id);
                } else {
                    // Only names in a real directory that came, went or changed mode can
                    // resolve differently (the others meet the same entries in the same
                    // order): those are dropped, positive or negative.
                    let empty = Vec::new();
                    let new_dirs = new.as_ref().map(|n| &n.dirs).unwrap_or(&empty);
                    let mut names = HashSet::new();
                    raw_names(&changed(&old.dirs, new_dirs, &mode_changed), &mut names);
                    raw_names(&changed(new_dirs, &old.dirs, &mode_changed), &mut names);
                    inval.dirs.push(node.id);
                    inval.names.extend(names.into_iter().map(|n| (node.id, n)));
                    if node.id != ROOT_INO {
                        // Its own entry, also where its parent is quiet (a redirect).
                        inval.names.push((old.parent, old.name.clone()));
                    }
                }
                let moved = !quiet.contains(&node.id);
                match new {
                    Some(l) => {
                        *node.loc_mut() = l;
                        if moved {
                            // udba=notify: watches follow the new real directories.
                            self.inodes.located(node.id);
                        }
                    }
                    None => {
                        detached.insert(node.id);
                    }
                }
                old_dirs.insert(node.id, old);
                continue;
            }
            if old.pinned.is_some() || (quiet.contains(&old.parent) && old.data.is_none()) {
                continue;
            }
            let Some(old_parent) = old_dirs.get(&old.parent) else {
                continue;
            };
            let Some(dir) = old_parent.dir_in(old.top) else {
                continue;
            };
            let Ok(cname) = CString::new(old.name.as_bytes()) else {
                continue;
            };
            let Ok(was) = sys::fstatat(dir.as_fd(), &cname) else {
                continue;
            };
            let same = !detached.contains(&old.parent)
                && self.resolve_again(&old).is_some_and(|f| {
                    !f.is_dir()
                        && f.top == old.top
                        && (f.st.st_dev, f.st.st_ino) == (was.st_dev, was.st_ino)
                });
            if same {
                continue;
            }
            match sys::openat(dir.as_fd(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => {
                    node.loc_mut().pinned = Some(Arc::new(fd));
                    self.inodes.unname(node);
                }
                Err(e) => log::debug!("branches: pinning node {:#x}: {e}", node.id),
            }
        }
        inval
    }

    /// `loc`'s name looked up again in its parent's (current) location.
    fn resolve_again(&self, loc: &Loc) -> Option<lookup::Found> {
        let parent = self.inodes.get(loc.parent)?;
        let ploc = parent.loc();
        lookup::lookup(&self.layers, &ploc, &loc.name)
            .ok()
            .flatten()
    }
}

//! The operation API: one method per filesystem operation, in plain Rust types, callable
//! from tests without FUSE. The methods are spread over the modules that own each concern
//! (`attr.rs`, `file.rs`, …); this file holds the shared state and name resolution.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::attr::Attr;
use crate::error::{err, Error, Result};
use crate::file::FileHandle;
use crate::inode::{InodeTable, Kind, Loc, Node};
use crate::layers::{Layers, ROOT_INO};
use crate::lookup;
use crate::options::Config;
use crate::readdir::{self, DirEntry};

/// Longest name a directory entry may have.
pub const NAME_MAX: usize = 255;

/// A name the kernel may send as one path component: not empty, no `/` or NUL, at most
/// NAME_MAX bytes. ("." and ".." pass; callers that create or remove refuse them.)
pub fn check_component(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return err(libc::ENAMETOOLONG);
    }
    if b.is_empty() || b.contains(&b'/') || b.contains(&0) {
        return err(libc::EINVAL);
    }
    Ok(())
}

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

/// An open directory stream: its listing, built at the first read, on each rewind and when
/// names changed through the mount since (with the [`UnionFs::names_gen`] it was built at).
#[derive(Debug, Default)]
pub struct DirStream {
    pub ino: u64,
    pub listing: Mutex<Option<(u64, Arc<Vec<DirEntry>>)>>,
}

/// A real object to act on: `dir` plus `name` (empty: `dir` itself).
#[derive(Debug, Clone)]
pub struct Real {
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    pub loc: Loc,
}

impl Real {
    /// Opens the real object with `flags`. A pinned node (its name was removed while
    /// another hard link or an open file keeps it) has an empty name: its `O_PATH` fd is
    /// reopened, since `openat(fd, "")` would fail with ENOENT.
    pub fn open(&self, flags: i32) -> std::io::Result<OwnedFd> {
        if self.name.is_empty() {
            crate::sys::reopen(self.dir.as_fd(), flags)
        } else {
            crate::sys::openat(self.dir.as_fd(), &self.name, flags, 0)
        }
    }
}

/// The union filesystem.
#[derive(Debug)]
pub struct UnionFs {
    pub layers: Layers,
    pub inodes: InodeTable,
    pub(crate) files: DashMap<u64, Arc<FileHandle>>,
    pub(crate) dirs: DashMap<u64, Arc<DirStream>>,
    next_fh: AtomicU64,
    pub read_only: bool,
    /// `volatile`: skip fsync (throw-away uppers).
    pub volatile: bool,
    /// `metacopy=on`: chmod/chown/utimens/xattr changes copy a file's metadata only.
    pub metacopy: bool,
    /// How ids on the branches map to ids shown through the mount.
    pub ids: crate::ids::Ids,
    /// POSIX ACLs are enforced and inherited (not `noacl`).
    pub acl: bool,
    /// `static_nlink`: directories report one link.
    pub static_nlink: bool,
    /// The copy-up staging directory `workdir/work` (writable mounts only).
    pub(crate) work: Option<Arc<OwnedFd>>,
    /// The kernel caches writes (negotiated at INIT when passthrough is not possible).
    pub(crate) writeback_cache: std::sync::atomic::AtomicBool,
    /// Numbers given to upper files whose number is not simply their own: upper
    /// (st_dev, st_ino) → the number shown. A copied-up file takes its number from the
    /// lower entry of the same name (its origin is not encoded), so a rename or a hard
    /// link elsewhere would give it another number under another name; the kernel's inode
    /// cache would then hold two nodes for one file, one of them naming a stale place.
    /// One number per upper file for the life of the mount prevents that.
    pub(crate) renumbered: DashMap<(u64, u64), u64>,
    /// `writeback=0`: the writeback cache must not be negotiated.
    pub no_writeback: bool,
    /// `xattr_permissions=1|2`: owner and mode overrides in an xattr (override_stat.rs).
    pub override_level: Option<crate::override_stat::Level>,
    /// Where overrides are shown, by layer id: every layer with `xattr_permissions`, else
    /// the lowers whose root carries one (as fuse-overlayfs).
    pub(crate) read_levels: Vec<Option<crate::override_stat::Level>>,
    /// Some layer shows overrides (`read_levels` is not all `None`).
    pub(crate) shows_overrides: bool,
    /// `noxattrs`: xattr calls through the mount fail with ENOTSUP.
    pub noxattrs: bool,
    /// Bumped after every change of names made through the mount (any directory): a
    /// stream's listing older than this is rebuilt before it is read on (readdir.rs).
    names_gen: AtomicU64,
}

impl UnionFs {
    /// Opens the branches of `cfg` (already validated) and builds the root.
    pub fn new(cfg: &Config) -> Result<UnionFs> {
        let layers = Layers::open(cfg)?;
        let root = Loc {
            parent: ROOT_INO,
            name: Default::default(),
            top: layers.roots().first().map(|(l, _)| *l).unwrap_or(1),
            dirs: layers.roots(),
            data: None,
            pinned: None,
        };
        let read_only = !cfg.writable();
        let mut read_levels = vec![cfg.xattr_permissions];
        for l in &layers.lowers {
            let detected = crate::override_stat::detect(std::os::fd::AsFd::as_fd(&*l.root));
            if cfg.xattr_permissions.is_none() && detected.is_some() {
                log::info!(
                    "lowerdir {}: its root carries an owner override; showing its overrides",
                    l.path.display()
                );
            }
            read_levels.push(cfg.xattr_permissions.or(detected));
        }
        let work = match (&layers.work, read_only) {
            (Some(w), false) => Some(Arc::new(crate::copy_up::prepare_staging(
                std::os::fd::AsFd::as_fd(&**w),
            )?)),
            _ => None,
        };
        Ok(UnionFs {
            inodes: InodeTable::new(root),
            volatile: cfg.volatile,
            metacopy: cfg.metacopy,
            ids: cfg.ids.clone(),
            acl: !cfg.noacl && !cfg.noxattrs,
            no_writeback: cfg.no_writeback,
            override_level: cfg.xattr_permissions,
            shows_overrides: read_levels.iter().any(Option::is_some),
            read_levels,
            noxattrs: cfg.noxattrs,
            static_nlink: cfg.static_nlink,
            work,
            writeback_cache: std::sync::atomic::AtomicBool::new(false),
            renumbered: DashMap::new(),
            layers,
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
            read_only,
            names_gen: AtomicU64::new(0),
        })
    }

    pub(crate) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes
            .get(ino)
            .ok_or_else(|| Error::new(libc::ESTALE, format!("unknown inode {ino:#x}")))
    }

    /// The real object behind a node, in its top layer.
    pub(crate) fn real(&self, node: &Node) -> Result<Real> {
        let loc = node.loc();
        if let Some(p) = &loc.pinned {
            return Ok(Real {
                dir: p.clone(),
                name: CString::default(),
                loc,
            });
        }
        if node.is_dir() {
            let dir = loc
                .dirs
                .first()
                .map(|(_, fd)| fd.clone())
                .ok_or_else(|| Error::new(libc::EIO, "directory without layers"))?;
            // "." names the directory itself through its own fd.
            return Ok(Real {
                dir,
                name: CString::from(c"."),
                loc,
            });
        }
        let parent = self.node(loc.parent)?;
        let dir = parent
            .loc
            .read()
            .dir_in(loc.top)
            .ok_or_else(|| Error::new(libc::ESTALE, "parent lost its layer"))?;
        let name = CString::new(loc.name.as_bytes()).map_err(|_| Error::errno(libc::EINVAL))?;
        Ok(Real { dir, name, loc })
    }

    /// Gives an upper non-directory the one number it has in this mount (see
    /// `renumbered`): the first one shown, for every name it has or gets.
    pub(crate) fn settle_number(&self, f: &mut lookup::Found) {
        if f.top != crate::layers::UPPER || f.is_dir() {
            return;
        }
        let key = (f.st.st_dev, f.st.st_ino);
        if let Some(n) = self.renumbered.get(&key) {
            f.ino = *n;
            return;
        }
        if f.ino != self.layers.ino(f.st.st_dev, f.st.st_ino) || f.st.st_nlink > 1 {
            f.ino = *self.renumbered.entry(key).or_insert(f.ino);
        }
    }

    /// Resolves `name` in directory `parent` and counts one kernel reference on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        check_component(name)?;
        let pnode = self.node(parent)?;
        if !pnode.is_dir() {
            return err(libc::ENOTDIR);
        }
        // "." and ".." (FUSE_EXPORT_SUPPORT): the directory and its parent in the merged
        // tree, never resolved on a branch (".." of a branch root is outside it).
        let b = name.as_bytes();
        if b == b"." || b == b".." {
            let ino = if b == b"." || parent == ROOT_INO {
                parent
            } else {
                pnode.loc.read().parent
            };
            let attr = self.getattr(ino, None)?;
            self.inodes.count_lookup(ino);
            return Ok(attr);
        }
        let ploc = pnode.loc();
        let mut found =
            lookup::lookup(&self.layers, &ploc, name)?.ok_or_else(|| Error::errno(libc::ENOENT))?;
        self.settle_number(&mut found);
        let merged = found.merged();
        let mut st = found.st;
        if self.read_level(found.top).is_some() {
            let real_dir = if found.is_dir() {
                found.dirs.first().map(|(_, fd)| fd.clone())
            } else {
                ploc.dir_in(found.top)
            };
            let cname = CString::new(name.as_bytes()).map_err(|_| Error::errno(libc::EINVAL))?;
            if let Some(d) = real_dir {
                let n: &std::ffi::CStr = if found.is_dir() { c"." } else { &cname };
                self.show_override(&mut st, found.top, std::os::fd::AsFd::as_fd(&*d), n);
            }
        }
        let attr = self.attr(&st, found.ino, merged);
        let kind = Kind::from_mode(st.st_mode);
        let loc = Loc {
            parent,
            name: name.to_os_string(),
            top: found.top,
            dirs: found.dirs,
            data: found.data,
            pinned: None,
        };
        let node = self.inodes.remember(found.ino, kind, loc);
        if node.kind != kind {
            // The same number now names an object of another type (reused behind our
            // back): refuse rather than confuse the kernel's inode cache.
            self.inodes.forget(found.ino, 1);
            return Err(Error::new(
                libc::ESTALE,
                format!("{:#x} is a {kind:?} now, was a {:?}", found.ino, node.kind),
            ));
        }
        Ok(attr)
    }

    /// Which override xattr entries of `layer` show, if any.
    pub(crate) fn read_level(
        &self,
        layer: crate::layers::LayerId,
    ) -> Option<crate::override_stat::Level> {
        self.read_levels.get(layer).copied().flatten()
    }

    /// With `xattr_permissions` (or a lower marked at its root), shows the owner/mode
    /// override of `dir/name` (an entry of `layer`) in `st`.
    pub(crate) fn show_override(
        &self,
        st: &mut crate::sys::Stat,
        layer: crate::layers::LayerId,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
    ) {
        let Some(level) = self.read_level(layer) else {
            return;
        };
        let fmt = st.st_mode & libc::S_IFMT;
        if level == crate::override_stat::Level::Containers
            && fmt != libc::S_IFREG
            && fmt != libc::S_IFDIR
        {
            return; // user.* xattrs exist only on regular files and directories
        }
        if let Some(o) = crate::override_stat::read(level, dir, name) {
            o.apply(st);
        }
    }

    /// Attributes as shown through the mount: from a real stat, ids mapped.
    pub(crate) fn attr(&self, st: &crate::sys::Stat, ino: u64, merged: bool) -> Attr {
        let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let mut a = Attr::from_stat(st, ino, merged || (dir && self.static_nlink));
        (a.uid, a.gid) = self.ids.view(a.uid, a.gid);
        a
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Opens a directory stream.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return err(libc::ENOTDIR);
        }
        let fh = self.new_fh();
        self.dirs.insert(
            fh,
            Arc::new(DirStream {
                ino,
                listing: Mutex::new(None),
            }),
        );
        Ok(fh)
    }

    /// Some names changed through the mount (or a change was tried): listings of open
    /// streams built before are out of date. Called once the change is done, before it
    /// is answered.
    pub fn names_changed(&self) {
        self.names_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The listing of stream `fh`: (re)built when read from offset 0 and when names
    /// changed through the mount since it was built, so a stream never goes on from a
    /// listing older than the last change (the kernel's listing cache appends what a
    /// stream reads; readdir.rs's cookies make the new listing go on at the same place).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let stream = self
            .dirs
            .get(&fh)
            .map(|s| s.clone())
            .ok_or_else(|| Error::errno(libc::EBADF))?;
        if stream.ino != ino {
            return err(libc::EBADF);
        }
        let mut listing = stream.listing.lock();
        // Read before listing: a change that ends after this makes the listing old.
        let gen = self.names_gen.load(Ordering::Acquire);
        if let Some((made, l)) = &*listing {
            if offset != 0 && *made == gen {
                return Ok(l.clone());
            }
        }
        let node = self.node(ino)?;
        let loc = node.loc();
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            loc.parent
        };
        let l = Arc::new(readdir::list_with(
            &self.layers,
            &loc,
            ino,
            parent_ino,
            &self.read_levels,
        )?);
        *listing = Some((gen, l.clone()));
        Ok(l)
    }

    /// Attributes for a READDIRPLUS entry: a lookup (counted) except for `.` and `..`,
    /// which the kernel does not count.
    pub fn readdirplus_entry(&self, dir: u64, e: &DirEntry) -> Result<Attr> {
        let b = e.name.as_bytes();
        if b == b"." || b == b".." {
            return self.getattr(e.ino, None);
        }
        self.lookup(dir, &e.name)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}

//! The operation API: one method per filesystem operation, in plain Rust types, callable
//! from tests without FUSE. The methods are spread over the modules that own each concern
//! (`attr.rs`, `file.rs`, …); this file holds the shared state and name resolution.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::{err, Error, Result};
use crate::inode::{self, InodeTable, Kind, Loc, Node, NodeKey};
use crate::layers::{Layers, ROOT_INO};
use crate::lookup;
use crate::options::Config;
use crate::readdir::{self, DirEntry};
use crate::types::Attr;
use crate::types::FileHandle;

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

/// Who is asking (types.rs; named here too, as it always was).
pub use crate::types::Caller;

/// An open directory handle (OPENDIR answered): which directory. Its listing is the
/// node's (`readdir::DirState`), shared with every other stream of the directory; the
/// handle only tells `stack.rs` that the directory is in use. Mounts whose listings the
/// kernel caches have no handles at all (OPENDIR answered ENOSYS, `dispatch/dir.rs`).
#[derive(Debug, Default)]
pub struct DirStream {
    pub ino: u64,
}

/// A real object to act on: `dir` plus `name` (empty: `dir` itself).
#[derive(Debug, Clone)]
pub struct Real {
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    pub loc: Loc,
    /// Open it `O_NOATIME` where permitted (its layer has no private mount with the right
    /// atime attribute: `Layer::noatime_opens`).
    pub noatime: bool,
}

impl Real {
    /// Opens the real object with `flags`. A pinned node (its name was removed while
    /// another hard link or an open file keeps it) has an empty name: its `O_PATH` fd is
    /// reopened, since `openat(fd, "")` would fail with ENOENT.
    pub fn open(&self, flags: i32) -> std::io::Result<OwnedFd> {
        if self.name.is_empty() {
            crate::sys::reopen_noatime(self.dir.as_fd(), flags, self.noatime)
        } else {
            crate::sys::openat_noatime(self.dir.as_fd(), &self.name, flags, self.noatime)
        }
    }
}

/// How long a remount to read-write waits for the RELEASEs of lower passthrough handles
/// closed just before it (`UnionFs::stop_ro_lower_passthrough`).
pub const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The union filesystem.
#[derive(Debug)]
pub struct UnionFs {
    pub layers: Layers,
    pub inodes: InodeTable,
    pub(crate) files: DashMap<u64, Arc<FileHandle>>,
    pub(crate) dirs: DashMap<u64, Arc<DirStream>>,
    /// The kernel was told that directories are not opened (`no_dir_handles`): streams
    /// read with handle 0.
    unopened_dirs: AtomicBool,
    next_fh: AtomicU64,
    /// Every write gets EROFS: `ro`, no upper, or `remount,ro` (switched at run time by
    /// [`UnionFs::set_read_only`]; checked first by every operation that writes).
    read_only: AtomicBool,
    /// Serializes the making of writable lowers' staging directories (`copy_up.rs`).
    pub(crate) staging_made: Mutex<()>,
    /// Serializes [`UnionFs::set_read_only`].
    switching: Mutex<()>,
    /// `volatile`: skip fsync (throw-away uppers).
    pub volatile: bool,
    /// `metacopy=on`: chmod/chown/utimens/xattr changes copy a file's metadata only.
    pub metacopy: bool,
    /// `redirect_dir=off`: a directory with a lower part is not renamed (EXDEV).
    pub no_dir_redirects: bool,
    /// How ids on the branches map to ids shown through the mount.
    pub ids: crate::ids::Ids,
    /// POSIX ACLs are enforced and inherited (not `noacl`).
    pub acl: bool,
    /// `static_nlink`: directories report one link.
    pub static_nlink: bool,
    /// The copy-up staging directory `workdir/work`: made at mount time when the mount is
    /// writable, else at the first `remount,rw`.
    pub(crate) work: OnceLock<Arc<OwnedFd>>,
    /// aufs's placement policies among several writable branches (`wbr_policy.rs`).
    pub(crate) wbr: crate::wbr_policy::Wbr,
    pub(crate) create: crate::types::Create,
    pub(crate) cpup: crate::types::Cpup,
    /// `sum`: statfs adds up the writable branches.
    pub(crate) sum: bool,
    /// New whiteouts and opaque markers in aufs's `.wh.` format (`br=` mounts).
    pub(crate) aufs_whiteouts: bool,
    /// The kernel caches writes (negotiated at INIT when passthrough is not possible).
    pub(crate) writeback_cache: std::sync::atomic::AtomicBool,
    /// Nodes of upper files whose node is not simply their own number: upper
    /// (st_dev, st_ino) → node id. A copied-up file whose origin is empty takes its number
    /// from the lower entry of the same name, so a rename or a hard link elsewhere would
    /// give it another number under another name (one with a file handle keeps its
    /// origin's, `origin.rs`, unless that stops decoding); the kernel's inode cache would
    /// then hold two nodes for one file, one of them naming a stale place. One node per
    /// upper file for the life of the mount prevents that. A name node copied up maps its
    /// upper file to itself here too (it then shows the upper file's own number).
    pub(crate) renumbered: DashMap<(u64, u64), u64>,
    /// `writeback=0`: the writeback cache must not be negotiated.
    pub no_writeback: bool,
    /// `lower_passthrough[=0|1]`: when read-only opens of lower files may use FUSE
    /// passthrough (`passthrough_source`; docs/guarantees.md).
    pub lower_passthrough: crate::options::LowerPassthrough,
    /// Read-only lower opens may be passthrough because the mount is read-only (the default
    /// `LowerPassthrough::ReadOnly`): true while it is. Cleared by a remount to read-write
    /// before it checks `ro_lower_handles` (file.rs `reserve_ro_lower`).
    pub(crate) ro_lower_allowed: AtomicBool,
    /// Handles that took a lower file's passthrough because the mount was read-only; a
    /// remount to read-write is refused while there are any.
    pub(crate) ro_lower_handles: AtomicU64,
    /// `xattr_permissions=1|2`: owner and mode overrides in an xattr (override_stat.rs).
    pub override_level: Option<crate::override_stat::Level>,
    /// Some layer shows overrides (`Layer::read_level`: every layer with
    /// `xattr_permissions`, else the lowers whose root carries one, as fuse-overlayfs).
    pub(crate) shows_overrides: AtomicBool,
    /// `noxattrs`: xattr calls through the mount fail with ENOTSUP.
    pub noxattrs: bool,
    /// `nfs_export=on`: file handles outlive the kernel's caches and remounts (export.rs).
    pub nfs_export: bool,
    /// `index=on`: `workdir/index`, opened at mount (index.rs); None without the option.
    pub(crate) index: Option<Arc<OwnedFd>>,
    /// No `timeout=` and `udba=none`: the branches are assumed not to change behind the mount, so a lower
    /// entry's attributes are kept once read (`Loc::lower_attr`).
    pub(crate) keep_lower_attrs: bool,
    /// Inodes with read-write passthrough handles, and how many (see `file.rs`,
    /// `UnionFs::times_change_unseen`).
    pub(crate) passthrough_mappers: DashMap<u64, u32>,
    /// Bumped after every change of names made through the mount (any directory): a
    /// stream's listing older than this is rebuilt before it is read on (readdir.rs).
    names_gen: AtomicU64,
    /// `udba=`: what is done about direct changes to the branches (udba.rs).
    pub udba: crate::types::Udba,
    /// `udba=notify`: the watches on the real directories of the directory nodes (None
    /// when inotify is not available: every directory is then checked on access).
    pub(crate) watches: Option<Arc<crate::watch::Watches>>,
    /// Held (shared) from reading a parent's location to remembering the node a lookup
    /// found, and (exclusive) by a branch change while it swaps the stack and re-resolves
    /// the nodes (`stack.rs`): no node is remembered with a location resolved in the old
    /// stack after the change has re-resolved it.
    pub(crate) restack: parking_lot::RwLock<()>,
    /// Serializes branch changes.
    pub(crate) changing: Mutex<()>,
}

/// `udba=notify`: the inotify watches (None otherwise, or where inotify is not available:
/// every directory is then checked on access).
fn udba_watches(cfg: &Config) -> Option<Arc<crate::watch::Watches>> {
    match cfg.udba {
        crate::types::Udba::Notify => match crate::watch::Watches::new(cfg.udba_max_watches) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                log::warn!(
                    "udba=notify: no inotify instance ({e}): every directory is checked on access, as with udba=reval"
                );
                None
            }
        },
        _ => None,
    }
}

impl UnionFs {
    /// For unit tests: a union of `lower` under `upper` (work dir `work`, mount point `mnt`,
    /// never mounted) with `extra` mount options, parsed and validated as the CLI does.
    #[cfg(test)]
    pub(crate) fn for_test(
        lower: &std::path::Path,
        upper: &std::path::Path,
        work: &std::path::Path,
        mnt: &std::path::Path,
        extra: &str,
    ) -> UnionFs {
        let args = [
            "stratafs".to_string(),
            "-o".into(),
            format!(
                "lowerdir={},upperdir={},workdir={}{extra}",
                lower.display(),
                upper.display(),
                work.display()
            ),
            mnt.display().to_string(),
        ];
        let crate::options::Command::Mount(mut cfg) = crate::options::parse_args(args).unwrap()
        else {
            panic!("not a mount");
        };
        cfg.validate().unwrap();
        UnionFs::new(&cfg).unwrap()
    }

    /// Opens the branches of `cfg` (already validated) and builds the root.
    pub fn new(cfg: &Config) -> Result<UnionFs> {
        let layers = Layers::open(cfg)?;
        let top = layers.roots().first().map(|(l, _)| *l).unwrap_or(1);
        let root = Loc::new(ROOT_INO, Default::default(), top, layers.roots());
        let read_only = !cfg.writable();
        let shows_overrides = cfg.xattr_permissions.is_some()
            || layers.stack().lowers.iter().any(|l| l.read_level.is_some());
        let work = OnceLock::new();
        if let (Some(w), false) = (&layers.work, read_only) {
            let _ = work.set(Arc::new(crate::util::prepare_staging(
                std::os::fd::AsFd::as_fd(&**w),
            )?));
        }
        let watches = udba_watches(cfg);
        let fs = UnionFs {
            inodes: InodeTable::new(root),
            volatile: cfg.volatile,
            metacopy: cfg.metacopy,
            no_dir_redirects: cfg.no_dir_redirects,
            ids: cfg.ids.clone(),
            acl: !cfg.noacl && !cfg.noxattrs,
            no_writeback: cfg.no_writeback,
            lower_passthrough: cfg.lower_passthrough,
            ro_lower_allowed: AtomicBool::new(
                read_only && cfg.lower_passthrough == crate::options::LowerPassthrough::ReadOnly,
            ),
            ro_lower_handles: AtomicU64::new(0),
            override_level: cfg.xattr_permissions,
            shows_overrides: AtomicBool::new(shows_overrides),
            noxattrs: cfg.noxattrs,
            nfs_export: cfg.nfs_export,
            index: None,
            keep_lower_attrs: cfg.timeout.is_none() && cfg.udba == crate::types::Udba::None,
            static_nlink: cfg.static_nlink,
            work,
            wbr: Default::default(),
            create: cfg.create,
            cpup: cfg.cpup,
            sum: cfg.sum,
            aufs_whiteouts: cfg.aufs_whiteouts,
            writeback_cache: std::sync::atomic::AtomicBool::new(false),
            renumbered: DashMap::new(),
            passthrough_mappers: DashMap::new(),
            layers,
            files: DashMap::new(),
            dirs: DashMap::new(),
            unopened_dirs: AtomicBool::new(false),
            next_fh: AtomicU64::new(1),
            read_only: AtomicBool::new(read_only),
            switching: Mutex::new(()),
            staging_made: Mutex::new(()),
            names_gen: AtomicU64::new(0),
            udba: cfg.udba,
            watches,
            restack: parking_lot::RwLock::new(()),
            changing: Mutex::new(()),
        };
        if let Some(w) = &fs.watches {
            fs.inodes.set_observer(w.clone());
        }
        let mut fs = fs;
        if cfg.index && !read_only {
            fs.open_index()?;
        } else if cfg.index {
            log::warn!("index=on: off for a mount started read-only (also after remount,rw)");
        }
        if fs.nfs_export {
            fs.start_ghosts();
        }
        Ok(fs)
    }

    /// `nfs_export=on`: keeps a ghost of every node the kernel forgets from now on, with
    /// generations seeded from the clock, and loads the ghosts the last unmount wrote.
    fn start_ghosts(&self) {
        // New generations differ from an earlier mount's (a number per second, read back
        // ones raise it further: export.rs).
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.inodes.keep_ghosts(((secs as u32) << 10) | 1);
        self.load_ghosts();
    }

    /// Does some layer show owner/mode overrides?
    pub(crate) fn shows_overrides(&self) -> bool {
        self.shows_overrides.load(Ordering::Relaxed)
    }

    /// Is the mount read-only now?
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// EROFS on a read-only mount: the first check of every operation that writes, as the
    /// VFS's `mnt_want_write` comes before anything else in the kernel.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_read_only() {
            return err(libc::EROFS);
        }
        Ok(())
    }

    /// `remount,ro` / `remount,rw`. Going read-only: from now on every write gets EROFS,
    /// then the upper's filesystem is synced (unless `volatile`), as the kernel overlayfs
    /// syncs its upper on remount,ro. Dirty pages of the FUSE mount itself must reach us
    /// before this (the caller remounts the VFS first, or syncfs's the mount). Going
    /// writable needs an upper; a mount started read-only makes `workdir/work` now (the
    /// in-use locks are held from the start whenever there is an upper).
    pub fn set_read_only(&self, on: bool) -> Result<()> {
        let _g = self.switching.lock();
        let auto = self.lower_passthrough == crate::options::LowerPassthrough::ReadOnly;
        if on {
            self.read_only.store(true, Ordering::SeqCst);
            self.ro_lower_allowed.store(auto, Ordering::SeqCst);
            if let (Some(u), false) = (&self.layers.upper, self.volatile) {
                let fd = crate::sys::reopen(u.root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                    .and_then(|fd| crate::sys::syncfs(fd.as_fd()).map(|()| fd));
                if let Err(e) = fd {
                    return Err(Error::io(
                        e,
                        format!("syncfs of upperdir {}", u.path.display()),
                    ));
                }
            }
            return Ok(());
        }
        let writable_lowers = self.layers.stack().writable_lowers().next().is_some();
        if self.layers.work.is_none() && !writable_lowers {
            return Err(Error::new(
                libc::EROFS,
                "no upper branch or other writable branch: the mount cannot be made writable",
            ));
        }
        self.stop_ro_lower_passthrough()?;
        if let (Some(w), None) = (&self.layers.work, self.work.get()) {
            let staging = crate::util::prepare_staging(w.as_fd());
            match staging {
                Ok(s) => drop(self.work.set(Arc::new(s))),
                Err(e) => {
                    self.ro_lower_allowed.store(auto, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        self.read_only.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Before going read-write: no new lower open takes passthrough from now on, and none
    /// that did may still be open (a copy-up would make it stale, or have to wait for it):
    /// EBUSY then, and the mount stays read-only. Cleared first, checked after, and an
    /// open reserves first, checks after (`reserve_ro_lower`): one of the two sees the other.
    /// The kernel sends RELEASE after close(2) has returned, so handles closed just before
    /// the remount are given up to [`RELEASE_GRACE`] to arrive.
    fn stop_ro_lower_passthrough(&self) -> Result<()> {
        let auto = self.lower_passthrough == crate::options::LowerPassthrough::ReadOnly;
        self.ro_lower_allowed.store(false, Ordering::SeqCst);
        let start = std::time::Instant::now();
        let mut n = self.ro_lower_handles.load(Ordering::SeqCst);
        while n > 0 && start.elapsed() < RELEASE_GRACE {
            std::thread::sleep(std::time::Duration::from_millis(5));
            n = self.ro_lower_handles.load(Ordering::SeqCst);
        }
        if n > 0 {
            self.ro_lower_allowed.store(auto, Ordering::SeqCst);
            return Err(Error::new(
                libc::EBUSY,
                format!("{n} lower file(s) open for reading through passthrough (taken while the mount was read-only): close them first"),
            ));
        }
        Ok(())
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
        let noatime = self
            .layers
            .with(loc.top, |l| l.noatime_opens)
            .unwrap_or(false);
        if let Some(p) = &loc.pinned {
            return Ok(Real {
                dir: p.clone(),
                name: CString::default(),
                loc,
                noatime,
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
                noatime,
            });
        }
        let parent = self.node(loc.parent)?;
        let dir = parent
            .loc
            .read()
            .dir_in(loc.top)
            .ok_or_else(|| Error::new(libc::ESTALE, "parent lost its layer"))?;
        let name = CString::new(loc.name.as_bytes()).map_err(|_| Error::errno(libc::EINVAL))?;
        Ok(Real {
            dir,
            name,
            loc,
            noatime,
        })
    }

    /// Which node the entry `found` at `parent`/`name` belongs to (see `inode.rs`), and
    /// the number it shows (set in `found.ino`). A non-directory of a writable branch (the
    /// upper, or one below it) has the one node it has in this mount (see `renumbered`):
    /// the first one it showed as, for every name it has or gets. Only a read-only
    /// branch's file with several names is one node per name (the kernel's lower rule).
    pub(crate) fn identify(&self, parent: u64, name: &OsStr, f: &mut lookup::Found) -> NodeKey {
        if f.is_dir() {
            return NodeKey::Object(f.ino);
        }
        if !self.layers.writable(f.top) || f.index_alias.is_some() {
            // With the index, all names of a lower hard link are one inode (its number),
            // as the kernel's (hashed by the lower inode).
            if f.st.st_nlink > 1 && self.index.is_none() {
                return NodeKey::Name(parent, name.to_os_string());
            }
            return NodeKey::Object(f.ino);
        }
        NodeKey::Object(self.identify_upper(f))
    }

    /// [`Self::identify`] of an upper non-directory: its node id, and the number it shows
    /// (set in `f.ino`), recorded in `renumbered` where that is not simply its own.
    fn identify_upper(&self, f: &mut lookup::Found) -> u64 {
        let key = (f.st.st_dev, f.st.st_ino);
        let own = self.layers.ino(f.st.st_dev, f.st.st_ino);
        let id = match self.renumbered.get(&key).map(|n| *n) {
            Some(id) => id,
            None if f.ino != own || f.st.st_nlink > 1 => {
                *self.renumbered.entry(key).or_insert(f.ino)
            }
            None => f.ino,
        };
        f.ino = if inode::is_name_id(id) { own } else { id };
        id
    }

    /// The number a listing gives the upper entry `e`: the one a lookup of its name shows
    /// (see `identify`), so that d_ino is st_ino. An upper file the mount already numbered
    /// keeps that number (a copy-up, a rename or a link made through the mount, an upper
    /// file with several names); one the listing meets first is numbered here as its
    /// lookup would number it, and that number then holds for its other names too.
    fn listed_ino(&self, e: &readdir::UpperEntry<'_>) -> u64 {
        let own = self.layers.ino(e.dev, e.ino);
        if e.is_dir {
            return e.resolved_ino(&self.layers);
        }
        if let Some(id) = self.renumbered.get(&(e.dev, e.ino)).map(|n| *n) {
            return if inode::is_name_id(id) { own } else { id };
        }
        if !e.origin {
            // Numbered by lookup as its own, unless it has several names (then the first
            // lookup records that number: its own, since it has no origin).
            return own;
        }
        match lookup::lookup(&self.layers, e.dir, e.name) {
            Ok(Some(mut f))
                if self.layers.writable(f.top) && (f.st.st_dev, f.st.st_ino) == (e.dev, e.ino) =>
            {
                self.identify_upper(&mut f);
                f.ino
            }
            _ => own,
        }
    }

    /// The st_ino node `id` shows, its real object's stat being `st`.
    pub(crate) fn shown_ino(&self, id: u64, st: &crate::sys::Stat) -> u64 {
        if inode::is_name_id(id) {
            self.layers.ino(st.st_dev, st.st_ino)
        } else {
            id
        }
    }

    /// Resolves `name` in directory `parent` and counts one kernel reference on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        check_component(name)?;
        if self.nfs_export && name.as_bytes() == b"." && !self.has_node(parent) {
            // A file handle of a node the kernel forgot (export.rs).
            return self.revive(parent);
        }
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
        // Until the node is remembered: a branch change waits (see `restack`).
        let _stack = self.restack.read();
        // Before reading the branches: what they show may be older than a change made
        // meanwhile through another name (see `inode.rs`).
        let seen = inode::epoch();
        let ploc = pnode.loc();
        let mut found =
            lookup::lookup(&self.layers, &ploc, name)?.ok_or_else(|| Error::errno(libc::ENOENT))?;
        self.find_index(&ploc, name, &mut found);
        self.enter(parent, &ploc, name, found, seen)
    }

    /// Makes `found` (what `parent`/`name` resolves to, `ploc` being the parent's place,
    /// read from the branches since [`inode::epoch`] was `seen`) a node and counts one
    /// kernel reference on it: by lookup, and by the creates, which know what they made
    /// without resolving it again.
    pub(crate) fn enter(
        &self,
        parent: u64,
        ploc: &Loc,
        name: &OsStr,
        mut found: lookup::Found,
        seen: u64,
    ) -> Result<Attr> {
        let key = self.identify(parent, name, &mut found);
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
        let mut attr = self.attr(&st, found.ino, merged);
        let kind = Kind::from_mode(st.st_mode);
        let loc = Loc {
            parent,
            name: name.to_os_string(),
            top: found.top,
            dirs: found.dirs,
            data: found.data,
            pinned: found.index_alias.as_ref().map(|a| a.fd.clone()),
            staged: None,
            lower_attr: None,
            lower_xattrs: found
                .xattr_names
                .filter(|_| self.keep_lower_attrs && !self.layers.writable(found.top)),
            indexed: found.index_alias.map(|a| a.name),
        };
        let prot = found.prot;
        let node = self.inodes.remember(key, kind, loc, seen);
        // What the lookup saw (an upper entry's marker), or unknown (a lower entry's flags,
        // read again at the next change asked of it).
        node.prot.store(prot, std::sync::atomic::Ordering::Relaxed);
        if node.kind != kind {
            // The same number now names an object of another type (reused behind our
            // back): refuse rather than confuse the kernel's inode cache.
            self.inodes.forget(node.id, 1);
            return Err(Error::new(
                libc::ESTALE,
                format!("{:#x} is a {kind:?} now, was a {:?}", node.id, node.kind),
            ));
        }
        attr.node = node.id;
        Ok(attr)
    }

    /// Which override xattr entries of `layer` show, if any.
    pub(crate) fn read_level(
        &self,
        layer: crate::layers::LayerId,
    ) -> Option<crate::override_stat::Level> {
        self.layers.with(layer, |l| l.read_level).flatten()
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

    /// Whether attributes of `ino` read just now must not be left for the kernel to cache,
    /// a name of it going or just gone (inode.rs, "Link counts the kernel keeps").
    pub fn count_settling(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some_and(|n| n.count_settling())
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Opens a directory handle (only on mounts that answer OPENDIR, see `DirStream`).
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return err(libc::ENOTDIR);
        }
        let fh = self.new_fh();
        self.dirs.insert(fh, Arc::new(DirStream { ino }));
        Ok(fh)
    }

    /// From now on directory streams have no handle (the adapter answered OPENDIR with
    /// ENOSYS: the kernel opens no directory again and reads every stream with handle 0).
    pub fn no_dir_handles(&self) {
        self.unopened_dirs.store(true, Ordering::Release);
    }

    /// Some names changed through the mount (or a change was tried): listings built
    /// before are out of date. Called once the change is done, before it is answered.
    pub fn names_changed(&self) {
        self.names_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The listing a stream of directory `ino` reads on from `offset` in (`fh`: its
    /// handle, 0 where the mount has none). It is the node's, shared by all its streams
    /// (readdir.rs): (re)built when a stream asks from offset 0 and when names changed
    /// through the mount since it was built, so no stream goes on from a listing older
    /// than the last change (the kernel's listing cache appends what a stream reads;
    /// readdir.rs's cookies make a newer listing go on at the same place, whichever stream
    /// had it built).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let known = if fh == 0 {
            self.unopened_dirs.load(Ordering::Acquire)
        } else {
            self.dirs.get(&fh).is_some_and(|s| s.ino == ino)
        };
        if !known {
            return err(libc::EBADF);
        }
        let node = self.node(ino)?;
        if !node.is_dir() {
            return err(libc::ENOTDIR);
        }
        let mut state = node.dir.lock();
        // Read before listing: a change that ends after this makes the listing old.
        let gen = self.names_gen.load(Ordering::Acquire);
        if let Some((made, l)) = state.as_ref().and_then(|s| s.listing.as_ref()) {
            if offset != 0 && *made == gen {
                return Ok(l.clone());
            }
        }
        if self.udba == crate::types::Udba::Reval && ino != ROOT_INO {
            // Checked on access: the directory may be listed with no lookup of its name
            // (a working directory), so its real directories are resolved again here.
            let (p, n) = {
                let l = node.loc.read();
                (l.parent, l.name.clone())
            };
            self.reresolve(p, &n, ino);
        }
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
            self.shows_overrides(),
            &|e| self.listed_ino(e),
        )?);
        state.get_or_insert_with(Default::default).listing = Some((gen, l.clone()));
        Ok(l)
    }

    /// A stream of directory `ino` read to the end of its listing: the node's listing is
    /// dropped (the next stream starts at offset 0, which builds one anyway; one still
    /// part-way builds one when it asks on).
    pub fn readdir_done(&self, ino: u64) {
        if let Some(n) = self.inodes.get(ino) {
            *n.dir.lock() = None;
        }
    }

    /// Whether the table has a node with id `ino` (no reference counted).
    /// The generation the entries of node `ino` go out with (0 without `nfs_export`).
    pub fn generation_of(&self, ino: u64) -> u64 {
        if !self.nfs_export {
            return 0;
        }
        self.inodes.get(ino).map_or(0, |n| u64::from(n.generation))
    }

    pub fn has_node(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some()
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

    /// Closes a directory handle (its directory's listing is the node's, not its own).
    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}

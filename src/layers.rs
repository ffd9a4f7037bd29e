//! The branches of a mount (the kernel's `super.c`): each is opened once as an `O_PATH`
//! directory fd, and every later access is an `*at` call relative to one of them.
//!
//! Layer ids: [`UPPER`] (0) is the writable upper's slot; every lower gets the next id
//! when it is opened (`1..=n` at mount time, 1 the highest, the kernel's leftmost
//! `lowerdir`) and keeps it while it is in the stack. Ids are never reused, and an id is
//! not a position: branches added at run time (`branch.rs`) get new ids wherever they go,
//! so a node's `Loc` naming a layer that left the stack can never be taken for another
//! one. The order is the [`Stack`]'s, a snapshot swapped whole by a branch change and
//! taken once per resolution. Lower layers are never written.
//!
//! ## Private mounts, and access times
//! As the kernel overlayfs does with its private layer mounts, each branch is reached
//! through a detached copy of its mount (`sys::clone_mount`), so the host kernel applies
//! the right mount attributes to everything this daemon, and FUSE passthrough, does:
//! - every lower through a read-only, `noatime` copy: a read or listing through the
//!   mount never changes a lower layer (not even its atime), and a stray write through a
//!   lower fd fails with EROFS;
//! - the upper and the workdir through one copy of the mount holding both (renames from
//!   the workdir into the upper need one mount) whose atime attribute is the mount's
//!   `noatime` / `relatime` / `strictatime` / `nodiratime`: the kernel then updates the
//!   upper's access times by that policy on every read, by the daemon or by passthrough.
//!   The kernel overlayfs applies its own mount's atime policy to its upper the same way.
//!
//! In a user namespace the atime attributes of inherited mounts are locked: a lower's copy
//! is then only read-only (which is enough: the kernel never updates atimes on a read-only
//! mount), and the upper is reached through the host's mount; if that mount's atime policy
//! is not the one asked for, upper files are opened `O_NOATIME` and the daemon applies the
//! policy itself (`atime.rs`). Without any copy (no CAP_SYS_ADMIN over the mount
//! namespace), lower files and directories are opened `O_NOATIME` where the kernel permits
//! it (`Layer::noatime_opens`).
//!
//! ## Inode numbers
//! Modelled on the kernel's `xino`: every filesystem holding a branch gets a small index,
//! in branch order, the upper's first (index 0 when there is an upper). A real object's
//! number in the mount is `index << 56 | real st_ino`. Branches on different filesystems
//! whose own numbers collide therefore never collide in the mount, and the number of a file
//! depends only on where it lives, so it is the same after a remount. A copied-up entry
//! carries the kernel's `overlay.origin` marker and keeps its lower number (see
//! `lookup.rs`). Numbers that do not fit in 56 bits, and the real number 1 (FUSE reserves
//! it for the root), get a number from an in-memory table with the top byte 0xff: unique,
//! but only stable for the life of the mount. (Top byte 0xfe is no number shown: it marks
//! the node ids of name nodes, see `inode.rs`.)

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::{Error, Result};
use crate::options::Config;
use crate::sys;
use crate::types::Policy;

/// Identity of a branch: [`UPPER`] or a lower's id (stable, never reused; not a position).
pub type LayerId = usize;

/// The upper's slot.
pub const UPPER: LayerId = 0;

/// The FUSE root's node id.
pub const ROOT_INO: u64 = 1;

const FSIDX_SHIFT: u32 = 56;
const REAL_INO_MASK: u64 = (1 << FSIDX_SHIFT) - 1;
const OVERFLOW_BASE: u64 = 0xff << FSIDX_SHIFT;

pub use crate::types::Mode;

/// Whether `f_type` names a filesystem served over a network or by another daemon.
pub fn is_remote_fs(f_type: i64) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    const NFS_SUPER_MAGIC: i64 = 0x6969;
    const SMB_SUPER_MAGIC: i64 = 0x517b;
    const CIFS_SUPER_MAGIC: i64 = 0xff53_4d42;
    const SMB2_SUPER_MAGIC: i64 = 0xfe53_4d42;
    const CEPH_SUPER_MAGIC: i64 = 0x00c3_6400;
    const V9FS_MAGIC: i64 = 0x0102_1997;
    matches!(
        f_type,
        FUSE_SUPER_MAGIC
            | NFS_SUPER_MAGIC
            | SMB_SUPER_MAGIC
            | CIFS_SUPER_MAGIC
            | SMB2_SUPER_MAGIC
            | CEPH_SUPER_MAGIC
            | V9FS_MAGIC
    )
}

/// One branch.
#[derive(Debug, Clone)]
pub struct Layer {
    pub id: LayerId,
    pub path: PathBuf,
    pub mode: Mode,
    /// Owner/mode overrides shown from this branch (`xattr_permissions`, or detected on a
    /// lower's root), see `override_stat.rs`.
    pub read_level: Option<crate::types::Level>,
    /// `O_PATH` fd of the branch root.
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    /// Reads through `root` may change atimes the mount's policy forbids (no private mount
    /// with the right attributes): open files and directories with `O_NOATIME`.
    pub noatime_opens: bool,
    /// The access-time policy the daemon applies itself to reads and listings it serves
    /// from this layer (the upper, where no private mount carries the policy and the host
    /// mount's differs; see `atime.rs`).
    pub daemon_atime: Option<Policy>,
    /// A readable fd of the branch root (file-handle decoding and `FS_IOC_GETFSUUID`
    /// need one that is not `O_PATH`), when it could be opened.
    pub handle_root: Option<Arc<OwnedFd>>,
    /// The UUID of the filesystem holding the branch (`sb->s_uuid`), when the kernel tells
    /// it (`FS_IOC_GETFSUUID`): what `overlay.origin` records and is matched against.
    pub uuid: Option<[u8; 16]>,
    /// A writable branch below the upper (`Mode::Rw`): `BRANCH/.wh..wh.orph` (aufs keeps
    /// its orphans there; every `.wh.` name is hidden from the mount), which holds its
    /// copy-up and create staging directory `work`, emptied and made at its first use
    /// (`copy_up.rs`).
    pub orph: Option<Arc<OwnedFd>>,
    pub work: std::sync::OnceLock<Arc<OwnedFd>>,
    /// The in-use lock of a writable branch below the upper (see [`lock_in_use`]).
    pub in_use: Option<Arc<OwnedFd>>,
}

/// The name of a writable lower's private directory (aufs's orphan directory).
pub const BRANCH_WORK: &std::ffi::CStr = c".wh..wh.orph";

/// The lowers in order, highest first: one generation of the stack. Swapped whole.
#[derive(Debug)]
pub struct Stack {
    /// Bumped by every change of the stack.
    pub gen: u64,
    pub lowers: Vec<Arc<Layer>>,
}

impl Stack {
    /// The lower with this id, if it is in this stack.
    pub fn lower(&self, id: LayerId) -> Option<&Arc<Layer>> {
        self.lowers.iter().find(|l| l.id == id)
    }

    /// Where layer `id` sits, counting the upper's slot as 0 (and lowers from 1, top
    /// first); `None` for a layer not in this stack.
    pub fn pos(&self, id: LayerId) -> Option<usize> {
        if id == UPPER {
            return Some(0);
        }
        self.lowers.iter().position(|l| l.id == id).map(|p| p + 1)
    }

    /// Are whiteouts and opaque markers on layer `id` honoured? (A layer that left the
    /// stack keeps the default: honoured.)
    pub fn whiteouts(&self, id: LayerId) -> bool {
        self.lower(id).is_none_or(|l| l.mode.honours_whiteouts())
    }

    /// Is layer `id` written through the mount in place (the upper, or a `Mode::Rw`
    /// branch below it: aufs's branch model)? What is in such a layer may change through
    /// the mount, so nothing read from it is cached as a lower's attributes are.
    pub fn writable(&self, id: LayerId) -> bool {
        id == UPPER || self.lower(id).is_some_and(|l| l.mode == Mode::Rw)
    }

    /// The writable branches below the upper, top first.
    pub fn writable_lowers(&self) -> impl Iterator<Item = &Arc<Layer>> {
        self.lowers.iter().filter(|l| l.mode == Mode::Rw)
    }
}

/// Every branch of the mount, the workdir, and the inode-number map.
#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Arc<Layer>>,
    /// `O_PATH` fd of the workdir (only with an upper).
    pub work: Option<Arc<OwnedFd>>,
    /// The in-use locks on the upper and the workdir, held for the life of the mount.
    _in_use: Vec<OwnedFd>,
    /// The lowers, highest first: the current [`Stack`] (see the module docs).
    stack: parking_lot::RwLock<Arc<Stack>>,
    /// The id the next lower opened gets.
    next_id: std::sync::atomic::AtomicUsize,
    /// The access-time policy the mount options ask for.
    pub atime: Policy,
    /// `"trusted.overlay."` or, with `userxattr`, `"user.overlay."`: the prefix we write.
    pub xattr_prefix: &'static str,
    /// `index=on`: an upper copy of a lower hard link takes the lower's number (index.rs).
    pub index: bool,
    fsidx: DashMap<u64, u64>,
    next_fsidx: AtomicU64,
    overflow: DashMap<(u64, u64), u64>,
    next_overflow: AtomicU64,
}

fn open_layer(id: LayerId, opt: &str, path: &std::path::Path, mode: Mode) -> Result<Layer> {
    let root =
        sys::open_host_dir(path).map_err(|e| Error::io(e, format!("{opt} {}", path.display())))?;
    let st =
        sys::fstat(root.as_fd()).map_err(|e| Error::io(e, format!("{opt} {}", path.display())))?;
    let handle_root = sys::openat(root.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).ok();
    Ok(Layer {
        id,
        path: path.to_path_buf(),
        mode,
        read_level: None,
        root: Arc::new(root),
        dev: st.st_dev,
        noatime_opens: false,
        daemon_atime: None,
        uuid: handle_root
            .as_ref()
            .and_then(|fd| sys::handle::fs_uuid(fd.as_fd()).ok()),
        handle_root: handle_root.map(Arc::new),
        orph: None,
        work: Default::default(),
        in_use: None,
    })
}

/// Opens branch `path` below the upper with `mode`: a read-only one through a private
/// read-only mount; a writable one (`Mode::Rw`, aufs's branch model) as it is on the host,
/// locked in use as an upper is, with its staging directory made (see [`Layer::work`]).
fn open_branch(cfg: &Config, id: LayerId, opt: &str, path: &Path, mode: Mode) -> Result<Layer> {
    let mut l = open_layer(id, opt, path, mode)?;
    if mode == Mode::Rw {
        l.in_use = Some(Arc::new(lock_in_use(opt, path, &l.root)?));
        let what = |e| {
            Error::io(
                e,
                format!("{opt} {}: {}", path.display(), "its .wh..wh.orph"),
            )
        };
        match crate::sys::ops::mkdirat(l.root.as_fd(), BRANCH_WORK, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(what(e)),
        }
        let orph = sys::open_dir_path(l.root.as_fd(), BRANCH_WORK).map_err(what)?;
        l.orph = Some(Arc::new(orph));
    } else {
        privatize_lower(&mut l);
    }
    l.read_level = lower_read_level(cfg, &l);
    Ok(l)
}

/// The kernel overlayfs's "in use" mark (`ovl_inuse_trylock`), in userspace: an exclusive
/// `flock` on the directory, held by the daemon while it serves. A second mount of the same
/// upper or workdir (as upper or as workdir) is refused before it touches anything: it
/// would empty `workdir/work` under the first one. The kernel itself refuses only with
/// `index=on` and otherwise warns; stratafs always refuses. A daemon that dies in any way
/// (SIGKILL included) drops the lock with its last fd.
pub fn lock_in_use(opt: &str, path: &std::path::Path, root: &OwnedFd) -> Result<OwnedFd> {
    use crate::channel::Holder;
    let what = |e: std::io::Error| Error::io(e, format!("{opt} {}", path.display()));
    let fd = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(what)?;
    // `umount` returns before the old daemon has exited (it still has to see the end of
    // its session), and podman or a script may mount the same upper again at once: a
    // holder that no longer serves a mount gets a few seconds to go away.
    let deadline = std::time::Instant::now() + EXITING_HOLDER_GRACE;
    loop {
        match sys::flock_exclusive_nb(fd.as_fd()) {
            Ok(()) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                let st = sys::fstat(fd.as_fd()).map_err(what)?;
                let holder = crate::channel::holder_of(st.st_dev, st.st_ino);
                let waiting = !matches!(holder, Holder::Mount { .. });
                if !waiting || std::time::Instant::now() >= deadline {
                    return Err(Error::new(
                        libc::EBUSY,
                        format!(
                            "{opt} {}: in use (as upperdir or workdir) by {holder}",
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(what(e)),
        }
    }
}

/// How long a new mount waits for the in-use lock of a holder that serves no mount any more.
const EXITING_HOLDER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Replaces a lower's root with the root of a read-only `noatime` private mount of it; where
/// the atime attribute may not be changed (a user namespace), of a read-only one (the
/// kernel never updates atimes on a read-only mount either). Without any private mount
/// its files and directories are opened `O_NOATIME` (symlinks read still get an update).
fn privatize_lower(l: &mut Layer) {
    use sys::mount_attr as a;
    let e = match sys::clone_mount(l.root.as_fd(), a::RDONLY | a::NOATIME, a::ATIME_MASK) {
        Ok(m) => {
            l.root = Arc::new(m);
            return;
        }
        Err(e) => e,
    };
    match sys::clone_mount(l.root.as_fd(), a::RDONLY, 0) {
        Ok(m) => {
            l.root = Arc::new(m);
            log::debug!(
                "lowerdir {}: private mount read-only, atime attribute kept ({e})",
                l.path.display()
            );
        }
        Err(e2) => {
            l.noatime_opens = true;
            log::info!(
                "lowerdir {}: no private read-only mount ({e}, {e2}); opening its files O_NOATIME",
                l.path.display()
            );
        }
    }
}

/// The deepest directory holding both `a` and `b` (both absolute and canonical).
fn common_dir(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// `dir` below `mnt` (the private copy of the mount holding `common`), checked to be the
/// same directory as the host's `host` fd.
fn same_dir_below(
    mnt: &OwnedFd,
    common: &Path,
    path: &Path,
    host: &OwnedFd,
) -> std::io::Result<OwnedFd> {
    let rel = path
        .strip_prefix(common)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EXDEV))?;
    let fd = if rel.as_os_str().is_empty() {
        sys::reopen(mnt.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?
    } else {
        sys::open_dir_path(mnt.as_fd(), &sys::cstr(rel.as_os_str())?)?
    };
    let (a, b) = (sys::fstat(fd.as_fd())?, sys::fstat(host.as_fd())?);
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        // Another mount covers part of the path on the host: not the same directory.
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(fd)
}

/// The upper and the workdir through one private mount with the atime attributes `attrs`.
fn privatize_upper(
    upper: &Layer,
    work: &OwnedFd,
    work_path: &Path,
    attrs: u64,
) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use sys::mount_attr as a;
    let up = std::fs::canonicalize(&upper.path)?;
    let wp = std::fs::canonicalize(work_path)?;
    let common = common_dir(&up, &wp);
    let host = sys::open_host_dir(&common)?;
    let mnt = sys::clone_mount(host.as_fd(), attrs, a::ATIME_MASK | a::NODIRATIME)?;
    let u = same_dir_below(&mnt, &common, &up, &upper.root)?;
    let w = same_dir_below(&mnt, &common, &wp, work)?;
    Ok((u, w))
}

/// The overrides a lower shows: `xattr_permissions`, else whatever its root is marked with
/// (as fuse-overlayfs).
fn lower_read_level(cfg: &Config, l: &Layer) -> Option<crate::types::Level> {
    let detected = crate::override_stat::detect(l.root.as_fd());
    if cfg.xattr_permissions.is_none() && detected.is_some() {
        log::info!(
            "lowerdir {}: its root carries an owner override; showing its overrides",
            l.path.display()
        );
    }
    cfg.xattr_permissions.or(detected)
}

/// The upper, its workdir (none without an upper) and their in-use locks.
type UpperWork = (Option<Layer>, Option<Arc<OwnedFd>>, Vec<OwnedFd>);

/// The upper and its workdir (none without an upper), with their in-use locks.
fn open_upper(cfg: &Config) -> Result<UpperWork> {
    let upper = match &cfg.upperdir {
        Some(p) => Some(open_layer(UPPER, "upperdir", p, Mode::Rw)?),
        None => None,
    };
    let work = match (&upper, &cfg.workdir) {
        (Some(_), Some(w)) => {
            Some(Arc::new(sys::open_host_dir(w).map_err(|e| {
                Error::io(e, format!("workdir {}", w.display()))
            })?))
        }
        _ => None,
    };
    // Before anything in the workdir is touched (copy_up::prepare_staging empties it).
    let mut in_use = Vec::new();
    if let (Some(u), Some(w), Some(wp)) = (&upper, &work, &cfg.workdir) {
        in_use.push(lock_in_use("upperdir", &u.path, &u.root)?);
        in_use.push(lock_in_use("workdir", wp, w)?);
    }
    Ok((upper, work, in_use))
}

/// The lowers (and writable branches below the upper) of `cfg`, highest first.
fn open_lowers(cfg: &Config) -> Result<Vec<Arc<Layer>>> {
    let mut lowers = Vec::with_capacity(cfg.lowerdirs.len());
    for (i, p) in cfg.lowerdirs.iter().enumerate() {
        let what = if cfg.lower_mode(i) == Mode::Rw {
            "branch"
        } else {
            "lowerdir"
        };
        lowers.push(Arc::new(open_branch(
            cfg,
            i + 1,
            what,
            p,
            cfg.lower_mode(i),
        )?));
    }
    Ok(lowers)
}

/// Reaches upper `u` and workdir `w` (at `wp`) through a private mount with the atime
/// options of `cfg`; where none can be made, keeps the host's policy or applies ours in
/// the daemon.
fn private_upper(cfg: &Config, u: &mut Layer, w: &mut Arc<OwnedFd>, wp: &Path) {
    let want = Policy::from_config(cfg);
    match privatize_upper(u, w, wp, want.mount_attrs()) {
        Ok((ur, wr)) => {
            u.root = Arc::new(ur);
            *w = Arc::new(wr);
        }
        Err(e) => {
            let host = sys::fstatvfs(u.root.as_fd())
                .map(|v| Policy::from_statvfs_flags(v.f_flag))
                .ok();
            if host != Some(want) {
                // The host mount would apply another policy: keep it out (O_NOATIME
                // where permitted) and apply ours in the daemon.
                u.noatime_opens = true;
                u.daemon_atime = Some(want);
            }
            log::info!(
                "upperdir {}: no private mount with the atime options ({e}); host policy {host:?}, wanted {want:?}: {}",
                u.path.display(),
                if host == Some(want) { "the host applies it" } else { "the daemon applies it" }
            );
        }
    }
}

impl Layers {
    /// Opens every branch named by the configuration.
    pub fn open(cfg: &Config) -> Result<Layers> {
        let (mut upper, mut work, in_use) = open_upper(cfg)?;
        let lowers = open_lowers(cfg)?;
        let n_lowers = lowers.len();
        if let (Some(u), Some(w), Some(wp)) = (upper.as_mut(), work.as_mut(), cfg.workdir.as_ref())
        {
            private_upper(cfg, u, w, wp);
        }
        if let Some(u) = upper.as_mut() {
            u.read_level = cfg.xattr_permissions;
        }
        let layers = Layers {
            upper: upper.map(Arc::new),
            work,
            _in_use: in_use,
            stack: parking_lot::RwLock::new(Arc::new(Stack { gen: 0, lowers })),
            next_id: std::sync::atomic::AtomicUsize::new(n_lowers + 1),
            atime: Policy::from_config(cfg),
            index: cfg.index,
            // Setting trusted.* xattrs takes CAP_SYS_ADMIN in the initial user namespace: in
            // a user namespace, or as a plain user (Apptainer's setuid starter runs the
            // overlay program as the user, on a /dev/fd/N), write the kernel's `userxattr`
            // form, as the kernel overlayfs requires in a user namespace.
            xattr_prefix: if cfg.userxattr || !sys::has_initial_ns_sys_admin() {
                "user.overlay."
            } else {
                "trusted.overlay."
            },
            fsidx: DashMap::new(),
            next_fsidx: AtomicU64::new(0),
            overflow: DashMap::new(),
            next_overflow: AtomicU64::new(1),
        };
        // Index filesystems in branch order so the numbers are the same at every mount.
        if let Some(u) = &layers.upper {
            layers.fs_index(u.dev);
        }
        for l in &layers.stack().lowers {
            layers.fs_index(l.dev);
        }
        Ok(layers)
    }

    /// The branches on a filesystem whose requests may wait on a network or another
    /// daemon (FUSE, NFS, SMB, Ceph, 9p): a stalled server holds each request that reaches
    /// it, with the daemon thread serving it, until the server's own timeout.
    pub fn remote_branches(&self) -> Vec<Arc<Layer>> {
        self.upper
            .iter()
            .cloned()
            .chain(self.stack().lowers.iter().cloned())
            .filter(|l| sys::fstatfs_type(l.root.as_fd()).is_ok_and(is_remote_fs))
            .collect()
    }

    /// The current stack of lowers (a snapshot: a branch change swaps in another).
    pub fn stack(&self) -> Arc<Stack> {
        self.stack.read().clone()
    }

    /// Makes `lowers` the stack (`stack.rs`, under its lock); returns the new generation.
    pub fn set_lowers(&self, lowers: Vec<Arc<Layer>>) -> u64 {
        let mut s = self.stack.write();
        let gen = s.gen + 1;
        *s = Arc::new(Stack { gen, lowers });
        gen
    }

    /// Opens a directory as a new lower (not yet in the stack) with the next id, through a
    /// private read-only mount as at mount time. Its filesystem gets the next free
    /// inode-number index (a fresh mount would index it in branch order instead).
    pub fn open_lower(&self, cfg: &Config, path: &Path, mode: Mode) -> Result<Layer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let l = open_branch(cfg, id, "branch", path, mode)?;
        self.fs_index(l.dev);
        Ok(l)
    }

    /// Opens lower `old` again with another mode (to or from `Mode::Rw`), keeping its id
    /// and its inode-number index.
    pub fn reopen_lower(&self, cfg: &Config, old: &Layer, mode: Mode) -> Result<Layer> {
        open_branch(cfg, old.id, "branch", &old.path, mode)
    }

    /// The branch with this id, if it is the upper or in the current stack. Ids come from
    /// lookups, so a missing one is a layer removed meanwhile (or a bug): ESTALE.
    pub fn get(&self, id: LayerId) -> Result<Arc<Layer>> {
        let l = if id == UPPER {
            self.upper.clone()
        } else {
            self.stack().lower(id).cloned()
        };
        l.ok_or_else(|| Error::new(libc::ESTALE, format!("no layer {id} in the stack")))
    }

    /// `f` of the branch with this id (the upper, or a lower in the current stack), with no
    /// reference counted: for per-request reads of a layer's flags.
    pub fn with<R>(&self, id: LayerId, f: impl FnOnce(&Layer) -> R) -> Option<R> {
        if id == UPPER {
            return self.upper.as_deref().map(f);
        }
        self.stack.read().lower(id).map(|l| f(l))
    }

    /// Is layer `id` written in place through the mount: the upper, or a writable branch
    /// below it (`Stack::writable`)? Where an entry's top layer is, a change of it happens
    /// there; elsewhere it is copied up first (`wbr_policy.rs` says where to).
    pub fn writable(&self, id: LayerId) -> bool {
        id == UPPER || self.stack.read().writable(id)
    }

    /// All branch roots, top first: the root directory's realization.
    pub fn roots(&self) -> Vec<(LayerId, Arc<OwnedFd>)> {
        let stack = self.stack();
        self.upper
            .iter()
            .chain(stack.lowers.iter())
            .map(|l| (l.id, l.root.clone()))
            .collect()
    }

    /// The policy the daemon applies itself to the upper's reads and listings, if any.
    pub fn upper_daemon_atime(&self) -> Option<Policy> {
        self.upper.as_ref().and_then(|u| u.daemon_atime)
    }

    pub fn has_upper(&self) -> bool {
        self.upper.is_some()
    }

    fn fs_index(&self, dev: u64) -> u64 {
        *self
            .fsidx
            .entry(dev)
            .or_insert_with(|| self.next_fsidx.fetch_add(1, Ordering::Relaxed))
    }

    /// The mount's inode number for a real object (see the module docs).
    pub fn ino(&self, dev: u64, real_ino: u64) -> u64 {
        let idx = self.fs_index(dev);
        // Top bytes 0xfe (name nodes, `inode::NAME_IDS`) and 0xff (this table) are taken.
        if idx < 0xfe && real_ino & !REAL_INO_MASK == 0 {
            let ino = idx << FSIDX_SHIFT | real_ino;
            if ino != ROOT_INO {
                return ino;
            }
        }
        *self
            .overflow
            .entry((dev, real_ino))
            .or_insert_with(|| OVERFLOW_BASE | self.next_overflow.fetch_add(1, Ordering::Relaxed))
    }

    /// The marker xattr name `{prefix}{suffix}` for the prefix this mount writes.
    pub fn marker(&self, suffix: &str) -> std::ffi::CString {
        std::ffi::CString::new(format!("{}{suffix}", self.xattr_prefix)).unwrap_or_default()
    }
}

/// Every marker namespace the read side honours, whatever this mount writes: the kernel's
/// (privileged and `userxattr`), and fuse-overlayfs's rootless one.
pub const READ_PREFIXES: [&CStr; 3] = [
    c"trusted.overlay.",
    c"user.overlay.",
    c"user.fuseoverlayfs.",
];

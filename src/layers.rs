//! The branches of a mount (the kernel's `super.c`): each is opened once as an `O_PATH`
//! directory fd, and every later access is an `*at` call relative to one of them.
//!
//! Layer ids: [`UPPER`] (0) is the writable upper's slot, lowers are `1..=n` with 1 the
//! highest (the kernel's leftmost `lowerdir`). Lower layers are never written.
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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::{Error, Result};
use crate::options::Config;
use crate::sys;

/// Index of a branch: [`UPPER`] or a lower `1..=n`.
pub type LayerId = usize;

/// The upper's slot.
pub const UPPER: LayerId = 0;

/// The FUSE root's node id.
pub const ROOT_INO: u64 = 1;

const FSIDX_SHIFT: u32 = 56;
const REAL_INO_MASK: u64 = (1 << FSIDX_SHIFT) - 1;
const OVERFLOW_BASE: u64 = 0xff << FSIDX_SHIFT;

/// One branch.
#[derive(Debug)]
pub struct Layer {
    pub id: LayerId,
    pub path: PathBuf,
    /// `O_PATH` fd of the branch root.
    pub root: Arc<OwnedFd>,
    pub dev: u64,
}

/// Every branch of the mount, the workdir, and the inode-number map.
#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Layer>,
    /// `O_PATH` fd of the workdir (only with an upper).
    pub work: Option<Arc<OwnedFd>>,
    /// Lowers, highest first; `lowers[i].id == i + 1`.
    pub lowers: Vec<Layer>,
    /// `"trusted.overlay."` or, with `userxattr`, `"user.overlay."`: the prefix we write.
    pub xattr_prefix: &'static str,
    fsidx: DashMap<u64, u64>,
    next_fsidx: AtomicU64,
    overflow: DashMap<(u64, u64), u64>,
    next_overflow: AtomicU64,
}

fn open_layer(id: LayerId, opt: &str, path: &std::path::Path) -> Result<Layer> {
    let root =
        sys::open_host_dir(path).map_err(|e| Error::io(e, format!("{opt} {}", path.display())))?;
    let st =
        sys::fstat(root.as_fd()).map_err(|e| Error::io(e, format!("{opt} {}", path.display())))?;
    Ok(Layer {
        id,
        path: path.to_path_buf(),
        root: Arc::new(root),
        dev: st.st_dev,
    })
}

impl Layers {
    /// Opens every branch named by the configuration.
    pub fn open(cfg: &Config) -> Result<Layers> {
        let upper = match &cfg.upperdir {
            Some(p) => Some(open_layer(UPPER, "upperdir", p)?),
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
        let mut lowers = Vec::with_capacity(cfg.lowerdirs.len());
        for (i, p) in cfg.lowerdirs.iter().enumerate() {
            lowers.push(open_layer(i + 1, "lowerdir", p)?);
        }
        let layers = Layers {
            upper,
            work,
            lowers,
            // Unprivileged processes cannot set trusted.* xattrs: in a user namespace write
            // the kernel's `userxattr` form, as the kernel overlayfs requires there.
            xattr_prefix: if cfg.userxattr || sys::in_user_namespace() {
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
        for l in &layers.lowers {
            layers.fs_index(l.dev);
        }
        Ok(layers)
    }

    /// The branch with this id. Ids come from lookups, so a bad one is a bug: EIO.
    pub fn get(&self, id: LayerId) -> Result<&Layer> {
        let l = if id == UPPER {
            self.upper.as_ref()
        } else {
            self.lowers.get(id - 1)
        };
        l.ok_or_else(|| Error::new(libc::EIO, format!("no layer {id}")))
    }

    pub fn root(&self, id: LayerId) -> Result<BorrowedFd<'_>> {
        Ok(self.get(id)?.root.as_fd())
    }

    /// All branch roots, top first: the root directory's realization.
    pub fn roots(&self) -> Vec<(LayerId, Arc<OwnedFd>)> {
        self.upper
            .iter()
            .chain(self.lowers.iter())
            .map(|l| (l.id, l.root.clone()))
            .collect()
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

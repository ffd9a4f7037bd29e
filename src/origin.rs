//! The copy-up origin (the kernel overlayfs's `overlay.origin`, "Origin file handle" in
//! its Documentation/filesystems/overlayfs.rst): which lower object an upper entry was
//! copied up from, recorded as that object's file handle so that a later mount finds it
//! whatever the upper entry's name has become, and shows its inode number.
//!
//! The value is the kernel's `struct ovl_fb`, packed: version 0, magic 0xfb, the length
//! of the whole value, flags (bit 0 big-endian, bit 1 any-endian, bit 2 "this is an upper
//! handle"), the exportfs fid type, the 16-byte UUID of the lower's filesystem
//! (`sb->s_uuid`), then the fid bytes `name_to_handle_at(2)` gives. An empty value means
//! "copied up, origin not recorded" (a filesystem that cannot encode handles, a UUID the
//! kernel does not tell us, a lower with several links).
//!
//! Decoding, as the kernel's `ovl_check_origin_fh`: the first lower whose filesystem UUID
//! is the recorded one (and usable: on the upper's filesystem, or neither null nor shared
//! with a lower on another filesystem, the kernel's `bad_uuid`) and that decodes the handle (`open_by_handle_at`, then `fstat`) is
//! the origin. A handle no lower decodes (another filesystem, a layer copied elsewhere,
//! the object gone: ESTALE) or one in a format we do not know (a newer version, other
//! endianness, an upper handle) is no origin at all: the entry shows its own number,
//! never an error. `open_by_handle_at` needs CAP_DAC_READ_SEARCH in the initial user
//! namespace; a daemon without it (rootless) reads the inode number out of the fid of the
//! filesystems whose handle layout is known (ext2/3/4 and others using the generic 32-bit
//! layout, tmpfs, xfs, btrfs, the generic 64-bit layout) and trusts it: it cannot tell a
//! handle gone stale, nor the origin's link count. Other fid types are not decoded there.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::layers::Layers;
use crate::sys::{self, handle::Handle};

const MAGIC: u8 = 0xfb;
const VERSION: u8 = 0;
const FLAG_BIG_ENDIAN: u8 = 1 << 0;
const FLAG_ANY_ENDIAN: u8 = 1 << 1;
const FLAG_PATH_UPPER: u8 = 1 << 2;
const FLAGS_ALL: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
/// version, magic, len, flags, type, uuid.
const HEADER: usize = 5 + 16;
const CPU_ENDIAN: u8 = if cfg!(target_endian = "big") {
    FLAG_BIG_ENDIAN
} else {
    0
};

/// The parts of an `overlay.origin` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fb {
    pub flags: u8,
    pub uuid: [u8; 16],
    pub handle: Handle,
}

/// The value recording `dir/name` (on a filesystem with UUID `uuid`) as an origin; empty
/// when its handle cannot be had (the kernel's "origin not recorded").
pub fn encode(dir: BorrowedFd<'_>, name: &CStr, uuid: Option<[u8; 16]>) -> Vec<u8> {
    let (Some(uuid), Ok(h)) = (uuid, sys::handle::name_to_handle(dir, name)) else {
        return Vec::new();
    };
    let len = HEADER + h.bytes.len();
    let (Ok(len8), Ok(kind)) = (u8::try_from(len), u8::try_from(h.kind)) else {
        return Vec::new();
    };
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[VERSION, MAGIC, len8, CPU_ENDIAN, kind]);
    v.extend_from_slice(&uuid);
    v.extend_from_slice(&h.bytes);
    v
}

/// Parses a value; `None` for an empty one, a malformed one, or one the kernel treats as
/// "origin unknown" (a newer version, unknown flags, the other endianness).
pub fn parse(v: &[u8]) -> Option<Fb> {
    if v.len() < HEADER || v[1] != MAGIC || (v[2] as usize) > v.len() || (v[2] as usize) < HEADER {
        return None;
    }
    let flags = v[3];
    if v[0] > VERSION || flags & !FLAGS_ALL != 0 {
        return None;
    }
    if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != CPU_ENDIAN {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&v[5..HEADER]);
    Some(Fb {
        flags,
        uuid,
        handle: Handle {
            kind: i32::from(v[4]),
            bytes: v[HEADER..v[2] as usize].to_vec(),
        },
    })
}

/// The inode number inside a fid of a known layout (see the module docs), in the byte
/// order of this machine (the one `parse` accepts).
pub fn fid_ino(h: &Handle) -> Option<u64> {
    let b = &h.bytes;
    let u32_at = |i: usize| -> Option<u64> {
        Some(u64::from(u32::from_ne_bytes(
            b.get(i..i + 4)?.try_into().ok()?,
        )))
    };
    let u64_at =
        |i: usize| -> Option<u64> { Some(u64::from_ne_bytes(b.get(i..i + 8)?.try_into().ok()?)) };
    match (h.kind, b.len()) {
        // FILEID_INO32_GEN / _PARENT, generic layout: ino, generation (, parent's).
        (1, 8) | (2, 16) => u32_at(0),
        // tmpfs's FILEID_INO32_GEN: generation, ino low word, ino high word.
        (1, 12) => Some(u32_at(4)? | u32_at(8)? << 32),
        // FILEID_INO64_GEN / _PARENT (xfs's 64-bit inodes too): 64-bit ino first.
        (0x81 | 0x82, n) if n >= 12 => u64_at(0),
        // btrfs: objectid (the st_ino) first.
        (0x4d..=0x4f, n) if n >= 8 => u64_at(0),
        _ => None,
    }
}

/// What an origin value names, for numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The lower object (its `st_dev`, `st_ino`, and link count when it was opened).
    Found {
        dev: u64,
        ino: u64,
        nlink: Option<u64>,
    },
    /// A well-formed lower handle no lower decodes: stale (no origin for numbering).
    Stale,
    /// Empty, or a format we do not read: no origin known.
    Unknown,
}

/// Set once `open_by_handle_at` was refused (no CAP_DAC_READ_SEARCH): read fids instead.
static NO_OPEN_BY_HANDLE: AtomicBool = AtomicBool::new(false);

/// A lower filesystem an origin may be decoded on: its UUID, a readable fd of its root
/// (not `O_PATH`) and its `st_dev`.
pub struct Candidate<'a> {
    pub uuid: [u8; 16],
    pub root: BorrowedFd<'a>,
    pub dev: u64,
}

/// Decodes origin value `v` of an upper entry whose file type is `fmt` (`S_IFMT` bits)
/// against the current lowers.
pub fn decode(layers: &Layers, v: &[u8], fmt: u32) -> Origin {
    let stack = layers.stack();
    let ids: Vec<(Option<[u8; 16]>, u64)> = stack.lowers.iter().map(|l| (l.uuid, l.dev)).collect();
    let upper_dev = layers.upper.as_ref().map(|u| u.dev);
    let cands = stack.lowers.iter().filter_map(|l| {
        let uuid = l.uuid?;
        if !uuid_usable(&ids, upper_dev, uuid, l.dev) {
            return None;
        }
        Some(Candidate {
            uuid,
            root: l.handle_root.as_ref()?.as_fd(),
            dev: l.dev,
        })
    });
    decode_among(cands, v, fmt)
}

/// May handles be matched to the lower on filesystem `dev` by its `uuid`? As the kernel
/// (`bad_uuid`): always on the upper's filesystem; elsewhere only with a UUID that is not
/// null and that no lower on another filesystem shares (a handle could otherwise be
/// decoded on the wrong filesystem).
pub fn uuid_usable(
    lowers: &[(Option<[u8; 16]>, u64)],
    upper_dev: Option<u64>,
    uuid: [u8; 16],
    dev: u64,
) -> bool {
    if upper_dev == Some(dev) {
        return true;
    }
    uuid != [0; 16] && !lowers.iter().any(|(u, d)| *d != dev && *u == Some(uuid))
}

/// [`decode`] against `cands`, highest layer first.
pub fn decode_among<'a>(cands: impl Iterator<Item = Candidate<'a>>, v: &[u8], fmt: u32) -> Origin {
    let Some(fb) = parse(v) else {
        return Origin::Unknown;
    };
    if fb.flags & FLAG_PATH_UPPER != 0 {
        return Origin::Unknown;
    }
    for c in cands.filter(|c| c.uuid == fb.uuid) {
        if !NO_OPEN_BY_HANDLE.load(Ordering::Relaxed) {
            match sys::handle::open_by_handle(c.root, &fb.handle) {
                Ok(fd) => {
                    return match sys::fstat(fd.as_fd()) {
                        Ok(st) if st.st_mode & libc::S_IFMT == fmt => Origin::Found {
                            dev: st.st_dev,
                            ino: st.st_ino,
                            nlink: Some(st.st_nlink),
                        },
                        _ => Origin::Stale,
                    };
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    log::info!(
                        "origin: open_by_handle_at refused; reading inode numbers from file handles"
                    );
                    NO_OPEN_BY_HANDLE.store(true, Ordering::Relaxed);
                }
                Err(_) => continue,
            }
        }
        if let Some(ino) = fid_ino(&fb.handle) {
            return Origin::Found {
                dev: c.dev,
                ino,
                nlink: None,
            };
        }
    }
    Origin::Stale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_the_kernels_layout() {
        let d = std::env::temp_dir();
        let dir = sys::open_host_dir(&d).unwrap();
        let v = encode(dir.as_fd(), c".", Some([7; 16]));
        assert_eq!(&v[..2], &[0, 0xfb]);
        assert_eq!(v[2] as usize, v.len());
        let fb = parse(&v).unwrap();
        assert_eq!(fb.uuid, [7; 16]);
        assert!(encode(dir.as_fd(), c".", None).is_empty());
        assert!(parse(b"").is_none());
    }

    #[test]
    fn shared_or_null_uuids_off_the_upper_fs_are_not_used() {
        let a = [1; 16];
        let lowers = [
            (Some(a), 10),
            (Some(a), 11),
            (Some([0; 16]), 12),
            (Some([2; 16]), 13),
        ];
        assert!(uuid_usable(&lowers, Some(10), a, 10));
        assert!(!uuid_usable(&lowers, Some(10), a, 11));
        assert!(!uuid_usable(&lowers, Some(10), [0; 16], 12));
        assert!(uuid_usable(&lowers, Some(10), [2; 16], 13));
        assert!(uuid_usable(&lowers, Some(12), [0; 16], 12));
    }

    #[test]
    fn reads_known_fid_layouts() {
        let h = |kind, bytes: Vec<u8>| Handle { kind, bytes };
        let mut ext4 = 1234u32.to_ne_bytes().to_vec();
        ext4.extend_from_slice(&9u32.to_ne_bytes());
        assert_eq!(fid_ino(&h(1, ext4)), Some(1234));
        let mut shm = 9u32.to_ne_bytes().to_vec();
        shm.extend_from_slice(&5u32.to_ne_bytes());
        shm.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(fid_ino(&h(1, shm)), Some(5 | 1 << 32));
        assert_eq!(fid_ino(&h(0x42, vec![0; 8])), None);
    }
}

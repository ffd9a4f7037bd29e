//! Every whiteout and opaque-directory format, read side (the kernel's `ovl_is_whiteout`,
//! `ovl_is_opaquedir`, plus the aufs/OCI layer format):
//!
//! - whiteout: a character device 0/0 (kernel); a `.wh.NAME` entry (aufs/OCI); a zero-size
//!   regular file with `overlay.whiteout` set inside a directory whose `overlay.opaque` is
//!   `x` (kernel 6.7+ xattr whiteouts, used where device nodes can't be made);
//! - opaque directory: `overlay.opaque=y` in the trusted or user namespace; a `.wh..wh..opq`
//!   entry inside it (aufs/OCI).
//!
//! None of these markers is ever shown in the merged view.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use crate::layers::READ_PREFIXES;
use crate::sys::{self, xattr, Stat};

/// Name prefix of an aufs/OCI whiteout.
pub const AUFS_PREFIX: &[u8] = b".wh.";
/// Name of the aufs/OCI opaque marker.
pub const AUFS_OPAQUE: &[u8] = b".wh..wh..opq";

/// What a real directory says about the layers below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opaque {
    /// Lower directories of the same name merge with it.
    No,
    /// Nothing below shows through.
    Yes,
    /// Not opaque, but some children may be xattr whiteouts.
    XattrWhiteouts,
}

/// A 0/0 character device: the kernel's whiteout.
pub fn is_whiteout_stat(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Names that are layer markers, not content (`.wh.*`).
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_PREFIX)
}

/// `.wh.NAME` → `NAME`; `None` for other names and for the opaque marker.
pub fn aufs_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == AUFS_OPAQUE || !b.starts_with(AUFS_PREFIX) || b.len() == AUFS_PREFIX.len() {
        return None;
    }
    Some(OsStr::from_bytes(&b[AUFS_PREFIX.len()..]))
}

/// `NAME` → `.wh.NAME`, if that still fits in a name.
pub fn aufs_name(name: &OsStr) -> Option<CString> {
    let b = name.as_bytes();
    if b.len() + AUFS_PREFIX.len() > 255 {
        return None;
    }
    let mut v = AUFS_PREFIX.to_vec();
    v.extend_from_slice(b);
    CString::new(v).ok()
}

/// Is there an aufs whiteout for `name` in `dir`?
pub fn has_aufs_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    match aufs_name(name) {
        Some(wh) => sys::fstatat(dir, &wh).is_ok(),
        None => false,
    }
}

/// Reads the overlay marker `suffix` (`opaque`, `redirect`, `origin`, …) of `dir/name`, in
/// whichever of the namespaces in `READ_PREFIXES` carries it.
pub fn marker(dir: BorrowedFd<'_>, name: &std::ffi::CStr, suffix: &str) -> Option<Vec<u8>> {
    for p in READ_PREFIXES {
        let mut attr = p.to_bytes().to_vec();
        attr.extend_from_slice(suffix.as_bytes());
        let attr = CString::new(attr).ok()?;
        if let Ok(Some(v)) = xattr::get(dir, name, &attr) {
            return Some(v);
        }
    }
    None
}

/// The opaque state of the real directory `dir` (an fd of the directory itself).
pub fn dir_opaque(dir: BorrowedFd<'_>) -> Opaque {
    Markers::of(dir, c".").dir_opaque(dir)
}

/// The overlay markers one object carries, read with one `listxattr` (instead of one
/// `getxattr` per marker and namespace: an object without markers, the common case, then
/// costs one call whatever is asked of it).
pub struct Markers {
    /// The object's xattr names, NUL-separated (empty if it has none or can't have any).
    names: Vec<u8>,
    /// `names` is the object's whole list (listxattr succeeded).
    known: bool,
}

impl Markers {
    /// No markers (an object that was not asked).
    pub fn none() -> Markers {
        Markers {
            names: Vec::new(),
            known: false,
        }
    }

    /// The markers of `dir/name` (`"."`: `dir` itself).
    pub fn of(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Markers {
        match xattr::list(dir, name) {
            Ok(names) => Markers { names, known: true },
            Err(_) => Markers::none(),
        }
    }

    /// All the object's xattr names (NUL-separated), if they were read.
    pub fn names(&self) -> Option<Arc<[u8]>> {
        self.known.then(|| Arc::from(self.names.as_slice()))
    }

    /// The full names of marker `suffix` the object carries, in `READ_PREFIXES` order.
    fn names_of<'a>(&'a self, suffix: &'a str) -> impl Iterator<Item = CString> + 'a {
        READ_PREFIXES.iter().filter_map(move |p| {
            let mut attr = p.to_bytes().to_vec();
            attr.extend_from_slice(suffix.as_bytes());
            self.names
                .split(|&b| b == 0)
                .any(|n| n == attr.as_slice())
                .then(|| CString::new(attr).ok())
                .flatten()
        })
    }

    /// Does the object carry marker `suffix` (in any namespace)? As [`marker`]`.is_some()`
    /// for a marker with a value.
    pub fn has(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr, suffix: &str) -> bool {
        self.get(dir, name, suffix).is_some()
    }

    /// The value of marker `suffix` of `dir/name` (the object this was read from), as
    /// [`marker`] reads it.
    pub fn get(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr, suffix: &str) -> Option<Vec<u8>> {
        if self.names.is_empty() {
            return None;
        }
        self.names_of(suffix)
            .find_map(|attr| xattr::get(dir, name, &attr).ok().flatten())
    }

    /// The opaque state of the directory these markers were read from (`dir` itself).
    pub fn dir_opaque(&self, dir: BorrowedFd<'_>) -> Opaque {
        match self.get(dir, c".", "opaque").as_deref() {
            Some(b"y") => return Opaque::Yes,
            Some(b"x") => return Opaque::XattrWhiteouts,
            _ => {}
        }
        let opq = CString::new(AUFS_OPAQUE).unwrap_or_default();
        if sys::fstatat(dir, &opq).is_ok() {
            return Opaque::Yes;
        }
        Opaque::No
    }
}

/// `Node::prot` (fileattr.rs) holds what protects a node once known: this bit, then the
/// `FS_IMMUTABLE_FL | FS_APPEND_FL` bits (which fit a byte).
pub const PROT_KNOWN: u8 = 1;

/// The `Node::prot` value for an `overlay.protattr` value read from an upper entry (`None`:
/// no such marker): "a" append-only, "i" immutable; an unknown letter makes the kernel
/// ignore the whole value.
pub fn prot_of_marker(v: Option<&[u8]>) -> u8 {
    use crate::sys::fileattr::{FS_APPEND_FL, FS_IMMUTABLE_FL};
    let mut bits = 0u32;
    for &c in v.unwrap_or_default() {
        match c {
            b'a' => bits |= FS_APPEND_FL,
            b'i' => bits |= FS_IMMUTABLE_FL,
            _ => return PROT_KNOWN,
        }
    }
    PROT_KNOWN | bits as u8
}

/// A zero-size regular file carrying `overlay.whiteout` (only meaningful inside a
/// directory whose opaque state is [`Opaque::XattrWhiteouts`]).
pub fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &std::ffi::CStr, st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_size == 0
        && marker(dir, name, "whiteout").is_some()
}

/// The kernel's overlay xattr namespaces, which nest by escaping (Linux 6.7+): a name
/// `P` + `X` set through the mount is stored as `P` + `overlay.` + `X` on the layer, and
/// shown as `P` + `X` again; every other name under `P` is a marker of this overlay.
const ESCAPABLE: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
const ESCAPE: &[u8] = b"overlay.";

/// The name stored on a layer for an xattr name given through the mount; `None` for a
/// name no one may set through the mount (fuse-overlayfs's private markers).
pub fn xattr_to_real(visible: &[u8]) -> Option<Vec<u8>> {
    for p in ESCAPABLE {
        if let Some(rest) = visible.strip_prefix(p) {
            return Some([p, ESCAPE, rest].concat());
        }
    }
    if is_marker_xattr(visible) {
        return None;
    }
    Some(visible.to_vec())
}

/// The name shown through the mount for a name stored on a layer; `None` for markers.
pub fn xattr_to_visible(real: &[u8]) -> Option<Vec<u8>> {
    for p in ESCAPABLE {
        if let Some(rest) = real.strip_prefix(p) {
            return rest.strip_prefix(ESCAPE).map(|x| [p, x].concat());
        }
    }
    if is_marker_xattr(real) {
        return None;
    }
    Some(real.to_vec())
}

fn is_marker_xattr(name: &[u8]) -> bool {
    READ_PREFIXES.iter().any(|p| name.starts_with(p.to_bytes()))
}

/// True for stored xattr names that are markers of this overlay (never shown or copied).
pub fn is_private_xattr(real: &[u8]) -> bool {
    xattr_to_visible(real).is_none()
}

/// Maps a NUL-separated list of stored names to the names shown, dropping markers.
pub fn filter_xattr_list(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(v) = xattr_to_visible(name) {
            out.extend_from_slice(&v);
            out.push(0);
        }
    }
    out
}

/// Bytes of an `OsString` as a C string (names never contain NUL).
pub fn c_name(name: &OsStr) -> Option<CString> {
    CString::new(name.as_bytes()).ok()
}

/// An `OsString` from raw bytes.
pub fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_names() {
        assert_eq!(aufs_target(OsStr::new(".wh.foo")), Some(OsStr::new("foo")));
        assert_eq!(aufs_target(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(aufs_target(OsStr::new(".wh.")), None);
        assert_eq!(aufs_target(OsStr::new("foo")), None);
        assert!(is_marker_name(OsStr::new(".wh..wh..opq")));
        assert!(aufs_name(OsStr::new(&"a".repeat(252))).is_none());
    }

    /// One listxattr answers what one getxattr per marker and namespace answered.
    #[test]
    fn markers_read_as_marker_reads_them() {
        use std::os::fd::AsFd;
        let base = std::env::temp_dir().join(format!("sfs-markers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::write(base.join("f"), b"").unwrap();
        std::fs::write(base.join("plain"), b"x").unwrap();
        let dir = sys::open_host_dir(&base).unwrap();
        let d = dir.as_fd();
        let set =
            |n: &std::ffi::CStr, a: &std::ffi::CStr, v: &[u8]| xattr::set(d, n, a, v, 0).is_ok();
        if !set(c"d", c"user.overlay.opaque", b"y") {
            return; // no user xattrs on this filesystem: nothing to compare
        }
        assert!(set(c"f", c"user.fuseoverlayfs.redirect", b"/a/b"));
        assert!(set(c"f", c"user.overlay.overlay.metacopy", b"")); // escaped: not a marker
        assert!(set(c"f", c"user.other", b"1"));
        for name in [c"d", c"f", c"plain"] {
            let m = Markers::of(d, name);
            for suffix in ["opaque", "redirect", "metacopy", "origin", "whiteout"] {
                assert_eq!(
                    m.get(d, name, suffix),
                    marker(d, name, suffix),
                    "{name:?} {suffix}"
                );
            }
        }
        assert_eq!(
            Markers::of(d, c"f").get(d, c"f", "redirect").as_deref(),
            Some(&b"/a/b"[..])
        );
        let sub = sys::open_dir_path(d, c"d").unwrap();
        assert_eq!(dir_opaque(sub.as_fd()), Opaque::Yes);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn private_xattrs_are_filtered() {
        let list = b"user.a\0trusted.overlay.opaque\0user.overlay.redirect\0security.x\0user.fuseoverlayfs.opaque\0trusted.overlay.overlay.opaque\0";
        assert_eq!(
            filter_xattr_list(list),
            b"user.a\0security.x\0trusted.overlay.opaque\0".to_vec()
        );
        assert_eq!(
            xattr_to_real(b"trusted.overlay.opaque").unwrap(),
            b"trusted.overlay.overlay.opaque"
        );
        assert_eq!(xattr_to_real(b"user.x").unwrap(), b"user.x");
        assert!(xattr_to_real(b"user.fuseoverlayfs.opaque").is_none());
    }
}

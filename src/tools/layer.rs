//! Offline reading of branch directories for the layer tools (`check`, `export`, `merge`):
//! what one real entry of a layer is (whiteout, opaque marker, directory with its markers,
//! metacopy file, plain entry), and the view of the lower layers at a path, by the same
//! rules `lookup.rs` applies to a mount (whiteouts stop a name, a non-directory hides the
//! directories below it, an opaque directory ends the merge). The formats themselves come
//! from `whiteout.rs`; nothing here writes.
//!
//! Assumes nothing is mounted on the branches while a tool runs (the tools check that).
//! Redirects found in *lower* layers are not followed (a lower made by the kernel as the
//! upper of another stack would need them; the tools work on one upper over plain lowers).

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layers::READ_PREFIXES;
use crate::sys::{self, xattr, Stat};
use crate::whiteout::{self, Opaque, AUFS_OPAQUE};

pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_reg(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// An open directory of a branch: an `O_RDONLY` fd (listable; `*at` calls work on it too).
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    let path = sys::open_dir_path(dir, name).map_err(|e| Error::io(e, "open dir"))?;
    sys::reopen(path.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| Error::io(e, "open dir"))
}

/// The root of a branch named on the command line.
pub fn open_root(opt: &str, p: &Path) -> Result<OwnedFd> {
    let what = |e| Error::io(e, format!("{opt} {}", p.display()));
    let fd = sys::open_host_dir(p).map_err(what)?;
    sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(what)
}

/// The names in `dir` with their attributes, sorted by name (from the start, however
/// often the fd was listed before).
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<(CString, Stat)>> {
    sys::lseek(dir, 0, libc::SEEK_SET).map_err(|e| Error::io(e, "readdir"))?;
    let mut out = Vec::new();
    for e in sys::read_dir(dir).map_err(|e| Error::io(e, "readdir"))? {
        let Some(c) = whiteout::c_name(&e.name) else {
            continue;
        };
        match sys::fstatat(dir, &c) {
            Ok(st) => out.push((c, st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io(e, "stat")),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One overlay marker found on an entry: the full xattr name, the marker (`opaque`,
/// `redirect`, …) and its value.
#[derive(Debug, Clone)]
pub struct Marker {
    pub attr: CString,
    pub key: String,
    pub value: Vec<u8>,
}

/// Every overlay marker on `dir/name` (the namespaces of `READ_PREFIXES`; an escaped
/// `trusted.overlay.overlay.X` is a user's xattr, not a marker).
pub fn markers(dir: BorrowedFd<'_>, name: &CStr) -> Vec<Marker> {
    let list = xattr::list(dir, name).unwrap_or_default();
    let mut out = Vec::new();
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Some(p) = READ_PREFIXES.iter().find(|p| n.starts_with(p.to_bytes())) else {
            continue;
        };
        let key = &n[p.to_bytes().len()..];
        if key.starts_with(b"overlay.") {
            continue;
        }
        let Ok(attr) = CString::new(n) else { continue };
        let value = xattr::get(dir, name, &attr)
            .ok()
            .flatten()
            .unwrap_or_default();
        out.push(Marker {
            attr,
            key: String::from_utf8_lossy(key).into_owned(),
            value,
        });
    }
    out
}

pub fn find<'a>(m: &'a [Marker], key: &str) -> Option<&'a Marker> {
    m.iter().find(|x| x.key == key)
}

/// What one real entry of a layer directory is.
#[derive(Debug, Clone)]
pub enum Class {
    /// A whiteout of `target` (a 0/0 character device named `target`, a `.wh.target`
    /// file, or an xattr whiteout in an `opaque=x` directory).
    Whiteout { target: CString, form: WhiteoutForm },
    /// The aufs/OCI opaque marker file `.wh..wh..opq`.
    OpaqueMarker,
    /// Content.
    Entry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    CharDev,
    Aufs,
    Xattr,
}

pub fn classify(dir: BorrowedFd<'_>, dir_state: Opaque, name: &CStr, st: &Stat) -> Class {
    let os = OsStr::from_bytes(name.to_bytes());
    if name.to_bytes() == AUFS_OPAQUE {
        return Class::OpaqueMarker;
    }
    if let Some(t) = whiteout::aufs_target(os) {
        if let Some(target) = whiteout::c_name(t) {
            return Class::Whiteout {
                target,
                form: WhiteoutForm::Aufs,
            };
        }
    }
    if whiteout::is_whiteout_stat(st) {
        return Class::Whiteout {
            target: name.to_owned(),
            form: WhiteoutForm::CharDev,
        };
    }
    if dir_state == Opaque::XattrWhiteouts && whiteout::is_xattr_whiteout(dir, name, st) {
        return Class::Whiteout {
            target: name.to_owned(),
            form: WhiteoutForm::Xattr,
        };
    }
    Class::Entry
}

/// The lower directories merged at one path, top first (already cut at an opaque one).
#[derive(Debug, Default)]
pub struct LowerDirs(pub Vec<OwnedFd>);

/// The topmost visible lower entry of a name.
#[derive(Debug)]
pub struct LowerHit<'a> {
    pub dir: BorrowedFd<'a>,
    pub st: Stat,
}

impl LowerDirs {
    pub fn roots(roots: &[OwnedFd]) -> Result<LowerDirs> {
        let mut v = Vec::new();
        for r in roots {
            v.push(
                sys::reopen(r.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| Error::io(e, "lower root"))?,
            );
        }
        Ok(LowerDirs(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The visible lower entry `name`, if any (whiteouts in the lowers stop it).
    pub fn lookup(&self, name: &CStr) -> Option<LowerHit<'_>> {
        for d in &self.0 {
            let st = match sys::fstatat(d.as_fd(), name) {
                Ok(st) => st,
                Err(_) => {
                    if whiteout::has_aufs_whiteout(d.as_fd(), OsStr::from_bytes(name.to_bytes())) {
                        return None;
                    }
                    continue;
                }
            };
            let state = whiteout::dir_opaque(d.as_fd());
            match classify(d.as_fd(), state, name, &st) {
                Class::Entry => return Some(LowerHit { dir: d.as_fd(), st }),
                _ => return None,
            }
        }
        None
    }

    /// The lower directories that merge under the name `name` (stops at a whiteout, a
    /// non-directory and after an opaque directory).
    pub fn child(&self, name: &CStr) -> LowerDirs {
        let mut out = Vec::new();
        for d in &self.0 {
            let st = match sys::fstatat(d.as_fd(), name) {
                Ok(st) => st,
                Err(_) => {
                    if whiteout::has_aufs_whiteout(d.as_fd(), OsStr::from_bytes(name.to_bytes())) {
                        break;
                    }
                    continue;
                }
            };
            let state = whiteout::dir_opaque(d.as_fd());
            if !matches!(classify(d.as_fd(), state, name, &st), Class::Entry) || !is_dir(&st) {
                break;
            }
            let Ok(fd) = open_dir(d.as_fd(), name) else {
                break;
            };
            let opaque = whiteout::dir_opaque(fd.as_fd()) == Opaque::Yes;
            out.push(fd);
            if opaque {
                break;
            }
        }
        LowerDirs(out)
    }

    /// The lower directories at an absolute path from the lower roots.
    pub fn at_path(roots: &[OwnedFd], path: &[u8]) -> Result<LowerDirs> {
        let mut cur = LowerDirs::roots(roots)?;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let Ok(c) = CString::new(c) else {
                return Ok(LowerDirs::default());
            };
            cur = cur.child(&c);
            if cur.is_empty() {
                break;
            }
        }
        Ok(cur)
    }

    /// Every visible name of the merged lower directories, with the topmost entry's
    /// attributes and the directory holding it, sorted.
    pub fn merged_names(&self) -> Result<Vec<(CString, Stat, usize)>> {
        let mut seen: std::collections::BTreeMap<CString, Option<(Stat, usize)>> =
            Default::default();
        for (i, d) in self.0.iter().enumerate() {
            let state = whiteout::dir_opaque(d.as_fd());
            for (n, st) in list(d.as_fd())? {
                match classify(d.as_fd(), state, &n, &st) {
                    Class::OpaqueMarker => {}
                    Class::Whiteout { target, .. } => {
                        seen.entry(target).or_insert(None);
                    }
                    Class::Entry => {
                        seen.entry(n).or_insert(Some((st, i)));
                    }
                }
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(n, v)| v.map(|(st, i)| (n, st, i)))
            .collect())
    }
}

/// Joins a display path (`/a/b`) for reports.
pub fn join(parent: &str, name: &CStr) -> String {
    let n = String::from_utf8_lossy(name.to_bytes());
    if parent == "/" {
        format!("/{n}")
    } else {
        format!("{parent}/{n}")
    }
}

/// A redirect value read as the kernel's `redirect_dir` format: an absolute path from the
/// layer roots, or one name in the parent's lower directories. `Err` with why for values
/// the kernel refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Absolute(Vec<u8>),
    Relative(CString),
}

pub fn parse_redirect(v: &[u8]) -> std::result::Result<Redirect, &'static str> {
    if v.is_empty() {
        return Err("empty");
    }
    if v.contains(&0) {
        return Err("contains a NUL byte");
    }
    if v.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        return Err("has a . or .. component (leads outside the layer)");
    }
    if v[0] == b'/' {
        if v.split(|&b| b == b'/').all(|c| c.is_empty()) {
            return Err("names the layer root");
        }
        return Ok(Redirect::Absolute(v.to_vec()));
    }
    if v.contains(&b'/') {
        return Err("relative with a /");
    }
    CString::new(v)
        .map(Redirect::Relative)
        .map_err(|_| "bad name")
}

/// Absolute path of a redirect target given the lower path of the parent directory.
pub fn redirect_path(parent_lower: &[u8], r: &Redirect) -> Vec<u8> {
    match r {
        Redirect::Absolute(p) => {
            let comps: Vec<&[u8]> = p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
            let mut out = Vec::new();
            for c in comps {
                out.push(b'/');
                out.extend_from_slice(c);
            }
            out
        }
        Redirect::Relative(n) => child_path(parent_lower, n),
    }
}

/// `/a/b` + name → `/a/b/name` on raw bytes.
pub fn child_path(parent: &[u8], name: &CStr) -> Vec<u8> {
    let mut out = if parent == b"/" {
        Vec::new()
    } else {
        parent.to_vec()
    };
    out.push(b'/');
    out.extend_from_slice(name.to_bytes());
    out
}

/// The kernel's `ovl_fb` file-handle header (`overlay.origin`): version 0, magic 0xfb,
/// the length of the whole value; or empty ("copied up, origin not recorded").
pub fn valid_origin(v: &[u8]) -> bool {
    v.is_empty() || (v.len() >= 21 && v[0] == 0 && v[1] == 0xfb && v[2] as usize == v.len())
}

/// `overlay.metacopy`: empty, or the kernel's versioned header (version 0, its length,
/// flags, then an fs-verity digest).
pub fn valid_metacopy(v: &[u8]) -> bool {
    v.is_empty() || (v.len() >= 4 && v[0] == 0 && v[1] as usize == v.len())
}

/// The lower regular file holding a metacopy file's data: at its redirect (absolute, or a
/// name in the parent's lower directories) or at its own name; opened for reading.
pub fn metacopy_data(
    lower_roots: &[OwnedFd],
    lowers: &LowerDirs,
    lower_path: &[u8],
    name: &CStr,
    redirect: Option<&Redirect>,
) -> Result<Option<OwnedFd>> {
    let open = |hit: Option<LowerHit<'_>>, n: &CStr| -> Result<Option<OwnedFd>> {
        match hit {
            Some(h) if is_reg(&h.st) => sys::openat(h.dir, n, libc::O_RDONLY, 0)
                .map(Some)
                .map_err(|e| Error::io(e, "metacopy data")),
            _ => Ok(None),
        }
    };
    match redirect {
        None => open(lowers.lookup(name), name),
        Some(r) => {
            let full = redirect_path(lower_path, r);
            let i = full.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let dirs = LowerDirs::at_path(lower_roots, &full[..i])?;
            let last = CString::new(&full[i + 1..]).unwrap_or_default();
            open(dirs.lookup(&last), &last)
        }
    }
}

/// The xattrs of `dir/name` a mount shows (overlay markers dropped, escaped names
/// unescaped), sorted by name.
pub fn visible_xattrs(dir: BorrowedFd<'_>, name: &CStr) -> Vec<(Vec<u8>, Vec<u8>)> {
    let list = xattr::list(dir, name).unwrap_or_default();
    let mut out = Vec::new();
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Some(vis) = whiteout::xattr_to_visible(n) else {
            continue;
        };
        let Ok(c) = CString::new(n) else { continue };
        if let Ok(Some(v)) = xattr::get(dir, name, &c) {
            out.push((vis, v));
        }
    }
    out.sort();
    out
}

/// Does the upper hide the lower entry at the absolute path `path`: holds an entry (or a
/// whiteout) there, or on the way a non-directory, a whiteout, an opaque or a redirected
/// directory (below which the path means something else)?
pub fn upper_hides(upper_root: BorrowedFd<'_>, path: &[u8]) -> Result<bool> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, dirs)) = comps.split_last() else {
        return Ok(true);
    };
    let mut cur = sys::reopen(upper_root, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| Error::io(e, "upper"))?;
    for c in dirs {
        let c = CString::new(*c).unwrap_or_default();
        match sys::fstatat(cur.as_fd(), &c) {
            Err(_) => {
                return Ok(whiteout::has_aufs_whiteout(
                    cur.as_fd(),
                    OsStr::from_bytes(c.to_bytes()),
                ))
            }
            Ok(st) if !is_dir(&st) => return Ok(true),
            Ok(_) => {
                let sub = open_dir(cur.as_fd(), &c)?;
                let m = markers(sub.as_fd(), c".");
                if whiteout::dir_opaque(sub.as_fd()) == Opaque::Yes
                    || find(&m, "redirect").is_some()
                {
                    return Ok(true);
                }
                cur = sub;
            }
        }
    }
    let last = CString::new(*last).unwrap_or_default();
    Ok(sys::fstatat(cur.as_fd(), &last).is_ok()
        || whiteout::has_aufs_whiteout(cur.as_fd(), OsStr::from_bytes(last.to_bytes())))
}

//! Layered name resolution (the kernel's `namei.c`).
//!
//! Rules, checked in layer order from the top:
//! - a whiteout (any format, see `whiteout.rs`) ends the search: the name does not exist
//!   below it;
//! - the first non-directory found is the entry, and hides everything below;
//! - a directory merges with the same-named directories below it, until one of them is
//!   opaque or a non-directory is met (a directory below a non-directory never shows);
//! - a directory carrying `overlay.redirect` continues the search below at the redirected
//!   name (relative) or path from the layer roots (absolute), as the kernel's
//!   `redirect_dir` format says;
//! - on a branch whose whiteouts are not honoured (`ro`, `rr`: `layers::Mode`), a
//!   whiteout is as if absent and an opaque marker does not stop the merge;
//! - a file carrying `overlay.metacopy` holds only metadata: its data comes from the next
//!   regular file found below (or at its `overlay.redirect` path);
//! - an upper entry carrying `overlay.origin` was copied up: it keeps the inode number of
//!   its lower origin, as the kernel does: the object its recorded file handle names
//!   (`origin.rs`) whatever the entry's name now is, or, for an empty origin (none
//!   recorded), the entry of the same name below.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inode::Loc;
use crate::layers::{LayerId, Layers, Stack};
use crate::sys::{self, Stat};
use crate::whiteout::{self, Markers, Opaque};

/// The result of resolving one name.
#[derive(Debug)]
pub struct Found {
    pub top: LayerId,
    /// Attributes of the topmost real entry.
    pub st: Stat,
    /// Directories: the real directories merged, top first.
    pub dirs: Vec<(LayerId, Arc<OwnedFd>)>,
    /// Metacopy files: where the data is.
    pub data: Option<Arc<OwnedFd>>,
    /// The entry's inode number in the mount.
    pub ino: u64,
    /// The topmost real entry's xattr names, when a lower's and read on the way
    /// (`Loc::lower_xattrs`).
    pub xattr_names: Option<Arc<[u8]>>,
    /// An upper entry's `overlay.protattr`, as `Node::prot` holds it (fileattr.rs); 0 for a
    /// lower entry (not read until a change asks).
    pub prot: u8,
    /// `index=on`: a name of a lower hard link copied up through another name: the index
    /// entry that now holds the file (index.rs `find_index`).
    pub index_alias: Option<Alias>,
}

/// `index=on` (index.rs): a name of a lower hard link whose copy-up went through another
/// name: the index entry that holds the file now.
#[derive(Debug, Clone)]
pub struct Alias {
    /// `O_PATH` fd of the index entry.
    pub fd: Arc<OwnedFd>,
    /// Its name in `workdir/index`.
    pub name: Arc<std::ffi::CString>,
    /// The lower layer the name itself is in.
    pub lower: LayerId,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// The kernel reports `nlink = 1` for merged directories (counting subdirectories
    /// across layers is not worth it; `find` accepts 1).
    pub fn merged(&self) -> bool {
        self.is_dir() && self.dirs.len() > 1
    }
}

pub use crate::whiteout::marker;

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_reg(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Where the search goes in the layers below the current one.
enum Target {
    /// The same (or a relatively redirected) name in the parent's lower directories.
    Name(CString),
    /// An absolute redirect: this path from each lower layer's root.
    Path(Vec<CString>),
}

/// The target of a redirect marker, if any. A redirect with a "." or ".." component
/// would lead out of the layer (`/../..` from its root): refused with EACCES, as the
/// kernel's own name lookup refuses those components.
fn redirect_target(v: Option<&[u8]>) -> Result<Option<Target>> {
    let Some(v) = v else { return Ok(None) };
    if v.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        log::debug!(
            "lookup: redirect {:?} has a . or .. component; refused",
            String::from_utf8_lossy(v)
        );
        return Err(Error::errno(libc::EACCES));
    }
    Ok(parse_redirect(v))
}

fn parse_redirect(v: &[u8]) -> Option<Target> {
    if v.is_empty() {
        return None;
    }
    if v[0] == b'/' {
        let comps: Vec<CString> = v
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .filter_map(|c| CString::new(c).ok())
            .collect();
        if comps.is_empty() {
            return None;
        }
        Some(Target::Path(comps))
    } else if v.contains(&b'/') {
        None
    } else {
        CString::new(v).ok().map(Target::Name)
    }
}

/// The candidate (layer, directory fd, name) places below `after` for `target`.
fn candidates(
    stack: &Stack,
    parent: &Loc,
    target: &Target,
    after: Option<LayerId>,
) -> Vec<(LayerId, Arc<OwnedFd>, CString)> {
    // By position in the stack (ids are not positions); a layer no longer in the stack
    // is below nothing.
    let after_pos = after.map(|a| stack.pos(a));
    let below = |l: LayerId| match after_pos {
        None => true,
        Some(None) => false,
        Some(Some(a)) => stack.pos(l).is_some_and(|p| p > a),
    };
    match target {
        Target::Name(n) => parent
            .dirs
            .iter()
            .filter(|(l, _)| below(*l))
            .map(|(l, fd)| (*l, fd.clone(), n.clone()))
            .collect(),
        Target::Path(comps) => {
            let (last, dirs) = match comps.split_last() {
                Some(x) => x,
                None => return Vec::new(),
            };
            let mut out = Vec::new();
            for layer in stack.lowers.iter().filter(|l| below(l.id)) {
                let mut fd = layer.root.clone();
                let mut ok = true;
                for c in dirs {
                    match sys::open_dir_path(fd.as_fd(), c) {
                        Ok(next) => fd = Arc::new(next),
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    out.push((layer.id, fd, last.clone()));
                }
            }
            out
        }
    }
}

/// Resolves `name` in the merged directory `parent`. `Ok(None)`: no such entry.
pub fn lookup(layers: &Layers, parent: &Loc, name: &OsStr) -> Result<Option<Found>> {
    resolve(layers, parent, name, &mut None)
}

/// What a name that a create is about to take holds (the kernel's check of its negative
/// dentry, `ovl_dentry_is_whiteout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The merged view shows something there.
    Taken,
    /// Nothing shows; `whiteout`: the layer whose whiteout (either format) ended the
    /// search. A new entry must be made at or above it; made in it, it replaces the
    /// whiteout in one step (and a directory is opaque).
    Free { whiteout: Option<LayerId> },
}

/// Probes `name` in `parent` for a create: one resolution, which also tells whether it
/// ended at a whiteout in the upper.
pub fn probe_create(layers: &Layers, parent: &Loc, name: &OsStr) -> Result<Slot> {
    let mut whiteout = None;
    Ok(match resolve(layers, parent, name, &mut whiteout)? {
        Some(_) => Slot::Taken,
        None => Slot::Free { whiteout },
    })
}

/// The number an upper non-directory with origin value `v` (non-empty) takes from it:
/// its decoded origin's, when that has one link (as the kernel: copies of a hard-linked
/// lower may not all claim it, unless `index=on` keeps them one file) or its link count is unknown (see `origin.rs`); none when
/// the handle does not decode (the kernel's fallback: the entry's own number).
fn decoded_ino(layers: &Layers, v: &[u8], st: &sys::Stat) -> Option<u64> {
    match crate::origin::decode(layers, v, st.st_mode & libc::S_IFMT) {
        crate::origin::Origin::Found { dev, ino, nlink }
            if nlink.unwrap_or(1) == 1 || layers.index =>
        {
            Some(layers.ino(dev, ino))
        }
        _ => None,
    }
}

/// What one place tells the search.
enum Step {
    /// Look at the next place.
    Next,
    /// The search is over.
    Done,
    /// Look again below this place, at the new `Search::target`.
    Redirect,
}

/// One place the search looks at: entry `n` (stat `st`) in directory `dir` of `layer`.
struct Place<'a> {
    layer: LayerId,
    dir: BorrowedFd<'a>,
    n: &'a CStr,
    st: Stat,
    /// The layer is writable (`Stack::writable`): its entries are read as upper entries.
    writable: bool,
    /// The layer's whiteouts and opaque markers count (`Stack::whiteouts`).
    honours: bool,
    /// The markers of a non-directory (see `Search::at`).
    own: Option<Markers>,
}

/// The state of one resolution: what is found so far and where it looks next.
struct Search {
    found: Option<Found>,
    /// Upper entries copied up from a lower keep the lower's inode number.
    want_origin: bool,
    origin_ino: Option<u64>,
    metacopy: bool,
    target: Target,
    after: Option<LayerId>,
    /// The layer whose whiteout ended the search.
    whiteout_at: Option<LayerId>,
}

impl Search {
    /// A whiteout in `layer` ends the search; it is the one a create replaces when
    /// nothing was found above it.
    fn whiteout_in(&mut self, layer: LayerId) -> Step {
        if self.found.is_none() {
            self.whiteout_at = Some(layer);
        }
        Step::Done
    }

    /// Goes on below at the target of `redirect`, if it has one; else at the next place.
    fn redirect(&mut self, redirect: Option<Vec<u8>>) -> Result<Step> {
        Ok(match redirect_target(redirect.as_deref())? {
            Some(t) => {
                self.target = t;
                Step::Redirect
            }
            None => Step::Next,
        })
    }

    /// Looks at `n` in `dir`, a place of `layer`; `more`: other places follow it.
    fn at(
        &mut self,
        layers: &Layers,
        stack: &Stack,
        (layer, dir, n): (LayerId, BorrowedFd<'_>, &CStr),
        more: bool,
    ) -> Result<Step> {
        let honours = stack.whiteouts(layer);
        let st = match sys::fstatat(dir, n) {
            Ok(st) => st,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                // An aufs whiteout only hides what is below it: in the last place
                // searched there is nothing below (the search ends here either way).
                if more
                    && honours
                    && whiteout::has_aufs_whiteout(dir, OsStr::from_bytes(n.to_bytes()))
                {
                    // (An upper in the aufs format: a new entry there must still hide
                    // what the `.wh.` name hid.)
                    return Ok(self.whiteout_in(layer));
                }
                return Ok(Step::Next);
            }
            Err(e) => return Err(Error::io(e, "lookup")),
        };
        if whiteout::is_whiteout_stat(&st) {
            if !honours {
                return Ok(Step::Next);
            }
            return Ok(self.whiteout_in(layer));
        }
        // Markers of a non-directory, read once: the upper's origin, a regular file's
        // metacopy and redirect, an empty file's whiteout.
        let writable = stack.writable(layer);
        let own = (!is_dir(&st) && (writable || is_reg(&st))).then(|| Markers::of(dir, n));
        if is_reg(&st)
            && st.st_size == 0
            && own.as_ref().is_some_and(|m| m.has(dir, n, "whiteout"))
            && whiteout::dir_opaque(dir) == Opaque::XattrWhiteouts
        {
            return Ok(if honours { Step::Done } else { Step::Next });
        }
        let p = Place {
            layer,
            dir,
            n,
            st,
            writable,
            honours,
            own,
        };
        match self.found.as_ref().map(Found::is_dir) {
            None if is_dir(&st) => self.first_dir(&p),
            None => self.first_other(layers, &p),
            Some(true) => self.further_dir(layers, &p),
            Some(false) => self.further_other(layers, &p),
        }
    }

    /// The first entry found is a directory: it merges with those below, unless opaque.
    fn first_dir(&mut self, p: &Place<'_>) -> Result<Step> {
        let fd = Arc::new(sys::open_dir_path(p.dir, p.n).map_err(|e| Error::io(e, "lookup dir"))?);
        let mk = Markers::of(fd.as_fd(), c".");
        let opaque = p.honours && mk.dir_opaque(fd.as_fd()) == Opaque::Yes;
        if p.writable {
            self.want_origin = mk.has(fd.as_fd(), c".", "origin");
        }
        let redirect = mk.get(fd.as_fd(), c".", "redirect");
        let prot = upper_prot(p.writable, &mk, fd.as_fd(), c".");
        self.found = Some(Found {
            top: p.layer,
            st: p.st,
            dirs: vec![(p.layer, fd)],
            data: None,
            ino: 0,
            xattr_names: (!p.writable).then(|| mk.names()).flatten(),
            prot,
            index_alias: None,
        });
        if opaque {
            return Ok(Step::Done);
        }
        self.redirect(redirect)
    }

    /// The first entry found is not a directory: it hides everything below, which is
    /// only looked at for its origin's number and a metacopy file's data.
    fn first_other(&mut self, layers: &Layers, p: &Place<'_>) -> Result<Step> {
        let (dir, n) = (p.dir, p.n);
        // The upper's own link count does not matter (all its names share
        // the marker, so they share the number, and linking or unlinking
        // one must not renumber the file under the kernel's feet); the
        // origin's does, below.
        let none = Markers::none();
        let mk = p.own.as_ref().unwrap_or(&none);
        if p.writable && mk.has(dir, n, "origin") {
            // A recorded handle decides alone (decodable or not); an
            // empty origin is looked for at the same name below.
            match mk.get(dir, n, "origin") {
                Some(v) if !v.is_empty() => {
                    self.origin_ino = decoded_ino(layers, &v, &p.st);
                }
                _ => self.want_origin = true,
            }
        }
        self.metacopy = is_reg(&p.st) && mk.has(dir, n, "metacopy");
        let redirect = if self.metacopy {
            mk.get(dir, n, "redirect")
        } else {
            None
        };
        self.found = Some(Found {
            top: p.layer,
            st: p.st,
            dirs: Vec::new(),
            data: None,
            ino: 0,
            xattr_names: (!p.writable).then(|| mk.names()).flatten(),
            prot: upper_prot(p.writable, mk, dir, n),
            index_alias: None,
        });
        if !self.want_origin && !self.metacopy {
            return Ok(Step::Done);
        }
        self.redirect(redirect)
    }

    /// A directory below the found one: merged with it, unless a non-directory (which
    /// ends the merge) or opaque (the last merged).
    fn further_dir(&mut self, layers: &Layers, p: &Place<'_>) -> Result<Step> {
        if !is_dir(&p.st) {
            return Ok(Step::Done);
        }
        let fd = Arc::new(sys::open_dir_path(p.dir, p.n).map_err(|e| Error::io(e, "lookup dir"))?);
        let mk = Markers::of(fd.as_fd(), c".");
        if self.want_origin && self.origin_ino.is_none() {
            // A copy on a writable branch below the top (aufs's model) is not the original:
            // the number is the first directory further down that is not a copy, whatever
            // copies were made in between and in which order (else a directory's number
            // would change when a copy is made between its top and its original).
            let copy = layers.writable(p.layer) && mk.has(fd.as_fd(), c".", "origin");
            if !copy {
                self.origin_ino = Some(layers.ino(p.st.st_dev, p.st.st_ino));
            }
        }
        let opaque = p.honours && mk.dir_opaque(fd.as_fd()) == Opaque::Yes;
        let redirect = mk.get(fd.as_fd(), c".", "redirect");
        if let Some(f) = self.found.as_mut() {
            f.dirs.push((p.layer, fd));
        }
        if opaque {
            return Ok(Step::Done);
        }
        self.redirect(redirect)
    }

    /// An entry below the found non-directory.
    fn further_other(&mut self, layers: &Layers, p: &Place<'_>) -> Result<Step> {
        let Some(f) = self.found.as_mut() else {
            return Ok(Step::Done); // (never: called once something is found)
        };
        let (dir, n) = (p.dir, p.n);
        // A non-directory looking further down: for its origin's number and,
        // if metacopy, for the file that holds its data.
        if (f.st.st_mode & libc::S_IFMT) == (p.st.st_mode & libc::S_IFMT) {
            if self.want_origin && self.origin_ino.is_none() {
                // A hard-linked lower file may have been copied up to several
                // upper files: those can't all take its number (as the
                // kernel: only an origin with one link lends its number).
                if p.st.st_nlink == 1 {
                    self.origin_ino = Some(layers.ino(p.st.st_dev, p.st.st_ino));
                } else {
                    self.want_origin = false;
                }
            }
            if self.metacopy && f.data.is_none() {
                let fd = sys::openat(dir, n, libc::O_PATH, 0)
                    .map_err(|e| Error::io(e, "metacopy data"))?;
                // A lower that is itself metacopy points further down.
                let lower_mc = p.own.as_ref().is_some_and(|m| m.has(dir, n, "metacopy"));
                if !lower_mc {
                    f.data = Some(Arc::new(fd));
                }
            }
        }
        let done_origin = !self.want_origin || self.origin_ino.is_some();
        let done_data = !self.metacopy || f.data.is_some();
        if done_origin && done_data {
            return Ok(Step::Done);
        }
        Ok(Step::Next)
    }
}

/// `lookup`, also setting `whiteout` to the layer whose whiteout ended the search.
/// Entries in a writable layer (`Stack::writable`: the upper, or a writable branch below
/// it) are read as the kernel reads upper entries (their origin, protattr), and nothing of
/// them is kept as a lower's unchanging attributes.
fn resolve(
    layers: &Layers,
    parent: &Loc,
    name: &OsStr,
    whiteout_at: &mut Option<LayerId>,
) -> Result<Option<Found>> {
    if whiteout::is_marker_name(name) {
        return Ok(None);
    }
    let cname = CString::new(name.as_bytes()).map_err(|_| Error::errno(libc::EINVAL))?;
    let mut s = Search {
        found: None,
        want_origin: false,
        origin_ino: None,
        metacopy: false,
        target: Target::Name(cname),
        after: None,
        whiteout_at: *whiteout_at,
    };
    let stack = layers.stack();

    'layers: loop {
        let places = candidates(&stack, parent, &s.target, s.after);
        if places.is_empty() {
            break;
        }
        let last = places.len().saturating_sub(1);
        for (k, (layer, dir, n)) in places.into_iter().enumerate() {
            s.after = Some(layer);
            match s.at(layers, &stack, (layer, dir.as_fd(), &n), k < last)? {
                Step::Next => {}
                Step::Done => break 'layers,
                Step::Redirect => continue 'layers,
            }
        }
        break;
    }
    *whiteout_at = s.whiteout_at;
    let origin_ino = s.origin_ino;
    Ok(s.found.map(|mut f| {
        f.ino = origin_ino.unwrap_or_else(|| layers.ino(f.st.st_dev, f.st.st_ino));
        f
    }))
}

/// The `Node::prot` of an entry found with markers `mk`: a writable layer's entry's from
/// its `overlay.protattr` (no call unless it has one), unknown for a lower entry.
fn upper_prot(writable: bool, mk: &Markers, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> u8 {
    if !writable {
        return 0;
    }
    whiteout::prot_of_marker(mk.get(dir, name, "protattr").as_deref())
}

//! Merged directory listings (the kernel's `readdir.c`).
//!
//! A listing is built per directory *node*, not per open stream ([`DirState`], kept in the
//! node): every stream of the directory reads the one listing there is, which is built
//! again when a stream starts at offset 0 and when a name changed through the mount since
//! it was built, and dropped when a stream reads to its end (and with the node, at
//! FORGET), so only directories part-way through a listing hold one. A stream is thus not
//! a snapshot taken at opendir: it may go on in a listing built after it began (as it
//! already did after a change). That lets the daemon answer OPENDIR with ENOSYS where the
//! kernel may cache every listing (`dispatch/dir.rs`, `dir_flags`): the kernel then sends no
//! OPENDIR/RELEASEDIR, and every stream reads with handle 0. Every real directory of the
//! merged one is read top first; the first layer to show a name wins; whiteouts hide the
//! name in the layers below; markers are never listed.
//!
//! Offsets are cookies derived from the name (`.` is 1, `..` is 2, every other name a hash
//! of it; the listing is sorted by cookie), as ext4's hashed directories do: "go on after
//! offset X" means "the entries whose cookie is above X" in *any* listing of the directory,
//! not only in the one that handed X out. So a stream can go on from a later listing than
//! the one it started with (names that did not change are listed exactly once), the
//! kernel's listing cache (FOPEN_CACHE_DIR), which a stream may start reading and leave
//! part-way, lines up with the daemon's listings, and telldir/seekdir offsets stay valid.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::inode::{Kind, Loc};
use crate::layers::{Layers, UPPER};
use crate::lookup;
use crate::sys;
use crate::whiteout::{self, Opaque};

pub use crate::types::DirEntry;

pub use crate::types::DirState;

/// The cookie of a name other than `.` and `..`: a hash in 3..i64::MAX (the kernel's
/// offsets are signed), the same for the life of the process.
fn cookie(name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    3 + h.finish() % (i64::MAX as u64 - 3)
}

/// Gives the names after `.` and `..` their cookies and sorts them by cookie. A name whose
/// cookie an earlier one already took (a 63-bit hash collision) gets the next free value,
/// so the offsets of one listing are unique and increasing.
fn assign_cookies(out: &mut [DirEntry]) {
    let Some(names) = out.get_mut(2..) else {
        return;
    };
    for e in names.iter_mut() {
        e.off = cookie(&e.name);
    }
    names.sort_unstable_by(|a, b| a.off.cmp(&b.off).then_with(|| a.name.cmp(&b.name)));
    for i in 1..names.len() {
        if names[i].off <= names[i - 1].off {
            names[i].off = names[i - 1].off + 1;
        }
    }
}

/// Where a stream asked to go on after offset `after` starts in `listing`.
pub fn position_after(listing: &[DirEntry], after: u64) -> usize {
    listing.partition_point(|e| e.off <= after)
}

/// Lists the merged directory `dir` (whose own number is `ino`, its parent's `parent_ino`).
/// `.` and `..` come first.
pub fn list(layers: &Layers, dir: &Loc, ino: u64, parent_ino: u64) -> Result<Vec<DirEntry>> {
    list_with(layers, dir, ino, parent_ino, false, &|e| {
        e.resolved_ino(layers)
    })
}

/// An entry of the upper directory of a listing, for [`list_with`]'s `number`: the
/// number it shows must be the one a lookup of its name gives (readdir's d_ino is
/// compared with stat's st_ino).
#[derive(Debug)]
pub struct UpperEntry<'a> {
    /// The merged directory listed.
    pub dir: &'a Loc,
    pub name: &'a OsStr,
    /// The real entry's st_dev and st_ino.
    pub dev: u64,
    pub ino: u64,
    pub is_dir: bool,
    /// It carries an origin marker in a merged or impure directory (it was copied up from
    /// an entry of a lower, whose number it may show).
    pub origin: bool,
}

impl UpperEntry<'_> {
    /// The number as layered resolution alone gives it: its origin's when it has one that
    /// lends its number, else its own (no record of what the mount showed before).
    pub fn resolved_ino(&self, layers: &Layers) -> u64 {
        if self.origin {
            if let Ok(Some(f)) = lookup::lookup(layers, self.dir, self.name) {
                return f.ino;
            }
        }
        layers.ino(self.dev, self.ino)
    }
}

/// [`list`], with the entry types an owner override shows (`overrides`: each layer's
/// `read_level`): a regular file carrying a device, pipe or socket type is listed as one,
/// as lookup shows it.
///
/// On a branch whose whiteouts are not honoured (`ro`, `rr`: `layers::Mode`) a whiteout
/// hides nothing below, and is not listed either.
///
/// `number` gives the number of each upper entry ([`UpperEntry`]); entries of lowers show
/// their own (as lookup numbers them, a name node included).
pub fn list_with(
    layers: &Layers,
    dir: &Loc,
    ino: u64,
    parent_ino: u64,
    overrides: bool,
    number: &dyn Fn(&UpperEntry<'_>) -> u64,
) -> Result<Vec<DirEntry>> {
    let stack = layers.stack();
    let mut out = vec![
        DirEntry {
            name: ".".into(),
            kind: Kind::Dir,
            ino,
            off: 1,
        },
        DirEntry {
            name: "..".into(),
            kind: Kind::Dir,
            ino: parent_ino,
            off: 2,
        },
    ];
    let mut seen: HashSet<OsString> = HashSet::new();
    // Upper entries that may show an origin's number: in a merged directory, or in one
    // marked impure (a copied-up entry was moved or linked into it, as the kernel marks).
    let may_origin = dir.dirs.len() > 1
        || dir.dirs.first().is_some_and(|(layer, fd)| {
            stack.writable(*layer) && whiteout::marker(fd.as_fd(), c".", "impure").is_some()
        });
    for (layer, fd) in &dir.dirs {
        let this = if *layer == UPPER {
            layers.upper.clone()
        } else {
            stack.lower(*layer).cloned()
        };
        let noatime = this.as_ref().is_some_and(|l| l.noatime_opens);
        let level = this
            .as_ref()
            .and_then(|l| l.read_level)
            .filter(|_| overrides);
        let honours = stack.whiteouts(*layer);
        let real = sys::openat_noatime(
            fd.as_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            noatime,
        )
        .map_err(|e| Error::io(e, "readdir open"))?;
        let dev = sys::fstat(real.as_fd())
            .map_err(|e| Error::io(e, "readdir stat"))?
            .st_dev;
        let xwh = whiteout::dir_opaque(fd.as_fd()) == Opaque::XattrWhiteouts;
        let raw = sys::read_dir(real.as_fd()).map_err(|e| Error::io(e, "readdir"))?;
        if *layer == UPPER {
            if let Some(policy) = layers.upper_daemon_atime() {
                crate::atime::touch(policy, real.as_fd(), true);
            }
        }
        let mut hidden_here: Vec<OsString> = Vec::new();
        for e in raw {
            if whiteout::is_marker_name(&e.name) {
                if let (Some(t), true) = (whiteout::aufs_target(&e.name), honours) {
                    hidden_here.push(t.to_os_string());
                }
                continue;
            }
            if seen.contains(&e.name) {
                continue;
            }
            let cname = match whiteout::c_name(&e.name) {
                Some(c) => c,
                None => continue,
            };
            let mut kind = Kind::from_dtype(e.d_type);
            let needs_stat =
                matches!(kind, None | Some(Kind::CharDev)) || (xwh && kind == Some(Kind::File));
            if needs_stat {
                let st = match sys::fstatat(fd.as_fd(), &cname) {
                    Ok(st) => st,
                    Err(_) => continue, // vanished meanwhile
                };
                if whiteout::is_whiteout_stat(&st)
                    || (xwh && whiteout::is_xattr_whiteout(fd.as_fd(), &cname, &st))
                {
                    if honours {
                        hidden_here.push(e.name.clone());
                    }
                    continue;
                }
                kind = Some(Kind::from_mode(st.st_mode));
            }
            let mut kind = kind.unwrap_or(Kind::File);
            if let (Some(level), Kind::File) = (level, kind) {
                if let Some(k) = crate::override_stat::read(level, fd.as_fd(), &cname)
                    .and_then(|o| o.special_kind())
                {
                    kind = k;
                }
            }
            let ino = if stack.writable(*layer) {
                number(&UpperEntry {
                    dir,
                    name: &e.name,
                    dev,
                    ino: e.ino,
                    is_dir: kind == Kind::Dir,
                    origin: may_origin
                        && whiteout::Markers::of(fd.as_fd(), &cname).has(
                            fd.as_fd(),
                            &cname,
                            "origin",
                        ),
                })
            } else {
                layers.ino(dev, e.ino)
            };
            seen.insert(e.name.clone());
            out.push(DirEntry {
                name: e.name,
                kind,
                ino,
                off: 0,
            });
        }
        seen.extend(hidden_here);
    }
    assign_cookies(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[String]) -> Vec<DirEntry> {
        let entry = |name: &str, off| DirEntry {
            name: name.into(),
            kind: Kind::File,
            ino: 0,
            off,
        };
        let mut v = vec![entry(".", 1), entry("..", 2)];
        v.extend(names.iter().map(|n| entry(n, 0)));
        assign_cookies(&mut v);
        v
    }

    #[test]
    fn offsets_are_unique_increasing_and_signed() {
        let names: Vec<String> = (0..5000).map(|i| format!("f{i}")).collect();
        let l = listing(&names);
        assert_eq!((l[0].off, l[1].off), (1, 2));
        for w in l.windows(2) {
            assert!(w[0].off < w[1].off, "{:?} then {:?}", w[0], w[1]);
        }
        assert!(l.iter().all(|e| e.off <= i64::MAX as u64));
    }

    #[test]
    fn a_later_listing_goes_on_where_an_earlier_one_stopped() {
        // A stream read part of one listing; names were created and removed meanwhile; a
        // later listing asked to go on after the last offset handed out gives every
        // unchanged name not yet seen, and no name twice.
        let before: Vec<String> = (0..200).map(|i| format!("old{i}")).collect();
        let first = listing(&before);
        for cut in [0, 1, 2, 3, 50, 101, 201] {
            let seen_part = &first[..cut];
            let stopped = seen_part.last().map(|e| e.off).unwrap_or(0);
            let mut after: Vec<String> = (0..200).map(|i| format!("new{i}")).collect();
            after.extend(before.iter().filter(|n| !n.ends_with('7')).cloned());
            let second = listing(&after);
            let rest = &second[position_after(&second, stopped)..];
            let mut seen: Vec<&OsStr> = seen_part
                .iter()
                .chain(rest)
                .map(|e| e.name.as_os_str())
                .collect();
            let total = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), total, "a name was listed twice (cut {cut})");
            for n in before.iter().filter(|n| !n.ends_with('7')) {
                assert!(
                    seen.contains(&OsStr::new(n)),
                    "{n} went missing (cut {cut})"
                );
            }
        }
    }
}

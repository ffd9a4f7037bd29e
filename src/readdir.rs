//! Merged directory listings (the kernel's `readdir.c`).
//!
//! A listing is built once per open directory stream (and again on a rewind to offset 0):
//! every real directory of the merged one is read top first; the first layer to show a
//! name wins; whiteouts hide the name in the layers below; markers are never listed.
//! Entry `i` of the listing has offset `i + 1`, so an offset stays valid for as long as the
//! stream is open (telldir/seekdir), whatever happens to the directory meanwhile.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::inode::{Kind, Loc};
use crate::layers::{Layers, UPPER};
use crate::lookup;
use crate::sys;
use crate::whiteout::{self, Opaque};

/// One merged directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
    pub ino: u64,
}

/// Lists the merged directory `dir` (whose own number is `ino`, its parent's `parent_ino`).
/// `.` and `..` come first.
pub fn list(layers: &Layers, dir: &Loc, ino: u64, parent_ino: u64) -> Result<Vec<DirEntry>> {
    list_with(layers, dir, ino, parent_ino, &[])
}

/// [`list`], with the entry types an owner override shows (`overrides`: the level read in
/// each layer, by id): a regular file carrying a device, pipe or socket type is listed as
/// one, as lookup shows it.
pub fn list_with(
    layers: &Layers,
    dir: &Loc,
    ino: u64,
    parent_ino: u64,
    overrides: &[Option<crate::override_stat::Level>],
) -> Result<Vec<DirEntry>> {
    let mut out = vec![
        DirEntry {
            name: ".".into(),
            kind: Kind::Dir,
            ino,
        },
        DirEntry {
            name: "..".into(),
            kind: Kind::Dir,
            ino: parent_ino,
        },
    ];
    let mut seen: HashSet<OsString> = HashSet::new();
    let merged = dir.dirs.len() > 1;
    for (layer, fd) in &dir.dirs {
        let noatime = layers.get(*layer).map(|l| l.noatime_opens).unwrap_or(false);
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
                if let Some(t) = whiteout::aufs_target(&e.name) {
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
                    hidden_here.push(e.name.clone());
                    continue;
                }
                kind = Some(Kind::from_mode(st.st_mode));
            }
            let mut kind = kind.unwrap_or(Kind::File);
            if let (Some(Some(level)), Kind::File) = (overrides.get(*layer), kind) {
                if let Some(k) = crate::override_stat::read(*level, fd.as_fd(), &cname)
                    .and_then(|o| o.special_kind())
                {
                    kind = k;
                }
            }
            let mut ino = layers.ino(dev, e.ino);
            // A copied-up entry keeps its origin's number: ask lookup, which knows how.
            if merged && *layer == UPPER && lookup::marker(fd.as_fd(), &cname, "origin").is_some() {
                if let Ok(Some(f)) = lookup::lookup(layers, dir, OsStr::new(&e.name)) {
                    ino = f.ino;
                }
            }
            seen.insert(e.name.clone());
            out.push(DirEntry {
                name: e.name,
                kind,
                ino,
            });
        }
        seen.extend(hidden_here);
    }
    Ok(out)
}

//! `stratafs merge UPPER LOWER [--workdir W]` (aufs's aubrsync): folds an upper layer into
//! the lower directly below it, so that LOWER alone shows what the stack showed.
//!
//! - whiteouts (any format) become deletions; an opaque directory replaces the lower one;
//!   a redirected directory is the lower directory it names, moved to its new place;
//!   everything else is copied over (data with holes, owner, mode, times, xattrs but
//!   overlay markers; a metacopy file's data from the lower); upper hard links stay links;
//! - each entry changes in one step: it is built complete in a staging directory inside
//!   LOWER (`.stratafs-merge.PID`) and renamed into place (`RENAME_EXCHANGE` over a
//!   directory, whose old tree is then removed from the staging directory). An interrupted
//!   merge leaves every entry either old or new, and the staging directory to remove
//!   (where the filesystem has no `renameat2` flags, GlusterFS for one, a replaced
//!   directory takes three plain renames instead, `util.rs`: not one step against a crash);
//! - directories get the upper's owner, mode, xattrs and times, after their contents.
//!
//! Refused, with one line and before anything changes: while either directory (or the
//! workdir) serves a mount (`in_use.rs`; the in-use locks are held to the end, so no
//! stratafs mount can start meanwhile), when `stratafs check` finds anything wrong in the
//! upper against the lower, and when a redirected directory's old place still shows it
//! (no whiteout there: the stack shows it twice, a move cannot). LOWER is taken as the
//! bottom layer: its own overlay markers, if it is itself a layer of a stack, are kept
//! as they are.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::copy_up::{copy_caps, copy_data, copy_meta, copy_times, copy_xattrs, remove_tree};
use crate::error::{Error, Result};
use crate::sys::{self, ops, xattr, Stat};
use crate::tools::layer::{self, Class, LowerDirs};
use crate::tools::{check, in_use};
use crate::util;
use crate::whiteout::{self, Opaque};

#[derive(Debug, Clone, Default)]
pub struct MergeArgs {
    pub upper: PathBuf,
    pub lower: PathBuf,
    pub workdir: Option<PathBuf>,
}

/// What was done.
#[derive(Debug, Default)]
pub struct Summary {
    pub copied: usize,
    pub deleted: usize,
    pub moved: usize,
}

struct Merger {
    staging: OwnedFd,
    staging_name: CString,
    lower_root: OwnedFd,
    /// Upper path of a redirected directory → its lower directory's name in staging.
    moved: HashMap<Vec<u8>, CString>,
    /// Metacopy files' data, opened before anything moved: upper path → fd.
    data: HashMap<Vec<u8>, OwnedFd>,
    /// Multiply-linked upper files placed already: (dev, ino) → `O_PATH` fd of the copy.
    links: HashMap<(u64, u64), OwnedFd>,
    n: u64,
    sum: Summary,
}

fn err(e: std::io::Error, what: &str, path: &[u8]) -> Error {
    Error::io(e, format!("{what} {}", String::from_utf8_lossy(path)))
}

/// The directory at an absolute path of a plain directory tree (the lower), if any.
fn open_path(root: BorrowedFd<'_>, path: &[u8]) -> Option<OwnedFd> {
    let mut cur = sys::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY).ok()?;
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let c = CString::new(c).ok()?;
        cur = layer::open_dir(cur.as_fd(), &c).ok()?;
    }
    Some(cur)
}

impl Merger {
    fn tmp(&mut self) -> CString {
        self.n += 1;
        CString::new(format!("t{}", self.n)).unwrap_or_default()
    }

    /// Phase 1 (reads only): every redirect's lower path, every metacopy file's data.
    fn survey(
        &mut self,
        udir: BorrowedFd<'_>,
        upath: &[u8],
        lower_path: &[u8],
        lowers: &LowerDirs,
        roots: &[OwnedFd],
        redirects: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let state = whiteout::dir_opaque(udir);
        for (name, st) in layer::list(udir)? {
            if !matches!(layer::classify(udir, state, &name, &st), Class::Entry) {
                continue;
            }
            let p = layer::child_path(upath, &name);
            let m = layer::markers(udir, &name);
            let redirect =
                layer::find(&m, "redirect").and_then(|r| layer::parse_redirect(&r.value).ok());
            if layer::is_reg(&st) && layer::find(&m, "metacopy").is_some() {
                let fd = layer::metacopy_data(roots, lowers, lower_path, &name, redirect.as_ref())?
                    .ok_or_else(|| Error::new(libc::ENOENT, "metacopy data"))?;
                self.data.insert(p, fd);
                continue;
            }
            if !layer::is_dir(&st) {
                continue;
            }
            let sub = layer::open_dir(udir, &name)?;
            let opaque = whiteout::dir_opaque(sub.as_fd()) == Opaque::Yes;
            let (own, below) = match (&redirect, opaque) {
                (_, true) => (layer::child_path(lower_path, &name), LowerDirs::default()),
                (Some(r), false) => {
                    let from = layer::redirect_path(lower_path, r);
                    redirects.push((p.clone(), from.clone()));
                    let below = LowerDirs::at_path(roots, &from)?;
                    (from, below)
                }
                (None, false) => (layer::child_path(lower_path, &name), lowers.child(&name)),
            };
            self.survey(sub.as_fd(), &p, &own, &below, roots, redirects)?;
        }
        Ok(())
    }

    /// Moves `dir/name` out of the way into staging and removes it there.
    fn delete(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &[u8]) -> Result<()> {
        if sys::fstatat(dir, name).is_err() {
            return Ok(());
        }
        let t = self.tmp();
        util::rename_noreplace(dir, name, self.staging.as_fd(), &t)
            .map_err(|e| err(e, "delete", path))?;
        remove_tree(self.staging.as_fd(), &t).map_err(|e| err(e, "delete", path))?;
        self.sum.deleted += 1;
        Ok(())
    }

    /// Renames staging's `t` to `dir/name` in one step, replacing what is there.
    fn place(&mut self, t: &CStr, dir: BorrowedFd<'_>, name: &CStr, path: &[u8]) -> Result<()> {
        let s = self.staging.as_fd();
        match sys::fstatat(dir, name) {
            Ok(old) if layer::is_dir(&old) => {
                util::exchange_staged(s, t, dir, name).map_err(|e| err(e, "replace", path))?;
                remove_tree(s, t).map_err(|e| err(e, "remove the replaced", path))?;
            }
            _ => ops::renameat2(s, t, dir, name, 0).map_err(|e| err(e, "place", path))?,
        }
        Ok(())
    }

    /// Builds a copy of the upper non-directory `udir/name` in staging; returns its name.
    fn build(
        &mut self,
        udir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        path: &[u8],
    ) -> Result<CString> {
        let t = self.tmp();
        let s = self.staging.as_fd();
        let e = |x| err(x, "copy", path);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                ops::linkat(first.as_fd(), c"", s, &t).map_err(e)?;
                return Ok(t);
            }
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let dst = sys::openat(s, &t, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)
                    .map_err(e)?;
                let src = match self.data.remove(path) {
                    Some(fd) => fd,
                    None => sys::openat(udir, name, libc::O_RDONLY, 0).map_err(e)?,
                };
                copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64, None)?;
                ops::fsync(dst.as_fd(), false).map_err(e)?;
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(udir, name).map_err(e)?;
                let target = CString::new(target).map_err(|_| Error::errno(libc::EINVAL))?;
                ops::symlinkat(&target, s, &t).map_err(e)?;
            }
            fmt => ops::mknodat(s, &t, fmt | (st.st_mode & 0o7777), st.st_rdev).map_err(e)?,
        }
        // chown first: it drops file capabilities (security.capability), set after it.
        copy_meta(s, &t, st)?;
        copy_xattrs(udir, name, s, &t)?;
        copy_caps(udir, name, s, &t)?;
        copy_times(s, &t, st)?;
        if st.st_nlink > 1 {
            let fd = sys::openat(s, &t, libc::O_PATH, 0).map_err(e)?;
            self.links.insert((st.st_dev, st.st_ino), fd);
        }
        Ok(t)
    }

    /// The lower directory `ldir/name` made to carry the upper directory's attributes.
    fn dir_attrs(
        &self,
        udir: BorrowedFd<'_>,
        uname: &CStr,
        ldir: BorrowedFd<'_>,
        lname: &CStr,
        st: &Stat,
    ) -> Result<()> {
        // Xattrs: exactly the upper's (but the lower's own overlay markers).
        let have = xattr::list(ldir, lname).unwrap_or_default();
        let want = xattr::list(udir, uname).unwrap_or_default();
        for n in have.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if whiteout::is_private_xattr(n) || want.split(|&b| b == 0).any(|w| w == n) {
                continue;
            }
            if let Ok(c) = CString::new(n) {
                let _ = xattr::remove(ldir, lname, &c);
            }
        }
        copy_meta(ldir, lname, st)?;
        copy_xattrs(udir, uname, ldir, lname)?;
        copy_caps(udir, uname, ldir, lname)?;
        copy_times(ldir, lname, st)
    }

    /// Phase 2: applies the upper directory `udir` to the lower directory `ldir`.
    fn apply(&mut self, udir: BorrowedFd<'_>, ldir: BorrowedFd<'_>, upath: &[u8]) -> Result<()> {
        let state = whiteout::dir_opaque(udir);
        for (name, st) in layer::list(udir)? {
            let p = layer::child_path(upath, &name);
            match layer::classify(udir, state, &name, &st) {
                Class::OpaqueMarker => continue,
                Class::Whiteout { target, .. } => {
                    let tp = layer::child_path(upath, &target);
                    self.delete(ldir, &target, &tp)?;
                    continue;
                }
                Class::Entry => {}
            }
            if !layer::is_dir(&st) {
                let t = self.build(udir, &name, &st, &p)?;
                self.place(&t, ldir, &name, &p)?;
                self.sum.copied += 1;
                continue;
            }
            let sub = layer::open_dir(udir, &name)?;
            let opaque = whiteout::dir_opaque(sub.as_fd()) == Opaque::Yes;
            let lower_is_dir = sys::fstatat(ldir, &name).is_ok_and(|l| layer::is_dir(&l));
            match (opaque, self.moved.remove(&p)) {
                (false, Some(staged)) => {
                    self.place(&staged, ldir, &name, &p)?;
                    self.sum.moved += 1;
                }
                (false, None) if lower_is_dir => {}
                _ => {
                    let t = self.tmp();
                    ops::mkdirat(self.staging.as_fd(), &t, 0o700)
                        .map_err(|e| err(e, "mkdir", &p))?;
                    self.place(&t, ldir, &name, &p)?;
                    self.sum.copied += 1;
                }
            }
            let lsub = layer::open_dir(ldir, &name)?;
            self.apply(sub.as_fd(), lsub.as_fd(), &p)?;
            self.dir_attrs(udir, &name, ldir, &name, &st)?;
        }
        Ok(())
    }
}

/// Merges; the caller prints the summary.
pub fn run(a: &MergeArgs) -> Result<Summary> {
    let mut dirs: Vec<(&str, &std::path::Path)> = vec![("upper", &a.upper), ("lower", &a.lower)];
    if let Some(w) = &a.workdir {
        dirs.push(("workdir", w));
    }
    let _locks = in_use::lock_all(&dirs)?;
    let report = check::run(&check::CheckArgs {
        upper: a.upper.clone(),
        lowers: vec![a.lower.clone()],
        ..Default::default()
    })?;
    if let Some(f) = report.findings.first() {
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "the upper has {} problems (stratafs check {} --lower {} [--repair]), first: {}: {}",
                report.findings.len(),
                a.upper.display(),
                a.lower.display(),
                f.path,
                f.problem
            ),
        ));
    }
    let upper = layer::open_root("upper", &a.upper)?;
    let lower = layer::open_root("lower", &a.lower)?;
    let roots = vec![
        sys::reopen(lower.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io(e, "lower"))?,
    ];
    let staging_name =
        CString::new(format!(".stratafs-merge.{}", std::process::id())).unwrap_or_default();
    let mut m = Merger {
        staging: sys::reopen(lower.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io(e, "lower"))?,
        staging_name: staging_name.clone(),
        lower_root: sys::reopen(lower.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io(e, "lower"))?,
        moved: HashMap::new(),
        data: HashMap::new(),
        links: HashMap::new(),
        n: 0,
        sum: Summary::default(),
    };
    // Phase 1: read everything that moves, before anything does.
    let mut redirects = Vec::new();
    let below = if whiteout::dir_opaque(upper.as_fd()) == Opaque::Yes {
        LowerDirs::default()
    } else {
        LowerDirs::roots(&roots)?
    };
    m.survey(upper.as_fd(), b"/", b"/", &below, &roots, &mut redirects)?;
    for (to, from) in &redirects {
        if !layer::upper_hides(upper.as_fd(), from)? {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "{} is a renamed {} that the stack still shows at its old place: not a move",
                    String::from_utf8_lossy(to),
                    String::from_utf8_lossy(from)
                ),
            ));
        }
    }
    let rst = sys::fstat(upper.as_fd()).map_err(|e| Error::io(e, "upper"))?;
    ops::mkdirat(lower.as_fd(), &staging_name, 0o700)
        .map_err(|e| Error::io(e, "lower: staging directory"))?;
    m.staging = layer::open_dir(lower.as_fd(), &staging_name)?;
    let result = (|| -> Result<()> {
        // Deepest first, so a move never changes the path of one still to come.
        redirects.sort_by_key(|(_, from)| {
            std::cmp::Reverse(from.iter().filter(|&&b| b == b'/').count())
        });
        for (to, from) in &redirects {
            let i = from.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let last = CString::new(&from[i + 1..]).unwrap_or_default();
            let Some(parent) = open_path(m.lower_root.as_fd(), &from[..i]) else {
                continue;
            };
            if !sys::fstatat(parent.as_fd(), &last).is_ok_and(|s| layer::is_dir(&s)) {
                continue;
            }
            let t = m.tmp();
            util::rename_noreplace(parent.as_fd(), &last, m.staging.as_fd(), &t)
                .map_err(|e| err(e, "move", from))?;
            m.moved.insert(to.clone(), t);
        }
        let lroot = sys::reopen(m.lower_root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io(e, "lower"))?;
        m.apply(upper.as_fd(), lroot.as_fd(), b"/")?;
        Ok(())
    })();
    // Leftovers in staging: redirect sources the upper had nothing to put at (none when
    // the check passed), then the staging directory itself.
    let name = m.staging_name.clone();
    let cleaned = remove_tree(m.lower_root.as_fd(), &name);
    result?;
    cleaned.map_err(|e| Error::io(e, "lower: removing the staging directory"))?;
    m.dir_attrs(upper.as_fd(), c".", m.lower_root.as_fd(), c".", &rst)?;
    Ok(m.sum)
}

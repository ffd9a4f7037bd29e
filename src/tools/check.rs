//! `stratafs check UPPER [--workdir W] [--lower DIR]… [--repair]` (aufs's auchk): what is
//! wrong in an upper layer, offline.
//!
//! Found, and what `--repair` does (only changes that leave the merged view as it is):
//! - left-over staging entries in `W/work` (a crashed copy-up): removed (a 0/0 device there
//!   is the kernel's shared whiteout, which it leaves and removes at the next mount: not
//!   reported); a left-over
//!   `W/incompat/volatile` (a volatile mount that was not unmounted cleanly): reported;
//! - whiteouts that hide nothing (no lower entry of that name): removed;
//! - opaque markers that hide nothing (no lower entry of that name at all) in a directory
//!   without lower part: removed (in a merged directory the kernel makes every new
//!   subdirectory opaque, a lookup shortcut, so those are not reported);
//! - markers with invalid values or on the wrong kind of entry: an `opaque` other than
//!   `y`/`x` or on a non-directory, a `redirect` on a non-directory that is not metacopy,
//!   a `metacopy` on a non-regular file, an `impure` other than `y` or on a non-directory
//!   are ignored by lookup, so removed (or, for `impure`, set to `y`); an invalid
//!   `redirect` on a directory, `metacopy` or `origin` value changes what a mount shows or
//!   fails its lookups: reported;
//! - with `--lower`, origins whose file handle no lower decodes (a layer moved to or
//!   copied onto another filesystem, the origin removed): reported (a mount shows such an
//!   entry's own inode number, as the kernel does; `origin.rs`);
//! - redirects that lead outside the layer (`.`/`..`), point at the directory itself or an
//!   ancestor (a loop), or name nothing below: reported;
//! - metacopy files whose data is in no lower: reported (the data is gone);
//! - a directory holding entries with a recorded origin (a file handle in `origin`) but no
//!   `impure` (a kernel mount's readdir then gives wrong `d_ino`s): `impure` set. A superfluous
//!   `impure` is not an error (the kernel leaves it and drops it lazily).
//!
//! - `W/index` (`index=on`): an entry not named by the hex of its own `overlay.origin`:
//!   reported; an orphan (no name left by its `overlay.nlink`) or, with `--lower`, a stale
//!   one (its origin in no lower): removed, as the kernel's next mount would;
//!
//! Whiteouts, opaque markers and metacopy data can only be judged against the lowers:
//! without `--lower` they are counted and the report says they were not judged.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::copy_up::remove_tree;
use crate::error::{Error, Result};
use crate::sys::{self, ops, xattr};
use crate::tools::layer::{self, Class, LowerDirs, Marker, Redirect};
use crate::whiteout::{self, Opaque, AUFS_OPAQUE};

#[derive(Debug, Clone, Default)]
pub struct CheckArgs {
    pub upper: PathBuf,
    pub workdir: Option<PathBuf>,
    /// Highest first.
    pub lowers: Vec<PathBuf>,
    pub repair: bool,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    pub problem: String,
    /// What `--repair` did, if it fixed it.
    pub repaired: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Whiteouts, opaque markers and metacopy files not judged (no lowers given).
    pub not_judged: usize,
    pub lowers_given: bool,
}

impl Report {
    /// Problems left after the run (all of them without `--repair`).
    pub fn remaining(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.repaired.is_none())
            .count()
    }

    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .findings
            .iter()
            .map(|f| match &f.repaired {
                Some(r) => format!("{}: {} (repaired: {r})", f.path, f.problem),
                None => format!("{}: {}", f.path, f.problem),
            })
            .collect();
        if !self.lowers_given && self.not_judged > 0 {
            out.push(format!(
                "note: no --lower given: {} whiteouts, opaque markers and metacopy files not judged against the lowers",
                self.not_judged
            ));
        }
        let fixed = self.findings.len() - self.remaining();
        out.push(match (self.findings.len(), fixed) {
            (0, _) => "clean".to_string(),
            (n, 0) => format!("{n} problems"),
            (n, f) => format!("{n} problems, {f} repaired, {} left", n - f),
        });
        out
    }
}

struct Checker {
    repair: bool,
    lowers_given: bool,
    lower_roots: Vec<OwnedFd>,
    /// Each lower's filesystem UUID (when the kernel tells it) and st_dev, for decoding
    /// origins.
    lower_ids: Vec<(Option<[u8; 16]>, u64)>,
    /// The namespace markers are written in when repairing (the one the upper uses).
    prefix: String,
    report: Report,
}

/// An entry whose parent needs `impure`: one with a recorded origin (its inode number is
/// the origin's, so a kernel mount's readdir must translate its `d_ino`). The kernel drops
/// `impure` from directories whose entries need no translation (empty origins, redirects
/// without origin), so those do not count.
fn needs_impure_parent(m: &[Marker]) -> bool {
    layer::find(m, "origin").is_some_and(|o| !o.value.is_empty())
}

impl Checker {
    fn found(&mut self, path: &str, problem: impl Into<String>, fix: Option<Result<String>>) {
        let repaired = match fix {
            Some(Ok(what)) if self.repair => Some(what),
            Some(Err(e)) if self.repair => {
                self.report.findings.push(Finding {
                    path: path.to_string(),
                    problem: format!("{} (repair failed: {e})", problem.into()),
                    repaired: None,
                });
                return;
            }
            _ => None,
        };
        self.report.findings.push(Finding {
            path: path.to_string(),
            problem: problem.into(),
            repaired,
        });
    }

    /// Runs `f` only when repairing (a report-only run changes nothing).
    fn fix(&self, f: impl FnOnce() -> std::io::Result<()>, what: &str) -> Option<Result<String>> {
        if !self.repair {
            return Some(Ok(String::new()));
        }
        Some(f().map(|()| what.to_string()).map_err(|e| Error::io(e, "")))
    }

    /// A recorded origin (a lower file handle) that no lower decodes: a layer moved to or
    /// copied onto another filesystem, or the origin removed (`origin.rs`). Judged only
    /// with `--lower`.
    fn stale_origin(&self, v: &[u8], st: &sys::Stat) -> bool {
        if !self.lowers_given || v.is_empty() {
            return false;
        }
        let cands = self
            .lower_roots
            .iter()
            .zip(&self.lower_ids)
            .filter_map(|(fd, (uuid, dev))| {
                Some(crate::origin::Candidate {
                    uuid: (*uuid)?,
                    root: fd.as_fd(),
                    dev: *dev,
                })
            });
        crate::origin::decode_among(cands, v, st.st_mode & libc::S_IFMT)
            == crate::origin::Origin::Stale
    }

    fn remove_marker(
        &self,
        dir: BorrowedFd<'_>,
        name: &CString,
        m: &Marker,
    ) -> Option<Result<String>> {
        let what = format!("removed {}", String::from_utf8_lossy(m.attr.to_bytes()));
        self.fix(|| xattr::remove(dir, name, &m.attr), &what)
    }

    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &str,
        lower_path: &[u8],
        lowers: &LowerDirs,
    ) -> Result<()> {
        let state = whiteout::dir_opaque(dir);
        let entries = layer::list(dir)?;
        let mut wants_impure = false;
        for (name, st) in &entries {
            let p = layer::join(path, name);
            match layer::classify(dir, state, name, st) {
                Class::OpaqueMarker => continue, // judged with the directory itself
                Class::Whiteout { target, .. } => {
                    if !self.lowers_given {
                        self.report.not_judged += 1;
                    } else if lowers.lookup(&target).is_none() {
                        let fix = self.fix(
                            || keep_times(dir, || ops::unlinkat(dir, name, 0)),
                            "removed",
                        );
                        self.found(&p, "whiteout hides nothing", fix);
                    }
                    continue;
                }
                Class::Entry => {}
            }
            let m = layer::markers(dir, name);
            let is_dir = layer::is_dir(st);
            let is_reg = layer::is_reg(st);
            // (A stale origin needs no translation: the kernel drops `impure` then.)
            let stale = layer::find(&m, "origin").is_some_and(|o| self.stale_origin(&o.value, st));
            wants_impure |= needs_impure_parent(&m) && !stale;
            let metacopy = layer::find(&m, "metacopy");
            for mk in &m {
                let v = String::from_utf8_lossy(&mk.value).into_owned();
                match mk.key.as_str() {
                    "opaque" if !is_dir => {
                        let fix = self.remove_marker(dir, name, mk);
                        self.found(&p, "opaque marker on a non-directory", fix);
                    }
                    "opaque" if v != "y" && v != "x" => {
                        let fix = self.remove_marker(dir, name, mk);
                        self.found(&p, format!("opaque marker with invalid value {v:?}"), fix);
                    }
                    "redirect" if !(is_dir || is_reg && metacopy.is_some()) => {
                        let fix = self.remove_marker(dir, name, mk);
                        self.found(
                            &p,
                            "redirect marker on a non-directory that is not metacopy",
                            fix,
                        );
                    }
                    "redirect" => {
                        if let Err(why) = layer::parse_redirect(&mk.value) {
                            self.found(&p, format!("redirect {v:?} is invalid: {why}"), None);
                        }
                    }
                    "metacopy" if !is_reg => {
                        let fix = self.remove_marker(dir, name, mk);
                        self.found(&p, "metacopy marker on a non-regular file", fix);
                    }
                    "metacopy" if !layer::valid_metacopy(&mk.value) => {
                        self.found(&p, "metacopy marker with an invalid value", None);
                    }
                    "origin" if !layer::valid_origin(&mk.value) => {
                        self.found(&p, "origin marker is not a valid file handle", None);
                    }
                    "origin" if stale => {
                        self.found(
                            &p,
                            "stale origin: its file handle names nothing on the lowers (the entry shows its own inode number)",
                            None,
                        );
                    }
                    "impure" if !is_dir => {
                        let fix = self.remove_marker(dir, name, mk);
                        self.found(&p, "impure marker on a non-directory", fix);
                    }
                    "impure" if v != "y" => {
                        let fix =
                            self.fix(|| xattr::set(dir, name, &mk.attr, b"y", 0), "set to \"y\"");
                        self.found(&p, format!("impure marker with invalid value {v:?}"), fix);
                    }
                    _ => {}
                }
            }
            let redirect = if is_dir || metacopy.is_some() {
                layer::find(&m, "redirect").and_then(|r| layer::parse_redirect(&r.value).ok())
            } else {
                None
            };
            if is_reg
                && metacopy.is_some()
                && layer::valid_metacopy(&metacopy.map(|x| x.value.clone()).unwrap_or_default())
            {
                if !self.lowers_given {
                    self.report.not_judged += 1;
                } else if !self.has_data(lowers, lower_path, name, redirect.as_ref())? {
                    self.found(&p, "metacopy file without data in any lower", None);
                }
            }
            if !is_dir {
                continue;
            }
            let sub = layer::open_dir(dir, name)?;
            let own_lower = match &redirect {
                Some(r) => layer::redirect_path(lower_path, r),
                None => layer::child_path(lower_path, name),
            };
            if let Some(Redirect::Absolute(_)) | Some(Redirect::Relative(_)) = &redirect {
                let own = p.as_bytes();
                let t = own_lower.as_slice();
                if t == own || (own.starts_with(t) && own.get(t.len()) == Some(&b'/')) {
                    self.found(
                        &p,
                        format!(
                            "redirect to {:?} points at itself or an ancestor (a loop)",
                            String::from_utf8_lossy(t)
                        ),
                        None,
                    );
                }
            }
            let below = match &redirect {
                Some(Redirect::Absolute(_)) => LowerDirs::at_path(&self.lower_roots, &own_lower)?,
                _ if redirect.is_some() => LowerDirs::at_path(&self.lower_roots, &own_lower)?,
                _ => lowers.child(name),
            };
            if redirect.is_some() && self.lowers_given && below.is_empty() {
                self.found(
                    &p,
                    format!(
                        "redirect to {:?} names nothing below",
                        String::from_utf8_lossy(&own_lower)
                    ),
                    None,
                );
            }
            let sub_state = whiteout::dir_opaque(sub.as_fd());
            if sub_state == Opaque::Yes {
                if !self.lowers_given {
                    self.report.not_judged += 1;
                } else if below.is_empty() && lowers.lookup(name).is_none() && lowers.is_empty() {
                    // Only in a parent without lower part: in a merged parent the kernel
                    // makes every new directory opaque, as a lookup shortcut.
                    let fix = self.remove_opaque(sub.as_fd());
                    self.found(&p, "opaque directory hides nothing", fix);
                }
            }
            let below = if sub_state == Opaque::Yes {
                LowerDirs::default()
            } else {
                below
            };
            self.walk(sub.as_fd(), &p, &own_lower, &below)?;
        }
        if wants_impure && layer::find(&layer::markers(dir, c"."), "impure").is_none() {
            let attr = CString::new(format!("{}impure", self.prefix)).unwrap_or_default();
            let fix = self.fix(|| xattr::set(dir, c".", &attr, b"y", 0), "set impure");
            self.found(
                path,
                "holds entries with a recorded origin but has no impure marker",
                fix,
            );
        }
        Ok(())
    }

    fn remove_opaque(&self, sub: BorrowedFd<'_>) -> Option<Result<String>> {
        let m = layer::markers(sub, c".");
        let opq = CString::new(AUFS_OPAQUE).unwrap_or_default();
        self.fix(
            || {
                if let Some(o) = layer::find(&m, "opaque") {
                    xattr::remove(sub, c".", &o.attr)?;
                }
                keep_times(sub, || match ops::unlinkat(sub, &opq, 0) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
                    _ => Ok(()),
                })
            },
            "opaque marker removed",
        )
    }

    /// Is there a regular file below to hold a metacopy file's data?
    fn has_data(
        &self,
        lowers: &LowerDirs,
        lower_path: &[u8],
        name: &CString,
        redirect: Option<&Redirect>,
    ) -> Result<bool> {
        Ok(layer::metacopy_data(&self.lower_roots, lowers, lower_path, name, redirect)?.is_some())
    }
}

/// Runs `f` (a removal in `dir`) and puts `dir`'s times back: a repair leaves the
/// directory as the mount showed it.
fn keep_times(dir: BorrowedFd<'_>, f: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let st = sys::fstat(dir)?;
    f()?;
    ops::utimensat(
        dir,
        c"",
        ops::SetTime::At(st.st_atime, st.st_atime_nsec),
        ops::SetTime::At(st.st_mtime, st.st_mtime_nsec),
    )
}

/// The namespace the upper's markers use (`trusted.overlay.` unless only `user.overlay.`
/// ones are found on its root).
fn prefix_of(root: BorrowedFd<'_>) -> String {
    let m = layer::markers(root, c".");
    if m.iter()
        .any(|x| x.attr.to_bytes().starts_with(b"user.overlay."))
    {
        "user.overlay.".into()
    } else {
        "trusted.overlay.".into()
    }
}

/// Checks (and with `repair`, fixes) the upper; the caller prints [`Report::lines`].
pub fn run(a: &CheckArgs) -> Result<Report> {
    let mut dirs: Vec<(&str, &std::path::Path)> = vec![("upper", &a.upper)];
    if let Some(w) = &a.workdir {
        dirs.push(("workdir", w));
    }
    // Repairs take the in-use locks (and refuse a mounted layer); a report only reads.
    let _locks = if a.repair {
        let mut all = dirs.clone();
        all.extend(a.lowers.iter().map(|l| ("lower", l.as_path())));
        crate::tools::in_use::lock_all(&all)?
    } else {
        Vec::new()
    };
    let upper = layer::open_root("upper", &a.upper)?;
    let mut lower_roots = Vec::new();
    for l in &a.lowers {
        lower_roots.push(layer::open_root("lower", l)?);
    }
    let mut c = Checker {
        repair: a.repair,
        lowers_given: !a.lowers.is_empty(),
        prefix: prefix_of(upper.as_fd()),
        report: Report {
            lowers_given: !a.lowers.is_empty(),
            ..Report::default()
        },
        lower_roots: Vec::new(),
        lower_ids: lower_roots
            .iter()
            .map(|fd| {
                let uuid = sys::handle::fs_uuid(fd.as_fd()).ok();
                (
                    uuid,
                    sys::fstat(fd.as_fd()).map(|st| st.st_dev).unwrap_or(0),
                )
            })
            .collect(),
    };
    c.lower_roots = lower_roots;
    if let Some(w) = &a.workdir {
        check_workdir(&mut c, w)?;
    }
    let roots = LowerDirs::roots(&c.lower_roots)?;
    let root_state = whiteout::dir_opaque(upper.as_fd());
    let roots = if root_state == Opaque::Yes {
        LowerDirs::default()
    } else {
        roots
    };
    c.walk(upper.as_fd(), "/", b"/", &roots)?;
    Ok(c.report)
}

/// `W/index` (`index=on`, index.rs), as the kernel verifies it at mount time: every entry
/// but a whiteout is a non-directory named by the hex of its own `overlay.origin`; one no
/// name links up any more (union link count 0 by its `overlay.nlink`) is an orphan, one whose
/// origin no lower decodes (with `--lower`) is stale: both removed by `--repair` (the
/// kernel's clean-up; neither shows in the merged view). Directory entries (the kernel's
/// `nfs_export`) are not judged.
fn check_index(c: &mut Checker, index: &OwnedFd, at: &str) -> Result<()> {
    for (name, st) in layer::list(index.as_fd())? {
        let fmt = st.st_mode & libc::S_IFMT;
        if whiteout::is_whiteout_stat(&st) || fmt == libc::S_IFDIR {
            continue;
        }
        let p = format!("{at}/{}", String::from_utf8_lossy(name.to_bytes()));
        let origin = whiteout::marker(index.as_fd(), &name, "origin").unwrap_or_default();
        if crate::index::index_name(&origin).as_deref() != Some(name.as_c_str()) {
            c.found(
                &p,
                "index entry not named by its overlay.origin (the kernel refuses it)",
                None,
            );
            continue;
        }
        // As the kernel: the union count is the entry's links plus N; none (or no valid
        // overlay.nlink) with only the entry's own link left is an orphan.
        let delta = crate::index::nlink_delta(index.as_fd(), &name);
        let orphan = st.st_nlink == 1 && delta.is_none_or(|d| d < 0);
        let stale = c.stale_origin(&origin, &st);
        if orphan || stale {
            let why = if stale {
                "stale index entry (its origin is in no lower)"
            } else {
                "orphan index entry (no name of it is left)"
            };
            let fix = c.fix(|| ops::unlinkat(index.as_fd(), &name, 0), "removed");
            c.found(&p, why, fix);
        }
    }
    Ok(())
}

fn check_workdir(c: &mut Checker, w: &std::path::Path) -> Result<()> {
    let wd = layer::open_root("workdir", w)?;
    if let Ok(work) = layer::open_dir(wd.as_fd(), c"work") {
        for (name, st) in layer::list(work.as_fd())? {
            if whiteout::is_whiteout_stat(&st) {
                // The kernel's shared whiteout (it links whiteouts from it and removes it at
                // the next mount): part of a clean workdir.
                continue;
            }
            let p = format!(
                "{}/work/{}",
                w.display(),
                String::from_utf8_lossy(name.to_bytes())
            );
            let fix = c.fix(|| remove_tree(work.as_fd(), &name), "removed");
            c.found(
                &p,
                "left-over staging entry (an interrupted copy-up or rename)",
                fix,
            );
        }
    }
    if let Ok(index) = layer::open_dir(wd.as_fd(), c"index") {
        check_index(c, &index, &format!("{}/index", w.display()))?;
    }
    if sys::fstatat(wd.as_fd(), c"incompat/volatile").is_ok() {
        c.found(
            &format!("{}/incompat/volatile", w.display()),
            "a volatile mount was not unmounted cleanly: the upper may miss writes (the kernel refuses to mount it until this is removed)",
            None,
        );
    }
    Ok(())
}

//! The checks of a parsed [`Config`] against the filesystem, once, at startup, without
//! writing anything ([`Config::validate`]): every branch exists and is a directory, the
//! workdir is on the upper's filesystem, no branch is inside another, the mountpoint is a
//! directory outside every branch and not a mount point yet; the paths become canonical.
//! [`Config::prepare`] then makes the one thing a mount may create: the automatic workdir.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{bad, unescape_mountinfo, Config, OptionsError};
use crate::types::Mode;

fn display(p: &Path) -> std::path::Display<'_> {
    p.display()
}

/// Is `inner` equal to or below `outer`? (Both canonical.)
fn within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// `p` as a canonical directory, and its device; the error names `opt`.
fn existing_dir(opt: &str, p: &Path) -> Result<(PathBuf, u64), OptionsError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            let c =
                std::fs::canonicalize(p).map_err(|e| bad(format!("{opt} {}: {e}", display(p))))?;
            Ok((c, m.dev()))
        }
        Ok(_) => Err(bad(format!("{opt} {}: not a directory", display(p)))),
        Err(e) => Err(bad(format!("{opt} {}: {e}", display(p)))),
    }
}

/// The automatic workdir of an aufs-syntax (`br=`) writable top branch: inside it, under
/// aufs's own hidden name (every `.wh.` name is hidden from the mount; writable branches
/// below the top keep their staging there too, `layers.rs`).
pub const IN_BRANCH_WORKDIR: &str = ".wh..wh.orph";

/// Neither of upperdir `u` and workdir `w` (both canonical) is inside the other (but for
/// [`IN_BRANCH_WORKDIR`]), the
/// upper does not overlap a lower, and the workdir is not inside one.
fn check_nesting(u: &Path, w: &Path, lowers: &[PathBuf]) -> Result<(), OptionsError> {
    if within(w, u) && w != u.join(IN_BRANCH_WORKDIR) {
        return Err(bad(format!(
            "workdir {}: inside upperdir {}",
            w.display(),
            u.display()
        )));
    }
    if within(u, w) {
        return Err(bad(format!(
            "upperdir {}: inside workdir {}",
            u.display(),
            w.display()
        )));
    }
    for l in lowers {
        if within(u, l) || within(l, u) {
            return Err(bad(format!(
                "upperdir {}: overlaps lowerdir {}",
                u.display(),
                l.display()
            )));
        }
        if within(w, l) {
            return Err(bad(format!(
                "workdir {}: inside lowerdir {}",
                w.display(),
                l.display()
            )));
        }
    }
    Ok(())
}

/// A writable lower (mode `Rw`, canonical as all of `lowers`) is held to the upper's rules:
/// it overlaps no other lower (neither is inside the other), and it is not inside the
/// workdir. (check_nesting has already kept the upper and the workdir out of every lower.)
fn check_writable_lowers(
    lowers: &[PathBuf],
    modes: &[Mode],
    work: Option<&Path>,
) -> Result<(), OptionsError> {
    let writable = lowers.iter().zip(modes).enumerate();
    for (i, (l, _)) in writable.filter(|(_, (_, m))| **m == Mode::Rw) {
        for (j, other) in lowers.iter().enumerate() {
            if i != j && (within(l, other) || within(other, l)) {
                return Err(bad(format!(
                    "lowerdir {} (rw): overlaps lowerdir {}",
                    l.display(),
                    other.display()
                )));
            }
        }
        if let Some(w) = work.filter(|w| within(l, w)) {
            return Err(bad(format!(
                "lowerdir {} (rw): inside workdir {}",
                l.display(),
                w.display()
            )));
        }
    }
    Ok(())
}

/// Is `path` (canonical) the mount point of a mounted filesystem?
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == path)
}

impl Config {
    /// Checks the paths without writing anything, then makes them canonical (the daemon
    /// changes to `/`): each branch exists and is a directory, workdir comes with upperdir
    /// on the same filesystem, no branch is inside another, and the mountpoint is a
    /// directory that is not inside a branch nor already a mount point; a writable lower
    /// (aufs's branch model) is held to the upper's rules. One line per error, naming the
    /// option and the path.
    pub fn validate(&mut self) -> Result<(), OptionsError> {
        if self.lowerdirs.is_empty() {
            return Err(bad("option lowerdir= is missing or empty"));
        }
        let mut lowers = Vec::new();
        for l in &self.lowerdirs {
            lowers.push(existing_dir("lowerdir", l)?.0);
        }
        let (upper, work) = self.upper_and_work()?;
        if let (Some(u), Some(w)) = (&upper, &work) {
            check_nesting(u, w, &lowers)?;
        }
        check_writable_lowers(&lowers, &self.lower_modes, work.as_deref())?;
        let branches: Vec<(&str, &PathBuf)> = lowers
            .iter()
            .map(|l| ("lowerdir", l))
            .chain(upper.iter().map(|u| ("upperdir", u)))
            .chain(work.iter().map(|w| ("workdir", w)))
            .collect();
        let mnt = self.validate_mountpoint(&branches)?;
        self.lowerdirs = lowers;
        self.upperdir = upper;
        self.workdir = work;
        self.mountpoint = mnt;
        if let Some(f) = &self.log_file {
            if let Ok(a) = std::path::absolute(f) {
                self.log_file = Some(a);
            }
        }
        Ok(())
    }

    /// The upperdir and workdir, canonical: both or neither, on one filesystem. An
    /// automatic workdir that does not exist yet is checked where prepare() will make it.
    fn upper_and_work(&self) -> Result<(Option<PathBuf>, Option<PathBuf>), OptionsError> {
        let (u, w) = match (&self.upperdir, &self.workdir) {
            (Some(u), Some(w)) => (u, w),
            (Some(u), None) => {
                return Err(bad(format!(
                    "upperdir {} given without workdir",
                    display(u)
                )))
            }
            (None, Some(w)) => {
                return Err(bad(format!(
                    "workdir {} given without upperdir",
                    display(w)
                )))
            }
            (None, None) => return Ok((None, None)),
        };
        let (uc, udev) = existing_dir("upperdir", u)?;
        let (wc, wdev) = if self.auto_workdir && !w.exists() {
            let parent = w.parent().unwrap_or(Path::new("/"));
            let (pc, pdev) = existing_dir("workdir", parent)?;
            (pc.join(w.file_name().unwrap_or_default()), pdev)
        } else {
            existing_dir("workdir", w)?
        };
        if udev != wdev {
            let hint = if self.auto_workdir {
                " (the upper is the root of its filesystem: give workdir=)"
            } else {
                ""
            };
            return Err(bad(format!(
                "workdir {}: not on the same filesystem as upperdir {}{hint}",
                display(w),
                display(u)
            )));
        }
        Ok((Some(uc), Some(wc)))
    }

    /// The mountpoint's checks: a directory outside every branch and not a mount point
    /// yet; or, for `/dev/fd/N`, an open read-write descriptor of /dev/fuse (which the
    /// caller mounted: there is no directory of ours to check). Returns it canonical.
    fn validate_mountpoint(&self, branches: &[(&str, &PathBuf)]) -> Result<PathBuf, OptionsError> {
        if let Some(fd) = self.mount_fd {
            if self.auto_unmount {
                return Err(bad(format!(
                    "option auto_unmount: not with mountpoint /dev/fd/{fd} (the caller mounted it and unmounts it)"
                )));
            }
            crate::sys::check_fuse_fd(fd).map_err(|e| {
                bad(format!(
                    "mountpoint /dev/fd/{fd}: not an open read-write descriptor of /dev/fuse ({e})"
                ))
            })?;
            return Ok(self.mountpoint.clone());
        }
        let (mnt, _) = existing_dir("mountpoint", &self.mountpoint)?;
        for (opt, b) in branches {
            if within(&mnt, b) {
                return Err(bad(format!(
                    "mountpoint {}: inside {opt} {}",
                    mnt.display(),
                    b.display()
                )));
            }
        }
        if is_mount_point(&mnt) {
            return Err(bad(format!(
                "mountpoint {}: busy (already a mount point)",
                mnt.display()
            )));
        }
        Ok(mnt)
    }

    /// Creates what the mount may create before it starts: the automatic workdir.
    pub fn prepare(&self) -> Result<(), OptionsError> {
        if let (true, Some(w)) = (self.auto_workdir, &self.workdir) {
            if !w.is_dir() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(w)
                    .map_err(|e| bad(format!("workdir {}: {e}", w.display())))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{parse_args, Command};

    /// Temporary directory tree removed on drop.
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let d = std::env::temp_dir().join(format!("stratafs-opt-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            for s in ["l1", "l2", "u", "w", "m", "l1/inner", "w/inner"] {
                std::fs::create_dir_all(d.join(s)).expect("mkdir");
            }
            std::fs::write(d.join("file"), b"x").expect("write");
            Tmp(d)
        }
        fn s(&self, sub: &str) -> String {
            self.0.join(sub).display().to_string()
        }
        fn listing(&self) -> Vec<PathBuf> {
            fn walk(d: &Path, out: &mut Vec<PathBuf>) {
                if let Ok(rd) = std::fs::read_dir(d) {
                    for e in rd.flatten() {
                        out.push(e.path());
                        walk(&e.path(), out);
                    }
                }
            }
            let mut v = Vec::new();
            walk(&self.0, &mut v);
            v.sort();
            v
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn validated(args: &[String]) -> Result<Config, String> {
        let mut v = vec!["stratafs".to_string()];
        v.extend_from_slice(args);
        let mut c = match parse_args(v).map_err(|e| e.0)? {
            Command::Mount(c) => *c,
            _ => return Err("not a mount".into()),
        };
        c.validate().map_err(|e| e.0)?;
        Ok(c)
    }

    #[test]
    fn validation_refusals() {
        let t = Tmp::new("val");
        let before = t.listing();
        let o = |s: String| vec!["-o".to_string(), s, t.s("m")];
        let cases: Vec<(Vec<String>, String)> = vec![
            (
                o(format!("lowerdir={}", t.s("nope"))),
                format!("lowerdir {}", t.s("nope")),
            ),
            (
                o(format!("lowerdir={}", t.s("file"))),
                "not a directory".into(),
            ),
            (
                o(format!("lowerdir={},upperdir={}", t.s("l1"), t.s("u"))),
                "without workdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s("nope"),
                    t.s("w")
                )),
                format!("upperdir {}", t.s("nope")),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s("l1/inner"),
                    t.s("w")
                )),
                "overlaps lowerdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1/inner"),
                    t.s("l1"),
                    t.s("w")
                )),
                "overlaps lowerdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s(""),
                    t.s("w")
                )),
                "inside upperdir".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!("lowerdir={}", t.s("l1")),
                    t.s("l1/inner"),
                ],
                "mountpoint".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!(
                        "lowerdir={},upperdir={},workdir={}",
                        t.s("l1"),
                        t.s("u"),
                        t.s("w")
                    ),
                    t.s("u"),
                ],
                "inside upperdir".into(),
            ),
            (
                o(format!("lowerdir={}", t.s("l1")))
                    .into_iter()
                    .take(2)
                    .chain([t.s("nope")])
                    .collect(),
                "mountpoint".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!("lowerdir={}", t.s("l1")),
                    "/proc".into(),
                ],
                "busy".into(),
            ),
        ];
        for (args, want) in cases {
            let e = validated(&args).expect_err("refused");
            assert!(e.contains(&want), "{args:?}: {e} (wanted {want})");
            assert!(!e.contains('\n'));
        }
        // The upper's filesystem root has no sibling for an automatic workdir.
        if std::fs::metadata("/dev/shm").map(|m| m.dev()).ok()
            != std::fs::metadata("/dev").map(|m| m.dev()).ok()
        {
            let e =
                validated(&[format!("/dev/shm=RW:{}", t.s("l1")), t.s("m")]).expect_err("refused");
            assert!(e.contains("give workdir="), "{e}");
        }
        assert_eq!(before, t.listing(), "validation wrote nothing");
    }

    #[test]
    fn validation_makes_paths_canonical_and_prepare_makes_the_workdir() {
        let t = Tmp::new("ok");
        let c = validated(&[
            "-o".into(),
            "cow".into(),
            format!("{}:{}/../l2=RO", t.s("u"), t.s("l1")),
            t.s("m"),
        ])
        .expect("valid");
        let root = std::fs::canonicalize(&t.0).expect("canon");
        assert_eq!(c.upperdir, Some(root.join("u")));
        assert_eq!(c.lowerdirs, vec![root.join("l2")]);
        assert_eq!(c.workdir, Some(root.join("u.stratafs-work")));
        assert!(!root.join("u.stratafs-work").exists());
        c.prepare().expect("prepare");
        assert!(root.join("u.stratafs-work").is_dir());
        // A second time reuses it.
        let mut again = c.clone();
        again.validate().expect("still valid");
        again.prepare().expect("prepare again");
    }

    /// A writable lower is checked as the upper is: existing, overlapping no other branch,
    /// not inside the workdir.
    #[test]
    fn validation_holds_writable_lowers_to_the_uppers_rules() {
        let t = Tmp::new("rwlower");
        let before = t.listing();
        let br = |list: String| vec![t.s("m"), "-o".to_string(), list];
        let cases: Vec<(Vec<String>, String)> = vec![
            (
                br(format!("br={}=ro:{}=rw", t.s("l1"), t.s("nope"))),
                format!("lowerdir {}", t.s("nope")),
            ),
            (
                br(format!("br={}=ro:{}=rw", t.s("l1"), t.s("file"))),
                "not a directory".into(),
            ),
            (
                br(format!("br={}=ro:{}=rw", t.s("l1"), t.s("l1/inner"))),
                format!(
                    "lowerdir {} (rw): overlaps lowerdir {}",
                    t.s("l1/inner"),
                    t.s("l1")
                ),
            ),
            (
                br(format!("br={}=ro:{}=rw", t.s("l1/inner"), t.s("l1"))),
                format!(
                    "lowerdir {} (rw): overlaps lowerdir {}",
                    t.s("l1"),
                    t.s("l1/inner")
                ),
            ),
            (
                br(format!(
                    "br={}=rw:{}=ro:{}=rw",
                    t.s("u"),
                    t.s("l1"),
                    t.s("u")
                )),
                "overlaps lowerdir".into(),
            ),
            (
                br(format!(
                    "br={}=rw:{}=rw,workdir={}",
                    t.s("u"),
                    t.s("w/inner"),
                    t.s("w")
                )),
                format!(
                    "lowerdir {} (rw): inside workdir {}",
                    t.s("w/inner"),
                    t.s("w")
                ),
            ),
            (
                br(format!(
                    "br={}=rw:{}=rw,workdir={}",
                    t.s("u"),
                    t.s("l1"),
                    t.s("l1/inner")
                )),
                "inside lowerdir".into(),
            ),
            (
                vec![
                    t.s("w/inner"),
                    "-o".into(),
                    format!("br={}=ro:{}=rw", t.s("l1"), t.s("w")),
                ],
                format!(
                    "mountpoint {}: inside lowerdir {}",
                    t.s("w/inner"),
                    t.s("w")
                ),
            ),
        ];
        for (args, want) in cases {
            let e = validated(&args).expect_err("refused");
            assert!(e.contains(&want), "{args:?}: {e} (wanted {want})");
            assert!(!e.contains('\n'));
        }
        assert_eq!(before, t.listing(), "validation wrote nothing");
    }

    /// aufs's textbook example, and two writable branches, validate and become canonical.
    #[test]
    fn writable_lowers_validate() {
        let t = Tmp::new("rwok");
        let br = |list: String| vec![t.s("m"), "-o".to_string(), list];
        let root = std::fs::canonicalize(&t.0).expect("canon");
        let c = validated(&br(format!("br={}/../l1=ro:{}=rw", t.s("l2"), t.s("l2"))))
            .expect("the textbook example validates");
        assert_eq!(c.lowerdirs, vec![root.join("l1"), root.join("l2")]);
        assert_eq!((c.upperdir, c.workdir), (None, None));
        let c = validated(&br(format!("br={}=rw:{}=rw", t.s("u"), t.s("l1"))))
            .expect("two writable branches validate");
        assert_eq!(c.upperdir, Some(root.join("u")));
    }
}

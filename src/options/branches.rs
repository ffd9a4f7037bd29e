//! Branch lists in the unionfs-fuse and aufs syntaxes, and the configuration they give:
//! - unionfs-fuse: `stratafs [-o cow] /u=RW:/a=RO:/b MNT` or `-o dirs=/u=RW:/a:/b`; a branch
//!   without a mode is read-only, except the first one with `cow`;
//! - aufs: `-o br=/u=rw:/a=ro:/b` (or `br:/u=rw:…`); `ro`, `rr` and `ro+wh` are read-only;
//!   a branch without a mode is writable if it is the first, read-only otherwise.
//!
//! Both give what `lowerdir=`/`upperdir=` give: one writable top branch, then read-only
//! lowers, highest first.
//!
//! The positional rule (mount.fuse3 runs `stratafs SOURCE MOUNTPOINT -o OPTS`): with two
//! positionals and no `lowerdir=`/`br=`/`dirs=`, the first is a unionfs-fuse branch list
//! when it contains `:` or ends a branch with `=RW`/`=RO`, or when `cow` is given;
//! otherwise it is the source, shown as the fsname.

use std::path::PathBuf;

use super::{bad, last_unescaped, split_escaped, unescape, Config, OptionsError};

/// A branch's access mode as written (`=RW`, `=ro`, …) or not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Rw,
    Ro,
    Unset,
}

fn parse_mode(m: &[u8]) -> Option<Mode> {
    match m.to_ascii_lowercase().as_slice() {
        b"rw" | b"rw+nolwh" => Some(Mode::Rw),
        b"ro" | b"rr" | b"ro+wh" | b"rr+wh" => Some(Mode::Ro),
        _ => None,
    }
}

/// Which branch syntax a branch list came from, for messages and the default modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Syntax {
    /// unionfs-fuse `dirs=` or a positional branch list.
    Unionfs(&'static str),
    /// aufs `br=` / `br:`.
    Aufs,
}

impl Syntax {
    pub(super) fn name(self) -> &'static str {
        match self {
            Syntax::Unionfs(n) => n,
            Syntax::Aufs => "option br=",
        }
    }
}

/// `/u=RW:/a=RO:/b` → branches with their written modes.
pub(super) fn parse_branches(v: &[u8], what: &str) -> Result<Vec<(PathBuf, Mode)>, OptionsError> {
    let mut out = Vec::new();
    for part in split_escaped(v, b':', false) {
        if part.is_empty() {
            return Err(bad(format!("{what} has an empty branch")));
        }
        let (path, mode) = match last_unescaped(&part, b'=') {
            Some(i) => {
                let m = parse_mode(&part[i + 1..]).ok_or_else(|| {
                    bad(format!(
                        "{what}: branch {}: unknown mode {} (expected RW or RO; escape a '=' in a path as \\=)",
                        String::from_utf8_lossy(&part[..i]),
                        String::from_utf8_lossy(&part[i + 1..])
                    ))
                })?;
                (&part[..i], m)
            }
            None => (&part[..], Mode::Unset),
        };
        if path.is_empty() {
            return Err(bad(format!("{what} has an empty branch")));
        }
        out.push((unescape(path), mode));
    }
    Ok(out)
}

/// The positional rule: does this first argument read as a unionfs-fuse branch list?
pub(super) fn looks_like_branches(s: &[u8]) -> bool {
    split_escaped(s, b':', false).len() > 1
        || last_unescaped(s, b'=')
            .map(|i| parse_mode(&s[i + 1..]).is_some())
            .unwrap_or(false)
}

/// A unionfs/aufs branch list → one writable top branch and read-only lowers (`cow`: the
/// unionfs-fuse option was given).
pub(super) fn resolve(
    cfg: &mut Config,
    syntax: Syntax,
    branches: Vec<(PathBuf, Mode)>,
    cow: bool,
) -> Result<(), OptionsError> {
    let what = syntax.name();
    if let Some(u) = &cfg.upperdir {
        return Err(bad(format!(
            "option upperdir={} conflicts with {what}: mark the top branch =RW instead",
            u.display()
        )));
    }
    let writable: Vec<(usize, PathBuf)> = branches
        .iter()
        .enumerate()
        .filter(|(i, (_, m))| match (syntax, m) {
            (_, Mode::Rw) => true,
            (_, Mode::Ro) => false,
            (Syntax::Unionfs(_), Mode::Unset) => *i == 0 && cow,
            (Syntax::Aufs, Mode::Unset) => *i == 0,
        })
        .map(|(i, (p, _))| (i, p.clone()))
        .collect();
    if writable.len() > 1 {
        let names: Vec<String> = writable
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        return Err(bad(format!(
            "{what}: more than one writable branch ({}); stratafs has one writable top branch",
            names.join(", ")
        )));
    }
    let mut paths: Vec<PathBuf> = branches.into_iter().map(|(p, _)| p).collect();
    if let Some((i, p)) = writable.first() {
        if *i != 0 {
            return Err(bad(format!(
                "{what}: writable branch {} must be the first (top) branch",
                p.display()
            )));
        }
        let upper = paths.remove(0);
        if cfg.workdir.is_none() {
            let name = upper.file_name().ok_or_else(|| {
                bad(format!(
                    "{what}: writable branch {}: cannot place a workdir next to it; give workdir=",
                    upper.display()
                ))
            })?;
            let mut w = name.to_os_string();
            w.push(".stratafs-work");
            cfg.workdir = Some(upper.with_file_name(w));
            cfg.auto_workdir = true;
        }
        cfg.upperdir = Some(upper);
    }
    if paths.is_empty() {
        return Err(bad(format!("{what}: needs at least one read-only branch")));
    }
    cfg.lowerdirs = paths;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::options::tests::{cfg, err, p};

    /// The same mount written in each syntax gives the same branches.
    #[test]
    fn three_syntaxes_agree() {
        let all = [
            cfg(&[
                "-o",
                "lowerdir=/l1:/l2,upperdir=/x/u,workdir=/x/u.stratafs-work",
                "/m",
            ]),
            cfg(&["-o", "cow", "/x/u=RW:/l1=RO:/l2", "/m"]),
            cfg(&["/x/u=RW:/l1=RO:/l2=ro", "/m"]),
            cfg(&["-o", "cow", "/x/u:/l1:/l2", "/m"]),
            cfg(&["/m", "-o", "dirs=/x/u=rw:/l1:/l2"]),
            cfg(&["/m", "-o", "br=/x/u=rw:/l1=ro:/l2=rr"]),
            cfg(&["/m", "-o", "br:/x/u:/l1=ro+wh:/l2"]),
            cfg(&[
                "/m",
                "-o",
                "br=/x/u=rw:/l1=ro:/l2=ro,workdir=/x/u.stratafs-work",
            ]),
        ];
        for c in &all {
            assert_eq!(c.lowerdirs, vec![p("/l1"), p("/l2")], "{c:?}");
            assert_eq!(c.upperdir, Some(p("/x/u")), "{c:?}");
            assert_eq!(c.workdir, Some(p("/x/u.stratafs-work")), "{c:?}");
            assert_eq!(c.mountpoint, p("/m"));
            assert!(!c.read_only);
            assert_eq!(c.fsname, "stratafs");
        }
        assert!(all[1].auto_workdir && !all[0].auto_workdir && !all[7].auto_workdir);
    }

    #[test]
    fn unionfs_read_only_branches() {
        // Without cow and without =RW every branch is read-only.
        let c = cfg(&["/a:/b", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a"), p("/b")]);
        assert!(c.upperdir.is_none() && c.read_only && c.workdir.is_none());
        let c = cfg(&["/a=RO", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a")]);
        // A plain SOURCE is a source, not a branch.
        let c = cfg(&["/dev/sda1", "/m", "-o", "lowerdir=/l"]);
        assert_eq!(c.fsname, "/dev/sda1");
        // With explicit branches a colon in the source is just a name.
        let c = cfg(&["a:b", "/m", "-o", "lowerdir=/l"]);
        assert_eq!(c.fsname, "a:b");
        assert_eq!(c.lowerdirs, vec![p("/l")]);
        // An escaped '=' belongs to the path.
        let c = cfg(&[r"/a\=b=RO:/c", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a=b"), p("/c")]);
    }

    #[test]
    fn branch_list_refusals_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["/u=RW:/a=RW", "/m"], "more than one writable"),
            (&["-o", "cow", "/u:/a=RW", "/m"], "more than one writable"),
            (&["/m", "-o", "br=/u=rw:/a=rw"], "more than one writable"),
            (&["/m", "-o", "br=/u:/a=rw"], "more than one writable"),
            (&["/a=RO:/u=RW", "/m"], "must be the first"),
            (&["/m", "-o", "dirs=/a:/u=RW"], "must be the first"),
            (&["/u=RW", "/m"], "at least one read-only"),
            (&["/m", "-o", "br=/u=rw"], "at least one read-only"),
            (&["/u=RX:/a", "/m"], "unknown mode"),
            (&["/u=RW::/a", "/m"], "empty branch"),
            (&["/m", "-o", "br=/u=rw:/a,dirs=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,lowerdir=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,upperdir=/v"], "upperdir"),
            (&["/m", "-o", "br=/=rw:/a"], "workdir="),
        ];
        for (args, word) in cases {
            let e = err(args);
            assert!(e.contains(word), "{args:?}: {e}");
        }
    }
}

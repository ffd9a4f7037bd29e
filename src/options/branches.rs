//! Branch lists in the unionfs-fuse and aufs syntaxes, and the configuration they give.
//! Each branch may carry a mode (case-insensitive), the aufs(5) branch permissions:
//!
//! | written              | aufs `br=`      | unionfs-fuse `dirs=`, positional |
//! |----------------------|-----------------|----------------------------------|
//! | `rw`, `rw+nolwh`     | `Mode::Rw`      | `Mode::Rw`                       |
//! | `ro`                 | `Mode::Ro`      | `Mode::RoWh` (as before #22)     |
//! | `ro+wh`, `rr+wh`     | `Mode::RoWh`    | `Mode::RoWh`                     |
//! | `rr`                 | `Mode::Rr`      | `Mode::Rr`                       |
//! | none, first branch   | `Mode::Rw`      | `Mode::Rw` with `cow`, else `RoWh` |
//! | none, other branches | `Mode::Ro`      | `Mode::RoWh`                     |
//!
//! aufs's `ro` looks up no whiteouts, and an aufs branch without a mode is `ro` unless it
//! is the first: so an unset aufs lower is `Mode::Ro` (whiteouts on it are ignored; write
//! `=ro+wh` to honour them). unionfs-fuse's `RO` keeps meaning what it meant (whiteouts
//! honoured, as on every `lowerdir=`).
//!
//! Writable branches may be anywhere and several (aufs's branch model). The configuration:
//! a writable *first* branch is `upperdir` (with the automatic workdir, `UPPER.stratafs-work`
//! unless `workdir=` is given); every other branch, writable or not, is a lower with its
//! mode in `lower_modes` (always as long as `lowerdirs`). So aufs's textbook
//! `br=/d1=ro:/d2=rw` has no upperdir, lowers `[d1, d2]`, modes `[Ro, Rw]`. A lone writable
//! branch with nothing below is refused (a mount needs a lower). aufs-syntax mounts write
//! whiteouts in aufs's format (`Config::aufs_whiteouts`).
//!
//! The positional rule (mount.fuse3 runs `stratafs SOURCE MOUNTPOINT -o OPTS`): with two
//! positionals and no `lowerdir=`/`br=`/`dirs=`, the first is a unionfs-fuse branch list
//! when it contains `:` or ends a branch with a mode (`=RW`, `=RO`, …), or when `cow` is
//! given; otherwise it is the source, shown as the fsname.

use std::path::PathBuf;

use super::{bad, last_unescaped, split_escaped, unescape, Config, OptionsError};
use crate::types::Mode;

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

    /// The mode written after a branch's `=` (case-insensitive), in this syntax.
    fn mode(self, m: &[u8]) -> Option<Mode> {
        match m.to_ascii_lowercase().as_slice() {
            b"rw" | b"rw+nolwh" => Some(Mode::Rw),
            b"ro" if self == Syntax::Aufs => Some(Mode::Ro),
            b"ro" | b"ro+wh" | b"rr+wh" => Some(Mode::RoWh),
            b"rr" => Some(Mode::Rr),
            _ => None,
        }
    }

    /// The mode of branch `i` (0: the top) written without one.
    fn default_mode(self, i: usize, cow: bool) -> Mode {
        match self {
            Syntax::Aufs if i == 0 => Mode::Rw,
            Syntax::Aufs => Mode::Ro,
            Syntax::Unionfs(_) if i == 0 && cow => Mode::Rw,
            Syntax::Unionfs(_) => Mode::RoWh,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Syntax::Aufs => "rw, ro, rr, ro+wh, rr+wh or rw+nolwh",
            Syntax::Unionfs(_) => "RW or RO",
        }
    }
}

/// A branch as written: its path, and its mode if one was written.
pub(super) type Branch = (PathBuf, Option<Mode>);

/// `/u=RW:/a=RO:/b` → branches with their written modes.
pub(super) fn parse_branches(v: &[u8], syntax: Syntax) -> Result<Vec<Branch>, OptionsError> {
    let what = syntax.name();
    let mut out = Vec::new();
    for part in split_escaped(v, b':', false) {
        let (path, mode) = match last_unescaped(&part, b'=') {
            Some(i) => {
                let m = syntax.mode(&part[i + 1..]).ok_or_else(|| {
                    bad(format!(
                        "{what}: branch {}: unknown mode {} (expected {}; escape a '=' in a path as \\=)",
                        String::from_utf8_lossy(&part[..i]),
                        String::from_utf8_lossy(&part[i + 1..]),
                        syntax.expected()
                    ))
                })?;
                (&part[..i], Some(m))
            }
            None => (&part[..], None),
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
            .map(|i| Syntax::Aufs.mode(&s[i + 1..]).is_some())
            .unwrap_or(false)
}

/// A unionfs/aufs branch list → the configuration's branches (`cow`: the unionfs-fuse
/// option was given): a writable top branch becomes the upper, every other branch a lower
/// with its mode.
pub(super) fn resolve(
    cfg: &mut Config,
    syntax: Syntax,
    branches: Vec<Branch>,
    cow: bool,
) -> Result<(), OptionsError> {
    let what = syntax.name();
    if let Some(u) = &cfg.upperdir {
        return Err(bad(format!(
            "option upperdir={} conflicts with {what}: mark the top branch =RW instead",
            u.display()
        )));
    }
    let mut branches: Vec<(PathBuf, Mode)> = branches
        .into_iter()
        .enumerate()
        .map(|(i, (p, m))| (p, m.unwrap_or_else(|| syntax.default_mode(i, cow))))
        .collect();
    if branches.first().is_some_and(|(_, m)| *m == Mode::Rw) {
        let (upper, _) = branches.remove(0);
        if branches.is_empty() {
            return Err(bad(format!(
                "{what}: the writable branch {} is alone: give at least one read-only branch below it",
                upper.display()
            )));
        }
        set_upper(cfg, syntax, what, upper)?;
    }
    (cfg.lowerdirs, cfg.lower_modes) = branches.into_iter().unzip();
    cfg.aufs_whiteouts = syntax == Syntax::Aufs;
    Ok(())
}

/// The writable top branch → `upperdir`, and the automatic workdir unless `workdir=` was
/// given: with aufs's syntax inside the branch, `UPPER/.wh..wh.orph` (where aufs keeps its
/// own work files; hidden, as every `.wh.` name is), which needs nothing outside the
/// branch (a pool's disk mounted at the branch, a rootless user who may not write next to
/// it) and is where every writable branch below keeps its staging too (`layers.rs`); with
/// unionfs-fuse's, the sibling `UPPER.stratafs-work`.
fn set_upper(
    cfg: &mut Config,
    syntax: Syntax,
    what: &str,
    upper: PathBuf,
) -> Result<(), OptionsError> {
    if cfg.workdir.is_none() {
        if syntax == Syntax::Aufs {
            cfg.workdir = Some(upper.join(super::validate::IN_BRANCH_WORKDIR));
            cfg.auto_workdir = true;
            cfg.upperdir = Some(upper);
            return Ok(());
        }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::options::tests::{cfg, err, p};
    use crate::types::Mode;

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
        assert!(all[1].auto_workdir && !all[0].auto_workdir && !all[5].auto_workdir);
        // aufs's syntax keeps the automatic workdir inside the writable branch.
        for c in [
            cfg(&["/m", "-o", "br=/x/u=rw:/l1=ro:/l2=rr"]),
            cfg(&["/m", "-o", "br:/x/u:/l1=ro+wh:/l2"]),
        ] {
            assert_eq!(c.lowerdirs, vec![p("/l1"), p("/l2")], "{c:?}");
            assert_eq!(c.upperdir, Some(p("/x/u")), "{c:?}");
            assert_eq!(c.workdir, Some(p("/x/u/.wh..wh.orph")), "{c:?}");
            assert!(c.auto_workdir && !c.read_only);
        }
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

    /// aufs(5)'s textbook example: a read-only branch above a writable one.
    #[test]
    fn textbook_aufs_example() {
        let c = cfg(&["/m", "-o", "br=/d1=ro:/d2=rw"]);
        assert_eq!(c.upperdir, None);
        assert_eq!(c.workdir, None);
        assert_eq!(c.lowerdirs, vec![p("/d1"), p("/d2")]);
        assert_eq!(c.lower_modes, vec![Mode::Ro, Mode::Rw]);
        assert!(!c.read_only && c.writable() && c.aufs_whiteouts);
        assert_eq!((c.lower_mode(0), c.lower_mode(1)), (Mode::Ro, Mode::Rw));
    }

    /// Writable branches anywhere and several: only a writable first branch is the upper.
    #[test]
    fn several_writable_branches() {
        let c = cfg(&["/m", "-o", "br=/x/a=rw:/b=rw:/c=RW"]);
        assert_eq!(c.upperdir, Some(p("/x/a")));
        assert_eq!(c.workdir, Some(p("/x/a/.wh..wh.orph")));
        assert!(c.auto_workdir);
        assert_eq!(c.lowerdirs, vec![p("/b"), p("/c")]);
        assert_eq!(c.lower_modes, vec![Mode::Rw, Mode::Rw]);
        let cases: &[(&[&str], Option<&str>, &[Mode])] = &[
            (
                &["/x/u=RW:/a=RW:/b", "/m"],
                Some("/x/u"),
                &[Mode::Rw, Mode::RoWh],
            ),
            (
                &["-o", "cow", "/x/u:/a=RW", "/m"],
                Some("/x/u"),
                &[Mode::Rw],
            ),
            (&["/m", "-o", "br=/x/u:/a=rw"], Some("/x/u"), &[Mode::Rw]),
            (
                &["/m", "-o", "br=/x/u=rw:/a=rr:/b=rw+nolwh"],
                Some("/x/u"),
                &[Mode::Rr, Mode::Rw],
            ),
            (&["/a=RO:/u=RW", "/m"], None, &[Mode::RoWh, Mode::Rw]),
            (
                &["/m", "-o", "dirs=/a:/u=RW"],
                None,
                &[Mode::RoWh, Mode::Rw],
            ),
            (
                &["/m", "-o", "br=/a=rr:/u=rw:/b=ro+wh"],
                None,
                &[Mode::Rr, Mode::Rw, Mode::RoWh],
            ),
        ];
        for (args, upper, modes) in cases {
            let c = cfg(args);
            assert_eq!(c.upperdir, upper.map(p), "{args:?}");
            assert_eq!(c.lower_modes, *modes, "{args:?}");
            assert_eq!(c.lowerdirs.len(), modes.len(), "{args:?}");
            assert!(!c.read_only && c.writable(), "{args:?}");
            assert_eq!(c.workdir.is_some(), upper.is_some(), "{args:?}");
        }
    }

    /// Each written mode, in either case, in each syntax: `ro` alone differs (aufs looks up
    /// no whiteouts on `ro`; unionfs-fuse's `RO` honours them as before).
    #[test]
    fn modes_in_each_syntax() {
        let cases = [
            ("rw", Mode::Rw, Mode::Rw),
            ("RW", Mode::Rw, Mode::Rw),
            ("rw+nolwh", Mode::Rw, Mode::Rw),
            ("RW+NOLWH", Mode::Rw, Mode::Rw),
            ("ro", Mode::Ro, Mode::RoWh),
            ("RO", Mode::Ro, Mode::RoWh),
            ("ro+wh", Mode::RoWh, Mode::RoWh),
            ("Ro+Wh", Mode::RoWh, Mode::RoWh),
            ("rr", Mode::Rr, Mode::Rr),
            ("RR", Mode::Rr, Mode::Rr),
            ("rr+wh", Mode::RoWh, Mode::RoWh),
        ];
        for (m, aufs, unionfs) in cases {
            let c = cfg(&["/m", "-o", &format!("br=/x/u=rw:/a={m}")]);
            assert_eq!(c.lower_modes, [aufs], "br= {m}");
            assert!(c.aufs_whiteouts);
            let c = cfg(&["/m", "-o", &format!("dirs=/x/u=rw:/a={m}")]);
            assert_eq!(c.lower_modes, [unionfs], "dirs= {m}");
            assert!(!c.aufs_whiteouts);
            let c = cfg(&[&format!("/x/u=RW:/a={m}"), "/m"]);
            assert_eq!(c.lower_modes, [unionfs], "branch list {m}");
        }
    }

    /// Branches written without a mode: aufs's first is rw, the others ro; unionfs-fuse's
    /// are RO (whiteouts honoured), the first rw with cow.
    #[test]
    fn unset_modes() {
        let c = cfg(&["/m", "-o", "br=/x/u:/a:/b=ro+wh"]);
        assert_eq!(c.upperdir, Some(p("/x/u")));
        assert_eq!(c.lower_modes, [Mode::Ro, Mode::RoWh]);
        let c = cfg(&["/m", "-o", "br=/a=rr:/b"]);
        assert_eq!(c.upperdir, None);
        assert_eq!(c.lower_modes, [Mode::Rr, Mode::Ro]);
        assert!(c.read_only && !c.writable());
        let c = cfg(&["/a:/b", "/m"]);
        assert_eq!(c.lower_modes, [Mode::RoWh, Mode::RoWh]);
        assert!(c.read_only && !c.writable() && !c.aufs_whiteouts);
        let c = cfg(&["-o", "cow", "/x/u:/a", "/m"]);
        assert_eq!(c.upperdir, Some(p("/x/u")));
        assert_eq!(c.lower_modes, [Mode::RoWh]);
    }

    /// read_only only with `ro` or when no branch is writable; `lowerdir=` lowers are all
    /// `RoWh`; aufs whiteouts only for `br=`.
    #[test]
    fn read_only_and_kernel_syntax_modes() {
        let c = cfg(&["/m", "-o", "br=/a=ro:/b=rw,ro"]);
        assert!(c.read_only && !c.writable());
        let c = cfg(&["/m", "-o", "br=/a=ro:/b=ro"]);
        assert!(c.read_only && !c.writable());
        let c = cfg(&["-o", "lowerdir=/a:/b:/c,upperdir=/u,workdir=/w", "/m"]);
        assert_eq!(c.lower_modes, [Mode::RoWh; 3]);
        assert!(!c.read_only && c.writable() && !c.aufs_whiteouts);
        let c = cfg(&["-o", "lowerdir=/a", "/m"]);
        assert_eq!(c.lower_modes, [Mode::RoWh]);
        assert!(c.read_only && !c.writable());
        let c = cfg(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,ro", "/m"]);
        assert!(c.read_only && !c.writable());
    }

    /// index=on, nfs_export=on and metacopy=on keep the kernel's one-upper shape.
    #[test]
    fn kernel_shape_options_refuse_writable_lowers() {
        for o in ["index=on", "nfs_export=on", "metacopy=on"] {
            for args in [
                vec!["/m", "-o", "br=/a=ro:/b=rw", "-o", o],
                vec!["/m", "-o", o, "-o", "br=/u=rw:/b=rw"],
                vec!["-o", o, "/u=RW:/a=RW", "/m"],
            ] {
                let e = err(&args);
                assert!(
                    e.contains(o) && e.contains("one writable top branch"),
                    "{e}"
                );
                assert!(e.contains("/b") || e.contains("/a"), "{e}");
            }
            assert!(cfg(&["/m", "-o", &format!("br=/x/u=rw:/a=ro,{o}")]).writable());
        }
        assert!(!cfg(&["/m", "-o", "br=/a=ro:/b=rw,index=off,metacopy=off"]).index);
    }

    #[test]
    fn branch_list_refusals_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["/u=RW", "/m"], "at least one read-only"),
            (&["/m", "-o", "br=/u=rw"], "at least one read-only"),
            (&["/m", "-o", "br=/u"], "at least one read-only"),
            (&["/u=RX:/a", "/m"], "unknown mode RX (expected RW or RO"),
            (
                &["/m", "-o", "br=/u=rw:/a=rx"],
                "expected rw, ro, rr, ro+wh",
            ),
            (&["/m", "-o", "br=/u=rw:/a=ro+nolwh"], "br="),
            (&["/u=RW::/a", "/m"], "empty branch"),
            (&["/m", "-o", "br=/u=rw:/a,dirs=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,lowerdir=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,upperdir=/v"], "upperdir"),
            (&["/m", "-o", "dirs=/=rw:/a"], "workdir="),
        ];
        for (args, word) in cases {
            let e = err(args);
            assert!(e.contains(word), "{args:?}: {e}");
        }
    }
}

//! Remounts as the command line gives them: the remount form (`[SOURCE] MOUNTPOINT -o
//! remount,…`, what mount.fuse3 runs for `mount -o remount`) and the check that a remount's
//! mount-time options leave the running configuration as it is ([`remount_unchanged`]; a
//! remount changes only ro/rw, and the branches through aufs's operations, remount.rs).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::parse::Parser;
use super::{bad, split_options, Config, OptionsError};

/// A remount asked on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemountArgs {
    pub mountpoint: PathBuf,
    /// Every `-o` item but `remount` itself.
    pub options: Vec<String>,
}

/// A remount's mount-time options (what mount(8) takes from an fstab line: `lowerdir=`,
/// `upperdir=`, `volatile`, …) checked against the configuration the daemon runs with:
/// each must leave it as it is (a remount changes only ro/rw). Branch paths are compared
/// after resolving them as at mount time; a `br=`/`dirs=` list's branch modes too. The
/// policies `create=`, `cpup=` and `sum`/`nosum` are mount-time options like the others:
/// the daemon places entries and answers statfs by the values it started with, so a
/// remount may repeat them but not change them. One line naming the first option that
/// differs.
pub fn remount_unchanged(running: &Config, items: &[String]) -> Result<(), OptionsError> {
    fn canon(p: &Path) -> PathBuf {
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    }
    let branches = |c: &Config| {
        (
            c.lowerdirs.iter().map(|p| canon(p)).collect::<Vec<_>>(),
            c.upperdir.as_deref().map(canon),
            c.workdir.as_deref().map(canon),
        )
    };
    let want = branches(running);
    let differs = |o: &str| {
        Err(bad(format!(
            "option {o} differs from the running mount: a stratafs remount changes only ro/rw"
        )))
    };
    for item in items {
        let b = item.as_bytes();
        let key = item.split('=').next().unwrap_or("");
        if key == "cow" {
            continue; // a branch-list reading rule; no effect on a mounted list
        }
        if matches!(key, "br" | "dirs") || b.starts_with(b"br:") {
            // A whole branch list: resolve it as at mount time, then compare.
            let mut q = Parser::new(Config {
                workdir: (!running.auto_workdir)
                    .then(|| running.workdir.clone())
                    .flatten(),
                ..Config::default()
            });
            q.apply(b)?;
            q.resolve_branches()?;
            if branches(&q.cfg) != want || q.cfg.lower_modes != running.lower_modes {
                return differs(item);
            }
            continue;
        }
        let mut p = Parser::new(running.clone());
        p.apply(b)?;
        let mut got = p.cfg;
        if matches!(key, "lowerdir" | "upperdir" | "workdir") {
            if branches(&got) != want {
                return differs(item);
            }
            continue;
        }
        got.ignored.clone_from(&running.ignored);
        if format!("{got:?}") != format!("{running:?}") {
            return differs(item);
        }
    }
    Ok(())
}

/// `[SOURCE] MOUNTPOINT -o …remount…`: the remount form (what mount.fuse3 runs for
/// `mount -o remount,…`). `None` when no `-o` item is `remount`.
pub(super) fn parse_remount(args: &[OsString]) -> Result<Option<RemountArgs>, OptionsError> {
    let mut items: Vec<String> = Vec::new();
    let mut positional = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        let opts = if b == b"-o" {
            match it.next() {
                Some(v) => v.as_bytes(),
                None => return Ok(None), // the mount parser reports it
            }
        } else if let Some(v) = b.strip_prefix(b"-o") {
            v
        } else {
            if !b.starts_with(b"-") {
                positional.push(a.clone());
            }
            continue;
        };
        for i in split_options(opts) {
            items.push(String::from_utf8_lossy(&i).into_owned());
        }
    }
    if !items.iter().any(|i| i == "remount") {
        return Ok(None);
    }
    let mountpoint = match positional.len() {
        1 | 2 => PathBuf::from(positional.pop().unwrap_or_default()),
        0 => return Err(bad("remount: missing mountpoint")),
        _ => {
            return Err(bad(
                "remount: too many arguments (give [SOURCE] MOUNTPOINT)",
            ))
        }
    };
    Ok(Some(RemountArgs {
        mountpoint,
        options: items.into_iter().filter(|i| i != "remount").collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::tests::{cfg, p};
    use crate::options::{parse_args, Command};

    #[test]
    fn remount_checks_mount_time_options_against_the_running_config() {
        let running = cfg(&[
            "-o",
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,volatile,threads=3",
            "/m",
        ]);
        let ok = |o: &[&str]| {
            let v: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            remount_unchanged(&running, &v)
        };
        assert_eq!(
            ok(&["lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"]),
            Ok(())
        );
        assert_eq!(
            ok(&["volatile", "threads=3", "context=x", "fsync=0"]),
            Ok(())
        );
        for bad in [
            "lowerdir=/l1",
            "upperdir=/v",
            "workdir=/w2",
            "threads=4",
            "metacopy=on",
            "fsync=1",
            "br=/u=rw:/l2=ro",
        ] {
            let e = ok(&[bad]).expect_err(bad).0;
            assert!(e.contains(bad) && e.contains("only ro/rw"), "{bad}: {e}");
        }
        assert!(ok(&["bogus"])
            .expect_err("bogus")
            .0
            .contains("unknown option"));
        let running = cfg(&["/m", "-o", "br=/x/u=rw:/l1=ro:/l2"]);
        assert_eq!(
            remount_unchanged(&running, &["br=/x/u=rw:/l1=ro:/l2=ro".to_string()]),
            Ok(())
        );
    }

    #[test]
    fn remount_form() {
        let r = |a: &[&str]| {
            let mut v = vec!["stratafs"];
            v.extend_from_slice(a);
            match parse_args(v).expect("parses") {
                Command::Remount(r) => r,
                other => panic!("{other:?}"),
            }
        };
        let got = r(&[
            "stratafs",
            "/m",
            "-o",
            "ro,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,dev,suid",
        ]);
        assert_eq!(got.mountpoint, p("/m"));
        assert_eq!(got.options[0], "ro");
        assert!(!got.options.iter().any(|o| o == "remount"));
        assert_eq!(r(&["-o", "remount,rw", "/m"]).options, ["rw"]);
        assert_eq!(r(&["-oremount", "-o", "ro", "/m"]).options, ["ro"]);
        assert!(parse_args(["s", "-o", "remount,ro"]).is_err());
    }

    /// A branch list's modes and the policies (create=, cpup=, sum) are mount-time
    /// options: a remount may repeat them, not change them.
    #[test]
    fn remount_keeps_modes_and_policies() {
        let running = cfg(&[
            "/m",
            "-o",
            "br=/x/u=rw:/l1=ro:/l2=rw,create=mfs:10,cpup=bu,sum",
        ]);
        let ok = |o: &[&str]| {
            let v: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            remount_unchanged(&running, &v)
        };
        assert_eq!(
            ok(&[
                "br=/x/u=RW:/l1:/l2=rw+nolwh",
                "create=most-free-space:10",
                "cpup=bottom-up",
                "sum"
            ]),
            Ok(())
        );
        for bad in [
            "br=/x/u=rw:/l1=ro:/l2=ro",
            "br=/x/u=rw:/l1=ro+wh:/l2=rw",
            "dirs=/x/u=RW:/l1=RO:/l2=RW",
            "create=mfs",
            "create=tdp",
            "cpup=tdp",
            "nosum",
        ] {
            let e = ok(&[bad]).expect_err(bad).0;
            assert!(e.contains(bad) && e.contains("only ro/rw"), "{bad}: {e}");
        }
        let running = cfg(&["-o", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w", "/m"]);
        let v = |o: &str| vec![o.to_string()];
        assert_eq!(remount_unchanged(&running, &v("create=tdp")), Ok(()));
        assert_eq!(remount_unchanged(&running, &v("nosum")), Ok(()));
        assert!(remount_unchanged(&running, &v("create=rr")).is_err());
    }
}

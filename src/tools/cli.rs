//! Command lines of the layer tools. A subcommand is recognised only as the *first*
//! argument and only by its exact name (`check`, `export`, `merge`); every mount syntax
//! starts otherwise (`-o …`, a mount point, or mount.fuse3's `SOURCE MOUNTPOINT`). A mount
//! point literally named like a subcommand is mounted as `./check`, or with the options
//! first (`stratafs -o … check`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::tools::check::{self, CheckArgs};
use crate::tools::export::{self, ExportArgs};
use crate::tools::merge::{self, MergeArgs};

pub const SUBCOMMANDS: [&str; 3] = ["check", "export", "merge"];

const CHECK_USAGE: &str =
    "usage: stratafs check UPPER [--workdir W] [--lower DIR]... [--lowerdir=L1:L2...] [--repair]
  Reports what is wrong in an upper layer (left-over staging files in W/work, whiteouts and
  opaque markers that hide nothing, invalid markers, bad redirects, metacopy files without
  data, missing impure markers). --lower (repeatable, highest first) or --lowerdir= name the
  lowers; without them only what the upper alone shows is judged. --repair fixes what is
  safe (the merged view stays the same). Exit status: 0 clean (or all repaired), 1 problems
  left, 2 the check could not run.
";

const EXPORT_USAGE: &str = "usage: stratafs export UPPER [LOWER...] -o FILE|-
  Writes the upper layer as an OCI image layer tar: whiteouts as .wh.NAME, opaque
  directories with .wh..wh..opq, redirected directories in full with a whiteout of the old
  name, metacopy data from the lowers (highest first), hard links, xattrs and file
  capabilities as PAX SCHILY.xattr records; never overlay.* markers. -o - writes to stdout.
";

const MERGE_USAGE: &str = "usage: stratafs merge UPPER LOWER [--workdir W]
  Folds UPPER into the LOWER directly below it (whiteouts as deletions, opaque directories
  as replacements, redirects as renames, the rest copied), each entry in one rename, so
  that LOWER alone shows what the stack showed. Refused while UPPER, LOWER or W serves a
  mount, and while stratafs check finds a problem in UPPER against LOWER.
";

/// Runs the subcommand named by the first argument, if it is one: `Some(exit status)`.
pub fn dispatch(args: &[OsString]) -> Option<u8> {
    let sub = args.get(1)?.to_str()?;
    if !SUBCOMMANDS.contains(&sub) {
        return None;
    }
    let rest: Vec<String> = args[2..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Some(match sub {
        "check" => run_check(&rest),
        "export" => run_export(&rest),
        "merge" => run_merge(&rest),
        _ => 2,
    })
}

fn usage_error(usage: &str, msg: &str) -> u8 {
    eprintln!("stratafs: {msg}");
    eprint!("{usage}");
    2
}

/// `--key VALUE` or `--key=VALUE`.
fn value<'a>(
    arg: &'a str,
    key: &str,
    it: &mut impl Iterator<Item = &'a String>,
) -> Option<Result<String, String>> {
    if arg == key {
        return Some(it.next().cloned().ok_or(format!("{key} needs a value")));
    }
    arg.strip_prefix(key)
        .and_then(|r| r.strip_prefix('='))
        .map(|v| Ok(v.to_string()))
}

fn parse_check(args: &[String]) -> Result<Option<CheckArgs>, String> {
    let mut a = CheckArgs::default();
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--repair" {
            a.repair = true;
        } else if let Some(v) = value(arg, "--workdir", &mut it) {
            a.workdir = Some(PathBuf::from(v?));
        } else if let Some(v) = value(arg, "--lower", &mut it) {
            a.lowers.push(PathBuf::from(v?));
        } else if let Some(v) = value(arg, "--lowerdir", &mut it) {
            a.lowers
                .extend(crate::options::split_lowerdirs(v?.as_bytes()));
        } else if arg.starts_with('-') {
            return Err(format!("check: unknown argument {arg}"));
        } else {
            pos.push(arg.clone());
        }
    }
    match pos.as_slice() {
        [u] => a.upper = PathBuf::from(u),
        [] => return Err("check: missing UPPER".into()),
        _ => return Err("check: one UPPER only (name lowers with --lower)".into()),
    }
    Ok(Some(a))
}

fn run_check(args: &[String]) -> u8 {
    let a = match parse_check(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{CHECK_USAGE}");
            return 0;
        }
        Err(e) => return usage_error(CHECK_USAGE, &e),
    };
    match check::run(&a) {
        Ok(r) => {
            for l in r.lines() {
                println!("{l}");
            }
            u8::from(r.remaining() > 0)
        }
        Err(e) => {
            eprintln!("stratafs: check: {e}");
            2
        }
    }
}

fn parse_export(args: &[String]) -> Result<Option<ExportArgs>, String> {
    let mut a = ExportArgs::default();
    let mut pos = Vec::new();
    let mut output = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if let Some(v) = value(arg, "-o", &mut it).or_else(|| value(arg, "--output", &mut it)) {
            output = Some(v?);
        } else if let Some(v) = value(arg, "--lowerdir", &mut it) {
            a.lowers
                .extend(crate::options::split_lowerdirs(v?.as_bytes()));
        } else if arg.starts_with('-') {
            return Err(format!("export: unknown argument {arg}"));
        } else {
            pos.push(PathBuf::from(arg));
        }
    }
    let Some(out) = output else {
        return Err("export: -o FILE (or -o - for standard output) is required".into());
    };
    a.output = (out != "-").then(|| PathBuf::from(out));
    if pos.is_empty() {
        return Err("export: missing UPPER".into());
    }
    a.upper = pos.remove(0);
    let mut lowers = pos;
    lowers.append(&mut a.lowers);
    a.lowers = lowers;
    Ok(Some(a))
}

fn run_export(args: &[String]) -> u8 {
    let a = match parse_export(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{EXPORT_USAGE}");
            return 0;
        }
        Err(e) => return usage_error(EXPORT_USAGE, &e),
    };
    match export::run(&a) {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("stratafs: export: {w}");
            }
            0
        }
        Err(e) => {
            if let Some(p) = &a.output {
                let _ = std::fs::remove_file(p);
            }
            eprintln!("stratafs: export: {e}");
            1
        }
    }
}

fn run_merge(args: &[String]) -> u8 {
    let mut a = MergeArgs::default();
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            print!("{MERGE_USAGE}");
            return 0;
        }
        match value(arg, "--workdir", &mut it) {
            Some(Ok(v)) => a.workdir = Some(PathBuf::from(v)),
            Some(Err(e)) => return usage_error(MERGE_USAGE, &e),
            None if arg.starts_with('-') => {
                return usage_error(MERGE_USAGE, &format!("merge: unknown argument {arg}"))
            }
            None => pos.push(PathBuf::from(arg)),
        }
    }
    let [u, l] = <[PathBuf; 2]>::try_from(pos).unwrap_or_default();
    if u.as_os_str().is_empty() || l.as_os_str().is_empty() {
        return usage_error(MERGE_USAGE, "merge: give UPPER and LOWER");
    }
    (a.upper, a.lower) = (u, l);
    match merge::run(&a) {
        Ok(s) => {
            println!(
                "merged: {} copied, {} deleted, {} moved",
                s.copied, s.deleted, s.moved
            );
            0
        }
        Err(e) => {
            eprintln!("stratafs: merge: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_a_first_argument_names_a_tool() {
        // Mount syntaxes, with a mount point or source named like a tool.
        for mount in [
            &["stratafs", "-o", "lowerdir=/l", "check"][..],
            &["stratafs", "./check", "-o", "br=/u=rw:/l=ro"],
            &["stratafs", "stratafs", "check", "-o", "lowerdir=/l"],
            &["stratafs", "/mnt", "-o", "br=/u=rw:/l=ro"],
            &["stratafs"],
            &["stratafs", "checks"],
        ] {
            assert_eq!(dispatch(&os(mount)), None, "{mount:?}");
        }
        assert_eq!(dispatch(&os(&["stratafs", "check", "--help"])), Some(0));
        assert_eq!(dispatch(&os(&["stratafs", "merge", "--bogus"])), Some(2));
        assert_eq!(
            dispatch(&os(&["stratafs", "export", "/u"])),
            Some(2),
            "no -o"
        );
    }

    #[test]
    fn tool_arguments() {
        let a = parse_check(
            &[
                "/u",
                "--lower",
                "/a",
                "--lowerdir=/b:/c",
                "--workdir=/w",
                "--repair",
            ]
            .map(String::from),
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.lowers, [PathBuf::from("/a"), "/b".into(), "/c".into()]);
        assert_eq!(a.workdir, Some(PathBuf::from("/w")));
        assert!(a.repair);
        assert!(parse_check(&["/u".into(), "/v".into()]).is_err());
        let e = parse_export(&["/u", "/l1", "-o", "-", "/l2"].map(String::from))
            .unwrap()
            .unwrap();
        assert_eq!((e.output, e.lowers.len()), (None, 2));
    }
}

//! A copied-up file keeps its inode number across a remount, as on the kernel overlayfs
//! (issue #25): copy-up records the lower's file handle in `overlay.origin`, and a later
//! mount decodes it to show the origin's number whatever the upper entry's name is.
//!
//! Differential against `mount -t overlay` (default options, and `redirect_dir=on`), each
//! over its own copy of the same layers: files copied up by a rename in place, a move
//! into a new directory and into a lower directory, a hard link into another directory,
//! a write, a chmod (then a rename). Every entry's st_ino is labelled by the real object
//! whose number it shows (a lower file of the layers, by its original name, or the upper
//! file), with whether its d_ino equals its st_ino; the labels are taken while mounted,
//! after a remount by the same implementation, and with the other implementation
//! mounting that upper (both ways), and must all be the kernel's own. Runs as root.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use common::{copy_tree, sh_script, Kernel, Scratch, Stack, Strata};

/// Lower files copied up by `OPS`, and a lower directory.
const LOWER_FILES: &[&str] = &[
    "renamed",
    "moved",
    "moved_low",
    "linked",
    "written",
    "chmodded",
    "kept",
];

const OPS: &str = r#"cd "$1"
mv renamed renamed.new
mkdir nd && mv moved nd/moved.new
mv moved_low ld/moved_low.new
ln linked ld/linked.2
echo more >> written
chmod 600 chmodded && mv chmodded chmodded.new
"#;

const ENTRIES: &[&str] = &[
    "renamed.new",
    "nd/moved.new",
    "ld/moved_low.new",
    "linked",
    "ld/linked.2",
    "written",
    "chmodded.new",
    "kept",
    "ld/inner",
];

fn make_lower(l: &Path) {
    for f in LOWER_FILES {
        fs::write(l.join(f), format!("{f}\n")).unwrap();
    }
    fs::create_dir(l.join("ld")).unwrap();
    fs::write(l.join("ld/inner"), b"inner\n").unwrap();
}

/// Real inode number → which lower file (by original name) holds it.
fn lower_inos(l: &Path) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    for f in LOWER_FILES.iter().copied().chain(["ld/inner"]) {
        m.insert(
            fs::symlink_metadata(l.join(f)).unwrap().ino(),
            f.to_string(),
        );
    }
    m
}

/// The number shown, labelled by the real object it is (stratafs puts a filesystem
/// index in the top byte: compared on the low 56 bits).
fn label(shown: u64, lower: &BTreeMap<u64, String>, upper_real: Option<u64>) -> String {
    let low = shown & ((1 << 56) - 1);
    if let Some(name) = lower.get(&low) {
        return format!("lower:{name}");
    }
    if upper_real == Some(low) {
        return "upper".into();
    }
    format!("other:{shown:#x}")
}

/// Per entry: its st_ino label and whether the listing's d_ino equals st_ino.
fn observe(m: &Path, l: &Path, u: &Path) -> BTreeMap<String, String> {
    let lower = lower_inos(l);
    let mut out = BTreeMap::new();
    for e in ENTRIES {
        let p = m.join(e);
        let st = fs::symlink_metadata(&p).unwrap().ino();
        let upper_real = fs::symlink_metadata(u.join(e)).ok().map(|m| m.ino());
        let parent = p.parent().unwrap();
        let name = p.file_name().unwrap();
        let d_ino = fs::read_dir(parent)
            .unwrap()
            .map(|d| d.unwrap())
            .find(|d| d.file_name() == name)
            .map(|d| d.ino());
        let dino = if d_ino == Some(st) {
            "d_ino=st_ino"
        } else {
            "d_ino!=st_ino"
        };
        out.insert(
            e.to_string(),
            format!("{} {dino}", label(st, &lower, upper_real)),
        );
    }
    out
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Imp {
    Kernel,
    Strata,
}

fn observe_with(
    imp: Imp,
    opts: &str,
    l: &Path,
    u: &Path,
    w: &Path,
    m: &Path,
) -> BTreeMap<String, String> {
    let stack = Stack::one(l, u, w);
    match imp {
        Imp::Kernel => {
            let _k = Kernel::mount(&stack, opts, m);
            observe(m, l, u)
        }
        Imp::Strata => {
            let _s = Strata::mount(&stack, opts, m);
            observe(m, l, u)
        }
    }
}

/// Runs `OPS` on `imp` over a fresh copy of the layers; returns what was seen while
/// mounted, after a remount, and under the other implementation, by stage.
fn stages(
    s: &Scratch,
    lower: &Path,
    imp: Imp,
    opts: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    let tag = format!("{imp:?}-{}", opts.replace(['=', ','], "_"));
    let l = s.path(&format!("{tag}-l"));
    copy_tree(lower, &l);
    let (u, w, m) = (
        s.dir(&format!("{tag}-u")),
        s.dir(&format!("{tag}-w")),
        s.dir(&format!("{tag}-m")),
    );
    let first = {
        let stack = Stack::one(&l, &u, &w);
        let run = |m: &Path| {
            sh_script(OPS, m);
            observe(m, &l, &u)
        };
        match imp {
            Imp::Kernel => {
                let _k = Kernel::mount(&stack, opts, &m);
                run(&m)
            }
            Imp::Strata => {
                let _s = Strata::mount(&stack, opts, &m);
                run(&m)
            }
        }
    };
    let other = if imp == Imp::Kernel {
        Imp::Strata
    } else {
        Imp::Kernel
    };
    vec![
        ("while mounted".into(), first),
        (
            "after a remount".into(),
            observe_with(imp, opts, &l, &u, &w, &m),
        ),
        (
            format!("upper mounted by {other:?}"),
            observe_with(other, opts, &l, &u, &w, &m),
        ),
    ]
}

fn check(opts: &str) {
    let s = Scratch::new("origin-remount");
    let lower = s.dir("lower");
    make_lower(&lower);
    let reference = stages(&s, &lower, Imp::Kernel, opts);
    let want = &reference[0].1;
    let mut bad = Vec::new();
    for imp in [Imp::Kernel, Imp::Strata] {
        let got = if imp == Imp::Kernel {
            reference.clone()
        } else {
            stages(&s, &lower, imp, opts)
        };
        for (stage, seen) in got {
            for (e, v) in seen {
                if want.get(&e) != Some(&v) {
                    bad.push(format!(
                        "{imp:?} ops, {stage} [{opts}]: {e}: {v}, kernel while mounted: {:?}",
                        want.get(&e)
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "st_ino/d_ino not the kernel's:\n{}\nkernel: {want:#?}",
        bad.join("\n")
    );
}

#[test]
fn copied_up_files_keep_their_numbers_across_remount() {
    check("");
}

#[test]
fn copied_up_files_keep_their_numbers_across_remount_redirect_dir() {
    check("redirect_dir=on");
}

/// A lower copied elsewhere and the original removed: the recorded handles are stale.
/// Both implementations then show the copied-up entries' own numbers (no error), and
/// `stratafs check --lower` reports the stale origins.
#[test]
fn undecodable_origins_fall_back_and_check_reports_them() {
    let s = Scratch::new("origin-stale");
    let lower = s.dir("lower");
    make_lower(&lower);
    let l = s.path("l");
    copy_tree(&lower, &l);
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    {
        let _k = Kernel::mount(&Stack::one(&l, &u, &w), "", &m);
        sh_script(OPS, &m);
    }
    let l2 = s.path("l2");
    copy_tree(&l, &l2);
    fs::remove_dir_all(&l).unwrap();
    let kernel = observe_with(Imp::Kernel, "", &l2, &u, &w, &m);
    let strata = observe_with(Imp::Strata, "", &l2, &u, &w, &m);
    assert_eq!(
        kernel.get("renamed.new").map(String::as_str),
        Some("upper d_ino=st_ino"),
        "kernel: {kernel:#?}"
    );
    assert_eq!(strata, kernel, "stratafs vs kernel over stale origins");
    let o = std::process::Command::new(common::bin())
        .args([
            "check",
            u.to_str().unwrap(),
            "--lower",
            l2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    // The kernel's listing dropped `impure` where only stale origins are: not a problem.
    assert!(!out.contains("no impure marker"), "{out}");
    for e in ["renamed.new", "nd/moved.new", "ld/moved_low.new", "written"] {
        assert!(
            out.lines()
                .any(|line| line.contains(e) && line.contains("stale origin")),
            "check does not report {e}'s stale origin:\n{out}"
        );
    }
}

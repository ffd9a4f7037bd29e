//! Permissions with `allow_other` (and `default_permissions`, the default): an
//! unprivileged user (nobody, 65534) runs the same operations on a stratafs mount and on a
//! kernel overlayfs mount of identical layers; every outcome (success or errno) must be
//! the kernel's, and so must the merged view and the upper directory afterwards. That
//! covers reads of 0600 files, writes to others' files (which must copy nothing up),
//! unlink/rename/create in a root directory of the lower layer (no copy-up of the directory,
//! no whiteout), sticky directories, chmod/chown of own and others' files, and the
//! setuid/setgid bits that an unprivileged write or truncate drops (lower and upper files),
//! that a write by root keeps, and that chown drops.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{copy_tree, sh_as, snapshot, Entry, Kernel, Scratch, Stack, Strata};

const NOBODY: u32 = 65534;
const OTHER: u32 = 1000;

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn file(p: &Path, mode: u32, uid: u32, gid: u32) {
    fs::write(p, b"original\n").unwrap();
    chown(p, uid, gid);
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(p: &Path, mode: u32, uid: u32) {
    fs::create_dir_all(p).unwrap();
    chown(p, uid, uid);
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn layers(l: &Path, u: &Path) {
    file(&l.join("secret"), 0o600, 0, 0);
    file(&l.join("pub"), 0o644, 0, 0);
    dir(&l.join("rootdir"), 0o755, 0);
    file(&l.join("rootdir/f"), 0o666, 0, 0);
    dir(&l.join("tmp"), 0o1777, 0);
    file(&l.join("tmp/other"), 0o666, OTHER, OTHER);
    file(&l.join("tmp/mine"), 0o644, NOBODY, NOBODY);
    file(&l.join("own"), 0o644, NOBODY, NOBODY);
    file(&l.join("others"), 0o666, OTHER, OTHER);
    // setuid/setgid files of another user that nobody may write.
    file(&l.join("suid"), 0o4777, OTHER, OTHER);
    file(&l.join("sgid"), 0o2777, OTHER, OTHER);
    file(&l.join("sgid-noexec"), 0o2766, OTHER, OTHER);
    file(&l.join("suidgid"), 0o6777, OTHER, OTHER);
    file(&l.join("suid-trunc"), 0o4777, OTHER, OTHER);
    file(&l.join("suid-ftrunc"), 0o4777, OTHER, OTHER);
    file(&l.join("suid-root-write"), 0o4777, OTHER, OTHER);
    file(&l.join("suid-chown"), 0o4755, OTHER, OTHER);
    file(&l.join("sgid-chown"), 0o2755, OTHER, OTHER);
    file(&l.join("suid-own"), 0o4755, NOBODY, NOBODY);
    file(&u.join("usecret"), 0o600, 0, 0);
    file(&u.join("upub"), 0o644, 0, 0);
    file(&u.join("usuid"), 0o4777, OTHER, OTHER);
    file(&u.join("usgid-trunc"), 0o2777, OTHER, OTHER);
}

/// (who, shell command run in the mount, what it checks)
const CASES: &[(&str, &str, &str)] = &[
    ("nobody", "cat secret", "read a 0600 root file (lower)"),
    ("nobody", "cat usecret", "read a 0600 root file (upper)"),
    (
        "nobody",
        "echo x >> pub",
        "write a 0644 root file (lower): no copy-up",
    ),
    ("nobody", "echo x >> upub", "write a 0644 root file (upper)"),
    (
        "nobody",
        "truncate -s 0 pub",
        "truncate a 0644 root file (lower)",
    ),
    ("nobody", "chmod 666 pub", "chmod a root file"),
    (
        "nobody",
        "touch -d 2001-01-01 pub",
        "set times of a root file",
    ),
    (
        "nobody",
        "rm -f rootdir/f",
        "unlink in a root 0755 lower dir",
    ),
    (
        "nobody",
        "mv rootdir/f rootdir/g",
        "rename in a root 0755 lower dir",
    ),
    (
        "nobody",
        "mv rootdir/f tmp/f",
        "rename out of a root 0755 lower dir",
    ),
    (
        "nobody",
        "touch rootdir/new",
        "create in a root 0755 lower dir",
    ),
    (
        "nobody",
        "mkdir rootdir/nd",
        "mkdir in a root 0755 lower dir",
    ),
    (
        "nobody",
        "ln -s x rootdir/sl",
        "symlink in a root 0755 lower dir",
    ),
    ("nobody", "rmdir rootdir", "rmdir a root dir in a root dir"),
    (
        "nobody",
        "rm -f tmp/other",
        "sticky dir: unlink another user's file",
    ),
    (
        "nobody",
        "mv tmp/other tmp/o2",
        "sticky dir: rename another user's file",
    ),
    (
        "nobody",
        "echo y >> tmp/other",
        "sticky dir: write another user's 0666 file",
    ),
    ("nobody", "rm -f tmp/mine", "sticky dir: unlink own file"),
    ("nobody", "touch tmp/new", "sticky dir: create"),
    ("nobody", "chmod 600 own", "chmod own file"),
    ("nobody", "chmod 600 others", "chmod another user's file"),
    (
        "nobody",
        "chown 65534 others",
        "chown another user's file to self",
    ),
    ("nobody", "chown 0 own", "give own file away"),
    (
        "nobody",
        "chgrp 0 own",
        "chgrp own file to a group not a member of",
    ),
    ("nobody", "chgrp 65534 own", "chgrp own file to own group"),
    (
        "nobody",
        "echo x >> suid",
        "write a 04777 file of another user (lower)",
    ),
    (
        "nobody",
        "echo x >> sgid",
        "write a 02777 file of another user (lower)",
    ),
    (
        "nobody",
        "echo x >> sgid-noexec",
        "write a 02766 file (no group exec)",
    ),
    ("nobody", "echo x >> suidgid", "write a 06777 file"),
    (
        "nobody",
        "truncate -s 1 suid-trunc",
        "truncate a 04777 file (lower)",
    ),
    (
        "nobody",
        "truncate -s 0 suid-ftrunc",
        "truncate a 04777 file to 0 (lower)",
    ),
    ("nobody", "echo x >> usuid", "write a 04777 file (upper)"),
    (
        "nobody",
        "truncate -s 3 usgid-trunc",
        "truncate a 02777 file (upper)",
    ),
    (
        "root",
        "echo x >> suid-root-write",
        "root writes a 04777 file: kept",
    ),
    ("root", "chown 1001 suid-chown", "root chowns a 04755 file"),
    ("root", "chgrp 1001 sgid-chown", "root chgrps a 02755 file"),
    (
        "nobody",
        "chown 65534 suid-own",
        "chown own 04755 file to self",
    ),
    ("nobody", "chmod 4755 own", "set setuid on own file"),
];

/// Runs `cmd` with `sh -c` in `dir` as `who`; "ok" or the error text of its last line.
fn run(who: &str, cmd: &str, dir: &Path) -> String {
    let out = sh_as(who != "root", cmd, dir).output().expect("run sh");
    if out.status.success() {
        return "ok".into();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("").to_string();
    // "cat: secret: Permission denied" → "Permission denied"
    last.rsplit(": ").next().unwrap_or("").trim().to_string()
}

/// A tree without times and xattrs (the two mounts ran at different instants, and
/// copy-up origin markers hold file handles).
fn shape(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    snapshot(root)
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, mut e)| {
            e.mtime = (0, 0);
            e.xattrs.clear();
            (k, e)
        })
        .collect()
}

#[test]
fn unprivileged_user_gets_the_kernel_outcomes() {
    let s = Scratch::new("perm");
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let (l0, u0) = (s.dir("src/l"), s.dir("src/u"));
    layers(&l0, &u0);
    let mut results = Vec::new();
    let mut views = Vec::new();
    for which in ["stratafs", "kernel"] {
        let base = s.dir(which);
        copy_tree(&l0, &base.join("l"));
        copy_tree(&u0, &base.join("u"));
        let (l, u, w, m) = (
            base.join("l"),
            base.join("u"),
            s.dir(&format!("{which}/w")),
            s.dir(&format!("{which}/m")),
        );
        let stack = Stack::one(&l, &u, &w);
        let outcomes: Vec<String>;
        let merged;
        {
            enum Guard {
                S(Strata),
                K(#[allow(dead_code)] Kernel),
            }
            let g = if which == "stratafs" {
                Guard::S(Strata::mount(&stack, "allow_other", &m))
            } else {
                Guard::K(Kernel::mount(&stack, "", &m))
            };
            if let Guard::S(st) = &g {
                let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
                let line = mounts
                    .lines()
                    .find(|x| x.contains(m.to_str().unwrap()))
                    .unwrap_or("");
                assert!(
                    line.contains("default_permissions") && line.contains("allow_other"),
                    "mounted with default_permissions,allow_other: {line} (pid {})",
                    st.pid()
                );
            }
            outcomes = CASES
                .iter()
                .map(|(who, cmd, _)| run(who, cmd, &m))
                .collect();
            merged = shape(&m);
        }
        results.push(outcomes);
        views.push((merged, shape(&u)));
    }
    let mut differ = Vec::new();
    for (i, (who, cmd, what)) in CASES.iter().enumerate() {
        let (a, b) = (&results[0][i], &results[1][i]);
        println!(
            "{:<55} {who:>6} `{cmd}`: stratafs {a:?}, kernel {b:?}",
            what
        );
        if a != b {
            differ.push(format!(
                "{what} ({who}: {cmd}): stratafs {a:?}, kernel {b:?}"
            ));
        }
    }
    println!(
        "permissions: {} cases compared with the kernel overlayfs, {} differ",
        CASES.len(),
        differ.len()
    );
    // The cases must actually exercise denials (a mount that let nobody do nothing, or
    // everything, would not be a test).
    let denied = results[1].iter().filter(|r| *r != "ok").count();
    assert!(
        denied >= 15 && denied < CASES.len(),
        "kernel denied {denied} cases"
    );
    assert!(
        differ.is_empty(),
        "outcomes differ from the kernel:\n{}",
        differ.join("\n")
    );
    // (A write by a user outside the file's group drops a setgid bit without group exec,
    // as on the kernel overlayfs: compared with everything else since the daemon applies
    // that rule itself; it was masked out here before.)
    let d = common::diff(&views[0].0, &views[1].0);
    assert!(
        d.is_empty(),
        "merged views differ (stratafs first):\n{}",
        d.join("\n")
    );
    let d = common::diff(&views[0].1, &views[1].1);
    assert!(
        d.is_empty(),
        "upper dirs differ (stratafs first):\n{}",
        d.join("\n")
    );

    // Explicitly, in stratafs' upper: denied writes copied nothing up, denied directory
    // changes left no copy-up and no whiteout, and unprivileged writes dropped setuid.
    let up = &views[0].1;
    for absent in [&b"pub"[..], b"secret", b"rootdir", b"rootdir/f"] {
        assert!(
            !up.contains_key(absent),
            "{:?} copied up",
            String::from_utf8_lossy(absent)
        );
    }
    let merged = &views[0].0;
    let mode = |n: &[u8]| merged[n].mode;
    assert_eq!(mode(b"suid"), 0o777, "write by nobody drops setuid");
    assert_eq!(
        mode(b"sgid"),
        0o777,
        "write by nobody drops setgid (group exec)"
    );
    assert_eq!(
        mode(b"suid-trunc"),
        0o777,
        "truncate by nobody drops setuid"
    );
    assert_eq!(
        mode(b"usuid"),
        0o777,
        "write by nobody drops setuid (upper)"
    );
    assert_eq!(
        mode(b"suid-root-write"),
        0o4777,
        "root's write keeps setuid"
    );
    assert_eq!(mode(b"suid-chown"), 0o755, "chown drops setuid");
    assert_eq!(
        mode(b"sgid-noexec"),
        0o766,
        "write by nobody (not in the group) drops setgid without group exec"
    );
}

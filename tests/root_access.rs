//! A mount made by root is every user's, as the kernel overlayfs and fuse-overlayfs (which
//! adds `allow_other` when its euid is 0): `nobody` runs the same commands on a stratafs
//! mount made with no options and on a kernel overlayfs mount of identical layers, and
//! every outcome (exit status and message) must be the kernel's; `noallow_other` keeps the
//! mount root's (EACCES for nobody); root of a user namespace (`unshare -Urm`, as podman's
//! rootless mount program) gets `allow_other` too.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, copy_tree, sh_as, snapshot, Kernel, Scratch, Stack, Strata};

fn layers(l: &Path, u: &Path) {
    let file = |p: &Path, mode: u32| {
        fs::write(p, b"original\n").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    };
    file(&l.join("pub"), 0o644);
    file(&l.join("secret"), 0o600);
    fs::create_dir(l.join("dir")).unwrap();
    file(&l.join("dir/inner"), 0o644);
    fs::create_dir(l.join("open")).unwrap();
    fs::set_permissions(l.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
    file(&u.join("upub"), 0o644);
}

/// What nobody runs in the mount (relative names, so messages do not name the mount).
const CASES: &[&str] = &[
    "cat pub",
    "cat upub",
    "cat secret",
    "ls -1",
    "ls -1 dir",
    "cat dir/inner",
    "stat -c '%a %u %s' pub",
    "echo x >> pub",
    "echo x >> upub",
    "touch new",
    "rm pub",
    "mkdir newdir",
    "echo mine > open/mine && cat open/mine",
];

fn outcome(mnt: &Path, cmd: &str) -> String {
    let o = sh_as(true, cmd, mnt).stdin(Stdio::null()).output().unwrap();
    format!(
        "{cmd}: {:?} out={:?} err={:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The per-mount and superblock options of the mount at `mnt`, from /proc/self/mountinfo.
fn mount_options(mnt: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.display().to_string();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .unwrap_or_else(|| panic!("{want} not in mountinfo"))
        .to_string()
}

#[test]
fn root_mount_without_options_serves_nobody_as_the_kernel() {
    let s = Scratch::new("rootacc");
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    layers(&l, &u);
    let (ku, kw) = (s.path("ku"), s.dir("kw"));
    copy_tree(&u, &ku);
    let (m, km) = (s.dir("m"), s.dir("km"));
    let sm = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let k = Kernel::mount(&Stack::one(&l, &ku, &kw), "", &km);
    for cmd in CASES {
        assert_eq!(outcome(&km, cmd), outcome(&m, cmd), "as nobody");
    }
    let info = mount_options(&m);
    assert!(
        info.contains("allow_other") && info.contains("default_permissions"),
        "root mount options: {info}"
    );
    drop(k);
    drop(sm);
    // The refused writes copied nothing up: both uppers hold the same.
    let (a, b) = (snapshot(&u), snapshot(&ku));
    let names = |t: &std::collections::BTreeMap<Vec<u8>, common::Entry>| {
        t.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b), "upper directories");
}

#[test]
fn noallow_other_keeps_a_root_mount_roots() {
    let s = Scratch::new("rootonly");
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    layers(&l, &u);
    let m = s.dir("m");
    let sm = Strata::mount(&Stack::one(&l, &u, &w), "noallow_other", &m);
    let info = mount_options(&m);
    assert!(!info.contains("allow_other"), "{info}");
    for cmd in ["cat pub", "ls -1", "stat pub"] {
        let o = sh_as(true, cmd, &m).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Permission denied"),
            "{cmd} as nobody: {err}"
        );
    }
    // Absolute paths: nobody cannot even stat the mount's root.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m.join("pub"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Permission denied"),
        "{err}"
    );
    // Root still reads.
    assert_eq!(fs::read(m.join("pub")).unwrap(), b"original\n");
    drop(sm);
}

#[test]
fn root_of_a_user_namespace_gets_allow_other() {
    let s = Scratch::new("usernsacc");
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    layers(&l, &u);
    let m = s.dir("m");
    // The mount lives in the namespace: look at mountinfo there, and unmount there (the
    // daemon then exits and the namespace with it).
    let script = format!(
        "{bin} -o lowerdir={l},upperdir={u},workdir={w} {m} || exit 9; \
         grep ' {m} ' /proc/self/mountinfo; cat {m}/pub; umount {m}",
        bin = bin(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        m = m.display()
    );
    let o = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = out.lines().next().unwrap_or_default();
    assert!(line.contains("fuse.stratafs"), "{out}");
    assert!(
        line.contains("allow_other") && line.contains("default_permissions"),
        "mount in the user namespace: {line}"
    );
    assert!(out.contains("original"), "{out}");
}

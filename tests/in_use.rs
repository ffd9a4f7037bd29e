//! An upper or workdir in use by a live mount cannot be mounted again: the second mount
//! is refused with one line naming the directory and the mount holding it, changes
//! nothing (`workdir/work` untouched) and the first mount keeps working. Same upper with
//! another workdir, and another upper with the same workdir, are refused too, as the kernel
//! overlayfs refuses them with `index=on` (with `index=off` it only warns and then breaks
//! the first mount's copy-ups, as stratafs did). A daemon killed with SIGKILL leaves no lock.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, Kernel, Scratch, Stack, Strata};

/// Unmounts `m` on drop if something got mounted there (a second mount the old code
/// accepted must not outlive a failed test).
struct UnmountIfMounted<'a>(&'a Path);

impl Drop for UnmountIfMounted<'_> {
    fn drop(&mut self) {
        if common::mount_type(self.0).is_some() {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
}

fn second_mount(l: &Path, u: &Path, w: &Path, m: &Path) -> std::process::Output {
    Command::new(bin())
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        ))
        .arg(m)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The kernel overlayfs with index=on refuses the same combination.
fn kernel_refuses(l: &Path, u: &Path, w: &Path, m: &Path) -> bool {
    let o = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},index=on",
            l.display(),
            u.display(),
            w.display()
        ))
        .arg(m)
        .output()
        .unwrap();
    if o.status.success() {
        let _ = Command::new("umount").arg(m).status();
    }
    !o.status.success()
}

#[test]
fn a_second_mount_of_a_busy_upper_or_workdir_is_refused() {
    let s = Scratch::new("inuse");
    let (l, u, w, u2, w2) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("u2"), s.dir("w2"));
    fs::write(l.join("f"), b"lower\n").unwrap();
    let (m, m2) = (s.dir("m"), s.dir("m2"));
    let first = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let work_ino = fs::metadata(w.join("work")).unwrap().ino();
    fs::write(w.join("work/marker"), b"x").unwrap();
    for (uu, ww, what) in [
        (&u, &w, "upperdir"),
        (&u, &w2, "upperdir"),
        (&u2, &w, "workdir"),
    ] {
        let _guard = UnmountIfMounted(&m2);
        let o = second_mount(&l, uu, ww, &m2);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{uu:?} {ww:?}: second mount accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(what) && err.contains("in use"), "{err}");
        assert!(
            err.contains(&format!("mount on {}", m.display())),
            "names the holder: {err}"
        );
        assert!(common::mount_type(&m2).is_none(), "nothing mounted");
        assert_eq!(fs::metadata(w.join("work")).unwrap().ino(), work_ino);
        assert!(w.join("work/marker").exists(), "workdir/work untouched");
    }
    // The first mount still creates, makes directories and copies up.
    fs::write(m.join("new"), b"new\n").unwrap();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("f"), b"copied up\n").unwrap();
    assert_eq!(fs::read(u.join("f")).unwrap(), b"copied up\n");
    assert!(u.join("d").is_dir() && u.join("new").is_file());
    drop(first);

    // The oracle: the kernel with index=on refuses the same three.
    let (ku, kw, ku2, kw2) = (s.dir("ku"), s.dir("kw"), s.dir("ku2"), s.dir("kw2"));
    let (km, km2) = (s.dir("km"), s.dir("km2"));
    let k = Kernel::mount(&Stack::one(&l, &ku, &kw), "index=on", &km);
    for (uu, ww) in [(&ku, &kw), (&ku, &kw2), (&ku2, &kw)] {
        assert!(
            kernel_refuses(&l, uu, ww, &km2),
            "kernel accepted {uu:?} {ww:?}"
        );
    }
    drop(k);
}

#[test]
fn a_killed_daemon_leaves_no_lock() {
    let s = Scratch::new("inuse-kill");
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    fs::write(l.join("f"), b"lower\n").unwrap();
    let m = s.dir("m");
    let mut first = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    first.kill();
    drop(first);
    let again = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    fs::write(m.join("f"), b"after\n").unwrap();
    assert_eq!(fs::read(u.join("f")).unwrap(), b"after\n");
    drop(again);
}

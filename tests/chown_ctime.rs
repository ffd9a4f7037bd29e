//! `chown(path, -1, -1)` changes no owner but is a change all the same: the kernel
//! overlayfs copies the entry up and the upper filesystem updates its ctime (as ext4 does;
//! pjdfstest chown/00.t). Differential against `mount -t overlay` over copies of one lower:
//! chown, lchown and fchown with -1/-1 of a lower file, a name of a hard-linked lower file,
//! a file and a directory already in the upper, a lower directory and a lower symlink.
//! For each: did ctime change, and is the entry in the upper afterwards; and whether a
//! lower file's capabilities (`setcap`, libcap2-bin) survive it (a chown takes them, also
//! one to -1/-1). Runs as root.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{kernel_and_strata, Scratch};

fn ctime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.ctime(), md.ctime_nsec())
}

/// The upper of the mount at `.../X-m` made by `kernel_and_strata` (`.../X-u`).
fn upper_of(m: &Path) -> std::path::PathBuf {
    let name = m.file_name().unwrap().to_string_lossy().replace("-m", "-u");
    m.with_file_name(name)
}

#[derive(Clone, Copy)]
enum How {
    Chown,
    Lchown,
    Fchown,
}

fn chown_none(p: &Path, how: How) -> std::io::Result<()> {
    match how {
        How::Chown => std::os::unix::fs::chown(p, None, None),
        How::Lchown => std::os::unix::fs::lchown(p, None, None),
        How::Fchown => {
            let f = fs::File::open(p)?;
            std::os::unix::fs::fchown(&f, None, None)
        }
    }
}

/// Runs every case on the mount at `m`; one line per case.
fn cases(m: &Path) -> String {
    // Entries made in the upper through the mount first, and a lower file copied up (by a
    // chmod to its own mode).
    fs::write(m.join("new"), b"new\n").unwrap();
    fs::create_dir(m.join("newdir")).unwrap();
    let mode = fs::metadata(m.join("copied")).unwrap().mode() & 0o7777;
    fs::set_permissions(
        m.join("copied"),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .unwrap();
    let u = upper_of(m);
    let mut out = String::new();
    for (name, how) in [
        ("lower", How::Chown),
        ("linked1", How::Chown),
        ("new", How::Chown),
        ("copied", How::Chown),
        ("ldir", How::Chown),
        ("newdir", How::Chown),
        ("link", How::Lchown),
        ("fd", How::Fchown),
        ("ldir/inner", How::Fchown),
        ("capped", How::Chown),
    ] {
        let p = m.join(name);
        let before = ctime(&p);
        // Past the next tick of the filesystem's clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let r = chown_none(&p, how);
        let after = ctime(&p);
        let in_upper = fs::symlink_metadata(u.join(name)).is_ok();
        out.push_str(&format!(
            "{name}: {r:?} ctime {} upper {in_upper}\n",
            if after == before { "same" } else { "changed" }
        ));
    }
    let caps = Command::new("getfattr")
        .args(["-n", "security.capability"])
        .arg(m.join("capped"))
        .output()
        .unwrap();
    out.push_str(&format!(
        "capped keeps capabilities: {}\n",
        caps.status.success()
    ));
    // The other name of the hard-linked lower file keeps the lower file.
    out.push_str(&format!(
        "linked2 in upper: {}\n",
        fs::symlink_metadata(u.join("linked2")).is_ok()
    ));
    out
}

#[test]
fn chown_to_minus_one_updates_ctime_as_in_the_kernel_overlayfs() {
    let s = Scratch::new("chown-ctime");
    let l = s.dir("l");
    for f in ["lower", "copied", "fd", "linked1", "capped"] {
        fs::write(l.join(f), format!("{f}\n")).unwrap();
    }
    fs::hard_link(l.join("linked1"), l.join("linked2")).unwrap();
    fs::create_dir(l.join("ldir")).unwrap();
    fs::write(l.join("ldir/inner"), b"inner\n").unwrap();
    std::os::unix::fs::symlink("lower", l.join("link")).unwrap();
    let st = Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(l.join("capped"))
        .status()
        .unwrap();
    assert!(st.success(), "setcap");
    let (k, st) = kernel_and_strata(&s, &l, "", cases);
    assert!(k.contains("lower: Ok(()) ctime changed"), "{k}");
    assert_eq!(st, k, "stratafs (left) and the kernel overlayfs (right)");
}

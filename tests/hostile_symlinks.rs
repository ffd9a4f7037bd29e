//! Symlinks in a lower layer that point outside the branch (absolute, `../../..`, loops)
//! are shown as symlinks, and the daemon never reads, writes or follows through them: a
//! canary file and directory outside every branch stay untouched (atime included), even
//! when the links are listed, read with readlink, archived, and copied up.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, MetadataExt};
use std::process::Command;

use common::{snapshot, Scratch, Stack, Strata};
use stratafs::sys::{self, ops, xattr};

#[test]
fn links_out_of_the_branch_are_never_followed() {
    let s = Scratch::new("hostile");
    let canary_dir = s.dir("outside/canary-dir");
    let canary = s.path("outside/canary");
    fs::write(&canary, b"secret canary\n").unwrap();
    fs::write(canary_dir.join("inner"), b"inner canary\n").unwrap();
    let l = s.dir("l");
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    symlink(&canary, l.join("abs")).unwrap();
    symlink(&canary_dir, l.join("absdir")).unwrap();
    symlink("../../../../../../../../..", l.join("up")).unwrap();
    symlink("../outside/canary", l.join("rel-out")).unwrap();
    symlink("loop2", l.join("loop1")).unwrap();
    symlink("loop1", l.join("loop2")).unwrap();
    fs::create_dir(l.join("d")).unwrap();
    symlink("../../outside/canary-dir", l.join("d/escape")).unwrap();
    // Canary atimes two days back: any read through a followed link would move them.
    let old = "2 days ago";
    for p in [&canary, &canary_dir.join("inner")] {
        assert!(Command::new("touch")
            .args(["-a", "-d", old])
            .arg(p)
            .status()
            .unwrap()
            .success());
    }
    let before: Vec<i64> = [&canary, &canary_dir.join("inner")]
        .iter()
        .map(|p| fs::metadata(p).unwrap().atime())
        .collect();

    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    for (name, target) in [
        ("abs", canary.as_os_str().to_owned()),
        ("up", "../../../../../../../../..".into()),
        ("rel-out", "../outside/canary".into()),
        ("loop1", "loop2".into()),
        ("d/escape", "../../outside/canary-dir".into()),
    ] {
        let md = fs::symlink_metadata(m.join(name)).unwrap();
        assert!(md.file_type().is_symlink(), "{name} shows as a symlink");
        assert_eq!(
            fs::read_link(m.join(name)).unwrap().as_os_str(),
            target,
            "{name} target"
        );
    }
    // xattrs of the link itself, never of its target.
    let root = sys::open_host_dir(&m).unwrap();
    assert!(xattr::list(root.as_fd(), c"abs").unwrap().is_empty());
    // Walk and archive the whole mount without following links.
    let view = snapshot(&m);
    assert!(
        view.keys().all(|k| !k.ends_with(b"inner")),
        "canary dir content never appears in the view"
    );
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&m)
        .args(["-cf", "/dev/null", "."])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ls")
        .arg("-lR")
        .arg(&m)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    // Copy the links up (chown -h, touch -h): the upper gets links, the targets nothing.
    ops::fchownat(root.as_fd(), c"abs", 4321, 4321).unwrap();
    ops::fchownat(root.as_fd(), c"absdir", 4321, 4321).unwrap();
    ops::utimensat(
        root.as_fd(),
        &CString::new("up").unwrap(),
        ops::SetTime::Now,
        ops::SetTime::Now,
    )
    .unwrap();
    assert!(fs::symlink_metadata(u.join("abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(u.join("absdir"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Deleting a link deletes the link.
    fs::remove_file(m.join("rel-out")).unwrap();
    fs::remove_file(m.join("absdir")).unwrap();
    drop(root);
    assert_eq!(
        mnt.unmount().map(|st| st.success()),
        Some(true),
        "daemon exits 0 on umount"
    );

    // Times first: reading the canary below to check it moves its atime.
    let after: Vec<i64> = [&canary, &canary_dir.join("inner")]
        .iter()
        .map(|p| fs::metadata(p).unwrap().atime())
        .collect();
    assert_eq!(
        before, after,
        "canary atimes unchanged: never read through a link"
    );
    assert_eq!(fs::read(&canary).unwrap(), b"secret canary\n");
    assert!(canary_dir.join("inner").exists(), "canary dir untouched");
    assert_eq!(
        fs::metadata(&canary).unwrap().uid(),
        0,
        "canary not chowned"
    );
    assert_eq!(
        fs::metadata(&canary_dir).unwrap().uid(),
        0,
        "canary dir not chowned"
    );
}

//! Where new entries are made, as the kernel overlayfs makes them (`ovl_create_or_link`):
//! in place in the upper directory when nothing is in the way there, and built in the
//! workdir then renamed over only when a whiteout must be replaced in one step (a directory
//! made there is opaque). The upper that results is compared with the kernel's own.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{copy_tree, sh_script, snapshot, Entry, Kernel, Scratch, Stack, Strata};

/// (mtime, ctime) of `p`, to nanoseconds.
fn times(p: &Path) -> ((i64, i64), (i64, i64)) {
    let m = fs::symlink_metadata(p).unwrap();
    ((m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()))
}

/// Creating where the upper has no whiteout never touches `workdir/work` (on main every
/// new entry was built there and renamed out: its times moved with each); replacing a
/// whiteout does go through it.
#[test]
fn creates_are_made_in_place_unless_a_whiteout_is_in_the_way() {
    let s = Scratch::new("inplace");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("ld")).unwrap();
    fs::write(l.join("ld/low"), b"lower\n").unwrap();
    fs::write(l.join("gone"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    fs::create_dir(m.join("new")).unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    fs::write(m.join("ld/touch"), b"").unwrap(); // the parent's copy-up is staged
    let work = w.join("work");
    let before = times(&work);
    std::thread::sleep(std::time::Duration::from_millis(20));
    for i in 0..20 {
        fs::write(m.join(format!("new/f{i}")), b"x").unwrap();
        fs::write(m.join(format!("ld/f{i}")), b"x").unwrap();
        fs::write(m.join(format!("top{i}")), b"x").unwrap();
    }
    fs::create_dir(m.join("new/sub")).unwrap();
    fs::create_dir(m.join("ld/sub")).unwrap();
    std::os::unix::fs::symlink("target", m.join("new/sl")).unwrap();
    let made = sh_script("mkfifo \"$1/new/fifo\" && mknod \"$1/ld/nul\" c 1 3", &m);
    assert_eq!(made, "");
    assert_eq!(
        times(&work),
        before,
        "workdir/work changed: new entries were staged there"
    );
    // Over a whiteout: staged and renamed over it.
    fs::write(m.join("gone"), b"again\n").unwrap();
    assert_ne!(
        times(&work),
        before,
        "a whiteout was replaced without staging"
    );
    assert_eq!(fs::read(u.join("gone")).unwrap(), b"again\n");
    assert!(fs::read_dir(&work).unwrap().next().is_none());
    assert_eq!(fs::read(m.join("ld/low")).unwrap(), b"lower\n");
}

/// What the kernel and stratafs may legitimately write differently in an upper: times,
/// the kernel's uuid on the upper root and its encoded origin file handles (stratafs
/// writes the "origin not encoded" form). Everything else must be the same: names, types,
/// modes, owners, contents, and the overlay markers (opaque, whiteouts, impure).
fn upper_view(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    snapshot(root)
        .into_iter()
        .map(|(k, mut e)| {
            e.mtime = (0, 0);
            e.dir_nlink = None;
            e.xattrs = e
                .xattrs
                .into_iter()
                .filter(|(n, _)| n.as_slice() != b"trusted.overlay.uuid")
                .map(|(n, v)| {
                    if n.as_slice() == b"trusted.overlay.origin" {
                        (n, Vec::new())
                    } else {
                        (n, v)
                    }
                })
                .collect();
            (k, e)
        })
        .collect()
}

const CREATES: &str = r#"set -e
cd "$1"
umask 022
mkdir new && : > new/f1 && mkdir new/sub && ln -s tgt new/sl && mkfifo new/fifo
echo data > top1 && mkdir topd
mkdir b                                   # hidden below by a lower whiteout: not opaque
rm -rf a && mkdir a && : > a/n            # over an upper whiteout: opaque
rm g && echo new > g                      # a file over an upper whiteout
rm -rf c && ln -s foo c                   # a symlink over one
: > ld/y && mkdir ld/z && mkdir ld/z/deep # in a merged directory copied up
mkdir -m 2775 sg && chgrp 100 sg && mkdir sg/in && : > sg/file
(umask 027; : > um && mkdir umd)
mkdir -m 0700 private && : > private/p
"#;

#[test]
fn the_upper_written_by_creates_matches_the_kernel_overlayfs() {
    let s = Scratch::new("inplace-diff");
    let base = s.dir("base");
    let (b1, b2) = (base.join("l1"), base.join("l2"));
    for d in ["a", "b", "c", "ld"] {
        fs::create_dir_all(b2.join(d)).unwrap();
        fs::write(b2.join(d).join("f"), b"lower\n").unwrap();
    }
    fs::write(b2.join("g"), b"lower g\n").unwrap();
    fs::create_dir_all(b1.join("ld")).unwrap();
    fs::write(b1.join("ld/x"), b"x\n").unwrap();
    sh_script("mknod \"$1/b\" c 0 0", &b1);
    let mut views = Vec::new();
    for side in ["k", "s"] {
        let (l1, l2) = (s.path(&format!("{side}/l1")), s.path(&format!("{side}/l2")));
        s.dir(side);
        copy_tree(&b1, &l1);
        copy_tree(&b2, &l2);
        let (u, w, m) = (
            s.dir(&format!("{side}/u")),
            s.dir(&format!("{side}/w")),
            s.dir(&format!("{side}/m")),
        );
        let stack = Stack {
            lowers: vec![&l1, &l2],
            upper: Some((&u, &w)),
        };
        if side == "k" {
            let _k = Kernel::mount(&stack, "", &m);
            sh_script(CREATES, &m);
        } else {
            let mnt = Strata::mount(&stack, "", &m);
            sh_script(CREATES, &m);
            assert_eq!(mnt.unmount().map(|s| s.success()), Some(true));
            assert!(fs::read_dir(w.join("work")).unwrap().next().is_none());
        }
        views.push(upper_view(&u));
    }
    common::assert_same(
        "upper after the creates, kernel vs stratafs",
        &views[0],
        &views[1],
    );
}

/// An upper with an aufs whiteout (`.wh.NAME`, e.g. a layer of that format given as upper):
/// a directory made at NAME must still hide the lower directory, as one made over a
/// device whiteout does.
#[test]
fn a_directory_made_over_an_aufs_whiteout_in_the_upper_hides_the_lower_one() {
    let s = Scratch::new("inplace-aufs");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("d")).unwrap();
    fs::write(l.join("d/x"), b"lower\n").unwrap();
    fs::write(l.join("f"), b"lower\n").unwrap();
    fs::write(u.join(".wh.d"), b"").unwrap();
    fs::write(u.join(".wh.f"), b"").unwrap();
    {
        let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
        assert!(!m.join("d").exists() && !m.join("f").exists());
        fs::create_dir(m.join("d")).unwrap();
        fs::write(m.join("f"), b"new\n").unwrap();
    }
    // Mounted again: the entries are looked up from the branches, not remembered.
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let listed: Vec<_> = fs::read_dir(m.join("d")).unwrap().collect();
    assert!(
        listed.is_empty(),
        "the lower directory shows through: {listed:?}"
    );
    assert!(fs::symlink_metadata(m.join("d/x")).is_err());
    assert_eq!(fs::read(m.join("f")).unwrap(), b"new\n");
}

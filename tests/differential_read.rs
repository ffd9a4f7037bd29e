//! The read path against the kernel overlayfs: a stack of layers whose whiteouts, opaque
//! directories, redirects and metacopy files the kernel itself wrote, topped by an aufs/OCI
//! layer (`.wh.` whiteouts) that the kernel is given in its own equivalent format, mounted
//! with both; the trees are compared entry by entry (names, types, modes, owners, sizes,
//! mtimes, link targets, contents, device numbers, visible xattrs, directory link counts).
//! Also: inode numbers and readdir offsets, name and path length limits, 100 layers.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{assert_same, diff, kernel_made_layer, snapshot, Kernel, Scratch, Stack, Strata};
use stratafs::sys::{self, ops, xattr};

const BIG_DIR_ENTRIES: usize = 50_000;

fn c(b: &[u8]) -> CString {
    CString::new(b).unwrap()
}

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let dir = sys::open_host_dir(p.parent().unwrap()).unwrap();
    let n = c(p.file_name().unwrap().as_bytes());
    xattr::set(dir.as_fd(), &n, &c(name.as_bytes()), value, 0).unwrap();
}

fn mknod(p: &Path, mode: u32, rdev: u64) {
    let dir = sys::open_host_dir(p.parent().unwrap()).unwrap();
    ops::mknodat(
        dir.as_fd(),
        &c(p.file_name().unwrap().as_bytes()),
        mode,
        rdev,
    )
    .unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let dir = sys::open_host_dir(p.parent().unwrap()).unwrap();
    ops::fchownat(dir.as_fd(), &c(p.file_name().unwrap().as_bytes()), uid, gid).unwrap();
}

/// The bottom layer, written directly: every kind of entry and name, the big directory,
/// and a tree of ten thousand entries.
fn base_layer(l: &Path) {
    let w = |rel: &[u8], data: &[u8]| {
        let p = l.join(OsStr::from_bytes(rel));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    let big = l.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..BIG_DIR_ENTRIES {
        fs::File::create(big.join(format!("entry-{i:06}"))).unwrap();
    }
    for d in 0..100 {
        for f in 0..100 {
            w(
                format!("tree/d{d:03}/f{f:03}").as_bytes(),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    // Names: spaces, a newline, bytes that are not UTF-8, 255 bytes.
    w(b"names/with space", b"s\n");
    w(b"names/new\nline", b"n\n");
    w(b"names/\xff\xfe not utf-8", b"b\n");
    w(&[b"names/".as_slice(), &[b'L'; 255]].concat(), b"long\n");
    fs::create_dir_all(l.join("names").join(os(&[b'D'; 255]))).unwrap();
    w(
        &[b"names/".as_slice(), &[b'D'; 255], b"/inside"].concat(),
        b"i\n",
    );
    // Every kind of entry, odd modes, owners, xattrs, times.
    w(b"kinds/file", b"plain file\n");
    symlink("file", l.join("kinds/rel-link")).unwrap();
    symlink("/etc/hostname", l.join("kinds/abs-link")).unwrap();
    symlink("../nowhere/at/all", l.join("kinds/dangling")).unwrap();
    mknod(&l.join("kinds/fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(
        &l.join("kinds/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &l.join("kinds/loop9"),
        libc::S_IFBLK | 0o660,
        libc::makedev(7, 9),
    );
    fs::hard_link(l.join("kinds/file"), l.join("kinds/hardlink")).unwrap();
    let mut sp = fs::File::create(l.join("kinds/sparse")).unwrap();
    sp.write_all(b"start").unwrap();
    sp.set_len(100 << 20).unwrap();
    w(b"kinds/setuid", b"#!/bin/sh\n");
    fs::set_permissions(l.join("kinds/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir_all(l.join("kinds/sticky")).unwrap();
    fs::set_permissions(l.join("kinds/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    w(b"kinds/none", b"unreadable\n");
    fs::set_permissions(l.join("kinds/none"), fs::Permissions::from_mode(0o000)).unwrap();
    w(b"kinds/owned", b"o\n");
    chown(&l.join("kinds/owned"), 1234, 5678);
    w(b"kinds/xattrs", b"x\n");
    set_xattr(&l.join("kinds/xattrs"), "user.color", b"blue");
    set_xattr(&l.join("kinds/xattrs"), "trusted.secret", b"s");
    // What the layers above change.
    for d in [
        "gone-dir/sub",
        "opaque-me/old",
        "dir-to-file",
        "merged3/base-only",
        "moved-src/inner",
    ] {
        fs::create_dir_all(l.join(d)).unwrap();
    }
    w(b"gone-dir/sub/x", b"x\n");
    w(b"gone-file", b"g\n");
    w(b"file-to-dir", b"f\n");
    w(b"opaque-me/old/o", b"o\n");
    w(b"merged3/from-base", b"base\n");
    w(b"merged3/base-only/b", b"b\n");
    w(b"moved-src/inner/data", b"moved data\n");
    w(b"meta-big", &vec![b'm'; 1 << 20]);
    w(b"aufs/hide-me", b"h\n");
    w(b"aufs/opq/below", b"below\n");
    w(b"xwh/hide-me-too", b"h\n");
    w(b"xwh/keep", b"k\n");
    stratafs_times(l);
}

/// Fixes every time in a layer (the kernel and stratafs mounts are made at different
/// moments; only times the layers hold are compared).
fn stratafs_times(l: &Path) {
    let st = std::process::Command::new("find")
        .arg(l)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2021-06-01 12:00:00",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The three-layer stack under the aufs top: `l3` written directly, `l2` and `l1` written
/// by the kernel overlayfs (whiteouts, opaque dirs, a redirect, a metacopy file).
fn kernel_layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let l3 = s.dir("l3");
    base_layer(&l3);
    let l2 = kernel_made_layer(s, "l2", &[&l3], |m| {
        fs::remove_file(m.join("gone-file")).unwrap();
        fs::remove_dir_all(m.join("gone-dir")).unwrap();
        fs::remove_dir_all(m.join("opaque-me")).unwrap();
        fs::create_dir(m.join("opaque-me")).unwrap();
        fs::write(m.join("opaque-me/new"), b"new\n").unwrap();
        fs::remove_dir_all(m.join("dir-to-file")).unwrap();
        fs::write(m.join("dir-to-file"), b"now a file\n").unwrap();
        fs::remove_file(m.join("file-to-dir")).unwrap();
        fs::create_dir(m.join("file-to-dir")).unwrap();
        fs::write(m.join("merged3/from-l2"), b"l2\n").unwrap();
        fs::write(m.join("tree/d005/f005"), b"changed in l2\n").unwrap();
        for i in (0..BIG_DIR_ENTRIES).step_by(1000) {
            fs::remove_file(m.join(format!("big/entry-{i:06}"))).unwrap();
        }
        fs::set_permissions(m.join("kinds/file"), fs::Permissions::from_mode(0o600)).unwrap();
    });
    stratafs_times(&l2);
    let l1 = kernel_made_layer(s, "l1", &[&l2, &l3], |m| {
        fs::write(m.join("merged3/from-l1"), b"l1\n").unwrap();
        fs::remove_file(m.join("merged3/base-only/b")).unwrap();
        fs::remove_file(m.join("names/with space")).unwrap();
        fs::write(m.join("big/added-in-l1"), b"a\n").unwrap();
        fs::remove_dir_all(m.join("tree/d099")).unwrap();
    });
    stratafs_times(&l1);
    (l1, l2, l3)
}

/// A layer the kernel writes with `redirect_dir=on` and `metacopy=on`: a renamed merged
/// directory and a metadata-only copy-up.
fn kernel_redirect_metacopy_layer(s: &Scratch, lowers: &[&Path]) -> PathBuf {
    let upper = s.dir("l0");
    let work = s.dir("l0.work");
    let mnt = s.dir("l0.mnt");
    {
        let _k = Kernel::mount(
            &Stack {
                lowers: lowers.to_vec(),
                upper: Some((&upper, &work)),
            },
            "redirect_dir=on,metacopy=on",
            &mnt,
        );
        fs::rename(mnt.join("moved-src"), mnt.join("moved-dst")).unwrap();
        fs::set_permissions(mnt.join("meta-big"), fs::Permissions::from_mode(0o640)).unwrap();
    }
    let _ = fs::remove_dir_all(&work);
    stratafs_times(&upper);
    upper
}

/// The aufs/OCI top layer for stratafs, and its kernel-format twin for the kernel.
fn aufs_layers(s: &Scratch) -> (PathBuf, PathBuf) {
    let a = s.dir("aufs");
    let k = s.dir("aufs-kernel");
    for l in [&a, &k] {
        fs::create_dir_all(l.join("aufs/opq")).unwrap();
        fs::create_dir_all(l.join("xwh")).unwrap();
        fs::write(l.join("aufs/added"), b"added by aufs\n").unwrap();
        fs::write(l.join("aufs/opq/above"), b"above\n").unwrap();
    }
    fs::create_dir_all(a.join("names")).unwrap();
    fs::write(a.join("names/\u{2713} from aufs"), b"check\n").unwrap();
    fs::create_dir_all(k.join("names")).unwrap();
    fs::write(k.join("names/\u{2713} from aufs"), b"check\n").unwrap();
    // Whiteouts: `.wh.NAME` for stratafs, a 0/0 character device for the kernel.
    fs::File::create(a.join("aufs/.wh.hide-me")).unwrap();
    mknod(&k.join("aufs/hide-me"), libc::S_IFCHR, 0);
    fs::File::create(a.join(".wh.gone-too")).unwrap();
    fs::create_dir_all(a.join("kinds")).unwrap();
    fs::File::create(a.join("kinds/.wh.dangling")).unwrap();
    fs::create_dir_all(k.join("kinds")).unwrap();
    mknod(&k.join("kinds/dangling"), libc::S_IFCHR, 0);
    // Opaque: `.wh..wh..opq` for stratafs, the xattr for the kernel.
    fs::File::create(a.join("aufs/opq/.wh..wh..opq")).unwrap();
    set_xattr(&k.join("aufs/opq"), "trusted.overlay.opaque", b"y");
    // The kernel's xattr whiteouts (6.7+): both get the same, the kernel's own format.
    for l in [&a, &k] {
        set_xattr(&l.join("xwh"), "trusted.overlay.opaque", b"x");
        fs::File::create(l.join("xwh/hide-me-too")).unwrap();
        set_xattr(&l.join("xwh/hide-me-too"), "trusted.overlay.whiteout", b"");
    }
    stratafs_times(&a);
    stratafs_times(&k);
    (a, k)
}

#[test]
fn kernel_made_and_aufs_layers_read_as_the_kernel_reads_them() {
    let s = Scratch::new("dr");
    let (l1, l2, l3) = kernel_layers(&s);
    let l0 = kernel_redirect_metacopy_layer(&s, &[&l1, &l2, &l3]);
    let (aufs, aufs_k) = aufs_layers(&s);
    // The kernel really wrote its formats into the layers used here.
    let st = fs::symlink_metadata(l2.join("gone-file")).unwrap();
    assert!(
        st.file_type().is_char_device_like() && st.rdev() == 0,
        "kernel whiteout in l2"
    );
    let dir = sys::open_host_dir(&l2).unwrap();
    assert_eq!(
        xattr::get(dir.as_fd(), c"opaque-me", c"trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..]),
        "kernel opaque dir in l2"
    );
    let dir0 = sys::open_host_dir(&l0).unwrap();
    assert!(
        xattr::get(dir0.as_fd(), c"moved-dst", c"trusted.overlay.redirect")
            .unwrap()
            .is_some()
    );
    assert!(
        xattr::get(dir0.as_fd(), c"meta-big", c"trusted.overlay.metacopy")
            .unwrap()
            .is_some()
    );

    let km = s.dir("km");
    let sm = s.dir("sm");
    let kview = {
        let _k = Kernel::mount(
            &Stack {
                lowers: vec![&aufs_k, &l0, &l1, &l2, &l3],
                upper: None,
            },
            "redirect_dir=follow,metacopy=on",
            &km,
        );
        snapshot(&km)
    };
    let sview = {
        let _m = Strata::mount(
            &Stack {
                lowers: vec![&aufs, &l0, &l1, &l2, &l3],
                upper: None,
            },
            "",
            &sm,
        );
        snapshot(&sm)
    };
    assert!(
        kview.len() >= 59_000,
        "the stack shows {} entries",
        kview.len()
    );
    assert!(
        kview.contains_key(b"moved-dst/inner/data".as_slice()),
        "redirect followed"
    );
    assert!(!kview.contains_key(b"aufs/hide-me".as_slice()));
    assert_same("read-only stack, kernel vs stratafs", &kview, &sview);

    // The same stack under an empty upper.
    let (ku, kw, su, sw) = (s.dir("ku"), s.dir("kw"), s.dir("su"), s.dir("sw"));
    // The mount root shows the upper directory's own times: make the two uppers' equal.
    stratafs_times(&ku);
    stratafs_times(&su);
    let kview2 = {
        let _k = Kernel::mount(
            &Stack {
                lowers: vec![&aufs_k, &l0, &l1, &l2, &l3],
                upper: Some((&ku, &kw)),
            },
            "redirect_dir=on,metacopy=on",
            &km,
        );
        snapshot(&km)
    };
    let sview2 = {
        let _m = Strata::mount(
            &Stack {
                lowers: vec![&aufs, &l0, &l1, &l2, &l3],
                upper: Some((&su, &sw)),
            },
            "",
            &sm,
        );
        snapshot(&sm)
    };
    assert_same(
        "stack under an empty upper, kernel vs stratafs",
        &kview2,
        &sview2,
    );
}

trait CharDevLike {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevLike for fs::FileType {
    fn is_char_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_char_device(self)
    }
}

#[test]
fn the_comparison_finds_a_difference() {
    // The differential tests are only worth something if the comparison can fail.
    let s = Scratch::new("cmp");
    let a = s.dir("a");
    fs::write(a.join("f"), b"one").unwrap();
    fs::create_dir(a.join("d")).unwrap();
    let before = snapshot(&a);
    assert!(diff(&before, &snapshot(&a)).is_empty());
    fs::write(a.join("f"), b"two").unwrap();
    assert_eq!(diff(&before, &snapshot(&a)).len(), 1, "content change");
    set_xattr(&a.join("d"), "user.x", b"1");
    fs::write(a.join("new"), b"").unwrap();
    // content of f, xattr of d, the new entry, and the root's mtime that creating it moved
    assert_eq!(
        diff(&before, &snapshot(&a)).len(),
        4,
        "content, xattr, extra entry, parent mtime"
    );
}

fn big_dir_mount(s: &Scratch) -> (PathBuf, PathBuf) {
    let l = s.dir("l");
    let big = l.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..BIG_DIR_ENTRIES {
        fs::File::create(big.join(format!("e{i:06}"))).unwrap();
    }
    (l, s.dir("m"))
}

#[test]
fn readdir_offsets_stay_valid_and_d_ino_is_st_ino() {
    let s = Scratch::new("off");
    let (l, m) = big_dir_mount(&s);
    let _mnt = Strata::mount(
        &Stack {
            lowers: vec![&l],
            upper: None,
        },
        "",
        &m,
    );
    let dir = sys::openat(
        sys::open_host_dir(&m).unwrap().as_fd(),
        c"big",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    // Read about half, remember the position (telldir), read the rest.
    let mut first_half = Vec::new();
    let mut pos = 0i64;
    while first_half.len() < BIG_DIR_ENTRIES / 2 {
        let page = sys::read_dir_page(dir.as_fd(), 4096).unwrap();
        assert!(!page.is_empty(), "directory ended early");
        for (e, off) in page {
            first_half.push(e);
            pos = off;
        }
    }
    let read_rest = || {
        let mut rest = Vec::new();
        loop {
            let page = sys::read_dir_page(dir.as_fd(), 32768).unwrap();
            if page.is_empty() {
                return rest;
            }
            rest.extend(page.into_iter().map(|(e, _)| e.name));
        }
    };
    let rest1 = read_rest();
    // seekdir back and read again: the same entries in the same order.
    sys::lseek(dir.as_fd(), pos, libc::SEEK_SET).unwrap();
    let rest2 = read_rest();
    assert_eq!(
        rest1, rest2,
        "seekdir to a telldir position gives the same entries"
    );
    let names: HashSet<OsString> = first_half
        .iter()
        .map(|e| e.name.clone())
        .chain(rest1.iter().cloned())
        .collect();
    assert_eq!(
        names.len(),
        BIG_DIR_ENTRIES + 2,
        "every entry once, plus . and .."
    );
    // d_ino == st_ino, and numbers are unique.
    let mut inos = BTreeMap::new();
    for e in first_half
        .iter()
        .filter(|e| e.name.as_bytes()[0] == b'e')
        .step_by(97)
    {
        let st = fs::symlink_metadata(m.join("big").join(&e.name)).unwrap();
        assert_eq!(e.ino, st.ino(), "d_ino vs st_ino for {:?}", e.name);
        assert!(
            inos.insert(st.ino(), e.name.clone()).is_none(),
            "duplicate st_ino {}",
            st.ino()
        );
    }
    let dev = fs::metadata(&m).unwrap().dev();
    assert_eq!(
        fs::symlink_metadata(m.join("big/e000001")).unwrap().dev(),
        dev,
        "one st_dev for the mount"
    );
}

#[test]
fn name_and_path_limits() {
    let s = Scratch::new("lim");
    let l = s.dir("l");
    // A relative path just under PATH_MAX: 19 components of 200 bytes and a short leaf.
    let mut deep = l.clone();
    let mut rel = Vec::new();
    for i in 0..19 {
        let comp = format!("{i:02}{}", "p".repeat(198));
        deep.push(&comp);
        rel.extend_from_slice(comp.as_bytes());
        rel.push(b'/');
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"deep\n").unwrap();
    rel.extend_from_slice(b"leaf");
    assert!(
        rel.len() > 3800 && rel.len() < 4095,
        "relative path of {} bytes",
        rel.len()
    );
    let m = s.dir("m");
    let _mnt = Strata::mount(
        &Stack {
            lowers: vec![&l],
            upper: None,
        },
        "",
        &m,
    );
    let root = sys::open_host_dir(&m).unwrap();
    let st = sys::fstatat(root.as_fd(), &CString::new(rel).unwrap())
        .expect("stat of a path just under PATH_MAX");
    assert_eq!(st.st_size, 5);
    let long = CString::new(vec![b'n'; 256]).unwrap();
    let e = sys::fstatat(root.as_fd(), &long).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "256-byte name");
    let ok = CString::new(vec![b'n'; 255]).unwrap();
    assert_eq!(
        sys::fstatat(root.as_fd(), &ok).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn one_hundred_lower_layers() {
    let s = Scratch::new("l100");
    let layers: Vec<PathBuf> = (0..100).map(|i| s.dir(&format!("{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        fs::write(l.join(format!("own-{i:03}")), format!("{i}\n")).unwrap();
        fs::create_dir_all(l.join("shared")).unwrap();
        fs::write(l.join("shared").join(format!("f{i:03}")), b"x").unwrap();
        fs::write(l.join("shared/top"), format!("from layer {i}\n")).unwrap();
        if i % 10 == 5 {
            // A whiteout every ten layers hides the layer below's own file.
            mknod(&l.join(format!("own-{:03}", i + 1)), libc::S_IFCHR, 0);
        }
    }
    stratafs_times(&s.0);
    let lowers: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let (km, sm) = (s.dir("km"), s.dir("sm"));
    let kview = {
        let _k = Kernel::mount(
            &Stack {
                lowers: lowers.clone(),
                upper: None,
            },
            "",
            &km,
        );
        snapshot(&km)
    };
    let sview = {
        let _m = Strata::mount(
            &Stack {
                lowers,
                upper: None,
            },
            "",
            &sm,
        );
        snapshot(&sm)
    };
    assert_eq!(
        fs::read(sm.parent().unwrap().join("0/shared/top")).unwrap(),
        b"from layer 0\n"
    );
    assert!(kview.len() > 190);
    assert_same("100 lower layers, kernel vs stratafs", &kview, &sview);
}

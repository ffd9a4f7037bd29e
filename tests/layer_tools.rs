//! The offline layer tools (`stratafs check`, `export`, `merge`) on layers written by the
//! kernel overlayfs itself (`redirect_dir=on,metacopy=on`) and by stratafs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{bin, Kernel, Scratch, Stack, Strata};

fn sh(cmd: &str, dir: &Path) {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lower with files, directories, a big file and hard links.
fn make_lower(s: &Scratch, tag: &str) -> PathBuf {
    let l = s.dir(tag);
    sh(
        "mkdir -p d/sub gone mvd/inner same keep/deep && echo a > f && echo b > d/x && \
         echo c > gone/y && echo i > mvd/inner/z && echo s > same/s && echo k > keep/deep/k && \
         dd if=/dev/urandom of=big bs=64k count=8 status=none && echo h > hl && ln hl hl2 && \
         ln -s f sym && mkfifo fifo && setfattr -n user.lower -v yes keep",
        &l,
    );
    l
}

/// The operations of the issue, through a mount at `m`: rm, rm -rf dir, mkdir over a
/// removed dir (opaque), mv of a lower dir (redirect), chmod of a big lower file
/// (metacopy), hard links, setcap/setfattr.
const OPS: &str = "rm f && rm -rf gone && rm -rf d && mkdir d && echo new > d/n && \
    mv mvd mvd2 && chmod 600 big && ln hl hl3 && echo new > newfile && ln newfile newlink && \
    setfattr -n user.x -v 1 same/s && setcap cap_net_raw+ep same/s && echo more >> keep/deep/k && \
    mkdir -p brand/new && echo n > brand/new/file && rm fifo";

const KOPTS: &str = "redirect_dir=on,metacopy=on,index=off";

/// A layer written by the kernel overlayfs: (lower, upper, workdir).
fn kernel_layer(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let l = make_lower(s, "lower");
    let (u, w, m) = (s.dir("upper"), s.dir("work"), s.dir("kmnt"));
    let k = Kernel::mount(&Stack::one(&l, &u, &w), KOPTS, &m);
    sh(OPS, &m);
    drop(k);
    (l, u, w)
}

/// The same operations through stratafs (`metacopy=on`).
fn strata_layer(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let l = make_lower(s, "slower");
    let (u, w, m) = (s.dir("supper"), s.dir("swork"), s.dir("smnt"));
    let st = Strata::mount(&Stack::one(&l, &u, &w), "metacopy=on", &m);
    // stratafs refuses hard links of metacopy files (EXDEV-free copy-up first): link a
    // fully copied-up one.
    sh(&OPS.replace("ln hl hl3", "echo h2 >> hl && ln hl hl3"), &m);
    drop(st);
    (l, u, w)
}

fn check(u: &Path, w: &Path, l: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "check",
        u.to_str().unwrap(),
        "--workdir",
        w.to_str().unwrap(),
        "--lower",
        l.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    run(&a)
}

/// The kernel overlayfs's view of a stack, without the directory link counts (merged
/// directories report 1).
fn kernel_view(
    s: &Scratch,
    l: &Path,
    u: &Path,
    tag: &str,
) -> std::collections::BTreeMap<Vec<u8>, common::Entry> {
    let w = s.dir(&format!("{tag}.w"));
    let m = s.dir(&format!("{tag}.m"));
    let k = Kernel::mount(&Stack::one(l, u, &w), KOPTS, &m);
    let mut snap = common::snapshot(&m);
    drop(k);
    for e in snap.values_mut() {
        e.dir_nlink = None;
    }
    snap
}

#[test]
fn check_passes_clean_kernel_and_stratafs_layers() {
    let s = Scratch::new("lt-clean");
    for (l, u, w) in [kernel_layer(&s), strata_layer(&s)] {
        let o = check(&u, &w, &l, &[]);
        assert!(o.status.success(), "{}: {}", u.display(), text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "clean\n");
        // Without lowers: only what the upper shows, and the report says so.
        let o = run(&["check", u.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("not judged"), "{}", text(&o));
    }
}

#[test]
fn check_reports_and_repairs_planted_damage() {
    let s = Scratch::new("lt-damage");
    let (l, u, w) = kernel_layer(&s);
    // Damage --repair may fix without changing the view.
    sh(
        "mknod nothere c 0 0 && mkdir -p brand/hollow && setfattr -n trusted.overlay.opaque -v y brand/hollow && \
         mkdir -p keep/odd && setfattr -n trusted.overlay.opaque -v z keep/odd && \
         setfattr -x trusted.overlay.impure same && \
         mknod cdev c 1 3 && setfattr -n trusted.overlay.opaque -v y cdev && \
         setfattr -n trusted.overlay.impure -v n d",
        &u,
    );
    sh("echo x > work/'#sfs.1.2' && mkdir work/'#sfs.1.3'", &w);
    let damaged = kernel_view(&s, &l, &u, "damaged");
    let o = check(&u, &w, &l, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for want in [
        "/nothere: whiteout hides nothing",
        "/brand/hollow: opaque directory hides nothing",
        "/keep/odd: opaque marker with invalid value \"z\"",
        "/same: holds entries with a recorded origin but has no impure marker",
        "/cdev: opaque marker on a non-directory",
        "/d: impure marker with invalid value \"n\"",
        "work/#sfs.1.2: left-over staging entry",
        "work/#sfs.1.3: left-over staging entry",
        "8 problems",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    assert_eq!(t.lines().count(), 9, "{t}");
    let o = check(&u, &w, &l, &["--repair"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("8 problems, 8 repaired, 0 left"), "{t}");
    let o = check(&u, &w, &l, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "clean\n");
    assert!(!w.join("work/#sfs.1.3").exists() && !u.join("nothere").exists());
    // The repairs changed nothing the mount shows.
    let after = kernel_view(&s, &l, &u, "after");
    common::assert_same("damaged vs repaired", &damaged, &after);

    // Damage only reported: the view would change, or the data is gone.
    sh(
        "mkdir esc && setfattr -n trusted.overlay.redirect -v /../etc esc && \
         mkdir -p brand/loop && setfattr -n trusted.overlay.redirect -v /brand brand/loop && \
         mkdir dang && setfattr -n trusted.overlay.redirect -v /no/such dang && \
         truncate -s 100 nodata && setfattr -n trusted.overlay.metacopy nodata && \
         setfattr -n trusted.overlay.origin -v 0x0102 newlink && \
         touch badmc && truncate -s 5 badmc && setfattr -n trusted.overlay.metacopy -v 0x07 badmc",
        &u,
    );
    let o = check(&u, &w, &l, &["--repair"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for want in [
        "/esc: redirect \"/../etc\" is invalid: has a . or .. component",
        "/brand/loop: redirect to \"/brand\" points at itself or an ancestor (a loop)",
        "/dang: redirect to \"/no/such\" names nothing below",
        "/nodata: metacopy file without data in any lower",
        "/newlink: origin marker is not a valid file handle",
        "/badmc: metacopy marker with an invalid value",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    assert!(!t.contains("repaired:"), "{t}");
    assert!(u.join("esc").exists() && u.join("nodata").exists());
}

#[test]
fn check_repair_refuses_a_mounted_upper() {
    let s = Scratch::new("lt-busy");
    let (l, u, w) = kernel_layer(&s);
    let m = s.dir("busy");
    let st = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let o = check(&u, &w, &l, &["--repair"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert_eq!(t.lines().count(), 1, "{t}");
    assert!(t.contains("in use"), "{t}");
    drop(st);
    let m2 = s.dir("busyk");
    let w2 = s.dir("w2");
    let k = Kernel::mount(&Stack::one(&l, &u, &w2), KOPTS, &m2);
    let o = check(&u, &w2, &l, &["--repair"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("overlay mount on"), "{}", text(&o));
    drop(k);
}

#[test]
fn a_mount_point_named_like_a_subcommand_still_mounts() {
    let s = Scratch::new("lt-cli");
    let l = s.dir("l");
    fs::write(l.join("f"), b"x").unwrap();
    let m = s.dir("check");
    let o = Command::new(bin())
        .arg("-o")
        .arg(format!("lowerdir={}", l.display()))
        .arg("check")
        .current_dir(&s.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mounted = common::mount_type(&m);
    let _ = Command::new("umount").arg(&m).status();
    assert!(mounted.is_some_and(|t| t.starts_with("fuse.stratafs")));
    // As the first argument it is the tool.
    let o = run(&["check", "--help"]);
    assert!(o.status.success() && text(&o).contains("usage: stratafs check"));
    let _ = fs::metadata(&m).map(|m| m.ino());
}

fn export(u: &Path, l: &Path, out: &Path) {
    let o = run(&[
        "export",
        u.to_str().unwrap(),
        l.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// `tar -tv` lines as GNU tar reads the archive: "TYPE+MODE SIZE PATH[ -> / link to …]".
fn listing(tar: &Path) -> Vec<String> {
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[2], f[5..].join(" "))
        })
        .collect()
}

#[test]
fn export_writes_whiteouts_redirects_metacopy_links_and_xattrs() {
    let s = Scratch::new("lt-export");
    for (tag, (l, u, _w)) in [("kernel", kernel_layer(&s)), ("stratafs", strata_layer(&s))] {
        let out = s.path(&format!("{tag}.tar"));
        export(&u, &l, &out);
        let got = listing(&out);
        let big = fs::metadata(l.join("big")).unwrap().len();
        let mut want = vec![
            format!("-rw------- {big} big"),
            "drwxr-xr-x 0 d/".into(),
            "-rw-r--r-- 0 d/.wh..wh..opq".into(),
            "-rw-r--r-- 4 d/n".into(),
            "-rw-r--r-- 0 .wh.f".into(),
            "-rw-r--r-- 0 .wh.fifo".into(),
            "-rw-r--r-- 0 .wh.gone".into(),
            "-rw-r--r-- 0 .wh.mvd".into(),
            "drwxr-xr-x 0 mvd2/".into(),
            "-rw-r--r-- 0 mvd2/.wh..wh..opq".into(),
            "drwxr-xr-x 0 mvd2/inner/".into(),
            "-rw-r--r-- 2 mvd2/inner/z".into(),
            "-rw-r--r-- 4 newfile".into(),
            "hrw-r--r-- 0 newlink link to newfile".into(),
            "drwxr-xr-x 0 same/".into(),
            "-rw-r--r-- 2 same/s".into(),
            "drwxr-xr-x 0 keep/".into(),
            "drwxr-xr-x 0 keep/deep/".into(),
            "-rw-r--r-- 7 keep/deep/k".into(),
            "drwxr-xr-x 0 brand/".into(),
            "drwxr-xr-x 0 brand/new/".into(),
            "-rw-r--r-- 2 brand/new/file".into(),
        ];
        if tag == "kernel" {
            // The kernel makes a new directory in a merged one opaque.
            want.push("-rw-r--r-- 0 brand/.wh..wh..opq".into());
            want.push("-rw-r--r-- 2 hl".into());
            want.push("hrw-r--r-- 0 hl3 link to hl".into());
        } else {
            want.push("-rw-r--r-- 5 hl".into());
            want.push("hrw-r--r-- 0 hl3 link to hl".into());
        }
        let mut g = got.clone();
        g.sort();
        want.sort();
        assert_eq!(g, want, "{tag}: {got:#?}");
        let raw = fs::read(&out).unwrap();
        let has = |n: &[u8]| raw.windows(n.len()).any(|w| w == n);
        assert!(has(b"SCHILY.xattr.security.capability="), "{tag}");
        assert!(has(b"SCHILY.xattr.user.x=1\n"), "{tag}");
        assert!(has(b"SCHILY.xattr.user.lower=yes\n"), "{tag}");
        assert!(!has(b"overlay."), "{tag}: an overlay marker in the layer");
        // The metacopy file's data came from the lower.
        let x = s.dir(&format!("{tag}.x"));
        sh(&format!("tar -xf {} big", out.display()), &x);
        assert_eq!(
            fs::read(x.join("big")).unwrap(),
            fs::read(l.join("big")).unwrap()
        );
    }
}

/// The layer imported by podman (`podman load` of a docker-archive: the lower as the base
/// layer, written by GNU tar, and the exported layer on top) equals what the kernel
/// overlayfs mount of the same stack shows, entry by entry.
#[test]
#[cfg_attr(not(have = "podman"), ignore = "needs podman")]
fn export_imported_by_podman_equals_the_mount() {
    let s = Scratch::new("lt-podman");
    for (tag, (l, u, _w)) in [("kernel", kernel_layer(&s)), ("stratafs", strata_layer(&s))] {
        let a = s.dir(&format!("{tag}.archive"));
        export(&u, &l, &a.join("layer.tar"));
        sh(
            &format!(
                "tar --xattrs --xattrs-include='*' --numeric-owner -C {} -cf base.tar . && \
                 A=$(sha256sum base.tar | cut -d' ' -f1) && B=$(sha256sum layer.tar | cut -d' ' -f1) && \
                 printf '{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:%s\",\"sha256:%s\"]}}}}' $A $B > config.json && \
                 printf '[{{\"Config\":\"config.json\",\"RepoTags\":[\"localhost/lt-{tag}:latest\"],\"Layers\":[\"base.tar\",\"layer.tar\"]}}]' > manifest.json && \
                 tar -cf ../{tag}.docker.tar manifest.json config.json base.tar layer.tar",
                l.display()
            ),
            &a,
        );
        let root = s.dir(&format!("{tag}.proot"));
        let runroot = s.dir(&format!("{tag}.prun"));
        let podman = |args: &[&str]| {
            let o = Command::new("podman")
                .arg("--root")
                .arg(&root)
                .arg("--runroot")
                .arg(&runroot)
                .args(["--storage-driver", "vfs", "--runtime", "runc"])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "podman {args:?}: {}", text(&o));
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        podman(&[
            "load",
            "-i",
            s.path(&format!("{tag}.docker.tar")).to_str().unwrap(),
        ]);
        let img = PathBuf::from(podman(&[
            "image",
            "mount",
            &format!("localhost/lt-{tag}:latest"),
        ]));
        let mut imported = common::snapshot(&img);
        podman(&["image", "unmount", "-a"]);
        let mut shown = kernel_view(&s, &l, &u, tag);
        for snap in [&mut imported, &mut shown] {
            snap.remove(&b""[..]); // the root: the base image's attributes
            for e in snap.values_mut() {
                e.dir_nlink = None;
            }
        }
        common::assert_same(&format!("{tag}: mount vs podman import"), &shown, &imported);
        podman(&["rmi", "-a", "-f"]);
    }
}

/// What the kernel overlayfs shows of `l` alone (under an empty upper: the kernel wants
/// two lowers for a mount without upper).
fn alone_view(
    s: &Scratch,
    l: &Path,
    tag: &str,
) -> std::collections::BTreeMap<Vec<u8>, common::Entry> {
    let empty = s.dir(&format!("{tag}.empty"));
    kernel_view(s, l, &empty, &format!("{tag}.alone"))
}

#[test]
fn merge_folds_the_upper_into_the_lower() {
    let s = Scratch::new("lt-merge");
    for (tag, (l, u, w)) in [("kernel", kernel_layer(&s)), ("stratafs", strata_layer(&s))] {
        let stack = kernel_view(&s, &l, &u, &format!("{tag}.stack"));
        let o = run(&[
            "merge",
            u.to_str().unwrap(),
            l.to_str().unwrap(),
            "--workdir",
            w.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{tag}: {}", text(&o));
        assert!(text(&o).starts_with("merged: "), "{}", text(&o));
        let mut merged = alone_view(&s, &l, tag);
        // A mount shows its top layer's root: compare the lower's own root instead.
        let mut stack = stack;
        let root = stack.remove(&b""[..]).unwrap();
        merged.remove(&b""[..]);
        let lm = fs::metadata(&l).unwrap();
        assert_eq!(
            (lm.mtime(), lm.mtime_nsec(), lm.mode() & 0o7777),
            (root.mtime.0, root.mtime.1, root.mode),
            "{tag}: root"
        );
        common::assert_same(&format!("{tag}: stack vs merged lower"), &stack, &merged);
        // No staging directory or overlay marker left in the lower.
        assert!(!fs::read_dir(&l).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".stratafs-merge")));
        let o = Command::new("getfattr")
            .args(["-R", "-d", "-m", "overlay"])
            .arg(&l)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "{tag}: {}",
            text(&o)
        );
        // The directory itself (not only the mount) holds it: hard links stay links.
        assert_eq!(
            fs::metadata(l.join("newfile")).unwrap().ino(),
            fs::metadata(l.join("newlink")).unwrap().ino()
        );
    }
}

#[test]
fn merge_is_refused_while_mounted() {
    let s = Scratch::new("lt-merge-busy");
    let (l, u, w) = kernel_layer(&s);
    let before = common::snapshot(&l);
    let m = s.dir("m");
    let args = |w: &Path| {
        run(&[
            "merge",
            u.to_str().unwrap(),
            l.to_str().unwrap(),
            "--workdir",
            w.to_str().unwrap(),
        ])
    };
    let st = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let o = args(&w);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert_eq!(t.lines().count(), 1, "{t}");
    assert!(
        t.contains("in use") && t.contains(&m.display().to_string()),
        "{t}"
    );
    drop(st);
    // A read-only stratafs mount of the lower alone holds no lock: found by its command line.
    let st = Strata::mount(
        &Stack {
            lowers: vec![&l],
            upper: None,
        },
        "",
        &m,
    );
    let o = args(&w);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("lower") && t.contains("in use by the stratafs mount on"),
        "{t}"
    );
    drop(st);
    let w2 = s.dir("w2");
    let k = Kernel::mount(&Stack::one(&l, &u, &w2), KOPTS, &m);
    let o = args(&w2);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("in use by the overlay mount on"), "{t}");
    drop(k);
    // fuse-overlayfs: no lock, options not in mountinfo; found by its command line.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            if common::mount_type(self.0).is_some() {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
    }
    let w3 = s.dir("w3");
    let fo = Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w3.display()
        ))
        .arg(&m)
        .status()
        .unwrap();
    let guard = Unmount(&m);
    assert!(fo.success());
    let o = args(&w3);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("in use by the fuse-overlayfs mount on"), "{t}");
    drop(guard);
    common::assert_same("lower untouched", &before, &common::snapshot(&l));
}

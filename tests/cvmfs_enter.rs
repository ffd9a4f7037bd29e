//! CernVM-FS's `cvmfs_publish enter` flow (issue #24): the repository, a FUSE filesystem,
//! as the lower (here a squashfs image through squashfuse_ll), a scratch directory as the
//! upper, a publisher's changes made through the union, then the upper read directly by
//! CernVM-FS's publisher. Its rules (cvmfs/sync_union_overlayfs.cc), applied here by
//! [`publish`]:
//!
//! - a whiteout is a 0/0 character device, a `.wh.NAME` entry, or a symlink to
//!   `(overlay-whiteout)`;
//! - a directory is opaque when it has a `trusted.overlay.opaque` xattr (of any value: a
//!   kernel `x` would be taken as opaque too, so only `y` may be written);
//! - a regular file in the upper whose name exists in the repository with more than one
//!   link is a copy-up of a hard-linked file: the publisher aborts ("OverlayFS has
//!   copied-up a file with existing hardlinks in lowerdir");
//! - it follows no `overlay.redirect` (a renamed directory would lose its lower content).
//!
//! The same changes run on the kernel overlayfs (its defaults: index=off, redirect_dir=off;
//! it accepts the FUSE lower with a local upper) and on stratafs with `redirect_dir=off`;
//! the publisher must read the same change set from both uppers, and the merged views must
//! be the same. A hard-linked lower file written through one name: the kernel (index=off)
//! breaks the link, copying up that name alone as a file with one link while the other
//! name keeps the lower file; stratafs does the same, and the publisher refuses both
//! uppers alike. Without `redirect_dir=off`, stratafs would rename a lower directory with a
//! redirect that the publisher cannot follow: the last test shows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same, mount_type, sh_script, snapshot, Kernel, Scratch, Stack, Strata};

/// The repository as the publisher sees it: squashfuse_ll's mount of its image.
struct Repo {
    mnt: PathBuf,
    child: Option<Child>,
}

impl Repo {
    fn mount(s: &Scratch) -> Repo {
        let src = s.dir("repo-src");
        for d in [
            "sw/v1/bin",
            "sw/v1/lib",
            "data",
            "doc",
            "links",
            "rmdir/x",
            "mvdir/sub",
        ] {
            fs::create_dir_all(src.join(d)).unwrap();
        }
        for (f, data) in [
            ("sw/v1/bin/tool", "tool v1\n"),
            ("sw/v1/lib/a.so", "lib\n"),
            ("data/keep", "keep\n"),
            ("data/old", "old\n"),
            ("doc/readme", "readme\n"),
            ("links/a", "linked\n"),
            ("rmdir/x/y", "y\n"),
            ("mvdir/sub/f", "f\n"),
        ] {
            fs::write(src.join(f), data).unwrap();
        }
        fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
        let img = s.path("repo.sqfs");
        let st = Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-quiet", "-no-progress"])
            .status()
            .unwrap();
        assert!(st.success(), "mksquashfs");
        let mnt = s.dir("repo");
        let child = Command::new("squashfuse_ll")
            .arg("-f")
            .arg(&img)
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn squashfuse_ll");
        let start = Instant::now();
        while !mount_type(&mnt).is_some_and(|t| t.starts_with("fuse")) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "squashfuse_ll did not mount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Repo {
            mnt,
            child: Some(child),
        }
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        common::unmount_and_reap(&self.mnt, self.child.take());
    }
}

/// A publisher's transaction: adds, changes, deletes, a directory replaced, a tree added,
/// a lower directory and a lower file renamed (mv copies the directory on EXDEV).
const TRANSACTION: &str = "set -e
cd \"$1\"
echo new > data/new
echo changed >> data/keep
rm data/old
rm -r rmdir
mkdir rmdir
echo fresh > rmdir/z
mkdir -p sw/v2/bin
cp -p sw/v1/bin/tool sw/v2/bin/tool
mv mvdir moved
mv doc/readme doc/README
";

/// One name of a hard-linked repository file written through the union.
const HARD_LINK_WRITE: &str = "set -e
cd \"$1\"
echo more >> links/a
";

/// What the publisher reads from an upper (`scratch`) over the repository (`rdonly`): one
/// line per change, sorted; `error:` lines are the changes it aborts on.
fn publish(scratch: &Path, rdonly: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(scratch, rdonly, Path::new(""), &mut out);
    out
}

fn walk(scratch: &Path, rdonly: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    let dir = scratch.join(rel);
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let p = rel.join(&name);
        let md = fs::symlink_metadata(e.path()).unwrap();
        let ft = md.file_type();
        let shown = p.display();
        let whiteout = (ft.is_char_device() && md.rdev() == 0)
            || name.as_bytes().starts_with(b".wh.")
            || (ft.is_symlink()
                && fs::read_link(e.path()).unwrap().as_os_str() == "(overlay-whiteout)");
        if whiteout {
            let target = name
                .to_string_lossy()
                .trim_start_matches(".wh.")
                .to_string();
            out.insert(format!("delete {}", rel.join(target).display()));
            continue;
        }
        for x in xattr_names(&e.path()) {
            match x.as_str() {
                "trusted.overlay.opaque" => {
                    let v = xattr_value(&e.path(), &x);
                    out.insert(format!("opaque {shown} (value {v:?})"));
                }
                n if n.starts_with("trusted.overlay.redirect") => {
                    out.insert(format!(
                        "error: {shown}: a redirect, which the publisher does not follow"
                    ));
                }
                n if n.starts_with("trusted.overlay.metacopy") => {
                    out.insert(format!("error: {shown}: a metadata-only copy"));
                }
                _ => {}
            }
        }
        let below = fs::symlink_metadata(rdonly.join(&p)).ok();
        if ft.is_dir() {
            if below.as_ref().is_none_or(|b| !b.is_dir()) {
                out.insert(format!("add dir {shown}"));
            }
            walk(scratch, rdonly, &p, out);
            continue;
        }
        match below {
            Some(b) if !b.is_dir() && b.nlink() > 1 => {
                out.insert(format!(
                    "error: {shown}: copied up with {} links in the repository",
                    b.nlink()
                ));
            }
            Some(b) if !b.is_dir() => {
                out.insert(format!("change {shown}"));
            }
            _ => {
                out.insert(format!("add {shown}"));
            }
        }
        if md.nlink() > 1 {
            out.insert(format!(
                "warning: {shown}: {} links in the upper (broken up)",
                md.nlink()
            ));
        }
    }
}

fn xattr_names(p: &Path) -> Vec<String> {
    let o = Command::new("getfattr")
        .args(["--absolute-names", "-h", "-d", "-m", "-"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect()
}

fn xattr_value(p: &Path, name: &str) -> String {
    let o = Command::new("getfattr")
        .args(["--absolute-names", "-h", "--only-values", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The two runs happen at different moments: times set by them become a marker.
fn timeless(
    v: std::collections::BTreeMap<Vec<u8>, common::Entry>,
    since: i64,
) -> std::collections::BTreeMap<Vec<u8>, common::Entry> {
    v.into_iter()
        .map(|(k, mut e)| {
            if e.mtime.0 >= since {
                e.mtime = (-1, 0);
            }
            (k, e)
        })
        .collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1
}

fn run(script: &str, m: &Path) {
    let out = sh_script(script, m);
    assert!(out.is_empty(), "transaction output: {out}");
}

/// The expected change set of [`TRANSACTION`] (plus `extra`).
fn expected(extra: &[&str]) -> BTreeSet<String> {
    let mut v: BTreeSet<String> = [
        "add data/new",
        "change data/keep",
        "delete data/old",
        "opaque rmdir (value \"y\")",
        "add rmdir/z",
        "add dir sw/v2",
        "add dir sw/v2/bin",
        "add sw/v2/bin/tool",
        "delete mvdir",
        "add dir moved",
        "add dir moved/sub",
        "add moved/sub/f",
        "delete doc/readme",
        "add doc/README",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs `script` in a kernel overlay mount and in a stratafs mount (`redirect_dir=off`),
/// each over the repository with an upper of its own, and checks that the merged views
/// agree. Returns the kernel's upper, stratafs's upper and stratafs's merged view.
fn on_kernel_and_stratafs(
    s: &Scratch,
    repo: &Repo,
    script: &str,
) -> (
    PathBuf,
    PathBuf,
    std::collections::BTreeMap<Vec<u8>, common::Entry>,
) {
    let since = now();
    let (ku, kw, km) = (s.dir("k/u"), s.dir("k/w"), s.dir("k/m"));
    let (su, sw, sm) = (s.dir("s/u"), s.dir("s/w"), s.dir("s/m"));
    let kview = {
        let _k = Kernel::mount(&Stack::one(&repo.mnt, &ku, &kw), "", &km);
        run(script, &km);
        snapshot(&km)
    };
    let sview = {
        let m = Strata::mount(&Stack::one(&repo.mnt, &su, &sw), "redirect_dir=off", &sm);
        run(script, &sm);
        let v = snapshot(&sm);
        assert_eq!(m.unmount().map(|s| s.success()), Some(true));
        v
    };
    assert_same(
        "merged views, kernel vs stratafs",
        &timeless(kview, since),
        &timeless(sview.clone(), since),
    );
    (ku, su, sview)
}

#[test]
#[cfg_attr(
    not(all(have = "root", have = "squashfuse", have = "mksquashfs")),
    ignore = "needs root, squashfuse_ll, mksquashfs"
)]
fn publisher_reads_the_same_changes_from_stratafs_and_the_kernel() {
    let s = Scratch::new("cvmfs");
    let repo = Repo::mount(&s);
    let (ku, su, _) = on_kernel_and_stratafs(&s, &repo, TRANSACTION);
    let kernel = publish(&ku, &repo.mnt);
    let strata = publish(&su, &repo.mnt);
    assert_eq!(
        kernel,
        expected(&[]),
        "the kernel's upper as the publisher reads it"
    );
    assert_eq!(strata, kernel, "stratafs's upper as the publisher reads it");
}

#[test]
#[cfg_attr(
    not(all(have = "root", have = "squashfuse", have = "mksquashfs")),
    ignore = "needs root, squashfuse_ll, mksquashfs"
)]
fn hard_linked_repository_file_is_broken_up_as_by_the_kernel_and_refused_by_the_publisher() {
    let s = Scratch::new("cvmfs-links");
    let repo = Repo::mount(&s);
    let (ku, su, sview) = on_kernel_and_stratafs(&s, &repo, HARD_LINK_WRITE);
    for u in [&ku, &su] {
        // index=off: the written name alone is copied up, as a file with one link; the
        // other name still shows the repository's file.
        let a = fs::symlink_metadata(u.join("links/a")).unwrap();
        assert_eq!(a.nlink(), 1, "{}: links/a in the upper", u.display());
        assert_eq!(fs::read(u.join("links/a")).unwrap(), b"linked\nmore\n");
        assert!(
            !u.join("links/b").exists(),
            "{}: links/b copied up",
            u.display()
        );
    }
    let b = &sview[&b"links/b".to_vec()];
    assert_eq!(
        (b.size, b.dir_nlink),
        (Some(7), None),
        "links/b keeps the lower file"
    );
    let refused =
        BTreeSet::from(["error: links/a: copied up with 2 links in the repository".to_string()]);
    assert_eq!(publish(&ku, &repo.mnt), refused, "the kernel's upper");
    assert_eq!(publish(&su, &repo.mnt), refused, "stratafs's upper");
}

#[test]
#[cfg_attr(
    not(all(have = "root", have = "squashfuse", have = "mksquashfs")),
    ignore = "needs root, squashfuse_ll, mksquashfs"
)]
fn without_redirect_dir_off_a_renamed_lower_directory_is_a_redirect() {
    let s = Scratch::new("cvmfs-redirect");
    let repo = Repo::mount(&s);
    let (su, sw, sm) = (s.dir("s/u"), s.dir("s/w"), s.dir("s/m"));
    let m = Strata::mount(&Stack::one(&repo.mnt, &su, &sw), "", &sm);
    run(TRANSACTION, &sm);
    assert_eq!(m.unmount().map(|s| s.success()), Some(true));
    let got = publish(&su, &repo.mnt);
    assert!(
        got.contains("error: moved: a redirect, which the publisher does not follow"),
        "{got:?}"
    );
}

//! aufs's branch model (issue #22): branch permissions anywhere in the stack, several
//! writable branches, the create= and cpup= policies that place writes among them, `sum`,
//! ENOSPC on a full branch, and mode changes on a live mount. Every mount here is made with
//! aufs's `br=` syntax, as an aufs user writes it; what lands where is checked on the
//! branches themselves.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, Scratch, Strata};

/// A stratafs mount made from `-o OPTS` alone (`common::Strata`: unmounted and reaped on
/// drop).
struct Aufs {
    mnt: PathBuf,
    _strata: Strata,
}

impl Aufs {
    fn mount(opts: &str, mnt: &Path) -> Aufs {
        Aufs {
            mnt: mnt.to_path_buf(),
            _strata: Strata::mount_opts(opts, mnt),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// A tmpfs of `mib` MiB at `dir` (a branch of its own size); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path, mib: u64) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount tmpfs")
            .success();
        assert!(ok, "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn errno_of(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn write(p: &Path, s: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)?
        .write_all(s.as_bytes())
}

fn append(p: &Path, s: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(p)?
        .write_all(s.as_bytes())
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The textbook aufs example, verbatim: a read-only dir1 above a writable dir2.
#[test]
fn textbook_example() {
    let s = Scratch::new("aufs-textbook");
    let (d1, d2, m) = (s.dir("dir1"), s.dir("dir2"), s.dir("mnt"));
    fs::write(d1.join("file1"), "this is dir1\n").unwrap();
    fs::write(d2.join("file2"), "this is dir2\n").unwrap();
    let opts = format!("br={}=ro:{}=rw", d1.display(), d2.display());
    let a = Aufs::mount(&opts, &m);
    assert_eq!(names(&m), ["file1", "file2"]);
    // file1 is on a read-only branch with no writable branch above it.
    assert_eq!(errno_of(write(&a.p("file1"), "hello\n")), Some(libc::EROFS));
    assert_eq!(read(&d1.join("file1")), "this is dir1\n");
    assert_eq!(errno_of(fs::remove_file(a.p("file1"))), Some(libc::EROFS));
    // file2 is written in place on dir2.
    write(&a.p("file2"), "hello\n").unwrap();
    assert_eq!(read(&d2.join("file2")), "hello\n");
    assert_eq!(read(&a.p("file2")), "hello\n");
    // New entries go to the writable branch (tdp: the root is on both).
    write(&a.p("new"), "n\n").unwrap();
    fs::create_dir(a.p("newdir")).unwrap();
    assert_eq!(read(&d2.join("new")), "n\n");
    assert!(d2.join("newdir").is_dir() && !d1.join("new").exists());
    // Removing an entry of the writable branch with nothing below: gone, no whiteout.
    fs::remove_file(a.p("file2")).unwrap();
    assert!(!d2.join("file2").exists() && !d2.join(".wh.file2").exists());
    // The branch's private directory is not shown.
    assert!(d2.join(".wh..wh.orph").is_dir());
    assert_eq!(names(&m), ["file1", "new", "newdir"]);
}

/// A writable branch between two read-only ones: entries below it copy up to it, entries
/// above it are read-only, removals leave aufs whiteouts on it.
#[test]
fn writable_branch_in_the_middle() {
    let s = Scratch::new("aufs-middle");
    let (top, mid, bot, m) = (s.dir("top"), s.dir("mid"), s.dir("bot"), s.dir("m"));
    fs::write(top.join("t"), "top\n").unwrap();
    // `ro` (not `ro+wh`): an aufs whiteout on it hides nothing.
    fs::write(top.join(".wh.b"), "").unwrap();
    fs::write(bot.join("b"), "bottom\n").unwrap();
    fs::write(bot.join("both"), "bottom both\n").unwrap();
    fs::write(mid.join("both"), "mid both\n").unwrap();
    fs::create_dir_all(bot.join("deep/er")).unwrap();
    fs::write(bot.join("deep/er/f"), "deep\n").unwrap();
    let opts = format!(
        "br={}=ro:{}=rw+nolwh:{}=ro+wh",
        top.display(),
        mid.display(),
        bot.display()
    );
    let a = Aufs::mount(&opts, &m);
    // Above the writable branch: read-only.
    assert_eq!(errno_of(append(&a.p("t"), "x")), Some(libc::EROFS));
    // Below it: copied up to it, the lower untouched.
    append(&a.p("b"), "more\n").unwrap();
    assert_eq!(read(&mid.join("b")), "bottom\nmore\n");
    assert_eq!(read(&bot.join("b")), "bottom\n");
    append(&a.p("deep/er/f"), "x\n").unwrap();
    assert_eq!(read(&mid.join("deep/er/f")), "deep\nx\n");
    // A new file in a directory only below: the parents are made on the writable branch.
    write(&a.p("deep/er/new"), "new\n").unwrap();
    assert_eq!(read(&mid.join("deep/er/new")), "new\n");
    // Removal of an entry the writable branch has and a branch below too: aufs whiteout.
    assert_eq!(read(&a.p("both")), "mid both\n");
    fs::remove_file(a.p("both")).unwrap();
    assert!(!mid.join("both").exists());
    assert!(mid.join(".wh.both").is_file(), "an aufs whiteout on mid");
    // Each whiteout a file of its own (all that aufs's +nolwh asks: no hard links).
    assert_eq!(fs::metadata(mid.join(".wh.both")).unwrap().nlink(), 1);
    assert!(!a.p("both").exists());
    // Removal of an entry only below: the whiteout goes on the writable branch above it.
    fs::remove_file(a.p("deep/er/f")).unwrap();
    assert!(mid.join("deep/er/.wh.f").is_file());
    assert!(bot.join("deep/er/f").is_file());
    // A directory replacing a whiteout is opaque in aufs's format.
    fs::create_dir(a.p("both")).unwrap();
    assert!(!mid.join(".wh.both").exists());
    assert!(mid.join("both/.wh..wh..opq").exists());
    assert_eq!(names(&a.p("both")), Vec::<String>::new());
    assert_eq!(names(&m), ["b", "both", "deep", "t"]);
    drop(a);
    // What the branches hold reads the same after a remount.
    let a = Aufs::mount(&opts, &m);
    assert_eq!(names(&m), ["b", "both", "deep", "t"]);
    assert_eq!(names(&a.p("deep/er")), ["new"]);
}

/// Where the create= policies put new entries among two writable branches of different
/// sizes, and what a full branch does.
#[test]
fn create_policies_and_a_full_branch() {
    let s = Scratch::new("aufs-create");
    let (w1, w2, lo, m) = (s.dir("w1"), s.dir("w2"), s.dir("lo"), s.dir("m"));
    let _t1 = Tmpfs::new(&w1, 16);
    let _t2 = Tmpfs::new(&w2, 32);
    fs::create_dir(w2.join("only2")).unwrap();
    let br = format!(
        "br={}=rw:{}=rw:{}=ro",
        w1.display(),
        w2.display(),
        lo.display()
    );
    let on = |rel: &str| (w1.join(rel).exists(), w2.join(rel).exists());
    {
        // tdp (the default): the highest writable branch holding the parent.
        let a = Aufs::mount(&br, &m);
        write(&a.p("f"), "x").unwrap();
        write(&a.p("only2/g"), "x").unwrap();
        assert_eq!((on("f"), on("only2/g")), ((true, false), (false, true)));
        // A full branch: tdp keeps choosing it and the write fails with ENOSPC.
        let big = vec![7u8; 4 << 20];
        let mut full = false;
        for i in 0..8 {
            if fs::write(a.p(&format!("fill{i}")), &big).is_err() {
                full = true;
                break;
            }
        }
        assert!(full, "w1 (16 MiB) filled up");
        let e = fs::write(a.p("more"), &big).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(!w2.join("more").exists() || fs::metadata(w2.join("more")).unwrap().len() == 0);
        for i in 0..8 {
            let _ = fs::remove_file(a.p(&format!("fill{i}")));
        }
        let _ = fs::remove_file(a.p("more"));
    }
    {
        // rr: in turn, directories too.
        let a = Aufs::mount(&format!("{br},create=rr"), &m);
        for i in 0..10 {
            write(&a.p(&format!("rr{i}")), "x").unwrap();
        }
        let n1 = (0..10).filter(|i| on(&format!("rr{i}")).0).count();
        let n2 = (0..10).filter(|i| on(&format!("rr{i}")).1).count();
        assert_eq!((n1, n2), (5, 5));
        fs::create_dir(a.p("rd1")).unwrap();
        fs::create_dir(a.p("rd2")).unwrap();
        assert_ne!(on("rd1"), on("rd2"));
    }
    {
        // mfs: the most free space (w2, 32 MiB); once w2 has less free than w1, w1.
        let a = Aufs::mount(&format!("{br},create=mfs:0"), &m);
        write(&a.p("m1"), "x").unwrap();
        assert_eq!(on("m1"), (false, true));
        fs::write(w2.join("ballast"), vec![1u8; 24 << 20]).unwrap();
        write(&a.p("m2"), "x").unwrap();
        assert_eq!(on("m2"), (true, false));
        // A full branch under mfs: the write goes to the one with space.
        fs::write(a.p("m3"), vec![2u8; 12 << 20]).unwrap();
        assert_eq!(on("m3"), (true, false));
        fs::remove_file(w2.join("ballast")).unwrap();
    }
    {
        // pmfs: most free space among the branches holding the parent; mfsrr below LOW.
        let a = Aufs::mount(&format!("{br},create=pmfs:0"), &m);
        fs::write(w1.join("ballast"), vec![1u8; 1 << 20]).unwrap();
        fs::create_dir(w1.join("only1")).unwrap();
        write(&a.p("only1/p"), "x").unwrap();
        assert_eq!(on("only1/p"), (true, false));
        drop(a);
        let a = Aufs::mount(&format!("{br},create=mfsrr:1g:0"), &m);
        for i in 0..4 {
            write(&a.p(&format!("mr{i}")), "x").unwrap();
        }
        let n1 = (0..4).filter(|i| on(&format!("mr{i}")).0).count();
        assert_eq!(n1, 2, "both below LOW: round-robin");
        drop(a);
        // pmfsrr: among the branches holding the parent (only1: w1 only; the root: both),
        // round-robin once the most free is below LOW.
        let a = Aufs::mount(&format!("{br},create=pmfsrr:1g:0"), &m);
        for i in 0..4 {
            write(&a.p(&format!("pr{i}")), "x").unwrap();
            write(&a.p(&format!("only1/pr{i}")), "x").unwrap();
        }
        let n1 = (0..4).filter(|i| on(&format!("pr{i}")).0).count();
        assert_eq!(n1, 2, "below LOW: round-robin over both");
        assert!((0..4).all(|i| on(&format!("only1/pr{i}")) == (true, false)));
    }
}

/// The copy-up policies, on a lower file whose directory is on one writable branch or on
/// both.
#[test]
fn copy_up_policies() {
    let s = Scratch::new("aufs-cpup");
    let (w1, w2, lo, m) = (s.dir("w1"), s.dir("w2"), s.dir("lo"), s.dir("m"));
    for d in ["one", "both"] {
        fs::create_dir(lo.join(d)).unwrap();
        fs::write(lo.join(d).join("f"), "lower\n").unwrap();
    }
    fs::create_dir(w1.join("one")).unwrap();
    fs::create_dir(w1.join("both")).unwrap();
    fs::create_dir(w2.join("both")).unwrap();
    let br = format!(
        "br={}=rw:{}=rw:{}=ro",
        w1.display(),
        w2.display(),
        lo.display()
    );
    // (policy, where one/f goes, where both/f goes): 1 = w1, 2 = w2.
    for (policy, one, both) in [("tdp", 1, 1), ("bup", 1, 2), ("bu", 2, 2)] {
        let a = Aufs::mount(&format!("{br},cpup={policy}"), &m);
        for d in ["one", "both"] {
            append(&a.p(&format!("{d}/f")), "up\n").unwrap();
            assert_eq!(read(&a.p(&format!("{d}/f"))), "lower\nup\n", "{policy} {d}");
        }
        let at = |d: &str| {
            let (a1, a2) = (w1.join(d).join("f"), w2.join(d).join("f"));
            match (a1.exists(), a2.exists()) {
                (true, false) => 1,
                (false, true) => 2,
                other => panic!("{policy} {d}: {other:?}"),
            }
        };
        assert_eq!((at("one"), at("both")), (one, both), "cpup={policy}");
        assert_eq!(read(&lo.join("one/f")), "lower\n");
        drop(a);
        for d in ["one", "both"] {
            let _ = fs::remove_file(w1.join(d).join("f"));
            let _ = fs::remove_file(w2.join(d).join("f"));
        }
        let _ = fs::remove_dir(w2.join("one"));
    }
}

/// statfs with `sum` adds up the writable branches; without it, the highest one's.
#[test]
fn sum_shows_the_pool() {
    let s = Scratch::new("aufs-sum");
    let (w1, w2, m) = (s.dir("w1"), s.dir("w2"), s.dir("m"));
    let _t1 = Tmpfs::new(&w1, 16);
    let _t2 = Tmpfs::new(&w2, 32);
    let br = format!("br={}=rw:{}=rw", w1.display(), w2.display());
    let size = |p: &Path| {
        let o = Command::new("stat")
            .args(["-f", "-c", "%b %S"])
            .arg(p)
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let v: Vec<u64> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0] * v[1]) >> 20
    };
    {
        let _a = Aufs::mount(&br, &m);
        assert_eq!(size(&m), 16);
    }
    let _a = Aufs::mount(&format!("{br},sum"), &m);
    assert_eq!(size(&m), 48);
}

/// Renames: within a writable branch a rename there; a directory spread over branches,
/// or a destination shown from a branch above, EXDEV (mv(1) copies then).
#[test]
fn renames_across_branches() {
    let s = Scratch::new("aufs-rename");
    let (w1, w2, m) = (s.dir("w1"), s.dir("w2"), s.dir("m"));
    fs::write(w2.join("a"), "a\n").unwrap();
    fs::write(w1.join("top"), "top\n").unwrap();
    fs::create_dir(w1.join("d")).unwrap();
    fs::create_dir(w2.join("d")).unwrap();
    fs::write(w2.join("d/x"), "x\n").unwrap();
    let br = format!("br={}=rw:{}=rw", w1.display(), w2.display());
    let a = Aufs::mount(&br, &m);
    fs::rename(a.p("a"), a.p("b")).unwrap();
    assert!(w2.join("b").is_file() && !w2.join("a").exists() && !w1.join("b").exists());
    let e = fs::rename(a.p("b"), a.p("top")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    let e = fs::rename(a.p("d"), a.p("d2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    // mv(1) copies where rename(2) says EXDEV.
    let ok = Command::new("mv")
        .arg(a.p("d"))
        .arg(a.p("d2"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(read(&a.p("d2/x")), "x\n");
    assert!(!a.p("d").exists());
    // The removed directory went from both writable branches: no whiteout was needed.
    assert!(!w1.join("d").exists() && !w2.join("d").exists());
    assert!(!w1.join(".wh.d").exists());
}

/// mod: between ro and rw, and add: of a writable branch, on a running mount; an open file
/// keeps working across them.
#[test]
fn live_mode_changes() {
    let s = Scratch::new("aufs-live");
    let (u, b, c, m) = (s.dir("u"), s.dir("b"), s.dir("c"), s.dir("m"));
    fs::write(b.join("f"), "b\n").unwrap();
    fs::write(c.join("g"), "c\n").unwrap();
    let br = format!("br={}=rw:{}=ro", u.display(), b.display());
    let a = Aufs::mount(&br, &m);
    let branch = |op: String| {
        let o = Command::new(bin())
            .arg("branch")
            .arg(&m)
            .arg(&op)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{op}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let mut open = fs::File::open(a.p("f")).unwrap();
    branch(format!("mod:{}=rw", b.display()));
    append(&a.p("f"), "in place\n").unwrap();
    assert_eq!(read(&b.join("f")), "b\nin place\n", "written on b itself");
    assert!(!u.join("f").exists());
    let mut got = String::new();
    std::io::Read::read_to_string(&mut open, &mut got).unwrap();
    assert!(got.starts_with("b\n"), "the open file reads: {got:?}");
    branch(format!("mod:{}=ro", b.display()));
    append(&a.p("f"), "copied\n").unwrap();
    assert_eq!(read(&u.join("f")), "b\nin place\ncopied\n");
    assert_eq!(read(&b.join("f")), "b\nin place\n");
    branch(format!("append:{}=rw", c.display()));
    append(&a.p("g"), "in place\n").unwrap();
    assert_eq!(read(&c.join("g")), "c\nin place\n");
    assert_eq!(fs::metadata(a.p("g")).unwrap().nlink(), 1);
}

/// A kernel-shaped mount written in aufs's syntax (one writable branch on top, read-only
/// branches with whiteouts below) shows what the kernel overlayfs shows after the same
/// operations on copies of the same layers, and after a remount of each; only its
/// whiteouts are in aufs's format.
#[test]
fn kernel_shaped_aufs_mount_matches_the_kernel() {
    let s = Scratch::new("aufs-differential");
    let base = s.dir("base");
    fs::create_dir_all(base.join("d/sub")).unwrap();
    fs::write(base.join("d/sub/f"), "f\n").unwrap();
    fs::write(base.join("d/g"), "g\n").unwrap();
    fs::write(base.join("keep"), "keep\n").unwrap();
    fs::write(base.join("gone"), "gone\n").unwrap();
    fs::create_dir(base.join("empty")).unwrap();
    // Old fixed times on the layer (a copy-up must keep them); times the run sets differ
    // between the two runs and become a marker.
    common::sh_script("find \"$1\" -exec touch -h -d @1500000000 {} +", &base);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let norm = |v: std::collections::BTreeMap<Vec<u8>, common::Entry>| {
        v.into_iter()
            .map(|(k, mut e)| {
                if e.mtime.0 >= since {
                    e.mtime = (-1, 0);
                }
                (k, e)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let ops = "set -e; cd \"$1\"
        echo more >> keep; rm gone; rm -r d/sub; mkdir d/sub; echo new > d/sub/n
        mv d/g d/h; ln d/h hl; ln -s keep sl; chmod 600 keep; rmdir empty; mkdir empty
        echo x > empty/x; mkdir -p a/b/c; echo y > a/b/c/y; mv a z; touch -d @1000000 z/b/c/y";
    let run = |kernel: bool| {
        let tag = if kernel { "k" } else { "s" };
        let lower = s.path(&format!("{tag}-lower"));
        common::copy_tree(&base, &lower);
        let (u, w, m) = (
            s.dir(&format!("{tag}-u")),
            s.dir(&format!("{tag}-w")),
            s.dir(&format!("{tag}-m")),
        );
        let views = if kernel {
            let stack = common::Stack::one(&lower, &u, &w);
            let k = common::Kernel::mount(&stack, "", &m);
            common::sh_script(ops, &m);
            let v = norm(common::snapshot(&m));
            drop(k);
            let _k = common::Kernel::mount(&stack, "", &m);
            (v, norm(common::snapshot(&m)))
        } else {
            let opts = format!("br={}=rw:{}=ro+wh", u.display(), lower.display());
            let a = Aufs::mount(&opts, &m);
            common::sh_script(ops, &m);
            let v = norm(common::snapshot(&m));
            drop(a);
            let _a = Aufs::mount(&opts, &m);
            assert!(u.join(".wh.gone").is_file(), "an aufs whiteout for gone");
            (v, norm(common::snapshot(&m)))
        };
        views
    };
    let (k, st) = (run(true), run(false));
    common::assert_same("after the operations", &k.0, &st.0);
    common::assert_same("after a remount", &k.1, &st.1);
}

/// A file of a writable branch below the upper that gets a second name is still one file:
/// the node the kernel holds for its first name follows it through a rename (found by the
/// stress run with two writable branches: the renamed name gave ENOENT, the daemon's node
/// still naming the old place, as a read-only branch's hard link is one node per name).
#[test]
fn links_on_a_writable_lower_branch() {
    let s = Scratch::new("aufs-links");
    let (u, w2, m) = (s.dir("u"), s.dir("w2"), s.dir("m"));
    fs::write(w2.join("f"), "data\n").unwrap();
    let a = Aufs::mount(&format!("br={}=rw:{}=rw", u.display(), w2.display()), &m);
    let ino = fs::metadata(a.p("f")).unwrap().ino();
    assert_eq!(read(&a.p("f")), "data\n");
    fs::hard_link(a.p("f"), a.p("h")).unwrap();
    fs::rename(a.p("f"), a.p("g")).unwrap();
    assert_eq!(read(&a.p("g")), "data\n");
    append(&a.p("g"), "more\n").unwrap();
    assert_eq!(read(&a.p("h")), "data\nmore\n");
    let (g, h) = (
        fs::metadata(a.p("g")).unwrap(),
        fs::metadata(a.p("h")).unwrap(),
    );
    assert_eq!((g.ino(), h.ino(), g.nlink()), (ino, ino, 2));
    assert_eq!(read(&w2.join("g")), "data\nmore\n");
    assert!(!u.join("g").exists() && !w2.join("f").exists());
}

/// A directory on one writable branch below the upper is not merged: getattr shows its
/// own link count, as a lookup does (the stress run saw 1 from getattr, 2 after remount).
#[test]
fn a_directory_of_one_writable_lower_branch_is_not_merged() {
    let s = Scratch::new("aufs-dirnlink");
    let (u, w2, m) = (s.dir("u"), s.dir("w2"), s.dir("m"));
    fs::create_dir_all(w2.join("d/sub")).unwrap();
    fs::create_dir_all(u.join("both")).unwrap();
    fs::create_dir_all(w2.join("both")).unwrap();
    let opts = format!("br={}=rw:{}=rw,timeout=0", u.display(), w2.display());
    let a = Aufs::mount(&opts, &m);
    let d = fs::File::open(a.p("d")).unwrap();
    // fstat of an open directory is a GETATTR.
    assert_eq!(d.metadata().unwrap().nlink(), 3);
    assert_eq!(fs::metadata(a.p("d")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(a.p("both")).unwrap().nlink(), 1, "merged");
}

/// A rename of a file of a writable branch below the upper into a directory its new name
/// would not show from there (opaque on the branch above, or a whiteout of the name
/// above): EXDEV, as for a link, and the file stays where it was. (Renamed there, it
/// showed until the kernel's caches were dropped and then was gone from the view.)
#[test]
fn rename_from_a_lower_writable_branch_under_an_opaque_directory() {
    let s = Scratch::new("aufs-rename-opaque");
    let (u, w2, m) = (s.dir("u"), s.dir("w2"), s.dir("m"));
    fs::create_dir_all(u.join("op")).unwrap();
    fs::write(u.join("op/.wh..wh..opq"), "").unwrap();
    fs::create_dir_all(u.join("d")).unwrap();
    fs::create_dir_all(w2.join("d")).unwrap();
    fs::write(u.join("d/.wh.gone"), "").unwrap();
    fs::write(w2.join("f"), "f\n").unwrap();
    let a = Aufs::mount(&format!("br={}=rw:{}=rw", u.display(), w2.display()), &m);
    for to in ["op/f", "d/gone"] {
        let e = fs::rename(a.p("f"), a.p(to)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{to}");
    }
    assert_eq!(read(&a.p("f")), "f\n");
    assert!(!w2.join("op").exists() && !w2.join("d/gone").exists());
    // mv(1) copies instead: the file shows at its new name.
    let ok = Command::new("mv")
        .arg(a.p("f"))
        .arg(a.p("op/f"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(read(&a.p("op/f")), "f\n");
    assert!(u.join("op/f").is_file() && !a.p("f").exists());
}

/// A lower directory copied to two writable branches, in either order, keeps one number:
/// its original's (a number that changed when a copy was made between the top copy and
/// the original made the kernel meet one directory under two numbers; the stress run over
/// a pool then got ESTALE from the kernel).
#[test]
fn a_directory_copied_to_several_branches_keeps_its_number() {
    let s = Scratch::new("aufs-dirnumber");
    let (u, w2, lo, m) = (s.dir("u"), s.dir("w2"), s.dir("lo"), s.dir("m"));
    fs::create_dir(lo.join("d")).unwrap();
    fs::write(lo.join("d/f"), "f\n").unwrap();
    let lower_ino = fs::metadata(lo.join("d")).unwrap().ino();
    let opts = format!(
        "br={}=rw:{}=rw:{}=ro,create=rr",
        u.display(),
        w2.display(),
        lo.display()
    );
    let a = Aufs::mount(&opts, &m);
    let ino = |a: &Aufs| fs::metadata(a.p("d")).unwrap().ino() & ((1 << 56) - 1);
    assert_eq!(ino(&a), lower_ino);
    for i in 0..4 {
        write(&a.p(&format!("d/n{i}")), "x").unwrap();
    }
    assert!(
        u.join("d").is_dir() && w2.join("d").is_dir(),
        "copies on both"
    );
    drop(a);
    // Read afresh (no cached number): the original's, whichever copy came first.
    let a = Aufs::mount(&opts, &m);
    assert_eq!(ino(&a), lower_ino);
    assert_eq!(names(&a.p("d")), ["f", "n0", "n1", "n2", "n3"]);
}

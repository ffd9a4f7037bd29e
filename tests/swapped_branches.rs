//! Branches changed behind the daemon's back while mounted, the way a rootless user who
//! owns the upper can: a directory of the upper replaced by a symlink to a canary
//! directory outside every branch, the workdir's staging directory replaced the same way,
//! and an upper parent appearing as such a symlink between the lookup of a lower file and
//! its copy-up. Every operation through the mount then either works inside the branches or
//! returns an errno; nothing in the canary is created, written, chmodded, chowned or
//! removed (names, inode numbers, sizes, contents, mtimes and ctimes compared), and the
//! daemon keeps serving.
//!
//! A lower directory swapped for such a symlink is never followed either: copy-ups read
//! the directory the daemon holds, never the canary.
//!
//! The mount point sits one level deeper than the branches, so the relative link
//! `../canary` resolves to the canary only from inside the upper: if the kernel follows
//! the link as shown through the mount, it finds nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Scratch, Stack, Strata};

type Snap = BTreeMap<PathBuf, (u64, u32, u32, u32, u64, (i64, i64), (i64, i64), Vec<u8>)>;

/// Everything about a directory tree that a stray write, chmod, chown, create or unlink
/// would change.
fn canary_snap(root: &Path) -> Snap {
    fn walk(root: &Path, p: &Path, out: &mut Snap) {
        let md = fs::symlink_metadata(p).unwrap();
        let content = if md.is_file() {
            fs::read(p).unwrap()
        } else {
            Vec::new()
        };
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            (
                md.ino(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                (md.mtime(), md.mtime_nsec()),
                (md.ctime(), md.ctime_nsec()),
                content,
            ),
        );
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = Snap::new();
    walk(root, root, &mut out);
    out
}

fn make_canary(s: &Scratch) -> PathBuf {
    let c = s.dir("canary");
    fs::write(c.join("x"), b"canary x").unwrap();
    fs::write(c.join("lf"), b"canary lf").unwrap();
    fs::create_dir(c.join("sub0")).unwrap();
    fs::write(c.join("sub0/inner"), b"canary inner").unwrap();
    // ctimes must be able to move: wait out the timestamp granularity.
    std::thread::sleep(std::time::Duration::from_millis(20));
    c
}

/// Every kind of change under `dir` (a merged directory); returns one line per result.
fn all_ops(dir: &Path, top: &Path) -> Vec<String> {
    let r = |what: &str, r: std::io::Result<()>| match r {
        Ok(()) => format!("{what}: ok"),
        Err(e) => format!("{what}: errno {}", e.raw_os_error().unwrap_or(-1)),
    };
    vec![
        r("create", fs::File::create(dir.join("new")).map(|_| ())),
        r(
            "write",
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("x"))
                .and_then(|mut f| f.write_all(b"OVERWRITTEN")),
        ),
        r(
            "copy-up write",
            fs::OpenOptions::new()
                .append(true)
                .open(dir.join("lf"))
                .and_then(|mut f| f.write_all(b"APPENDED")),
        ),
        r(
            "truncate",
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("x"))
                .and_then(|f| f.set_len(1)),
        ),
        r(
            "chmod",
            fs::set_permissions(dir.join("x"), fs::Permissions::from_mode(0o600)),
        ),
        r(
            "chown",
            std::os::unix::fs::lchown(dir.join("lf"), Some(1234), Some(1234)),
        ),
        r("mkdir", fs::create_dir(dir.join("sub"))),
        r("symlink", symlink("t", dir.join("ln"))),
        r("link", fs::hard_link(dir.join("x"), dir.join("x2"))),
        r("rename", fs::rename(dir.join("x"), dir.join("y"))),
        r("rename out", fs::rename(dir.join("lf"), top.join("moved"))),
        r("rename in", fs::rename(top.join("top"), dir.join("top"))),
        r("unlink", fs::remove_file(dir.join("x"))),
        r("unlink lower", fs::remove_file(dir.join("lf"))),
        r("rmdir", fs::remove_dir(dir.join("sub0"))),
        r("rmdir new", fs::remove_dir(dir.join("sub"))),
    ]
}

fn lower_with_d(s: &Scratch) -> PathBuf {
    let l = s.dir("l");
    fs::create_dir_all(l.join("d/sub0")).unwrap();
    fs::write(l.join("d/x"), b"lower x").unwrap();
    fs::write(l.join("d/lf"), b"lower lf").unwrap();
    fs::write(l.join("top"), b"top").unwrap();
    fs::write(l.join("alive"), b"alive").unwrap();
    l
}

fn assert_alive(m: &Path) {
    assert_eq!(
        fs::read(m.join("alive")).unwrap(),
        b"alive",
        "daemon serves"
    );
    assert!(fs::read_dir(m).unwrap().count() > 0);
}

#[test]
fn upper_dir_swapped_for_a_symlink_out() {
    let s = Scratch::new("swap");
    let canary = make_canary(&s);
    let l = lower_with_d(&s);
    let (u, w) = (s.dir("u"), s.dir("w"));
    let m = s.dir("mnt/m");
    let before = canary_snap(&canary);
    let stack = Stack::one(&l, &u, &w);
    let mut report = Vec::new();
    // Default cache lifetimes (the kernel keeps using the looked-up directory), then
    // timeout=0 (every operation looks the name up again and finds the symlink).
    for (round, opts) in [(0, ""), (1, "timeout=0")] {
        let _ = fs::remove_dir_all(&u);
        fs::create_dir(&u).unwrap();
        let mnt = Strata::mount(&stack, opts, &m);
        // Copy d up (a new file in it), and look up everything below it.
        fs::write(m.join("d/made"), b"made").unwrap();
        for n in ["x", "lf", "sub0", "made"] {
            fs::symlink_metadata(m.join("d").join(n)).unwrap();
        }
        assert!(u.join("d").is_dir());
        fs::rename(u.join("d"), u.join("d.away")).unwrap();
        symlink("../canary", u.join("d")).unwrap();
        assert!(
            u.join("d/x").exists(),
            "the link reaches the canary from the upper"
        );
        let res = all_ops(&m.join("d"), &m);
        report.push(format!("{opts:?}: {res:?}"));
        if round == 0 {
            // The kernel kept the directory it had looked up: the changes reached the
            // daemon and landed in the directory it holds (moved, still in the upper).
            assert!(u.join("d.away/new").is_file(), "{res:?}");
            assert_eq!(fs::read(u.join("moved")).unwrap(), b"lower lfAPPENDED");
        }
        assert_alive(&m);
        // Whatever the merged d is now, listing and stat work or fail cleanly.
        let _ = fs::read_dir(m.join("d")).map(|r| r.count());
        let _ = fs::metadata(m.join("d/x"));
        let st = mnt.unmount();
        assert!(
            st.is_some_and(|s| s.success()),
            "round {round}: exit {st:?}"
        );
        similar(
            &before,
            &canary_snap(&canary),
            &format!("round {round} {res:?}"),
        );
        let _ = fs::remove_file(u.join("d"));
    }
    eprintln!("results: {report:#?}");
}

#[test]
fn upper_parent_swapped_between_lookup_and_copy_up() {
    let s = Scratch::new("swapcu");
    let canary = make_canary(&s);
    let l = lower_with_d(&s);
    let (u, w) = (s.dir("u"), s.dir("w"));
    let m = s.dir("mnt/m");
    let before = canary_snap(&canary);
    let stack = Stack::one(&l, &u, &w);
    let mnt = Strata::mount(&stack, "", &m);
    // d is not in the upper yet; its lower file is looked up, then the upper gets a
    // symlink named d before the copy-up needs to create the parent.
    fs::symlink_metadata(m.join("d/lf")).unwrap();
    fs::symlink_metadata(m.join("d/x")).unwrap();
    symlink("../canary", u.join("d")).unwrap();
    let res = all_ops(&m.join("d"), &m);
    assert!(
        res.iter().any(|r| r.contains("errno")),
        "some operation must have failed: {res:?}"
    );
    assert_alive(&m);
    similar(&before, &canary_snap(&canary), &format!("{res:?}"));
    // Once the symlink is gone, the same copy-up works.
    fs::remove_file(u.join("d")).unwrap();
    drop(mnt);
    let mnt = Strata::mount(&stack, "", &m);
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/lf"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(fs::read(u.join("d/lf")).unwrap(), b"lower lf+");
    drop(mnt);
    similar(&before, &canary_snap(&canary), "after recovery");
    eprintln!("results: {res:?}");
}

#[test]
fn staging_dir_swapped_for_a_symlink_out() {
    let s = Scratch::new("swapwork");
    let canary = make_canary(&s);
    let l = lower_with_d(&s);
    let (u, w) = (s.dir("u"), s.dir("w"));
    let m = s.dir("mnt/m");
    let before = canary_snap(&canary);
    let stack = Stack::one(&l, &u, &w);
    let mnt = Strata::mount(&stack, "", &m);
    fs::rename(w.join("work"), w.join("work.away")).unwrap();
    symlink("../canary", w.join("work")).unwrap();
    // Copy-ups, creates, whiteouts and rmdirs all stage in work/.
    let res = all_ops(&m.join("d"), &m);
    assert_alive(&m);
    similar(&before, &canary_snap(&canary), &format!("{res:?}"));
    // The copy-up went through the staging dir the daemon holds, into the upper.
    assert_eq!(
        fs::read(u.join("moved")).unwrap(),
        b"lower lfAPPENDED",
        "{res:?}"
    );
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "exit {st:?}");
    // The next mount replaces the symlink by a fresh staging dir, without following it.
    let mnt = Strata::mount(&stack, "", &m);
    let md = fs::symlink_metadata(w.join("work")).unwrap();
    assert!(md.is_dir(), "work/ is a real directory again");
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
    fs::write(m.join("d/after"), b"after").unwrap();
    drop(mnt);
    similar(&before, &canary_snap(&canary), "after remount");
    eprintln!("results: {res:?}");
}

/// The canary is unchanged: same names, inodes, modes, owners, sizes, contents, mtimes and
/// ctimes.
fn similar(a: &Snap, b: &Snap, ctx: &str) {
    if a != b {
        let mut d = Vec::new();
        for (k, v) in a {
            match b.get(k) {
                None => d.push(format!("removed {k:?}")),
                Some(w) if w != v => d.push(format!("changed {k:?}: {v:?} -> {w:?}")),
                _ => {}
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            d.push(format!("created {k:?}"));
        }
        panic!("canary outside the branches changed: {d:#?}\nafter: {ctx}");
    }
}

#[test]
fn lower_dir_swapped_for_a_symlink_out() {
    let s = Scratch::new("swaplow");
    let canary = make_canary(&s);
    let l = lower_with_d(&s);
    let (u, w) = (s.dir("u"), s.dir("w"));
    let m = s.dir("mnt/m");
    let before = canary_snap(&canary);
    let stack = Stack::one(&l, &u, &w);
    let mut report = Vec::new();
    for (round, opts) in [(0, ""), (1, "timeout=0")] {
        let _ = fs::remove_dir_all(&u);
        fs::create_dir(&u).unwrap();
        let _ = fs::remove_file(l.join("d"));
        let _ = fs::remove_dir_all(l.join("d.away"));
        fs::create_dir_all(l.join("d/sub0")).unwrap();
        fs::write(l.join("d/x"), b"lower x").unwrap();
        fs::write(l.join("d/lf"), b"lower lf").unwrap();
        let mnt = Strata::mount(&stack, opts, &m);
        for n in ["x", "lf", "sub0"] {
            fs::symlink_metadata(m.join("d").join(n)).unwrap();
        }
        fs::rename(l.join("d"), l.join("d.away")).unwrap();
        symlink("../canary", l.join("d")).unwrap();
        let res = all_ops(&m.join("d"), &m);
        report.push(format!("{opts:?}: {res:?}"));
        assert_alive(&m);
        if round == 0 {
            // The copy-up read the lower directory the daemon holds (now d.away).
            assert_eq!(fs::read(u.join("moved")).unwrap(), b"lower lfAPPENDED");
        }
        let _ = fs::read_dir(m.join("d")).map(|r| r.count());
        let _ = fs::read(m.join("d/x"));
        drop(mnt);
        similar(
            &before,
            &canary_snap(&canary),
            &format!("round {round} {res:?}"),
        );
        // Nothing of the canary was copied into the upper.
        let out = std::process::Command::new("grep")
            .args(["-rl", "canary"])
            .arg(&u)
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "round {round}: canary data in the upper: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    eprintln!("results: {report:#?}");
}

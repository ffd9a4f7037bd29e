//! FUSE filesystems under and over the union, as Apptainer stacks them: SIF squashfs images
//! mounted with `squashfuse_ll` as the lowers, an ext3 image mounted with `fuse2fs` as the
//! upper (issue #24).
//!
//! - the write scenario of the local-disk differential (tests/write_ops) on that stack gives
//!   the same outcomes and the same merged view as on local-disk copies of the same layers,
//!   but for RENAME_EXCHANGE, which fuse2fs does not implement (EINVAL, passed on);
//! - the squashfuse daemon killed in the middle of a walk: every later access to the lower
//!   ends with a bounded error (EIO or ENOTCONN), no call hangs, the upper's files stay
//!   readable and writable through the mount, and the ext3 image passes `e2fsck -fn`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod write_ops;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_same, copy_tree, mount_type, snapshot, Entry, Scratch, Stack, Strata};

/// A FUSE daemon of another program in the foreground; unmounted and reaped on drop.
struct Helper {
    mnt: PathBuf,
    child: Option<Child>,
}

impl Helper {
    fn start(prog: &str, args: &[&str], image: &Path, mnt: &Path) -> Helper {
        let child = Command::new(prog)
            .arg("-f")
            .args(args)
            .arg(image)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
        let h = Helper {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        };
        let start = Instant::now();
        while !mount_type(mnt).is_some_and(|t| t.starts_with("fuse")) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{prog} did not mount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        common::unmount_and_reap(&self.mnt, self.child.take());
    }
}

fn run(cmd: &mut Command) {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A squashfs image of `dir` (mksquashfs keeps owners, modes, times, xattrs, holes).
fn squash(dir: &Path, image: &Path) {
    run(Command::new("mksquashfs").arg(dir).arg(image).args([
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
}

/// An ext3 image (Apptainer's writable overlay image format) of `mib` MiB.
fn ext3(image: &Path, mib: u64) {
    std::fs::File::create(image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mkfs.ext3").args(["-q", "-F"]).arg(image));
}

/// Times set by a run (at or after `since`) become a marker: the two runs differ in time.
/// Nanoseconds are dropped: fuse2fs (1.47) reports whole seconds, whatever it stored.
fn normalize(v: &BTreeMap<Vec<u8>, Entry>, since: i64) -> BTreeMap<Vec<u8>, Entry> {
    v.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.mtime.1 = 0;
            if e.mtime.0 >= since {
                e.mtime = (-1, 0);
            }
            (k.clone(), e)
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(all(
        have = "root",
        have = "squashfuse",
        have = "mksquashfs",
        have = "fuse2fs"
    )),
    ignore = "needs root, squashfuse_ll, mksquashfs, fuse2fs"
)]
fn write_scenario_on_squashfuse_lowers_and_fuse2fs_upper_matches_local_disk() {
    let s = Scratch::new("fuse-layers");
    let base = s.dir("base");
    write_ops::make_lowers(&base);
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    // squashfuse_ll lowers; the local-disk lowers are copies of what they show, so both
    // runs start from the same layers (squashfs keeps whole-second mtimes, and Debian 12's
    // squashfuse 0.1.105 shows a trusted.* xattr of an image as security.*).
    squash(&base.join("l1"), &s.path("l1.sqfs"));
    squash(&base.join("l2"), &s.path("l2.sqfs"));
    let (fl1, fl2) = (s.dir("f/l1"), s.dir("f/l2"));
    let _q1 = Helper::start("squashfuse_ll", &[], &s.path("l1.sqfs"), &fl1);
    let _q2 = Helper::start("squashfuse_ll", &[], &s.path("l2.sqfs"), &fl2);
    s.dir("d");
    copy_tree(&fl1, &s.path("d/l1"));
    copy_tree(&fl2, &s.path("d/l2"));
    let (dl1, dl2, du, dw, dm) = (
        s.path("d/l1"),
        s.path("d/l2"),
        s.dir("d/u"),
        s.dir("d/w"),
        s.dir("d/m"),
    );
    let (dlog, dview) = {
        let m = Strata::mount(
            &Stack {
                lowers: vec![&dl1, &dl2],
                upper: Some((&du, &dw)),
            },
            "",
            &dm,
        );
        let r = (write_ops::run(&dm), snapshot(&dm));
        assert_eq!(m.unmount().map(|s| s.success()), Some(true));
        r
    };
    ext3(&s.path("upper.img"), 256);
    // The fuse2fs upper.
    let (ext, fm) = (s.dir("f/ext"), s.dir("f/m"));
    let e2 = Helper::start("fuse2fs", &[], &s.path("upper.img"), &ext);
    let (fu, fw) = (ext.join("u"), ext.join("w"));
    std::fs::create_dir(&fu).unwrap();
    std::fs::create_dir(&fw).unwrap();
    let (flog, fview) = {
        let m = Strata::mount(
            &Stack {
                lowers: vec![&fl1, &fl2],
                upper: Some((&fu, &fw)),
            },
            "",
            &fm,
        );
        let r = (write_ops::run(&fm), snapshot(&fm));
        assert_eq!(m.unmount().map(|s| s.success()), Some(true));
        r
    };
    assert!(dlog.len() >= 40);
    // fuse2fs implements no renameat2 flags: RENAME_EXCHANGE in its upper is EINVAL, which
    // stratafs passes on (as the kernel overlayfs would on such an upper). Everything else
    // is the same, outcome for outcome and entry for entry.
    let expected: Vec<String> = dlog
        .iter()
        .map(|l| match l.split_once(": ") {
            Some((op, _)) if op.starts_with("RENAME_EXCHANGE") => format!("{op}: errno 22"),
            _ => l.clone(),
        })
        .collect();
    assert_eq!(
        expected, flog,
        "operation outcomes: local disk vs FUSE layers"
    );
    let exchanged = |v: &BTreeMap<Vec<u8>, Entry>| {
        let mut v = normalize(v, since);
        v.retain(|k, _| {
            !["exch", "upperfile", "exdir", "keepdir"]
                .iter()
                .any(|n| k.as_slice() == n.as_bytes() || k.starts_with(format!("{n}/").as_bytes()))
        });
        v
    };
    assert_same(
        "merged views: local disk vs squashfuse_ll lowers + fuse2fs upper",
        &exchanged(&dview),
        &exchanged(&fview),
    );
    drop(e2);
    run(Command::new("e2fsck").arg("-fn").arg(s.path("upper.img")));
}

/// Runs `f` on a thread; panics if it does not return within `limit` (a hang).
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// What an access to a lower whose FUSE daemon died gives: ECONNABORTED for the request
/// that was in flight at the moment (the kernel's answer, passed on), ENOTCONN after, EIO.
const IN_FLIGHT_OR_DEAD: [i32; 3] = [libc::EIO, libc::ENOTCONN, libc::ECONNABORTED];

/// Reads every file below `root`; counts the successes and the errors by errno.
fn walk_all(root: &Path) -> (usize, BTreeMap<i32, usize>) {
    let (mut ok, mut errs) = (0, BTreeMap::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                *errs.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1;
                continue;
            }
        };
        for e in rd {
            let p = match e {
                Ok(e) => e.path(),
                Err(e) => {
                    *errs.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1;
                    continue;
                }
            };
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => match std::fs::read(&p) {
                    Ok(_) => ok += 1,
                    Err(e) => *errs.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1,
                },
                Ok(_) => ok += 1,
                Err(e) => *errs.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1,
            }
        }
    }
    (ok, errs)
}

#[test]
#[cfg_attr(
    not(all(
        have = "root",
        have = "squashfuse",
        have = "mksquashfs",
        have = "fuse2fs"
    )),
    ignore = "needs root, squashfuse_ll, mksquashfs, fuse2fs"
)]
fn squashfuse_killed_mid_walk_gives_bounded_errors_and_keeps_the_upper() {
    let s = Scratch::new("fuse-layers-kill");
    let src = s.dir("src");
    for d in 0..40 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(
                dir.join(format!("f{f:02}")),
                vec![b'a' + (f % 26) as u8; 8192],
            )
            .unwrap();
        }
    }
    squash(&src, &s.path("img.sqfs"));
    ext3(&s.path("upper.img"), 64);
    let (low, ext, m) = (s.dir("low"), s.dir("ext"), s.dir("m"));
    let mut q = Helper::start("squashfuse_ll", &[], &s.path("img.sqfs"), &low);
    let e2 = Helper::start("fuse2fs", &[], &s.path("upper.img"), &ext);
    let (u, w) = (ext.join("u"), ext.join("w"));
    std::fs::create_dir(&u).unwrap();
    std::fs::create_dir(&w).unwrap();
    let mnt = Strata::mount(&Stack::one(&low, &u, &w), "", &m);
    // Something in the upper before the fault: a copy-up and a new file.
    std::fs::write(m.join("d00/f00"), b"copied up\n").unwrap();
    std::fs::write(m.join("new"), b"upper only\n").unwrap();
    // The walk runs while the lower's daemon is killed under it.
    let root = m.clone();
    let walker = std::thread::spawn(move || walk_all(&root));
    std::thread::sleep(Duration::from_millis(150));
    let pid = q.pid();
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (ok, errs) = bounded(
        "the walk after the kill",
        Duration::from_secs(30),
        move || walker.join().unwrap(),
    );
    println!(
        "walk: {ok} entries read, errors {errs:?}, ended {:.2} s after the kill",
        t0.elapsed().as_secs_f64()
    );
    for errno in errs.keys() {
        assert!(
            IN_FLIGHT_OR_DEAD.contains(errno),
            "error {errno} ({}) from the walk; EIO, ENOTCONN or ECONNABORTED expected",
            std::io::Error::from_raw_os_error(*errno)
        );
    }
    // After the kill every lower access fails the same bounded way.
    let root = m.clone();
    let (_, after) = bounded(
        "a walk of the dead lower",
        Duration::from_secs(30),
        move || walk_all(&root),
    );
    assert!(
        !after.is_empty(),
        "no error from a lower whose daemon is dead"
    );
    assert!(
        after
            .keys()
            .all(|e| [libc::EIO, libc::ENOTCONN].contains(e)),
        "errors after the kill: {after:?}"
    );
    // The upper is intact and the mount still serves it.
    let m2 = m.clone();
    let (copied, new) = bounded("reads of the upper", Duration::from_secs(30), move || {
        (
            std::fs::read(m2.join("d00/f00")),
            std::fs::read(m2.join("new")),
        )
    });
    assert_eq!(copied.unwrap(), b"copied up\n");
    assert_eq!(new.unwrap(), b"upper only\n");
    // Writes to files that are in the upper go on; a new name in a directory of the dead
    // lower cannot be created (whether it exists below is unknown), as with the kernel
    // overlayfs: that fails with the same bounded error.
    let m2 = m.clone();
    let (append, create) = bounded("writes to the upper", Duration::from_secs(30), move || {
        let append = std::fs::OpenOptions::new()
            .append(true)
            .open(m2.join("new"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"written after the kill\n"));
        (append, std::fs::write(m2.join("after"), b"x"))
    });
    append.unwrap();
    if let Err(e) = &create {
        assert!(
            [libc::EIO, libc::ENOTCONN].contains(&e.raw_os_error().unwrap_or(0)),
            "create after the kill: {e}"
        );
    }
    println!("create of a new name in a merged directory after the kill: {create:?}");
    assert_eq!(
        mnt.unmount().map(|s| s.success()),
        Some(true),
        "daemon exit"
    );
    if let Some(mut c) = q.child.take() {
        let _ = c.wait();
    }
    common::unmount_and_reap(&low, None);
    assert_eq!(
        std::fs::read(u.join("new")).unwrap(),
        b"upper only\nwritten after the kill\n"
    );
    assert_eq!(std::fs::read(u.join("d00/f00")).unwrap(), b"copied up\n");
    drop(e2);
    run(Command::new("e2fsck").arg("-fn").arg(s.path("upper.img")));
}

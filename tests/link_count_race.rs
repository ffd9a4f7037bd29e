//! A file's link count in the kernel when a listing races the removal of one of its names
//! (the "link ENOENT" flake of the stress test, issue #19).
//!
//! The kernel keeps a FUSE inode's link count itself: it applies the count carried by
//! every LOOKUP, GETATTR and READDIRPLUS reply, and takes one off by itself after a
//! successful UNLINK, or a rename over a name. A READDIRPLUS of another directory holding
//! the file's other name, served by another daemon thread after the removal and applied
//! before the unlinking thread does its decrement, was counted twice: the file, left with
//! one name, had 0 links in the kernel, and `link(2)` through its remaining name failed
//! with ENOENT without a LINK request reaching the daemon. stratafs now sends no
//! attributes the kernel may keep while a name of the file goes or just went (inode.rs,
//! "Link counts the kernel keeps").
//!
//! Here two threads each loop: link `d1/xN` to `d2/yN`, then take `d2/yN` away (unlink, or
//! a rename of a new file over it, in turn); two threads list `d1` all the time (each
//! listing a READDIRPLUS whose reply carries every `xN`'s attributes), and one creates
//! and removes a file in `d1` so that the kernel's cached listing of `d1` keeps being
//! dropped and every listing asks the daemon. Before the fix a link failed within about
//! a second (about one loop in 300); the run lasts `STRATAFS_LINK_RACE_SECS` (default 6).
//! Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Scratch, Stack, Strata};
use stratafs::sys;

const OWNERS: usize = 2;
const LISTERS: usize = 2;

struct Shared {
    stop: AtomicBool,
    loops: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// What the kernel believes of `p`'s link count, without asking the daemon.
fn cached_nlink(p: &Path) -> String {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    match sys::statx_cached_nlink(&c) {
        Ok(n) => n.to_string(),
        Err(e) => e.to_string(),
    }
}

/// One owner: links `x` to `y` and takes `y` away again, until told to stop or a link
/// fails (recorded with the kernel's cached count of `x` and what lstat says).
fn owner(sh: &Shared, x: &Path, y: &Path, z: &Path) {
    fs::write(x, b"x").unwrap();
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        if let Err(e) = fs::hard_link(x, y) {
            let kernel = cached_nlink(x);
            let lstat = fs::symlink_metadata(x).map(|m| std::os::unix::fs::MetadataExt::nlink(&m));
            sh.failures.lock().unwrap().push(format!(
                "loop {n}: link {} {}: {e}; the kernel's cached link count of {0}: {kernel}; \
                 lstat's count a moment later: {lstat:?}",
                x.display(),
                y.display()
            ));
            sh.stop.store(true, Ordering::Relaxed);
            return;
        }
        if n % 2 == 0 {
            fs::remove_file(y).unwrap();
        } else {
            fs::write(z, b"z").unwrap();
            fs::rename(z, y).unwrap();
            fs::remove_file(y).unwrap();
        }
        n += 1;
        sh.loops.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn(sh: &Arc<Shared>, f: impl FnOnce(&Shared) + Send + 'static) -> JoinHandle<()> {
    let sh = sh.clone();
    std::thread::spawn(move || f(&sh))
}

#[test]
fn link_after_removing_a_second_name_while_listing() {
    let secs: u64 = common::env_parse("STRATAFS_LINK_RACE_SECS").unwrap_or(6);
    let s = Scratch::new("link-race");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    // Several daemon threads, whatever the CPU count: the removal and the listing are
    // served side by side.
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "threads=4", &m);
    let (d1, d2) = (m.join("d1"), m.join("d2"));
    fs::create_dir(&d1).unwrap();
    fs::create_dir(&d2).unwrap();
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        loops: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
    });
    let mut threads = Vec::new();
    for i in 0..OWNERS {
        let x = d1.join(format!("x{i}"));
        let (y, z) = (d2.join(format!("y{i}")), d2.join(format!("z{i}")));
        threads.push(spawn(&sh, move |sh| owner(sh, &x, &y, &z)));
    }
    for _ in 0..LISTERS {
        let d = d1.clone();
        threads.push(spawn(&sh, move |sh| {
            while !sh.stop.load(Ordering::Relaxed) {
                let _: Vec<PathBuf> = fs::read_dir(&d)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
            }
        }));
    }
    let churn = d1.join("churn");
    threads.push(spawn(&sh, move |sh| {
        while !sh.stop.load(Ordering::Relaxed) {
            fs::write(&churn, b"").unwrap();
            fs::remove_file(&churn).unwrap();
        }
    }));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) && !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    sh.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let counts = common::stratafs_stats(&m);
    let loops = sh.loops.load(Ordering::Relaxed);
    let failures = sh.failures.lock().unwrap().clone();
    eprintln!(
        "{:.1} s: {loops} loops, {} link failures; daemon: {:?} LINK, {:?} READDIRPLUS, {:?} \
         attribute replies made uncacheable",
        start.elapsed().as_secs_f64(),
        failures.len(),
        counts.get("link"),
        counts.get("readdirplus"),
        counts.get("notify_inval_removed"),
    );
    assert!(
        failures.is_empty(),
        "link(2) of a file that still has a name failed, the daemon having served {:?} \
         LINK requests for {loops} successful links:\n{}",
        counts.get("link"),
        failures.join("\n")
    );
    assert!(
        counts.get("readdirplus").copied().unwrap_or(0) >= 100,
        "the listings did not reach the daemon: the race was not run ({counts:?})"
    );
    drop(mnt);
}

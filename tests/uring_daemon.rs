//! FUSE over io_uring with the real daemon (issue #20): which transport a mount gets and
//! why, that requests then really go over the ring (the counters of `user.stratafs.stats`),
//! requests as large as a ring buffer, faults (daemon killed with a request in flight on
//! the ring, unmount with a queue busy) and a copy-up that must not stall its queue.
//!
//! Needs root, /dev/fuse and `/sys/module/fuse/parameters/enable_uring` (a kernel with
//! CONFIG_FUSE_IO_URING): without the parameter every test FAILS. Each test sets the
//! parameter for its run and puts the old value back; the tests of this file run one at a
//! time (they share the parameter).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{stratafs_stats, Scratch, Stack, Strata};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

static SERIAL: Mutex<()> = Mutex::new(());

/// `enable_uring` set to a value for one test (the tests of this file one at a time), the
/// old value back on drop. Panics (the test fails) if the kernel has no such parameter.
struct EnableUring {
    old: String,
    _lock: MutexGuard<'static, ()>,
}

impl EnableUring {
    fn set(on: bool) -> EnableUring {
        let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let old = fs::read_to_string(PARAM)
            .unwrap_or_else(|e| panic!("{PARAM}: {e} (kernel without CONFIG_FUSE_IO_URING?)"));
        fs::write(PARAM, if on { "Y" } else { "N" }).expect("set enable_uring");
        EnableUring {
            old: old.trim().to_string(),
            _lock: lock,
        }
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = fs::write(PARAM, &self.old);
    }
}

/// A lower with a few files and a directory, an upper and a work directory.
struct Layers {
    s: Scratch,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Layers {
    fn new(tag: &str) -> Layers {
        let s = Scratch::new(tag);
        let (lower, upper, work, mnt) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
        fs::create_dir(lower.join("d")).unwrap();
        for i in 0..50 {
            fs::write(lower.join(format!("d/f{i}")), format!("file {i}\n")).unwrap();
        }
        fs::write(lower.join("probe"), b"p").unwrap();
        Layers {
            s,
            lower,
            upper,
            work,
            mnt,
        }
    }

    /// Mounts with `extra` options, the daemon logging at info level to `daemon.log`.
    fn mount(&self, extra: &str) -> Strata {
        // The transport line is at info level.
        std::env::set_var("RUST_LOG", "info");
        let stack = Stack::one(&self.lower, &self.upper, &self.work);
        let log = self.s.path("daemon.log");
        Strata::mount_logged(&stack, extra, &self.mnt, Some(&log))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.s.path("daemon.log")).unwrap_or_default()
    }

    /// A lower file of `mib` MiB of written (dense) bytes, cached, for a slow copy-up.
    fn big_lower(&self, mib: usize) -> PathBuf {
        // And files to stat meanwhile, each looked up once (`slowest_stat_while`).
        fs::create_dir(self.lower.join("probes")).unwrap();
        for i in 0..400 {
            fs::write(self.lower.join(format!("probes/p{i}")), b"").unwrap();
        }
        let p = self.lower.join("big");
        let mut f = fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        p
    }
}

fn transport(m: &Path) -> String {
    let out = common::stats_output(m);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("transport").map(|t| t.trim().to_string()))
        .unwrap_or_default()
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, k: &str) -> u64 {
    b.get(k).copied().unwrap_or(0) - a.get(k).copied().unwrap_or(0)
}

/// Some requests of every common kind: lookups, getattrs, listings, reads, creates, writes.
fn workload(m: &Path) {
    for i in 0..50 {
        let p = m.join(format!("d/f{i}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("file {i}\n"));
        fs::metadata(&p).unwrap();
    }
    assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 50);
    fs::create_dir(m.join("new")).unwrap();
    for i in 0..20 {
        fs::write(m.join(format!("new/n{i}")), b"new").unwrap();
    }
    fs::rename(m.join("new/n0"), m.join("new/moved")).unwrap();
    fs::remove_file(m.join("new/n1")).unwrap();
    let _ = Command::new("ls").arg("-lR").arg(m).output().unwrap();
}

/// The test that fails if a mount meant to use io_uring silently falls back: with
/// `enable_uring=Y` a default mount says `transport io_uring`, logs it once, and its
/// requests are counted on the ring's side, none on /dev/fuse's.
#[test]
fn a_default_mount_serves_its_requests_over_the_ring() {
    let _u = EnableUring::set(true);
    let l = Layers::new("uring-default");
    let m = l.mount("");
    assert_eq!(transport(&m.mnt), "io_uring", "log:\n{}", l.log());
    let before = stratafs_stats(&m.mnt);
    workload(&m.mnt);
    let after = stratafs_stats(&m.mnt);
    let (ring, classic) = (
        delta(&before, &after, "requests_io_uring"),
        delta(&before, &after, "requests_classic"),
    );
    assert!(ring >= 100, "only {ring} requests over the ring");
    // FORGETs come over /dev/fuse (the unlinked file's node); nothing else does.
    let changed: BTreeMap<_, _> = after
        .keys()
        .map(|k| (k, delta(&before, &after, k)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let forgets = delta(&before, &after, "forget");
    assert_eq!(
        classic, forgets,
        "{classic} requests over /dev/fuse, {forgets} FORGETs; the workload's: {changed:?}"
    );
    m.unmount();
    let lines: Vec<_> = l
        .log()
        .lines()
        .filter(|x| x.contains("transport:"))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("io_uring"), "{lines:?}");
}

/// `-o noio_uring` with the ring available: /dev/fuse, and the log says why.
#[test]
fn noio_uring_serves_over_dev_fuse() {
    let _u = EnableUring::set(true);
    let l = Layers::new("uring-off");
    let m = l.mount("noio_uring");
    assert_eq!(transport(&m.mnt), "classic");
    workload(&m.mnt);
    let s = stratafs_stats(&m.mnt);
    assert_eq!(s.get("requests_io_uring"), Some(&0), "{s:?}");
    assert!(s["requests_classic"] >= 100, "{s:?}");
    m.unmount();
    assert!(
        l.log().contains("transport: /dev/fuse (-o noio_uring)"),
        "{}",
        l.log()
    );
}

/// `enable_uring=N`: a default mount goes over /dev/fuse (saying why); `-o io_uring` fails
/// with one line naming the module parameter, exits non-zero and mounts nothing.
#[test]
fn io_uring_required_but_disabled_fails_with_one_line() {
    let _u = EnableUring::set(false);
    let l = Layers::new("uring-req");
    let m = l.mount("");
    assert_eq!(transport(&m.mnt), "classic");
    m.unmount();
    assert!(
        l.log()
            .contains(&format!("transport: /dev/fuse ({PARAM} is N)")),
        "{}",
        l.log()
    );
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},io_uring",
        l.lower.display(),
        l.upper.display(),
        l.work.display()
    );
    let out = Command::new(common::bin())
        .args(["-o", &opts])
        .arg(&l.mnt)
        .stdin(Stdio::null())
        .output()
        .expect("run stratafs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit {:?}; stderr {err}", out.status);
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(err.contains(PARAM), "stderr: {err}");
    assert!(common::mount_type(&l.mnt).is_none(), "mounted anyway");
}

/// The largest requests fit a ring buffer by construction (payload = max_write): one 1 MiB
/// write(2) through a direct-I/O handle (a setuid file: no passthrough, no page cache) is
/// one 1 MiB WRITE over the ring, read back intact; a 3,000-entry directory with long
/// names lists whole, plain and with attributes.
#[test]
fn a_one_mib_write_and_a_large_listing_over_the_ring() {
    let _u = EnableUring::set(true);
    let l = Layers::new("uring-big");
    let big = l.lower.join("many");
    fs::create_dir(&big).unwrap();
    let long = "x".repeat(200);
    for i in 0..3000 {
        fs::write(big.join(format!("{long}{i:05}")), b"").unwrap();
    }
    let m = l.mount("");
    assert_eq!(transport(&m.mnt), "io_uring");
    let f = m.mnt.join("suid");
    fs::write(&f, b"").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let before = stratafs_stats(&m.mnt);
    let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all(&data).unwrap();
    drop(w);
    let after = stratafs_stats(&m.mnt);
    assert!(
        delta(&before, &after, "write") >= 1,
        "no WRITE reached the daemon"
    );
    assert_eq!(delta(&before, &after, "requests_classic"), 0);
    assert!(fs::read(&f).unwrap() == data, "1 MiB read back differs");
    assert!(fs::read(l.upper.join("suid")).unwrap() == data);
    let names = fs::read_dir(m.mnt.join("many")).unwrap().count();
    assert_eq!(names, 3000);
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.mnt.join("many"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 3001, "ls -l lines (with the total)");
    let s = stratafs_stats(&m.mnt);
    assert_eq!(s["requests_classic"], before["requests_classic"], "{s:?}");
    m.unmount();
}

/// Starts the copy-up of `big` (open for writing, one byte appended) in a child process
/// pinned to CPU 0 (so on ring queue 0); returns the child.
fn start_copy_up(big: &Path) -> std::process::Child {
    Command::new("taskset")
        .args(["-c", "0", "sh", "-c", "echo x >> \"$1\"", "sh"])
        .arg(big)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset (util-linux)")
}

/// Whether the daemon is copying `rel` up now (its staging file in the work directory
/// grows, or the upper file exists).
fn copy_up_started(l: &Layers) -> bool {
    fs::read_dir(&l.work)
        .map(|d| {
            d.flatten().any(|e| {
                e.path().is_dir()
                    && fs::read_dir(e.path())
                        .map(|x| x.count() > 0)
                        .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// The slowest of stats of not yet looked-up files (each a LOOKUP), one every 20 ms from a thread pinned
/// to CPU 0 (the copy-up's queue), while the child copying up runs.
fn slowest_stat_while(child: &mut std::process::Child, m: &Path, n: usize) -> (Duration, usize) {
    pin_to_cpu0();
    let mut worst = Duration::ZERO;
    let mut done = 0;
    for i in 0..n {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let t = Instant::now();
        fs::metadata(m.join(format!("probes/p{i}"))).unwrap();
        worst = worst.max(t.elapsed());
        done += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    (worst, done)
}

fn pin_to_cpu0() {
    let out = Command::new("taskset")
        .args(["-p", "-c", "0"])
        .arg(unsafe_gettid().to_string())
        .output()
        .expect("taskset");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unsafe_gettid() -> i64 {
    // The calling thread's id (taskset -p pins that one thread).
    fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("/proc/thread-self")
}

/// A copy-up of a 1 GiB file blocks one ring thread of its queue; stats from the same CPU
/// (the same queue) are answered meanwhile, within 50 ms, as on /dev/fuse.
#[test]
fn a_copy_up_does_not_stall_its_queue() {
    let _u = EnableUring::set(true);
    let mut worst = Vec::new();
    for (opt, want) in [("", "io_uring"), ("noio_uring", "classic")] {
        let l = Layers::new("uring-stall");
        l.big_lower(1024);
        let m = l.mount(opt);
        let tr = transport(&m.mnt);
        assert_eq!(tr, want);
        let mut child = start_copy_up(&m.mnt.join("big"));
        let t = Instant::now();
        while !copy_up_started(&l) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mnt = m.mnt.clone();
        let (w, n) = std::thread::scope(|s| {
            s.spawn(|| slowest_stat_while(&mut child, &mnt, 400))
                .join()
                .unwrap()
        });
        let st = child.wait().unwrap();
        assert!(st.success(), "copy-up failed");
        eprintln!(
            "{tr} {opt}: slowest of {n} stats during the copy-up: {w:?} (copy-up {:?})",
            t.elapsed()
        );
        // Too few stats is no test, unless one of them waited for the copy-up (a stall).
        assert!(
            n >= 3 || w >= t.elapsed() / 4,
            "the copy-up ended before the stats ({n}): not a test"
        );
        worst.push((w, t.elapsed()));
        m.unmount();
    }
    // A stall is the whole copy-up (seconds). With the ring's threads pinned to their
    // queue's CPU the worst stat was 1-5 ms (classic 4-17 ms) on this loaded machine;
    // unpinned it was 60-600 ms. The bound: 50 ms (the issue's), or 3 x classic's worst
    // when the machine is so loaded that classic itself is slower.
    let ((ring, copy), (classic, _)) = (worst[0], worst[1]);
    let bound = Duration::from_millis(50).max(classic * 3);
    assert!(
        ring <= bound && ring < copy / 4,
        "io_uring: a stat took {ring:?} during a {copy:?} copy-up (classic: {classic:?})"
    );
}

/// The daemon SIGKILLed while a request (a 1 GiB copy-up) is in flight on the ring: the
/// caller gets an error instead of hanging, and `umount -l` clears the mount.
#[test]
fn daemon_killed_with_a_request_in_flight_on_the_ring() {
    let _u = EnableUring::set(true);
    let l = Layers::new("uring-kill");
    l.big_lower(1024);
    let mut m = l.mount("");
    assert_eq!(transport(&m.mnt), "io_uring");
    let mut child = start_copy_up(&m.mnt.join("big"));
    let t = Instant::now();
    while !copy_up_started(&l) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the copy-up ended too soon"
    );
    m.kill();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the caller hangs after the daemon died"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!st.success(), "the write succeeded on a dead daemon");
    assert!(
        common::mount_type(&l.mnt).is_none(),
        "still mounted after umount -l"
    );
}

/// Unmount (lazy, as a busy mount needs) while a ring queue is busy with a copy-up: the
/// request finishes, the daemon exits by itself, nothing hangs.
#[test]
fn unmount_with_a_ring_queue_busy() {
    let _u = EnableUring::set(true);
    let l = Layers::new("uring-umount");
    l.big_lower(1024);
    let mut m = l.mount("");
    assert_eq!(transport(&m.mnt), "io_uring");
    let mut child = start_copy_up(&m.mnt.join("big"));
    let t = Instant::now();
    while !copy_up_started(&l) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = Command::new("umount")
        .arg("-l")
        .arg(&l.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the copy-up never ends"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success(), "the write in flight at unmount failed");
    let exit = m.wait_exit_within(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "daemon after unmount: {exit:?}"
    );
}

//! Times of files written through a shared mapping, plain writes and truncates, checked
//! against the kernel overlayfs on the same layers (xfstests generic/080 and generic/215).
//!
//! With FUSE passthrough (stratafs as root) stores through a shared mapping reach the
//! upper file directly: its mtime and ctime change at page-fault time and no request
//! tells the daemon. `stat` through the mount must still show the upper file's times, as
//! the kernel overlayfs does: while the file is open and mapped, after `msync`, and after
//! `munmap` and close.
//!
//! Each step runs in a long-lived `xfs_io` (commands on its stdin) on both mounts, and
//! the test stats the file from outside between steps.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{Kernel, Scratch, Stack, Strata};

/// An interactive `xfs_io` on one file.
struct XfsIo {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl XfsIo {
    fn open(file: &Path) -> XfsIo {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "xfs_io", "-f"])
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run xfs_io (xfsprogs)");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        XfsIo { child, stdin, out }
    }

    /// Runs `cmds` and waits until they are done (a trailing `stat` marks the end).
    fn run(&mut self, cmds: &[&str]) {
        for c in cmds.iter().chain(&["stat"]) {
            writeln!(self.stdin, "{c}").expect("write to xfs_io");
        }
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).expect("read xfs_io");
            assert!(n > 0, "xfs_io ended while running {cmds:?}");
            if line.starts_with("stat.blocks") {
                return;
            }
        }
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for XfsIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    mtime: (i64, i64),
    ctime: (i64, i64),
    size: u64,
}

fn times(p: &Path) -> Times {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    Times {
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        size: m.size(),
    }
}

/// One mount under test: its mount point and its upper directory.
struct Side {
    name: &'static str,
    mnt: PathBuf,
    upper: PathBuf,
}

impl Side {
    /// The file as the mount shows it and as its upper holds it.
    fn both(&self, f: &str) -> (Times, Times) {
        (times(&self.mnt.join(f)), times(&self.upper.join(f)))
    }

    /// The mount shows the upper file's times and size.
    fn shows_upper(&self, f: &str, when: &str) -> Times {
        let (shown, upper) = self.both(f);
        assert_eq!(shown, upper, "{}: {f} {when}: shown vs upper", self.name);
        shown
    }
}

/// Past the coarse clock's tick, so a new change gets a new timestamp.
fn tick() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// One step: commands for the open file, what it is, and whether it changes the times.
type Step<'a> = (&'a [&'a str], &'a str, bool);

/// Runs `steps` on both sides in lockstep: each step's commands on each side's open
/// file, then a stat from outside.
fn each_side(sides: &[Side], f: &str, setup: &[&str], steps: &[Step<'_>]) {
    let mut before = Vec::new();
    for s in sides {
        let mut x = XfsIo::open(&s.mnt.join(f));
        x.run(setup);
        x.quit();
        // Cache the attributes in the kernel, as a stat before the test would.
        before.push(s.shows_upper(f, "after setup"));
    }
    let mut io: Vec<XfsIo> = sides.iter().map(|s| XfsIo::open(&s.mnt.join(f))).collect();
    for (i, s) in sides.iter().enumerate() {
        before[i] = s.shows_upper(f, "after the open");
    }
    for &(cmds, what, advances) in steps {
        tick();
        for (i, s) in sides.iter().enumerate() {
            io[i].run(cmds);
            let now = s.shows_upper(f, what);
            assert!(
                !advances || (now.mtime > before[i].mtime && now.ctime > before[i].ctime),
                "{}: {f} {what}: times did not advance: {:?} -> {now:?}",
                s.name,
                before[i]
            );
            before[i] = now;
        }
    }
    for x in io {
        x.quit();
    }
    for s in sides {
        s.shows_upper(f, "after close");
    }
}

fn with_mounts(tag: &str, extra: &str, test: impl FnOnce(&[Side])) {
    let t = Scratch::new(tag);
    let (l, u, w, m) = (t.dir("l"), t.dir("u"), t.dir("w"), t.dir("m"));
    let (ku, kw, km) = (t.dir("ku"), t.dir("kw"), t.dir("km"));
    std::fs::write(l.join("lower"), vec![7u8; 8192]).unwrap();
    let _s = Strata::mount(&Stack::one(&l, &u, &w), extra, &m);
    let _k = Kernel::mount(&Stack::one(&l, &ku, &kw), "", &km);
    let sides = [
        Side {
            name: "stratafs",
            mnt: m.clone(),
            upper: u.clone(),
        },
        Side {
            name: "kernel overlayfs",
            mnt: km.clone(),
            upper: ku.clone(),
        },
    ];
    test(&sides);
}

const SETUP: &[&str] = &["pwrite 0 4k", "fsync"];

/// generic/080: a store through a shared mapping shows in stat while the file is still
/// open and mapped, again after an msync and a second store, and after munmap and close.
#[test]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn mmap_store_updates_times() {
    with_mounts("mmap", "", |sides| {
        each_side(
            sides,
            "f",
            SETUP,
            &[
                (
                    &["mmap 0 4k", "mread 0 4k", "mwrite 0 4k"],
                    "mapped, after a store",
                    true,
                ),
                (&["msync -s 0 4k"], "after msync", false),
                (&["mwrite 0 4k"], "after a store to the cleaned page", true),
            ],
        );
        for s in sides {
            s.shows_upper("f", "after quit");
        }
    });
}

/// The same on a lower file: the write-open copies it up first.
#[test]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn mmap_store_to_lower_file() {
    with_mounts("mmap-lower", "", |sides| {
        each_side(
            sides,
            "lower",
            &[],
            &[(
                &["mmap 0 4k", "mwrite 0 4k", "munmap"],
                "after store and munmap",
                true,
            )],
        );
    });
}

/// Plain writes and truncates through passthrough (they reach the FUSE inode already).
#[test]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn write_and_truncate_update_times() {
    with_mounts("write", "", |sides| {
        each_side(
            sides,
            "g",
            SETUP,
            &[
                (&["pwrite 0 4k"], "after pwrite", true),
                (&["pwrite 8k 4k"], "after an extending pwrite", true),
                (&["truncate 100"], "after truncate", true),
            ],
        );
    });
}

/// How late a `stat` may show a store through a shared mapping of a passthrough file
/// (`UNSEEN_ATTR_TTL` rounded up by the kernel: two clock ticks, 8 ms at HZ=250), with room
/// for a loaded machine. Far below the 1.1 s steps above, so it fails if the TTL grows.
const UNSEEN_BOUND: Duration = Duration::from_millis(40);

/// Only a read-write open shortens the attribute TTL (only a read-write descriptor can be
/// mapped shared and writable); read-only and write-only opens keep the long one. Checked
/// without timing: the upper file's mtime is changed behind the mount's back; files open
/// read-only or write-only still show the cached time, a file open read-write the new one
/// once the short TTL has passed. The time per stat of each is printed (a cached stat vs a
/// round trip to the daemon every few milliseconds).
#[test]
fn only_read_write_opens_shorten_the_attribute_cache() {
    with_mounts("statcost", "", |sides| {
        let s = &sides[0];
        let names = ["ro", "wo", "rw"];
        for name in names {
            std::fs::write(s.mnt.join(name), b"x").unwrap();
        }
        let open = |name: &str, read: bool, write: bool| {
            std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .open(s.mnt.join(name))
                .unwrap()
        };
        let _open = [
            open("ro", true, false),
            open("wo", false, true),
            open("rw", true, true),
        ];
        let shown = |name: &str| times(&s.mnt.join(name)).mtime;
        let before: Vec<_> = names.iter().map(|n| shown(n)).collect();
        for name in names {
            let ok = Command::new("touch")
                .args(["-m", "-d", "2001-01-01"])
                .arg(s.upper.join(name))
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        std::thread::sleep(UNSEEN_BOUND);
        assert_eq!(
            shown("ro"),
            before[0],
            "a read-only open lost its cached attributes"
        );
        assert_eq!(
            shown("wo"),
            before[1],
            "a write-only open lost its cached attributes"
        );
        assert_ne!(
            shown("rw"),
            before[2],
            "a read-write open kept cached attributes past {UNSEEN_BOUND:?}"
        );
        let per_stat = |name: &str| {
            let p = s.mnt.join(name);
            let n = 20_000;
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(std::fs::symlink_metadata(&p).unwrap());
            }
            t.elapsed() / n
        };
        let costs: Vec<_> = names.iter().map(|n| per_stat(n)).collect();
        eprintln!("stat of a file open read-only, write-only, read-write: {costs:?}");
    });
}

/// A store through a shared mapping right after a stat cached the attributes shows in a
/// stat within `UNSEEN_BOUND` (docs/guarantees.md, "File times"; the kernel overlayfs shows
/// it at once). Fails if the attributes of a mapped passthrough file are cached longer.
#[test]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn mmap_store_shows_within_the_short_ttl() {
    with_mounts("mmap-bound", "", |sides| {
        for s in sides {
            let mut x = XfsIo::open(&s.mnt.join("f"));
            x.run(SETUP);
            x.run(&["mmap 0 4k", "mread 0 4k"]);
            for round in 0..3 {
                tick();
                let before = times(&s.mnt.join("f")); // cached from here
                x.run(&["mwrite 0 4k", "msync -s 0 4k"]);
                std::thread::sleep(UNSEEN_BOUND);
                let now = s.shows_upper("f", "a short while after a store");
                assert!(
                    now.mtime > before.mtime && now.ctime > before.ctime,
                    "{}: round {round}: the store did not show within {UNSEEN_BOUND:?}: \
                     {before:?} -> {now:?}",
                    s.name
                );
            }
            x.quit();
        }
    });
}

/// The writeback-cache mode (root of a user namespace: no passthrough): the kernel keeps
/// the times of stores through a mapping itself. generic/080's sequence, then the mount
/// must show the upper file's times, and newer ones than before the store.
#[test]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn mmap_store_in_user_namespace() {
    let t = Scratch::new("mmap-userns");
    let script = r#"
set -eu
B=$1 T=$2
mkdir -p $T/l $T/u $T/w $T/m
trap 'umount $T/m 2>/dev/null' EXIT
$B -o lowerdir=$T/l,upperdir=$T/u,workdir=$T/w $T/m
xfs_io -f -c "pwrite 0 4k" -c fsync $T/m/f >/dev/null
stat -c 'before %y %z' $T/m/f
sleep 1.1
xfs_io -c "mmap 0 4k" -c "mread 0 4k" -c "mwrite 0 4k" $T/m/f >/dev/null
stat -c 'shown %y %z' $T/m/f
stat -c 'upper %y %z' $T/u/f
"#;
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", script, "sh", common::bin()])
        .arg(&t.0)
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "scenario: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |what: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("no {what} in {text}"))
            .to_string()
    };
    // "DATE TIME ZONE DATE TIME ZONE": mtime, then ctime.
    let split = |s: String| -> (String, String) {
        let w: Vec<&str> = s.split(' ').collect();
        (w[..3].join(" "), w[3..].join(" "))
    };
    let (before, shown, upper) = (
        split(get("before ")),
        split(get("shown ")),
        split(get("upper ")),
    );
    // The kernel keeps the times itself in this mode and sends the mtime to the daemon;
    // the upper's ctime is then the moment of that SETATTR, a little later than the
    // kernel's own ctime.
    assert_eq!(shown.0, upper.0, "shown vs upper mtime after the store");
    assert!(
        shown.0 > before.0 && shown.1 > before.1,
        "times did not advance after the store: {before:?} -> {shown:?}"
    );
}

/// A write-open copies a lower file up: stat then shows the upper copy's ctime, as the
/// kernel overlayfs does; also while a read-only handle of the lower file is open (the
/// write handle is then served by the daemon, not passthrough).
#[test]
fn copy_up_by_open_shows_upper_ctime() {
    with_mounts("copyup-ctime", "", |sides| {
        for s in sides {
            times(&s.mnt.join("lower")); // cached
        }
        tick();
        for s in sides {
            drop(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(s.mnt.join("lower"))
                    .unwrap(),
            );
            s.shows_upper("lower", "after a write-open");
        }
    });
}

#[test]
fn copy_up_by_open_with_a_reader_shows_upper_ctime() {
    with_mounts("copyup-ctime-reader", "", |sides| {
        let readers: Vec<std::fs::File> = sides
            .iter()
            .map(|s| std::fs::File::open(s.mnt.join("lower")).unwrap())
            .collect();
        tick();
        for s in sides {
            drop(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(s.mnt.join("lower"))
                    .unwrap(),
            );
            s.shows_upper("lower", "after a write-open beside a reader");
        }
        drop(readers);
    });
}

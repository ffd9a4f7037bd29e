//! The daemon's request counters (src/stats.rs), read through `user.stratafs.stats` on the
//! mount root, and the round trips they show the kernel's caches saving.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Scratch, Stack, Strata};

/// The counters of the mount at `m`, by request kind.
fn stats(m: &Path) -> BTreeMap<String, u64> {
    common::stratafs_stats(m)
}

fn reset(m: &Path) {
    let st = Command::new("setfattr")
        .args(["-n", "user.stratafs.stats", "-v", "reset"])
        .arg(m)
        .status()
        .expect("setfattr");
    assert!(st.success(), "resetting the counters");
}

#[test]
fn counters_count_requests_by_kind() {
    let s = Scratch::new("req-count");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("low"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    reset(&m);
    let zero = stats(&m);
    // Reading them is not counted (getfattr's own stat of the root may be).
    assert!(
        zero.get("total").is_some_and(|n| *n <= 2) && zero.get("getxattr") == Some(&0),
        "{zero:?}"
    );
    fs::create_dir(m.join("d")).unwrap();
    for i in 0..10 {
        fs::write(m.join(format!("d/f{i}")), b"x").unwrap();
    }
    let c = stats(&m);
    assert_eq!(c.get("mkdir"), Some(&1));
    assert_eq!(c.get("create"), Some(&10));
    assert_eq!(c.get("release"), Some(&10));
    let sum: u64 = c
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "total"
                    | "getxattr_security.capability"
                    | "notify_inval_listing"
                    | "notify_inval_removed"
                    | "requests_classic"
                    | "requests_io_uring"
            )
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(c.get("total"), Some(&sum));
    reset(&m);
    assert_eq!(stats(&m).get("create"), Some(&0));
    // The name is not a real xattr of the root: not listed, not in the upper.
    let listed = Command::new("getfattr")
        .args(["--absolute-names", "-d", "-m", "-"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("stratafs"));
    assert!(Command::new("getfattr")
        .args(["-n", "user.stratafs.stats"])
        .arg(&u)
        .output()
        .map(|o| !o.status.success())
        .unwrap());
}

/// The counters name the transport in use and count requests per transport: all of them
/// over /dev/fuse (classic) until the io_uring transport is asked for.
#[test]
fn counters_name_the_transport_and_count_requests_per_transport() {
    let s = Scratch::new("req-transport");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("low"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    reset(&m);
    fs::create_dir(m.join("d")).unwrap();
    for i in 0..10 {
        fs::write(m.join(format!("d/f{i}")), b"x").unwrap();
    }
    let out = Command::new("getfattr")
        .args([
            "--absolute-names",
            "--only-values",
            "-n",
            "user.stratafs.stats",
        ])
        .arg(&m)
        .output()
        .expect("getfattr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // The transport in use: classic, or io_uring where enable_uring is Y (scripts/test.sh
    // runs the suite both ways). Under io_uring only INIT and FORGETs come over /dev/fuse.
    assert!(
        first == ["transport", "classic"] || first == ["transport", "io_uring"],
        "{text}"
    );
    let c = stats(&m);
    let n = |k: &str| c.get(k).copied().unwrap_or(0);
    assert!(n("total") >= 31, "{c:?}");
    assert_eq!(
        n("requests_classic") + n("requests_io_uring"),
        n("total"),
        "{c:?}"
    );
    if first[1] == "classic" {
        assert_eq!(n("requests_io_uring"), 0, "{c:?}");
    } else {
        assert_eq!(n("requests_classic"), n("init") + n("forget"), "{c:?}");
    }
    reset(&m);
    // Reading them is not counted (getfattr's own stat of the root may be).
    let zero = stats(&m);
    assert!(
        zero.get("requests_classic").is_some_and(|n| *n <= 2),
        "{zero:?}"
    );
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The kernel keeps directory listings (FOPEN_CACHE_DIR): listing an unchanged directory
/// again costs no READDIR, and a change through the mount shows in the next listing.
#[test]
fn listing_an_unchanged_directory_again_is_served_by_the_kernel() {
    let s = Scratch::new("req-rdc");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("d")).unwrap();
    for i in 0..100 {
        fs::write(l.join(format!("d/low{i}")), b"x").unwrap();
    }
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let d = m.join("d");
    let first = names(&d);
    assert_eq!(first.len(), 100);
    reset(&m);
    assert_eq!(names(&d), first);
    let c = stats(&m);
    let listed = c["readdir"] + c["readdirplus"];
    assert_eq!(listed, 0, "second listing of an unchanged directory: {c:?}");
    // Changes through the mount show at once (and cost one listing again).
    fs::write(d.join("new"), b"n").unwrap();
    fs::remove_file(d.join("low7")).unwrap();
    fs::rename(d.join("low8"), d.join("renamed")).unwrap();
    let mut want = first.clone();
    want.retain(|n| n != "low7" && n != "low8");
    want.push("new".into());
    want.push("renamed".into());
    want.sort();
    assert_eq!(names(&d), want);
    assert_eq!(names(&d), want);
}

/// A stream that read part of a (kernel-cached) listing and goes on after names changed
/// lists every name that did not change exactly once; a stream opened after the change
/// lists exactly the names there are. (POSIX leaves open only the changed names.)
#[test]
fn a_stream_read_across_changes_lists_unchanged_names_once() {
    let s = Scratch::new("req-rdc-stream");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("d")).unwrap();
    let n = 4000;
    for i in 0..n {
        fs::write(l.join(format!("d/low-name-{i:05}")), b"").unwrap();
    }
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let d = m.join("d");
    for round in 0..6 {
        let before = names(&d); // fills the kernel's cache (rounds > 0: after changes)
        let mut stream = fs::read_dir(&d).unwrap();
        let mut seen: Vec<String> = stream
            .by_ref()
            .take(10)
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        // Changes meanwhile: some removed, some renamed, some created.
        let mut changed: Vec<String> = Vec::new();
        let mut want: std::collections::BTreeSet<String> = before.iter().cloned().collect();
        for (k, name) in before.iter().enumerate() {
            if k % 97 == round {
                let new = format!("{name}-r{round}");
                fs::rename(d.join(name), d.join(&new)).unwrap();
                want.remove(name);
                want.insert(new.clone());
                changed.push(name.clone());
                changed.push(new);
            } else if k % 89 == round + 1 {
                fs::remove_file(d.join(name)).unwrap();
                want.remove(name);
                changed.push(name.clone());
            }
        }
        for k in 0..150 {
            let new = format!("new-{round}-{k}");
            fs::write(d.join(&new), b"").unwrap();
            want.insert(new.clone());
            changed.push(new);
        }
        seen.extend(stream.map(|e| e.unwrap().file_name().into_string().unwrap()));
        let now = names(&d);
        for name in now.iter().filter(|n| !changed.contains(n)) {
            let times = seen.iter().filter(|s| *s == name).count();
            assert_eq!(
                times, 1,
                "round {round}: unchanged {name} listed {times} times"
            );
        }
        let mut dup = seen.clone();
        dup.sort();
        dup.dedup();
        assert_eq!(dup.len(), seen.len(), "round {round}: a name listed twice");
        // A stream opened now lists exactly what there is.
        assert_eq!(now, want.into_iter().collect::<Vec<_>>(), "round {round}");
    }
}

/// The kernel appends to a directory's cached listing whatever any stream reads at the
/// offset where the cache ends, and a stream already past offset 0 may go on in a cached
/// listing without any check. So: A begins the cache (one page) before names are created;
/// D opens after the creation and reads one page; B reads everything (completing the
/// cache); D goes on. D opened after the names were created and must list all of them.
/// (With the cache on and nothing dropping it at the creation, D went on in a cache whose
/// first part predates the creation: names went missing.)
#[test]
fn a_stream_opened_after_a_change_lists_every_name_while_others_fill_the_cache() {
    let s = Scratch::new("req-rdc-fill");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("d")).unwrap();
    for i in 0..4000 {
        fs::write(l.join(format!("d/old-{i:05}")), b"").unwrap();
    }
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let d = m.join("d");
    let mut want: Vec<String> = (0..4000).map(|i| format!("old-{i:05}")).collect();
    for round in 0..4 {
        let mut a = fs::read_dir(&d).unwrap();
        a.next().unwrap().unwrap(); // one getdents: the first page of the listing
        for k in 0..300 {
            let n = format!("new-{round}-{k}");
            fs::write(d.join(&n), b"").unwrap();
            want.push(n);
        }
        want.sort();
        let mut dstream = fs::read_dir(&d).unwrap();
        let mut seen: Vec<String> = vec![dstream
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .into_string()
            .unwrap()];
        let b = names(&d);
        assert_eq!(b, want, "round {round}: stream B");
        seen.extend(dstream.map(|e| e.unwrap().file_name().into_string().unwrap()));
        seen.sort();
        let missing: Vec<_> = want.iter().filter(|n| !seen.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: stream D misses {} names, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(seen, want, "round {round}: stream D");
        drop(a);
    }
}

/// Where the kernel may cache every listing (default timeout, `udba=none`), OPENDIR is
/// answered ENOSYS once and the kernel sends no OPENDIR or RELEASEDIR again: a walk costs
/// none (on main: one of each per directory). With `udba=notify` or `timeout=` directories
/// are still opened (their listings are not all cached).
#[test]
fn a_walk_of_a_default_mount_opens_no_directory() {
    let s = Scratch::new("req-noopendir");
    let l = s.dir("l");
    for i in 0..50 {
        fs::create_dir_all(l.join(format!("d{i}/e"))).unwrap();
        fs::write(l.join(format!("d{i}/e/f")), b"x").unwrap();
    }
    let walk = |m: &Path| {
        let out = Command::new("find")
            .arg(m)
            .arg("-printf")
            .arg("%p %s\n")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    let dirs = 1 + 2 * 50;
    for (opts, opens) in [("", false), ("udba=notify", true), ("timeout=1", true)] {
        let (u, w, m) = (
            s.dir(&format!("u{opts}")),
            s.dir(&format!("w{opts}")),
            s.dir(&format!("m{opts}")),
        );
        let _mnt = Strata::mount(&Stack::one(&l, &u, &w), opts, &m);
        reset(&m);
        assert_eq!(walk(&m), dirs + 50);
        let first = stats(&m);
        reset(&m);
        assert_eq!(walk(&m), dirs + 50);
        let second = stats(&m);
        if opens {
            assert!(first["opendir"] >= dirs as u64, "{opts}: {first:?}");
            assert!(second["opendir"] >= dirs as u64, "{opts}: {second:?}");
            assert_eq!(
                second["opendir"], second["releasedir"],
                "{opts}: {second:?}"
            );
        } else {
            // The first OPENDIR of the connection is the one answered ENOSYS.
            assert!(first["opendir"] <= 1, "first walk: {first:?}");
            assert_eq!(first["releasedir"], 0, "first walk: {first:?}");
            assert_eq!(
                (second["opendir"], second["releasedir"]),
                (0, 0),
                "second walk: {second:?}"
            );
            assert_eq!(second["readdir"] + second["readdirplus"], 0, "{second:?}");
        }
    }
}

/// Files are opened with FOPEN_NOFLUSH: close(2) costs no FLUSH round trip, for created,
/// written, lower and copied-up files alike, and data and errors are not lost by it.
#[test]
fn closing_files_sends_no_flush() {
    let s = Scratch::new("req-noflush");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("low"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    reset(&m);
    for i in 0..10 {
        fs::write(m.join(format!("f{i}")), format!("data {i}\n")).unwrap();
    }
    assert_eq!(fs::read(m.join("low")).unwrap(), b"lower\n");
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("low"))
            .unwrap();
        f.write_all(b"appended\n").unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            fs::read(m.join(format!("f{i}"))).unwrap(),
            format!("data {i}\n").as_bytes()
        );
    }
    assert_eq!(fs::read(m.join("low")).unwrap(), b"lower\nappended\n");
    let c = stats(&m);
    assert_eq!(c["flush"], 0, "{c:?}");
    assert!(c["release"] >= 22, "{c:?}");
    assert_eq!(fs::read(u.join("low")).unwrap(), b"lower\nappended\n");
}

/// A change of names drops the kernel's cached listing of the directory (a notification,
/// which also drops the directory's cached attributes) only where the kernel may have one:
/// the directory was listed since the last drop. Creating files in a directory nobody
/// lists (an untar) sends none; on main it sent one per created entry.
#[test]
fn only_a_listed_directory_has_its_cached_listing_dropped() {
    let s = Scratch::new("req-inval");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir(l.join("d")).unwrap();
    fs::write(l.join("d/low"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let d = m.join("d");
    let drops = |m: &Path| stats(m).get("notify_inval_listing").copied();
    reset(&m);
    for i in 0..10 {
        fs::write(d.join(format!("f{i}")), b"x").unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    fs::remove_file(d.join("f0")).unwrap();
    assert_eq!(drops(&m), Some(0), "no listing, no drop");
    assert_eq!(names(&d).len(), 11);
    fs::write(d.join("after"), b"x").unwrap();
    assert_eq!(drops(&m), Some(1), "listed: the next change drops it");
    fs::write(d.join("after2"), b"x").unwrap();
    fs::rename(d.join("after2"), d.join("after3")).unwrap();
    assert_eq!(drops(&m), Some(1), "not listed again since");
    // And what the kernel lists is right throughout.
    let mut want: Vec<String> = (1..10).map(|i| format!("f{i}")).collect();
    want.extend(["after", "after3", "low", "sub"].map(String::from));
    want.sort();
    let mut got = names(&d);
    got.sort();
    assert_eq!(got, want);
    fs::remove_file(d.join("after")).unwrap();
    assert_eq!(drops(&m), Some(2));
    assert!(!names(&d).contains(&"after".to_string()));
}

/// Rootless (no passthrough: the writeback cache, under which the kernel ignores
/// FOPEN_NOFLUSH): the first close gets ENOSYS for its FLUSH and the kernel sends no more,
/// and written data, read back and in the upper, is all there. On main every close of a
/// file sent one FLUSH (43,600 of them in a rootless apt-get install).
#[test]
fn rootless_closes_send_at_most_one_flush() {
    let s = Scratch::new("req-flush-rootless");
    let (l, u) = (s.dir("l"), s.dir("u"));
    let _ = (s.dir("w"), s.dir("m"));
    fs::write(l.join("low"), b"lower\n").unwrap();
    let script = r#"set -e
d=$1
"$2" -f -o lowerdir=$d/l,upperdir=$d/u,workdir=$d/w $d/m 2>$d/daemon.log &
pid=$!
trap 'umount $d/m 2>/dev/null || true; wait $pid' EXIT
i=0; while ! grep -q " $d/m fuse" /proc/mounts; do i=$((i+1)); [ $i -lt 150 ]; sleep 0.1; done
setfattr -n user.stratafs.stats -v reset $d/m
for i in $(seq 1 20); do echo "data $i" > $d/m/f$i; done
echo appended >> $d/m/low
for i in $(seq 1 20); do [ "$(cat $d/m/f$i)" = "data $i" ]; done
getfattr --absolute-names --only-values -n user.stratafs.stats $d/m | grep -E '^(flush|release) '
"#;
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", script, "sh"])
        .arg(&s.0)
        .arg(common::bin())
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    assert!(count("flush") <= 1, "{text}");
    assert!(count("release") >= 41, "{text}");
    assert_eq!(fs::read(u.join("low")).unwrap(), b"lower\nappended\n");
    for i in 1..=20 {
        assert_eq!(
            fs::read(u.join(format!("f{i}"))).unwrap(),
            format!("data {i}\n").as_bytes()
        );
    }
}

/// What tar does for each file it extracts as root (create, two writes, futimens, fchown,
/// fchmod, close), counted: the daemon drops setuid/setgid bits itself
/// (FUSE_HANDLE_KILLPRIV_V2), so the kernel asks no GETATTR before the chown, and with
/// SB_NOSEC it asks for security.capability once per write run (the first write finds
/// none), not at every write; the chown still asks (the VFS does, whatever the filesystem).
/// Before: getattr 1 and 3 security.capability per file.
#[test]
fn extracting_a_file_asks_no_getattr_for_the_chown_and_capabilities_once_per_write_run() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let s = Scratch::new("req-killpriv");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    fs::create_dir(m.join("d")).unwrap();
    let n = 20u64;
    reset(&m);
    for i in 0..n {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(m.join(format!("d/f{i}")))
            .unwrap();
        use std::io::Write;
        f.write_all(&[1u8; 8704]).unwrap();
        f.write_all(&[2u8; 3296]).unwrap();
        let fd = f.as_raw_fd();
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
        ];
        // SAFETY: fd is open; times is two valid timespecs.
        assert_eq!(unsafe { libc::futimens(fd, times.as_ptr()) }, 0);
        std::os::unix::fs::fchown(&f, Some(0), Some(0)).unwrap();
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    let c = stats(&m);
    let per = |k: &str| c.get(k).copied().unwrap_or(0) as f64 / n as f64;
    // One GETATTR per create remains: the kernel drops the parent's cached attributes
    // after a create and checks its permissions at the next lookup.
    assert!(per("getattr") <= 1.0, "getattr per file: {c:?}");
    assert!(
        per("getxattr_security.capability") <= 2.0,
        "security.capability per file: {c:?}"
    );
    assert_eq!(per("setattr"), 3.0, "{c:?}");
    assert!(per("total") <= 9.0, "{c:?}");
}

/// Symlink targets stay in the kernel (FUSE_CACHE_SYMLINKS): walking through a lower
/// symlink a hundred times reads it once; a symlink replaced through the mount (removed and
/// made again, renamed over, copied up by a chown) shows its new target at once; with
/// `udba=reval` or `timeout=` (direct changes looked for) every walk asks again.
#[test]
fn symlink_targets_are_cached_unless_udba_checks_direct_changes() {
    use std::os::unix::fs::symlink;
    let s = Scratch::new("req-symlink");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir_all(l.join("d1")).unwrap();
    fs::create_dir_all(l.join("d2")).unwrap();
    fs::write(l.join("d1/f"), b"one\n").unwrap();
    fs::write(l.join("d2/f"), b"two\n").unwrap();
    symlink("d1", l.join("lnk")).unwrap();
    let walk = |m: &Path, n: usize| {
        for _ in 0..n {
            fs::read(m.join("lnk/f")).unwrap();
        }
    };
    {
        let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
        reset(&m);
        walk(&m, 100);
        assert_eq!(stats(&m).get("readlink"), Some(&1), "{:?}", stats(&m));
        // Replaced through the mount: the new target at once, each way.
        fs::remove_file(m.join("lnk")).unwrap();
        symlink("d2", m.join("lnk")).unwrap();
        assert_eq!(fs::read(m.join("lnk/f")).unwrap(), b"two\n");
        symlink("d1", m.join("lnk.new")).unwrap();
        fs::rename(m.join("lnk.new"), m.join("lnk")).unwrap();
        assert_eq!(fs::read_link(m.join("lnk")).unwrap(), Path::new("d1"));
        assert_eq!(fs::read(m.join("lnk/f")).unwrap(), b"one\n");
        std::os::unix::fs::lchown(m.join("lnk"), Some(1), Some(1)).unwrap();
        assert_eq!(fs::read_link(m.join("lnk")).unwrap(), Path::new("d1"));
        assert_eq!(fs::read_link(u.join("lnk")).unwrap(), Path::new("d1"));
    }
    for (i, opts) in ["udba=reval", "timeout=5"].into_iter().enumerate() {
        let (u2, w2) = (s.dir(&format!("u{i}")), s.dir(&format!("w{i}")));
        let _mnt = Strata::mount(&Stack::one(&l, &u2, &w2), opts, &m);
        reset(&m);
        walk(&m, 20);
        assert!(
            stats(&m).get("readlink").is_some_and(|n| *n >= 20),
            "{opts}: every walk reads the link: {:?}",
            stats(&m)
        );
    }
}

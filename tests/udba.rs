//! Changes made directly to the branches while mounted (aufs's "udba" question).
//!
//! `udba=none` (the default; the first test): stratafs keeps no copy of branch data or
//! listings: every lookup, getattr, readdir and open goes to the branches, and only the
//! kernel caches entries and attributes, for `timeout=` seconds (here 1). So once the
//! timeout has passed, a lower or upper file rewritten, added or removed behind the
//! daemon's back shows through the mount with its new size and content, a removed one gives
//! ENOENT, a file replaced by a directory shows as a directory, and nothing crashes. A file
//! that was already open keeps reading the object it opened (like any open file whose name
//! is removed).
//!
//! `udba=notify`, with the default (day-long) caches: every kind of direct change, in the
//! upper and in the lower, shows within a poll (asserted: within 2 s; the time to
//! visibility is measured and printed), and the view then equals what a fresh stratafs
//! mount and a fresh kernel overlayfs mount of the changed branches show. Watches exist only
//! for the directories the kernel holds and go when it forgets them (counted in the
//! daemon's /proc/PID/fdinfo); past `udba_max_watches=` directories are checked on access
//! (`reval`), with one warning. `udba=reval`: every access sees the branches as they are.
//! With `udba=none` (today's behaviour) each change of the notify test stays unseen: the
//! polls time out.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_same, snapshot, Kernel, Scratch, Stack, Strata};

fn listing(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn branches_changed_underneath_show_after_the_timeout() {
    let s = Scratch::new("udba");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("lf"), b"old lower").unwrap();
    fs::write(l.join("lgone"), b"lower, removed later").unwrap();
    fs::write(l.join("lopen"), b"lower, open while removed").unwrap();
    fs::write(l.join("ltype"), b"lower file, a dir later").unwrap();
    fs::create_dir(l.join("ld")).unwrap();
    fs::write(l.join("ld/inner"), b"inner").unwrap();
    fs::write(u.join("uf"), b"old upper").unwrap();
    // A merged directory (in both layers) whose lower part alone changes: its own
    // attributes (the upper's) stay the same.
    fs::create_dir(l.join("md")).unwrap();
    fs::create_dir(u.join("md")).unwrap();
    fs::write(l.join("md/oldlower"), b"o").unwrap();
    fs::write(u.join("md/up"), b"u").unwrap();
    fs::write(u.join("ugone"), b"upper, removed later").unwrap();
    fs::write(u.join("ss"), b"AAAA").unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "timeout=1", &m);
    // Fill the kernel's caches: entries, attributes, pages, the listing.
    for n in ["lf", "lgone", "ltype", "uf", "ugone", "ld/inner"] {
        fs::read(m.join(n)).unwrap();
    }
    let before = listing(&m);
    assert_eq!(listing(&m.join("md")), ["oldlower", "up"]);
    assert_eq!(fs::read(m.join("ss")).unwrap(), b"AAAA");
    let mut open = fs::File::open(m.join("lopen")).unwrap();

    // Behind the daemon's back.
    fs::write(l.join("lf"), b"new lower content, longer").unwrap();
    fs::write(l.join("ladded"), b"added to the lower").unwrap();
    fs::remove_file(l.join("lgone")).unwrap();
    fs::remove_file(l.join("lopen")).unwrap();
    fs::remove_file(l.join("ltype")).unwrap();
    fs::create_dir(l.join("ltype")).unwrap();
    fs::remove_dir_all(l.join("ld")).unwrap();
    {
        // Rewritten in place (same inode), as an editor without rename would.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(u.join("uf"))
            .unwrap();
        f.write_all(b"new upper content, much longer than before")
            .unwrap();
    }
    fs::write(u.join("uadded"), b"added to the upper").unwrap();
    fs::write(l.join("md/newlower"), b"n").unwrap();
    fs::remove_file(l.join("md/oldlower")).unwrap();
    fs::remove_file(u.join("ugone")).unwrap();
    fs::write(u.join("ss"), b"BBBB").unwrap();

    // Past the attribute and entry timeout (a kernel clock, not load dependent).
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        fs::read(m.join("lf")).unwrap(),
        b"new lower content, longer",
        "rewritten lower file"
    );
    assert_eq!(fs::metadata(m.join("lf")).unwrap().len(), 25);
    assert_eq!(
        fs::read(m.join("uf")).unwrap(),
        b"new upper content, much longer than before",
        "upper file rewritten in place"
    );
    assert_eq!(fs::metadata(m.join("uf")).unwrap().len(), 42);
    assert_eq!(fs::read(m.join("ladded")).unwrap(), b"added to the lower");
    assert_eq!(fs::read(m.join("uadded")).unwrap(), b"added to the upper");
    for gone in ["lgone", "ugone", "lopen", "ld/inner", "ld"] {
        let e = fs::metadata(m.join(gone)).expect_err(gone);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{gone}: {e:?}");
    }
    match fs::symlink_metadata(m.join("ltype")) {
        Ok(md) => assert!(md.is_dir(), "ltype is a directory now"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "ltype: {e:?}"),
    }
    assert_eq!(
        listing(&m.join("md")),
        ["newlower", "up"],
        "merged dir listing after its lower part changed"
    );
    assert_eq!(
        fs::read(m.join("ss")).unwrap(),
        b"BBBB",
        "same-size rewrite"
    );
    let after = listing(&m);
    assert_ne!(before, after);
    assert_eq!(
        after,
        ["ladded", "lf", "ltype", "md", "ss", "uadded", "uf"],
        "listing after the changes"
    );
    // The open file still reads what it opened.
    let mut b = String::new();
    open.seek(SeekFrom::Start(0)).unwrap();
    open.read_to_string(&mut b).unwrap();
    assert_eq!(b, "lower, open while removed");
    drop(open);
    // Copy-up takes the lower file as it is now.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("lf"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(
        fs::read(u.join("lf")).unwrap(),
        b"new lower content, longer+"
    );
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
}

fn gone(p: &Path) -> bool {
    fs::symlink_metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
}

fn reads(p: &Path, want: &[u8]) -> bool {
    fs::read(p).is_ok_and(|d| d == want)
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

/// Times to visibility, by change; `at_once`: each change must show at the first access.
#[derive(Default)]
struct Times(Vec<(String, Duration)>, bool);

impl Times {
    /// Polls `seen` (through the mount) from `start`, the end of a direct change, until it
    /// holds; panics after 2 s.
    fn until(&mut self, what: &str, start: Instant, seen: impl Fn() -> bool) {
        loop {
            if seen() {
                self.0.push((what.to_string(), start.elapsed()));
                return;
            }
            assert!(!self.1, "{what}: not seen at the first access");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{what}: not visible through the mount within 2 s"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn report(&self, tag: &str) {
        let mut d: Vec<Duration> = self.0.iter().map(|(_, d)| *d).collect();
        d.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "{tag}: time to visibility over {} changes: median {:.2} ms, max {:.2} ms",
            d.len(),
            ms(d[d.len() / 2]),
            ms(d[d.len() - 1])
        );
        for (w, t) in &self.0 {
            eprintln!("  {w}: {:.2} ms", ms(*t));
        }
    }
}

/// Lists every directory, reads every file and stats `missing` through `m`, so the kernel
/// caches entries (negative ones too), attributes, listings and pages.
fn fill_caches(m: &Path, missing: &[&str]) {
    snapshot(m);
    // Opening a file may drop its cached attributes (dispatch/open.rs, `drop_staled_attrs`): stat everything
    // again, last.
    fn stat_all(p: &Path) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                stat_all(&e.unwrap().path());
            }
        }
    }
    stat_all(m);
    for n in missing {
        assert!(gone(&m.join(n)), "{n} exists before the change");
    }
}

/// The branches of the notify tests, before the direct changes.
fn populate(l: &Path, u: &Path) {
    for (layer, p) in [(l, "l"), (u, "u")] {
        for n in ["gone", "rep", "ren", "chmod"] {
            fs::write(layer.join(format!("{p}{n}")), format!("{p}{n} before")).unwrap();
        }
        fs::write(layer.join(format!("{p}f")), b"short").unwrap();
        fs::write(layer.join(format!("{p}same")), b"AAAA").unwrap();
        fs::create_dir(layer.join(format!("{p}d"))).unwrap();
        fs::write(layer.join(format!("{p}d/inner")), b"inner").unwrap();
    }
    // A merged directory whose lower part alone changes.
    fs::create_dir(l.join("md")).unwrap();
    fs::create_dir(u.join("md")).unwrap();
    fs::write(l.join("md/oldlower"), b"o").unwrap();
    fs::write(u.join("md/up"), b"u").unwrap();
    // An upper directory that gets a lower part.
    fs::create_dir(u.join("ud2")).unwrap();
    fs::write(u.join("ud2/up"), b"u").unwrap();
}

/// Makes each direct change to `l` (lower) and `u` (upper) and waits for it to show
/// through `m`.
fn change_and_watch(l: &Path, u: &Path, m: &Path, t: &mut Times) {
    for (layer, p) in [(l, "l"), (u, "u")] {
        let name = |n: &str| format!("{p}{n}");
        let (at, rel) = (|n: &str| layer.join(name(n)), |n: &str| m.join(name(n)));

        fs::write(at("added"), b"added").unwrap();
        t.until(&name("added: create"), Instant::now(), || {
            reads(&rel("added"), b"added")
        });

        fs::remove_file(at("gone")).unwrap();
        t.until(&name("gone: remove"), Instant::now(), || gone(&rel("gone")));

        fs::write(layer.join(".tmp"), b"replaced, longer").unwrap();
        fs::rename(layer.join(".tmp"), at("rep")).unwrap();
        t.until(&name("rep: replace (rename over)"), Instant::now(), || {
            fs::metadata(rel("rep")).is_ok_and(|md| md.len() == 16)
                && reads(&rel("rep"), b"replaced, longer")
        });

        fs::rename(at("ren"), at("ren2")).unwrap();
        let want = format!("{p}ren before");
        t.until(&name("ren: rename"), Instant::now(), || {
            gone(&rel("ren")) && reads(&rel("ren2"), want.as_bytes())
        });

        fs::write(at("f"), b"much longer content").unwrap();
        t.until(&name("f: modify (size)"), Instant::now(), || {
            fs::metadata(rel("f")).is_ok_and(|md| md.len() == 19)
                && reads(&rel("f"), b"much longer content")
        });

        // Same size, in place: only a dropped page cache shows it, also to an open file.
        let open = fs::File::open(rel("same")).unwrap();
        let mut old = String::new();
        (&open).read_to_string(&mut old).unwrap();
        assert_eq!(old, "AAAA");
        let before = fs::symlink_metadata(rel("same"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        {
            let mut f = fs::OpenOptions::new().write(true).open(at("same")).unwrap();
            f.write_all(b"BBBB").unwrap();
        }
        t.until(&name("same: rewrite in place"), Instant::now(), || {
            let mut b = String::new();
            fs::symlink_metadata(rel("same")).is_ok_and(|md| md.modified().unwrap() != before)
                && reads(&rel("same"), b"BBBB")
                && (&open).seek(SeekFrom::Start(0)).is_ok()
                && (&open).read_to_string(&mut b).is_ok()
                && b == "BBBB"
        });

        fs::set_permissions(at("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
        t.until(&name("chmod: attribute"), Instant::now(), || {
            mode_of(&rel("chmod")) == 0o600
        });

        fs::create_dir(at("newd")).unwrap();
        fs::write(at("newd/f"), b"in a new dir").unwrap();
        t.until(&name("newd: new directory"), Instant::now(), || {
            reads(&m.join(name("newd")).join("f"), b"in a new dir")
        });

        fs::remove_dir_all(at("d")).unwrap();
        t.until(&name("d: directory removed"), Instant::now(), || {
            gone(&rel("d")) && gone(&m.join(name("d")).join("inner"))
        });
    }
    fs::write(l.join("md/newlower"), b"n").unwrap();
    fs::remove_file(l.join("md/oldlower")).unwrap();
    t.until("md: merged directory, lower part", Instant::now(), || {
        listing(&m.join("md")) == ["newlower", "up"]
    });
    // Also to a directory held open (as a working directory is): listed through its fd,
    // with no lookup of its name.
    let held = fs::File::open(m.join("ud2")).unwrap();
    let by_fd = Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&held).to_string());
    fs::create_dir(l.join("ud2")).unwrap();
    fs::write(l.join("ud2/low"), b"l").unwrap();
    t.until("ud2: lower part appears", Instant::now(), || {
        listing(&by_fd) == ["low", "up"]
            && listing(&m.join("ud2")) == ["low", "up"]
            && reads(&m.join("ud2/low"), b"l")
    });
    drop(held);
}

const MISSING: &[&str] = &[
    "ladded", "uadded", "lren2", "uren2", "lnewd", "unewd", "ud2/low",
];

/// `udba=notify` with the default caches: every direct change shows within a poll, and
/// the view then equals fresh stratafs and kernel overlayfs mounts of the same branches.
#[test]
fn notify_shows_direct_changes_at_once_as_fresh_mounts_show_them() {
    let s = Scratch::new("udba-notify");
    let (l, u, w, m, k) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"), s.dir("k"));
    populate(&l, &u);
    let stack = Stack::one(&l, &u, &w);
    let mnt = Strata::mount(&stack, "udba=notify", &m);
    fill_caches(&m, MISSING);
    let mut t = Times::default();
    change_and_watch(&l, &u, &m, &mut t);
    t.report("udba=notify");
    let live = snapshot(&m);
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");

    let fresh = Strata::mount(&stack, "", &m);
    let fresh_view = snapshot(&m);
    drop(fresh);
    assert_same(
        "udba=notify after the changes vs a fresh mount",
        &live,
        &fresh_view,
    );
    let kernel = Kernel::mount(&stack, "", &k);
    let kernel_view = snapshot(&k);
    drop(kernel);
    assert_same(
        "udba=notify after the changes vs the kernel overlayfs",
        &live,
        &kernel_view,
    );
}

/// `udba=reval`: no caching, so each direct change shows at the next access.
#[test]
fn reval_sees_each_direct_change_at_the_next_access() {
    let s = Scratch::new("udba-reval");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    populate(&l, &u);
    let stack = Stack::one(&l, &u, &w);
    let mnt = Strata::mount(&stack, "udba=reval", &m);
    fill_caches(&m, MISSING);
    // Checked on access: each change shows at the first look.
    let mut t = Times(Vec::new(), true);
    change_and_watch(&l, &u, &m, &mut t);
    t.report("udba=reval");
    let live = snapshot(&m);
    drop(mnt);
    let fresh = Strata::mount(&stack, "", &m);
    assert_same(
        "udba=reval after the changes vs a fresh mount",
        &live,
        &snapshot(&m),
    );
    drop(fresh);
}

fn tree(l: &Path, u: &Path, dirs: usize) {
    for i in 0..dirs {
        let d = l.join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), b"f").unwrap();
        fs::create_dir(d.join("sub")).unwrap();
        if i % 2 == 0 {
            // Merged: an upper part too.
            fs::create_dir(u.join(format!("d{i}"))).unwrap();
            fs::write(u.join(format!("d{i}/uf")), b"u").unwrap();
        }
    }
}

/// Watches exist only for the directories the kernel holds: one per real directory after
/// a walk, and back to the root's once the kernel forgets the rest.
#[test]
fn notify_watches_follow_the_kernels_directories() {
    let s = Scratch::new("udba-watches");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let n = 20;
    tree(&l, &u, n);
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "udba=notify", &m);
    let pid = mnt.pid();
    assert_eq!(
        common::inotify_watches(pid),
        2,
        "the root's upper and lower"
    );
    snapshot(&m);
    // dN (lower, and upper for even N) and dN/sub (lower).
    let walked = 2 + n + n / 2 + n;
    assert_eq!(
        common::inotify_watches(pid),
        walked,
        "one per real directory after the walk"
    );
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    let start = Instant::now();
    while common::inotify_watches(pid) > 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        common::inotify_watches(pid),
        2,
        "released after the kernel forgot the directories"
    );
    // Watched again when looked up again.
    snapshot(&m);
    assert_eq!(common::inotify_watches(pid), walked);
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
}

/// Past `udba_max_watches=` the unwatched directories are checked on access: every direct
/// change still shows, and the log has one warning.
#[test]
fn out_of_watches_degrades_to_reval_with_one_warning() {
    let s = Scratch::new("udba-cap");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let n = 6;
    tree(&l, &u, n);
    let log = s.path("daemon.log");
    let stack = Stack::one(&l, &u, &w);
    let mnt = Strata::mount_logged(&stack, "udba=notify,udba_max_watches=5", &m, Some(&log));
    let pid = mnt.pid();
    let names: Vec<String> = (0..n).map(|i| format!("d{i}/new")).collect();
    let missing: Vec<&str> = names.iter().map(String::as_str).collect();
    fill_caches(&m, &missing);
    assert_eq!(common::inotify_watches(pid), 5, "the cap holds");
    let mut t = Times::default();
    for i in 0..n {
        let (ld, md) = (l.join(format!("d{i}")), m.join(format!("d{i}")));
        fs::write(ld.join("new"), b"new").unwrap();
        t.until(&format!("d{i}/new: create"), Instant::now(), || {
            reads(&md.join("new"), b"new")
        });
        fs::write(ld.join("f"), b"g").unwrap();
        t.until(&format!("d{i}/f: rewrite"), Instant::now(), || {
            reads(&md.join("f"), b"g")
        });
        fs::set_permissions(ld.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
        t.until(&format!("d{i}/f: chmod"), Instant::now(), || {
            mode_of(&md.join("f")) == 0o640
        });
        fs::remove_dir(ld.join("sub")).unwrap();
        t.until(&format!("d{i}/sub: rmdir"), Instant::now(), || {
            gone(&md.join("sub")) && !listing(&md).contains(&"sub".to_string())
        });
    }
    t.report("udba=notify past the cap");
    let live = snapshot(&m);
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
    let text = fs::read_to_string(&log).unwrap();
    let warnings = text.matches("cannot watch more directories").count();
    assert_eq!(warnings, 1, "one warning; the log:\n{text}");
    let fresh = Strata::mount(&stack, "", &m);
    assert_same("past the cap vs a fresh mount", &live, &snapshot(&m));
    drop(fresh);
}

/// `udba=notify` in a user namespace (rootless podman's case): inotify needs no privilege,
/// so direct changes show there too.
#[test]
fn notify_works_in_a_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    const USER: &str = "stratafs-podman";
    let exists = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let st = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", USER])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {USER} failed");
    }
    // /dev/fuse usable by the user for the test (restored after).
    struct Mode(u32);
    impl Drop for Mode {
        fn drop(&mut self) {
            if self.0 & 0o666 != 0o666 {
                let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
            }
        }
    }
    let mode = Mode(fs::metadata("/dev/fuse").unwrap().mode() & 0o7777);
    if mode.0 & 0o666 != 0o666 {
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    }
    let s = Scratch::new("udba-userns");
    let (l, u) = (s.dir("l"), s.dir("u"));
    s.dir("w");
    s.dir("m");
    fs::write(l.join("lf"), b"short").unwrap();
    fs::write(u.join("ugone"), b"u").unwrap();
    let bin = s.path("stratafs");
    fs::copy(common::bin(), &bin).unwrap();
    let st = Command::new("chown")
        .args(["-R", USER])
        .arg(&s.0)
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"
D=$1
"$D/stratafs" -o "lowerdir=$D/l,upperdir=$D/u,workdir=$D/w,udba=notify" "$D/m" || exit 1
cat "$D/m/lf" "$D/m/ugone" > /dev/null; ls "$D/m" > /dev/null; [ ! -e "$D/m/ladded" ] || exit 1
wait_for() { # NAME TEST...
    n=$1; shift; i=0
    until "$@"; do i=$((i+1)); [ $i -lt 400 ] || { echo "STALE $n"; return; }; sleep 0.005; done
    echo "ok $n"
}
echo added > "$D/l/ladded"
wait_for create test -e "$D/m/ladded"
rm "$D/u/ugone"
wait_for remove test ! -e "$D/m/ugone"
echo "much longer content" > "$D/l/lf"
wait_for modify sh -c "[ \"\$(stat -c %s '$D/m/lf')\" = 20 ]"
fusermount3 -u "$D/m" || umount "$D/m"
"#;
    let out = Command::new("runuser")
        .args(["-u", USER, "--", "timeout", "-k", "10", "60", "unshare"])
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&s.0)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in ["create", "remove", "modify"] {
        assert!(text.contains(&format!("ok {w}")), "{w} not seen:\n{text}");
    }
    drop(mode);
}

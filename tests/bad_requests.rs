//! Malformed and racing requests: the core (`UnionFs`, called directly as `src/dispatch/`
//! does) answers every bad request with an errno and never panics, and never resolves a
//! name outside its branches ("..", "/" inside names). A mounted test races rmdir/mkdir
//! of a directory against lookups, listings and creates inside it; the daemon stays up.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{snapshot, Scratch, Stack, Strata};
use stratafs::attr::SetAttr;
use stratafs::dir::NewKind;
use stratafs::fs::{Caller, UnionFs};
use stratafs::options::{parse_args, Command};

const ROOT: u64 = 1;

/// A `UnionFs` over `lower` / `upper` / `work` as `stratafs -o … mnt` would build it.
fn union(
    lower: &std::path::Path,
    upper: &std::path::Path,
    work: &std::path::Path,
    mnt: &std::path::Path,
) -> UnionFs {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mut cfg = match parse_args([
        "stratafs".as_ref(),
        "-o".as_ref(),
        OsStr::new(&opts),
        mnt.as_os_str(),
    ]) {
        Ok(Command::Mount(c)) => *c,
        other => panic!("parse: {other:?}"),
    };
    cfg.validate().expect("valid config");
    UnionFs::new(&cfg).expect("UnionFs::new")
}

/// Counts the checked cases and fails on any Ok.
struct Cases(u32);

impl Cases {
    fn err<T: std::fmt::Debug>(&mut self, what: &str, r: stratafs::Result<T>) -> i32 {
        self.0 += 1;
        match r {
            Ok(v) => panic!("{what}: expected an errno, got Ok({v:?})"),
            Err(e) => {
                assert!(e.errno > 0, "{what}: errno {}", e.errno);
                e.errno
            }
        }
    }

    fn errno<T: std::fmt::Debug>(&mut self, what: &str, r: stratafs::Result<T>, want: i32) {
        let got = self.err(what, r);
        assert_eq!(got, want, "{what}: errno {got}, want {want}");
    }
}

#[test]
fn bad_requests_get_errnos_not_panics() {
    let s = Scratch::new("badreq");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let outside = s.dir("outside-canary");
    fs::write(outside.join("secret"), b"canary").unwrap();
    fs::create_dir_all(l.join("d/sub")).unwrap();
    fs::write(l.join("d/sub/f"), b"lower f").unwrap();
    fs::write(l.join("file"), b"lower file").unwrap();
    let before_outside = snapshot(&outside);
    let before_lower = snapshot(&l);
    let fs_ = union(&l, &u, &w, &m);
    let me = Caller::ROOT;
    let mut c = Cases(0);

    // Unknown handles.
    for fh in [0u64, 7, 9999, u64::MAX] {
        c.errno("read unknown fh", fs_.read(fh, 0, 10), libc::EBADF);
        c.errno("write unknown fh", fs_.write(fh, 0, b"x"), libc::EBADF);
        c.errno("fsync unknown fh", fs_.fsync(fh, false), libc::EBADF);
        c.errno(
            "lseek unknown fh",
            fs_.lseek(fh, 0, libc::SEEK_DATA),
            libc::EBADF,
        );
        c.errno(
            "fallocate unknown fh",
            fs_.fallocate(fh, 0, 10, 0),
            libc::EBADF,
        );
        c.errno("readdir unknown fh", fs_.readdir(ROOT, fh, 0), libc::EBADF);
        c.errno(
            "copy_file_range unknown fh",
            fs_.copy_file_range(fh, 0, fh, 4096, 10),
            libc::EBADF,
        );
        c.err(
            "getattr of an unknown ino with an unknown fh",
            fs_.getattr(0xbad, Some(fh)),
        );
        fs_.release(fh); // no reply; must not panic
        fs_.releasedir(fh);
        c.0 += 2;
    }
    // Unknown inode numbers.
    for ino in [0u64, 2, 0xdead_beef, u64::MAX] {
        c.err("getattr unknown ino", fs_.getattr(ino, None));
        c.err("lookup in unknown ino", fs_.lookup(ino, OsStr::new("x")));
        c.err("opendir unknown ino", fs_.opendir(ino));
        c.err("open unknown ino", fs_.open(ino, libc::O_RDONLY));
        c.err("readlink unknown ino", fs_.readlink(ino));
        c.err(
            "setattr unknown ino",
            fs_.setattr(
                ino,
                SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            ),
        );
        c.err(
            "getxattr unknown ino",
            fs_.getxattr(ino, OsStr::new("user.x")),
        );
        c.err("listxattr unknown ino", fs_.listxattr(ino));
        c.err(
            "setxattr unknown ino",
            fs_.setxattr(ino, OsStr::new("user.x"), b"v", 0),
        );
        c.err(
            "create in unknown ino",
            fs_.create_entry(
                ino,
                OsStr::new("n"),
                0o644,
                0,
                NewKind::File {
                    flags: libc::O_RDWR,
                },
                me,
            ),
        );
        c.err(
            "mkdir in unknown ino",
            fs_.create_entry(ino, OsStr::new("n"), 0o755, 0, NewKind::Dir, me),
        );
        c.err(
            "unlink in unknown ino",
            fs_.remove(ino, OsStr::new("file"), false),
        );
        c.err(
            "rename from unknown ino",
            fs_.rename(ino, OsStr::new("file"), ROOT, OsStr::new("z"), 0),
        );
        c.err(
            "rename to unknown ino",
            fs_.rename(ROOT, OsStr::new("file"), ino, OsStr::new("z"), 0),
        );
        c.err("link of unknown ino", fs_.link(ino, ROOT, OsStr::new("z")));
        c.err(
            "link into unknown ino",
            fs_.link(ROOT, ino, OsStr::new("z")),
        );
        c.err("fsyncdir unknown ino", fs_.fsyncdir(ino, false));
        c.err("access unknown ino", fs_.access(ino, libc::R_OK, me));
        fs_.forget(ino, 1); // unknown inode: ignored
        fs_.forget(ino, u64::MAX);
        c.0 += 2;
    }
    // A forgotten inode (nlookup larger than held) is gone afterwards, not negative.
    let d = fs_.lookup(ROOT, OsStr::new("d")).unwrap().ino;
    let sub = fs_.lookup(d, OsStr::new("sub")).unwrap().ino;
    let f = fs_.lookup(ROOT, OsStr::new("file")).unwrap().ino;
    fs_.forget(sub, 1000);
    c.0 += 1;
    c.errno("getattr forgotten", fs_.getattr(sub, None), libc::ESTALE);
    c.err("lookup in forgotten dir", fs_.lookup(sub, OsStr::new("f")));
    c.err("readdir forgotten", fs_.opendir(sub));
    c.err(
        "create in forgotten dir",
        fs_.create_entry(
            sub,
            OsStr::new("n"),
            0o644,
            0,
            NewKind::File {
                flags: libc::O_RDWR,
            },
            me,
        ),
    );
    c.err(
        "rename into forgotten dir",
        fs_.rename(ROOT, OsStr::new("file"), sub, OsStr::new("z"), 0),
    );
    c.err("link into forgotten dir", fs_.link(f, sub, OsStr::new("z")));
    // Wrong types.
    c.errno(
        "lookup in a file",
        fs_.lookup(f, OsStr::new("x")),
        libc::ENOTDIR,
    );
    c.errno("opendir of a file", fs_.opendir(f), libc::ENOTDIR);
    c.errno("open of a dir", fs_.open(d, libc::O_RDONLY), libc::EISDIR);
    c.errno(
        "truncate a dir",
        fs_.setattr(
            d,
            SetAttr {
                size: Some(1),
                ..Default::default()
            },
        ),
        libc::EISDIR,
    );
    // A stream of one directory used for another.
    let dh = fs_.opendir(d).unwrap();
    c.errno(
        "readdir with another dir's fh",
        fs_.readdir(ROOT, dh, 0),
        libc::EBADF,
    );
    // Absurd readdir offsets: the listing is returned whole; the adapter skips past its end.
    for off in [1u64 << 40, u64::MAX, i64::MAX as u64] {
        let list = fs_.readdir(d, dh, off).expect("readdir at a huge offset");
        assert!(list.len() >= 3);
        c.0 += 1;
    }
    fs_.releasedir(dh);
    c.errno(
        "readdir after releasedir",
        fs_.readdir(d, dh, 0),
        libc::EBADF,
    );

    // Bad names: never resolved as paths, never outside the branch.
    let long = "n".repeat(256);
    for (name, what) in [
        ("", "empty"),
        ("d/sub", "with a slash"),
        ("/", "a slash"),
        ("../outside-canary", "dot-dot slash"),
        (long.as_str(), "256 bytes"),
    ] {
        c.err(
            &format!("lookup {what}"),
            fs_.lookup(ROOT, OsStr::new(name)),
        );
        c.err(
            &format!("create {what}"),
            fs_.create_entry(
                ROOT,
                OsStr::new(name),
                0o644,
                0,
                NewKind::File {
                    flags: libc::O_RDWR,
                },
                me,
            ),
        );
        c.err(
            &format!("mkdir {what}"),
            fs_.create_entry(d, OsStr::new(name), 0o755, 0, NewKind::Dir, me),
        );
        c.err(
            &format!("symlink {what}"),
            fs_.create_entry(ROOT, OsStr::new(name), 0o777, 0, NewKind::Symlink(b"t"), me),
        );
        c.err(
            &format!("unlink {what}"),
            fs_.remove(d, OsStr::new(name), false),
        );
        c.err(
            &format!("rmdir {what}"),
            fs_.remove(d, OsStr::new(name), true),
        );
        c.err(
            &format!("rename from {what}"),
            fs_.rename(d, OsStr::new(name), ROOT, OsStr::new("z"), 0),
        );
        c.err(
            &format!("rename to {what}"),
            fs_.rename(ROOT, OsStr::new("file"), d, OsStr::new(name), 0),
        );
        c.err(
            &format!("link to {what}"),
            fs_.link(f, ROOT, OsStr::new(name)),
        );
    }
    // Names with a NUL byte.
    let nul = OsStr::from_bytes(b"a\0b");
    c.err("lookup with NUL", fs_.lookup(ROOT, nul));
    c.err(
        "create with NUL",
        fs_.create_entry(
            ROOT,
            nul,
            0o644,
            0,
            NewKind::File {
                flags: libc::O_RDWR,
            },
            me,
        ),
    );
    // "." and "..": the directory itself and its parent (FUSE_EXPORT_SUPPORT), never
    // anything outside the branch; and never created, removed or renamed.
    assert_eq!(fs_.lookup(d, OsStr::new(".")).expect("lookup .").ino, d);
    assert_eq!(
        fs_.lookup(d, OsStr::new("..")).expect("lookup ..").ino,
        ROOT
    );
    assert_eq!(
        fs_.lookup(ROOT, OsStr::new(".."))
            .expect("lookup .. of root")
            .ino,
        ROOT
    );
    assert_eq!(
        fs_.lookup(ROOT, OsStr::new("."))
            .expect("lookup . of root")
            .ino,
        ROOT
    );
    c.0 += 4;
    for dot in [".", ".."] {
        for parent in [ROOT, d] {
            let n = OsStr::new(dot);
            c.err(
                "create .",
                fs_.create_entry(
                    parent,
                    n,
                    0o644,
                    0,
                    NewKind::File {
                        flags: libc::O_RDWR,
                    },
                    me,
                ),
            );
            c.err(
                "mkdir .",
                fs_.create_entry(parent, n, 0o755, 0, NewKind::Dir, me),
            );
            c.err(
                "mknod .",
                fs_.create_entry(
                    parent,
                    n,
                    0o644 | libc::S_IFIFO,
                    0,
                    NewKind::Node { rdev: 0 },
                    me,
                ),
            );
            c.err("unlink .", fs_.remove(parent, n, false));
            c.err("rmdir .", fs_.remove(parent, n, true));
            c.err(
                "rename from .",
                fs_.rename(parent, n, ROOT, OsStr::new("moved"), 0),
            );
            c.err(
                "rename to .",
                fs_.rename(ROOT, OsStr::new("file"), parent, n, 0),
            );
            c.err(
                "exchange with .",
                fs_.rename(ROOT, OsStr::new("file"), parent, n, libc::RENAME_EXCHANGE),
            );
            c.err("link to .", fs_.link(f, parent, n));
        }
    }
    c.errno(
        "rename with unknown flags",
        fs_.rename(ROOT, OsStr::new("file"), ROOT, OsStr::new("z"), 0x8000),
        libc::EINVAL,
    );

    // Lookup in a directory removed since (the node is still held).
    let gone = fs_
        .create_entry(ROOT, OsStr::new("gone"), 0o755, 0, NewKind::Dir, me)
        .unwrap()
        .0
        .ino;
    fs_.remove(ROOT, OsStr::new("gone"), true).unwrap();
    c.err("lookup in deleted dir", fs_.lookup(gone, OsStr::new("x")));
    c.err(
        "create in deleted dir",
        fs_.create_entry(
            gone,
            OsStr::new("x"),
            0o644,
            0,
            NewKind::File {
                flags: libc::O_RDWR,
            },
            me,
        ),
    );
    c.err(
        "mkdir in deleted dir",
        fs_.create_entry(gone, OsStr::new("x"), 0o755, 0, NewKind::Dir, me),
    );
    if let Ok(h) = fs_.opendir(gone) {
        // The listing of a removed directory is empty or an error, never a panic.
        let _ = fs_.readdir(gone, h, 0);
        fs_.releasedir(h);
    }
    c.0 += 1;

    // Huge values: xattrs and sizes.
    let huge = vec![b'v'; 1 << 20];
    c.err(
        "setxattr 1 MiB value",
        fs_.setxattr(f, OsStr::new("user.big"), &huge, 0),
    );
    c.err(
        "setxattr empty name",
        fs_.setxattr(f, OsStr::new(""), b"v", 0),
    );
    c.err(
        "setxattr 300-byte name",
        fs_.setxattr(f, OsStr::new(&format!("user.{}", "x".repeat(300))), b"v", 0),
    );
    c.err(
        "setxattr bad flags",
        fs_.setxattr(f, OsStr::new("user.a"), b"v", 0x7777),
    );
    c.err("getxattr missing", fs_.getxattr(f, OsStr::new("user.none")));
    c.err(
        "removexattr missing",
        fs_.removexattr(f, OsStr::new("user.none")),
    );
    c.err(
        "truncate to i64::MAX+1",
        fs_.setattr(
            f,
            SetAttr {
                size: Some(i64::MAX as u64 + 1),
                ..Default::default()
            },
        ),
    );
    c.err(
        "truncate to u64::MAX",
        fs_.setattr(
            f,
            SetAttr {
                size: Some(u64::MAX),
                ..Default::default()
            },
        ),
    );
    // Truncating to i64::MAX is EFBIG on most filesystems (or accepted as a sparse size).
    match fs_.setattr(
        f,
        SetAttr {
            size: Some(i64::MAX as u64),
            ..Default::default()
        },
    ) {
        Ok(_) | Err(_) => c.0 += 1,
    }
    let fh = fs_.open(f, libc::O_RDWR).unwrap();
    c.err("write at offset u64::MAX", fs_.write(fh, u64::MAX, b"x"));
    c.err("write at i64::MAX", fs_.write(fh, i64::MAX as u64, b"x"));
    c.err(
        "fallocate past the end of everything",
        fs_.fallocate(fh, u64::MAX - 1, 10, 0),
    );
    c.err("lseek bad whence", fs_.lseek(fh, 0, 77));
    // Read at absurd offsets: empty, not an error or a panic.
    for off in [1u64 << 62, u64::MAX] {
        if let Ok(b) = fs_.read(fh, off, 4096) {
            assert!(b.is_empty());
        }
        c.0 += 1;
    }
    fs_.release(fh);
    fs_.release(fh); // twice
    c.errno("read after release", fs_.read(fh, 0, 1), libc::EBADF);
    c.0 += 1;
    // Forget everything many times over; then the root still answers.
    for ino in [d, f, sub, gone] {
        fs_.forget(ino, u64::MAX);
        fs_.forget(ino, u64::MAX);
    }
    fs_.forget(ROOT, u64::MAX);
    c.0 += 1;
    fs_.getattr(ROOT, None).expect("root after forgets");
    assert!(fs_.lookup(ROOT, OsStr::new("d")).is_ok());

    drop(fs_);
    common::assert_same(
        "canary outside the branches",
        &before_outside,
        &snapshot(&outside),
    );
    common::assert_same("lower branch", &before_lower, &snapshot(&l));
    assert!(!s.path("z").exists() && !s.path("moved").exists() && !s.path("n").exists());
    eprintln!(
        "bad-request cases answered with an errno (or handled): {}",
        c.0
    );
}

#[test]
fn rmdir_mkdir_race_against_lookups_and_creates() {
    let s = Scratch::new("race");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("keep"), b"k").unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let dir = m.join("d");
    let mut threads = Vec::new();
    {
        let (stop, ops, dir) = (stop.clone(), ops.clone(), dir.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::create_dir(&dir);
                let _ = fs::remove_file(dir.join("f"));
                let _ = fs::remove_dir(dir.join("sub"));
                let _ = fs::remove_dir(&dir);
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in 0..2 {
        let (stop, ops, dir) = (stop.clone(), ops.clone(), dir.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::metadata(dir.join("f"));
                if let Ok(rd) = fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let _ = e.metadata();
                    }
                }
                if t == 0 {
                    let _ = fs::write(dir.join("f"), b"data");
                } else {
                    let _ = fs::create_dir(dir.join("sub"));
                    let _ = fs::File::open(&dir);
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("racing thread");
    }
    // The daemon is alive and consistent.
    assert_eq!(fs::read(m.join("keep")).unwrap(), b"k");
    let _ = fs::remove_file(dir.join("f"));
    let _ = fs::remove_dir(dir.join("sub"));
    let _ = fs::remove_dir(&dir);
    fs::create_dir(&dir).expect("mkdir after the race");
    fs::write(dir.join("f"), b"after").unwrap();
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"after");
    let n = ops.load(Ordering::Relaxed);
    assert!(n > 100, "only {n} racing operations ran");
    let st = mnt.unmount();
    assert!(
        st.map(|s| s.success()).unwrap_or(false),
        "daemon exit status {st:?}"
    );
    eprintln!("racing operations: {n}");
}

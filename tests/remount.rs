//! `remount,ro` / `remount,rw` of a live mount, through the binary (`stratafs -o
//! remount,ro MNT`) and through mount(8) (`mount -o remount,ro MNT`, which runs
//! mount.fuse3, which runs the binary again with the mount's options plus `remount`).
//! Read-only: every write gets EROFS exactly as on a kernel overlayfs remounted read-only
//! over the same layers, nothing is copied up (the upper is unchanged byte for byte), the
//! data written before is in the upper, /proc/mounts says `ro`; `rw` makes it writable
//! again. A non-root user's remount gets EPERM and changes nothing; an option that would
//! change anything but ro/rw is one line, non-zero, nothing changed; a file open for
//! writing makes the remount to ro fail with EBUSY (as for any filesystem).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{bin, sh_as, snapshot, Kernel, Scratch, Stack, Strata};

fn layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    fs::write(l.join("lower"), b"lower data\n").unwrap();
    fs::create_dir(l.join("ldir")).unwrap();
    fs::write(l.join("ldir/f"), b"f\n").unwrap();
    fs::write(u.join("upper"), b"upper data\n").unwrap();
    (l, u, w)
}

/// Writes refused on a read-only mount (run as root in the mount).
const WRITES: &[&str] = &[
    "echo x >> lower",
    "echo x >> upper",
    "echo x > newfile",
    "mkdir newdir",
    "rm lower",
    "rm upper",
    "rmdir ldir",
    "mv lower moved",
    "chmod 600 lower",
    "touch -d 2001-01-01 lower",
    "ln lower hard",
    "ln -s lower soft",
    "truncate -s 0 upper",
    "setfattr -n user.x -v 1 lower",
];

fn outcome(mnt: &Path, cmd: &str) -> String {
    let o = sh_as(false, cmd, mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{cmd}: {:?} {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A mount helper that succeeds prints nothing (xfstests compare its output).
fn silent(o: &Output, what: &str) {
    ok(o, what);
    assert_eq!(
        (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        ("".into(), "".into()),
        "{what}: (stdout, stderr) of a successful remount"
    );
}

/// The per-mount options field of mountinfo for `mnt` ("ro,relatime", …).
fn vfs_options(mnt: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.display().to_string();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or("")
        .to_string()
}

/// Waits until the daemon of `mnt` listens on its control socket (`-f` mounts are in
/// mountinfo a moment before that; the daemon mode returns only after it).
fn wait_control(mnt: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.display().to_string();
    let dev = info
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(2))
        .unwrap()
        .to_string();
    let name = format!("@stratafs/{dev}");
    for _ in 0..500 {
        let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
        if unix.lines().any(|l| l.ends_with(&name)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no control socket {name}");
}

fn mount(stack: &Stack<'_>, extra: &str, mnt: &Path) -> Strata {
    let m = Strata::mount(stack, extra, mnt);
    wait_control(mnt);
    m
}

/// How a test remounts: the binary, or mount(8).
#[derive(Clone, Copy, Debug)]
enum Via {
    Binary,
    Mount8,
}

fn remount(via: Via, mnt: &Path, opts: &str) -> Output {
    match via {
        Via::Binary => run(Command::new(bin())
            .arg("-o")
            .arg(format!("remount,{opts}"))
            .arg(mnt)),
        Via::Mount8 => run(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,{opts}"))
            .arg(mnt)),
    }
}

/// `/usr/local/bin/NAME` → the binary under test, for mount.fuse3 (which runs the program
/// named by the subtype, with PATH=/usr/local/sbin:/usr/local/bin:…). A name of our own,
/// so other tests' `/usr/local/bin/stratafs` is never touched. Removed on drop.
struct Helper(PathBuf);

impl Helper {
    fn install(name: &str) -> Helper {
        let p = PathBuf::from("/usr/local/bin").join(name);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(bin(), &p).unwrap();
        Helper(p)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn ro_then_rw(via: Via) {
    let s = Scratch::new(&format!("remount-{via:?}"));
    let (l, u, w) = layers(&s);
    let m = s.dir("m");
    let name = format!("stratafs-remount-test-{via:?}-{}", std::process::id());
    let _helper = Helper::install(&name);
    let sm = mount(&Stack::one(&l, &u, &w), &format!("subtype={name}"), &m);
    // Written (not fsynced) before the remount.
    fs::write(m.join("written"), b"before the remount\n").unwrap();
    fs::write(m.join("lower"), b"lower rewritten\n").unwrap();
    let o = remount(via, &m, "ro");
    silent(&o, "remount,ro");
    assert!(vfs_options(&m).starts_with("ro"), "{}", vfs_options(&m));
    assert_eq!(
        fs::read(u.join("written")).unwrap(),
        b"before the remount\n"
    );
    assert_eq!(fs::read(u.join("lower")).unwrap(), b"lower rewritten\n");
    // The kernel overlayfs, remounted read-only over a copy of the same layers, is the
    // oracle for every refused write.
    let (ku, kw, km) = (s.path("ku"), s.dir("kw"), s.dir("km"));
    common::copy_tree(&u, &ku);
    let k = Kernel::mount(&Stack::one(&l, &ku, &kw), "", &km);
    ok(
        &run(Command::new("mount").args(["-o", "remount,ro"]).arg(&km)),
        "kernel remount,ro",
    );
    let before = snapshot(&u);
    for cmd in WRITES {
        let got = outcome(&m, cmd);
        assert_eq!(outcome(&km, cmd), got, "{via:?}");
        assert!(got.contains("Read-only file system"), "{got}");
    }
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.join("lower"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    common::assert_same("upper after refused writes", &before, &snapshot(&u));
    // Reads still work.
    assert_eq!(fs::read(m.join("ldir/f")).unwrap(), b"f\n");
    drop(k);

    silent(&remount(via, &m, "rw"), "remount,rw");
    assert!(vfs_options(&m).starts_with("rw"), "{}", vfs_options(&m));
    // Again: a remount that changes nothing is silent too.
    silent(&remount(via, &m, "rw"), "remount,rw when rw");
    fs::write(m.join("ldir/f"), b"copied up\n").unwrap();
    fs::create_dir(m.join("newdir")).unwrap();
    assert_eq!(fs::read(u.join("ldir/f")).unwrap(), b"copied up\n");
    assert!(u.join("newdir").is_dir());
    drop(sm);
}

#[test]
fn remount_ro_and_rw_with_the_binary() {
    ro_then_rw(Via::Binary);
}

#[test]
fn remount_ro_and_rw_through_mount_8() {
    ro_then_rw(Via::Mount8);
}

#[test]
fn refused_remounts_change_nothing() {
    let s = Scratch::new("remount-refused");
    let (l, u, w) = layers(&s);
    let m = s.dir("m");
    let sm = mount(&Stack::one(&l, &u, &w), "nosuid", &m);
    let before = snapshot(&u);
    let vfs = vfs_options(&m);
    // Not root, not the owner: EPERM from the daemon.
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["-o", "remount,ro"])
        .arg(&m));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "nobody's remount was accepted");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("only root or the mount's owner"), "{err}");
    // Options that would change something else, or are unknown.
    for bad in [
        "ro,noexec",
        "ro,suid",
        "ro,bogus",
        "ro,lowerdir=/tmp",
        "ro,volatile",
        "rw,user_id=7",
    ] {
        let o = remount(Via::Binary, &m, bad);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{bad} accepted");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains("changes only ro/rw") || err.ends_with("unknown option bogus\n"),
            "{bad}: {err}"
        );
    }
    // A file open for writing: EBUSY, as for any filesystem.
    {
        let _open = fs::OpenOptions::new()
            .append(true)
            .open(m.join("upper"))
            .unwrap();
        let o = remount(Via::Binary, &m, "ro");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains("busy"), "{err}");
    }
    assert_eq!(vfs, vfs_options(&m), "mount flags unchanged");
    common::assert_same("upper", &before, &snapshot(&u));
    // Still writable.
    fs::write(m.join("after"), b"still writable\n").unwrap();
    assert_eq!(fs::read(u.join("after")).unwrap(), b"still writable\n");
    drop(sm);
}

#[test]
fn a_mount_started_ro_becomes_writable() {
    let s = Scratch::new("remount-startro");
    let (l, u, w) = layers(&s);
    let m = s.dir("m");
    let sm = mount(&Stack::one(&l, &u, &w), "ro", &m);
    assert!(fs::write(m.join("x"), b"x").is_err());
    silent(&remount(Via::Binary, &m, "rw"), "remount,rw");
    fs::write(m.join("lower"), b"now writable\n").unwrap();
    assert_eq!(fs::read(u.join("lower")).unwrap(), b"now writable\n");
    // Without an upper there is nothing to make writable.
    let m2 = s.dir("m2");
    let sm2 = mount(
        &Stack {
            lowers: vec![&l],
            upper: None,
        },
        "",
        &m2,
    );
    let o = remount(Via::Binary, &m2, "rw");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no upper branch"));
    assert!(vfs_options(&m2).starts_with("ro"));
    drop(sm2);
    drop(sm);
}

/// mount(8) takes the options of a mount listed in fstab from the fstab line (mount.fuse3
/// then runs `stratafs stratafs MNT -o ro,remount,lowerdir=…,upperdir=…,workdir=…,dev,suid`):
/// a line that describes the running mount remounts; one that differs is refused.
#[test]
fn remount_of_a_mount_listed_in_fstab() {
    let s = Scratch::new("remount-fstab");
    let (l, u, w) = layers(&s);
    let m = s.dir("m");
    let name = format!("stratafs-remount-test-fstab-{}", std::process::id());
    let _helper = Helper::install(&name);
    let sm = mount(&Stack::one(&l, &u, &w), &format!("subtype={name}"), &m);
    let line = |lower: &Path| {
        format!(
            "stratafs {} fuse.{name} lowerdir={},upperdir={},workdir={},nofail 0 0\n",
            m.display(),
            lower.display(),
            u.display(),
            w.display()
        )
    };
    let (good, other) = (s.path("fstab"), s.path("fstab-other"));
    fs::write(&good, line(&l)).unwrap();
    fs::write(&other, line(&s.dir("l2"))).unwrap();
    let mount8 = |fstab: &Path, opts: &str| {
        run(Command::new("mount")
            .arg("-T")
            .arg(fstab)
            .arg("-o")
            .arg(opts)
            .arg(&m))
    };
    let o = mount8(&other, "remount,ro");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "a different lowerdir was accepted");
    assert!(
        err.contains("lowerdir") && err.contains("only ro/rw"),
        "{err}"
    );
    assert!(vfs_options(&m).starts_with("rw"));
    silent(&mount8(&good, "remount,ro"), "fstab remount,ro");
    assert!(vfs_options(&m).starts_with("ro"));
    assert!(fs::write(m.join("x"), b"x").is_err());
    silent(&mount8(&good, "remount,rw"), "fstab remount,rw");
    fs::write(m.join("x"), b"x").unwrap();
    drop(sm);
}

/// Root of a user namespace (podman's rootless mount program): the VFS remount is
/// permitted there (the namespace owns the superblock), so mountinfo says ro and writes are
/// refused; data written through the writeback cache (no passthrough in a user namespace)
/// is in the upper. (FUSE writes a file's dirty pages back when it is closed, and a file
/// still open for writing makes the remount fail with EBUSY, so no dirty page can be left
/// for the remount itself to flush.)
#[test]
fn remount_ro_as_root_of_a_user_namespace() {
    let s = Scratch::new("remount-userns");
    let (l, u, w) = layers(&s);
    let m = s.dir("m");
    let script = format!(
        "B={bin}; $B -o lowerdir={l},upperdir={u},workdir={w} {m} || exit 9; \
         head -c 4194304 /dev/urandom > {m}/cached; a=$(md5sum < {m}/cached); \
         $B -o remount,ro {m} >&2; rc=$?; b=$(md5sum < {u}/cached); \
         grep ' {m} ' /proc/self/mountinfo | cut -d' ' -f6; \
         echo x > {m}/refused 2>/dev/null && echo WRITABLE; \
         umount {m}; [ $rc = 0 ] && [ \"$a\" = \"$b\" ] && echo SAME",
        bin = bin(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        m = m.display()
    );
    let o = run(Command::new("unshare").args(["-Urm", "sh", "-c", &script]));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        out.lines().next().unwrap_or("").starts_with("ro"),
        "{out} {err}"
    );
    assert!(!out.contains("WRITABLE"), "{out}");
    assert!(
        out.contains("SAME"),
        "upper has the cached data: {out} {err}"
    );
}

/// The daemon's own refusal, without the kernel's (what serves a remount that could not
/// change the VFS flags, e.g. a non-root fusermount3 mount): after `set_read_only(true)`
/// every writing operation gets EROFS, also through a handle opened for writing before,
/// and nothing reaches the upper; `set_read_only(false)` undoes it.
#[test]
fn the_core_refuses_writes_once_read_only() {
    use stratafs::dir::NewKind;
    use stratafs::fs::Caller;
    let s = Scratch::new("remount-core");
    let (l, u, w) = layers(&s);
    let mut cfg = stratafs::Config {
        lowerdirs: vec![l.clone()],
        upperdir: Some(u.clone()),
        workdir: Some(w.clone()),
        mountpoint: s.dir("m"),
        ..Default::default()
    };
    cfg.validate().unwrap();
    let fs = stratafs::UnionFs::new(&cfg).unwrap();
    let up = fs.lookup(1, "upper".as_ref()).unwrap().ino;
    let fh = fs.open(up, libc::O_WRONLY).unwrap();
    let lower = fs.lookup(1, "lower".as_ref()).unwrap().ino;
    fs.set_read_only(true).unwrap();
    assert!(fs.is_read_only());
    let before = snapshot(&u);
    let erofs = |r: stratafs::Result<()>, what: &str| {
        assert!(
            r.as_ref().is_err_and(|e| e.is(libc::EROFS)),
            "{what}: {r:?}"
        );
    };
    erofs(
        fs.write(fh, 0, b"late").map(|_| ()),
        "write on an open handle",
    );
    erofs(fs.fallocate(fh, 0, 4096, 0), "fallocate");
    erofs(fs.open(lower, libc::O_WRONLY).map(|_| ()), "open for write");
    let new = |k| {
        fs.create_entry(1, "new".as_ref(), 0o644, 0o022, k, Caller::ROOT)
            .map(|_| ())
    };
    erofs(
        new(NewKind::File {
            flags: libc::O_WRONLY,
        }),
        "create",
    );
    erofs(new(NewKind::Dir), "mkdir");
    erofs(fs.remove(1, "lower".as_ref(), false), "unlink");
    erofs(
        fs.rename(1, "upper".as_ref(), 1, "moved".as_ref(), 0),
        "rename",
    );
    erofs(fs.link(lower, 1, "hard".as_ref()).map(|_| ()), "link");
    common::assert_same("upper", &before, &snapshot(&u));
    fs.set_read_only(false).unwrap();
    assert_eq!(fs.write(fh, 0, b"UPPER").unwrap(), 5);
    assert!(fs::read(u.join("upper")).unwrap().starts_with(b"UPPER"));
}

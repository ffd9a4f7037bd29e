//! The `stratafs` command as users run it: daemon mode, `-f`, `mount -t fuse.stratafs`, an
//! fstab line, the three branch syntaxes, and every startup refusal (one line, non-zero,
//! nothing mounted, nothing written). Runs as root; every mount is undone by a Drop guard,
//! and each test waits for its daemons to exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stratafs");

/// Serializes the tests that touch /etc/fstab and /usr/local/bin.
static SYSTEM: Mutex<()> = Mutex::new(());

/// Runs a command with a time limit, stdin on /dev/null. A daemon that kept our stdout or
/// stderr would make this time out.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("command finished within 30 s (a daemon holding stdout/stderr?)")
        .expect("wait")
}

fn stratafs(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Mount points in /proc/mounts (with their source and type) below `prefix`.
fn mounts_under(prefix: &Path) -> Vec<(String, String, String)> {
    let m = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    m.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && Path::new(f[1]).starts_with(prefix))
                .then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

/// Live (non-zombie) stratafs processes whose command line mentions `tag`.
fn daemons(tag: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ours = args
            .first()
            .map(|a| a.ends_with("stratafs"))
            .unwrap_or(false);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if is_ours && !zombie && args.iter().any(|a| a.contains(tag)) {
            out.push(pid);
        }
    }
    out
}

fn wait_daemons_gone(tag: &str, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if daemons(tag).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemons(tag).is_empty()
}

/// A fixture: lowers l1 (top), l2, an upper u, a workdir w, a mountpoint m, in a unique
/// directory. Drop unmounts everything below it, waits for (then kills) its daemons and
/// removes it.
struct Fixture {
    root: PathBuf,
    tag: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let tag = format!("stratafs-cli-{name}-{}", std::process::id());
        let root = PathBuf::from("/tmp").join(&tag);
        let f = Fixture { root, tag };
        f.cleanup();
        for d in ["l1/d", "l2/d", "u/d", "w", "m"] {
            std::fs::create_dir_all(f.root.join(d)).unwrap();
        }
        let w = |p: &str, s: &str| std::fs::write(f.root.join(p), s).unwrap();
        w("l2/a", "from l2\n");
        w("l2/d/x", "x\n");
        w("l2/gone", "hidden by a whiteout\n");
        w("l1/a", "from l1\n");
        w("l1/b", "b\n");
        w("l1/d/y", "y\n");
        w("u/c", "c in upper\n");
        w("u/d/z", "z\n");
        let st = Command::new("mknod")
            .arg(f.root.join("l1/gone"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(st.success(), "mknod whiteout");
        f
    }

    fn p(&self, sub: &str) -> String {
        self.root.join(sub).display().to_string()
    }

    fn kernel_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l1"),
            self.p("l2"),
            self.p("u"),
            self.p("w")
        )
    }

    fn mounted(&self) -> Vec<(String, String, String)> {
        mounts_under(&self.root)
    }

    /// `find -printf` of the merged view.
    fn view(&self) -> String {
        listing(&self.root.join("m"))
    }

    /// Paths, types, sizes, modes and mtimes of everything in the fixture (not the mount).
    fn snapshot(&self) -> String {
        let o = run(Command::new("find").arg(&self.root).args([
            "-path",
            &self.p("m/*"),
            "-prune",
            "-o",
            "-printf",
            "%p %y %s %m %T@\n",
        ]));
        let out = text(&o.stdout);
        let mut l: Vec<&str> = out.lines().collect();
        l.sort();
        l.join("\n")
    }

    fn umount(&self) {
        let o = run(Command::new("umount").arg(self.p("m")));
        assert!(o.status.success(), "umount: {}", text(&o.stderr));
        assert!(
            wait_daemons_gone(&self.tag, 5),
            "a stratafs daemon is left after umount: {:?}",
            daemons(&self.tag)
        );
        assert!(self.mounted().is_empty(), "{:?}", self.mounted());
    }

    fn cleanup(&self) {
        for (_, mp, _) in mounts_under(&self.root).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        if !wait_daemons_gone(&self.tag, 5) {
            for pid in daemons(&self.tag) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            wait_daemons_gone(&self.tag, 5);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn listing(dir: &Path) -> String {
    let o = run(Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1", "-printf", "%P %y %s %m\n"]));
    assert!(o.status.success(), "find: {}", text(&o.stderr));
    let mut l: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    l.sort();
    l.join("\n")
}

const EXPECTED: &str =
    "a f 8 644\nb f 2 644\nc f 11 644\nd d 4096 755\nd/x f 2 644\nd/y f 2 644\nd/z f 2 644";

fn expected_names(view: &str) -> Vec<String> {
    view.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // Directory sizes differ between filesystems; compare name, type, mode.
            if f.get(1) == Some(&"d") {
                format!("{} d {}", f[0], f[3])
            } else {
                l.to_string()
            }
        })
        .collect()
}

fn assert_view(f: &Fixture) {
    let v = f.view();
    assert_eq!(
        expected_names(&v),
        expected_names(EXPECTED),
        "merged view:\n{v}"
    );
    assert_eq!(
        std::fs::read_to_string(f.root.join("m/a")).unwrap(),
        "from l1\n"
    );
}

fn assert_quiet_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}: {}",
        o.status,
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty(), "{what}: stdout: {}", text(&o.stdout));
    assert!(o.stderr.is_empty(), "{what}: stderr: {}", text(&o.stderr));
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn daemon_mode_returns_once_live_and_umount_ends_it() {
    let f = Fixture::new("daemon");
    let o = stratafs(&["-o", &f.kernel_opts(), &f.p("m")]);
    assert_quiet_success(&o, "daemon mount");
    // Live at once: no polling.
    let m = f.mounted();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].0, "stratafs");
    assert_eq!(m[0].2, "fuse.stratafs");
    assert_view(&f);
    let pids = daemons(&f.tag);
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    // Detached: its own session, stdio on /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pids[0].to_string(),
        "session id is the daemon's pid"
    );
    for fd in 0..3 {
        let t = std::fs::read_link(format!("/proc/{}/fd/{fd}", pids[0])).unwrap();
        assert_eq!(t, Path::new("/dev/null"), "fd {fd}");
    }
    f.umount();
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn sigterm_unmounts_and_foreground_stays() {
    let f = Fixture::new("fg");
    let mut child = Command::new(BIN)
        .args(["-f", "-o", &f.kernel_opts(), &f.p("m")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while f.mounted().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.mounted().len(), 1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "-f stays in the foreground"
    );
    assert_view(&f);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let st = child.wait().unwrap();
    assert!(st.success(), "SIGTERM: clean exit, got {st:?}");
    assert!(f.mounted().is_empty());
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn three_syntaxes_give_the_same_view() {
    let f = Fixture::new("syntax");
    let kernel = f.kernel_opts();
    let union_pos = format!("{}=RW:{}=RO:{}", f.p("u"), f.p("l1"), f.p("l2"));
    let union_cow = format!("{}:{}:{}", f.p("u"), f.p("l1"), f.p("l2"));
    let dirs = format!("dirs={}=RW:{}:{}", f.p("u"), f.p("l1"), f.p("l2"));
    // l1 holds a whiteout: aufs's `ro` looks up none, `ro+wh` honours them (aufs(5)).
    let br = format!("br={}=rw:{}=ro+wh:{}=rr", f.p("u"), f.p("l1"), f.p("l2"));
    let br_colon = format!("br:{}:{}=ro+wh:{}", f.p("u"), f.p("l1"), f.p("l2"));
    let m = f.p("m");
    let cases: Vec<Vec<&str>> = vec![
        vec!["-o", &kernel, &m],
        vec!["stratafs", &m, "-o", &kernel],
        vec![&union_pos, &m],
        vec!["-o", "cow", &union_cow, &m],
        vec![&m, "-o", &dirs],
        vec![&m, "-o", &br],
        vec![&m, "-o", &br_colon],
    ];
    for args in cases {
        let o = stratafs(&args);
        assert_quiet_success(&o, &format!("{args:?}"));
        assert_view(&f);
        f.umount();
    }
    // The automatic workdir is a sibling of the upper, outside the merged view.
    assert!(f.root.join("u.stratafs-work").is_dir());
}

/// Puts the test binary where mount.fuse3 looks for `stratafs` (mount(8) runs helpers
/// with PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), restoring
/// whatever was there on drop.
struct HelperOnPath {
    link: PathBuf,
    backup: Option<PathBuf>,
}

impl HelperOnPath {
    fn install() -> HelperOnPath {
        let link = PathBuf::from("/usr/local/bin/stratafs");
        let mut backup = None;
        if std::fs::symlink_metadata(&link).is_ok() {
            let b = PathBuf::from(format!(
                "/usr/local/bin/.stratafs.test-backup-{}",
                std::process::id()
            ));
            std::fs::rename(&link, &b).unwrap();
            backup = Some(b);
        }
        let g = HelperOnPath { link, backup };
        std::os::unix::fs::symlink(BIN, &g.link).unwrap();
        g
    }
}

impl Drop for HelperOnPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        if let Some(b) = &self.backup {
            let _ = std::fs::rename(b, &self.link);
        }
    }
}

/// Restores /etc/fstab on drop.
struct FstabBackup(Option<Vec<u8>>);

impl Drop for FstabBackup {
    fn drop(&mut self) {
        match &self.0 {
            Some(b) => {
                let _ = std::fs::write("/etc/fstab", b);
            }
            None => {
                let _ = std::fs::remove_file("/etc/fstab");
            }
        }
    }
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn mount_8_with_each_syntax() {
    let _lock = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let _helper = HelperOnPath::install();
    let f = Fixture::new("mount8");
    let m = f.p("m");
    let kernel = f.kernel_opts();
    let union = format!("{}=RW:{}=RO:{}", f.p("u"), f.p("l1"), f.p("l2"));
    // l1 holds a whiteout: aufs's `ro` looks up none, `ro+wh` honours them (aufs(5)).
    let br = format!("br={}=rw:{}=ro+wh:{}=ro", f.p("u"), f.p("l1"), f.p("l2"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-t", "fuse.stratafs", "-o", &kernel, "stratafs", &m],
            "stratafs",
        ),
        (
            vec!["-t", "fuse.stratafs", "-o", &kernel, "mysrc", &m],
            "mysrc",
        ),
        (
            vec!["-t", "fuse.stratafs", "-o", "cow", &union, &m],
            "stratafs",
        ),
        (
            vec!["-t", "fuse.stratafs", "-o", &br, "stratafs", &m],
            "stratafs",
        ),
    ];
    for (args, source) in cases {
        let o = run(Command::new("mount").args(&args));
        assert_quiet_success(&o, &format!("mount {args:?}"));
        let mounted = f.mounted();
        assert_eq!(mounted.len(), 1, "{mounted:?}");
        assert_eq!(mounted[0].0, source);
        assert_eq!(mounted[0].2, "fuse.stratafs");
        assert_view(&f);
        f.umount();
    }
    // A refusal comes back through mount(8) as our one line.
    let before = f.snapshot();
    let bad = format!("lowerdir={}", f.p("missing"));
    let o = run(Command::new("mount").args(["-t", "fuse.stratafs", "-o", &bad, "stratafs", &m]));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("lowerdir"), "{}", text(&o.stderr));
    assert!(f.mounted().is_empty());
    assert_eq!(before, f.snapshot());
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn fstab_line_and_mount_by_mountpoint() {
    let _lock = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let _helper = HelperOnPath::install();
    let f = Fixture::new("fstab");
    let old = std::fs::read("/etc/fstab").ok();
    let _restore = FstabBackup(old.clone());
    let mut fstab = old.clone().unwrap_or_default();
    if !fstab.is_empty() && !fstab.ends_with(b"\n") {
        fstab.push(b'\n');
    }
    fstab.extend_from_slice(
        format!(
            "{}-src {} fuse.stratafs {},nofail,noauto 0 0\n",
            f.tag,
            f.p("m"),
            f.kernel_opts()
        )
        .as_bytes(),
    );
    std::fs::write("/etc/fstab", &fstab).unwrap();
    let o = run(Command::new("mount").arg(f.p("m")));
    assert_quiet_success(&o, "mount MOUNTPOINT from fstab");
    let mounted = f.mounted();
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].0, format!("{}-src", f.tag));
    assert_eq!(mounted[0].2, "fuse.stratafs");
    assert_view(&f);
    f.umount();
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn every_refusal_is_one_line_and_changes_nothing() {
    let f = Fixture::new("refuse");
    std::fs::write(f.root.join("file"), "not a dir").unwrap();
    let (l1, l2, u, w, m) = (f.p("l1"), f.p("l2"), f.p("u"), f.p("w"), f.p("m"));
    let k = |s: String| vec!["-o".to_string(), s, m.clone()];
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (k(format!("lowerdir={}", f.p("missing"))), "lowerdir"),
        (
            k(format!("lowerdir={}:{}", l1, f.p("file"))),
            "not a directory",
        ),
        (
            k(format!("lowerdir={l1},upperdir={}", f.p("missing"))),
            "upperdir",
        ),
        (
            k(format!(
                "lowerdir={l1},upperdir={u},workdir={}",
                f.p("file")
            )),
            "workdir",
        ),
        (k(format!("lowerdir={l1},upperdir={u}")), "without workdir"),
        (k(format!("lowerdir={l1},workdir={w}")), "without upperdir"),
        (k("lowerdir=".to_string()), "lowerdir"),
        (k(format!("lowerdir={l1}::{l2}")), "lowerdir"),
        (k(format!("upperdir={u},workdir={w}")), "lowerdir"),
        (k(format!("lowerdir={l1},threads=many")), "threads"),
        (k(format!("lowerdir={l1},timeout=soon")), "timeout"),
        (k(format!("lowerdir={l1},no_such_option")), "no_such_option"),
        (k(format!("lowerdir={l1},uidmapping=0:1000")), "uidmapping"),
        (k(format!("lowerdir={l1},plugins=/x.so")), "plugins"),
        (
            k(format!("lowerdir={l1},upperdir={l1}/d,workdir={w}")),
            "upperdir",
        ),
        (
            k(format!("lowerdir={l1},upperdir={u},workdir={u}/d")),
            "inside upperdir",
        ),
        (
            vec!["-o".into(), format!("lowerdir={l1}"), f.p("missing")],
            "mountpoint",
        ),
        (
            vec!["-o".into(), format!("lowerdir={l1}"), f.p("file")],
            "mountpoint",
        ),
        (
            vec!["-o".into(), format!("lowerdir={l1}"), f.p("l1/d")],
            "mountpoint",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={l1},upperdir={u},workdir={w}"),
                f.p("u/d"),
            ],
            "mountpoint",
        ),
        (vec![format!("{u}=RW"), m.clone()], "at least one read-only"),
        (
            vec![
                m.clone(),
                "-o".into(),
                format!("br={u}=rw:{l1}=rw,index=on"),
            ],
            "one writable top branch",
        ),
        (
            vec![m.clone(), "-o".into(), format!("br={l1}=ro:{l1}/d=rw")],
            "overlaps",
        ),
        (
            vec![
                m.clone(),
                "-o".into(),
                format!("br={u}=rw:{l1},lowerdir={l2}"),
            ],
            "conflicts",
        ),
        (vec!["-o".into(), format!("lowerdir={l1}")], "mountpoint"),
        (vec!["--bogus".into(), m.clone()], "--bogus"),
    ];
    // A workdir on another filesystem than the upper, if /dev/shm is one.
    let dev = |p: &str| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    let shm = PathBuf::from(format!("/dev/shm/{}", f.tag));
    if Path::new("/dev/shm").is_dir() && dev("/dev/shm") != dev(&u) {
        std::fs::create_dir_all(&shm).unwrap();
        cases.push((
            k(format!(
                "lowerdir={l1},upperdir={u},workdir={}",
                shm.display()
            )),
            "same filesystem",
        ));
    }
    let before = f.snapshot();
    for (args, word) in &cases {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = stratafs(&a);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{a:?} was accepted");
        assert_eq!(err.lines().count(), 1, "{a:?}: one line on stderr: {err:?}");
        assert!(err.starts_with("stratafs: "), "{a:?}: {err}");
        assert!(err.contains(word), "{a:?}: {err:?} should mention {word}");
        assert!(o.stdout.is_empty(), "{a:?}: stdout {}", text(&o.stdout));
        assert!(f.mounted().is_empty(), "{a:?} mounted something");
        assert_eq!(before, f.snapshot(), "{a:?} wrote something");
    }
    let _ = std::fs::remove_dir_all(&shm);

    // Busy: a second mount on a live mountpoint is refused; the first keeps working.
    let o = stratafs(&["-o", &f.kernel_opts(), &m]);
    assert_quiet_success(&o, "first mount");
    let o = stratafs(&["-o", &f.kernel_opts(), &m]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("busy"), "{err}");
    assert_eq!(f.mounted().len(), 1);
    assert_view(&f);
    f.umount();
}

#[test]
fn help_and_version() {
    let o = stratafs(&["--help"]);
    assert!(o.status.success());
    let h = text(&o.stdout);
    for key in [
        "lowerdir=",
        "br=",
        "dirs=",
        "cow",
        "allow_other",
        "max_threads=",
        "--log-file",
    ] {
        assert!(h.contains(key), "--help mentions {key}");
    }
    let o = stratafs(&["--version"]);
    assert!(o.status.success());
    assert!(text(&o.stdout).starts_with("stratafs "));
    let o = stratafs(&[]);
    assert!(!o.status.success());
    assert_eq!(text(&o.stderr).lines().count(), 1);
}

//! Shared helpers for the mounted tests: scratch directories, mount guards for stratafs
//! and the kernel overlayfs that always unmount (even when a test panics), and a tree
//! snapshot/diff used by the differential tests against the kernel overlayfs.
//!
//! Everything here needs root, /dev/fuse and `mount -t overlay` (as CI has).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::hash::Hasher;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stratafs::sys::{self, xattr};

/// The stratafs binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stratafs")
}

/// A scratch directory under /tmp, removed on drop (after the mounts in it are gone:
/// declare it before them).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = PathBuf::from(format!(
            "/tmp/sfs-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Creates and returns `rel` (and its parents).
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Is `mnt` a mount point right now (per /proc/self/mountinfo)? Returns its fs type.
pub fn mount_type(mnt: &Path) -> Option<String> {
    let want = fs::canonicalize(mnt).ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        let point = f.get(4)?.replace("\\040", " ");
        (Path::new(&point) == want).then(|| f.get(dash + 1).map(|s| s.to_string()))?
    })
}

/// Waits up to 15 s for a mount of type `fstype` at `mnt` (panics after that).
pub fn wait_for_mount(mnt: &Path, fstype: &str) {
    let start = Instant::now();
    while mount_type(mnt).as_deref() != Some(fstype) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{fstype} did not mount {}",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a guard of a foreground FUSE daemon does on drop: unmounts `mnt` (lazily when it is
/// busy), then reaps `child`, killing it if it has not exited within 10 s.
pub fn unmount_and_reap(mnt: &Path, child: Option<Child>) {
    if mount_type(mnt).is_some() {
        let ok = Command::new("umount")
            .arg(mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(mnt).status();
        }
    }
    if let Some(mut c) = child {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn umount(mnt: &Path) {
    if mount_type(mnt).is_none() {
        return;
    }
    let ok = Command::new("umount")
        .arg(mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
}

/// The layer list of a mount: lowers (highest first), and an upper/work pair or none.
pub struct Stack<'a> {
    pub lowers: Vec<&'a Path>,
    pub upper: Option<(&'a Path, &'a Path)>,
}

impl<'a> Stack<'a> {
    /// The common case: one lower under one upper/work pair.
    pub fn one(lower: &'a Path, upper: &'a Path, work: &'a Path) -> Stack<'a> {
        Stack {
            lowers: vec![lower],
            upper: Some((upper, work)),
        }
    }

    fn options(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let Some((u, w)) = self.upper {
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        o
    }
}

/// A stratafs mount in the foreground (`-f`); unmounted and reaped on drop.
pub struct Strata {
    pub mnt: PathBuf,
    child: Option<Child>,
    /// `MAJ:MIN` of the mount's superblock (mountinfo field 3), once live.
    dev: Option<String>,
}

impl Strata {
    pub fn mount(stack: &Stack<'_>, extra: &str, mnt: &Path) -> Strata {
        Strata::mount_logged(stack, extra, mnt, None)
    }

    /// [`Strata::mount`], the daemon logging to `log` if given.
    pub fn mount_logged(stack: &Stack<'_>, extra: &str, mnt: &Path, log: Option<&Path>) -> Strata {
        let mut opts = stack.options();
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        Strata::mount_opts_logged(&opts, mnt, log)
    }

    /// A mount made from `-o OPTS` alone (any branch syntax: `br=…`, `dirs=…`).
    pub fn mount_opts(opts: &str, mnt: &Path) -> Strata {
        Strata::mount_opts_logged(opts, mnt, None)
    }

    fn mount_opts_logged(opts: &str, mnt: &Path, log: Option<&Path>) -> Strata {
        let mut cmd = Command::new(bin());
        // STRATAFS_TEST_LOG=DIR: each daemon logs to DIR/<mount point name>.log (with
        // RUST_LOG=debug, every failed request with its errno).
        if let Some(file) = log {
            cmd.arg(format!("--log-file={}", file.display()));
        } else if let Some(dir) = std::env::var_os("STRATAFS_TEST_LOG") {
            let name = mnt
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let tag = mnt.parent().and_then(|p| p.file_name()).unwrap_or_default();
            let file = Path::new(&dir).join(format!("{}-{name}.log", tag.to_string_lossy()));
            cmd.arg(format!("--log-file={}", file.display()));
        }
        let child = cmd
            .arg("-f")
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stratafs");
        let mut m = Strata {
            mnt: mnt.to_path_buf(),
            child: Some(child),
            dev: None,
        };
        m.wait_live();
        m
    }

    fn wait_live(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            // fuse.stratafs, or fuse.stratafs-… with a test's own subtype=.
            if mount_type(&self.mnt).is_some_and(|t| t.starts_with("fuse.stratafs")) {
                self.dev = mount_dev(&self.mnt);
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    self.child = None;
                    panic!("stratafs exited ({status}) before mounting: {err}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("stratafs did not mount {} within 15 s", self.mnt.display());
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the daemon with SIGKILL (crash tests); the mount is then detached on drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status (and prints it
    /// with the daemon's stderr when it is not a success).
    pub fn unmount(mut self) -> Option<std::process::ExitStatus> {
        umount(&self.mnt);
        let mut c = self.child.take()?;
        let st = wait_exit(&mut c, self.dev.as_deref());
        if !st.is_some_and(|s| s.success()) {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!(
                "stratafs on {} exited with {st:?}; its stderr:\n{err}",
                self.mnt.display()
            );
        }
        st
    }
    /// The superblock's `MAJ:MIN`, as mountinfo lists it.
    pub fn dev(&self) -> Option<&str> {
        self.dev.as_deref()
    }

    /// Waits up to `d` for the daemon to exit; its status, or None if it still runs.
    pub fn wait_exit_within(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= d {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `MAJ:MIN` of the mount at `mnt` (the last one there) in our mount namespace.
pub fn mount_dev(mnt: &Path) -> Option<String> {
    let want = fs::canonicalize(mnt).ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let point = f.get(4)?.replace("\\040", " ");
        (Path::new(&point) == want).then(|| f.get(2).map(|s| s.to_string()))?
    })
}

/// Processes of other mount namespaces (one per namespace) that hold a mount of the
/// superblock `dev`, as "pid P (comm)": a process that ran `unshare -m` (or a container
/// runtime before its pivot_root) while the mount existed has its own copy, which keeps the
/// FUSE connection, and so the daemon, alive after our `umount`.
pub fn namespaces_holding(dev: &str) -> Vec<String> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(ns) = fs::read_link(e.path().join("ns/mnt")) else {
            continue;
        };
        if Some(&ns) == ours.as_ref() || !seen.insert(ns.clone()) {
            continue;
        }
        let info = fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if info.lines().any(|l| l.split(' ').nth(2) == Some(dev)) {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({}) in {}", comm.trim(), ns.display()));
        }
    }
    out
}

/// Each thread of `pid`: name, wait channel and kernel stack (root may read them).
pub fn task_states(pid: u32) -> String {
    let mut out = String::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let rd = |f: &str| fs::read_to_string(t.path().join(f)).unwrap_or_default();
        out.push_str(&format!(
            "  task {} ({}) wchan={}\n{}",
            t.file_name().to_string_lossy(),
            rd("comm").trim(),
            rd("wchan"),
            rd("stack")
        ));
    }
    out
}

/// Waits up to 10 s for `c` to exit after the umount, then kills it. The session of a FUSE
/// daemon ends when the last mount of its superblock goes, in every mount namespace: when
/// another process's namespace still holds a copy of the mount (found 2 s in through the
/// superblock's `dev`), the daemon is rightly still serving it, and it is asked to stop
/// with SIGTERM instead (which must still end it with status 0).
fn wait_exit(c: &mut Child, dev: Option<&str>) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    let mut asked = false;
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if !asked && start.elapsed() >= Duration::from_secs(2) {
            asked = true;
            let holders = dev.map(namespaces_holding).unwrap_or_default();
            if !holders.is_empty() {
                eprintln!(
                    "stratafs (pid {}) still serving 2 s after the umount: other mount namespaces \
                     hold its mount ({}); ending it with SIGTERM",
                    c.id(),
                    holders.join(", ")
                );
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "stratafs (pid {}) still running 10 s after the unmount: killed; its threads:\n{}",
        c.id(),
        task_states(c.id())
    );
    let _ = c.kill();
    c.wait().ok()
}

impl Drop for Strata {
    fn drop(&mut self) {
        umount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            wait_exit(&mut c, self.dev.as_deref());
        }
    }
}

/// A kernel overlayfs mount; unmounted on drop.
pub struct Kernel {
    pub mnt: PathBuf,
}

impl Kernel {
    pub fn mount(stack: &Stack<'_>, extra: &str, mnt: &Path) -> Kernel {
        let mut opts = stack.options();
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(&opts)
            .arg(mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {opts} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Kernel {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        umount(&self.mnt);
    }
}

/// What a snapshot records of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of non-directories (directory sizes legitimately differ between filesystems).
    pub size: Option<u64>,
    pub mtime: (i64, i64),
    /// Link count of directories (the kernel reports 1 for merged ones).
    pub dir_nlink: Option<u64>,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub content: Option<u64>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The file type as one word (dir, symlink, file, fifo, socket, chardev, blockdev).
pub fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

fn hash_file(p: &Path) -> u64 {
    let data = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(&data);
    h.write_usize(data.len());
    h.finish()
}

fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return out;
    };
    let Ok(dir) = sys::open_host_dir(parent) else {
        return out;
    };
    let Ok(cname) = CString::new(name.as_bytes()) else {
        return out;
    };
    let list = xattr::list(dir.as_fd(), &cname).unwrap_or_default();
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(an) = CString::new(n) else { continue };
        if let Ok(Some(v)) = xattr::get(dir.as_fd(), &cname, &an) {
            out.insert(n.to_vec(), v);
        }
    }
    out
}

/// Walks `root` without following symlinks; keys are paths relative to `root` as bytes.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, Entry>) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = md.file_type();
    let rel = p
        .strip_prefix(root)
        .unwrap_or(p)
        .as_os_str()
        .as_bytes()
        .to_vec();
    let e = Entry {
        kind: kind_of(ft),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!ft.is_dir()).then(|| md.size()),
        mtime: (md.mtime(), md.mtime_nsec()),
        dir_nlink: ft.is_dir().then(|| md.nlink()),
        rdev: if ft.is_char_device() || ft.is_block_device() {
            md.rdev()
        } else {
            0
        },
        target: ft
            .is_symlink()
            .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
        content: ft.is_file().then(|| hash_file(p)),
        xattrs: xattrs_of(p),
    };
    out.insert(rel, e);
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", p.display()))
            .map(|e| e.expect("dirent").file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &p.join(n), out);
        }
    }
}

fn show(p: &[u8]) -> String {
    format!("{:?}", OsStr::from_bytes(p))
}

/// Every difference between two snapshots, readably.
pub fn diff(a: &BTreeMap<Vec<u8>, Entry>, b: &BTreeMap<Vec<u8>, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, ea) in a {
        match b.get(k) {
            None => out.push(format!("only in first: {}", show(k))),
            Some(eb) if ea != eb => out.push(format!(
                "{}:\n   first:  {ea:?}\n   second: {eb:?}",
                show(k)
            )),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("only in second: {}", show(k)));
    }
    out
}

/// Panics with (at most 50 of) the differences, if there are any.
pub fn assert_same(what: &str, a: &BTreeMap<Vec<u8>, Entry>, b: &BTreeMap<Vec<u8>, Entry>) {
    let d = diff(a, b);
    if !d.is_empty() {
        let shown: Vec<&String> = d.iter().take(50).collect();
        panic!(
            "{what}: {} differences (first 50):\n{}",
            d.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `cp -a` of a layer (keeps devices, xattrs, owners, times, hard links).
/// Runs `script` with `sh -c`, `$1` = `arg`; its standard output (a failure panics with the
/// script's standard error).
pub fn sh_script(script: &str, arg: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "script failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same operations on the kernel overlayfs and on stratafs (mount options
/// `strata_opts`), each over its own copy of `lower` with its own upper: `ops` runs with the
/// mount point and returns what it saw. Returns (kernel, stratafs).
pub fn kernel_and_strata(
    s: &Scratch,
    lower: &Path,
    strata_opts: &str,
    ops: impl Fn(&Path) -> String,
) -> (String, String) {
    let run = |kernel: bool| -> String {
        let tag = if kernel { "k" } else { "s" };
        let l2 = s.path(&format!("{tag}-lower"));
        copy_tree(lower, &l2);
        let (u, w, m) = (
            s.dir(&format!("{tag}-u")),
            s.dir(&format!("{tag}-w")),
            s.dir(&format!("{tag}-m")),
        );
        let stack = Stack::one(&l2, &u, &w);
        if kernel {
            let _k = Kernel::mount(&stack, "", &m);
            ops(&m)
        } else {
            let _s = Strata::mount(&stack, strata_opts, &m);
            ops(&m)
        }
    };
    (run(true), run(false))
}

/// `getfattr` of the mount root's `user.stratafs.stats` (the counters' text and its status).
pub fn stats_output(m: &Path) -> std::process::Output {
    Command::new("getfattr")
        .args([
            "--absolute-names",
            "--only-values",
            "-n",
            "user.stratafs.stats",
        ])
        .arg(m)
        .output()
        .expect("getfattr")
}

/// The daemon's request counters of the mount at `m` (`user.stratafs.stats`), by kind.
pub fn stratafs_stats(m: &Path) -> BTreeMap<String, u64> {
    let out = stats_output(m);
    assert!(
        out.status.success(),
        "reading the counters: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp -a");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Runs `f` on a fresh kernel overlayfs mount of `lowers` with an empty upper and returns
/// that upper: a layer whose whiteouts and opaque directories the kernel itself wrote.
pub fn kernel_made_layer(
    s: &Scratch,
    name: &str,
    lowers: &[&Path],
    f: impl FnOnce(&Path),
) -> PathBuf {
    let upper = s.dir(name);
    let work = s.dir(&format!("{name}.work"));
    let mnt = s.dir(&format!("{name}.mnt"));
    {
        let _k = Kernel::mount(
            &Stack {
                lowers: lowers.to_vec(),
                upper: Some((&upper, &work)),
            },
            "",
            &mnt,
        );
        f(&mnt);
    }
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir(&mnt);
    upper
}

/// Writes `len` bytes of a repeating, position-dependent pattern (so a partial or shifted
/// copy never equals the original).
pub fn write_pattern(p: &Path, len: u64) {
    use std::io::Write;
    let mut f = fs::File::create(p).expect("create pattern file");
    let mut block = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        for (i, b) in block.iter_mut().enumerate() {
            *b = ((off as usize + i) / 4096 % 251) as u8 ^ (i as u8);
        }
        let n = (len - off).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write pattern");
        off += n as u64;
    }
    f.sync_all().expect("sync pattern");
}

/// A content hash of a whole file (read in 1 MiB blocks).
pub fn file_hash(p: &Path) -> (u64, u64) {
    use std::io::Read;
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return (h.finish(), len);
        }
        h.write(&buf[..n]);
        len += n as u64;
    }
}

/// Resident memory of a process, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A pseudo-random number from the clock (enough to vary kill instants between runs).
pub fn clock_random(modulo: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7);
    (n / 1000) % modulo.max(1)
}

/// `sh -c CMD` in `dir`, as root or (`nobody`) as uid/gid 65534 without supplementary
/// groups; the caller runs it and reads the outcome.
pub fn sh_as(nobody: bool, cmd: &str, dir: &Path) -> Command {
    let mut c = if nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
        ]);
        c
    } else {
        Command::new("sh")
    };
    c.arg("-c").arg(cmd).current_dir(dir);
    c
}

/// The number of inotify watches daemon `pid` holds (the `inotify wd:` lines of its inotify
/// fd's fdinfo: `udba=notify`).
pub fn inotify_watches(pid: u32) -> usize {
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        if fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify") {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap();
            return info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    panic!("no inotify fd in daemon {pid}");
}

/// xorshift64*: a random sequence reproducible from the seed the crash tests print.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Below `n` (0 for `n` 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The environment variable `name` parsed as a `T` (a test's duration, rounds, seed…);
/// None when it is unset or does not parse.
pub fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

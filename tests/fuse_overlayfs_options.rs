//! Every option stratafs takes from fuse-overlayfs, side by side with fuse-overlayfs 1.10
//! (`/usr/bin/fuse-overlayfs`): the same lower tree (one copy per implementation), the byte
//! for byte same command line (`-f -o OPTS m`, run from each copy's directory so relative
//! branch paths name that copy, as containers-storage runs a mount_program from its home),
//! the same fixed script of operations through the mount, then compared:
//!
//! - the outcome (ok/failed) of every operation of the script;
//! - what each mount shows: type, mode, owner, size, link count of files (and of
//!   directories where the option is about it), content hash, symlink target, xattr names;
//! - what each stored in its upper, by its meaning: after the unmount each upper is read
//!   through a read-only stratafs mount `lowerdir=u:l1:l2` (stratafs reads both on-disk
//!   dialects: 0/0 whiteouts, `.wh.` files, `trusted.overlay.*` and `user.fuseoverlayfs.*`
//!   markers), so format differences that mean the same do not count.
//!
//! `uidmapping=`, `gidmapping=` and `squash_to_*` are covered the same way by
//! tests/idmap_fuse_overlayfs.rs, and `xattr_permissions=` by tests/xattr_permissions.rs;
//! they are not repeated here. Where stratafs differs on purpose, the case says so and
//! asserts stratafs's documented behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{mount_type, Scratch};

const FO: &str = "fuse-overlayfs";

/// One implementation's copy of the layers: DIR/{l1,l2,u,w,m}.
struct Side {
    dir: PathBuf,
    bin: &'static str,
}

/// A foreground mount (`BIN -f [FLAGS] -o OPTS m`, run in `dir`); unmounted and reaped
/// on drop, even when the test fails.
struct Mounted {
    mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mounted {
    /// `Err(stderr)` when the program exits without mounting.
    fn try_mount(bin: &str, dir: &Path, flags: &[&str], opts: &str) -> Result<Mounted, String> {
        let mnt = dir.join("m");
        static N: AtomicU64 = AtomicU64::new(0);
        let log = dir.join(format!("stderr-{}", N.fetch_add(1, Ordering::Relaxed)));
        let child = Command::new(bin)
            .current_dir(dir)
            .arg("-f")
            .args(flags)
            .arg("-o")
            .arg(opts)
            .arg("m")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn");
        let mut m = Mounted {
            mnt,
            child: Some(child),
            log,
        };
        let start = Instant::now();
        loop {
            if mount_type(&m.mnt).is_some_and(|t| t.starts_with("fuse.")) {
                return Ok(m);
            }
            if let Some(Ok(Some(_))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                return Err(m.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{bin} -o {opts}: no mount within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mount(bin: &str, dir: &Path, flags: &[&str], opts: &str) -> Mounted {
        Mounted::try_mount(bin, dir, flags, opts)
            .unwrap_or_else(|e| panic!("{bin} {flags:?} -o {opts} did not mount: {e}"))
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The mount's options in /proc/self/mountinfo (per-mount and super options).
    fn flags(&self) -> Vec<String> {
        let want = fs::canonicalize(&self.mnt).unwrap();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4).map(Path::new) == Some(want.as_path()))
            .expect("mountinfo line")
            .to_string();
        let f: Vec<&str> = line.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-").unwrap();
        let mut out: Vec<String> = f[5].split(',').map(str::to_string).collect();
        out.extend(f[dash + 3].split(',').map(str::to_string));
        out
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        common::unmount_and_reap(&self.mnt, self.child.take());
    }
}

/// The lower tree: l2 at the bottom, l1 above it (with a whiteout and an opaque dir).
const MAKE_LOWER: &str = r#"set -e
cd "$1"; mkdir l1 l2
echo alpha > l2/a.txt; echo beta > l2/b.txt; echo gone > l2/gone
mkdir -p l2/d1 l2/d2/sub l2/dd/deep l2/e l2/opq
echo x > l2/d1/x; echo y > l2/d1/y; echo z > l2/d2/z; echo s > l2/d2/sub/s
echo deep > l2/dd/deep/f; echo hidden > l2/opq/hidden
echo h > l2/h1; ln l2/h1 l2/h2
ln -s a.txt l2/sym
echo secret > l2/f600; chmod 600 l2/f600
echo o > l2/o; chown 1000:1000 l2/o; chmod 664 l2/o
echo xf > l2/xf; setfattr -n user.k -v v l2/xf; setfattr -n user.k2 -v w l2/xf
mkdir l2/sgid; chown 0:100 l2/sgid; chmod 2775 l2/sgid
echo alpha2 > l1/a.txt
mkdir l1/d1; echo w > l1/d1/w
mknod l1/gone c 0 0
touch -d @1600000000 l1/a.txt l2/b.txt l2/o
"#;

/// The fixed script, run in the mount point; prints one ok/FAIL line per operation.
const SCRIPT: &str = r#"
r() { if "$@" >/dev/null 2>&1; then echo "ok: $*"; else echo "FAIL: $*"; fi; }
n() { r setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$1"; }
r cat a.txt
r cat gone
r sh -c 'echo more >> a.txt'
r sh -c 'echo new > new.txt'
r mkdir nd
r sh -c 'echo n > nd/f'
r rm d1/x
r perl -e 'rename("d1/y", "d1/y2") or die'
r perl -e 'rename("b.txt", "b2.txt") or die'
r perl -e 'rename("new.txt", "nd/new2.txt") or die'
r chmod 640 o
r chmod 4755 b2.txt
r chown 1000:1000 nd/new2.txt
r chown 5:6 d2/z
r chgrp 7 d2
r setfattr -n user.new -v 1 nd/new2.txt
r setfattr -n user.k -v v2 xf
r setfattr -x user.k2 xf
r getfattr -n user.k xf
r ln nd/new2.txt newlink
r ln -s a.txt sym2
r rm -r dd
r mkdir dd
r sh -c 'echo o > dd/only'
r rmdir e
r mkfifo fifo
r sh -c 'dd if=/dev/zero of=big bs=64k count=4 conv=fsync status=none'
n 'cat f600'
n 'cat o'
n 'echo x > nd/nobody'
n 'echo x >> o'
r sh -c 'ls -la . d1 d2 nd > /dev/null'
"#;

/// One entry as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    nlink: Option<u64>,
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: Result<Vec<String>, String>,
}

fn xattr_names(p: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "--absolute-names"])
        .arg(p)
        .output()
        .unwrap();
    if !out.status.success() {
        let e = String::from_utf8_lossy(&out.stderr);
        return Err(e.rsplit(':').next().unwrap_or("").trim().to_string());
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        // security.selinux would be the host's business, not the option's.
        .filter(|l| !l.starts_with("security.selinux"))
        .map(str::to_string)
        .collect();
    v.sort();
    Ok(v)
}

/// Every entry under `root`; `dir_nlink`: record directories' link counts too.
fn view(root: &Path, dir_nlink: bool) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let content = ft.is_file().then(|| {
            let data = fs::read(&p).unwrap_or_else(|e| format!("<{e}>").into_bytes());
            format!("{:x}", crc(&data))
        });
        out.insert(
            rel,
            Seen {
                kind: common::kind_of(ft),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: (!ft.is_dir()).then(|| md.size()),
                nlink: (!ft.is_dir() || dir_nlink).then(|| md.nlink()),
                content,
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs: xattr_names(&p),
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fn crc(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart.
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn run(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two copies of the lower tree with an empty upper, work dir and mount point each.
fn sides(s: &Scratch) -> [Side; 2] {
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let proto = s.dir("proto");
    let out = Command::new("sh")
        .arg("-c")
        .arg(MAKE_LOWER)
        .arg("sh")
        .arg(&proto)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    [("fo", FO), ("sfs", common::bin())].map(|(tag, bin)| {
        let dir = s.dir(tag);
        for l in ["l1", "l2"] {
            common::copy_tree(&proto.join(l), &dir.join(l));
        }
        for d in ["u", "w", "m"] {
            fs::create_dir(dir.join(d)).unwrap();
        }
        Side { dir, bin }
    })
}

/// What one implementation did with one command line.
struct Outcome {
    script: String,
    view: BTreeMap<String, Seen>,
    /// The upper's meaning: a read-only stratafs view of `u:l1:l2` after the unmount.
    stored: Option<BTreeMap<String, Seen>>,
}

/// Mounts `side` with exactly `flags -o opts`, runs `script`, unmounts, reads the upper.
fn exercise(side: &Side, flags: &[&str], opts: &str, script: &str, dir_nlink: bool) -> Outcome {
    let m = Mounted::mount(side.bin, &side.dir, flags, opts);
    let script = run(&m.mnt, script);
    let shown = view(&m.mnt, dir_nlink);
    drop(m);
    let stored = opts.contains("upperdir=").then(|| {
        let ro = Mounted::mount(common::bin(), &side.dir, &[], "lowerdir=u:l1:l2");
        view(&ro.mnt, false)
    });
    Outcome {
        script,
        view: shown,
        stored,
    }
}

fn differences(a: &BTreeMap<String, Seen>, b: &BTreeMap<String, Seen>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, x) in a {
        match b.get(k) {
            None => out.push(format!("only fuse-overlayfs shows {k:?}: {x:?}")),
            Some(y) if x != y => out.push(format!(
                "{k:?}:\n   fuse-overlayfs: {x:?}\n   stratafs:       {y:?}"
            )),
            _ => {}
        }
    }
    for (k, y) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
        out.push(format!("only stratafs shows {k:?}: {y:?}"));
    }
    out
}

/// The whole comparison for one command line: both must accept it, and agree on every
/// outcome, the view and the stored meaning. Returns both outcomes for extra checks.
fn same(opts: &str, flags: &[&str], dir_nlink: bool) -> [Outcome; 2] {
    let s = Scratch::new("fopts");
    let [fo, sfs] = sides(&s);
    let a = exercise(&fo, flags, opts, SCRIPT, dir_nlink);
    let b = exercise(&sfs, flags, opts, SCRIPT, dir_nlink);
    let mut problems = Vec::new();
    if a.script != b.script {
        problems.push(format!(
            "operations differ:\nfuse-overlayfs:\n{}\nstratafs:\n{}",
            a.script, b.script
        ));
    }
    for d in differences(&a.view, &b.view) {
        problems.push(format!("view: {d}"));
    }
    if let (Some(x), Some(y)) = (&a.stored, &b.stored) {
        for d in differences(x, y) {
            problems.push(format!("stored: {d}"));
        }
    }
    assert!(
        problems.is_empty(),
        "-o {opts} {flags:?}: {} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
    [a, b]
}

// ---- the layers and the plain read-write mount ----

#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn several_lowers_with_an_upper() {
    let [a, _] = same("lowerdir=l1:l2,upperdir=u,workdir=w", &[], false);
    // The script really ran (a mount that refused everything would also "agree").
    assert!(a.script.contains("ok: rm -r dd"), "{}", a.script);
    assert!(a.script.contains("FAIL: cat gone"), "{}", a.script);
}

/// `lowerdir=` alone: a read-only union of the lowers in both.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn lowerdir_only_is_read_only() {
    let [a, b] = same("lowerdir=l1:l2", &[], false);
    assert!(a.script.contains("FAIL: mkdir nd"), "{}", a.script);
    assert!(a.script.contains("ok: cat a.txt"), "{}", a.script);
    let _ = b;
}

// ---- options with a visible effect ----

/// `static_nlink`: every directory shows one link, in both.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn static_nlink() {
    let [_, b] = same(
        "lowerdir=l1:l2,upperdir=u,workdir=w,static_nlink",
        &[],
        true,
    );
    let dirs: Vec<_> = b.view.values().filter(|e| e.kind == "dir").collect();
    assert!(dirs.len() > 5 && dirs.iter().all(|e| e.nlink == Some(1)));
}

/// `noacl`: an ACL entry set through the mount is stored but grants nothing (the mode
/// bits decide), in both; without it the same entry lets nobody read.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn noacl() {
    const ACL: &str = r#"
r() { if "$@" >/dev/null 2>&1; then echo "ok: $*"; else echo "FAIL: $*"; fi; }
n() { r setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$1"; }
r setfacl -m u:nobody:r f600
n 'cat f600'
r sh -c 'getfacl -c f600 | grep -q "^user:nobody:r--"'
r mkdir acld
r setfacl -d -m u:nobody:rwx acld
r sh -c 'echo a > acld/f'
n 'echo x >> acld/f'
"#;
    for (opts, nobody_reads) in [
        ("lowerdir=l1:l2,upperdir=u,workdir=w,noacl", false),
        ("lowerdir=l1:l2,upperdir=u,workdir=w", true),
    ] {
        let s = Scratch::new("fopts-acl");
        let [fo, sfs] = sides(&s);
        let a = exercise(&fo, &[], opts, ACL, false);
        let b = exercise(&sfs, &[], opts, ACL, false);
        let last = "sh -c echo x >> acld/f";
        let (mut sa, mut sb) = (a.script.clone(), b.script.clone());
        let (mut av, mut bv) = (a.view.clone(), b.view.clone());
        if nobody_reads {
            // The difference, named: with ACLs on, fuse-overlayfs 1.10 applies the umask
            // to a file created under a default ACL (0644, mask r--: the ACL entry's
            // write is masked away); the kernel overlayfs and stratafs do not (0664, mask
            // rw-: nobody may append), as POSIX ACLs require.
            assert!(
                sa.contains(&format!(
                    "FAIL: setpriv --reuid=65534 --regid=65534 --clear-groups -- {last}"
                )),
                "{sa}"
            );
            assert!(
                sb.contains(&format!(
                    "ok: setpriv --reuid=65534 --regid=65534 --clear-groups -- {last}"
                )),
                "{sb}"
            );
            assert_eq!((av["acld/f"].mode, bv["acld/f"].mode), (0o644, 0o664));
            let who = format!("setpriv --reuid=65534 --regid=65534 --clear-groups -- {last}");
            sa = sa.replace(&format!("FAIL: {who}"), &format!("?: {who}"));
            sb = sb.replace(&format!("ok: {who}"), &format!("?: {who}"));
            av.remove("acld/f");
            bv.remove("acld/f");
        }
        assert_eq!(sa, sb, "-o {opts}");
        let line = "setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c cat f600";
        let want = if nobody_reads { "ok: " } else { "FAIL: " };
        assert!(
            b.script.contains(&format!("{want}{line}")),
            "-o {opts}:\n{}",
            b.script
        );
        if !nobody_reads {
            // The difference, named: under noacl fuse-overlayfs creates in the upper
            // directory itself, so the upper's filesystem applies the default ACL stored
            // there; stratafs (documented: no ACL inheritance under noacl) does not.
            let has_acl = |v: &BTreeMap<String, Seen>| {
                v["acld/f"]
                    .xattrs
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|x| x.starts_with("system.posix_acl_access"))
            };
            assert!(has_acl(&a.view), "fuse-overlayfs acld/f");
            assert!(!has_acl(&b.view), "stratafs acld/f");
            av.remove("acld/f");
            bv.remove("acld/f");
        }
        let d = differences(&av, &bv);
        assert!(d.is_empty(), "-o {opts}: {}", d.join("\n"));
        let (mut av, mut bv) = (a.stored.clone().unwrap(), b.stored.clone().unwrap());
        {
            av.remove("acld/f");
            bv.remove("acld/f");
        }
        let d = differences(&av, &bv);
        assert!(d.is_empty(), "-o {opts}: stored {}", d.join("\n"));
    }
}

/// `noxattrs=1`: every xattr call fails in both; the rest of the script is unchanged.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn noxattrs() {
    let opts = "lowerdir=l1:l2,upperdir=u,workdir=w,noxattrs=1";
    let s = Scratch::new("fopts-noxattrs");
    let [fo, sfs] = sides(&s);
    let script = SCRIPT.replace("r setfattr -x user.k2 xf\n", "");
    let a = exercise(&fo, &[], opts, &script, false);
    let b = exercise(&sfs, &[], opts, &script, false);
    assert_eq!(a.script, b.script);
    assert!(
        b.script.contains("FAIL: setfattr -n user.new"),
        "{}",
        b.script
    );
    assert!(b.view.values().all(|e| e.xattrs.is_err()));
    let d = differences(&a.view, &b.view);
    assert!(d.is_empty(), "{}", d.join("\n"));
    let d = differences(a.stored.as_ref().unwrap(), b.stored.as_ref().unwrap());
    assert!(d.is_empty(), "{}", d.join("\n"));
    // The difference, named: fuse-overlayfs 1.10's noxattrs=1 does not cover
    // removexattr (it removes the xattr, copying the file up); stratafs refuses every
    // xattr call with ENOTSUP, as documented.
    let rm = "setfattr -x user.k2 xf 2>&1; echo rc=$?";
    let m = Mounted::mount(fo.bin, &fo.dir, &[], opts);
    let a = run(&m.mnt, rm);
    drop(m);
    let m = Mounted::mount(sfs.bin, &sfs.dir, &[], opts);
    let b = run(&m.mnt, rm);
    drop(m);
    assert!(a.contains("rc=0"), "fuse-overlayfs: {a}");
    assert!(
        b.contains("not supported") && b.contains("rc=1"),
        "stratafs: {b}"
    );
    let _ = same("lowerdir=l1:l2,upperdir=u,workdir=w,noxattrs=0", &[], false);
}

/// Runs a few writes with fsync through `side` mounted with `opts` under `strace -f -c`;
/// returns the summary and how many of the `names` syscalls the daemon made.
fn count_syscalls(side: &Side, opts: &str, names: &str) -> (String, u64) {
    let trace = side.dir.join("trace");
    let sh = format!(
        "strace -f -qq -c -o {} -e trace={names} {} -f -o '{opts}' m",
        trace.display(),
        side.bin
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .current_dir(&side.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Mounted {
        mnt: side.dir.join("m"),
        child: Some(child),
        log: side.dir.join("none"),
    };
    let start = Instant::now();
    while !mount_type(&m.mnt).is_some_and(|t| t.starts_with("fuse.")) {
        assert!(start.elapsed() < Duration::from_secs(15), "{sh}: no mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(
        &m.mnt,
        "echo data > new && sync new && echo more >> a.txt && sync a.txt && \
         dd if=/dev/zero of=f bs=4k count=2 conv=fsync status=none && echo ok",
    );
    assert_eq!(out.trim(), "ok", "{sh}");
    drop(m); // unmounts; the daemon exits, then strace writes its summary
    let summary = fs::read_to_string(&trace).unwrap_or_default();
    let calls = summary
        .lines()
        .filter(|l| {
            names
                .split(',')
                .any(|n| l.trim_end().ends_with(&format!(" {n}")))
        })
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    (summary, calls)
}

/// `volatile` and `fsync=0`: no fsync reaches the upper, even when the caller asks for
/// one; `fsync=1` (and no option): a caller's fsync is passed on. Counted with strace
/// on each daemon.
#[test]
#[cfg_attr(
    not(all(have = "fuse-overlayfs", have = "strace")),
    ignore = "needs fuse-overlayfs and strace"
)]
fn volatile_and_fsync() {
    for (extra, syncs) in [
        (",volatile", false),
        (",fsync=0", false),
        (",fsync=1", true),
        ("", true),
    ] {
        let opts = format!("lowerdir=l1:l2,upperdir=u,workdir=w{extra}");
        let s = Scratch::new("fopts-sync");
        let [fo, sfs] = sides(&s);
        let names = "fsync,fdatasync,syncfs,sync_file_range";
        let (ta, a) = count_syscalls(&fo, &opts, names);
        let (tb, b) = count_syscalls(&sfs, &opts, names);
        assert_eq!(
            a > 0,
            syncs,
            "fuse-overlayfs -o {opts}: {a} sync calls\n{ta}"
        );
        assert_eq!(b > 0, syncs, "stratafs -o {opts}: {b} sync calls\n{tb}");
    }
}

// ---- options that tune internals: same view, same outcomes ----

#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn tuning_options_change_nothing_visible() {
    for extra in [
        "writeback=0",
        "writeback=1",
        "timeout=0",
        "timeout=2.5",
        "threaded=0",
        "threaded=1",
        "fast_ino=1",
        "plugins=",
        "debug",
        "redirect_dir=off",
        "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
        "allow_other,default_permissions,suid",
        "max_threads=4",
        "clone_fd,max_idle_threads=2",
        "max_read=65536,nonempty",
    ] {
        same(
            &format!("lowerdir=l1:l2,upperdir=u,workdir=w,{extra}"),
            &[],
            false,
        );
    }
    // fuse-overlayfs's -s (libfuse's single-thread flag).
    same("lowerdir=l1:l2,upperdir=u,workdir=w", &["-s"], false);
}

/// `threaded=0` and `-s` serve with one thread in both; fuse-overlayfs's default is one
/// thread too, stratafs's (on purpose: per-inode locks) one per CPU.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn threaded_0_serves_with_one_thread() {
    let s = Scratch::new("fopts-thr");
    let [_, sfs] = sides(&s);
    let workers = |flags: &[&str], extra: &str| {
        let opts = format!("lowerdir=l1:l2,upperdir=u,workdir=w{extra}");
        let m = Mounted::mount(sfs.bin, &sfs.dir, flags, &opts);
        // Several concurrent requests so that every worker has started.
        run(
            &m.mnt,
            "for i in 1 2 3 4 5 6 7 8; do cat a.txt d1/w > /dev/null & done; wait",
        );
        let comms: Vec<String> = fs::read_dir(format!("/proc/{}/task", m.pid()))
            .unwrap()
            .filter_map(|t| fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .collect();
        comms.len()
    };
    let one = workers(&[], ",threaded=0");
    let s_flag = workers(&["-s"], "");
    let default = workers(&[], "");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(one, s_flag, "threaded=0 and -s");
    if cpus > 1 {
        assert!(default > one, "default {default} threads, threaded=0 {one}");
    }
}

/// What containers-storage passes to a mount_program (its overlay driver, read for the
/// facts): `lowerdir=…,upperdir=…,workdir=…` (read-only layers: `lowerdir=` alone), then
/// storage.conf's `mountopt` (commonly `nodev` or `nodev,metacopy=on`), `volatile` for
/// `--volatile`, `context="…"` under SELinux, `uidmapping=`/`gidmapping=` and, with
/// `force_mask`, `xattr_permissions=2`; run from the storage home with those paths.
/// fuse-overlayfs ignores `metacopy=on` (with a warning); stratafs copies metadata only,
/// in the kernel's format, which reads back the same (the stored view below).
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn podman_command_lines() {
    for extra in [
        "nodev,metacopy=on,volatile",
        "nodev,context=\"system_u:object_r:container_file_t:s0:c1,c2\",uidmapping=0:0:65536,gidmapping=0:0:65536",
        // Not `xattr_permissions=2` on these plain layers: fuse-overlayfs 1.10 then shows
        // new entries as 0755 and a copied-up lower directory's owner as 65534 (it loses
        // the lower's ids on copy-up); tests/xattr_permissions.rs compares that option on
        // the force_mask layers podman makes, where the two agree.
    ] {
        same(
            &format!("lowerdir=l1:l2,upperdir=u,workdir=w,{extra}"),
            &[],
            false,
        );
    }
    same("lowerdir=l1:l2,nodev", &[], false);
}

// ---- deliberate differences ----

/// Mount flags. fuse-overlayfs 1.10 as root always adds `noatime` and leaves libfuse's
/// `nodev` default; stratafs follows the kernel overlayfs instead (`relatime`, devices
/// usable) unless `noatime`/`nodev` is given — podman's mountopt passes `nodev` itself.
/// Both show `default_permissions,allow_other` as root.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn mount_flags_follow_the_kernel_not_fuse_overlayfs() {
    let s = Scratch::new("fopts-flags");
    let [fo, sfs] = sides(&s);
    let opts = "lowerdir=l1:l2,upperdir=u,workdir=w";
    let a = Mounted::mount(fo.bin, &fo.dir, &[], opts).flags();
    let b = Mounted::mount(sfs.bin, &sfs.dir, &[], opts).flags();
    for f in ["default_permissions", "allow_other"] {
        assert!(a.iter().any(|x| x == f), "fuse-overlayfs {a:?}");
        assert!(b.iter().any(|x| x == f), "stratafs {b:?}");
    }
    // The difference, named: fuse-overlayfs noatime+nodev, stratafs relatime and dev.
    assert!(a.iter().any(|x| x == "noatime") && a.iter().any(|x| x == "nodev"));
    assert!(b.iter().any(|x| x == "relatime") && !b.iter().any(|x| x == "nodev"));
    // With the flags given, both agree.
    let opts = "lowerdir=l1:l2,upperdir=u,workdir=w,nodev,noatime,nosuid,noexec,ro";
    let a = Mounted::mount(fo.bin, &fo.dir, &[], opts).flags();
    let b = Mounted::mount(sfs.bin, &sfs.dir, &[], opts).flags();
    for f in ["nodev", "noatime", "nosuid", "noexec", "ro"] {
        assert!(a.iter().any(|x| x == f), "fuse-overlayfs {f} {a:?}");
        assert!(b.iter().any(|x| x == f), "stratafs {f} {b:?}");
    }
}

/// `redirect_dir=`: fuse-overlayfs 1.10 refuses `on`, and with `off` answers EXDEV to
/// renaming a directory that has lower content (`mv` then copies); stratafs does the same
/// with `off`. stratafs's default, `on`, renames such a directory in place in the kernel's
/// `redirect_dir=on` format (see README), so the raw rename(2) succeeds there.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn redirect_dir_on_and_off() {
    let s = Scratch::new("fopts-redir");
    let [fo, sfs] = sides(&s);
    let on = "lowerdir=l1:l2,upperdir=u,workdir=w,redirect_dir=on";
    let e = Mounted::try_mount(fo.bin, &fo.dir, &[], on).err();
    assert!(
        e.as_deref().is_some_and(|e| e.contains("redirect_dir")),
        "fuse-overlayfs accepted redirect_dir=on: {e:?}"
    );
    let off = "lowerdir=l1:l2,upperdir=u,workdir=w,redirect_dir=off";
    let ren = "perl -e 'rename(\"d2\", \"d2moved\") or die \"$!\\n\"' 2>&1; ls d2moved/sub 2>&1";
    let m = Mounted::mount(fo.bin, &fo.dir, &[], off);
    let a = run(&m.mnt, ren);
    drop(m);
    let m = Mounted::mount(sfs.bin, &sfs.dir, &[], off);
    let b = run(&m.mnt, ren);
    drop(m);
    assert!(a.contains("cross-device"), "fuse-overlayfs: {a}");
    assert!(
        b.contains("cross-device"),
        "stratafs, redirect_dir=off: {b}"
    );
    let m = Mounted::mount(sfs.bin, &sfs.dir, &[], on);
    let c = run(&m.mnt, ren);
    drop(m);
    assert_eq!(c.trim(), "s", "stratafs, redirect_dir=on: {c}");
}

/// Two things the common script leaves out because stratafs follows the kernel overlayfs
/// there on purpose (checked here against `mount -t overlay` on a third copy):
/// - a write through one name of a lower hard link: fuse-overlayfs 1.10 copies up one
///   file for both names (`h2` changes too and both keep nlink 2); the kernel (index=off)
///   and stratafs break only `h1` away (`h1` nlink 1, `h2` unchanged);
/// - a setgid directory: fuse-overlayfs 1.10 gives new entries the creator's group and
///   drops the bit on copy-up; the kernel and stratafs keep the bit and give its group.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn hard_links_and_setgid_follow_the_kernel() {
    const OPS: &str = "truncate -s 1 h1; mkdir sgid/sub; echo s > sgid/f";
    let s = Scratch::new("fopts-kernel");
    let [fo, sfs] = sides(&s);
    let opts = "lowerdir=l1:l2,upperdir=u,workdir=w";
    let a = exercise(&fo, &[], opts, OPS, false);
    let b = exercise(&sfs, &[], opts, OPS, false);
    let k = s.dir("k");
    for d in ["l1", "l2"] {
        common::copy_tree(&sfs.dir.join(d), &k.join(d));
    }
    let (u, w, m) = (s.dir("k/u"), s.dir("k/w"), s.dir("k/m"));
    let kernel = {
        let _k = common::Kernel::mount(
            &common::Stack {
                lowers: vec![&k.join("l1"), &k.join("l2")],
                upper: Some((&u, &w)),
            },
            "",
            &m,
        );
        run(&m, OPS);
        view(&m, false)
    };
    let names = ["h1", "h2", "sgid", "sgid/f", "sgid/sub"];
    for n in names {
        assert_eq!(b.view.get(n), kernel.get(n), "stratafs vs kernel: {n}");
    }
    // The difference, named: fuse-overlayfs's h2 follows h1; its sgid entries do not
    // inherit.
    assert_eq!(a.view["h2"].size, Some(1), "fuse-overlayfs h2");
    assert_eq!(
        b.view["h2"].size,
        Some(2),
        "stratafs h2 (kernel: unchanged)"
    );
    assert_eq!(b.view["h1"].nlink, Some(1));
    assert_eq!(a.view["sgid/f"].gid, 0, "fuse-overlayfs sgid/f");
    assert_eq!(b.view["sgid/f"].gid, 100, "stratafs sgid/f");
    assert_eq!(b.view["sgid"].mode & 0o2000, 0o2000);
    assert_eq!(a.view["sgid"].mode & 0o2000, 0);
    // Everything else agrees.
    let rest = |v: &BTreeMap<String, Seen>| {
        v.iter()
            .filter(|(k, _)| !names.contains(&k.as_str()))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert!(differences(&rest(&a.view), &rest(&b.view)).is_empty());
}

/// Options fuse-overlayfs 1.10 ignores with a warning ("unknown argument ignored") that
/// stratafs refuses with one line, because they would change or misstate the mount
/// (`plugins=` with a plugin: stratafs has no plugin loader), or are not options at all.
/// The ones a drop-in user does pass (libfuse thread tuning, `-s`, `threaded=`, an empty
/// `plugins=`) are accepted above.
#[test]
#[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
fn unknown_options_refused_with_one_line() {
    let s = Scratch::new("fopts-unknown");
    let [fo, sfs] = sides(&s);
    for extra in ["bogus_option", "plugins=/nonexistent/plugin.so"] {
        let opts = format!("lowerdir=l1:l2,upperdir=u,workdir=w,{extra}");
        let fo_says = match Mounted::try_mount(fo.bin, &fo.dir, &[], &opts) {
            Ok(m) => m.stderr(),
            Err(e) => e,
        };
        let key = extra.split('=').next().unwrap();
        assert!(
            fo_says.contains(key.trim_end_matches('s')),
            "fuse-overlayfs -o {opts}: {fo_says}"
        );
        let e = Mounted::try_mount(sfs.bin, &sfs.dir, &[], &opts)
            .err()
            .unwrap_or_else(|| panic!("stratafs accepted -o {opts}"));
        let e = e.trim();
        assert!(
            e.contains(key) && !e.contains('\n'),
            "stratafs -o {opts}: {e}"
        );
    }
}

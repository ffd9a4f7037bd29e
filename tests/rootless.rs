//! Rootless use, as a non-root user inside a user namespace:
//!
//! - stratafs mounted by that user inside `unshare --user --map-root-user --map-auto --mount`
//!   (a real multi-id mapping through newuidmap) with `uidmapping=`/`gidmapping=`: ownership
//!   as seen inside the mount, and as stored on disk in the upper seen from the host;
//! - layers written by fuse-overlayfs (Debian's 1.10) in rootless mode (`unshare -Urm`) with
//!   both of its whiteout flavours (0/0 character devices, and `.wh.` files with
//!   FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT) and its `user.fuseoverlayfs.*` markers read the same
//!   through stratafs as through fuse-overlayfs itself, and as the expected tree.
//!
//! Runs as root (it creates the test user `stratafs-podman` with /etc/subuid and /etc/subgid
//! ranges if missing, as scripts/podman.sh does). The user needs /dev/fuse: if it is not
//! world read-writable, each test makes it 0666 while it runs and puts the old mode back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use common::{assert_same, bin, snapshot, Entry, Scratch, Stack, Strata};

const USER: &str = "stratafs-podman";

/// The test user: (uid, first subordinate uid, first subordinate gid), created once.
fn test_user() -> (u32, u32, u32) {
    static USER_IDS: OnceLock<(u32, u32, u32)> = OnceLock::new();
    *USER_IDS.get_or_init(|| {
        let exists = Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            let st = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", USER])
                .status()
                .expect("useradd");
            assert!(st.success(), "useradd {USER} failed");
        }
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            if sub_start(file).is_none() {
                let st = Command::new("usermod")
                    .args([flag, "300000-365535", USER])
                    .status()
                    .expect("usermod");
                assert!(st.success(), "usermod {flag} failed");
            }
        }
        let out = Command::new("id")
            .args(["-u", USER])
            .output()
            .expect("id -u");
        let uid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("uid");
        (
            uid,
            sub_start("/etc/subuid").expect("subuid range"),
            sub_start("/etc/subgid").expect("subgid range"),
        )
    })
}

/// The start of the user's first range in /etc/subuid or /etc/subgid.
fn sub_start(file: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == USER).then(|| f.next()?.parse().ok())?
    })
}

/// /dev/fuse usable by the test user while held (0666 if it was not), one test at a time.
struct FuseAccess {
    restore: Option<u32>,
    _lock: MutexGuard<'static, ()>,
}

fn fuse_access() -> FuseAccess {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mode = fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
    let restore = (mode & 0o666 != 0o666).then(|| {
        eprintln!("note: /dev/fuse is mode {mode:o}; making it 0666 for this test");
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).expect("chmod");
        mode
    });
    FuseAccess {
        restore,
        _lock: lock,
    }
}

impl Drop for FuseAccess {
    fn drop(&mut self) {
        if let Some(m) = self.restore {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(m));
        }
    }
}

/// Runs `sh -c script sh ARGS…` as the test user in a new user and mount namespace (ns root
/// is the user; with `map_auto` also ns ids 1… are its subordinate ids). Panics with the
/// output unless it succeeds; returns stdout.
fn in_userns(map_auto: bool, script: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", USER, "--", "timeout", "-k", "10", "120", "unshare"])
        .args(["--user", "--map-root-user", "--mount"]);
    if map_auto {
        cmd.arg("--map-auto");
    }
    cmd.args(["sh", "-c", script, "sh"])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null());
    let out = cmd.output().expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script in the user namespace failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A copy of the binary the test user can run, made by cp(1): a copy written by this
/// process would be open for writing in every child another test thread forks meanwhile,
/// and exec'ing it then fails with ETXTBSY (sh's exit status 126).
fn copy_binary(to: &Path) {
    let ok = Command::new("cp")
        .arg(bin())
        .arg(to)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "cp {} {}", bin(), to.display());
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// Waits for a mount of `mnt` made inside the namespace script (see the scripts).
const WAIT_MOUNT: &str = r#"wait_mount() { i=0; while ! grep -q " $1 fuse" /proc/mounts; do
  i=$((i+1)); [ $i -lt 150 ] || { echo "no mount at $1" >&2; return 1; }; sleep 0.1; done; }
"#;

/// The mapping goes as fuse-overlayfs's: with `uidmapping=0:10:1:1:20:100` an id stored as
/// ns 0 shows as 10 and ns 1..100 as 20..119, and a chown to 27 stores ns 8. (This test used
/// to encode the opposite direction.)
#[test]
fn uidmapping_in_a_user_namespace_owns_files_as_mapped() {
    let (uid, subuid, subgid) = test_user();
    let _fuse = fuse_access();
    // ns id k (k >= 1) is host id sub + k - 1; ns 0 is the user itself.
    let host_uid = |k: u32| if k == 0 { uid } else { subuid + k - 1 };
    let gid = user_gid();
    let host_gid = |k: u32| if k == 0 { gid } else { subgid + k - 1 };
    let s = Scratch::new("rootless-ids");
    // The binary where the user can run it, whatever the mode of the repository's parents.
    copy_binary(&s.path("stratafs"));
    let lower = s.dir("lower");
    let upper = s.dir("upper");
    let work = s.dir("work");
    let mnt = s.dir("mnt");
    let log = s.dir("log");
    for (name, k) in [("by-0", 0), ("by-5", 5), ("by-200", 200)] {
        fs::write(lower.join(name), name).unwrap();
        chown(&lower.join(name), host_uid(k), host_gid(k));
    }
    // Stored as ns 0 (the user): shown as 10, who may write in the mount's root.
    for d in [&lower, &upper, &work, &mnt, &log] {
        chown(d, uid, gid);
    }
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();

    let script = format!(
        r#"set -e
{WAIT_MOUNT}d=$1
"$2" -f -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work,allow_other,default_permissions,uidmapping=0:10:1:1:20:100,gidmapping=0:10:1:1:20:100 $d/mnt 2>$d/log/daemon.log &
pid=$!
trap 'umount $d/mnt 2>/dev/null || true; wait $pid' EXIT
wait_mount $d/mnt
cat /proc/self/uid_map | tr -s ' ' | tr '\n' ';'; echo
stat -c '%n %u %g' $d/mnt $d/mnt/by-0 $d/mnt/by-5 $d/mnt/by-200
echo new > $d/mnt/new
setpriv --reuid=10 --regid=10 --clear-groups -- sh -c "echo new10 > $d/mnt/new10"
mkdir $d/mnt/newdir
chown 27:28 $d/mnt/by-5
if chown 500 $d/mnt/by-0 2>/dev/null; then echo chown-unmapped=accepted; else echo chown-unmapped=refused; fi
stat -c '%n %u %g' $d/mnt/new $d/mnt/new10 $d/mnt/newdir $d/mnt/by-5 $d/mnt/by-0
"#
    );
    let out = in_userns(
        true,
        &script,
        &[
            s.0.to_str().unwrap(),
            s.0.join("stratafs").to_str().unwrap(),
        ],
    )
    .replace(&format!("{}/mnt", s.0.display()), "M");
    eprintln!("{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines[0].starts_with("0 ") && lines[0].contains("; 1 "),
        "not a multi-id user namespace: {}",
        lines[0]
    );
    let expect = [
        "M 10 10",
        "M/by-0 10 10",
        "M/by-5 24 24",
        "M/by-200 65534 65534",
        // As fuse-overlayfs: an unmapped id is stored as the overflow id, no error.
        "chown-unmapped=accepted",
        // Made by ns root, whose 0 is no shown id: stored as 65534, which no range covers.
        "M/new 65534 65534",
        "M/new10 10 10",
        "M/newdir 65534 65534",
        "M/by-5 27 28",
        "M/by-0 65534 10",
    ];
    assert_eq!(&lines[1..], &expect[..], "ownership inside the mount");
    // On disk, seen from the host: shown 10 is ns 0, shown 27/28 are ns 8/9.
    assert_eq!(
        owner(&upper.join("new")),
        (host_uid(65534), host_gid(65534))
    );
    assert_eq!(owner(&upper.join("new10")), (uid, gid));
    assert_eq!(
        owner(&upper.join("newdir")),
        (host_uid(65534), host_gid(65534))
    );
    assert_eq!(owner(&upper.join("by-5")), (host_uid(8), host_gid(9)));
    assert_eq!(owner(&lower.join("by-5")), (host_uid(5), host_gid(5)));
    assert_eq!(owner(&upper.join("by-0")), (host_uid(65534), gid));
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"new\n");
}

fn user_gid() -> u32 {
    let out = Command::new("id")
        .args(["-g", USER])
        .output()
        .expect("id -g");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("gid")
}

/// fuse-overlayfs mounted by root (read-only over `lowers`); unmounted and reaped on drop.
struct FuseOverlayfs {
    mnt: PathBuf,
    child: Option<Child>,
}

impl FuseOverlayfs {
    fn mount(lowers: &[&Path], mnt: &Path) -> FuseOverlayfs {
        let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let child = Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            .arg(format!("lowerdir={}", l.join(":")))
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fuse-overlayfs");
        let m = FuseOverlayfs {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        };
        common::wait_for_mount(mnt, "fuse.fuse-overlayfs");
        m
    }
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        common::unmount_and_reap(&self.mnt, self.child.take());
    }
}

/// Session 1 (on L0, written with 0/0 character-device whiteouts): file and directory
/// deletions, a directory deleted and recreated, renames of a file and of a directory, a
/// chmod, symlinks made and deleted, a hard link, new entries.
const OPS1: &str = r#"set -e
cd "$1"
rm file-del
mv file-ren file-renamed
chmod 755 file-chmod
ln file-link file-hard
ln -s keep/k sym-new
rm sym-del
rm -r dir-del
rm -r dir-re; mkdir dir-re; echo new > dir-re/new
mv dir-ren dir-renamed
echo newfile > newfile
mkdir newdir; echo n > newdir/n
chmod 700 keep
"#;

/// Session 2 (on top, written with `.wh.` files): deletions of entries of both layers
/// below, a directory recreated, a rename of a directory made in session 1, chmods.
///
/// Not done here: a chmod of `file-hard`, a name of a hard-linked file in U1. fuse-overlayfs
/// 1.10 writes the copy-up correctly (U2/file-hard mode 0600, one link), but its own view of
/// the stack goes on showing the U1 inode's mode and two links for that name (it keeps one
/// node per lower inode), where stratafs shows the U2 copy as the kernel overlayfs does; and
/// a plain tree changes both names. That is a fuse-overlayfs quirk, not a format question.
const OPS2: &str = r#"set -e
cd "$1"
rm file-renamed
rm -r dir-renamed/s
rm newfile
rm -r keep; mkdir keep; echo k2 > keep/k2
mv newdir newdir2
rm fifo
chmod 600 file-chmod
chmod 750 dir-re
ln -s /abs/target sym-abs
rm -r deep/a/b
"#;

/// Runs fuse-overlayfs in the user namespace over `lowers` with `upper`, applies `ops`
/// through it, unmounts; then applies `ops` to the plain expected tree.
const SESSION: &str = r#"set -e
d=$1 lowers=$2 upper=$3 ops=$4 env=$5
mkdir -p $d/$upper.work $d/fo-mnt
env $env fuse-overlayfs -f -o lowerdir=$lowers,upperdir=$d/$upper,workdir=$d/$upper.work $d/fo-mnt 2>$d/$upper.log &
pid=$!
trap 'umount $d/fo-mnt 2>/dev/null || true; wait $pid' EXIT
wait_mount $d/fo-mnt
sh $d/$ops $d/fo-mnt
umount $d/fo-mnt
wait $pid
trap - EXIT
sh $d/$ops $d/expected
"#;

/// Directory link counts differ by design: stratafs (like the kernel overlayfs) reports one
/// link for a merged directory, fuse-overlayfs and a plain tree count subdirectories.
fn without_dir_nlink(v: &BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    v.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.dir_nlink = None;
            (k.clone(), e)
        })
        .collect()
}

/// Against the expected tree (made by the same operations on a plain copy): times differ
/// (each was made at its own moment), and so do the mount root's mode and times.
fn without_times(v: &BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    without_dir_nlink(v)
        .into_iter()
        .map(|(k, mut e)| {
            e.mtime = (0, 0);
            (k, e)
        })
        .collect()
}

fn walk_files(root: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        let dir = md.is_dir();
        out.push((e.path(), md));
        if dir {
            walk_files(&e.path(), out);
        }
    }
}

#[test]
fn fuse_overlayfs_rootless_layers_read_the_same() {
    let (uid, _, _) = test_user();
    let gid = user_gid();
    let _fuse = fuse_access();
    let s = Scratch::new("rootless-fo");
    let l0 = s.dir("L0");
    for d in ["dir-del/sub", "dir-re", "dir-ren/s", "keep", "deep/a/b/c"] {
        fs::create_dir_all(l0.join(d)).unwrap();
    }
    for (f, data) in [
        ("file-del", "a"),
        ("file-ren", "b"),
        ("file-chmod", "c"),
        ("file-link", "d"),
        ("dir-del/x", "e"),
        ("dir-del/sub/y", "f"),
        ("dir-re/old", "g"),
        ("dir-ren/s/z", "h"),
        ("dir-ren/top", "i"),
        ("keep/k", "k"),
        ("deep/a/b/c/d", "l"),
        ("deep/a/e", "m"),
    ] {
        fs::write(l0.join(f), data).unwrap();
    }
    std::os::unix::fs::symlink("file-link", l0.join("sym-del")).unwrap();
    fs::set_permissions(l0.join("file-chmod"), fs::Permissions::from_mode(0o640)).unwrap();
    let st = Command::new("mkfifo")
        .arg(l0.join("fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(s.path("ops1.sh"), OPS1).unwrap();
    fs::write(s.path("ops2.sh"), OPS2).unwrap();
    s.dir("U1");
    s.dir("U2");
    s.dir("expected");
    // Everything belongs to the user (ns root), as a rootless container's layers do.
    let st = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&s.0)
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let d = s.0.to_str().unwrap().to_string();
    let session = format!("{WAIT_MOUNT}{SESSION}");
    // The expected tree starts as a copy of L0 (made in the namespace, same owners).
    in_userns(false, "cp -a \"$1/L0/.\" \"$1/expected/\"", &[&d]);
    in_userns(
        false,
        &session,
        &[&d, &format!("{d}/L0"), "U1", "ops1.sh", "X=1"],
    );
    in_userns(
        false,
        &session,
        &[
            &d,
            &format!("{d}/U1:{d}/L0"),
            "U2",
            "ops2.sh",
            "FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT=1",
        ],
    );

    // The layers really hold fuse-overlayfs's rootless formats (else this test proves little).
    let mut files = Vec::new();
    walk_files(&s.path("U1"), &mut files);
    let u1_chardev = files.iter().any(|(_, m)| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_char_device() && m.rdev() == 0
    });
    assert!(u1_chardev, "U1 has no 0/0 character-device whiteout");
    let mut files2 = Vec::new();
    walk_files(&s.path("U2"), &mut files2);
    let wh_files = files2
        .iter()
        .filter(|(p, m)| {
            let n = p.file_name().unwrap().to_string_lossy();
            m.is_file() && n.starts_with(".wh.") && n != ".wh..wh..opq"
        })
        .count();
    assert!(wh_files >= 4, "U2 has {wh_files} .wh. whiteout files");
    let opq = files
        .iter()
        .chain(files2.iter())
        .any(|(p, _)| p.file_name().unwrap() == ".wh..wh..opq");
    assert!(opq, "no .wh..wh..opq opaque marker");
    let fo_xattr = files.iter().chain(files2.iter()).any(|(p, m)| {
        m.is_dir()
            && Command::new("getfattr")
                .args(["--absolute-names", "-n", "user.fuseoverlayfs.opaque"])
                .arg(p)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
    });
    assert!(fo_xattr, "no user.fuseoverlayfs.opaque marker");

    let u2 = s.path("U2");
    let u1 = s.path("U1");
    let lowers: Vec<&Path> = vec![&u2, &u1, &l0];
    let fo_mnt = s.dir("fo-view");
    let sfs_mnt = s.dir("sfs-view");
    let (fo_snap, sfs_snap) = {
        let _fo = FuseOverlayfs::mount(&lowers, &fo_mnt);
        let _sfs = Strata::mount(
            &Stack {
                lowers: lowers.clone(),
                upper: None,
            },
            "",
            &sfs_mnt,
        );
        (snapshot(&fo_mnt), snapshot(&sfs_mnt))
    };
    let expected = snapshot(&s.path("expected"));
    // No marker of any format shows (snapshot records every xattr and every name).
    for (k, e) in &sfs_snap {
        let name = String::from_utf8_lossy(k);
        assert!(!name.contains(".wh."), "marker file shows: {name}");
        assert!(
            e.xattrs
                .keys()
                .all(|x| !x.starts_with(b"user.fuseoverlayfs") && !x.starts_with(b"user.overlay")),
            "{name}: marker xattr shows: {:?}",
            e.xattrs.keys()
        );
    }
    assert_same(
        "stratafs vs fuse-overlayfs over the same fuse-overlayfs-written layers",
        &without_dir_nlink(&fo_snap),
        &without_dir_nlink(&sfs_snap),
    );
    // The root's mode and times come from the top layer's root (U2) in both views, from
    // the copy itself in the expected tree: compare everything else.
    let mut sfs_rest = without_times(&sfs_snap);
    let mut exp_rest = without_times(&expected);
    sfs_rest.remove(&Vec::new());
    exp_rest.remove(&Vec::new());
    assert_same("stratafs vs the expected tree", &exp_rest, &sfs_rest);
    assert!(sfs_snap.len() > 15, "only {} entries", sfs_snap.len());
    assert!(sfs_snap.contains_key(b"dir-re/new".as_slice()));
    assert!(!sfs_snap.contains_key(b"dir-re/old".as_slice()));
    assert!(!sfs_snap.contains_key(b"deep/a/b".as_slice()));
}

/// The apt-get failure: as a non-root user in a user namespace (no passthrough, so the
/// kernel's writeback cache, which sends a times-only SETATTR when an unlinked file is
/// closed), a lower file open read-only whose name is then removed (unlinked, or another
/// file renamed over it) closes without an error, and changes made through the open file
/// (times, mode, owner, xattrs, writes through /proc/PID/fd) complete, on an anonymous copy
/// that nothing leaves behind in workdir/work; every outcome as with fuse-overlayfs 1.10
/// in the same place (tests/nameless_copy_up.rs has the root cases).
#[test]
fn open_files_whose_name_is_gone_complete_rootless() {
    let (uid, _, _) = test_user();
    let gid = user_gid();
    let _fuse = fuse_access();
    let s = Scratch::new("rootless-nameless");
    copy_binary(&s.path("stratafs"));
    fs::write(s.path("ops.pl"), include_str!("common/nameless_ops.pl")).unwrap();
    let ops = [
        "close", "utime", "chmod", "chown", "xattr", "write", "truncate",
    ];
    for side in ["s", "f"] {
        for sub in ["l", "u", "w", "m"] {
            let d = s.dir(&format!("{side}/{sub}"));
            chown(&d, uid, gid);
        }
        chown(&s.path(side), uid, gid);
        for op in ops {
            for p in ["f", "g"] {
                let f = s.path(&format!("{side}/l/{p}_{op}"));
                fs::write(&f, format!("lower {op}\n")).unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
                chown(&f, uid, gid);
            }
        }
    }
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"set -e
d=$1
"$2" -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null
trap 'umount "$d/m"' EXIT
perl "$3" "$d/m"
echo "work: $(ls -A "$d/w/work" | tr '\n' ' ')"
"#;
    let run = |side: &str, fs_bin: &str| {
        in_userns(
            false,
            script,
            &[
                s.path(side).to_str().unwrap(),
                fs_bin,
                s.path("ops.pl").to_str().unwrap(),
            ],
        )
    };
    let sout = run("s", s.path("stratafs").to_str().unwrap());
    let fout = run("f", "/usr/bin/fuse-overlayfs");
    eprintln!("stratafs:\n{sout}");
    let cases = |o: &str| -> Vec<String> {
        o.lines()
            .filter(|l| !l.starts_with("work: "))
            .map(String::from)
            .collect()
    };
    assert_eq!(cases(&sout), cases(&fout), "stratafs vs fuse-overlayfs");
    assert!(!sout.contains("error"), "every call completes:\n{sout}");
    assert!(
        sout.lines().any(|l| l.trim() == "work:"),
        "workdir/work after the last close:\n{sout}"
    );
    assert_eq!(fs::read_dir(s.path("s/w/work")).unwrap().count(), 0);
    for op in ops {
        assert_eq!(
            fs::read_to_string(s.path(&format!("s/l/f_{op}"))).unwrap(),
            format!("lower {op}\n"),
            "the lower is untouched"
        );
    }
}

/// A user mount's owner may change its branches (here: the user's namespace root, who
/// mounted it); another user gets EPERM and nothing changes.
#[test]
fn the_owner_of_a_user_mount_changes_its_branches_others_may_not() {
    let (uid, _, _) = test_user();
    let gid = user_gid();
    let _fuse = fuse_access();
    let s = Scratch::new("rootless-branch");
    copy_binary(&s.path("stratafs"));
    let (lower, module) = (s.dir("lower"), s.dir("module"));
    fs::write(lower.join("base"), "base\n").unwrap();
    fs::write(module.join("from-module"), "module\n").unwrap();
    for d in ["lower", "module", "upper", "work", "mnt", "log"] {
        let p = s.dir(d);
        chown(&p, uid, gid);
        for e in fs::read_dir(&p).unwrap() {
            chown(&e.unwrap().path(), uid, gid);
        }
    }
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        r#"set -e
{WAIT_MOUNT}d=$1
"$2" -f -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/mnt 2>$d/log/daemon.log &
pid=$!
trap 'umount $d/mnt 2>/dev/null || true; wait $pid' EXIT
wait_mount $d/mnt
ls $d/mnt
i=0; until "$2" branch $d/mnt add:1:$d/module >$d/log/add.out 2>&1; do
  i=$((i+1)); [ $i -lt 50 ] || {{ cat $d/log/add.out; exit 1; }}; sleep 0.1; done
cat $d/mnt/from-module
if setpriv --reuid=1000 --regid=1000 --clear-groups -- "$2" branch $d/mnt del:$d/module 2>$d/log/other.err; then
  echo other=accepted; else echo other=refused; fi
grep -c 'only root or the mount' $d/log/other.err || true
cat $d/mnt/from-module
"$2" branch $d/mnt del:$d/module
ls $d/mnt
"#
    );
    let out = in_userns(
        true,
        &script,
        &[
            s.0.to_str().unwrap(),
            s.0.join("stratafs").to_str().unwrap(),
        ],
    );
    let want = format!(
        "base\nmodule\nother=refused\n1\nmodule\nremoved {}\nbase\n",
        module.display()
    );
    assert_eq!(
        out,
        want,
        "log: {}",
        fs::read_to_string(s.path("log/other.err")).unwrap_or_default()
    );
}

/// Rootless, a daemon cannot call open_by_handle_at: a copied-up file still shows its
/// origin's inode number after a remount, whatever its name now is (issue #25; the
/// number is read from the recorded handle, `origin.rs`). Each entry's st_ino, while
/// mounted and after a remount, must be its lower origin's (low 56 bits: stratafs puts a
/// filesystem index in the top byte), as the kernel overlayfs mounted by root shows
/// (tests/origin_remount.rs).
#[test]
fn copied_up_files_keep_their_numbers_across_remount_rootless() {
    let (uid, _, _) = test_user();
    let gid = user_gid();
    let _fuse = fuse_access();
    let s = Scratch::new("rootless-origin");
    copy_binary(&s.path("stratafs"));
    for sub in ["l", "u", "w", "m"] {
        chown(&s.dir(sub), uid, gid);
    }
    let files = ["renamed", "moved", "written", "chmodded", "kept"];
    let mut lower_ino = BTreeMap::new();
    for f in files {
        let p = s.path(&format!("l/{f}"));
        fs::write(&p, format!("{f}\n")).unwrap();
        chown(&p, uid, gid);
        lower_ino.insert(f, fs::metadata(&p).unwrap().ino());
    }
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"set -e
d=$1
show() { for e in renamed.new nd/moved.new written chmodded.new kept; do
  echo "$1 $e $(stat -c %i "$d/m/$e")"; done; }
"$2" -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null
cd "$d/m"
mv renamed renamed.new
mkdir nd && mv moved nd/moved.new
echo more >> written
chmod 600 chmodded && mv chmodded chmodded.new
cd /
show mounted
umount "$d/m"
"$2" -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null
show remounted
umount "$d/m"
"#;
    let out = in_userns(
        false,
        script,
        &[s.0.to_str().unwrap(), s.path("stratafs").to_str().unwrap()],
    );
    fn origin_of(e: &str) -> &str {
        let base = e.rsplit('/').next().unwrap_or(e);
        base.split('.').next().unwrap_or(base)
    }
    let mut bad = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [stage, e, ino] = f[..] else {
            continue;
        };
        let shown: u64 = ino.parse().unwrap();
        let want = lower_ino[origin_of(e)];
        if shown & ((1 << 56) - 1) != want {
            bad.push(format!(
                "{stage} {e}: st_ino {shown:#x}, its origin's is {want:#x}"
            ));
        }
    }
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(bad.is_empty(), "{}\n{out}", bad.join("\n"));
}

/// aufs's branch model rootless: a pool of two writable branches over a read-only one,
/// mounted by the test user in a user namespace with `br=` and `create=rr`. Whiteouts are
/// aufs's `.wh.` files, which an unprivileged daemon can make (a 0/0 character device it
/// could not), so removing a lower file works without any privilege.
#[test]
fn aufs_pool_in_a_user_namespace() {
    let (uid, _, _) = test_user();
    let gid = user_gid();
    let _fuse = fuse_access();
    let s = Scratch::new("rootless-aufs");
    copy_binary(&s.path("stratafs"));
    for sub in ["w1", "w2", "l", "m"] {
        chown(&s.dir(sub), uid, gid);
    }
    let lower = s.path("l/lowerfile");
    fs::write(&lower, "lower\n").unwrap();
    chown(&lower, uid, gid);
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"set -e
d=$1
"$2" -o "br=$d/w1=rw:$d/w2=rw:$d/l=ro,create=rr" "$d/m"
cd "$d/m"
for i in 1 2 3 4; do echo $i > f$i; done
echo more >> lowerfile
rm lowerfile
ls
cd /
umount "$d/m"
"#;
    let out = in_userns(
        false,
        script,
        &[s.0.to_str().unwrap(), s.path("stratafs").to_str().unwrap()],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["f1", "f2", "f3", "f4"]);
    let on = |b: &str| {
        (1..=4)
            .filter(|i| s.path(&format!("{b}/f{i}")).exists())
            .count()
    };
    assert_eq!((on("w1"), on("w2")), (2, 2), "create=rr spread the files");
    assert!(
        s.path("w1/.wh.lowerfile").is_file(),
        "an aufs whiteout on w1"
    );
    assert_eq!(fs::read_to_string(&lower).unwrap(), "lower\n");
    assert_eq!(owner(&s.path("w1/.wh.lowerfile")), (uid, gid));
}

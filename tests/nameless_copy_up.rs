//! Copy-up of an open file whose name is gone (unlinked, or another file renamed over it):
//! the copy cannot go to the old name (a whiteout or the other file holds it), so it goes
//! to an anonymous file in the workdir. Each case (tests/common/nameless_ops.pl) opens a
//! lower file read-only, removes its name, then closes it, or first changes its times,
//! mode, owner or xattrs through the fd, or reopens it read-write through /proc/PID/fd
//! to write, fsync, fallocate or truncate, and reads the data back through the first fd.
//!
//! Run as root (FUSE passthrough), as root of a user namespace (no passthrough: the
//! kernel's writeback cache, which sends a times-only SETATTR at the close of an unlinked
//! file; the apt-get failure), and there with `writeback=0`. Every outcome must equal
//! fuse-overlayfs 1.10's in the same place (the kernel overlayfs 6.18 refuses all but the
//! plain close with EEXIST: it copies up to the old name; its close and the names left
//! must still match), nothing may be left in workdir/work, and the lower is untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{bin, Scratch};

const OPS: &str = include_str!("common/nameless_ops.pl");
const CASES: [&str; 7] = [
    "close", "utime", "chmod", "chown", "xattr", "write", "truncate",
];

/// Where a run happens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// The initial namespaces, as root.
    Root,
    /// `unshare -Urm`: root of a user namespace.
    UserNs,
}

/// Builds `d/{l,u,w,m}` with the lower files the script expects.
fn layers(d: &Path) {
    for sub in ["l", "u", "w", "m"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    for op in CASES {
        for p in ["f", "g"] {
            let f = d.join(format!("l/{p}_{op}"));
            fs::write(&f, format!("lower {op}\n")).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// The lower as (name, content, mode, uid, mtime), to see it was not written.
fn lower_state(l: &Path) -> Vec<(String, Vec<u8>, u32, u32, i64)> {
    let mut v: Vec<_> = fs::read_dir(l)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
                md.mode(),
                md.uid(),
                md.mtime(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Mounts `what` (a FUSE binary, or "kernel") over `d` in `place`, runs the script,
/// unmounts; returns the script's output and what workdir/work held before the unmount.
fn run(d: &Path, what: &str, opts: &str, place: Place) -> (String, String) {
    let script = r#"set -e
d=$1
case "$2" in
kernel) mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
*) "$2" -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w$3" "$d/m" ;;
esac
trap 'umount "$d/m"' EXIT
perl -e "$4" "$d/m"
echo "work: $(ls -A "$d/w/work" | tr '\n' ' ')"
"#;
    let mut cmd = match place {
        Place::Root => Command::new("sh"),
        Place::UserNs => {
            let mut c = Command::new("unshare");
            c.args(["-Urm", "sh"]);
            c
        }
    };
    let out = cmd
        .args(["-c", script, "sh"])
        .arg(d)
        .arg(what)
        .arg(if opts.is_empty() {
            String::new()
        } else {
            format!(",{opts}")
        })
        .arg(OPS)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} {opts} ({place:?}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (log, work) = stdout
        .rsplit_once("work: ")
        .map(|(a, b)| (a.to_string(), b.trim().to_string()))
        .unwrap_or((stdout.clone(), "?".into()));
    (log, work)
}

fn case_lines(log: &str) -> Vec<&str> {
    log.lines().collect()
}

/// stratafs with `opts` in `place` against fuse-overlayfs in the same place.
fn check(tag: &str, opts: &str, place: Place) {
    let s = Scratch::new(tag);
    let (sd, fd) = (s.path("s"), s.path("f"));
    layers(&sd);
    layers(&fd);
    let lower_before = lower_state(&sd.join("l"));
    let (slog, swork) = run(&sd, bin(), opts, place);
    eprintln!("stratafs {opts} ({place:?}):\n{slog}");
    let (flog, _) = run(&fd, "/usr/bin/fuse-overlayfs", "", place);
    assert_eq!(
        case_lines(&slog),
        case_lines(&flog),
        "stratafs {opts} ({place:?}) vs fuse-overlayfs"
    );
    assert!(
        !slog.contains("error") && slog.lines().filter(|l| l.ends_with("close ok")).count() == 14,
        "every call completes:\n{slog}"
    );
    assert_eq!(
        swork, "",
        "workdir/work while mounted, after the last close"
    );
    let left: Vec<_> = fs::read_dir(sd.join("w/work")).unwrap().collect();
    assert!(left.is_empty(), "workdir/work after unmount: {left:?}");
    assert_eq!(lower_state(&sd.join("l")), lower_before, "the lower layer");
}

#[test]
fn nameless_copy_up_as_root_with_passthrough() {
    check("nameless-root", "", Place::Root);
}

#[test]
fn nameless_copy_up_in_a_user_namespace_with_writeback_cache() {
    check("nameless-userns", "", Place::UserNs);
}

#[test]
fn nameless_copy_up_in_a_user_namespace_without_writeback_cache() {
    check("nameless-userns-wb0", "writeback=0", Place::UserNs);
}

/// The kernel overlayfs: the plain close and the names left are the same; the calls that
/// need a copy-up fail there with EEXIST (recorded, not required).
#[test]
fn nameless_close_and_names_left_as_the_kernel_overlayfs() {
    let s = Scratch::new("nameless-kernel");
    let (sd, kd) = (s.path("s"), s.path("k"));
    layers(&sd);
    layers(&kd);
    let (slog, _) = run(&sd, bin(), "", Place::Root);
    let (klog, _) = run(&kd, "kernel", "", Place::Root);
    eprintln!("kernel overlayfs:\n{klog}");
    let pick = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(" close: ") || l.starts_with("left "))
            .map(String::from)
            .collect()
    };
    assert_eq!(pick(&slog), pick(&klog));
    assert_eq!(pick(&slog).len(), 2 + CASES.len(), "{slog}");
}

/// On the core API: the kernel's writeback flush at the close of an unlinked file (its
/// unchanged mtime) copies nothing; a real change copies to an anonymous file that the
/// open handle then reads, with nothing in workdir/work, the upper or the lower.
#[test]
fn a_change_that_changes_nothing_makes_no_copy() {
    use std::ffi::OsStr;
    use stratafs::attr::SetAttr;
    use stratafs::options::{parse_args, Command as Cmd};
    use stratafs::sys::ops::SetTime;
    let s = Scratch::new("nameless-core");
    let (l, u, w) = (s.dir("l"), s.dir("u"), s.dir("w"));
    let data = vec![7u8; 1 << 20];
    fs::write(l.join("f"), &data).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    let mnt = s.dir("m");
    let mut cfg = match parse_args([
        "stratafs".as_ref(),
        "-o".as_ref(),
        OsStr::new(&opts),
        mnt.as_os_str(),
    ]) {
        Ok(Cmd::Mount(c)) => *c,
        other => panic!("parse: {other:?}"),
    };
    cfg.validate().unwrap();
    let ufs = stratafs::UnionFs::new(&cfg).unwrap();
    let a = ufs.lookup(1, OsStr::new("f")).unwrap();
    let fh = ufs.open(a.node, libc::O_RDONLY).unwrap();
    ufs.remove(1, OsStr::new("f"), false).unwrap();
    let in_upper = || ufs.inodes.get(a.node).unwrap().loc().in_upper();
    let cur = ufs.getattr(a.node, None).unwrap();
    let t = cur.mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    let flush = SetAttr {
        mtime: Some(SetTime::At(t.as_secs() as i64, t.subsec_nanos() as i64)),
        ..Default::default()
    };
    assert_eq!(ufs.setattr(a.node, flush).unwrap(), cur);
    assert!(!in_upper(), "a no-op SETATTR copied the nameless file up");
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(ufs.setattr(a.node, chmod).unwrap().perm, 0o600);
    assert!(in_upper(), "chmod of the nameless file made no copy");
    assert_eq!(ufs.read(fh, 0, 16).unwrap(), &data[..16], "the open handle");
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(&u).unwrap().count(),
        1,
        "the upper holds the whiteout only"
    );
    assert_eq!(fs::metadata(l.join("f")).unwrap().mode() & 0o7777, 0o644);
    ufs.release(fh);
    ufs.forget(a.node, 1);
}

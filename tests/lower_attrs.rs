//! Attributes of lower-only entries are read from the branch once when the branches are
//! assumed not to change (no `timeout=`): a later getattr needs no call to the branch,
//! which on a GlusterFS lower is a network round trip (the kernel asks again for every
//! directory a walk lists). With `timeout=` every getattr goes to the branch (udba.rs), and
//! a copy-up makes the upper's attributes the ones shown.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use stratafs::attr::SetAttr;
use stratafs::fs::UnionFs;
use stratafs::options::{parse_args, Command};

const ROOT: u64 = 1;

fn union(dir: &std::path::Path, extra: &str) -> UnionFs {
    for d in ["l", "u", "w", "m"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        dir.join("l").display(),
        dir.join("u").display(),
        dir.join("w").display()
    );
    let mut cfg = match parse_args([
        "stratafs".as_ref(),
        "-o".as_ref(),
        OsStr::new(&opts),
        dir.join("m").as_os_str(),
    ]) {
        Ok(Command::Mount(c)) => *c,
        other => panic!("parse: {other:?}"),
    };
    cfg.validate().expect("valid config");
    UnionFs::new(&cfg).expect("UnionFs::new")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sfs-lower-attrs-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("l/d")).unwrap();
    fs::set_permissions(d.join("l/d"), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn lower_attributes_kept_without_timeout() {
    let d = scratch("kept");
    let u = union(&d, "");
    let a = u.lookup(ROOT, OsStr::new("d")).unwrap();
    assert_eq!(u.getattr(a.node, None).unwrap().perm, 0o755);
    // Changed behind the mount: not seen, the attributes were kept (no branch call).
    fs::set_permissions(d.join("l/d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(u.getattr(a.node, None).unwrap().perm, 0o755);
    drop(u);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn lower_attributes_read_each_time_with_timeout() {
    let d = scratch("timeout");
    let u = union(&d, ",timeout=1");
    let a = u.lookup(ROOT, OsStr::new("d")).unwrap();
    assert_eq!(u.getattr(a.node, None).unwrap().perm, 0o755);
    fs::set_permissions(d.join("l/d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(u.getattr(a.node, None).unwrap().perm, 0o700);
    drop(u);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn copied_up_entry_shows_the_upper() {
    let d = scratch("copyup");
    let u = union(&d, "");
    let a = u.lookup(ROOT, OsStr::new("d")).unwrap();
    assert_eq!(u.getattr(a.node, None).unwrap().perm, 0o755);
    // A chmod through the mount copies it up: the upper's attributes show from then on,
    // also a change made to the upper directly.
    let node = a.node;
    let set = SetAttr {
        mode: Some(0o750),
        ..Default::default()
    };
    assert_eq!(u.setattr(node, set).unwrap().perm, 0o750);
    assert_eq!(u.getattr(node, None).unwrap().perm, 0o750);
    fs::set_permissions(d.join("u/d"), fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(u.getattr(node, None).unwrap().perm, 0o711);
    drop(u);
    fs::remove_dir_all(&d).unwrap();
}

/// A lower-only entry's xattr names are read once (with the lookup's listxattr, or the
/// first getxattr's): a getxattr of a name it does not have is answered ENODATA without a
/// call to the branch (`ls -l` asks security.selinux, and at first
/// system.posix_acl_access, of every entry). So a name added behind the mount is not seen
/// (the branches are assumed not to change); a value of a name the entry has is still read
/// from the branch. With `timeout=` each getxattr goes to the branch; after a copy-up the
/// upper's xattrs are asked, also one set on the upper directly. (On main the name added
/// behind the mount showed: every getxattr was a call to the branch.)
#[test]
fn lower_xattr_names_kept_without_timeout() {
    let setfattr = |p: &std::path::Path, n: &str, v: &str| {
        let st = std::process::Command::new("setfattr")
            .args(["-n", n, "-v", v])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    for (extra, kept) in [("", true), (",timeout=1", false)] {
        let d = scratch(if kept { "xkept" } else { "xtimeout" });
        fs::write(d.join("l/d/f"), "lower").unwrap();
        setfattr(&d.join("l/d/f"), "user.had", "1");
        let u = union(&d, extra);
        let dir = u.lookup(ROOT, OsStr::new("d")).unwrap().node;
        for (node, path) in [
            (
                u.lookup(dir, OsStr::new("f")).unwrap().node,
                d.join("l/d/f"),
            ),
            (dir, d.join("l/d")),
        ] {
            let get = |n: &str| u.getxattr(node, OsStr::new(n)).map_err(|e| e.errno);
            assert_eq!(get("user.new"), Err(libc::ENODATA));
            assert_eq!(get("security.selinux"), Err(libc::ENODATA));
            setfattr(&path, "user.new", "behind");
            setfattr(&path, "user.had", "2");
            let want_new = if kept {
                Err(libc::ENODATA)
            } else {
                Ok(b"behind".to_vec())
            };
            assert_eq!(get("user.new"), want_new, "{extra} {path:?}");
            if path.ends_with("f") {
                assert_eq!(get("user.had"), Ok(b"2".to_vec()), "{extra}");
            }
        }
        // Copied up (a chmod through the mount): the upper is asked.
        let f = u.lookup(dir, OsStr::new("f")).unwrap().node;
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        u.setattr(f, set).unwrap();
        setfattr(&d.join("u/d/f"), "user.upper", "u");
        assert_eq!(
            u.getxattr(f, OsStr::new("user.upper")).map_err(|e| e.errno),
            Ok(b"u".to_vec())
        );
        drop(u);
        fs::remove_dir_all(&d).unwrap();
    }
}

//! The write-path scenario shared by the differential write tests: the layers it starts
//! from, and 40+ scripted operations and edge cases. Each operation acts on a mounted merged
//! view given as a root path, so the same script runs on a kernel overlayfs mount and on a
//! stratafs mount of identical copies of the layers. Failures of an operation are recorded,
//! not fatal: both mounts must fail the same way.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use stratafs::sys::{self, ops, xattr};

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in test names")
}

/// Builds two lower layers (`l1` over `l2`) in `dir` with something for every operation to
/// act on: files with data, holes, xattrs, odd modes and owners; merged and lower-only
/// directories; symlinks; hard links; a fifo.
pub fn make_lowers(dir: &Path) {
    let l1 = dir.join("l1");
    let l2 = dir.join("l2");
    for d in [
        "dir/sub",
        "mv/deep/er",
        "rmme/x",
        "opq/in",
        "tree/a/b",
        "exdir",
        "rdir",
        "keepdir",
        "mdir/m1",
        "sgid",
    ] {
        fs::create_dir_all(l2.join(d)).unwrap();
    }
    for d in ["dir", "mdir/m2", "l1only"] {
        fs::create_dir_all(l1.join(d)).unwrap();
    }
    let w = |p: &Path, data: &[u8]| fs::write(p, data).unwrap();
    w(&l2.join("file"), b"base file\n");
    w(&l2.join("dir/a"), b"from l2\n");
    w(&l2.join("dir/sub/s"), b"sub\n");
    w(&l2.join("mv/deep/d"), b"deep\n");
    w(&l2.join("mv/deep/er/e"), b"deeper\n");
    w(&l2.join("rmme/x/y"), b"gone soon\n");
    w(&l2.join("opq/in/old"), b"old\n");
    w(&l2.join("tree/a/b/leaf"), b"leaf\n");
    w(&l2.join("exdir/e"), b"e\n");
    w(&l2.join("rdir/r"), b"r\n");
    w(&l2.join("keepdir/k"), b"k\n");
    w(&l2.join("mdir/m1/x"), b"x\n");
    w(&l2.join("big"), &vec![7u8; 3 << 20]);
    w(&l2.join("trunc"), b"0123456789abcdef");
    w(&l2.join("appendme"), b"first line\n");
    w(&l2.join("overwrite"), b"old content that is longer\n");
    w(&l2.join("renamesrc"), b"renamed file\n");
    w(&l2.join("renamedst"), b"will be replaced\n");
    w(&l2.join("exch"), b"exchange me\n");
    w(&l2.join("xattrs"), b"x\n");
    w(&l2.join("modes"), b"m\n");
    w(&l2.join("owned"), b"o\n");
    w(&l2.join("times"), b"t\n");
    w(&l2.join("linkme"), b"link target\n");
    w(&l1.join("dir/b"), b"from l1\n");
    w(&l1.join("l1file"), b"top layer\n");
    w(&l1.join("mdir/m2/y"), b"y\n");
    // A sparse file: data, a 64 MiB hole, data.
    let mut f = fs::File::create(l2.join("sparse")).unwrap();
    f.write_all(b"head").unwrap();
    f.set_len(64 << 20).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l2.join("sparse"))
        .unwrap();
    sys::pwrite(f.as_fd(), b"tail", (64 << 20) - 4).unwrap();
    symlink("dir/a", l2.join("rel-link")).unwrap();
    symlink("/nonexistent/abs", l2.join("abs-link")).unwrap();
    fs::hard_link(l2.join("file"), l2.join("file-hardlink")).unwrap();
    let root = sys::open_host_dir(&l2).unwrap();
    ops::mknodat(root.as_fd(), &c("lowerfifo"), libc::S_IFIFO | 0o644, 0).unwrap();
    xattr::set(root.as_fd(), &c("xattrs"), &c("user.keep"), b"1", 0).unwrap();
    xattr::set(root.as_fd(), &c("xattrs"), &c("user.drop"), b"2", 0).unwrap();
    xattr::set(root.as_fd(), &c("xattrs"), &c("trusted.t"), b"3", 0).unwrap();
    fs::set_permissions(l2.join("modes"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::set_permissions(l2.join("sgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    ops::fchownat(root.as_fd(), &c("owned"), 1000, 1000).unwrap();
    ops::fchownat(root.as_fd(), &c("sgid"), 0, 4242).unwrap();
    // Fixed times everywhere, so copy-up that keeps them is visible as such.
    for l in [&l1, &l2] {
        set_times_tree(l, 1_500_000_000);
    }
}

fn set_times_tree(p: &Path, t: i64) {
    let dir = sys::open_host_dir(p.parent().unwrap()).unwrap();
    let name = c(p.file_name().unwrap().to_str().unwrap());
    let md = fs::symlink_metadata(p).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            set_times_tree(&e.unwrap().path(), t);
        }
    }
    ops::utimensat(
        dir.as_fd(),
        &name,
        ops::SetTime::At(t, 0),
        ops::SetTime::At(t, 0),
    )
    .unwrap();
}

/// Runs every operation on the merged view at `m`; returns one line per operation with its
/// outcome (Ok or the errno), to be compared between the two mounts.
pub fn run(m: &Path) -> Vec<String> {
    let root = sys::open_host_dir(m).expect("mount root");
    let r = root.as_fd();
    let mut log = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> std::io::Result<()>| {
        let out = match f() {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
        };
        log.push(format!("{name}: {out}"));
    };
    let p = |s: &str| m.join(s);
    step("overwrite a lower file", &mut || {
        fs::write(p("overwrite"), b"new\n")
    });
    step("append to a lower file", &mut || {
        fs::OpenOptions::new()
            .append(true)
            .open(p("appendme"))?
            .write_all(b"second line\n")
    });
    step("truncate a lower file", &mut || {
        fs::OpenOptions::new()
            .write(true)
            .open(p("trunc"))?
            .set_len(5)
    });
    step("truncate a lower file to 0", &mut || {
        fs::File::create(p("l1file")).map(|_| ())
    });
    step("chmod a lower file", &mut || {
        fs::set_permissions(p("modes"), fs::Permissions::from_mode(0o640))
    });
    step("chown a lower file", &mut || {
        ops::fchownat(r, &c("owned"), 2000, 3000)
    });
    step("touch a lower file", &mut || {
        ops::utimensat(
            r,
            &c("times"),
            ops::SetTime::At(1_000_000_000, 5),
            ops::SetTime::At(1_100_000_000, 7),
        )
    });
    step("delete a lower file", &mut || fs::remove_file(p("file")));
    step("recreate it", &mut || fs::write(p("file"), b"recreated\n"));
    step("delete a file merged from l1", &mut || {
        fs::remove_file(p("dir/b"))
    });
    step("delete a file from l2 under merged dir", &mut || {
        fs::remove_file(p("dir/a"))
    });
    step("create in a merged dir", &mut || {
        fs::write(p("dir/new"), b"new file\n")
    });
    step("rm -rf a lower tree", &mut || fs::remove_dir_all(p("rmme")));
    step("mkdir where the tree was", &mut || {
        fs::create_dir(p("rmme"))
    });
    step("file in the new opaque dir", &mut || {
        fs::write(p("rmme/again"), b"again\n")
    });
    step("rmdir then mkdir (opaque)", &mut || {
        fs::remove_dir_all(p("opq/in"))?;
        fs::create_dir(p("opq/in"))
    });
    step("rmdir of a non-empty merged dir", &mut || {
        fs::remove_dir(p("mdir"))
    });
    step("mv a merged directory", &mut || {
        fs::rename(p("mv"), p("moved"))
    });
    step("write inside the moved dir", &mut || {
        fs::write(p("moved/deep/d"), b"changed\n")
    });
    step("mv a moved dir again, deeper", &mut || {
        fs::rename(p("moved/deep"), p("tree/a/deep2"))
    });
    step("mv a lower dir into another", &mut || {
        fs::rename(p("rdir"), p("keepdir/rdir"))
    });
    step("mv an upper-only dir into a merged dir", &mut || {
        fs::create_dir(p("newdir"))?;
        fs::write(p("newdir/n"), b"n\n")?;
        fs::rename(p("newdir"), p("dir/newdir"))
    });
    step("hard link to a lower file", &mut || {
        fs::hard_link(p("linkme"), p("linked"))
    });
    step("write through the link", &mut || {
        fs::OpenOptions::new()
            .append(true)
            .open(p("linked"))?
            .write_all(b"via link\n")
    });
    step("symlink over a whiteout", &mut || {
        fs::remove_file(p("renamedst"))?;
        symlink("somewhere", p("renamedst"))
    });
    step("replace a symlink", &mut || {
        fs::remove_file(p("rel-link"))?;
        symlink("dir/sub/s", p("rel-link"))
    });
    step("set an xattr on a lower file", &mut || {
        xattr::set(r, &c("xattrs"), &c("user.new"), b"v", 0)
    });
    step("remove an xattr of a lower file", &mut || {
        xattr::remove(r, &c("xattrs"), &c("user.drop"))
    });
    step(
        "set an xattr in the overlay namespace (escaped)",
        &mut || xattr::set(r, &c("xattrs"), &c("trusted.overlay.opaque"), b"y", 0),
    );
    step("mkfifo", &mut || {
        ops::mknodat(r, &c("fifo"), libc::S_IFIFO | 0o600, 0)
    });
    step("mknod a 0/0 char device (refused)", &mut || {
        ops::mknodat(r, &c("wh"), libc::S_IFCHR | 0o600, 0)
    });
    step("rename over an existing lower file", &mut || {
        fs::rename(p("renamesrc"), p("overwrite"))
    });
    step("RENAME_NOREPLACE onto a lower file", &mut || {
        ops::renameat2(r, &c("appendme"), r, &c("trunc"), libc::RENAME_NOREPLACE)
    });
    step("RENAME_EXCHANGE lower and upper", &mut || {
        fs::write(p("upperfile"), b"upper\n")?;
        ops::renameat2(r, &c("exch"), r, &c("upperfile"), libc::RENAME_EXCHANGE)
    });
    step("RENAME_EXCHANGE two lower dirs", &mut || {
        ops::renameat2(r, &c("exdir"), r, &c("keepdir"), libc::RENAME_EXCHANGE)
    });
    step("rename a dir over an empty merged dir", &mut || {
        fs::create_dir(p("emptyme"))?;
        fs::remove_file(p("mdir/m1/x"))?;
        fs::rename(p("emptyme"), p("mdir/m1"))
    });
    step("unlink a lower fifo", &mut || {
        fs::remove_file(p("lowerfifo"))
    });
    step("write in the middle of a sparse file", &mut || {
        let f = fs::OpenOptions::new().write(true).open(p("sparse"))?;
        sys::pwrite(f.as_fd(), b"middle", 32 << 20).map(|_| ())
    });
    step("1-byte write to a big lower file", &mut || {
        let f = fs::OpenOptions::new().write(true).open(p("big"))?;
        sys::pwrite(f.as_fd(), b"!", 1 << 20).map(|_| ())
    });
    step("create with O_EXCL over a lower file", &mut || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("linkme"))
            .map(|_| ())
    });
    step("create in a setgid lower dir", &mut || {
        fs::create_dir(p("sgid/child"))?;
        fs::write(p("sgid/f"), b"g\n")
    });
    step("create with mode 0600", &mut || {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p("private"))
            .map(|_| ())
    });
    step("deep mkdir -p", &mut || {
        fs::create_dir_all(p("n1/n2/n3/n4"))
    });
    step("rmdir an empty lower dir", &mut || {
        fs::remove_dir(p("l1only"))
    });
    step("unlink one of two lower hard links", &mut || {
        fs::remove_file(p("file-hardlink"))
    });
    step("rename a file into a moved dir", &mut || {
        fs::rename(p("l1file"), p("tree/a/deep2/l1file"))
    });
    step("chmod a merged dir", &mut || {
        fs::set_permissions(p("dir"), fs::Permissions::from_mode(0o700))
    });
    log
}

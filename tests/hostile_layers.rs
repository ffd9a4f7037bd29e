//! A fixture of nasty lower layers, each case in its own directory `cNN-*`: names with
//! newlines, control and non-UTF-8 bytes, 255-byte names, a tree deeper than PATH_MAX,
//! fifos/sockets/devices, whiteouts for names that exist nowhere, `.wh.` files with odd
//! names (`.wh.`, `.wh..wh.`, `.wh.` + 250 bytes, `.wh..wh..opq` as a directory and over a
//! lower file), a 1 TiB sparse file, mode-000 files and directories, directories without
//! x permission, symlink loops and chains, links into a canary directory.
//!
//! The same layers are mounted with stratafs and with the kernel overlayfs (which gets the
//! aufs `.wh.` markers in its own format: 0/0 devices and `overlay.opaque`). For every
//! case: the merged trees are equal before and after the same operations through both
//! (copy-up, rename, unlink, create over dangling whiteouts, opening loops), every
//! operation has the same outcome, an unprivileged `find`/`cat` sees the same, the sparse
//! file stays sparse after copy-up (as with the kernel), and nothing in the canary
//! directory (a strictatime tmpfs outside every branch) is read, written or created.
//! Symlinks out of the branch themselves are tests/hostile_symlinks.rs's.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kind_of, sh_as, Kernel, Scratch, Stack, Strata};
use stratafs::sys::{self, ops, xattr};

const CASES: &[&str] = &[
    "c01-newline",
    "c02-binary-names",
    "c03-name-255",
    "c04-deeper-than-path-max",
    "c05-special-files",
    "c06-dangling-whiteouts",
    "c07-odd-wh-names",
    "c08-sparse-1tib",
    "c09-mode-000",
    "c10-dir-without-x",
    "c11-symlink-loops",
    "c12-links-to-canary",
];

fn c(b: &[u8]) -> CString {
    CString::new(b).unwrap()
}

fn bin_name_a() -> Vec<u8> {
    (1u8..=127).filter(|&b| b != b'/').collect()
}

fn bin_name_b() -> Vec<u8> {
    (128u8..=255).collect()
}

fn long(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.resize(len, b'x');
    v
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// The base layer: every hostile entry that needs no whiteout semantics.
fn base_layer(l: &Path, canary: &Path) {
    let j = |rel: &[u8]| l.join(OsStr::from_bytes(rel));
    write(&j(b"c01-newline/a\nb"), b"newline\n");
    write(&j(b"c01-newline/d\ne/\nf\n"), b"more\n");
    write(
        &j(&[b"c02-binary-names/".as_slice(), &bin_name_a()].concat()),
        b"a\n",
    );
    write(
        &j(&[b"c02-binary-names/".as_slice(), &bin_name_b()].concat()),
        b"b\n",
    );
    write(&j(b"c02-binary-names/ "), b"space\n");
    write(&j(b"c02-binary-names/-rf"), b"dash\n");
    let n255 = long(b"N", 255);
    write(&j(&[b"c03-name-255/".as_slice(), &n255].concat()), b"255\n");
    let d255 = [b"c03-name-255/".as_slice(), &long(b"D", 255)].concat();
    write(&j(&[d255.as_slice(), b"/", &n255].concat()), b"255/255\n");
    // Deeper than PATH_MAX: 20 directories of 250 bytes, built with *at calls.
    fs::create_dir_all(j(b"c04-deeper-than-path-max")).unwrap();
    let mut fd = sys::open_host_dir(&j(b"c04-deeper-than-path-max")).unwrap();
    for i in 0..20u8 {
        let name = c(&long(&[b'a' + i], 250));
        ops::mkdirat(fd.as_fd(), &name, 0o755).unwrap();
        fd = sys::openat(fd.as_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
    }
    let f = sys::openat(fd.as_fd(), c"bottom", libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap();
    fs::File::from(f).write_all(b"deep\n").unwrap();
    ops::symlinkat(&c(canary.as_os_str().as_bytes()), fd.as_fd(), c"to-canary").unwrap();
    // Special files.
    let sp = j(b"c05-special-files");
    fs::create_dir_all(&sp).unwrap();
    let spd = sys::open_host_dir(&sp).unwrap();
    ops::mknodat(spd.as_fd(), c"fifo", libc::S_IFIFO | 0o644, 0).unwrap();
    ops::mknodat(
        spd.as_fd(),
        c"chr",
        libc::S_IFCHR | 0o600,
        libc::makedev(1, 3),
    )
    .unwrap();
    ops::mknodat(
        spd.as_fd(),
        c"blk",
        libc::S_IFBLK | 0o600,
        libc::makedev(7, 200),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(sp.join("sock")).unwrap());
    // A kernel whiteout at the bottom, for a name nothing has.
    let wd = j(b"c06-dangling-whiteouts");
    fs::create_dir_all(&wd).unwrap();
    let wdf = sys::open_host_dir(&wd).unwrap();
    ops::mknodat(wdf.as_fd(), c"ghost", libc::S_IFCHR, 0).unwrap();
    write(&wd.join("real"), b"real\n");
    // Hidden by an opaque marker directory above; a file where the layer above has a dir.
    write(&j(b"c07-odd-wh-names/below"), b"below\n");
    write(&j(b"c07-odd-wh-names/nd"), b"a file below a dir\n");
    write(&j(b"c07-odd-wh-names/kept"), b"kept\n");
    // 1 TiB apparent, two small extents.
    let sparse = j(b"c08-sparse-1tib/sparse");
    fs::create_dir_all(sparse.parent().unwrap()).unwrap();
    {
        let f = fs::File::create(&sparse).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 1 << 39).unwrap();
        f.set_len(1 << 40).unwrap();
    }
    write(&j(b"c09-mode-000/m000"), b"unreadable\n");
    write(&j(b"c09-mode-000/d000/inner"), b"inner\n");
    fs::set_permissions(j(b"c09-mode-000/m000"), fs::Permissions::from_mode(0o0)).unwrap();
    fs::set_permissions(j(b"c09-mode-000/d000"), fs::Permissions::from_mode(0o0)).unwrap();
    write(&j(b"c10-dir-without-x/nox/f"), b"f\n");
    write(&j(b"c10-dir-without-x/nox/g"), b"g\n");
    write(&j(b"c10-dir-without-x/rw/f"), b"f\n");
    fs::set_permissions(
        j(b"c10-dir-without-x/nox"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::set_permissions(
        j(b"c10-dir-without-x/rw"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let lp = j(b"c11-symlink-loops");
    fs::create_dir_all(&lp).unwrap();
    symlink("self", lp.join("self")).unwrap();
    for i in 0..45 {
        symlink(format!("l{}", (i + 1) % 45), lp.join(format!("l{i}"))).unwrap();
    }
    symlink("../c11-symlink-loops", lp.join("up")).unwrap();
    let cl = j(b"c12-links-to-canary");
    fs::create_dir_all(cl.join("sub")).unwrap();
    symlink(canary.join("file"), cl.join("abs")).unwrap();
    symlink(canary.join("dir"), cl.join("absdir")).unwrap();
    symlink(canary.join("dir"), cl.join("sub/absdir")).unwrap();
    fs::set_permissions(cl.join("sub"), fs::Permissions::from_mode(0o0)).unwrap();
}

/// The top layer: whiteouts and opaque markers, in aufs form (for stratafs) or in the
/// kernel's own form (for the kernel overlayfs).
fn top_layer(l: &Path, kernel: bool) {
    let wd = l.join("c06-dangling-whiteouts");
    let od = l.join("c07-odd-wh-names");
    fs::create_dir_all(&wd).unwrap();
    fs::create_dir_all(od.join("nd")).unwrap();
    fs::create_dir_all(od.join("opq")).unwrap();
    write(&od.join("nd/inside"), b"inside\n");
    let long_target = long(b"T", 250);
    let wdf = sys::open_host_dir(&wd).unwrap();
    let odf = sys::open_host_dir(&od).unwrap();
    if kernel {
        ops::mknodat(wdf.as_fd(), c"ghost2", libc::S_IFCHR, 0).unwrap();
        ops::mknodat(odf.as_fd(), c".wh.", libc::S_IFCHR, 0).unwrap();
        ops::mknodat(odf.as_fd(), &c(&long_target), libc::S_IFCHR, 0).unwrap();
        for d in [od.join("nd"), od.join("opq")] {
            let f = sys::open_host_dir(&d).unwrap();
            xattr::set(f.as_fd(), c".", c"trusted.overlay.opaque", b"y", 0).unwrap();
        }
    } else {
        write(&wd.join(".wh.ghost2"), b"");
        write(&od.join(".wh."), b"");
        write(&od.join(".wh..wh."), b"");
        write(
            &od.join(OsStr::from_bytes(
                &[b".wh.".as_slice(), &long_target].concat(),
            )),
            b"",
        );
        // Opaque markers of odd kinds: a directory, and one in a dir over a lower file.
        fs::create_dir_all(od.join("opq/.wh..wh..opq")).unwrap();
        write(&od.join("nd/.wh..wh..opq"), b"");
    }
    write(&od.join("opq/top"), b"top\n");
}

/// What the walker records of an entry (times left out after operations: the two mounts
/// ran them at different instants).
fn describe(md: &fs::Metadata, extra: &str, times: bool) -> String {
    let ft = md.file_type();
    let kind = kind_of(ft);
    let mut s = format!(
        "{kind} {:o} {}:{} rdev={:x}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid(),
        md.rdev()
    );
    if !ft.is_dir() {
        s.push_str(&format!(" size={}", md.size()));
    }
    if times && !ft.is_dir() {
        s.push_str(&format!(" mtime={}.{}", md.mtime(), md.mtime_nsec()));
    }
    s.push_str(extra);
    s
}

/// Walks `root` by file descriptors (so depth is unlimited) without following links.
fn walk(root: &Path, times: bool) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let fd = sys::open_host_dir(root).unwrap();
    walk_at(fd, Vec::new(), times, &mut out);
    out
}

fn walk_at(dir: OwnedFd, rel: Vec<u8>, times: bool, out: &mut BTreeMap<Vec<u8>, String>) {
    let here = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let names: Vec<Vec<u8>> = match fs::read_dir(&here) {
        Ok(rd) => {
            let mut v: Vec<Vec<u8>> = rd
                .flatten()
                .map(|e| e.file_name().as_bytes().to_vec())
                .collect();
            v.sort();
            v
        }
        Err(e) => {
            out.insert(
                [rel.as_slice(), b"/<readdir>"].concat(),
                format!("error {e}"),
            );
            return;
        }
    };
    for n in names {
        let key = if rel.is_empty() {
            n.clone()
        } else {
            [rel.as_slice(), b"/", &n].concat()
        };
        let p = here.join(OsStr::from_bytes(&n));
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) => {
                out.insert(key, format!("lstat error {e}"));
                continue;
            }
        };
        let mut extra = String::new();
        if md.file_type().is_symlink() {
            extra = format!(" -> {:?}", fs::read_link(&p).unwrap_or_default());
        } else if md.is_file() {
            if md.size() > 64 << 20 {
                let small = md.blocks() * 512 < 64 << 20;
                extra = format!(" sparse-allocation-small={small}");
                let mut head = [0u8; 4];
                if let Ok(mut f) = fs::File::open(&p) {
                    let _ = f.read_exact(&mut head);
                }
                extra.push_str(&format!(" head={head:?}"));
            } else {
                extra = match fs::read(&p) {
                    Ok(d) => format!(" content={:?}", String::from_utf8_lossy(&d)),
                    Err(e) => format!(" read error {e}"),
                };
            }
        }
        out.insert(key.clone(), describe(&md, &extra, times));
        if md.is_dir() {
            match sys::openat(dir.as_fd(), &c(&n), libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(sub) => walk_at(sub, key, times, out),
                Err(e) => {
                    out.insert([key.as_slice(), b"/<open>"].concat(), format!("error {e}"));
                }
            }
        }
    }
}

/// Shell commands run as root in each mount (each names the case it belongs to).
fn operations() -> Vec<(&'static str, String)> {
    vec![
        ("c01-newline", "mv 'c01-newline/a\nb' 'c01-newline/a\nc'".into()),
        ("c01-newline", "echo x >> 'c01-newline/d\ne/\nf\n'".into()),
        ("c02-binary-names", "rm -- c02-binary-names/-rf".into()),
        ("c02-binary-names", "for f in c02-binary-names/*; do touch -- \"$f\"; done".into()),
        ("c03-name-255", format!("mv c03-name-255/{} c03-name-255/short", "N".repeat(255))),
        ("c03-name-255", format!("touch c03-name-255/{}/{}", "D".repeat(255), "M".repeat(255))),
        ("c04-deeper-than-path-max", "find c04-deeper-than-path-max -name bottom -exec chmod 600 {} +".into()),
        ("c04-deeper-than-path-max", "rm -rf c04-deeper-than-path-max/a*".into()),
        ("c05-special-files", "chown -h 1:1 c05-special-files/fifo c05-special-files/sock c05-special-files/chr c05-special-files/blk".into()),
        ("c05-special-files", "mv c05-special-files/fifo c05-special-files/fifo2".into()),
        ("c06-dangling-whiteouts", "echo new > c06-dangling-whiteouts/ghost".into()),
        ("c06-dangling-whiteouts", "mkdir c06-dangling-whiteouts/ghost2".into()),
        ("c06-dangling-whiteouts", "rm c06-dangling-whiteouts/real".into()),
        ("c07-odd-wh-names", "cat c07-odd-wh-names/below".into()),
        ("c07-odd-wh-names", "touch c07-odd-wh-names/opq/new c07-odd-wh-names/kept".into()),
        ("c07-odd-wh-names", "rm -r c07-odd-wh-names/nd".into()),
        ("c08-sparse-1tib", "chmod 600 c08-sparse-1tib/sparse".into()),
        ("c09-mode-000", "touch c09-mode-000/m000 c09-mode-000/d000/inner".into()),
        ("c09-mode-000", "cat c09-mode-000/m000".into()),
        ("c10-dir-without-x", "touch c10-dir-without-x/nox/f && mv c10-dir-without-x/rw/f c10-dir-without-x/rw/g".into()),
        ("c11-symlink-loops", "cat c11-symlink-loops/self".into()),
        ("c11-symlink-loops", "cat c11-symlink-loops/l0".into()),
        ("c11-symlink-loops", "ls c11-symlink-loops/up/up/up/up/up/ >/dev/null".into()),
        ("c11-symlink-loops", "chown -h 2:2 c11-symlink-loops/self && rm c11-symlink-loops/l7".into()),
        ("c12-links-to-canary", "chown -h 3:3 c12-links-to-canary/abs c12-links-to-canary/sub/absdir && rm c12-links-to-canary/absdir".into()),
    ]
}

fn run(cmd: &str, dir: &Path, nobody: bool) -> String {
    let out = sh_as(nobody, cmd, dir).output().expect("sh");
    format!(
        "{} {}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn canary_state(canary: &Path) -> Vec<(String, i64, i64, i64, i64, i64)> {
    let mut v = Vec::new();
    for p in [
        canary.to_path_buf(),
        canary.join("file"),
        canary.join("dir"),
        canary.join("dir/inner"),
    ] {
        let md = fs::symlink_metadata(&p).unwrap();
        v.push((
            p.display().to_string(),
            md.atime(),
            md.atime_nsec(),
            md.mtime(),
            md.ctime(),
            md.ctime_nsec(),
        ));
    }
    v
}

#[test]
fn hostile_layers_show_what_the_kernel_shows() {
    let s = Scratch::new("hostile-layers");
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let canary = s.dir("canary");
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "strictatime,size=1m,mode=0755",
            "sfs-canary",
        ])
        .arg(&canary)
        .status()
        .unwrap();
    assert!(st.success(), "mount the canary tmpfs");
    let _canary_guard = Tmpfs(canary.clone());
    write(&canary.join("file"), b"canary\n");
    write(&canary.join("dir/inner"), b"inner canary\n");
    // Times in the past, so any access would move them.
    for p in ["file", "dir/inner", "dir", "."] {
        assert!(Command::new("touch")
            .args(["-h", "-d", "2 days ago"])
            .arg(canary.join(p))
            .status()
            .unwrap()
            .success());
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let canary_before = canary_state(&canary);

    let mut views = Vec::new();
    let mut outcomes = Vec::new();
    let mut nobody_views = Vec::new();
    let mut sparse_blocks = Vec::new();
    for which in ["stratafs", "kernel"] {
        let base = s.dir(&format!("{which}/base"));
        let top = s.dir(&format!("{which}/top"));
        base_layer(&base, &canary);
        top_layer(&top, which == "kernel");
        let (u, w, m) = (
            s.dir(&format!("{which}/u")),
            s.dir(&format!("{which}/w")),
            s.dir(&format!("{which}/m")),
        );
        let stack = Stack {
            lowers: vec![&top, &base],
            upper: Some((&u, &w)),
        };
        enum G {
            S(#[allow(dead_code)] Strata),
            K(#[allow(dead_code)] Kernel),
        }
        let g = if which == "stratafs" {
            G::S(Strata::mount(&stack, "allow_other", &m))
        } else {
            G::K(Kernel::mount(&stack, "", &m))
        };
        let before = walk(&m, false);
        let nobody = run(
            "find . -printf '%p %y %m\\n' 2>&1 | sort; find . -type f -size -1M -exec cat {} + 2>&1 | sort",
            &m,
            true,
        );
        let outs: Vec<String> = operations()
            .iter()
            .map(|(_, cmd)| run(cmd, &m, false))
            .collect();
        let after = walk(&m, false);
        drop(g);
        let upper_sparse =
            fs::metadata(u.join("c08-sparse-1tib/sparse")).map(|md| (md.size(), md.blocks()));
        sparse_blocks.push(upper_sparse.ok());
        views.push((before, after));
        outcomes.push(outs);
        nobody_views.push(nobody);
    }

    // Per case: equal views before and after, equal outcomes.
    let ops = operations();
    let mut passed = 0;
    let mut report = Vec::new();
    for case in CASES {
        let pre = case.as_bytes();
        let sub = |m: &BTreeMap<Vec<u8>, String>| -> BTreeMap<Vec<u8>, String> {
            m.iter()
                .filter(|(k, _)| k.starts_with(pre))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut problems = Vec::new();
        for (when, a, b) in [
            ("before", &views[0].0, &views[1].0),
            ("after", &views[0].1, &views[1].1),
        ] {
            let (a, b) = (sub(a), sub(b));
            if a.is_empty() {
                problems.push(format!("{when}: case missing from the view"));
            }
            for k in a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                if a.get(k) != b.get(k) {
                    problems.push(format!(
                        "{when} {:?}: stratafs {:?}, kernel {:?}",
                        String::from_utf8_lossy(k),
                        a.get(k),
                        b.get(k)
                    ));
                }
            }
        }
        for (i, (c, cmd)) in ops.iter().enumerate() {
            if c == case && outcomes[0][i] != outcomes[1][i] {
                problems.push(format!(
                    "`{cmd}`: stratafs {:?}, kernel {:?}",
                    outcomes[0][i], outcomes[1][i]
                ));
            }
        }
        if problems.is_empty() {
            passed += 1;
        } else {
            report.push(format!("{case}:\n  {}", problems.join("\n  ")));
        }
    }
    let canary_after = canary_state(&canary);
    println!("hostile cases: {passed}/{} passed; sparse copy-up (size, blocks) stratafs {:?}, kernel {:?}", CASES.len(), sparse_blocks[0], sparse_blocks[1]);
    assert!(
        report.is_empty(),
        "cases differing from the kernel overlayfs:\n{}",
        report.join("\n")
    );
    assert_eq!(
        nobody_views[0], nobody_views[1],
        "an unprivileged walk sees the same"
    );
    // Sparse: kept sparse by stratafs whenever the kernel keeps it sparse.
    let (Some((sz, sb)), Some((_, kb))) = (sparse_blocks[0], sparse_blocks[1]) else {
        panic!("sparse file not copied up: {sparse_blocks:?}");
    };
    assert_eq!(sz, 1 << 40);
    if kb * 512 < 64 << 20 {
        assert!(
            sb * 512 < 64 << 20,
            "copy-up allocated {} bytes of a sparse file",
            sb * 512
        );
    }
    assert_eq!(
        canary_before, canary_after,
        "the canary outside the branches was touched"
    );
    assert_eq!(fs::read(canary.join("file")).unwrap(), b"canary\n");
    let listing: Vec<_> = fs::read_dir(&canary)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        listing.len(),
        2,
        "nothing created in the canary dir: {listing:?}"
    );
}

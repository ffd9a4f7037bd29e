//! Hard links inside a lower layer, against the kernel overlayfs (index=off, its default):
//! each name of a lower non-directory with several links is an inode of its own until it
//! is copied up; a copy-up through one name breaks only that name away (the others keep
//! the lower file and its link count); a link made through the mount copies up and links
//! in the upper, after which those names are one inode.
//!
//! The same operations run on a kernel overlayfs mount and on a stratafs mount of
//! identical layers (each side its own copy): appends, chown/chmod, unlink and relink, a
//! link of a copied-up name, rename over a hard link (of the same lower file and of
//! another), unlink of one name while another is open, on regular files, a symlink and a
//! fifo, with and without the names looked up first (as `ls -l` would). Compared entry
//! by entry while mounted, after a remount, and with stratafs's upper mounted by the
//! kernel: type, mode, owner, size, link count, content, symlink target, and which names
//! share an st_ino (the hard-link groups); every operation must succeed or fail alike
//! and open files must read alike. Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{kind_of, Kernel, Scratch, Stack, Strata};

/// One entry as compared (no times: the runs happen at different moments; no numbers:
/// those differ between the two mounts, the groups of names sharing one are compared).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    nlink: Option<u64>,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    /// Every name in the tree with this entry's st_ino (non-directories).
    group: Vec<String>,
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, fs::Metadata)>) {
    let p = root.join(rel);
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let is_dir = md.is_dir();
    out.push((rel.display().to_string(), md));
    if is_dir {
        let mut names: Vec<_> = fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

/// The tree as compared; also looks up every name (as `ls -lR` does).
fn view(root: &Path) -> BTreeMap<String, Seen> {
    let mut all = Vec::new();
    walk(root, Path::new(""), &mut all);
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (rel, md) in &all {
        if !md.is_dir() {
            by_ino.entry(md.ino()).or_default().push(rel.clone());
        }
    }
    all.into_iter()
        .map(|(rel, md)| {
            let p = root.join(&rel);
            let ft = md.file_type();
            let s = Seen {
                kind: kind_of(ft),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: (!ft.is_dir()).then(|| md.size()),
                nlink: (!ft.is_dir()).then(|| md.nlink()),
                content: ft.is_file().then(|| fs::read(&p).unwrap()),
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                group: if ft.is_dir() {
                    Vec::new()
                } else {
                    by_ino[&md.ino()].clone()
                },
            };
            (rel, s)
        })
        .collect()
}

fn differences(a: &BTreeMap<String, Seen>, b: &BTreeMap<String, Seen>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, x) in a {
        match b.get(k) {
            None => out.push(format!("only in the kernel's: {k}")),
            Some(y) if x != y => out.push(format!("{k}:\n   kernel:  {x:?}\n   stratafs: {y:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("only in stratafs's: {k}"));
    }
    out
}

fn assert_views(what: &str, kernel: &BTreeMap<String, Seen>, strata: &BTreeMap<String, Seen>) {
    let d = differences(kernel, strata);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}

/// The lower layer: every set of names is one lower inode.
fn make_lower(l: &Path) {
    for d in ["d", "fresh", "e"] {
        fs::create_dir_all(l.join(d)).unwrap();
    }
    let sets: &[&[&str]] = &[
        &["hl1", "hl2", "d/hl3"],  // appended through one name
        &["p1", "p2"],             // chown, rm, ln back (looked up first)
        &["fresh/q1", "fresh/q2"], // the same, nothing looked up before
        &["c1", "c2"],             // link of a copied-up name
        &["r1", "r2"],             // renamed onto its own other name
        &["s1", "e/s2"],           // another file renamed over one name
        &["u1", "u2"],             // one name unlinked while the other is open
        &["o1", "o2"],             // one name unlinked while open itself, then written
        &["w1", "w2", "w3"],       // opened for writing through two names at once
    ];
    for set in sets {
        let first = l.join(set[0]);
        fs::write(&first, format!("lower {}\n", set[0])).unwrap();
        fs::set_permissions(&first, fs::Permissions::from_mode(0o644)).unwrap();
        for n in &set[1..] {
            fs::hard_link(&first, l.join(n)).unwrap();
        }
    }
    std::os::unix::fs::symlink("target-of-sym", l.join("sym1")).unwrap();
    fs::hard_link(l.join("sym1"), l.join("sym2")).unwrap();
    let fifo = std::ffi::CString::new(l.join("fifo1").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    fs::hard_link(l.join("fifo1"), l.join("fifo2")).unwrap();
    fs::write(l.join("plain"), "one link\n").unwrap();
}

/// Outcome of one step, for the log both sides must agree on.
fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn append(p: &Path, data: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(p)?
        .write_all(data.as_bytes())
}

fn read_fd(f: &mut fs::File) -> String {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    match f.read_to_string(&mut s) {
        Ok(_) => s,
        Err(e) => format!("read error {e}"),
    }
}

fn lchown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// The operations, on mount `m`; returns the log of outcomes, and views taken midway.
fn run(m: &Path) -> (Vec<String>, BTreeMap<String, Seen>) {
    let mut log = Vec::new();
    let mut step = |what: &str, r: String| log.push(format!("{what}: {r}"));
    // Nothing in fresh/ looked up before: chown one name, remove the other, link back.
    step("chown fresh/q1", outcome(lchown(&m.join("fresh/q1"), 1, 1)));
    step("rm fresh/q2", outcome(fs::remove_file(m.join("fresh/q2"))));
    step(
        "ln fresh/q1 fresh/q2",
        outcome(fs::hard_link(m.join("fresh/q1"), m.join("fresh/q2"))),
    );
    // Every other name looked up, as a shell's `ls -lR` would have done.
    let _ = view(m);
    step("append hl1", outcome(append(&m.join("hl1"), "more\n")));
    step("chown p1", outcome(lchown(&m.join("p1"), 1, 1)));
    step("rm p2", outcome(fs::remove_file(m.join("p2"))));
    step(
        "ln p1 p2",
        outcome(fs::hard_link(m.join("p1"), m.join("p2"))),
    );
    step(
        "chmod c1",
        outcome(fs::set_permissions(
            m.join("c1"),
            fs::Permissions::from_mode(0o600),
        )),
    );
    step(
        "ln c1 c3",
        outcome(fs::hard_link(m.join("c1"), m.join("c3"))),
    );
    step(
        "ln c3 d/c4",
        outcome(fs::hard_link(m.join("c3"), m.join("d/c4"))),
    );
    step("append c3", outcome(append(&m.join("c3"), "via c3\n")));
    step(
        "rename r1 r2",
        outcome(fs::rename(m.join("r1"), m.join("r2"))),
    );
    step(
        "create new",
        outcome(fs::write(m.join("new"), "new file\n")),
    );
    step(
        "rename new s1",
        outcome(fs::rename(m.join("new"), m.join("s1"))),
    );
    // One name unlinked while the other is open; then the open one changes.
    let mut u1 = fs::File::open(m.join("u1")).unwrap();
    step("rm u2", outcome(fs::remove_file(m.join("u2"))));
    step("read open u1", read_fd(&mut u1));
    step("append u1", outcome(append(&m.join("u1"), "after rm u2\n")));
    step("read open u1 again", read_fd(&mut u1));
    step(
        "fstat open u1",
        format!("nlink {}", u1.metadata().unwrap().nlink()),
    );
    drop(u1);
    // A name unlinked while open itself: its data stays readable; the other name is the
    // lower file still.
    let mut o1 = fs::File::open(m.join("o1")).unwrap();
    step("rm o1", outcome(fs::remove_file(m.join("o1"))));
    step("read unlinked o1", read_fd(&mut o1));
    step("append o2", outcome(append(&m.join("o2"), "via o2\n")));
    step("read unlinked o1 again", read_fd(&mut o1));
    drop(o1);
    // Two names opened for writing at once: two copies, each written through its name.
    let mut w1 = fs::OpenOptions::new()
        .append(true)
        .open(m.join("w1"))
        .unwrap();
    let mut w2 = fs::OpenOptions::new()
        .append(true)
        .open(m.join("w2"))
        .unwrap();
    step("write w1", outcome(w1.write_all(b"w1 was here\n")));
    step("write w2", outcome(w2.write_all(b"w2 was here\n")));
    drop((w1, w2));
    // A symlink and a fifo with two names each: one name copied up.
    step("chown -h sym1", outcome(lchown(&m.join("sym1"), 2, 2)));
    step(
        "chmod fifo1",
        outcome(fs::set_permissions(
            m.join("fifo1"),
            fs::Permissions::from_mode(0o600),
        )),
    );
    step(
        "ln plain plain2",
        outcome(fs::hard_link(m.join("plain"), m.join("plain2"))),
    );
    let midway = view(m);
    (log, midway)
}

#[test]
fn lower_hard_links_behave_as_in_the_kernel_overlayfs() {
    differential("lower-hl", "", "");
}

/// The same with metadata-only copy-up (chown/chmod of a name copy its metadata only).
#[test]
fn lower_hard_links_with_metacopy_behave_as_in_the_kernel_overlayfs() {
    differential("lower-hl-mc", "metacopy=on,redirect_dir=on", "metacopy=on");
}

fn differential(tag: &str, kernel_opts: &str, strata_opts: &str) {
    let s = Scratch::new(tag);
    let side = |t: &str| {
        let l = s.dir(&format!("{t}/l"));
        make_lower(&l);
        (
            l,
            s.dir(&format!("{t}/u")),
            s.dir(&format!("{t}/w")),
            s.dir(&format!("{t}/m")),
        )
    };
    let (kl, ku, kw, km) = side("k");
    let (sl, su, sw, sm) = side("s");
    let (klog, kmid) = {
        let _k = Kernel::mount(&Stack::one(&kl, &ku, &kw), kernel_opts, &km);
        run(&km)
    };
    let (slog, smid) = {
        let m = Strata::mount(&Stack::one(&sl, &su, &sw), strata_opts, &sm);
        let r = run(&sm);
        assert_eq!(m.unmount().map(|s| s.success()), Some(true));
        r
    };
    assert_eq!(klog, slog, "the operations' outcomes");
    assert_views("while mounted", &kmid, &smid);
    let kafter = {
        let _k = Kernel::mount(&Stack::one(&kl, &ku, &kw), kernel_opts, &km);
        view(&km)
    };
    let safter = {
        let _m = Strata::mount(&Stack::one(&sl, &su, &sw), strata_opts, &sm);
        view(&sm)
    };
    assert_views("after a remount", &kafter, &safter);
    assert_views("the kernel before and after its remount", &kmid, &kafter);
    // stratafs's upper read by the kernel: the same tree.
    let _ = fs::remove_dir_all(&sw);
    fs::create_dir_all(&sw).unwrap();
    let cross = {
        let _k = Kernel::mount(&Stack::one(&sl, &su, &sw), kernel_opts, &sm);
        view(&sm)
    };
    assert_views("stratafs's upper mounted by the kernel", &kafter, &cross);
    // The lower layers were never written.
    assert_views("the lowers", &view(&kl), &view(&sl));
}

/// readdir's d_ino of every name (hard-linked lower names included) is its st_ino when a
/// listing is read whole before the names are looked up (as find, du, tar and
/// `os.scandir` then `stat` do), on a fresh mount and again with the names cached; as on
/// the kernel overlayfs. (tests/dino.rs covers the other listing paths: chunks with
/// stats between getdents calls, copy-ups, links and renames through the mount.)
#[test]
fn d_ino_is_st_ino_for_lower_hard_links() {
    use std::os::unix::fs::DirEntryExt;
    let s = Scratch::new("lower-hl-dino");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    for i in 0..40 {
        fs::write(l.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    for i in [3, 7, 20, 33] {
        fs::hard_link(l.join(format!("f{i}")), l.join(format!("h{i}"))).unwrap();
    }
    let check = |mnt: &Path, what: &str| {
        for round in ["cold", "warm"] {
            let listed: Vec<(String, u64)> = fs::read_dir(mnt)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().into_string().unwrap(), e.ino())
                })
                .collect();
            assert_eq!(listed.len(), 44);
            let wrong: Vec<_> = listed
                .iter()
                .filter(|(n, d)| fs::symlink_metadata(mnt.join(n)).unwrap().ino() != *d)
                .collect();
            assert!(
                wrong.is_empty(),
                "{what} ({round}): d_ino != st_ino: {wrong:?}"
            );
        }
    };
    {
        let _k = Kernel::mount(&Stack::one(&l, &u, &w), "", &m);
        check(&m, "kernel overlayfs");
    }
    let _ = fs::remove_dir_all(&w);
    fs::create_dir_all(&w).unwrap();
    let _m = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    check(&m, "stratafs");
}

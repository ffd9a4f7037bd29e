//! File handles of the mount (`name_to_handle_at`, `open_by_handle_at`) with
//! `nfs_export=on`: they decode after the kernel dropped its caches and after a remount,
//! for files and directories, lower, upper, copied-up and new, and after renames; they
//! give ESTALE only for what was removed. The checks of xfstests generic/426, 467 and 477
//! (its `open_by_handle` program: stale handles of deleted files, non-stale ones of linked,
//! hard-linked-then-unlinked, unlinked-but-open, renamed and moved files, directories and
//! their contents after a rename of the parent or grandparent), written as our own.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{Scratch, Stack, Strata};
use stratafs::sys::handle::{self, Handle};

fn handle_of(p: &Path) -> Handle {
    let dir = fs::File::open(p.parent().unwrap()).unwrap();
    let name = CString::new(p.file_name().unwrap().as_encoded_bytes()).unwrap();
    handle::name_to_handle(dir.as_fd(), &name).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

/// Opens `h` on the mount at `mnt`: (st_ino, contents for a regular file).
fn open(mnt: &Path, h: &Handle) -> std::io::Result<(u64, Option<String>)> {
    let m = fs::File::open(mnt)?;
    let fd: OwnedFd = handle::open_by_handle(m.as_fd(), h)?;
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let md = fs::metadata(&proc)?;
    let text = if md.is_file() {
        let mut s = String::new();
        fs::File::open(&proc)?.read_to_string(&mut s)?;
        Some(s)
    } else {
        None
    };
    Ok((md.ino(), text))
}

fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").expect("drop_caches");
    // FORGETs go to the daemon as the kernel evicts; let them arrive.
    std::thread::sleep(std::time::Duration::from_millis(200));
}

struct Layers {
    s: Scratch,
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

fn layers(tag: &str) -> Layers {
    let s = Scratch::new(tag);
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir_all(l.join("d/ld/deep")).unwrap();
    fs::write(l.join("d/lf"), "lf\n").unwrap();
    fs::write(l.join("d/cf"), "cf\n").unwrap();
    fs::write(l.join("d/ld/deep/x"), "x\n").unwrap();
    fs::write(l.join("hl1"), "hl\n").unwrap();
    fs::hard_link(l.join("hl1"), l.join("hl2")).unwrap();
    fs::write(u.join("uf"), "uf\n").unwrap();
    Layers { s, l, u, w, m }
}

/// The entries every check encodes: path in the mount (relative), made through the mount
/// where not in a layer already.
const NAMES: &[&str] = &[
    "d",
    "d/lf",
    "d/cf",
    "d/ld",
    "d/ld/deep",
    "d/ld/deep/x",
    "hl1",
    "uf",
    "d/new",
    "newdir",
    "newdir/f",
];

fn populate(m: &Path) {
    fs::write(m.join("d/new"), "new\n").unwrap();
    fs::create_dir(m.join("newdir")).unwrap();
    fs::write(m.join("newdir/f"), "f\n").unwrap();
    // A copy-up.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/cf"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
}

type Seen = Vec<(String, Handle, (u64, Option<String>))>;

fn encode(m: &Path) -> Seen {
    NAMES
        .iter()
        .map(|n| {
            let p = m.join(n);
            let h = handle_of(&p);
            let now = open(m, &h).unwrap_or_else(|e| panic!("{n} before: {e}"));
            (n.to_string(), h, now)
        })
        .collect()
}

fn check_all(m: &Path, seen: &Seen, when: &str) {
    let mut bad = Vec::new();
    for (n, h, before) in seen {
        match open(m, h) {
            Ok(now) if &now == before => {}
            Ok(now) => bad.push(format!("{n}: {now:?}, was {before:?}")),
            Err(e) => bad.push(format!("{n}: {e}")),
        }
    }
    assert!(bad.is_empty(), "after {when}:\n{}", bad.join("\n"));
}

#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (open_by_handle_at, drop_caches)"
)]
fn handles_decode_after_drop_caches_and_remount() {
    let ring = fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y");
    decode_after_drop_caches_and_remount("nfs_export=on,noio_uring");
    if ring {
        decode_after_drop_caches_and_remount("nfs_export=on,io_uring");
    }
}

fn decode_after_drop_caches_and_remount(opts: &str) {
    let t = layers("handles");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let seen;
    {
        let _m = Strata::mount(&stack, opts, &t.m);
        populate(&t.m);
        seen = encode(&t.m);
        check_all(&t.m, &seen, "nothing (cached)");
        drop_caches();
        check_all(&t.m, &seen, "drop_caches");
        drop_caches();
        check_all(&t.m, &seen, "a second drop_caches");
    }
    assert!(t.w.join("stratafs.handles").exists());
    {
        let _m = Strata::mount(&stack, opts, &t.m);
        check_all(&t.m, &seen, "a remount");
        drop_caches();
        check_all(&t.m, &seen, "a remount and drop_caches");
    }
    drop(t.s);
}

#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (open_by_handle_at, drop_caches)"
)]
fn handles_of_removed_files_are_stale_and_of_moved_ones_not() {
    let t = layers("stale");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let m = &t.m;
    let _mount = Strata::mount(&stack, "nfs_export=on", m);
    populate(m);
    let seen = encode(m);
    // Deleted (generic/426 -d, 467 -dp): ESTALE, lower and upper, file and directory.
    let gone = ["d/lf", "d/new", "uf", "newdir/f"];
    for n in gone {
        fs::remove_file(m.join(n)).unwrap();
    }
    fs::remove_dir(m.join("newdir")).unwrap();
    // Renamed and moved (467 -m, 477): the rest, under new names.
    fs::rename(m.join("d/cf"), m.join("d/cf-renamed")).unwrap();
    fs::rename(m.join("d/ld"), m.join("ld-moved")).unwrap();
    fs::rename(m.join("d"), m.join("d-renamed")).unwrap();
    drop_caches();
    for (n, h, before) in &seen {
        let r = open(m, h);
        if gone.contains(&n.as_str()) || n == "newdir" {
            assert_eq!(
                r.as_ref().err().and_then(|e| e.raw_os_error()),
                Some(libc::ESTALE),
                "{n}: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(before), "{n}: {r:?}");
        }
    }
}

#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (open_by_handle_at, drop_caches)"
)]
fn handles_of_linked_and_open_unlinked_files() {
    let t = layers("linked");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let m = &t.m;
    let _mount = Strata::mount(&stack, "nfs_export=on", m);
    fs::write(m.join("a"), "a\n").unwrap();
    fs::write(m.join("b"), "b\n").unwrap();
    let (ha, hb) = (handle_of(&m.join("a")), handle_of(&m.join("b")));
    let ino_a = fs::metadata(m.join("a")).unwrap().ino();
    // Hard-linked, then the first name removed (426 -l -u): still the file.
    fs::hard_link(m.join("a"), m.join("a2")).unwrap();
    fs::remove_file(m.join("a")).unwrap();
    // Unlinked while open (467 -dk): still the file, readable and writable.
    let mut keep = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("b"))
        .unwrap();
    fs::remove_file(m.join("b")).unwrap();
    drop_caches();
    assert_eq!(open(m, &ha).unwrap(), (ino_a, Some("a\n".into())));
    let (_, text) = open(m, &hb).unwrap();
    assert_eq!(text.as_deref(), Some("b\n"));
    let mf = fs::File::open(m).unwrap();
    let fd = handle::open_by_handle(mf.as_fd(), &hb).unwrap();
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    fs::OpenOptions::new()
        .append(true)
        .open(&proc)
        .expect("open for write an unlinked open file by handle")
        .write_all(b"more\n")
        .unwrap();
    let mut s = String::new();
    std::io::Seek::rewind(&mut keep).unwrap();
    keep.read_to_string(&mut s).unwrap();
    assert_eq!(s, "b\nmore\n");
}

#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (open_by_handle_at, drop_caches)"
)]
fn without_nfs_export_nothing_is_kept() {
    let t = layers("noexport");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let m = &t.m;
    {
        let _mount = Strata::mount(&stack, "", m);
        let h = handle_of(&m.join("d/lf"));
        drop_caches();
        let r = open(m, &h);
        assert_eq!(
            r.as_ref().err().and_then(|e| e.raw_os_error()),
            Some(libc::ESTALE),
            "{r:?}"
        );
    }
    assert!(!t.w.join("stratafs.handles").exists());
}

/// xfstests generic/777: connectable handles (AT_HANDLE_CONNECTABLE: the parent's id too)
/// of files and their directory decode after a remount, after the parent and then the
/// grandparent were renamed.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (open_by_handle_at)")]
fn connectable_handles_after_renames_and_remount() {
    let t = layers("connectable");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let m = &t.m;
    let encode_all = |m: &Path, dir: &str| -> Seen {
        let mut all = Vec::new();
        for n in ["f1", "f2", "f3"] {
            let p = m.join(dir).join(n);
            let d = fs::File::open(p.parent().unwrap()).unwrap();
            let name = CString::new(n).unwrap();
            let h = handle::name_to_handle_flags(d.as_fd(), &name, handle::AT_HANDLE_CONNECTABLE)
                .unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let now = open(m, &h).unwrap();
            all.push((format!("{dir}/{n}"), h, now));
        }
        let h = handle_of(&m.join(dir));
        let now = open(m, &h).unwrap();
        all.push((dir.to_string(), h, now));
        all
    };
    let seen = {
        let _s = Strata::mount(&stack, "nfs_export=on", m);
        fs::create_dir_all(m.join("root/dir")).unwrap();
        for n in ["f1", "f2", "f3"] {
            fs::write(m.join("root/dir").join(n), n).unwrap();
        }
        let seen = encode_all(m, "root/dir");
        fs::rename(m.join("root/dir"), m.join("root/dir.renamed")).unwrap();
        seen
    };
    {
        let _s = Strata::mount(&stack, "nfs_export=on", m);
        check_all(m, &seen, "a rename of the parent and a remount");
        fs::rename(m.join("root"), m.join("root.renamed")).unwrap();
    }
    let _s = Strata::mount(&stack, "nfs_export=on", m);
    check_all(m, &seen, "a rename of the grandparent and a remount");
}

/// A removed file's handle stays stale when the upper filesystem gives its inode number to
/// a new file (ext4 does at once).
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (open_by_handle_at)")]
fn a_reused_inode_number_is_not_the_old_file() {
    use std::os::unix::fs::MetadataExt;
    let t = layers("reuse");
    let stack = Stack::one(&t.l, &t.u, &t.w);
    let m = &t.m;
    let _s = Strata::mount(&stack, "nfs_export=on", m);
    fs::write(m.join("old"), "old\n").unwrap();
    let ino = fs::metadata(m.join("old")).unwrap().ino();
    let h = handle_of(&m.join("old"));
    fs::remove_file(m.join("old")).unwrap();
    let mut reused = false;
    for i in 0..50 {
        let p = m.join(format!("new{i}"));
        fs::write(&p, "new\n").unwrap();
        if fs::metadata(&p).unwrap().ino() == ino {
            reused = true;
            break;
        }
    }
    if !reused {
        eprintln!("the upper did not reuse the number: nothing to check");
        return;
    }
    let r = open(m, &h);
    assert_eq!(
        r.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ESTALE),
        "{r:?}"
    );
    drop_caches();
    let r = open(m, &h);
    assert_eq!(
        r.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ESTALE),
        "after drop_caches: {r:?}"
    );
}

//! readdir's d_ino against the st_ino lstat shows, on stratafs as on the kernel overlayfs
//! (differential against `mount -t overlay` over copies of the same layers). The layers
//! have a lower file with three names in one directory and a fourth in another, an upper
//! file with two names, a lower file later linked through the mount (its copy-up then has
//! two names, the second unknown to the lower) and one renamed through the mount.
//!
//! Each directory is listed with raw getdents64, read whole (one large buffer, lstat
//! after) and in small chunks with an lstat of every entry of a chunk before the next
//! getdents call (the kernel then asks READDIRPLUS from where the last chunk ended, not
//! plain READDIR); cold (one directory listed first whole, its twin first in chunks) and
//! warm, before and after a copy-up through one name of the hard-linked lower file, and
//! with stratafs mounted on the upper the kernel overlayfs wrote. Per entry the test
//! records whether d_ino equals st_ino; the records must be the kernel's. The daemon's
//! counters show that both READDIRPLUS and plain READDIR served the listings. Runs as
//! root.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{stratafs_stats, Kernel, Scratch, Stack, Strata};

/// Plain files per directory: enough for several READDIRPLUS and READDIR replies.
const FILES: usize = 150;

/// The two twin directories (one listed whole first, one in chunks first) and the other
/// directory holding a name of the hard-linked lower file.
const DIRS: [&str; 3] = ["d1", "d2", "e"];

fn make_layers(l: &Path, u: &Path) {
    for d in DIRS {
        fs::create_dir(l.join(d)).unwrap();
        for i in 0..FILES {
            fs::write(l.join(d).join(format!("p{i:03}")), b"p\n").unwrap();
        }
    }
    for name in ["d1", "d2"] {
        let d = l.join(name);
        fs::write(d.join("a"), b"linked\n").unwrap();
        fs::hard_link(d.join("a"), d.join("a2")).unwrap();
        fs::hard_link(d.join("a"), d.join("a3")).unwrap();
        fs::hard_link(d.join("a"), l.join("e").join(format!("x-{name}"))).unwrap();
        fs::write(d.join("single"), b"one name\n").unwrap();
        fs::write(d.join("moved"), b"renamed through the mount\n").unwrap();
        // The same directory in the upper, with a hard-linked upper file: merged.
        let ud = u.join(name);
        fs::create_dir(&ud).unwrap();
        fs::write(ud.join("up1"), b"upper\n").unwrap();
        fs::hard_link(ud.join("up1"), ud.join("up2")).unwrap();
    }
}

/// One listing of `dir`: (name, d_ino == st_ino) per entry but `.` and `..`, in the
/// order listed. `chunk`: getdents64 buffer size; with a small one, every entry of a chunk
/// is lstat'ed before the next call.
fn listing(dir: &Path, chunk: usize) -> Vec<(String, bool)> {
    let f = fs::File::open(dir).unwrap();
    let mut out = Vec::new();
    let mut pending: Vec<(String, u64)> = Vec::new();
    let check = |pending: &mut Vec<(String, u64)>, out: &mut Vec<(String, bool)>| {
        for (name, d_ino) in pending.drain(..) {
            let st = fs::symlink_metadata(dir.join(&name))
                .unwrap_or_else(|e| panic!("lstat {name}: {e}"))
                .ino();
            out.push((name, st == d_ino));
        }
    };
    loop {
        let page = stratafs::sys::read_dir_page(f.as_fd(), chunk).unwrap();
        if page.is_empty() {
            break;
        }
        for (e, _) in page {
            let name = e.name.to_string_lossy().into_owned();
            if name != "." && name != ".." {
                pending.push((name, e.ino));
            }
        }
        if chunk < 4096 {
            check(&mut pending, &mut out);
        }
    }
    check(&mut pending, &mut out);
    out
}

/// Listing `dir` whole, or in chunks.
const WHOLE: usize = 64 << 10;
const CHUNKS: usize = 512;

/// Lists every directory of the mount at `m` both ways; the records, sorted by name (the
/// two mounts list in different orders), with the entries whose d_ino differs first.
fn record(m: &Path, what: &str, out: &mut Vec<String>) {
    for (i, d) in DIRS.iter().enumerate() {
        // d1 and e: whole first; d2: chunks first (each cold the first time).
        let order = if i == 1 {
            [CHUNKS, WHOLE, CHUNKS]
        } else {
            [WHOLE, CHUNKS, WHOLE]
        };
        for (round, chunk) in order.iter().enumerate() {
            let mut l = listing(&m.join(d), *chunk);
            l.sort();
            let how = if *chunk == WHOLE {
                "whole"
            } else {
                "chunks+lstat"
            };
            let wrong: Vec<&str> = l.iter().filter(|e| !e.1).map(|e| e.0.as_str()).collect();
            out.push(format!(
                "{what} {d} {how} (round {round}): {} entries, d_ino != st_ino for {wrong:?}",
                l.len()
            ));
        }
    }
}

/// Changes through the mount: a copy-up through one name of the hard-linked lower file, a
/// link of a one-name lower file, a rename of another.
fn change(m: &Path) {
    for d in ["d1", "d2"] {
        let d = m.join(d);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(d.join("a2"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"more\n").unwrap();
        drop(f);
        fs::hard_link(d.join("single"), d.join("single2")).unwrap();
        fs::rename(d.join("moved"), d.join("moved2")).unwrap();
    }
}

struct Side {
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

fn side(s: &Scratch, tag: &str, base_l: &Path, base_u: &Path) -> Side {
    let (l, u) = (s.path(&format!("{tag}-l")), s.path(&format!("{tag}-u")));
    common::copy_tree(base_l, &l);
    common::copy_tree(base_u, &u);
    Side {
        l,
        u,
        w: s.dir(&format!("{tag}-w")),
        m: s.dir(&format!("{tag}-m")),
    }
}

#[test]
fn d_ino_is_st_ino_on_every_listing_path_as_in_the_kernel_overlayfs() {
    let s = Scratch::new("dino");
    let (bl, bu) = (s.dir("base-l"), s.dir("base-u"));
    make_layers(&bl, &bu);
    let (k, st) = (side(&s, "k", &bl, &bu), side(&s, "s", &bl, &bu));

    let mut kernel = Vec::new();
    {
        let _km = Kernel::mount(&Stack::one(&k.l, &k.u, &k.w), "", &k.m);
        record(&k.m, "before", &mut kernel);
        change(&k.m);
        record(&k.m, "after", &mut kernel);
    }
    let mut strata = Vec::new();
    let counts;
    {
        let _sm = Strata::mount(&Stack::one(&st.l, &st.u, &st.w), "", &st.m);
        record(&st.m, "before", &mut strata);
        change(&st.m);
        record(&st.m, "after", &mut strata);
        counts = stratafs_stats(&st.m);
    }
    assert!(
        kernel.iter().all(|l| l.ends_with("for []")),
        "the kernel overlayfs itself: {kernel:#?}"
    );
    assert_eq!(
        strata, kernel,
        "stratafs (left), the kernel overlayfs (right)"
    );
    // Both kinds of request served the listings.
    for op in ["readdir", "readdirplus"] {
        assert!(
            counts.get(op).copied().unwrap_or(0) > 0,
            "no {op} request: {counts:?}"
        );
    }

    // stratafs on the upper the kernel overlayfs wrote (its copy-up, link and rename).
    let w2 = s.dir("cross-w");
    let _sm = Strata::mount(&Stack::one(&k.l, &k.u, &w2), "", &k.m);
    let mut cross = Vec::new();
    record(&k.m, "after", &mut cross);
    let kernel_after: Vec<String> = kernel
        .iter()
        .filter(|l| l.starts_with("after"))
        .cloned()
        .collect();
    assert_eq!(
        cross, kernel_after,
        "stratafs on the kernel's upper (left), the kernel overlayfs (right)"
    );
}

//! Lower files keep their page cache across opens (FOPEN_KEEP_CACHE while not copied up),
//! and what a reader sees when another opener copies the file up and writes: the same as on
//! the kernel overlayfs, for a reader open across the copy-up, a reader opened again after
//! it, and after the writer wrote through passthrough (around the page cache).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Kernel, Scratch, Stack, Strata};

fn stat_count(m: &Path, op: &str) -> u64 {
    *common::stratafs_stats(m)
        .get(op)
        .unwrap_or_else(|| panic!("no counter {op}"))
}

fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

/// One run of the copy-up visibility sequence on a mount at `m` whose lower holds `f`
/// (content `lower`): returns what each reader saw, as text lines.
fn sequence(m: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let mut show = |what: &str, data: &[u8]| {
        seen.push(format!("{what}: {}", String::from_utf8_lossy(data)));
    };
    let f = m.join("f");
    // Read twice through separate opens (the second may come from the page cache).
    show("first open", &read_all(&f));
    show("second open", &read_all(&f));
    // A reader opened on the lower file, then a writer copies it up and writes.
    let mut reader = fs::File::open(&f).unwrap();
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).unwrap();
    show("reader before", &buf);
    {
        let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.write_all(b"WRITTEN").unwrap();
    }
    let mut again = vec![0u8; 64];
    let n = reader.read_at(&mut again, 0).unwrap();
    show("reader after copy-up and write", &again[..n]);
    drop(reader);
    show("new open after", &read_all(&f));
    // The writer writes again while no reader is open (passthrough, around the page
    // cache), then a reader opens.
    {
        let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.seek(SeekFrom::Start(2)).unwrap();
        w.write_all(b"--second--").unwrap();
    }
    show("open after a second write", &read_all(&f));
    // A second lower file read through, then copied up by O_TRUNC and rewritten.
    let g = m.join("g");
    show("g first", &read_all(&g));
    show("g again", &read_all(&g));
    fs::write(&g, b"replaced").unwrap();
    show("g after replace", &read_all(&g));
    seen
}

#[test]
fn copy_up_visibility_matches_the_kernel() {
    let s = Scratch::new("lpc-diff");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let (ku, kw, km) = (s.dir("ku"), s.dir("kw"), s.dir("km"));
    let content = b"lower data of f, long enough to be more than the first write\n";
    fs::write(l.join("f"), content).unwrap();
    fs::write(l.join("g"), b"lower g\n").unwrap();
    let kernel = {
        let _k = Kernel::mount(&Stack::one(&l, &ku, &kw), "", &km);
        sequence(&km)
    };
    let strata = {
        let _m = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
        sequence(&m)
    };
    assert_eq!(strata, kernel, "stratafs vs the kernel overlayfs");
    assert_eq!(fs::read(l.join("f")).unwrap(), content, "lower untouched");
}

#[test]
fn a_lower_file_read_again_is_served_from_the_page_cache() {
    let s = Scratch::new("lpc-count");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    common::write_pattern(&l.join("big"), 4 << 20);
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let first = read_all(&m.join("big"));
    let before = stat_count(&m, "read");
    let second = read_all(&m.join("big"));
    assert_eq!(first, second);
    let reads = stat_count(&m, "read") - before;
    assert_eq!(
        reads, 0,
        "a second open and read of a lower file: {reads} READs"
    );
    // Copied up and written: the next open reads the new data (not the kept cache).
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap()
        .write_all(b"NEW")
        .unwrap();
    let third = read_all(&m.join("big"));
    assert_eq!(&third[..3], b"NEW");
    assert_eq!(&third[3..], &first[3..]);
}

#[test]
fn a_sequential_read_of_a_lower_file_takes_one_read_per_mib() {
    // As root the daemon raises the mount's readahead to 1 MiB (the largest READ), from
    // the kernel's 128 KiB: 8 MiB read sequentially is about 8 READs, not 64.
    let s = Scratch::new("lpc-ra");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    common::write_pattern(&l.join("big"), 8 << 20);
    let want = fs::read(l.join("big")).unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let before = stat_count(&m, "read");
    let mut f = fs::File::open(m.join("big")).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == want, "the data read");
    let reads = stat_count(&m, "read") - before;
    assert!(reads <= 12, "8 MiB read sequentially took {reads} READs");
}

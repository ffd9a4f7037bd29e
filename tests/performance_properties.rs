//! Properties the performance work must keep (measured as ratios within one run, never
//! against fixed times):
//! - copy-up holds per-inode state only: a `stat` of another file returns while a large
//!   copy-up is still running;
//! - passthrough never writes into a lower layer: a reader holding the lower file open while
//!   a writer copies it up and writes sees the new data, and the lower file is untouched;
//!
//! (The memory property is in tests/memory.rs, a binary of its own so that no copy-up runs
//! beside it.)

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{write_pattern, Scratch, Stack, Strata};

#[test]
fn stat_of_another_file_does_not_wait_for_a_copy_up() {
    let s = Scratch::new("stall");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    write_pattern(&l.join("big"), 1 << 30);
    fs::write(l.join("small"), b"small\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    fs::metadata(m.join("small")).unwrap();
    let path = m.join("big");
    let start = Instant::now();
    let copier = std::thread::spawn(move || {
        fs::OpenOptions::new().write(true).open(path).unwrap();
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(30));
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    while !copier.is_finished() && probes < 20 {
        let t = Instant::now();
        fs::symlink_metadata(m.join("small")).unwrap();
        fs::read_dir(&m).unwrap().count();
        worst = worst.max(t.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let copy = copier.join().unwrap();
    eprintln!("copy-up {copy:?}, worst unrelated stat+readdir {worst:?} over {probes} probes");
    assert!(
        probes > 0,
        "the copy-up finished before any probe ({copy:?}): nothing measured"
    );
    assert!(
        worst * 10 < copy,
        "an unrelated stat waited {worst:?} during a {copy:?} copy-up"
    );
}

#[test]
fn passthrough_never_writes_a_lower_layer() {
    let s = Scratch::new("pt");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("f"), b"lower data\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let mut reader = fs::File::open(m.join("f")).unwrap();
    let mut buf = String::new();
    reader.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "lower data\n");
    {
        let mut writer = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("f"))
            .unwrap();
        writer.write_all(b"UPPER").unwrap();
        writer.seek(SeekFrom::End(0)).unwrap();
        writer.write_all(b"appended\n").unwrap();
        let mut back = String::new();
        writer.seek(SeekFrom::Start(0)).unwrap();
        writer.read_to_string(&mut back).unwrap();
        assert_eq!(back, "UPPER data\nappended\n", "writer reads its own data");
        // A second reader opened after the copy-up, while the writer is open.
        assert_eq!(fs::read(m.join("f")).unwrap(), b"UPPER data\nappended\n");
    }
    let mut again = vec![0u8; 64];
    let n = reader.read_at(&mut again, 0).unwrap();
    assert_eq!(
        &again[..n],
        b"UPPER data\nappended\n",
        "the earlier reader sees the new data"
    );
    assert_eq!(
        fs::read(l.join("f")).unwrap(),
        b"lower data\n",
        "lower layer untouched"
    );
    assert_eq!(
        fs::read(u.join("f")).unwrap(),
        b"UPPER data\nappended\n",
        "upper holds the write"
    );
}

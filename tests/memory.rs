//! FORGET gives memory back: after lookups of 100,000 entries and `drop_caches`, the
//! daemon's RSS is within 5 MB of where it started (fuse-overlayfs keeps ~760 bytes per
//! entry until unlink).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{rss_kb, Scratch, Stack, Strata};

#[test]
fn memory_falls_back_after_the_kernel_forgets() {
    let s = Scratch::new("mem");
    let (l, m) = (s.dir("l"), s.dir("m"));
    for d in 0..100 {
        let dir = l.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..1000 {
            fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let mnt = Strata::mount(
        &Stack {
            lowers: vec![&l],
            upper: None,
        },
        "",
        &m,
    );
    let pid = mnt.pid();
    // Warm up the daemon's threads and buffers before taking the baseline.
    fs::read_dir(&m).unwrap().count();
    let start = rss_kb(pid);
    let mut n = 0;
    for d in fs::read_dir(&m).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            fs::symlink_metadata(f.unwrap().path()).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 100_000);
    let peak = rss_kb(pid);
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_kb(pid);
    while after > start + 5 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kb(pid);
    }
    eprintln!("RSS: start {start} kB, after 100k lookups {peak} kB, after drop_caches {after} kB");
    assert!(
        after <= start + 5 * 1024,
        "RSS {after} kB did not fall back near {start} kB (peak {peak} kB)"
    );
}

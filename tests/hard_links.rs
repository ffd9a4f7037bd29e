//! Hard links made through the mount to a file that starts in a lower layer (what
//! `ln lowerfile newname` in a container does): every name must show one inode, with the
//! new link count, although the kernel had the first name cached with the lower file's
//! number and one link (stratafs has the kernel drop that entry). Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Scratch, Stack, Strata};

fn ino_nlink(p: &Path) -> (u64, u64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.ino(), m.nlink())
}

#[test]
fn linking_a_lower_file_shows_one_inode_under_every_name() {
    let s = Scratch::new("hard-links");
    let lower = s.dir("lower");
    let upper = s.dir("upper");
    let work = s.dir("work");
    let mnt = s.dir("mnt");
    fs::create_dir(lower.join("d")).unwrap();
    for f in ["plain", "chmodded", "d/deep"] {
        fs::write(lower.join(f), f).unwrap();
    }
    // One worker thread: the invalidation must not need a second one.
    let _m = Strata::mount(&Stack::one(&lower, &upper, &work), "threads=1", &mnt);
    // Cache every name first, as a shell's earlier commands would.
    let before: Vec<(u64, u64)> = ["plain", "chmodded", "d/deep"]
        .iter()
        .map(|f| ino_nlink(&mnt.join(f)))
        .collect();
    assert!(before.iter().all(|&(_, n)| n == 1));
    // Copied up (with an origin) before the link: its number changes at the link too.
    fs::set_permissions(
        mnt.join("chmodded"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let open = fs::File::open(mnt.join("plain")).unwrap();
    for (src, dst) in [
        ("plain", "plain-link"),
        ("chmodded", "chmodded-link"),
        ("d/deep", "deep-link"),
        ("plain-link", "d/plain-link2"),
    ] {
        fs::hard_link(mnt.join(src), mnt.join(dst)).unwrap();
        // The kernel drops the source's stale entry on stratafs's notice, sent just after
        // the link's reply: allow it a moment on a loaded machine (it never took 1 s).
        let start = Instant::now();
        let (si, sn, di, dn) = loop {
            let (si, sn) = ino_nlink(&mnt.join(src));
            let (di, dn) = ino_nlink(&mnt.join(dst));
            if (si, sn) == (di, dn) || start.elapsed() > Duration::from_secs(5) {
                break (si, sn, di, dn);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            (si, sn),
            (di, dn),
            "after ln {src} {dst}: the source shows ino {si} nlink {sn}, the link ino {di} nlink {dn}"
        );
        assert!(sn >= 2, "{src}: {sn} links");
    }
    assert_eq!(ino_nlink(&mnt.join("plain")).1, 3);
    assert_eq!(
        ino_nlink(&mnt.join("d/plain-link2")),
        ino_nlink(&mnt.join("plain"))
    );
    // A handle opened before the links still reads the file.
    assert_eq!(
        std::io::read_to_string(&open).unwrap(),
        "plain",
        "handle opened before the link"
    );
    // And on disk: one upper inode per file.
    assert_eq!(
        fs::metadata(upper.join("plain")).unwrap().ino(),
        fs::metadata(upper.join("d/plain-link2")).unwrap().ino()
    );
}

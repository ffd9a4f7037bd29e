//! Copy-up when the upper is on another filesystem than the lower (a tmpfs upper over disk
//! lowers, as in a live CD or a container with its upper in RAM). There `copy_file_range`
//! says EXDEV and the data goes through the fallback (sendfile); it must land at the right
//! offsets, keep the holes, and end at the right size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{mount_type, write_pattern, Scratch, Stack, Strata};

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "sfs-test-tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if mount_type(&self.0).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn append(p: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn copy_up_from_disk_to_a_tmpfs_upper_keeps_data_and_holes() {
    let s = Scratch::new("xfs-copyup");
    let l = s.dir("l");
    let t = s.dir("t");
    let _tmpfs = Tmpfs::mount(&t).expect("mount a tmpfs (needs root)");
    assert_eq!(mount_type(&t).as_deref(), Some("tmpfs"));
    let (u, w, m) = (t.join("u"), t.join("w"), s.dir("m"));
    fs::create_dir(&u).unwrap();
    fs::create_dir(&w).unwrap();

    // Dense, not a multiple of any chunk size.
    let dense_len = (3 << 20) + 12345;
    write_pattern(&l.join("dense"), dense_len);
    // Sparse: data, a hole, data, a trailing hole.
    let sparse_len: u64 = 20 << 20;
    {
        let f = fs::File::create(l.join("sparse")).unwrap();
        f.write_all_at(&vec![0xa5; 100 << 10], 0).unwrap();
        f.write_all_at(&vec![0x5a; 64 << 10], 8 << 20).unwrap();
        f.set_len(sparse_len).unwrap();
        f.sync_all().unwrap();
    }
    let lower_dense = fs::read(l.join("dense")).unwrap();
    let lower_sparse = fs::read(l.join("sparse")).unwrap();

    {
        let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
        append(&m.join("dense"), b"x");
        append(&m.join("sparse"), b"y");
        // Read back through the mount, too.
        let via = fs::read(m.join("dense")).unwrap();
        assert_eq!(via.len() as u64, dense_len + 1);
        assert!(
            via[..dense_len as usize] == lower_dense[..],
            "dense: data through the mount"
        );
    }

    let up_dense = fs::read(u.join("dense")).unwrap();
    assert_eq!(
        up_dense.len() as u64,
        dense_len + 1,
        "dense: size in the upper"
    );
    assert!(
        up_dense[..dense_len as usize] == lower_dense[..],
        "dense: data in the upper"
    );
    assert_eq!(up_dense[dense_len as usize], b'x');

    let up_sparse = fs::read(u.join("sparse")).unwrap();
    assert_eq!(
        up_sparse.len() as u64,
        sparse_len + 1,
        "sparse: size in the upper"
    );
    assert!(
        up_sparse[..sparse_len as usize] == lower_sparse[..],
        "sparse: data in the upper"
    );
    assert_eq!(up_sparse[sparse_len as usize], b'y');
    let allocated = fs::metadata(u.join("sparse")).unwrap().blocks() * 512;
    assert!(
        allocated < 4 << 20,
        "sparse: holes kept in the upper ({allocated} bytes allocated for a 20 MiB file with 164 KiB of data)"
    );
    // The lower layer is untouched.
    assert_eq!(fs::read(l.join("dense")).unwrap(), lower_dense);
    assert_eq!(fs::read(l.join("sparse")).unwrap(), lower_sparse);
}

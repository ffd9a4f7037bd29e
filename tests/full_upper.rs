//! A full upper: upper and workdir on a small tmpfs (8 MiB, then one with few inodes).
//! Copy-ups and writes that do not fit fail with ENOSPC (or EDQUOT), never EIO; the
//! daemon keeps serving; no partial copy-up becomes visible (the merged file keeps the
//! lower content) and the staging directory is empty again; once space is freed through
//! the mount, the same copy-up and write succeed.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{file_hash, write_pattern, Scratch, Stack, Strata};

/// A tmpfs mounted for one test; unmounted on drop (declare after the Scratch, before
/// the Strata mount on it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, opts: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "sfs-full-upper"])
            .arg(at)
            .status()
            .expect("mount tmpfs");
        assert!(st.success(), "mount -t tmpfs -o {opts}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Writes `p` in 64 KiB blocks up to `limit` bytes (or until it fails) and fsyncs it;
/// returns the bytes written and the first error (of write, fsync or close).
fn fill(p: &Path, limit: u64) -> (u64, Option<std::io::Error>) {
    let mut f = match fs::OpenOptions::new().create(true).append(true).open(p) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let block = vec![0x5au8; 64 << 10];
    let mut n = 0u64;
    while n < limit {
        if let Err(e) = f.write_all(&block) {
            return (n, Some(e));
        }
        n += block.len() as u64;
    }
    match f.sync_all() {
        Ok(()) => (n, None),
        Err(e) => (n, Some(e)),
    }
}

/// Free bytes on the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let f = fs::File::open(p).expect("open for statvfs");
    let st = stratafs::sys::fstatvfs(std::os::fd::AsFd::as_fd(&f)).expect("fstatvfs");
    st.f_bavail * st.f_frsize
}

/// Waits (up to 10 s) until `p`'s filesystem has `want` bytes free: the kernel sends
/// RELEASE of a closed file asynchronously, so the daemon may hold a removed file's
/// data a moment longer.
fn wait_free(p: &Path, want: u64) {
    wait_until(p, want, free_bytes)
}

/// Free inodes on the filesystem holding `p`.
fn free_inodes(p: &Path) -> u64 {
    let f = fs::File::open(p).expect("open for statvfs");
    let st = stratafs::sys::fstatvfs(std::os::fd::AsFd::as_fd(&f)).expect("fstatvfs");
    st.f_favail
}

fn wait_until(p: &Path, want: u64, free_bytes: fn(&Path) -> u64) {
    let start = std::time::Instant::now();
    while free_bytes(p) < want {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "only {} free after removing files (want {want})",
            free_bytes(p)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn staging_empty(w: &Path, what: &str) {
    let left: Vec<_> = fs::read_dir(w.join("work"))
        .expect("read work/")
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{what}: staging not empty: {left:?}");
}

fn expect_full<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>, cases: &mut u32) {
    match r {
        Err(e) if is_full(&e) => *cases += 1,
        other => panic!("{what}: expected ENOSPC/EDQUOT, got {other:?}"),
    }
}

#[test]
fn full_upper_fails_with_enospc_and_recovers() {
    let s = Scratch::new("full");
    let l = s.dir("l");
    let t = s.dir("t");
    let m = s.dir("m");
    const BIG: u64 = 6 << 20;
    write_pattern(&l.join("big"), BIG);
    write_pattern(&l.join("small"), 512 << 10);
    fs::create_dir(l.join("dir")).unwrap();
    fs::write(l.join("dir/inner"), b"inner lower").unwrap();
    let big_lower = file_hash(&l.join("big"));
    let small_lower = file_hash(&l.join("small"));
    let _tmpfs = Tmpfs::mount(&t, "size=8m,mode=0755");
    let (u, w) = (t.join("u"), t.join("w"));
    fs::create_dir(&u).unwrap();
    fs::create_dir(&w).unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let mut cases = 0u32;

    // 1. Leave ~3 MiB free: the 6 MiB lower file cannot be copied up.
    let (n, e) = fill(&m.join("pad"), 5 << 20);
    assert!(e.is_none(), "5 MiB pad fits in 8 MiB: {e:?} after {n}");
    let r = fs::OpenOptions::new().write(true).open(m.join("big"));
    expect_full(
        "copy-up of a file larger than the free space",
        r,
        &mut cases,
    );
    assert_eq!(
        file_hash(&m.join("big")),
        big_lower,
        "merged big keeps the lower content"
    );
    assert_eq!(fs::metadata(m.join("big")).unwrap().len(), BIG);
    assert!(!u.join("big").exists(), "no partial copy in the upper");
    staging_empty(&w, "after the failed copy-up");
    // A smaller lower file still fits.
    let r = fs::OpenOptions::new()
        .write(true)
        .open(m.join("small"))
        .map(|_| ());
    assert!(r.is_ok(), "a 512 KiB copy-up still fits: {r:?}");
    assert_eq!(file_hash(&m.join("small")), small_lower);

    // 2. Fill the rest: writes fail with ENOSPC, never EIO.
    let (_, e) = fill(&m.join("fill"), 64 << 20);
    let e = e.expect("filling 64 MiB into 8 MiB fails");
    assert!(is_full(&e), "write on a full upper: {e:?}");
    cases += 1;
    // A small write to an existing upper file.
    let (_, e) = fill(&m.join("pad"), 1 << 20);
    assert!(
        e.as_ref().is_some_and(is_full),
        "append on a full upper: {e:?}"
    );
    cases += 1;
    // Copy-up of a lower file with data, and of a directory's child, on a full upper.
    let r = fs::OpenOptions::new().append(true).open(m.join("big"));
    expect_full("copy-up on a full upper", r, &mut cases);
    assert_eq!(file_hash(&m.join("big")), big_lower);
    staging_empty(&w, "after the failed copy-ups");
    // Metadata-only ops on a block-full tmpfs: ENOSPC or success, never EIO or a crash.
    for (what, r) in [
        ("mkdir", fs::create_dir(m.join("newdir"))),
        ("create", fs::File::create(m.join("newfile")).map(|_| ())),
        ("chmod of a lower dir", {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(m.join("dir"), fs::Permissions::from_mode(0o700))
        }),
        (
            "unlink of a lower file (whiteout)",
            fs::remove_file(m.join("dir/inner")),
        ),
        (
            "symlink",
            std::os::unix::fs::symlink("t", m.join("newlink")),
        ),
    ] {
        match r {
            Ok(()) => {}
            Err(e) if is_full(&e) => cases += 1,
            Err(e) => panic!("{what} on a full upper: {e:?} (want success or ENOSPC)"),
        }
    }
    // The daemon keeps serving reads, stats and listings.
    assert_eq!(file_hash(&m.join("small")), small_lower);
    let names: Vec<_> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.iter().any(|n| n == "big") && names.iter().any(|n| n == "fill"));
    assert!(fs::metadata(m.join("dir")).unwrap().is_dir());
    staging_empty(&w, "full upper");

    // 3. Free space through the mount: the same copy-up and writes now succeed.
    fs::remove_file(m.join("fill")).unwrap();
    fs::remove_file(m.join("pad")).unwrap();
    wait_free(&u, BIG + (512 << 10));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("big"))
            .expect("copy-up after freeing space");
        f.write_all(b"HEAD").unwrap();
        f.sync_all().unwrap();
    }
    let mut want = fs::read(l.join("big")).unwrap();
    want[..4].copy_from_slice(b"HEAD");
    assert!(
        fs::read(m.join("big")).unwrap() == want,
        "big: copied up and written"
    );
    assert!(
        fs::read(u.join("big")).unwrap() == want,
        "upper big complete"
    );
    assert_eq!(file_hash(&l.join("big")), big_lower, "lower untouched");
    fs::create_dir(m.join("after")).expect("mkdir after freeing space");
    fs::write(m.join("after/f"), b"ok").expect("write after freeing space");
    staging_empty(&w, "after recovery");
    // Files created and closed at once, then removed, give their inodes and space back (a
    // handle's kernel-side passthrough backing file must not outlive its release).
    fs::remove_file(m.join("big")).unwrap();
    wait_free(&u, 6 << 20);
    let (free, inodes) = (free_bytes(&u), free_inodes(&u));
    for i in 0..300 {
        let f = fs::File::create(m.join(format!("after/t{i}"))).unwrap();
        if i % 2 == 0 {
            (&f).write_all(&[7u8; 8192]).unwrap();
        }
    }
    for i in 0..300 {
        fs::remove_file(m.join(format!("after/t{i}"))).unwrap();
    }
    wait_free(&u, free);
    wait_until(&u, inodes, free_inodes);
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
    eprintln!("ENOSPC cases (block-full upper): {cases}");
}

#[test]
fn full_inode_table_fails_with_enospc_and_recovers() {
    let s = Scratch::new("fullino");
    let l = s.dir("l");
    let t = s.dir("t");
    let m = s.dir("m");
    fs::write(l.join("lowerfile"), b"lower content").unwrap();
    fs::create_dir(l.join("ldir")).unwrap();
    fs::write(l.join("ldir/x"), b"x").unwrap();
    let _tmpfs = Tmpfs::mount(&t, "size=8m,nr_inodes=24,mode=0755");
    let (u, w) = (t.join("u"), t.join("w"));
    fs::create_dir(&u).unwrap();
    fs::create_dir(&w).unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let mut cases = 0u32;
    // Use up every inode with empty files.
    let mut made = 0;
    let last = loop {
        match fs::File::create(m.join(format!("f{made}"))) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100, "nr_inodes=24 never ran out");
    };
    assert!(is_full(&last), "create with no inode left: {last:?}");
    cases += 1;
    expect_full(
        "mkdir with no inode left",
        fs::create_dir(m.join("d")),
        &mut cases,
    );
    expect_full(
        "symlink with no inode left",
        std::os::unix::fs::symlink("x", m.join("s")),
        &mut cases,
    );
    expect_full(
        "copy-up with no inode left",
        fs::OpenOptions::new().write(true).open(m.join("lowerfile")),
        &mut cases,
    );
    expect_full(
        "copy-up of a dir's child with no inode left",
        fs::OpenOptions::new().write(true).open(m.join("ldir/x")),
        &mut cases,
    );
    expect_full(
        "whiteout with no inode left",
        fs::remove_file(m.join("lowerfile")),
        &mut cases,
    );
    assert_eq!(fs::read(m.join("lowerfile")).unwrap(), b"lower content");
    assert_eq!(fs::read(m.join("ldir/x")).unwrap(), b"x");
    assert!(!u.join("lowerfile").exists() && !u.join("ldir").exists());
    staging_empty(&w, "no inodes");
    // Free inodes: everything works again.
    for i in 0..made {
        let r = fs::remove_file(m.join(format!("f{i}")));
        if let Err(e) = r {
            let names: Vec<_> = fs::read_dir(&m)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let up: Vec<_> = fs::read_dir(&u)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            panic!("rm f{i} of {made}: {e:?}; merged {names:?} upper {up:?}");
        }
    }
    wait_until(&u, made as u64, free_inodes);
    fs::write(m.join("ldir/x"), b"new x").expect("copy-up after freeing inodes");
    assert_eq!(fs::read(m.join("ldir/x")).unwrap(), b"new x");
    fs::remove_file(m.join("lowerfile")).expect("whiteout after freeing inodes");
    assert!(!m.join("lowerfile").exists());
    fs::create_dir(m.join("d")).unwrap();
    staging_empty(&w, "after recovery");
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
    eprintln!("ENOSPC cases (inode table full): {cases}");
}

/// An 8 MiB ext4 image on a loop device (no journal, no reserved blocks): a mount that
/// unmounts and detaches on drop.
struct LoopExt4(PathBuf);

impl LoopExt4 {
    fn mount(s: &Scratch, at: &Path) -> Option<LoopExt4> {
        let img = s.path("ext4.img");
        fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(mkfs.success(), "mkfs.ext4");
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| LoopExt4(at.to_path_buf()))
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        // umount of a loop mount made by mount(8) also frees the loop device.
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(not(have = "loop"), ignore = "needs a loop device")]
fn full_ext4_upper_refuses_metadata_ops_with_enospc() {
    let s = Scratch::new("fullext4");
    let l = s.dir("l");
    let t = s.dir("t");
    let m = s.dir("m");
    fs::write(l.join("lowerfile"), b"lower content").unwrap();
    fs::create_dir(l.join("ldir")).unwrap();
    fs::write(l.join("ldir/x"), b"x").unwrap();
    let _ext4 = LoopExt4::mount(&s, &t).expect("mount an ext4 image on a loop device");
    let (u, w) = (t.join("u"), t.join("w"));
    fs::create_dir(&u).unwrap();
    fs::create_dir(&w).unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let mut cases = 0u32;
    let (_, e) = fill(&m.join("fill"), 64 << 20);
    assert!(e.as_ref().is_some_and(is_full), "filling: {e:?}");
    cases += 1;
    // Take the last blocks too, one fsynced 4 KiB (then 1 KiB) write at a time.
    let mut last = fs::OpenOptions::new()
        .append(true)
        .open(m.join("fill"))
        .unwrap();
    for size in [4096, 1024] {
        for _ in 0..4096 {
            if let Err(e) = last
                .write_all(&vec![1u8; size])
                .and_then(|_| last.sync_all())
            {
                assert!(is_full(&e), "last blocks: {e:?}");
                break;
            }
        }
    }
    drop(last);
    eprintln!("free after filling: {} bytes", free_bytes(&u));
    // Every data block is taken: a new directory needs one.
    expect_full(
        "mkdir on a full ext4",
        fs::create_dir(m.join("d")),
        &mut cases,
    );
    expect_full(
        "copy-up of a directory's child",
        fs::OpenOptions::new().append(true).open(m.join("ldir/x")),
        &mut cases,
    );
    expect_full(
        "copy-up of a file",
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("lowerfile")),
        &mut cases,
    );
    // Needing only an inode (or nothing): success or ENOSPC, never EIO.
    for (what, r) in [
        ("create", fs::File::create(m.join("empty")).map(|_| ())),
        ("symlink", std::os::unix::fs::symlink("t", m.join("ln"))),
        ("whiteout", fs::remove_file(m.join("lowerfile"))),
        ("chmod of a lower dir", {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(m.join("ldir"), fs::Permissions::from_mode(0o700))
        }),
    ] {
        eprintln!("{what} on a full ext4 upper: {r:?}");
        match r {
            Ok(()) => {}
            Err(e) if is_full(&e) => cases += 1,
            Err(e) => panic!("{what} on a full ext4 upper: {e:?} (want success or ENOSPC)"),
        }
    }
    assert_eq!(fs::read(m.join("ldir/x")).unwrap(), b"x");
    staging_empty(&w, "full ext4");
    fs::remove_file(m.join("fill")).unwrap();
    wait_free(&u, 4 << 20);
    fs::create_dir(m.join("d")).expect("mkdir after freeing space");
    fs::write(m.join("ldir/x"), b"new x").expect("copy-up after freeing space");
    assert_eq!(fs::read(u.join("ldir/x")).unwrap(), b"new x");
    staging_empty(&w, "after recovery");
    let st = mnt.unmount();
    assert!(st.is_some_and(|s| s.success()), "daemon exit {st:?}");
    eprintln!("ENOSPC cases (full ext4 upper): {cases}");
}

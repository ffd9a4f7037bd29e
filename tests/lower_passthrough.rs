//! Passthrough of lower files. By default on read-only mounts (nothing can be copied up
//! there): read-only opens of lower files use FUSE passthrough (the kernel reads the lower
//! file itself; no READ reaches the daemon), and a remount to read-write is refused while
//! one is open; on read-write mounts a reader opened before another opener's copy-up and
//! write reads the new data, as on the kernel overlayfs (checked side by side).
//! `-o lower_passthrough`: the same on read-write mounts too. What it trades, tested as what it is:
//! a handle open on the lower file across a copy-up made without an open (a truncate, here)
//! keeps reading the lower data, where the default (like the kernel overlayfs, checked
//! side by side) shows the upper's; an open that needs the upper copy while such handles
//! are open (a writer's, any open after that copy-up) waits until they are closed, then
//! sees the upper data; it fails with ETXTBSY if they stay open 5 s.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Kernel, Scratch, Stack, Strata};

fn count(m: &Path, op: &str) -> u64 {
    *common::stratafs_stats(m)
        .get(op)
        .unwrap_or_else(|| panic!("no counter {op}"))
}

/// A lower of files of assorted sizes (and a sparse one, an executable, a setuid file).
fn fill_lower(l: &Path) -> Vec<&'static str> {
    let names = vec!["empty", "one", "page1", "big", "sparse", "sub/deep"];
    fs::create_dir_all(l.join("sub")).unwrap();
    fs::write(l.join("empty"), b"").unwrap();
    fs::write(l.join("one"), b"x").unwrap();
    common::write_pattern(&l.join("page1"), 4097);
    common::write_pattern(&l.join("big"), (3 << 20) + 123);
    let f = fs::File::create(l.join("sparse")).unwrap();
    f.write_at(b"tail", 5 << 20).unwrap();
    common::write_pattern(&l.join("sub/deep"), 70_000);
    names
}

/// Everything a reader sees of `names` under `m`: whole reads, preads at odd offsets, an
/// mmap'd copy (through `cmp`-free hashing by `sha256sum` on a private mapping: `tail -c`
/// reads, `dd` with skip).
fn read_view(m: &Path, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for n in names {
        let p = m.join(n);
        out.push((format!("{n} read"), fs::read(&p).unwrap()));
        let f = fs::File::open(&p).unwrap();
        for off in [0u64, 1, 4095, 4096, 70_001, 3 << 20, 5 << 20] {
            let mut b = vec![0u8; 9000];
            let k = f.read_at(&mut b, off).unwrap();
            out.push((format!("{n} pread {off}"), b[..k].to_vec()));
        }
        // mmap (python's mmap module: a shared read-only mapping of the whole file).
        let o = Command::new("python3")
            .args([
                "-c",
                "import mmap,sys,hashlib\nf=open(sys.argv[1],'rb')\n\
                 try:\n m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\n print(hashlib.sha256(m[:]).hexdigest())\n\
                 except ValueError:\n print('empty')",
            ])
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "mmap {n}: {o:?}");
        out.push((format!("{n} mmap"), o.stdout));
    }
    out
}

#[test]
fn reads_match_the_kernel_and_no_read_reaches_the_daemon() {
    let s = Scratch::new("lpt-read");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let (ku, kw, km) = (s.dir("ku"), s.dir("kw"), s.dir("km"));
    let names = fill_lower(&l);
    let kernel = {
        let _k = Kernel::mount(&Stack::one(&l, &ku, &kw), "", &km);
        read_view(&km, &names)
    };
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "lower_passthrough", &m);
    let before = count(&m, "read");
    let opens = count(&m, "open");
    let strata = read_view(&m, &names);
    assert_eq!(strata.len(), kernel.len());
    for ((what, a), (_, b)) in strata.iter().zip(&kernel) {
        assert!(a == b, "{what}: stratafs and the kernel overlayfs differ");
    }
    assert!(count(&m, "open") > opens, "the reads opened files");
    assert_eq!(
        count(&m, "read") - before,
        0,
        "READ requests for lower files with lower_passthrough"
    );
    // A lower program runs (exec maps it through passthrough).
    fs::copy("/bin/true", l.join("prog")).unwrap();
    let st = Command::new(m.join("prog")).status().unwrap();
    assert!(st.success(), "exec of a lower program");
    assert_eq!(count(&m, "read") - before, 0, "READs for the exec");
    // A setuid lower file is still served by the daemon (its reads are seen here).
    fs::write(l.join("suid"), b"setuid data").unwrap();
    fs::set_permissions(l.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::read(m.join("suid")).unwrap(), b"setuid data");
    assert!(
        count(&m, "read") > before,
        "a setuid file is served by the daemon"
    );
}

#[test]
fn read_only_mounts_pass_lower_files_through_by_default() {
    // podman's read-only image mounts have no upper (`podman image mount`): nothing can be copied up, so a passthrough reader of a
    // lower file can never be left on stale data. Reads, preads and mmap as the kernel's.
    let s = Scratch::new("lpt-ro");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let (ku, kw, km) = (s.dir("ku"), s.dir("kw"), s.dir("km"));
    let names = fill_lower(&l);
    let kernel = {
        let _k = Kernel::mount(&Stack::one(&l, &ku, &kw), "ro", &km);
        read_view(&km, &names)
    };
    for (opts, lowerdir_only) in [("ro", false), ("", true)] {
        let stack = if lowerdir_only {
            Stack {
                lowers: vec![&l],
                upper: None,
            }
        } else {
            Stack::one(&l, &u, &w)
        };
        let _mnt = Strata::mount(&stack, opts, &m);
        let before = count(&m, "read");
        let strata = read_view(&m, &names);
        assert_eq!(strata.len(), kernel.len());
        for ((what, a), (_, b)) in strata.iter().zip(&kernel) {
            assert!(a == b, "{what}: stratafs ({opts:?}) and the kernel differ");
        }
        assert_eq!(
            count(&m, "read") - before,
            0,
            "READ requests for lower files on a read-only mount ({opts:?}, no upper: {lowerdir_only})"
        );
    }
    // lower_passthrough=0 turns it off.
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "ro,lower_passthrough=0", &m);
    let before = count(&m, "read");
    fs::read(m.join("big")).unwrap();
    assert!(
        count(&m, "read") > before,
        "lower_passthrough=0 serves reads"
    );
}

/// `stratafs -o remount,OPTS MNT`.
fn remount(m: &Path, opts: &str) -> std::process::Output {
    Command::new(common::bin())
        .arg("-o")
        .arg(format!("remount,{opts}"))
        .arg(m)
        .output()
        .unwrap()
}

#[test]
fn remount_rw_is_refused_while_a_lower_file_is_open_through_passthrough() {
    // A reader that took the lower file's passthrough while the mount was read-only would
    // keep reading it after a copy-up: the mount does not become writable under it (EBUSY,
    // as the kernel refuses remount,ro while a file is open for writing); once it is
    // closed the remount goes on, and then lower reads are served by the daemon again.
    let s = Scratch::new("lpt-ro-remount");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("f"), b"lower data\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "ro", &m);
    let reader = fs::File::open(m.join("f")).unwrap();
    let o = remount(&m, "rw");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "remount,rw with a passthrough reader open"
    );
    assert!(err.contains("busy") || err.contains("close them"), "{err}");
    assert!(fs::write(m.join("x"), b"x").is_err(), "still read-only");
    let mut b = vec![0u8; 64];
    let n = reader.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..n], b"lower data\n");
    drop(reader);
    let o = remount(&m, "rw");
    assert!(o.status.success(), "remount,rw after the close: {o:?}");
    // Read-write now: a reader opened before another opener's copy-up and write reads the
    // new data (served by the daemon), and nothing waits.
    let reader = fs::File::open(m.join("f")).unwrap();
    let before = count(&m, "read");
    let t = Instant::now();
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .unwrap()
        .write_all(b"UPPER")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let n = reader.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..n], b"UPPER data\n");
    assert!(count(&m, "read") > before, "read-write: lower reads served");
    assert_eq!(count(&m, "open_waited"), 0);
}

/// A reader opens `f`; another opener copies it up by opening it for writing and writes
/// "UPPER" at 0; what the reader's next pread returns.
fn reader_across_a_writer(m: &Path) -> Vec<u8> {
    let f = m.join("f");
    let r = fs::File::open(&f).unwrap();
    let mut b = vec![0u8; 64];
    r.read_at(&mut b, 0).unwrap();
    let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all(b"UPPER").unwrap();
    drop(w);
    let n = r.read_at(&mut b, 0).unwrap();
    b[..n].to_vec()
}

#[test]
fn by_default_a_reader_open_across_a_copy_up_reads_the_copy_like_the_kernel() {
    // The kernel overlayfs (fs/overlayfs/file.c) reopens the real file on each read once
    // the file is copied up: a reader opened before another opener's copy-up reads the
    // upper copy, writes included (only a MAP_SHARED mapping keeps the lower pages,
    // overlayfs.rst "Non-standard behavior"). So does stratafs's default on a read-write
    // mount, on both transports.
    let s = Scratch::new("lpt-across");
    let lower = b"lower data of f\n";
    let run = |kind: &str| {
        let (l, u, w, m) = (
            s.dir(&format!("{kind}l")),
            s.dir(&format!("{kind}u")),
            s.dir(&format!("{kind}w")),
            s.dir(&format!("{kind}m")),
        );
        fs::write(l.join("f"), lower).unwrap();
        let stack = Stack::one(&l, &u, &w);
        let seen = if kind == "k" {
            let _k = Kernel::mount(&stack, "", &m);
            reader_across_a_writer(&m)
        } else {
            let _s = Strata::mount(&stack, "", &m);
            reader_across_a_writer(&m)
        };
        // The write went to the upper copy and the lower layer is as it was (a writer
        // given the reader's lower backing file would have written the lower layer).
        (
            seen,
            fs::read(l.join("f")).unwrap(),
            fs::read(u.join("f")).unwrap(),
        )
    };
    let kernel = run("k");
    let copy = b"UPPER data of f\n".to_vec();
    assert_eq!(
        kernel,
        (copy.clone(), lower.to_vec(), copy),
        "the kernel shows the copy"
    );
    assert_eq!(
        run("d"),
        kernel,
        "stratafs's default: as the kernel overlayfs"
    );
}

#[test]
fn without_the_option_lower_reads_reach_the_daemon() {
    let s = Scratch::new("lpt-default");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    common::write_pattern(&l.join("f"), 1 << 20);
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let before = count(&m, "read");
    fs::read(m.join("f")).unwrap();
    assert!(count(&m, "read") > before, "the default serves lower reads");
}

/// truncate(2) by path (truncate(1) opens the file for writing; this opens nothing).
fn truncate_path(p: &Path, len: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::truncate(c.as_ptr(), len) };
    assert_eq!(
        r,
        0,
        "truncate {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A reader opens `f`, then `f` is copied up by a truncate to 4 bytes (no open involved);
/// what the reader reads next. Also: a stat of `f` then.
fn reader_across_truncate(m: &Path) -> (Vec<u8>, u64) {
    let f = m.join("f");
    let mut r = fs::File::open(&f).unwrap();
    let mut first = [0u8; 6];
    r.read_exact(&mut first).unwrap();
    truncate_path(&f, 4);
    let size = fs::metadata(&f).unwrap().len();
    let mut b = vec![0u8; 64];
    let n = r.read_at(&mut b, 0).unwrap();
    (b[..n].to_vec(), size)
}

#[test]
fn the_trade_a_reader_open_across_a_copy_up_keeps_the_lower_data() {
    let s = Scratch::new("lpt-trade");
    let content = b"lower data, forty bytes or so in total\n";
    let run = |kind: &str, opts: &str| {
        let (l, u, w, m) = (
            s.dir(&format!("{kind}l")),
            s.dir(&format!("{kind}u")),
            s.dir(&format!("{kind}w")),
            s.dir(&format!("{kind}m")),
        );
        fs::write(l.join("f"), content).unwrap();
        let stack = Stack::one(&l, &u, &w);
        if kind == "k" {
            let _k = Kernel::mount(&stack, "", &m);
            reader_across_truncate(&m)
        } else {
            let _s = Strata::mount(&stack, opts, &m);
            reader_across_truncate(&m)
        }
    };
    let kernel = run("k", "");
    let default = run("d", "");
    let lp = run("p", "lower_passthrough");
    assert_eq!(kernel, (b"lowe".to_vec(), 4), "the kernel shows the upper");
    assert_eq!(default, kernel, "the default: as the kernel overlayfs");
    assert_eq!(
        lp,
        (content.to_vec(), 4),
        "lower_passthrough: the open reader keeps the lower data; stat shows the upper"
    );
}

#[test]
fn opens_needing_the_upper_wait_for_lower_readers_then_see_the_new_data() {
    let s = Scratch::new("lpt-wait");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let content = b"lower content of f\n";
    fs::write(l.join("f"), content).unwrap();
    fs::write(l.join("g"), content).unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "lower_passthrough", &m);
    let f = m.join("f");

    // A writer while a reader holds the lower file: its open waits for the reader's close.
    let reader = fs::File::open(&f).unwrap();
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || {
            let mut w = fs::OpenOptions::new().append(true).open(&f).unwrap();
            w.write_all(b"APPENDED\n").unwrap();
            Instant::now()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "the writer's open waits for the reader"
    );
    let mut b = vec![0u8; 64];
    let n = reader.read_at(&mut b, 0).unwrap();
    assert_eq!(
        &b[..n],
        content,
        "the reader reads the lower data meanwhile"
    );
    let closed = Instant::now();
    drop(reader);
    let wrote = writer.join().unwrap();
    assert!(
        wrote.duration_since(closed) < Duration::from_secs(2),
        "the writer went on once the reader closed"
    );
    let mut want = content.to_vec();
    want.extend_from_slice(b"APPENDED\n");
    assert_eq!(fs::read(&f).unwrap(), want, "a new open sees the new data");
    assert_eq!(count(&m, "open_waited"), 1);
    assert_eq!(fs::read(l.join("f")).unwrap(), content, "lower untouched");

    // A copy-up without an open (truncate) while a reader is open: new opens, readers
    // too, wait for it and then see the upper data.
    let g = m.join("g");
    let reader = fs::File::open(&g).unwrap();
    truncate_path(&g, 3);
    let late = {
        let g = g.clone();
        std::thread::spawn(move || fs::read(g).unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!late.is_finished(), "the new reader waits for the old one");
    drop(reader);
    assert_eq!(
        late.join().unwrap(),
        b"low",
        "the new reader sees the upper"
    );
    assert_eq!(count(&m, "open_waited"), 2);

    // The opener itself holds the lower file open: after 5 s its write open fails with
    // ETXTBSY (and nothing is left waiting).
    fs::write(l.join("h"), content).unwrap();
    let h = m.join("h");
    let reader = fs::File::open(&h).unwrap();
    let t = Instant::now();
    let e = fs::OpenOptions::new().write(true).open(&h).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    drop(reader);
    fs::OpenOptions::new()
        .write(true)
        .open(&h)
        .unwrap()
        .write_all(b"NEW")
        .unwrap();
    assert_eq!(&fs::read(&h).unwrap()[..3], b"NEW");
}

#[test]
fn a_metadata_copy_up_keeps_passthrough_of_the_lower_data() {
    // metacopy=on: a chmod copies up the metadata only; the data stays the lower file's,
    // so new opens share the readers' backing file (no wait) and read the same bytes.
    let s = Scratch::new("lpt-meta");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    common::write_pattern(&l.join("f"), 100_000);
    let want = fs::read(l.join("f")).unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "lower_passthrough,metacopy=on", &m);
    let f = m.join("f");
    let reader = fs::File::open(&f).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let before = count(&m, "read");
    let t = Instant::now();
    assert_eq!(fs::read(&f).unwrap(), want);
    assert!(t.elapsed() < Duration::from_secs(2));
    let mut b = vec![0u8; 10];
    reader.read_at(&mut b, 0).unwrap();
    assert_eq!(b, want[..10]);
    assert_eq!(count(&m, "open_waited"), 0);
    assert_eq!(
        count(&m, "read") - before,
        0,
        "the data file through passthrough"
    );
    drop(reader);
    // A write copies the data up; the next open reads it.
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all(b"NEW")
        .unwrap();
    let got = fs::read(&f).unwrap();
    assert_eq!(&got[..3], b"NEW");
    assert_eq!(&got[3..], &want[3..]);
}

#[test]
fn racing_lower_readers_and_writers_lose_nothing() {
    // Readers open, read and close lower files (passthrough) in a loop while writers
    // append to the same files (each append copies up or writes the upper copy): no open
    // fails (the kernel would answer EIO to an open with the wrong backing file), no
    // append is lost, and every read returns the original bytes plus whole appended lines.
    let s = Scratch::new("lpt-race");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let orig = b"original line of the lower file\n".repeat(300);
    for i in 0..8 {
        fs::write(l.join(format!("f{i}")), &orig).unwrap();
    }
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "lower_passthrough", &m);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let line = b"appended\n";
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let (m, stop, orig) = (m.clone(), stop.clone(), orig.clone());
        readers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = m.join(format!("f{}", (n + t) % 8));
                // Held open a little, so writers' opens find readers on the lower file.
                let mut f =
                    fs::File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
                std::thread::sleep(Duration::from_millis(3));
                let mut got = Vec::new();
                f.read_to_end(&mut got).unwrap();
                drop(f);
                assert!(got.len() >= orig.len() && got[..orig.len()] == orig[..]);
                let tail = &got[orig.len()..];
                assert!(tail.len() % line.len() == 0 && tail.chunks(line.len()).all(|c| c == line));
                n += 1;
            }
            n
        }));
    }
    let mut writers = Vec::new();
    for t in 0..2u64 {
        let m = m.clone();
        writers.push(std::thread::spawn(move || {
            let mut appended = [0usize; 8];
            for k in 0..40u64 {
                let i = ((k * 7 + t * 3) % 8) as usize;
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(m.join(format!("f{i}")))
                    .unwrap_or_else(|e| panic!("open f{i} for append: {e}"));
                f.write_all(line).unwrap();
                appended[i] += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            appended
        }));
    }
    let mut total = [0usize; 8];
    for wr in writers {
        for (i, n) in wr.join().unwrap().iter().enumerate() {
            total[i] += n;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    for (i, n) in total.iter().enumerate() {
        let got = fs::read(m.join(format!("f{i}"))).unwrap();
        assert_eq!(got.len(), orig.len() + n * line.len(), "f{i}: appends lost");
    }
    eprintln!(
        "{reads} reads; opens that waited: {}",
        count(&m, "open_waited")
    );
}

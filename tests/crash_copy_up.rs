//! Crash safety of copy-up: the daemon is killed with SIGKILL while it copies a 1 GiB lower
//! file up, once the staged copy holds 10 %, 45 %, 85 % and a random share of the data (read
//! from the daemon's open staging file, so the kill lands inside the copy whatever the
//! machine's speed; a guess from the time of a first copy-up missed it on an idle machine),
//! and once after the copy finished. After each kill a fresh mount must succeed, the file must
//! be either the untouched lower file or the complete copy (never a partial one), and the
//! staging directory must be empty again.

mod common;

use std::fs;

use common::{clock_random, file_hash, write_pattern, Scratch, Stack, Strata};

const SIZE: u64 = 1 << 30;

#[test]
fn sigkill_during_a_1gib_copy_up_leaves_old_or_new_never_partial() {
    let s = Scratch::new("crash");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    write_pattern(&l.join("big"), SIZE);
    let lower = file_hash(&l.join("big"));
    let stack = Stack::one(&l, &u, &w);
    let full = {
        let _mnt = Strata::mount(&stack, "", &m);
        let t = std::time::Instant::now();
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("big"))
            .unwrap();
        t.elapsed()
    };
    let work = fs::canonicalize(w.join("work")).unwrap();
    assert_eq!(
        file_hash(&u.join("big")),
        lower,
        "an uninterrupted copy-up is complete"
    );
    let mut outcomes = Vec::new();
    // Early, middle, late, a random instant, and after the copy finished.
    for (round, permille) in [100u64, 450, 850, 50 + clock_random(900), 1500]
        .into_iter()
        .enumerate()
    {
        let _ = fs::remove_file(u.join("big"));
        let mut mnt = Strata::mount(&stack, "", &m);
        let path = m.join("big");
        let opener =
            std::thread::spawn(move || fs::OpenOptions::new().write(true).open(path).is_ok());
        let pid = mnt.pid();
        let t0 = std::time::Instant::now();
        if permille >= 1000 {
            while !opener.is_finished() && t0.elapsed() < std::time::Duration::from_secs(120) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        } else {
            let want = SIZE * permille / 1000;
            while !opener.is_finished()
                && staged_bytes(pid, &work) < want
                && t0.elapsed() < std::time::Duration::from_secs(120)
            {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        mnt.kill();
        let _ = opener.join();
        // Remount: must work, and show old or complete data.
        let mnt2 = Strata::mount(&stack, "", &m);
        assert_eq!(
            file_hash(&m.join("big")),
            lower,
            "round {round}: content through the mount"
        );
        let staged: Vec<_> = fs::read_dir(w.join("work")).unwrap().collect();
        assert!(
            staged.is_empty(),
            "round {round}: staging dir not cleaned: {staged:?}"
        );
        drop(mnt2);
        match fs::metadata(u.join("big")) {
            Ok(_) => {
                assert_eq!(
                    file_hash(&u.join("big")),
                    lower,
                    "round {round}: upper copy is complete"
                );
                outcomes.push((permille, "copied"));
            }
            Err(_) => outcomes.push((permille, "not copied")),
        }
        assert_eq!(
            file_hash(&l.join("big")),
            lower,
            "round {round}: lower untouched"
        );
    }
    assert!(
        outcomes.iter().any(|o| o.1 == "not copied"),
        "no kill landed inside a copy-up: {outcomes:?}"
    );
    eprintln!("full copy-up {full:?}; kill points (per mille of the data staged) and outcomes: {outcomes:?}");
}

/// Bytes already written to the copy daemon `pid` is staging in `work` (its open file there,
/// named or `O_TMPFILE`), by allocated blocks; 0 while it has none.
fn staged_bytes(pid: u32, work: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for e in fds.flatten() {
        let Ok(t) = fs::read_link(e.path()) else {
            continue;
        };
        // The daemon reaches the workdir through a private copy of its mount, so the link
        // reads ".../w/work/NAME" from that copy's root, not the host path.
        let staging = format!(
            "/{}/",
            work.file_name().unwrap_or_default().to_string_lossy()
        );
        let parent = work
            .parent()
            .and_then(|p| p.file_name())
            .unwrap_or_default();
        let staging = format!("/{}{staging}", parent.to_string_lossy());
        if t.to_string_lossy().contains(&staging) {
            if let Ok(md) = fs::metadata(e.path()) {
                if md.is_file() {
                    return md.blocks() * 512;
                }
            }
        }
    }
    0
}

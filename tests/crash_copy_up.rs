//! Crash safety of copy-up: the daemon is killed with SIGKILL at random instants while it
//! copies a 1 GiB lower file up. After each kill a fresh mount must succeed, the file must
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
    // How long one whole copy-up takes here, to spread the kill instants across it.
    let full = {
        let _mnt = Strata::mount(&stack, "", &m);
        let t = std::time::Instant::now();
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("big"))
            .unwrap();
        t.elapsed()
    };
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
        std::thread::sleep(full * permille as u32 / 1000);
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
    eprintln!("full copy-up {full:?}; kill instants (per mille of it) and outcomes: {outcomes:?}");
}

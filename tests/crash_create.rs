//! Crash during a create storm: files and directories made in place (pure upper and merged
//! directories) and over whiteouts of removed lower names (staged in the workdir and
//! renamed over), the daemon SIGKILLed at a random instant, then the branches mounted again:
//!
//! - the remount works, `workdir/work` is empty and no temporary name is in the upper;
//! - a removed lower name never shows its lower content again (its whiteout is never lost
//!   while the name is being replaced), and a directory made over one never shows the lower
//!   directory's content (it is opaque from the moment it shows);
//! - a file being created shows at most what any filesystem could after a crash: absent,
//!   or present with a prefix of its data (empty included); one whose fsync returned is
//!   complete.
//!
//! `STRATAFS_CRASH_LOOPS` rounds (default 8); `STRATAFS_CRASH_SEED` repeats a run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rng, Scratch, Stack, Strata};

#[derive(Debug, Clone, PartialEq)]
enum State {
    Absent,
    /// The lower file, untouched.
    LowerFile,
    /// The lower directory (with its file `x`), untouched.
    LowerDir,
    /// A directory made through the mount: never shows the lower `x`.
    Dir,
    /// Being written: absent or a prefix of `content(k, len)`.
    Partial(u64, usize),
    /// fsynced: exactly `content(k, len)`.
    New(u64, usize),
}

const N: usize = 24;

fn content(k: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ k).wrapping_mul(31) as u8)
        .collect()
}

type Model = BTreeMap<String, Vec<State>>;

fn set(m: &Mutex<Model>, n: &str, s: State) {
    m.lock().unwrap().insert(n.to_string(), vec![s]);
}

fn either(m: &Mutex<Model>, n: &str, s: State) {
    let mut m = m.lock().unwrap();
    let v = m.entry(n.to_string()).or_insert(vec![State::Absent]);
    if !v.contains(&s) {
        v.push(s);
    }
}

/// Creates `m/n` with `content(k, len)`, fsynced, recording each step.
fn new_file(m: &Path, model: &Mutex<Model>, n: &str, k: u64, len: usize) -> std::io::Result<()> {
    either(model, n, State::Partial(k, len));
    let data = content(k, len);
    let mut f = fs::File::create(m.join(n))?;
    for c in data.chunks(4096) {
        f.write_all(c)?;
    }
    f.sync_all()?;
    set(model, n, State::New(k, len));
    Ok(())
}

fn workload(m: PathBuf, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut k = 0u64;
    let r = (|| -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            let len = rng.below(20 << 10) as usize;
            let i = rng.below(N as u64) as usize;
            match rng.below(4) {
                0 => {
                    // A lower file removed (a whiteout), then created again over it.
                    let n = format!("g{i}");
                    if model.lock().unwrap()[&n] != vec![State::LowerFile] {
                        continue;
                    }
                    either(&model, &n, State::Absent);
                    fs::remove_file(m.join(&n))?;
                    set(&model, &n, State::Absent);
                    new_file(&m, &model, &n, k, len)?;
                }
                1 => {
                    // A lower directory removed, made again (opaque), a file in it.
                    let n = format!("d{i}");
                    if model.lock().unwrap()[&n] != vec![State::LowerDir] {
                        continue;
                    }
                    either(&model, &n, State::Absent);
                    // rm -rf removes `x` (a whiteout in the copied-up directory) first.
                    either(&model, &n, State::Dir);
                    fs::remove_dir_all(m.join(&n))?;
                    set(&model, &n, State::Absent);
                    either(&model, &n, State::Dir);
                    fs::create_dir(m.join(&n))?;
                    set(&model, &n, State::Dir);
                    new_file(&m, &model, &format!("{n}/n{k}"), k, len)?;
                }
                2 => {
                    // In place: the pure upper directory, the merged root, a merged dir.
                    let dir = ["new/", "", "ld/"][rng.below(3) as usize];
                    new_file(&m, &model, &format!("{dir}n{k}"), k, len)?;
                }
                _ => {
                    // A directory in place, a file in it.
                    let n = format!("nd{k}");
                    either(&model, &n, State::Dir);
                    fs::create_dir(m.join(&n))?;
                    set(&model, &n, State::Dir);
                    new_file(&m, &model, &format!("{n}/f"), k, len)?;
                }
            }
        }
        Ok(())
    })();
    let _ = r; // an error: the daemon is gone
}

fn check(m: &Path, model: &Model) -> Vec<String> {
    let mut bad = Vec::new();
    for (n, states) in model {
        let p = m.join(n);
        let md = fs::symlink_metadata(&p).ok();
        let ok = states.iter().any(|s| match s {
            State::Absent => md.is_none(),
            State::LowerFile => fs::read(&p).ok().as_deref() == Some(&b"lower\n"[..]),
            State::LowerDir => md.as_ref().is_some_and(|m| m.is_dir()) && p.join("x").exists(),
            State::Dir => {
                md.as_ref().is_some_and(|m| m.is_dir())
                    && fs::symlink_metadata(p.join("x")).is_err()
            }
            State::Partial(k, len) => {
                md.is_none()
                    || fs::read(&p)
                        .is_ok_and(|b| b.len() <= *len && b == content(*k, *len)[..b.len()])
            }
            State::New(k, len) => fs::read(&p).ok() == Some(content(*k, *len)),
        });
        if !ok {
            let got = match &md {
                None => "absent".to_string(),
                Some(md) if md.is_dir() => format!(
                    "a directory of {:?}",
                    fs::read_dir(&p)
                        .map(|r| r
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name())
                            .collect::<Vec<_>>())
                        .unwrap_or_default()
                ),
                Some(md) => format!("{} bytes", md.len()),
            };
            bad.push(format!("{n}: {got}, allowed {states:?}"));
        }
    }
    bad
}

fn temporaries(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('#') {
            out.push(p.clone());
        }
        if e.file_type().unwrap().is_dir() {
            temporaries(&p, out);
        }
    }
}

#[test]
fn sigkill_during_a_create_storm_loses_no_whiteout_and_shows_no_partial_name() {
    let rounds: u64 = common::env_parse("STRATAFS_CRASH_LOOPS").unwrap_or(8);
    let seed: u64 = common::env_parse("STRATAFS_CRASH_SEED")
        .unwrap_or_else(|| common::clock_random(u64::MAX / 1000) | 1);
    eprintln!("crash create: {rounds} rounds, STRATAFS_CRASH_SEED={seed}");
    let s = Scratch::new("crashcreate");
    let l = s.dir("l");
    fs::create_dir(l.join("ld")).unwrap();
    for i in 0..N {
        fs::write(l.join(format!("g{i}")), b"lower\n").unwrap();
        fs::create_dir(l.join(format!("d{i}"))).unwrap();
        fs::write(l.join(format!("d{i}/x")), b"lower x\n").unwrap();
    }
    let (u, w, m) = (s.path("u"), s.path("w"), s.dir("m"));
    let mut rng = Rng(seed);
    let mut ops = 0usize;
    for round in 0..rounds {
        let _ = fs::remove_dir_all(&u);
        let _ = fs::remove_dir_all(&w);
        fs::create_dir(&u).unwrap();
        fs::create_dir(&w).unwrap();
        let stack = Stack::one(&l, &u, &w);
        let mut model = Model::new();
        for i in 0..N {
            model.insert(format!("g{i}"), vec![State::LowerFile]);
            model.insert(format!("d{i}"), vec![State::LowerDir]);
        }
        let model = Arc::new(Mutex::new(model));
        let mut mnt = Strata::mount(&stack, "", &m);
        fs::create_dir(m.join("new")).unwrap();
        set(&model, "new", State::Dir);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (m, model, stop) = (m.clone(), model.clone(), stop.clone());
            let wseed = rng.next();
            std::thread::spawn(move || workload(m, model, stop, wseed))
        };
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        mnt.kill();
        drop(mnt);
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("workload thread");
        let mnt2 = Strata::mount(&stack, "", &m);
        let staged: Vec<_> = fs::read_dir(w.join("work")).unwrap().collect();
        assert!(
            staged.is_empty(),
            "round {round} (seed {seed}): staging left {staged:?}"
        );
        let model = model.lock().unwrap();
        ops += model.len();
        let bad = check(&m, &model);
        let mut temps = Vec::new();
        temporaries(&u, &mut temps);
        assert!(
            bad.is_empty() && temps.is_empty(),
            "round {round} (seed {seed}): {bad:#?}\ntemporaries in the upper: {temps:?}"
        );
        assert_eq!(mnt2.unmount().map(|s| s.success()), Some(true));
    }
    eprintln!("crash create: {rounds} rounds, {ops} names checked");
    assert!(
        ops > rounds as usize * (2 * N + 1),
        "the workload made nothing"
    );
}

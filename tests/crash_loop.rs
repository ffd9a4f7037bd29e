//! Crash loop: a mixed workload (copy-ups of lower files from 1 KiB to 5 MiB, new files
//! written and fsynced, renames, unlinks and whiteouts, mkdir/rmdir) runs through the
//! mount and the daemon is SIGKILLed at a random instant; then the branches are mounted
//! again and checked against the workload's own log:
//!
//! - the remount succeeds and the staging dir (`workdir/work`) is empty;
//! - every name shown is one the workload made or the lower had, never a temporary
//!   (`#…`) or marker name, and no temporary is left in the upper;
//! - every lower file shows either its lower content or the complete patched content
//!   the workload wrote (never a half-copied file: same size, same hash);
//! - every write whose fsync had returned before the kill is there, byte for byte
//!   (bytes lost must be 0); a write still in flight may be absent or partial (a prefix).
//!
//! The workload records a change only after the call (and, for data, its fsync) returned;
//! the one operation the kill interrupted may show either outcome.
//!
//! `STRATAFS_CRASH_LOOPS` rounds (default 10; `scripts/test.sh --crash-loops=50` for
//! the full run); `STRATAFS_CRASH_SEED` repeats a run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{file_hash, write_pattern, Rng, Scratch, Stack, Strata};

/// What a name may hold after the crash.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Absent,
    Dir,
    /// The lower file `i`, untouched.
    Lower(usize),
    /// The lower file `i` with the patch block written over its start.
    Patched(usize),
    /// A new file with the complete content `content(k, len)` (fsynced).
    New(u64, usize),
    /// A new file being written: absent, or any prefix of `content(k, len)`.
    Partial(u64, usize),
}

const PATCH: &[u8] = b"PATCHED BY THE CRASH WORKLOAD\n";
const LOWER_SIZES: [u64; 16] = [
    1 << 10,
    64 << 10,
    1 << 20,
    3 << 20,
    5 << 20,
    200 << 10,
    2 << 20,
    4 << 20,
    4 << 10,
    512 << 10,
    3 << 20,
    16 << 10,
    1 << 20,
    5 << 20,
    128 << 10,
    2 << 20,
];

fn content(k: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ k.wrapping_mul(131)).wrapping_mul(7) as u8 ^ (i / 4096) as u8)
        .collect()
}

fn lower_name(i: usize) -> String {
    if i % 3 == 2 {
        format!("ld{}/f{i}", i % 2)
    } else {
        format!("lf{i}")
    }
}

/// The workload's model: for each name, the states it may be in.
#[derive(Default)]
struct Model {
    names: BTreeMap<String, Vec<State>>,
    /// What was running when the kill came (label of the current operation).
    current: &'static str,
    ops_done: u64,
    synced_bytes: u64,
}

impl Model {
    fn certain(&self, n: &str) -> Option<&State> {
        match self.names.get(n) {
            Some(v) if v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }
    fn set(&mut self, n: &str, s: State) {
        self.names.insert(n.to_string(), vec![s]);
    }
    fn either(&mut self, n: &str, s: State) {
        let v = self
            .names
            .entry(n.to_string())
            .or_insert(vec![State::Absent]);
        if !v.contains(&s) {
            v.push(s);
        }
    }
}

/// Runs operations until one fails (the daemon is gone) or `stop` is set.
fn workload(m: PathBuf, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let pick = |rng: &mut Rng, model: &Model, f: &dyn Fn(&State) -> bool| {
            let c: Vec<String> = model
                .names
                .iter()
                .filter(|(_, v)| v.len() == 1 && f(&v[0]))
                .map(|(n, _)| n.clone())
                .collect();
            (!c.is_empty()).then(|| c[rng.below(c.len() as u64) as usize].clone())
        };
        let op = rng.below(100);
        let mut md = model.lock().unwrap();
        let result: std::io::Result<()> = if op < 30 {
            // Copy-up of a lower file: patch its start, fsync.
            let Some(n) = pick(&mut rng, &md, &|s| matches!(s, State::Lower(_))) else {
                continue;
            };
            let Some(State::Lower(i)) = md.certain(&n).cloned() else {
                continue;
            };
            md.current = if LOWER_SIZES[i] >= 1 << 20 {
                "copy-up (MiB)"
            } else {
                "copy-up (KiB)"
            };
            md.either(&n, State::Patched(i));
            drop(md);
            let r = fs::OpenOptions::new()
                .write(true)
                .open(m.join(&n))
                .and_then(|f| {
                    f.write_all_at(PATCH, 0)?;
                    f.sync_all()
                });
            md = model.lock().unwrap();
            if r.is_ok() {
                md.set(&n, State::Patched(i));
                md.synced_bytes += PATCH.len() as u64;
            }
            r
        } else if op < 55 {
            // A new file, written in pieces, then fsynced.
            let dir = ["", "ld0/", "nd/"][rng.below(3) as usize];
            if dir == "nd/" && md.certain("nd") != Some(&State::Dir) {
                continue;
            }
            let n = format!("{dir}n{k}");
            let len = 1 + rng.below(128 << 10) as usize;
            md.current = "write new file";
            md.either(&n, State::Partial(k, len));
            drop(md);
            let data = content(k, len);
            let r = fs::File::create(m.join(&n)).and_then(|mut f| {
                for c in data.chunks(64 << 10) {
                    f.write_all(c)?;
                }
                f.sync_all()
            });
            md = model.lock().unwrap();
            if r.is_ok() {
                md.set(&n, State::New(k, len));
                md.synced_bytes += len as u64;
            }
            r
        } else if op < 70 {
            // Rename a file (new, patched or lower) to a fresh name in the root.
            let Some(n) = pick(&mut rng, &md, &|s| {
                matches!(s, State::New(..) | State::Patched(_) | State::Lower(_))
            }) else {
                continue;
            };
            let s = md.certain(&n).cloned().unwrap_or(State::Absent);
            let to = format!("r{k}");
            md.current = if matches!(s, State::Lower(_)) {
                "rename (copy-up)"
            } else {
                "rename"
            };
            md.either(&n, State::Absent);
            md.either(&to, s.clone());
            drop(md);
            let r = fs::rename(m.join(&n), m.join(&to));
            md = model.lock().unwrap();
            if r.is_ok() {
                md.set(&n, State::Absent);
                md.set(&to, s);
            }
            r
        } else if op < 85 {
            // Unlink (a whiteout for lower names).
            let Some(n) = pick(&mut rng, &md, &|s| {
                matches!(s, State::New(..) | State::Patched(_) | State::Lower(_))
            }) else {
                continue;
            };
            md.current = "unlink";
            md.either(&n, State::Absent);
            drop(md);
            let r = fs::remove_file(m.join(&n));
            md = model.lock().unwrap();
            if r.is_ok() {
                md.set(&n, State::Absent);
            }
            r
        } else {
            // mkdir / rmdir of "nd" (rmdir only when empty in the model).
            let has = md.certain("nd") == Some(&State::Dir);
            let empty = !md
                .names
                .iter()
                .any(|(n, v)| n.starts_with("nd/") && v.iter().any(|s| *s != State::Absent));
            if has && !empty {
                continue;
            }
            md.current = if has { "rmdir" } else { "mkdir" };
            md.either("nd", if has { State::Absent } else { State::Dir });
            drop(md);
            let r = if has {
                fs::remove_dir(m.join("nd"))
            } else {
                fs::create_dir(m.join("nd"))
            };
            md = model.lock().unwrap();
            if r.is_ok() {
                md.set("nd", if has { State::Absent } else { State::Dir });
            }
            r
        };
        if result.is_err() {
            // The daemon is gone: this operation may or may not have happened.
            return;
        }
        md.ops_done += 1;
        md.current = "between operations";
    }
}

/// Every name under `root` (relative), without following links.
fn names(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let dir = e.file_type().unwrap().is_dir();
            out.insert(rel);
            if dir {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

struct Lower {
    hash: Vec<(u64, u64)>,
    patched: Vec<(u64, u64)>,
}

fn hash_bytes(b: &[u8]) -> (u64, u64) {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in b.chunks(1 << 20) {
        h.write(c);
    }
    (h.finish(), b.len() as u64)
}

/// Checks the remounted view against the model; returns (fsynced bytes lost, fsynced
/// bytes found, problems).
fn check(m: &Path, model: &Model, lower: &Lower) -> (u64, u64, Vec<String>) {
    let mut lost = 0u64;
    let mut found = 0u64;
    let mut bad = Vec::new();
    let shown = names(m);
    for n in &shown {
        let base = n.rsplit('/').next().unwrap_or(n);
        if base.starts_with('#') || base.starts_with(".wh.") {
            bad.push(format!("temporary or marker name visible: {n}"));
        }
        if !model.names.contains_key(n.as_str()) && n != "ld0" && n != "ld1" {
            bad.push(format!("unexpected name: {n}"));
        }
    }
    for (n, states) in &model.names {
        let p = m.join(n);
        let present = shown.contains(n.as_str());
        let ok = states.iter().any(|s| match s {
            State::Absent => !present,
            State::Dir => present && p.is_dir(),
            State::Lower(i) => present && file_hash(&p) == lower.hash[*i],
            State::Patched(i) => present && file_hash(&p) == lower.patched[*i],
            State::New(k, len) => present && fs::read(&p).ok() == Some(content(*k, *len)),
            State::Partial(k, len) => {
                !present
                    || fs::read(&p)
                        .map(|b| b.len() <= *len && b == content(*k, *len)[..b.len()])
                        .unwrap_or(false)
            }
        });
        if ok {
            match states.as_slice() {
                [State::New(_, len)] => found += *len as u64,
                [State::Patched(_)] => found += PATCH.len() as u64,
                _ => {}
            }
        } else {
            let got = if present {
                fs::read(&p)
                    .map(|b| format!("{} bytes, hash {:?}", b.len(), hash_bytes(&b)))
                    .unwrap_or_else(|e| format!("{e}"))
            } else {
                "absent".into()
            };
            bad.push(format!("{n}: {got}, allowed {states:?}"));
            // Bytes of fsynced data that are not there.
            if let [State::New(_, len)] = states.as_slice() {
                lost += *len as u64;
            }
            if let [State::Patched(_)] = states.as_slice() {
                lost += PATCH.len() as u64;
            }
        }
    }
    (lost, found, bad)
}

#[test]
fn sigkill_at_random_points_of_a_mixed_workload() {
    let rounds: u64 = common::env_parse("STRATAFS_CRASH_LOOPS").unwrap_or(10);
    let seed: u64 = common::env_parse("STRATAFS_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42)
    });
    eprintln!("crash loop: {rounds} rounds, STRATAFS_CRASH_SEED={seed}");
    let s = Scratch::new("crashloop");
    let l = s.dir("l");
    fs::create_dir_all(l.join("ld0")).unwrap();
    fs::create_dir_all(l.join("ld1")).unwrap();
    let mut lower = Lower {
        hash: Vec::new(),
        patched: Vec::new(),
    };
    for (i, size) in LOWER_SIZES.iter().enumerate() {
        let p = l.join(lower_name(i));
        write_pattern(&p, *size);
        let mut b = fs::read(&p).unwrap();
        lower.hash.push(file_hash(&p));
        b[..PATCH.len()].copy_from_slice(PATCH);
        lower.patched.push(hash_bytes(&b));
    }
    let (u, w, m) = (s.path("u"), s.path("w"), s.dir("m"));
    let mut rng = Rng(seed | 1);
    let mut landed: BTreeMap<&'static str, u32> = BTreeMap::new();
    let (mut survived, mut lost_total, mut synced_total, mut ops_total, mut found_total) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for round in 0..rounds {
        let _ = fs::remove_dir_all(&u);
        let _ = fs::remove_dir_all(&w);
        fs::create_dir(&u).unwrap();
        fs::create_dir(&w).unwrap();
        let stack = Stack::one(&l, &u, &w);
        let mut model = Model::default();
        for i in 0..LOWER_SIZES.len() {
            model.set(&lower_name(i), State::Lower(i));
        }
        let model = Arc::new(Mutex::new(model));
        let stop = Arc::new(AtomicBool::new(false));
        let mut mnt = Strata::mount(&stack, "", &m);
        let worker = {
            let (m, model, stop) = (m.clone(), model.clone(), stop.clone());
            let wseed = rng.next();
            std::thread::spawn(move || workload(m, model, stop, wseed))
        };
        let delay = Duration::from_millis(20 + rng.below(700));
        let start = Instant::now();
        while start.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(5));
        }
        let at = model.lock().unwrap().current;
        mnt.kill();
        drop(mnt);
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("workload thread");
        // Remount the same branches: must work, staging must be empty.
        let mnt2 = Strata::mount(&stack, "", &m);
        let staged: Vec<_> = fs::read_dir(w.join("work")).unwrap().collect();
        assert!(
            staged.is_empty(),
            "round {round} (seed {seed}): staging not cleaned: {staged:?}"
        );
        let model = model.lock().unwrap();
        let (lost, found, bad) = check(&m, &model, &lower);
        let temps: Vec<String> = names(&u)
            .into_iter()
            .filter(|n| n.rsplit('/').next().unwrap_or(n).starts_with('#'))
            .collect();
        assert!(
            bad.is_empty() && temps.is_empty(),
            "round {round} (seed {seed}, kill during {at:?} after {delay:?}): {bad:#?}\ntemporaries in the upper: {temps:?}"
        );
        assert_eq!(lost, 0);
        let st = mnt2.unmount();
        assert!(
            st.is_some_and(|s| s.success()),
            "round {round}: exit {st:?}"
        );
        *landed.entry(at).or_default() += 1;
        survived += 1;
        lost_total += lost;
        found_total += found;
        synced_total += model.synced_bytes;
        ops_total += model.ops_done;
    }
    assert!(
        ops_total > 0 && synced_total > 0,
        "the workload did nothing"
    );
    eprintln!(
        "crash loop (seed {seed}): {survived}/{rounds} kills survived, {ops_total} operations completed, \
         {synced_total} bytes written and fsynced, {found_total} fsynced bytes still live at the kill and \
         found intact after the remount, {lost_total} bytes lost; kills landed during: {landed:?}"
    );
}

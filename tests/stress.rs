//! Concurrency stress: 8 threads doing create/write/rename/unlink/readdir/mkdir/rmdir/
//! link/truncate and copy-ups of lower files in the same few directories (merged with two
//! lower layers, lower-only, upper-only), for `STRATAFS_STRESS_SECS` seconds (default 15;
//! `scripts/stress.sh` runs it longer).
//!
//! Each thread owns the names that start with `t<N>-` (files and directories it created,
//! plus lower files and a lower directory made for it) and keeps a model of them: which
//! names exist, which are hard links of one file, and the content each file last got.
//! Every thread also works on contended names nobody owns (copy-up races on the same lower
//! files, mkdir/rmdir/rename/create/unlink of the same names), where ENOENT/EEXIST/ENOTEMPTY
//! are the expected outcomes of losing a race.
//!
//! Checked: no unexpected errno (EIO included) on any operation, the daemon stays up, the
//! run ends within its time plus a margin (else the daemon's and the workers' kernel stacks
//! are printed, the FUSE connection aborted, and the test fails), readdir always lists
//! exactly the thread's own names, every read returns what the model says, no file is lost
//! or appears from nowhere, and afterwards the mounted view equals a fresh remount of the
//! same branches and the kernel overlayfs' view of them.
//!
//! Environment: STRATAFS_STRESS_SECS (default 15), STRATAFS_STRESS_THREADS (default 8),
//! STRATAFS_STRESS_TRACE=DIR (each worker's namespace changes and every failure, as files
//! in DIR, to replay a failure); with STRATAFS_TEST_LOG=DIR and RUST_LOG=stratafs=debug
//! the daemon logs every failed request there too.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_same, mount_type, snapshot, Kernel, Scratch, Stack, Strata};

const THREADS: usize = 8;
/// Shared directories: merged with both lowers and the upper, lower-only, upper-only, root.
const SHARED: [&str; 4] = ["shared0", "shared1", "shared2", ""];
const COMMON_LOWER: usize = 6;
const LOWER_PER_THREAD: usize = 4;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

fn lower_content(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    pattern(seed, 1000 + (seed % 5000) as usize)
}

/// What one thread believes about its own names.
#[derive(Default)]
struct Model {
    /// Path (relative to the mount) → file id, or None for a directory.
    names: BTreeMap<PathBuf, Option<u64>>,
    content: HashMap<u64, Vec<u8>>,
    next_id: u64,
}

impl Model {
    fn new_file(&mut self, p: PathBuf, data: Vec<u8>) {
        self.next_id += 1;
        self.content.insert(self.next_id, data);
        self.names.insert(p, Some(self.next_id));
    }
    fn files(&self) -> Vec<PathBuf> {
        self.names
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }
    fn dirs(&self) -> Vec<PathBuf> {
        self.names
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }
    fn children(&self, dir: &Path) -> BTreeSet<Vec<u8>> {
        self.names
            .keys()
            .filter(|k| k.parent() == Some(dir))
            .map(|k| k.file_name().unwrap().as_bytes().to_vec())
            .collect()
    }
    fn drop_name(&mut self, p: &Path) {
        if let Some(Some(id)) = self.names.remove(p) {
            if !self.names.values().any(|v| *v == Some(id)) {
                self.content.remove(&id);
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    by_op: BTreeMap<&'static str, u64>,
    /// Expected losses of races on contended names, by errno.
    expected: BTreeMap<i32, u64>,
    /// Everything else, by errno (must stay empty).
    unexpected: BTreeMap<i32, u64>,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, msg: String) {
        if let Some(dir) = std::env::var_os("STRATAFS_STRESS_TRACE") {
            let _ = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join("failures.log"))
                .and_then(|mut f| writeln!(f, "{msg}"));
        }
        if self.failures.len() < 20 {
            self.failures.push(msg);
        }
    }
    fn io(&mut self, what: &str, e: std::io::Error) {
        let n = e.raw_os_error().unwrap_or(-1);
        *self.unexpected.entry(n).or_default() += 1;
        self.fail(format!("{what}: {e}"));
    }
    fn contended(&mut self, what: &str, r: std::io::Result<()>, ok: &[i32]) {
        if let Err(e) = r {
            let n = e.raw_os_error().unwrap_or(-1);
            if ok.contains(&n) {
                *self.expected.entry(n).or_default() += 1;
            } else {
                self.io(what, e);
            }
        }
    }
}

struct Worker {
    t: usize,
    mnt: PathBuf,
    rng: Rng,
    model: Model,
    tally: Tally,
    serial: u64,
    /// Namespace changes done, when STRATAFS_STRESS_TRACE=DIR asks for them (written to
    /// DIR/t<N>.log after the run).
    trace: Option<Vec<String>>,
    /// EXDEV is a lost race for a rename or a link (two writable branches, `Shape::Pool`).
    exdev_ok: bool,
}

impl Worker {
    fn new_name(&mut self, kind: &str) -> PathBuf {
        self.serial += 1;
        let dirs = self.model.dirs();
        let parent = if !dirs.is_empty() && self.rng.below(4) == 0 {
            dirs[self.rng.below(dirs.len())].clone()
        } else {
            PathBuf::from(SHARED[self.rng.below(SHARED.len())])
        };
        parent.join(format!("t{}-{kind}{}", self.t, self.serial))
    }

    fn pick_file(&mut self) -> Option<PathBuf> {
        let f = self.model.files();
        (!f.is_empty()).then(|| f[self.rng.below(f.len())].clone())
    }

    fn step(&mut self) {
        let op = self.rng.below(100);
        let name = match op {
            0..=14 => self.create(),
            15..=29 => self.write(),
            30..=36 => self.truncate(),
            37..=46 => self.rename(),
            47..=54 => self.unlink(),
            55..=59 => self.mkdir(),
            60..=63 => self.rmdir(),
            64..=68 => self.link(),
            69..=80 => self.readdir(),
            81..=88 => self.verify(),
            89..=93 => self.contended_copy_up(),
            _ => self.contended_names(),
        };
        self.tally.ops += 1;
        *self.tally.by_op.entry(name).or_default() += 1;
    }

    fn note(&mut self, what: String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(what);
        }
    }

    fn create(&mut self) -> &'static str {
        let p = self.new_name("f");
        self.serial += 1;
        let data = pattern(self.serial * 31 + self.t as u64, self.rng.below(8192));
        match fs::File::create(self.mnt.join(&p)).and_then(|mut f| f.write_all(&data)) {
            Ok(()) => {
                self.note(format!("create {}", p.display()));
                self.model.new_file(p, data)
            }
            Err(e) => self.tally.io(&format!("create {}", p.display()), e),
        }
        "create"
    }

    fn write(&mut self) -> &'static str {
        let Some(p) = self.pick_file() else {
            return "write";
        };
        let id = self.model.names[&p].unwrap();
        let cur = self.model.content[&id].len();
        let off = self.rng.below(cur + 100);
        self.serial += 1;
        let data = pattern(self.serial, 1 + self.rng.below(4096));
        let r = fs::OpenOptions::new()
            .write(true)
            .open(self.mnt.join(&p))
            .and_then(|f| f.write_all_at(&data, off as u64));
        match r {
            Ok(()) => {
                let c = self.model.content.get_mut(&id).unwrap();
                if c.len() < off + data.len() {
                    c.resize(off + data.len(), 0);
                }
                c[off..off + data.len()].copy_from_slice(&data);
            }
            Err(e) => {
                let again = fs::symlink_metadata(self.mnt.join(&p)).map(|m| m.ino());
                let reopen = fs::OpenOptions::new()
                    .write(true)
                    .open(self.mnt.join(&p))
                    .map(|_| ());
                self.tally.io(
                    &format!(
                        "write {} (lstat after: {again:?}, open again: {reopen:?})",
                        p.display()
                    ),
                    e,
                )
            }
        }
        "write"
    }

    fn truncate(&mut self) -> &'static str {
        let Some(p) = self.pick_file() else {
            return "truncate";
        };
        let id = self.model.names[&p].unwrap();
        let len = self.rng.below(self.model.content[&id].len() + 3000);
        let r = fs::OpenOptions::new()
            .write(true)
            .open(self.mnt.join(&p))
            .and_then(|f| f.set_len(len as u64));
        match r {
            Ok(()) => self.model.content.get_mut(&id).unwrap().resize(len, 0),
            Err(e) => self.tally.io(&format!("truncate {}", p.display()), e),
        }
        "truncate"
    }

    fn rename(&mut self) -> &'static str {
        let names: Vec<PathBuf> = self.model.names.keys().cloned().collect();
        if names.is_empty() {
            return "rename";
        }
        let from = names[self.rng.below(names.len())].clone();
        let is_dir = self.model.names[&from].is_none();
        let files = self.model.files();
        // A third of file renames replace another file of ours.
        let to = if !is_dir && files.len() > 1 && self.rng.below(3) == 0 {
            files[self.rng.below(files.len())].clone()
        } else {
            self.new_name(if is_dir { "d" } else { "f" })
        };
        if to == from || to.starts_with(&from) {
            return "rename";
        }
        match fs::rename(self.mnt.join(&from), self.mnt.join(&to)) {
            Ok(()) => {
                self.note(format!("rename {} {}", from.display(), to.display()));
                let (a, b) = (self.model.names[&from], self.model.names.get(&to).copied());
                if a.is_some() && a == b.flatten() {
                    // Two links of one file: rename(2) does nothing.
                    return "rename";
                }
                self.model.drop_name(&to);
                let moved: Vec<(PathBuf, Option<u64>)> = self
                    .model
                    .names
                    .iter()
                    .filter(|(k, _)| k.starts_with(&from))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (k, v) in moved {
                    self.model.names.remove(&k);
                    let rest = k.strip_prefix(&from).unwrap();
                    let nk = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    self.model.names.insert(nk, v);
                }
            }
            Err(e) => {
                let what = format!("rename {} {}", from.display(), to.display());
                self.cross_branch(&what, e)
            }
        }
        "rename"
    }

    fn unlink(&mut self) -> &'static str {
        let Some(p) = self.pick_file() else {
            return "unlink";
        };
        match fs::remove_file(self.mnt.join(&p)) {
            Ok(()) => {
                self.note(format!("unlink {}", p.display()));
                self.model.drop_name(&p)
            }
            Err(e) => self.tally.io(&format!("unlink {}", p.display()), e),
        }
        "unlink"
    }

    fn mkdir(&mut self) -> &'static str {
        let p = self.new_name("d");
        match fs::create_dir(self.mnt.join(&p)) {
            Ok(()) => {
                self.note(format!("mkdir {}", p.display()));
                self.model.names.insert(p, None);
            }
            Err(e) => self.tally.io(&format!("mkdir {}", p.display()), e),
        }
        "mkdir"
    }

    fn rmdir(&mut self) -> &'static str {
        let empty: Vec<PathBuf> = self
            .model
            .dirs()
            .into_iter()
            .filter(|d| self.model.children(d).is_empty())
            .collect();
        if empty.is_empty() {
            return "rmdir";
        }
        let p = empty[self.rng.below(empty.len())].clone();
        match fs::remove_dir(self.mnt.join(&p)) {
            Ok(()) => {
                self.note(format!("rmdir {}", p.display()));
                self.model.names.remove(&p);
            }
            Err(e) => self.tally.io(&format!("rmdir {}", p.display()), e),
        }
        "rmdir"
    }

    fn link(&mut self) -> &'static str {
        let Some(p) = self.pick_file() else {
            return "link";
        };
        let to = self.new_name("h");
        match fs::hard_link(self.mnt.join(&p), self.mnt.join(&to)) {
            Ok(()) => {
                self.note(format!("link {} {}", p.display(), to.display()));
                let id = self.model.names[&p];
                self.model.names.insert(to, id);
            }
            Err(e) => {
                let what = format!("link {} {}", p.display(), to.display());
                self.cross_branch(&what, e)
            }
        }
        "link"
    }

    /// A failed rename or link: EXDEV between two writable branches is a lost race where
    /// the mount has two (`exdev_ok`), anything else unexpected.
    fn cross_branch(&mut self, what: &str, e: std::io::Error) {
        let ok: &[i32] = if self.exdev_ok { &[libc::EXDEV] } else { &[] };
        self.tally.contended(what, Err(e), ok)
    }

    fn readdir(&mut self) -> &'static str {
        let mut dirs: Vec<PathBuf> = SHARED.iter().map(PathBuf::from).collect();
        dirs.extend(self.model.dirs());
        let d = dirs[self.rng.below(dirs.len())].clone();
        let listed = fs::read_dir(self.mnt.join(&d)).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect::<std::io::Result<Vec<_>>>()
        });
        match listed {
            Ok(l) => {
                let prefix = format!("t{}-", self.t);
                let mine: BTreeSet<Vec<u8>> = l
                    .into_iter()
                    .filter(|n| n.starts_with(prefix.as_bytes()))
                    .collect();
                let want = self.model.children(&d);
                if mine != want {
                    let lost: Vec<_> = want
                        .difference(&mine)
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect();
                    let extra: Vec<_> = mine
                        .difference(&want)
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect();
                    self.tally.fail(format!(
                        "readdir {}: missing {lost:?}, unexpected {extra:?}",
                        d.display()
                    ));
                }
            }
            Err(e) => self.tally.io(&format!("readdir {}", d.display()), e),
        }
        "readdir"
    }

    fn verify(&mut self) -> &'static str {
        let Some(p) = self.pick_file() else {
            return "read";
        };
        let id = self.model.names[&p].unwrap();
        match fs::read(self.mnt.join(&p)) {
            Ok(d) if d == self.model.content[&id] => {}
            Ok(d) => self.tally.fail(format!(
                "read {}: {} bytes, model has {}",
                p.display(),
                d.len(),
                self.model.content[&id].len()
            )),
            Err(e) => self.tally.io(&format!("read {}", p.display()), e),
        }
        "read"
    }

    /// Everyone opens the same lower files for writing (a copy-up race) or reads them: the
    /// content is always the whole lower content.
    fn contended_copy_up(&mut self) -> &'static str {
        let k = self.rng.below(COMMON_LOWER);
        let name = format!("common{k}");
        let p = self.mnt.join("shared1").join(&name);
        let r = if self.rng.below(2) == 0 {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .and_then(|mut f| {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).map(|_| v)
                })
        } else {
            fs::read(&p)
        };
        match r {
            Ok(d) if d == lower_content(&name) => {}
            Ok(d) => self.tally.fail(format!(
                "shared1/{name}: {} bytes, not the lower content",
                d.len()
            )),
            Err(e) => self.tally.io(&format!("copy-up shared1/{name}"), e),
        }
        "copy-up-race"
    }

    /// mkdir/rmdir/rename/create/unlink of names every thread uses.
    fn contended_names(&mut self) -> &'static str {
        let k = self.rng.below(3);
        let (a, b) = (
            self.mnt.join(format!("shared0/hot{k}")),
            self.mnt.join(format!("shared2/hot{k}")),
        );
        let racy = [
            libc::ENOENT,
            libc::EEXIST,
            libc::ENOTEMPTY,
            libc::ENOTDIR,
            libc::EISDIR,
        ];
        let mut racy_rename = racy.to_vec();
        if self.exdev_ok {
            racy_rename.push(libc::EXDEV);
        }
        match self.rng.below(8) {
            0 => self.tally.contended("mkdir hot", fs::create_dir(&a), &racy),
            1 => self.tally.contended("rmdir hot", fs::remove_dir(&a), &racy),
            2 => self
                .tally
                .contended("rename hot", fs::rename(&a, &b), &racy_rename),
            3 => self
                .tally
                .contended("rename hot back", fs::rename(&b, &a), &racy_rename),
            4 => {
                let r = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(b.with_extension("f"))
                    .and_then(|mut f| f.write_all(b"x"));
                self.tally.contended("create hot", r, &racy)
            }
            5 => self
                .tally
                .contended("unlink hot", fs::remove_file(b.with_extension("f")), &racy),
            6 => self
                .tally
                .contended("create in hot", fs::write(a.join("in"), b"in"), &racy),
            _ => self
                .tally
                .contended("unlink in hot", fs::remove_file(a.join("in")), &racy),
        }
        "contended"
    }

    /// After the run: the whole tree holds exactly the thread's names, with its content.
    fn final_check(&mut self, all: &BTreeMap<Vec<u8>, common::Entry>) {
        let prefix = format!("t{}-", self.t);
        let seen: BTreeSet<PathBuf> = all
            .keys()
            .map(|k| PathBuf::from(std::ffi::OsStr::from_bytes(k)))
            .filter(|p| {
                p.file_name()
                    .map(|n| n.as_bytes().starts_with(prefix.as_bytes()))
                    .unwrap_or(false)
            })
            .collect();
        let want: BTreeSet<PathBuf> = self.model.names.keys().cloned().collect();
        for p in want.difference(&seen) {
            self.tally.fail(format!("lost: {}", p.display()));
        }
        for p in seen.difference(&want) {
            self.tally.fail(format!("appeared: {}", p.display()));
        }
        for p in self.model.files() {
            let id = self.model.names[&p].unwrap();
            match fs::read(self.mnt.join(&p)) {
                Ok(d) if d == self.model.content[&id] => {}
                Ok(_) => self.tally.fail(format!("final content of {}", p.display())),
                Err(e) => self.tally.io(&format!("final read {}", p.display()), e),
            }
        }
    }
}

fn build_layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (top, base, u, w) = (s.dir("top"), s.dir("base"), s.dir("u"), s.dir("w"));
    for d in ["shared0", "shared1"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::create_dir_all(top.join("shared0")).unwrap();
    fs::create_dir_all(top.join("shared1")).unwrap();
    fs::create_dir_all(u.join("shared0")).unwrap();
    fs::create_dir_all(u.join("shared2")).unwrap();
    for k in 0..COMMON_LOWER {
        let n = format!("common{k}");
        fs::write(base.join("shared1").join(&n), lower_content(&n)).unwrap();
    }
    for t in 0..THREADS {
        for k in 0..LOWER_PER_THREAD {
            let layer = if k % 2 == 0 { &top } else { &base };
            let dir = ["shared0", "shared1"][k / 2 % 2];
            let n = format!("t{t}-low{k}");
            fs::write(layer.join(dir).join(&n), lower_content(&n)).unwrap();
        }
        let d = base.join(format!("shared0/t{t}-lowdir"));
        fs::create_dir_all(&d).unwrap();
        for k in 0..3 {
            let n = format!("t{t}-in{k}");
            fs::write(d.join(&n), lower_content(&n)).unwrap();
        }
        // A lower file with two names: two inodes until one is copied up (the kernel
        // overlayfs' rule), so the model has two files of the same content.
        let n = format!("t{t}-hla");
        fs::write(top.join("shared0").join(&n), lower_content(&n)).unwrap();
        fs::hard_link(
            top.join("shared0").join(&n),
            top.join("shared1").join(format!("t{t}-hlb")),
        )
        .unwrap();
        // A file of the thread in the upper from the start.
        let n = format!("t{t}-up");
        fs::write(u.join("shared0").join(&n), lower_content(&n)).unwrap();
    }
    (top, base, u, w)
}

fn initial_model(t: usize) -> Model {
    let mut m = Model::default();
    for k in 0..LOWER_PER_THREAD {
        let dir = ["shared0", "shared1"][k / 2 % 2];
        let n = format!("t{t}-low{k}");
        m.new_file(Path::new(dir).join(&n), lower_content(&n));
    }
    let d = PathBuf::from(format!("shared0/t{t}-lowdir"));
    m.names.insert(d.clone(), None);
    for k in 0..3 {
        let n = format!("t{t}-in{k}");
        m.new_file(d.join(&n), lower_content(&n));
    }
    let n = format!("t{t}-hla");
    m.new_file(Path::new("shared0").join(&n), lower_content(&n));
    m.new_file(
        Path::new("shared1").join(format!("t{t}-hlb")),
        lower_content(&n),
    );
    let n = format!("t{t}-up");
    m.new_file(Path::new("shared0").join(&n), lower_content(&n));
    m
}

/// Lists and reads every entry of the mount; errors, with what each branch holds of the
/// name (the entry itself, its whiteouts in both formats).
fn walk_and_read(m: &Path, branches: &[&Path]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(d) = todo.pop() {
        let names: Vec<_> = match fs::read_dir(m.join(&d)) {
            Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
            Err(e) => {
                errors.push(format!("readdir {}: {e}", d.display()));
                continue;
            }
        };
        for n in names {
            let rel = d.join(&n);
            let p = m.join(&rel);
            let r = fs::symlink_metadata(&p).and_then(|md| {
                if md.is_dir() {
                    todo.push(rel.clone());
                } else if md.is_file() {
                    fs::read(&p)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                let again = fs::symlink_metadata(&p).map(|md| md.ino());
                let mut held = String::new();
                for b in branches {
                    let wh = format!(".wh.{}", n.to_string_lossy());
                    for q in [b.join(&rel), b.join(&d).join(&wh)] {
                        if let Ok(md) = fs::symlink_metadata(&q) {
                            held.push_str(&format!(
                                "  {}: {:o} ino {} nlink {} size {} xattrs {:?}\n",
                                q.display(),
                                md.mode(),
                                md.ino(),
                                md.nlink(),
                                md.size(),
                                common::snapshot(&q)
                                    .values()
                                    .next()
                                    .map(|e| e.xattrs.clone())
                            ));
                        }
                    }
                }
                errors.push(format!(
                    "{}: {e} (lstat again: {again:?}); on the branches:\n{held}",
                    rel.display()
                ));
            }
        }
    }
    errors
}

/// Kernel stacks of every task of `pid` (root can read them), for a hang report.
fn task_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)\n");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let rd = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        out.push_str(&format!(
            "task {} ({}) wchan={}\n{}\n",
            t.file_name().to_string_lossy(),
            rd("comm").trim(),
            rd("wchan"),
            rd("stack")
        ));
    }
    out
}

/// Aborts the FUSE connection of `mnt`, so requests stuck in it return (ENOTCONN).
fn abort_connection(mnt: &Path) {
    if let Ok(md) = fs::metadata(mnt) {
        let minor = (md.dev() & 0xff) | ((md.dev() >> 12) & !0xff);
        let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
    }
}

/// How the branches are given to the mount.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `lowerdir=top:base,upperdir=u,workdir=w`: the kernel overlayfs's shape, compared
    /// with the kernel overlayfs afterwards.
    Kernel,
    /// `br=u=rw:w2=rw:top=ro+wh:base=ro+wh` (aufs's branch model): a second writable
    /// branch `w2`, empty at start. The kernel cannot mount two writable branches: only
    /// the fresh remount is compared. A rename or link across the writable branches
    /// returns EXDEV (as mv(1) expects of it): a lost race for those two operations.
    Pool,
}

/// The branches of a run, and how they are mounted.
struct Branches {
    shape: Shape,
    top: PathBuf,
    base: PathBuf,
    u: PathBuf,
    w: PathBuf,
    w2: PathBuf,
}

impl Branches {
    fn new(s: &Scratch, shape: Shape) -> Branches {
        let (top, base, u, w) = build_layers(s);
        let w2 = s.dir("w2");
        Branches {
            shape,
            top,
            base,
            u,
            w,
            w2,
        }
    }

    /// The `-o` string of a mount with the test's `opts`.
    fn options(&self, opts: &str) -> String {
        let mut o = match self.shape {
            Shape::Kernel => format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                self.top.display(),
                self.base.display(),
                self.u.display(),
                self.w.display()
            ),
            Shape::Pool => format!(
                "br={}=rw:{}=rw:{}=ro+wh:{}=ro+wh",
                self.u.display(),
                self.w2.display(),
                self.top.display(),
                self.base.display()
            ),
        };
        if !opts.is_empty() {
            o.push(',');
            o.push_str(opts);
        }
        o
    }

    fn mount(&self, opts: &str, m: &Path) -> Strata {
        Strata::mount_opts(&self.options(opts), m)
    }

    /// Every branch, top first.
    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.u.as_path()];
        if self.shape == Shape::Pool {
            v.push(&self.w2);
        }
        v.extend([self.top.as_path(), self.base.as_path()]);
        v
    }

    /// The staging directories that must be empty after the run.
    fn staging(&self) -> Vec<PathBuf> {
        match self.shape {
            Shape::Kernel => vec![self.w.join("work")],
            Shape::Pool => vec![
                self.u.with_file_name("u.stratafs-work").join("work"),
                self.w2.join(".wh..wh.orph/work"),
            ],
        }
    }
}

/// Runs `threads` workers on `m` for `secs` seconds; the daemon `pid` must answer within
/// the time plus a margin. The workers (sorted by thread), the run's seconds and seed.
fn run_workers(
    m: &Path,
    pid: u32,
    threads: usize,
    secs: u64,
    exdev_ok: bool,
) -> (Vec<Worker>, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let results: Arc<Mutex<Vec<Worker>>> = Arc::new(Mutex::new(Vec::new()));
    let seed = common::clock_random(1 << 30) + 1;
    for t in 0..threads {
        let (stop, done, tx, results) = (stop.clone(), done.clone(), tx.clone(), results.clone());
        let mp = m.to_path_buf();
        std::thread::spawn(move || {
            let mut wk = Worker {
                t,
                mnt: mp,
                rng: Rng(seed.wrapping_mul(t as u64 + 7) | 1),
                model: initial_model(t),
                tally: Tally::default(),
                serial: 0,
                trace: std::env::var_os("STRATAFS_STRESS_TRACE").map(|_| Vec::new()),
                exdev_ok,
            };
            while !stop.load(Ordering::Relaxed) {
                wk.step();
            }
            results.lock().unwrap().push(wk);
            done.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(());
        });
    }
    drop(tx);
    // Watchdog: the run must end within its time plus a margin.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs + 60);
    while done.load(Ordering::SeqCst) < threads as u64 {
        if start.elapsed() >= Duration::from_secs(secs) {
            stop.store(true, Ordering::Relaxed);
        }
        if Instant::now() >= deadline {
            let mut report =
                format!("stress did not finish within {secs} s + 60 s\ndaemon {pid}:\n");
            report.push_str(&task_stacks(pid));
            report.push_str("test process (workers):\n");
            report.push_str(&task_stacks(std::process::id()));
            abort_connection(m);
            panic!("{report}");
        }
        let _ = rx.recv_timeout(Duration::from_millis(200));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut workers = std::mem::take(&mut *results.lock().unwrap());
    workers.sort_by_key(|w| w.t);
    (workers, elapsed, seed)
}

/// Adds up the workers' tallies, prints the run's line and fails on any failure or
/// unexpected errno.
fn report(label: &str, workers: &[Worker], elapsed: f64, entries: usize, seed: u64) {
    let mut ops = 0;
    let mut by_op: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    let mut unexpected: BTreeMap<i32, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for wk in workers {
        ops += wk.tally.ops;
        for (k, v) in &wk.tally.by_op {
            *by_op.entry(k).or_default() += v;
        }
        for (k, v) in &wk.tally.expected {
            *expected.entry(*k).or_default() += v;
        }
        for (k, v) in &wk.tally.unexpected {
            *unexpected.entry(*k).or_default() += v;
        }
        failures.extend(wk.tally.failures.iter().map(|f| format!("t{}: {f}", wk.t)));
    }
    let named = |m: &BTreeMap<i32, u64>| -> String {
        m.iter()
            .map(|(e, n)| format!("{}={n}", std::io::Error::from_raw_os_error(*e)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let threads = workers.len();
    println!(
        "stress[{label}]: {threads} threads, {elapsed:.1} s, {ops} ops ({:.0} ops/s), \
         entries at end {entries}, unexpected errors {{{}}}, lost races {{{}}}, ops by kind {by_op:?}, seed {seed}",
        ops as f64 / elapsed,
        named(&unexpected),
        named(&expected),
    );
    assert!(
        ops > threads as u64 * 10,
        "the workers did almost nothing ({ops} ops)"
    );
    assert!(
        failures.is_empty(),
        "{} failures (first ones):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "unexpected errors: {}",
        named(&unexpected)
    );
}

fn stress(tag: &str, shape: Shape, opts: &str) {
    let secs: u64 = common::env_parse("STRATAFS_STRESS_SECS").unwrap_or(15);
    let threads: usize = common::env_parse("STRATAFS_STRESS_THREADS").unwrap_or(THREADS);
    let s = Scratch::new(tag);
    let b = Branches::new(&s, shape);
    let m = s.dir("m");
    let mnt = b.mount(opts, &m);
    let pid = mnt.pid();
    let (mut workers, elapsed, seed) = run_workers(&m, pid, threads, secs, shape == Shape::Pool);
    let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| !st.contains(") Z"))
        .unwrap_or(false);
    assert!(alive, "the daemon died during the run");
    assert_eq!(mount_type(&m).as_deref(), Some("fuse.stratafs"));
    for wk in &workers {
        if let (Some(t), Some(dir)) = (&wk.trace, std::env::var_os("STRATAFS_STRESS_TRACE")) {
            let _ = fs::write(Path::new(&dir).join(format!("t{}.log", wk.t)), t.join("\n"));
        }
    }
    let counts = common::stratafs_stats(&m);
    eprintln!(
        "opens {}, of them waited for another backing file: {}",
        counts.get("open").copied().unwrap_or(0),
        counts.get("open_waited").copied().unwrap_or(0)
    );
    let walk_errors = walk_and_read(&m, &b.all());
    assert!(
        walk_errors.is_empty(),
        "walking the mount after the run:\n{}",
        walk_errors.join("\n")
    );
    let view = snapshot(&m);
    for wk in workers.iter_mut() {
        wk.final_check(&view);
    }
    let label = format!("{tag} opts={:?}", b.options(opts));
    report(&label, &workers, elapsed, view.len(), seed);
    let st = mnt.unmount();
    assert_eq!(
        st.map(|s| s.success()),
        Some(true),
        "daemon exits 0 on umount"
    );
    after_the_run(&s, &b, opts, &m, &view);
}

/// What the branches hold after the run: upper-only content stayed out of the read-only
/// branches, a fresh remount shows the same tree (and, for a kernel-shaped stack, so does the
/// kernel overlayfs), no staging leftovers; a pool spread its new files over both writable
/// branches.
fn after_the_run(
    s: &Scratch,
    b: &Branches,
    opts: &str,
    m: &Path,
    view: &BTreeMap<Vec<u8>, common::Entry>,
) {
    // shared2 is only on u: the read-only branches never get it. (A pool's w2 may: a
    // rename or link of a file of w2 into it makes it there, under u's shared2.)
    for below in [&b.top, &b.base] {
        assert!(
            !below.join("shared2").exists(),
            "{}: shared2",
            below.display()
        );
    }
    let again = {
        let _m2 = b.mount(opts, m);
        snapshot(m)
    };
    assert_same("mounted view vs fresh remount", view, &again);
    match b.shape {
        Shape::Kernel => {
            let (km, kw) = (s.dir("km"), s.dir("kw"));
            let kernel = {
                let stack = Stack {
                    lowers: vec![&b.top, &b.base],
                    upper: Some((&b.u, &kw)),
                };
                let _k = Kernel::mount(&stack, "redirect_dir=on", &km);
                snapshot(&km)
            };
            assert_same(
                "stratafs vs kernel overlayfs after the run",
                &again,
                &kernel,
            );
        }
        Shape::Pool => {
            let files = |d: &Path| {
                snapshot(d)
                    .keys()
                    .filter_map(|k| Path::new(std::ffi::OsStr::from_bytes(k)).file_name())
                    .filter(|n| made_in_the_run(n.as_bytes()))
                    .count()
            };
            let (on_u, on_w2) = (files(&b.u), files(&b.w2));
            println!("thread entries on u: {on_u}, on w2: {on_w2}");
            assert!(
                on_u > 0 && on_w2 > 0,
                "create=rr spread the new entries (u {on_u}, w2 {on_w2})"
            );
        }
    }
    for dir in b.staging() {
        let left: Vec<_> = fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} leftovers: {left:?}", dir.display());
    }
}

/// Is `name` one a worker made during the run (`t<N>-f<serial>`, `-d`, `-h`)?
fn made_in_the_run(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"t") else {
        return false;
    };
    let rest: Vec<u8> = rest
        .iter()
        .copied()
        .skip_while(u8::is_ascii_digit)
        .collect();
    matches!(rest.as_slice(), [b'-', b'f' | b'd' | b'h', d, ..] if d.is_ascii_digit())
}

#[test]
fn stress_default_threads() {
    stress("stress-default", Shape::Kernel, "");
}

#[test]
fn stress_eight_daemon_threads() {
    stress("stress-t8", Shape::Kernel, "threads=8");
}

/// Read-only opens of lower files through passthrough (backing.rs): the racing writers'
/// opens wait for those readers instead of failing in the kernel (EIO).
#[test]
fn stress_lower_passthrough() {
    stress("stress-lp", Shape::Kernel, "lower_passthrough");
}

/// aufs's pool (issue #22): two writable branches under `create=rr`, new entries spread
/// between them in turn; renames and links across them EXDEV.
#[test]
fn stress_two_writable_branches_rr() {
    stress("stress-pool", Shape::Pool, "create=rr");
}

/// The sequences behind the bugs the stress run found, one thread, deterministic: a file
/// reached through one hard link after another was removed or replaced, and copied-up
/// files renamed and linked; every name keeps leading to its own file.
#[test]
fn hard_links_and_renames_keep_their_files() {
    let s = Scratch::new("stress-links");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir_all(l.join("d")).unwrap();
    fs::write(l.join("low"), b"lower file\n").unwrap();
    fs::write(l.join("d/other"), b"other lower file\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let read = |n: &str| fs::read(m.join(n)).map_err(|e| format!("{n}: {e}"));
    let ino = |n: &str| fs::symlink_metadata(m.join(n)).map(|md| md.ino()).unwrap();
    // Upper file with two links: remove one, the other still opens, links and truncates.
    fs::write(m.join("f"), b"f data\n").unwrap();
    fs::hard_link(m.join("f"), m.join("g")).unwrap();
    assert_eq!(read("f").unwrap(), read("g").unwrap());
    fs::remove_file(m.join("f")).unwrap();
    assert_eq!(
        read("g"),
        Ok(b"f data\n".to_vec()),
        "open through the remaining link"
    );
    fs::hard_link(m.join("g"), m.join("k")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("g"))
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(read("k"), Ok(b"f ".to_vec()));
    // Rename another file over one link: the other link still has the old file.
    fs::write(m.join("n"), b"new file\n").unwrap();
    fs::rename(m.join("n"), m.join("k")).unwrap();
    assert_eq!(
        read("g"),
        Ok(b"f ".to_vec()),
        "the replaced file's other link"
    );
    assert_eq!(read("k"), Ok(b"new file\n".to_vec()));
    // A lower file: linked (copied up), renamed over another lower file, renamed again,
    // its first link removed: one number throughout, and every name opens.
    let before = ino("low");
    fs::hard_link(m.join("low"), m.join("d/h")).unwrap();
    assert_eq!(
        ino("d/h"),
        before,
        "a link of a copied-up file has its number"
    );
    fs::rename(m.join("low"), m.join("d/other")).unwrap();
    assert_eq!(
        ino("d/other"),
        before,
        "renamed over a lower file: same number"
    );
    fs::rename(m.join("d/other"), m.join("moved")).unwrap();
    assert_eq!(ino("moved"), before);
    fs::remove_file(m.join("d/h")).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("moved"))
        .unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    assert_eq!(read("moved"), Ok(b"lower file\nmore\n".to_vec()));
    let names: Vec<_> = fs::read_dir(m.join("d"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(names.is_empty(), "d is empty: {names:?}");
}

/// Symlink targets cached by the kernel (FUSE_CACHE_SYMLINKS) while 8 threads replace
/// symlinks: each thread renames a fresh symlink over its own name (upper, and one that
/// started as a lower symlink), or removes and makes it again, and at once reads the link
/// and a file through it; all of them also rename theirs over one shared name, whose target
/// must always be one some thread wrote. A stale cached target shows as a wrong readlink or
/// a wrong file read through the link.
#[test]
fn stress_symlinks_replaced_read_their_latest_target() {
    use std::os::unix::fs::symlink;
    let secs: u64 = common::env_parse("STRATAFS_STRESS_SECS")
        .unwrap_or(15)
        .min(5);
    let s = Scratch::new("stress-symlinks");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    const TARGETS: usize = 4;
    fs::create_dir_all(l.join("sl")).unwrap();
    for t in 0..THREADS {
        for k in 0..TARGETS {
            let d = l.join(format!("sl/d{t}_{k}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("f"), format!("t{t}k{k}")).unwrap();
        }
        symlink(format!("d{t}_0"), l.join(format!("sl/low{t}"))).unwrap();
    }
    symlink("d0_0", l.join("sl/shared")).unwrap();
    let mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    let dir = m.join("sl");
    let stop = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut n = 0u64;
                while Instant::now() < stop {
                    let k = rng.below(TARGETS);
                    let target = format!("d{t}_{k}");
                    let name = if rng.below(2) == 0 {
                        format!("t{t}")
                    } else {
                        format!("low{t}")
                    };
                    let (link, tmp) = (dir.join(&name), dir.join(format!("{name}.tmp")));
                    let made = if rng.below(4) == 0 {
                        let _ = fs::remove_file(&link);
                        symlink(&target, &link)
                    } else {
                        symlink(&target, &tmp).and_then(|()| fs::rename(&tmp, &link))
                    };
                    made.map_err(|e| format!("t{t}: making {name} -> {target}: {e}"))?;
                    let got = fs::read_link(&link).map_err(|e| format!("t{t}: {name}: {e}"))?;
                    if got != Path::new(&target) {
                        return Err(format!("t{t}: {name} reads {got:?}, made -> {target}"));
                    }
                    let data = fs::read(link.join("f")).map_err(|e| format!("t{t}: {e}"))?;
                    if data != format!("t{t}k{k}").as_bytes() {
                        return Err(format!("t{t}: {name}/f is {data:?}, link -> {target}"));
                    }
                    // The shared name: anyone's, but always some thread's target.
                    let shared_tmp = dir.join(format!("shared.t{t}"));
                    symlink(&target, &shared_tmp)
                        .and_then(|()| fs::rename(&shared_tmp, dir.join("shared")))
                        .map_err(|e| format!("t{t}: shared: {e}"))?;
                    let got = fs::read_link(dir.join("shared"))
                        .map_err(|e| format!("t{t}: reading shared: {e}"))?;
                    let ok = got
                        .to_str()
                        .and_then(|g| g.strip_prefix('d'))
                        .is_some_and(|g| {
                            g.split_once('_').is_some_and(|(a, b)| {
                                a.parse::<usize>().is_ok_and(|a| a < THREADS)
                                    && b.parse::<usize>().is_ok_and(|b| b < TARGETS)
                            })
                        });
                    if !ok {
                        return Err(format!("t{t}: shared reads {got:?}"));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut rounds = 0;
    for h in handles {
        rounds += h
            .join()
            .expect("worker panicked")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("{rounds} symlink replacements checked in {secs} s");
    assert!(
        rounds > THREADS as u64 * 10,
        "only {rounds} rounds in {secs} s"
    );
    let counts = common::stratafs_stats(&m);
    // Per round two new symlinks are read (one READLINK each); the walk through the
    // thread's own link is answered from the kernel's copy (3 per round without it).
    assert!(
        counts.get("readlink").copied().unwrap_or(0) <= rounds * 5 / 2,
        "the kernel kept the targets it read: {counts:?}, {rounds} rounds"
    );
    // What the mount shows is what the upper holds, and a remount reads the same.
    for t in 0..THREADS {
        for name in [format!("t{t}"), format!("low{t}")] {
            assert_eq!(
                fs::read_link(dir.join(&name)).ok(),
                fs::read_link(u.join("sl").join(&name)).ok(),
                "{name}"
            );
        }
    }
    drop(mnt);
    let again = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    assert_eq!(
        fs::read_link(m.join("sl/shared")).unwrap(),
        fs::read_link(u.join("sl/shared")).unwrap()
    );
    drop(again);
}

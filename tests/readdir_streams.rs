//! Directory streams read while another process changes names in the directory, against
//! the kernel overlayfs on the same layers: two lowers with whiteouts and an opaque
//! directory, small getdents buffers, two streams of one directory read in turn,
//! telldir/seekdir and rewinddir. What POSIX promises (and both must give): a name that
//! did not change while the stream was read is listed exactly once, no name twice; a
//! stream rewound lists exactly the names there are. The names a fresh listing shows are
//! compared with the kernel's before and after.
//!
//! stratafs keeps one listing per directory node, shared by all its streams and rebuilt
//! after a change of names (readdir.rs); on a default mount there are no directory handles
//! at all (OPENDIR answered ENOSYS, dispatch/dir.rs) and the kernel caches listings.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Kernel, Rng, Scratch, Stack, Strata};
use stratafs::sys;

fn run(c: &mut Command) {
    let st = c.status().expect("run");
    assert!(st.success(), "{c:?}");
}

/// l2 (bottom): d/x*, d/w* (whited out by l1), d/sub/, o/z* (hidden: l1's o is opaque).
/// l1: d/y*, d/x0..x49 again (shadowing), whiteouts of d/w*, o/ opaque with o/p*.
fn build(s: &Scratch) -> (PathBuf, PathBuf) {
    let (l1, l2) = (s.dir("l1"), s.dir("l2"));
    fs::create_dir_all(l2.join("d/sub")).unwrap();
    fs::create_dir_all(l2.join("o")).unwrap();
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::create_dir_all(l1.join("o")).unwrap();
    for i in 0..300 {
        fs::write(l2.join(format!("d/x{i}")), "l2").unwrap();
        fs::write(l1.join(format!("d/y{i}")), "l1").unwrap();
    }
    for i in 0..50 {
        fs::write(l2.join(format!("d/w{i}")), "hidden").unwrap();
        fs::write(l1.join(format!("d/x{i}")), "l1 over l2").unwrap();
        run(Command::new("mknod")
            .arg(l1.join(format!("d/w{i}")))
            .args(["c", "0", "0"]));
    }
    for i in 0..100 {
        fs::write(l2.join(format!("o/z{i}")), "hidden").unwrap();
    }
    for i in 0..200 {
        fs::write(l1.join(format!("o/p{i}")), "l1").unwrap();
    }
    run(Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(l1.join("o")));
    (l1, l2)
}

/// Another process that changes names on request (one line per change, answered once
/// done): `c PATH` creates, `u PATH` unlinks, `r FROM TO` renames.
struct Changer(Child);

impl Changer {
    fn start() -> Changer {
        let script = r#"while read -r op a b; do
            case "$op" in
              c) : > "$a" ;;
              u) rm -f -- "$a" ;;
              r) mv -f -- "$a" "$b" ;;
            esac
            echo done
        done"#;
        Changer(
            Command::new("sh")
                .args(["-c", script])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh"),
        )
    }

    fn ask(&mut self, line: &str) {
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut out = BufReader::new(self.0.stdout.as_mut().unwrap());
        let mut ans = String::new();
        out.read_line(&mut ans).unwrap();
        assert_eq!(ans.trim(), "done", "changer: {line}");
    }
}

impl Drop for Changer {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_dir(d: &Path) -> OwnedFd {
    sys::openat(
        sys::open_host_dir(d.parent().unwrap()).unwrap().as_fd(),
        &std::ffi::CString::new(d.file_name().unwrap().as_bytes()).unwrap(),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .unwrap()
}

/// A fresh listing, `.` and `..` left out.
fn names(d: &Path) -> BTreeSet<OsString> {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

/// One getdents call with a buffer of `len` bytes: (name, offset after it), `.` and `..`
/// left out; None at the end of the directory.
fn page(fd: &OwnedFd, len: usize) -> Option<Vec<(OsString, i64)>> {
    let raw = sys::read_dir_page(fd.as_fd(), len).unwrap();
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.into_iter()
            .map(|(e, off)| (e.name, off))
            .filter(|(n, _)| n != "." && n != "..")
            .collect(),
    )
}

/// The rest of a stream, read with buffers of `len` bytes.
fn rest(fd: &OwnedFd, len: usize) -> Vec<OsString> {
    let mut out = Vec::new();
    while let Some(p) = page(fd, len) {
        out.extend(p.into_iter().map(|(n, _)| n));
    }
    out
}

/// Changes made per round: the same on every mount, whatever the page boundaries.
const CHANGES: usize = 40;

/// What one round of a directory shows, for the comparison with the kernel.
#[derive(Debug, PartialEq, Eq)]
struct Round {
    before: BTreeSet<OsString>,
    after: BTreeSet<OsString>,
}

/// Reads directory `d` (of mount `m`) through two streams in turn with small buffers while
/// `ch` changes names between getdents calls (the same changes for every mount: `seed`),
/// and checks what each stream listed.
fn round(m: &Path, rel: &str, seed: u64, warm: bool, ch: &mut Changer) -> Round {
    let d = m.join(rel);
    let before = names(&d);
    if warm {
        // Fills the kernel's cached listing (stratafs): the streams start in it.
        assert_eq!(names(&d), before);
    }
    let mut rng = Rng(seed | 1);
    let mut changed: BTreeSet<OsString> = BTreeSet::new();
    let mut live: Vec<OsString> = before.iter().cloned().collect();
    let mut created = 0;
    let mut change = |rng: &mut Rng, live: &mut Vec<OsString>, changed: &mut BTreeSet<_>| {
        let path = |n: &OsString| d.join(n).display().to_string();
        match rng.below(3) {
            0 => {
                let n: OsString = format!("new{seed}-{created}").into();
                created += 1;
                ch.ask(&format!("c {}", path(&n)));
                changed.insert(n.clone());
                live.push(n);
            }
            k => {
                let i = rng.below(live.len() as u64) as usize;
                let n = live.swap_remove(i);
                if n == "sub" {
                    live.push(n);
                    return;
                }
                changed.insert(n.clone());
                if k == 1 {
                    ch.ask(&format!("u {}", path(&n)));
                } else {
                    let to: OsString = format!("{}-mv{seed}", n.to_string_lossy()).into();
                    ch.ask(&format!("r {} {}", path(&n), path(&to)));
                    changed.insert(to.clone());
                    live.push(to);
                }
            }
        }
    };
    let (a, b) = (open_dir(&d), open_dir(&d));
    let (mut seen_a, mut seen_b): (Vec<OsString>, Vec<OsString>) = (Vec::new(), Vec::new());
    let (mut end_a, mut end_b) = (false, false);
    // telldir of stream a part-way, and the names a listed after it.
    let mut mark: Option<(i64, usize)> = None;
    let (mut calls, mut done) = (0, 0);
    while !(end_a && end_b) {
        for (fd, seen, end, len) in [
            (&a, &mut seen_a, &mut end_a, 400),
            (&b, &mut seen_b, &mut end_b, 1024),
        ] {
            if *end {
                continue;
            }
            let Some(p) = page(fd, len) else {
                *end = true;
                continue;
            };
            if std::ptr::eq(fd, &a) && mark.is_none() && seen.len() > before.len() / 3 {
                if let Some((_, off)) = p.last() {
                    mark = Some((*off, seen.len() + p.len()));
                }
            }
            seen.extend(p.into_iter().map(|(n, _)| n));
            calls += 1;
            if calls == 7 {
                // A stream opened after changes, while a and b are part-way: exactly the
                // names there are (and it reads to the end, which drops stratafs's listing
                // of the directory under a and b).
                let c = open_dir(&d);
                let got = rest(&c, 600);
                let set: BTreeSet<OsString> = got.iter().cloned().collect();
                let want: BTreeSet<OsString> = live.iter().cloned().collect();
                assert_eq!(set.len(), got.len(), "{m:?} {rel} c: a name twice");
                assert_eq!(set, want, "{m:?} {rel}: stream c opened after changes");
            }
            if calls % 2 == 0 && done < CHANGES {
                change(&mut rng, &mut live, &mut changed);
                done += 1;
            }
        }
    }
    while done < CHANGES {
        change(&mut rng, &mut live, &mut changed);
        done += 1;
    }
    let now = names(&d);
    let check = |who: &str, seen: &[OsString]| {
        let mut count: BTreeMap<&OsString, usize> = BTreeMap::new();
        for n in seen {
            *count.entry(n).or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            twice.is_empty(),
            "{m:?} {rel} {who}: listed twice: {twice:?}"
        );
        let unchanged: Vec<&OsString> = before.iter().filter(|n| !changed.contains(*n)).collect();
        let missing: Vec<_> = unchanged
            .iter()
            .filter(|n| !count.contains_key(**n))
            .collect();
        assert!(
            missing.is_empty(),
            "{m:?} {rel} {who}: unchanged names skipped: {missing:?}"
        );
        let strange: Vec<_> = count
            .keys()
            .filter(|n| !before.contains(**n) && !changed.contains(**n))
            .collect();
        assert!(
            strange.is_empty(),
            "{m:?} {rel} {who}: never existed: {strange:?}"
        );
    };
    check("stream a", &seen_a);
    check("stream b", &seen_b);
    // seekdir back to the telldir position: the unchanged names a listed after it, once.
    let (pos, at) = mark.expect("stream a got a third of the way");
    sys::lseek(a.as_fd(), pos, libc::SEEK_SET).unwrap();
    let again = rest(&a, 700);
    let after_mark: BTreeSet<&OsString> = seen_a[at..]
        .iter()
        .filter(|n| !changed.contains(*n))
        .collect();
    let again_unchanged: Vec<&OsString> = again.iter().filter(|n| !changed.contains(*n)).collect();
    assert_eq!(
        again_unchanged.len(),
        after_mark.len(),
        "{m:?} {rel}: after seekdir, unchanged names listed {} times, expected {}",
        again_unchanged.len(),
        after_mark.len()
    );
    assert_eq!(
        again_unchanged.into_iter().collect::<BTreeSet<_>>(),
        after_mark,
        "{m:?} {rel}: seekdir to a telldir position"
    );
    // rewinddir: exactly the names there are now, on both streams.
    for (who, fd) in [("a", &a), ("b", &b)] {
        sys::lseek(fd.as_fd(), 0, libc::SEEK_SET).unwrap();
        let all = rest(fd, 500);
        let set: BTreeSet<OsString> = all.iter().cloned().collect();
        assert_eq!(
            set.len(),
            all.len(),
            "{m:?} {rel} {who}: a name twice after rewind"
        );
        assert_eq!(
            set, now,
            "{m:?} {rel} {who}: rewound stream vs a fresh listing"
        );
    }
    Round { before, after: now }
}

fn rounds(m: &Path) -> Vec<Round> {
    let mut ch = Changer::start();
    let mut out = Vec::new();
    for (k, (rel, warm)) in [
        ("d", false),
        ("o", false),
        ("d", true),
        ("o", true),
        ("d/sub", true),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(round(m, rel, 1000 + k as u64, warm, &mut ch));
    }
    out
}

#[test]
fn streams_read_across_changes_list_unchanged_names_once_as_the_kernel() {
    let s = Scratch::new("rd-streams");
    let (l1, l2) = build(&s);
    for i in 0..40 {
        fs::write(l2.join(format!("d/sub/s{i}")), "").unwrap();
    }
    let mut got = Vec::new();
    for which in ["kernel", "stratafs"] {
        let (u, w, m) = (
            s.dir(&format!("{which}-u")),
            s.dir(&format!("{which}-w")),
            s.dir(&format!("{which}-m")),
        );
        let stack = Stack {
            lowers: vec![&l1, &l2],
            upper: Some((&u, &w)),
        };
        if which == "kernel" {
            let _k = Kernel::mount(&stack, "", &m);
            got.push(rounds(&m));
        } else {
            let _st = Strata::mount(&stack, "", &m);
            got.push(rounds(&m));
        }
    }
    assert_eq!(got[0].len(), got[1].len());
    for (k, (a, b)) in got[0].iter().zip(&got[1]).enumerate() {
        assert_eq!(a, b, "round {k}: kernel vs stratafs");
    }
}

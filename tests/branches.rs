//! aufs-style branch management on a live mount (`stratafs branch`, `mount -o remount,OP`):
//! after each change the mount shows exactly what a fresh mount of the new stack shows
//! (stratafs, and the kernel overlayfs over a copy of the upper), with the kernel's caches
//! full from a walk before the change (default, long entry timeout); open files survive a
//! forced removal; a branch in use is refused with EBUSY; only root may change branches;
//! invalid requests change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{assert_same, bin, copy_tree, sh_as, snapshot, Kernel, Scratch, Stack, Strata};

/// A foreground mount is in mountinfo a moment before its control socket listens.
fn live(m: Strata) -> Strata {
    let dev = common::mount_dev(&m.mnt).expect("mounted");
    let name = format!("@stratafs/{dev}");
    for _ in 0..500 {
        let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
        if unix.lines().any(|l| l.ends_with(&name)) {
            return m;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no control socket {name}");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("spawn")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn branch(m: &Path, ops: &[&str]) -> Output {
    run(Command::new(bin()).arg("branch").arg(m).args(ops))
}

fn branch_ok(m: &Path, ops: &[&str]) -> String {
    let o = branch(m, ops);
    assert!(o.status.success(), "branch {ops:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(cmd: &str) {
    let o = run(Command::new("sh").arg("-c").arg(cmd));
    assert!(o.status.success(), "{cmd}: {}", text(&o));
}

/// The layers: two lowers, and the branch that comes and goes, with names it adds, a file
/// it replaces, a whiteout, an opaque directory and a directory it merges into.
struct Layers {
    l1: PathBuf,
    l2: PathBuf,
    /// The new branch, whiteouts and opaque marker included.
    n: PathBuf,
    /// The same tree without its whiteout and opaque marker: what `n` shows as `ro`.
    n_plain: PathBuf,
    u: PathBuf,
    w: PathBuf,
}

fn layers(s: &Scratch) -> Layers {
    let (l1, l2, n, n_plain) = (s.dir("l1"), s.dir("l2"), s.dir("n"), s.dir("n_plain"));
    fs::write(l1.join("a"), "l1 a\n").unwrap();
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::write(l1.join("d/x1"), "x1\n").unwrap();
    fs::write(l2.join("b"), "l2 b\n").unwrap();
    fs::write(l2.join("gone"), "l2 gone\n").unwrap();
    fs::create_dir_all(l2.join("d")).unwrap();
    fs::write(l2.join("d/x2"), "x2\n").unwrap();
    fs::create_dir_all(l2.join("d/deeper")).unwrap();
    fs::write(l2.join("d/deeper/h"), "h\n").unwrap();
    fs::create_dir_all(l2.join("e")).unwrap();
    fs::write(l2.join("e/y"), "y\n").unwrap();
    for t in [&n, &n_plain] {
        fs::write(t.join("a"), "new a\n").unwrap();
        fs::write(t.join("c"), "new c\n").unwrap();
        fs::create_dir_all(t.join("d")).unwrap();
        fs::write(t.join("d/xn"), "xn\n").unwrap();
        fs::create_dir_all(t.join("d/deeper")).unwrap();
        fs::write(t.join("d/deeper/g"), "g\n").unwrap();
        fs::create_dir_all(t.join("e")).unwrap();
        fs::write(t.join("e/z"), "z\n").unwrap();
        fs::create_dir_all(t.join("sub/deep")).unwrap();
        fs::write(t.join("sub/deep/f"), "deep\n").unwrap();
    }
    sh(&format!(
        "mknod {}/gone c 0 0 && setfattr -n trusted.overlay.opaque -v y {}/e",
        n.display(),
        n.display()
    ));
    // Same times everywhere, so that the two trees differ only in their markers.
    sh(&format!(
        "touch -h -d 2020-01-01T00:00:00 $(find {} {} {} {})",
        l1.display(),
        l2.display(),
        n.display(),
        n_plain.display()
    ));
    Layers {
        l1,
        l2,
        n,
        n_plain,
        u: s.dir("u"),
        w: s.dir("w"),
    }
}

/// Names looked up one by one (positive and negative entries the kernel caches).
const PROBES: [&str; 13] = [
    "a",
    "d/deeper/g",
    "d/deeper/h",
    "b",
    "c",
    "gone",
    "d/x1",
    "d/xn",
    "e/y",
    "e/z",
    "sub/deep/f",
    "nothing",
    "sub/nothing",
];

fn probe(m: &Path) -> Vec<String> {
    PROBES
        .iter()
        .map(|p| match fs::read(m.join(p)) {
            Ok(b) => format!("{p}: {}", String::from_utf8_lossy(&b).trim_end()),
            Err(e) => format!("{p}: {}", e.kind()),
        })
        .collect()
}

fn stack<'a>(lowers: &[&'a Path], l: &'a Layers) -> Stack<'a> {
    Stack {
        lowers: lowers.to_vec(),
        upper: Some((&l.u, &l.w)),
    }
}

/// Mounts `before`, walks it (the kernel caches every entry, listing and negative entry),
/// applies each request of `changes` in turn and compares the view after each with a fresh
/// stratafs mount and a fresh kernel overlayfs of the stack it should have made.
fn change_and_compare(tag: &str, before: &[&str], changes: &[(&[&str], &[&str])]) {
    let s = Scratch::new(&format!("branches-{tag}"));
    let l = layers(&s);
    let map = |p: &str| -> PathBuf {
        match p {
            "L1" => l.l1.clone(),
            "L2" => l.l2.clone(),
            "N" => l.n.clone(),
            _ => l.n_plain.clone(),
        }
    };
    let before: Vec<PathBuf> = before.iter().map(|p| map(p)).collect();
    let m = s.dir("m");
    let (fm, km) = (s.dir("fresh"), s.dir("km"));
    let mut views = Vec::new();
    {
        let refs: Vec<&Path> = before.iter().map(|p| p.as_path()).collect();
        let sm = live(Strata::mount(&stack(&refs, &l), "", &m));
        fs::write(m.join("written"), "through the mount\n").unwrap();
        let _ = snapshot(&m);
        let _ = probe(&m);
        for (ops, _) in changes {
            let ops: Vec<String> = ops
                .iter()
                .map(|o| o.replace("{N}", &l.n.display().to_string()))
                .collect();
            let refs: Vec<&str> = ops.iter().map(|s| s.as_str()).collect();
            let out = branch_ok(&m, &refs);
            assert_eq!(out.lines().count(), refs.len(), "one line each: {out}");
            views.push((snapshot(&m), probe(&m)));
            // Walk again: the next change starts from a full cache too.
        }
        assert!(sm.unmount().is_some_and(|s| s.success()), "clean exit");
    }
    for (i, ((_, after), (seen, probed))) in changes.iter().zip(&views).enumerate() {
        let after: Vec<PathBuf> = after.iter().map(|p| map(p)).collect();
        let refs: Vec<&Path> = after.iter().map(|p| p.as_path()).collect();
        {
            let _f = Strata::mount(&stack(&refs, &l), "", &fm);
            assert_same(
                &format!("{tag} #{i}: changed vs fresh"),
                seen,
                &snapshot(&fm),
            );
            assert_eq!(probed, &probe(&fm), "{tag} #{i}: lookups, changed vs fresh");
        }
        // The kernel overlayfs over a copy of the upper.
        let (ku, kw) = (s.path(&format!("ku{i}")), s.dir(&format!("kw{i}")));
        copy_tree(&l.u, &ku);
        let k = Kernel::mount(
            &Stack {
                lowers: refs.clone(),
                upper: Some((&ku, &kw)),
            },
            "",
            &km,
        );
        assert_same(
            &format!("{tag} #{i}: changed vs kernel"),
            seen,
            &snapshot(&km),
        );
        assert_eq!(
            probed,
            &probe(&km),
            "{tag} #{i}: lookups, changed vs kernel"
        );
        drop(k);
    }
}

const L1: &str = "L1";
const L2: &str = "L2";
const N: &str = "N";
const NP: &str = "NP";

#[test]
fn add_at_the_top_equals_a_fresh_mount() {
    change_and_compare("top", &[L1, L2], &[(&["add:1:{N}"], &[N, L1, L2])]);
}

#[test]
fn add_in_the_middle_equals_a_fresh_mount() {
    change_and_compare("middle", &[L1, L2], &[(&["add:2:{N}=ro+wh"], &[L1, N, L2])]);
}

#[test]
fn append_and_lowerdir_plus_equal_a_fresh_mount() {
    change_and_compare("bottom", &[L1, L2], &[(&["append:{N}"], &[L1, L2, N])]);
    change_and_compare(
        "lowerdir+",
        &[L1, L2],
        &[(&["lowerdir+={N}"], &[L1, L2, N])],
    );
}

#[test]
fn prepend_then_delete_equals_a_fresh_mount() {
    change_and_compare(
        "prepend-del",
        &[L1, L2],
        &[(&["prepend:{N}"], &[N, L1, L2]), (&["del:{N}"], &[L1, L2])],
    );
}

#[test]
fn delete_from_the_middle_equals_a_fresh_mount() {
    change_and_compare("del", &[L1, N, L2], &[(&["del:{N}"], &[L1, L2])]);
}

#[test]
fn mode_changes_equal_a_fresh_mount() {
    // ro and rr: the branch's whiteout and opaque marker hide nothing (the oracle is the
    // same tree without them); back to ro+wh they do again.
    change_and_compare(
        "mod",
        &[L1, N, L2],
        &[
            (&["mod:{N}=ro"], &[L1, NP, L2]),
            (&["mod:{N}=ro+wh"], &[L1, N, L2]),
            (&["mod:{N}=rr"], &[L1, NP, L2]),
        ],
    );
}

#[test]
fn added_with_mode_ro_ignores_its_whiteouts() {
    change_and_compare("add-ro", &[L1, L2], &[(&["add:1:{N}=ro"], &[NP, L1, L2])]);
}

#[test]
fn open_files_survive_and_busy_branches_are_refused() {
    let s = Scratch::new("branches-busy");
    let l = layers(&s);
    let m = s.dir("m");
    let sm = live(Strata::mount(&stack(&[&l.l1, &l.n, &l.l2], &l), "", &m));
    let _ = snapshot(&m);
    let ndel = format!("del:{}", l.n.display());
    // An open file whose entry lives in the branch.
    let f = fs::File::open(m.join("sub/deep/f")).unwrap();
    let o = branch(&m, &[&ndel]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(msg.contains("in use") && msg.contains("open file"), "{msg}");
    assert!(msg.contains("Device or resource busy"), "EBUSY: {msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(m.join("c").exists(), "nothing changed");
    // A working directory in it.
    let mut cwd = Command::new("sleep")
        .arg("30")
        .current_dir(m.join("sub/deep"))
        .spawn()
        .unwrap();
    drop(fs::File::open(m.join("c")).unwrap());
    let f2 = f.try_clone().unwrap();
    drop(f);
    drop(f2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let o = branch(&m, &[&ndel]);
    let _ = cwd.kill();
    let _ = cwd.wait();
    assert!(!o.status.success());
    assert!(text(&o).contains("working directory"), "{}", text(&o));
    // An open directory in it. This mount answers OPENDIR with ENOSYS (the daemon holds no
    // directory handles): the daemon finds it among this process's descriptors.
    let dir = fs::File::open(m.join("sub/deep")).unwrap();
    let o = branch(&m, &[&ndel]);
    assert!(!o.status.success(), "an open directory: {}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("in use")
            && (msg.contains("open directory")
                || msg.contains(&format!("of process {}", std::process::id()))),
        "{msg}"
    );
    drop(dir);
    // Forced, with the file open: it goes on reading; the daemon goes on serving.
    let mut f = fs::File::open(m.join("sub/deep/f")).unwrap();
    let mut g = fs::File::open(m.join("c")).unwrap();
    let out = String::from_utf8(
        run(Command::new(bin())
            .args(["branch", "--force"])
            .arg(&m)
            .arg(&ndel))
        .stdout,
    )
    .unwrap();
    assert_eq!(out.trim(), format!("removed {}", l.n.display()));
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "deep\n", "an open file of the removed branch reads on");
    assert_eq!(f.metadata().unwrap().len(), 5, "and fstat answers");
    let mut got = String::new();
    g.read_to_string(&mut got).unwrap();
    assert_eq!(got, "new c\n");
    assert!(
        !m.join("sub").exists() && !m.join("c").exists(),
        "gone from the view"
    );
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "l1 a\n");
    assert_eq!(fs::read_to_string(m.join("gone")).unwrap(), "l2 gone\n");
    fs::write(m.join("after"), "x").unwrap();
    drop((f, g));
    // The upper holds only what was written through the mount.
    let names: Vec<String> = fs::read_dir(&l.u)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["after"]);
    assert!(sm.unmount().is_some_and(|s| s.success()), "clean exit");
}

#[test]
fn only_root_may_change_branches() {
    let s = Scratch::new("branches-perm");
    let l = layers(&s);
    let m = s.dir("m");
    let _sm = live(Strata::mount(&stack(&[&l.l1, &l.l2], &l), "", &m));
    let before = snapshot(&m);
    for op in [
        format!("add:1:{}", l.n.display()),
        format!("del:{}", l.l2.display()),
        format!("mod:{}=ro", l.l2.display()),
    ] {
        let o = run(&mut sh_as(
            true,
            &format!("{} branch {} '{op}'", bin(), m.display()),
            Path::new("/"),
        ));
        assert!(!o.status.success(), "{op}");
        let msg = text(&o);
        assert!(msg.contains("Operation not permitted"), "{op}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
        // Through mount -o remount too (mount(8) itself refuses a non-root remount; the
        // binary's remount form reaches the daemon).
        let o = run(&mut sh_as(
            true,
            &format!("{} -o 'remount,{op}' {}", bin(), m.display()),
            Path::new("/"),
        ));
        assert!(!o.status.success(), "{op}");
        assert!(text(&o).contains("Operation not permitted"), "{}", text(&o));
    }
    assert_same("unchanged", &before, &snapshot(&m));
}

#[test]
fn invalid_requests_change_nothing() {
    let s = Scratch::new("branches-bad");
    let l = layers(&s);
    let m = s.dir("m");
    let _sm = live(Strata::mount(&stack(&[&l.l1], &l), "", &m));
    let before = snapshot(&m);
    let d = |p: &Path| p.display().to_string();
    let cases = [
        (format!("add:1:{}/missing", s.0.display()), "No such file"),
        (format!("append:{}/d", d(&l.l1)), "overlaps branch"),
        (format!("append:{}", d(&s.0)), "overlaps"),
        (format!("append:{}", d(&l.u)), "is the upper"),
        (format!("del:{}", d(&l.l1)), "last lower"),
        (format!("del:{}", d(&l.u)), "cannot be removed"),
        (format!("add:9:{}", d(&l.n)), "index out of range"),
        (format!("add:0:{}", d(&l.n)), "index 0 is the upper"),
        (format!("append:{}", d(&l.l1)), "already a branch"),
        (format!("mod:{}=ro", d(&l.n)), "not a branch"),
        ("frob:/x".to_string(), "unknown operation"),
        (format!("append:{}/d", d(&m)), "inside this mount"),
    ];
    for (op, why) in &cases {
        // After a valid operation (but for the last lower): the whole request is refused.
        let first = format!("append:{}", d(&l.l2));
        let ops: Vec<&str> = if *why == "last lower" {
            vec![op]
        } else {
            vec![&first, op]
        };
        let o = branch(&m, &ops);
        assert!(!o.status.success(), "{op}");
        let msg = text(&o);
        assert!(msg.contains(why), "{op}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{op}: one line: {msg}");
        assert_same(op, &before, &snapshot(&m));
    }
    let o = branch(&m, &[]);
    assert_eq!(o.status.code(), Some(2), "usage: {}", text(&o));
}

/// mount(8) → mount.fuse3 → the binary's remount form → the daemon.
#[test]
fn remount_through_mount_8() {
    let s = Scratch::new("branches-mount8");
    let l = layers(&s);
    let m = s.dir("m");
    let name = format!("stratafs-branch-test-{}", std::process::id());
    let helper = PathBuf::from("/usr/local/bin").join(&name);
    let _ = fs::remove_file(&helper);
    std::os::unix::fs::symlink(bin(), &helper).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(helper);
    let _sm = live(Strata::mount(
        &stack(&[&l.l1, &l.l2], &l),
        &format!("subtype={name}"),
        &m,
    ));
    let _ = snapshot(&m);
    let ino_a = fs::metadata(m.join("a")).unwrap().ino();
    let mount8 = |opts: String| {
        let o = run(Command::new("mount").arg("-o").arg(opts).arg(&m));
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let out = mount8(format!("remount,add:1:{}=rr", l.n.display()));
    assert!(out.contains("added"), "{out}");
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "new a\n");
    assert_ne!(fs::metadata(m.join("a")).unwrap().ino(), ino_a);
    assert_eq!(
        fs::read_to_string(m.join("gone")).unwrap(),
        "l2 gone\n",
        "rr"
    );
    mount8(format!("remount,del:{}", l.n.display()));
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "l1 a\n");
    assert!(!m.join("c").exists());
    mount8(format!("remount,lowerdir+={}", l.n.display()));
    assert_eq!(fs::read_to_string(m.join("c")).unwrap(), "new c\n");
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "l1 a\n");
    // A plain remount,ro still works after the change.
    mount8("remount,ro".into());
    assert!(fs::write(m.join("x"), "x").is_err());
}

/// Changes while another process walks and reads the tree: no request fails but with
/// ENOENT (a name that just went), the daemon serves on, and the end state equals a fresh
/// mount.
#[test]
fn changes_under_a_concurrent_walk() {
    let s = Scratch::new("branches-walk");
    let l = layers(&s);
    for i in 0..30 {
        let d = l.n.join(format!("many/d{i}"));
        fs::create_dir_all(&d).unwrap();
        for j in 0..20 {
            fs::write(d.join(format!("f{j}")), format!("{i} {j}\n")).unwrap();
        }
    }
    let m = s.dir("m");
    let sm = live(Strata::mount(&stack(&[&l.l1, &l.l2], &l), "", &m));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let walker = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut walks = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = Command::new("sh")
                    .arg("-c")
                    .arg("find . -type f -exec cat {} + >/dev/null 2>/tmp/walk-err.$$; grep -v 'No such file' /tmp/walk-err.$$; rm -f /tmp/walk-err.$$")
                    .current_dir(&m)
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&o.stdout).into_owned();
                assert!(err.trim().is_empty(), "walk errors: {err}");
                walks += 1;
            }
            walks
        })
    };
    let n = l.n.display().to_string();
    for i in 0..10 {
        let op = match i % 3 {
            0 => format!("add:1:{n}"),
            1 => format!("append:{n}"),
            _ => format!("add:2:{n}=ro"),
        };
        branch_ok(&m, &[&op]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        branch_ok(&m, &[&format!("del!:{n}")]);
    }
    branch_ok(&m, &[&format!("add:2:{n}")]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let walks = walker.join().unwrap();
    assert!(walks > 0);
    let seen = snapshot(&m);
    assert!(sm.unmount().is_some_and(|s| s.success()), "clean exit");
    let fm = s.dir("fresh");
    let _f = Strata::mount(&stack(&[&l.l1, &l.n, &l.l2], &l), "", &fm);
    assert_same("after the changes vs fresh", &seen, &snapshot(&fm));
}

/// Without an upper, index 0 is the top branch; the view equals a fresh read-only mount
/// and a fresh kernel overlayfs of the new lowers.
#[test]
fn read_only_mount_adds_at_index_0() {
    let s = Scratch::new("branches-ro");
    let l = layers(&s);
    let (m, fm, km) = (s.dir("m"), s.dir("fresh"), s.dir("km"));
    fn only(lowers: Vec<&Path>) -> Stack<'_> {
        Stack {
            lowers,
            upper: None,
        }
    }
    let sm = live(Strata::mount(&only(vec![&l.l1, &l.l2]), "", &m));
    let _ = snapshot(&m);
    let _ = probe(&m);
    let out = branch_ok(&m, &[&format!("add:0:{}", l.n.display())]);
    assert_eq!(out.trim(), format!("added {} at 0 (ro+wh)", l.n.display()));
    let (seen, probed) = (snapshot(&m), probe(&m));
    drop(sm);
    {
        let _f = Strata::mount(&only(vec![&l.n, &l.l1, &l.l2]), "", &fm);
        assert_same("ro: changed vs fresh", &seen, &snapshot(&fm));
        assert_eq!(probed, probe(&fm));
    }
    let _k = Kernel::mount(&only(vec![&l.n, &l.l1, &l.l2]), "", &km);
    assert_same("ro: changed vs kernel", &seen, &snapshot(&km));
    assert_eq!(probed, probe(&km));
}

/// A process whose working directory exists only in a branch removed with `del!:` goes on
/// listing and reading there (the directory keeps what it had), and the daemon serves on.
#[test]
fn a_cwd_in_a_removed_branch_keeps_working() {
    let s = Scratch::new("branches-cwd");
    let l = layers(&s);
    let m = s.dir("m");
    let sm = live(Strata::mount(&stack(&[&l.l1, &l.n, &l.l2], &l), "", &m));
    let flag = s.path("flag");
    let child = Command::new("sh")
        .arg("-c")
        .arg("i=0; while [ ! -e \"$1\" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; ls; cat f")
        .arg("sh")
        .arg(&flag)
        .current_dir(m.join("sub/deep"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = branch(&m, &[&format!("del:{}", l.n.display())]);
    assert!(text(&o).contains("working directory"), "{}", text(&o));
    branch_ok(&m, &[&format!("del!:{}", l.n.display())]);
    assert!(!m.join("sub").exists());
    fs::write(&flag, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out), "f\ndeep\n");
    assert!(sm.unmount().is_some_and(|s| s.success()), "clean exit");
}

/// Under `udba=notify` a branch added at run time is watched like the others: a directory
/// the kernel already holds gets a watch on its part in the new branch, so a file made
/// directly there shows through the mount without a new lookup of the directory.
#[test]
fn udba_notify_watches_an_added_branch() {
    let s = Scratch::new("branches-udba");
    let (l1, n, u, w, m) = (s.dir("l1"), s.dir("n"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::write(l1.join("d/x"), "x\n").unwrap();
    fs::create_dir_all(n.join("d")).unwrap();
    fs::write(n.join("d/y"), "y\n").unwrap();
    let st = Stack {
        lowers: vec![&l1],
        upper: Some((&u, &w)),
    };
    let sm = live(Strata::mount(&st, "udba=notify", &m));
    // A process holds `d` as its working directory: the kernel keeps the node.
    let d = fs::File::open(m.join("d")).unwrap();
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&m.join("d")), ["x"]);
    branch_ok(&m, &[&format!("prepend:{}", n.display())]);
    assert_eq!(names(&m.join("d")), ["x", "y"]);
    fs::write(n.join("d/z"), "z\n").unwrap();
    let t0 = std::time::Instant::now();
    while !names(&m.join("d")).contains(&"z".to_string()) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "a file made directly in the added branch never showed: {:?}",
            names(&m.join("d"))
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(fs::read_to_string(m.join("d/z")).unwrap(), "z\n");
    drop(d);
    drop(sm);
}

/// An `rr` branch (aufs: real read-only, never changes) gets no watches under
/// `udba=notify`; `mod:` to `ro+wh` makes it watched like the others, and back.
#[test]
fn udba_notify_leaves_rr_branches_unwatched() {
    let s = Scratch::new("branches-rr");
    let (l1, n, u, w, m) = (s.dir("l1"), s.dir("n"), s.dir("u"), s.dir("w"), s.dir("m"));
    for i in 0..5 {
        fs::create_dir_all(l1.join(format!("d{i}"))).unwrap();
        fs::create_dir_all(n.join(format!("d{i}/only-n"))).unwrap();
    }
    let st = Stack {
        lowers: vec![&l1],
        upper: Some((&u, &w)),
    };
    let sm = live(Strata::mount(&st, "udba=notify", &m));
    let pid = sm.pid();
    let walk = || {
        let _ = snapshot(&m);
    };
    walk();
    // The root's upper and lower, and d0..d4 in l1.
    assert_eq!(common::inotify_watches(pid), 7);
    branch_ok(&m, &[&format!("add:1:{}=rr", n.display())]);
    walk();
    assert_eq!(
        common::inotify_watches(pid),
        7,
        "no watch on the rr branch's directories"
    );
    branch_ok(&m, &[&format!("mod:{}=ro+wh", n.display())]);
    walk();
    // Its root, d0..d4 and d*/only-n.
    assert_eq!(
        common::inotify_watches(pid),
        7 + 1 + 5 + 5,
        "watched as ro+wh"
    );
    branch_ok(&m, &[&format!("mod:{}=rr", n.display())]);
    walk();
    assert_eq!(
        common::inotify_watches(pid),
        7,
        "rr again: its watches gone"
    );
    drop(sm);
}

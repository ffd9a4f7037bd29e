//! `index=on`: the names of a lower hard link stay one file after a copy-up (content,
//! st_ino, link count), also after a remount, in the kernel overlayfs's on-disk format: a
//! differential against `mount -t overlay -o index=on` on the same layers, and the same
//! upper mounted by the other one (stratafs then kernel, kernel then stratafs).

mod common;

use std::fs;
use std::path::Path;

use common::{sh_script, Kernel, Scratch, Stack, Strata};

/// First mount: the names before and after a copy-up through one of them, a change through
/// another (link-up), a removal.
const FIRST: &str = r#"
cd "$1" || exit 1
same() { [ "$(stat -c %i "$1")" = "$(stat -c %i "$2")" ] && echo "$1=$2" || echo "$1!=$2"; }
show() { for n in a b c d/x y; do [ -e "$n" ] && echo "$n: $(stat -c %h "$n") $(cat "$n" | tr '\n' ' ')"; done; same a b; same a c; same d/x y; same a single; }
show
echo more >> a
show
echo c >> c
show
rm b
show
ln a l1
show
mv c c2
ls -i c2 >/dev/null && echo "c2: $(stat -c %h c2) $(cat c2 | tr '\n' ' ')"
same a c2
rm l1
show
mv c2 c
"#;

/// Second mount: the same names again, and one more change.
const SECOND: &str = r#"
cd "$1" || exit 1
same() { [ "$(stat -c %i "$1")" = "$(stat -c %i "$2")" ] && echo "$1=$2" || echo "$1!=$2"; }
show() { for n in a b c d/x y; do [ -e "$n" ] && echo "$n: $(stat -c %h "$n") $(cat "$n" | tr '\n' ' ')"; done; same a c; same d/x y; }
show
echo y >> y
show
"#;

/// What the upper holds: the index entries, each a hard link whose `overlay.origin` is the
/// handle its name spells. (Which upper names link it up may differ: FUSE tells the daemon
/// the inode written to, not the name it was opened by.)
const UPPER: &str = r##"
cd "$1" || exit 1
# (The kernel also keeps its reusable whiteout, "#N", in the index directory.)
echo "index entries: $(ls w/index | grep -vc '^#')"
for e in w/index/[!#]*; do
  o=$(getfattr --absolute-names -n trusted.overlay.origin -e hex "$e" 2>/dev/null | sed -n 's/^trusted.overlay.origin=//p')
  [ "$o" = "0x$(basename "$e")" ] && echo "entry named by its origin" || echo "entry $e: origin $o"
  [ "$(stat -c %h "$e")" -ge 2 ] && echo "entry linked up" || echo "entry $e: not linked"
done
"##;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Kernel,
    Strata,
}

fn lower(l: &Path) {
    fs::create_dir_all(l.join("d")).unwrap();
    fs::write(l.join("a"), "hl\n").unwrap();
    fs::hard_link(l.join("a"), l.join("b")).unwrap();
    fs::hard_link(l.join("a"), l.join("c")).unwrap();
    fs::write(l.join("d/x"), "x\n").unwrap();
    fs::hard_link(l.join("d/x"), l.join("y")).unwrap();
    fs::write(l.join("single"), "s\n").unwrap();
}

fn run(s: &Scratch, first: Who, second: Who) -> String {
    run_with(s, first, second, "index=on", "index=on")
}

/// [`run`] with these mount options for the kernel overlayfs and for stratafs.
fn run_with(s: &Scratch, first: Who, second: Who, kopts: &str, sopts: &str) -> String {
    let tag = format!("{first:?}-{second:?}-{}", kopts.replace([',', '='], "_"));
    let root = s.dir(&tag);
    let (l, u, w, m) = (
        s.dir(&format!("{tag}/l")),
        s.dir(&format!("{tag}/u")),
        s.dir(&format!("{tag}/w")),
        s.dir(&format!("{tag}/m")),
    );
    lower(&l);
    let stack = Stack::one(&l, &u, &w);
    let mut out = String::new();
    for (who, script) in [(first, FIRST), (second, SECOND)] {
        out += &match who {
            Who::Kernel => {
                let _k = Kernel::mount(&stack, kopts, &m);
                sh_script(script, &m)
            }
            Who::Strata => {
                let _s = Strata::mount(&stack, sopts, &m);
                sh_script(script, &m)
            }
        };
        out += "--\n";
        out += &sh_script(UPPER, &root);
        out += "--\n";
    }
    out
}

#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (trusted xattrs, the kernel overlayfs)"
)]
fn lower_hard_links_stay_one_file_as_with_the_kernel_index() {
    let s = Scratch::new("index");
    let kernel = run(&s, Who::Kernel, Who::Kernel);
    assert!(kernel.contains("a: 3 hl more"), "{kernel}");
    assert!(kernel.contains("b: 3 hl more"), "{kernel}");
    for (first, second) in [
        (Who::Strata, Who::Strata),
        (Who::Strata, Who::Kernel),
        (Who::Kernel, Who::Strata),
    ] {
        let got = run(&s, first, second);
        assert_eq!(
            kernel, got,
            "kernel overlayfs twice:\n{kernel}\n{first:?} then {second:?}:\n{got}"
        );
    }
}

/// The kernel's `nfs_export=on` indexes every copy-up (directories too): its upper mounts
/// with stratafs's `index=on,nfs_export=on` and the other way round, the hard links as one
/// file throughout. (Not compared: the index entries themselves, which the kernel makes for
/// every copy-up and stratafs only for hard links.)
#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (trusted xattrs, the kernel overlayfs)"
)]
fn an_nfs_export_upper_mounts_both_ways() {
    let s = Scratch::new("index-export");
    let (k, st) = ("index=on,nfs_export=on", "index=on,nfs_export=on");
    let merged = |out: String| -> String {
        out.split("--\n")
            .step_by(2)
            .collect::<Vec<_>>()
            .join("--\n")
    };
    let kernel = merged(run_with(&s, Who::Kernel, Who::Kernel, k, st));
    assert!(kernel.contains("c: 2 hl more c"), "{kernel}");
    for (first, second) in [
        (Who::Strata, Who::Strata),
        (Who::Strata, Who::Kernel),
        (Who::Kernel, Who::Strata),
    ] {
        let got = merged(run_with(&s, first, second, k, st));
        assert_eq!(
            kernel, got,
            "kernel overlayfs twice:\n{kernel}\n{first:?} then {second:?}:\n{got}"
        );
    }
}

fn check(u: &Path, w: &Path, l: &Path, repair: bool) -> (bool, String) {
    let mut c = std::process::Command::new(common::bin());
    c.arg("check")
        .arg(u)
        .arg("--workdir")
        .arg(w)
        .arg("--lower")
        .arg(l);
    if repair {
        c.arg("--repair");
    }
    let o = c.output().expect("stratafs check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// `stratafs check` judges the index as the kernel does at mount time: an entry no name
/// shows any more (all removed) is an orphan, one not named by its origin is refused; the
/// repair removes the orphan, as the kernel's next mount would.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (trusted xattrs)")]
fn check_verifies_the_index() {
    let s = Scratch::new("index-check");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    lower(&l);
    let stack = Stack::one(&l, &u, &w);
    {
        let _s = Strata::mount(&stack, "index=on", &m);
        sh_script("cd \"$1\" && echo more >> a && echo y >> y", &m);
    }
    let (ok, text) = check(&u, &w, &l, false);
    assert!(ok && !text.contains("index"), "a clean index: {text}");
    {
        let _s = Strata::mount(&stack, "index=on", &m);
        sh_script("cd \"$1\" && rm a b c", &m);
    }
    fs::write(w.join("index/00fb"), "x").unwrap();
    let (_, text) = check(&u, &w, &l, false);
    assert!(text.contains("orphan index entry"), "{text}");
    assert!(text.contains("not named by its overlay.origin"), "{text}");
    assert_eq!(text.matches("orphan").count(), 1, "only a's entry: {text}");
    let (_, text) = check(&u, &w, &l, true);
    assert!(text.contains("removed"), "{text}");
    fs::remove_file(w.join("index/00fb")).unwrap();
    let (ok, text) = check(&u, &w, &l, false);
    assert!(ok && !text.contains("index"), "repaired: {text}");
    let entries = fs::read_dir(w.join("index")).unwrap().count();
    assert_eq!(entries, 1, "y's entry stays");
}

/// With `index=on`, every entry keeps its st_ino across a remount: lower, copied-up, new,
/// renamed (lower and new), the names of a lower hard link (copied up through one, and not
/// copied up), directories; and the names of a lower hard link show one number, the
/// lower's (without the index the copied-up name takes its own: that part fails there).
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (trusted xattrs)")]
fn inode_numbers_survive_a_remount() {
    let s = Scratch::new("index-ino");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    lower(&l);
    fs::write(l.join("r"), "r\n").unwrap();
    fs::create_dir(l.join("rd")).unwrap();
    fs::write(l.join("h1"), "h\n").unwrap();
    fs::hard_link(l.join("h1"), l.join("h2")).unwrap();
    let stack = Stack::one(&l, &u, &w);
    let names = [
        "a", "b", "c", "d", "d/x", "y", "single", "new", "r2", "new2", "rd2", "h1", "h2",
    ];
    let inos = |m: &Path| -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        names
            .iter()
            .map(|n| (n.to_string(), fs::metadata(m.join(n)).unwrap().ino()))
            .collect()
    };
    let before = {
        let _s = Strata::mount(&stack, "index=on", &m);
        sh_script(
            "cd \"$1\" && echo more >> a && echo s >> single && echo n > new && echo n > n0 \
             && mv r r2 && mv n0 new2 && mv rd rd2",
            &m,
        );
        inos(&m)
    };
    let after = {
        let _s = Strata::mount(&stack, "index=on", &m);
        inos(&m)
    };
    assert_eq!(before, after);
    // And the names of a lower hard link are one inode, the lower's number, copied up or not.
    let ino = |n: &str| after.iter().find(|(m, _)| m == n).unwrap().1;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ino("a"), fs::metadata(l.join("a")).unwrap().ino());
    assert_eq!((ino("b"), ino("c")), (ino("a"), ino("a")));
    assert_eq!(ino("h1"), ino("h2"));
    assert_eq!(ino("d/x"), ino("y"));
}

/// Does stratafs mount `lowerdir=l,upperdir=u,workdir=w,index=on` (then unmounted)?
fn strata_mounts(l: &Path, u: &Path, w: &Path, m: &Path) -> bool {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=on",
        l.display(),
        u.display(),
        w.display()
    );
    let st = std::process::Command::new(common::bin())
        .arg("-o")
        .arg(&opts)
        .arg(m)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run stratafs");
    if st.success() {
        common::unmount_and_reap(m, None);
    }
    st.success()
}

/// Does the kernel overlayfs mount it with `index=on` (then unmounted)?
fn kernel_mounts(l: &Path, u: &Path, w: &Path, m: &Path) -> bool {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=on",
        l.display(),
        u.display(),
        w.display()
    );
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(&opts)
        .arg(m)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run mount");
    if st.success() {
        common::unmount_and_reap(m, None);
    }
    st.success()
}

/// With the index, an upper goes with the layers it was first mounted with: the kernel
/// records the lower root in the upper root's `overlay.origin` and refuses another lower
/// (ESTALE); stratafs records and checks the same, so each refuses what the other
/// recorded, and accepts the right layers.
#[test]
#[cfg_attr(
    not(have = "root"),
    ignore = "needs root (trusted xattrs, the kernel overlayfs)"
)]
fn an_upper_goes_with_its_layers() {
    let s = Scratch::new("index-verify");
    let (la, lb, m) = (s.dir("la"), s.dir("lb"), s.dir("m"));
    fs::write(la.join("a"), "a\n").unwrap();
    fs::write(lb.join("b"), "b\n").unwrap();
    for first_kernel in [false, true] {
        let tag = if first_kernel { "k" } else { "s" };
        let (u, w) = (s.dir(&format!("{tag}-u")), s.dir(&format!("{tag}-w")));
        let first = if first_kernel {
            kernel_mounts(&la, &u, &w, &m)
        } else {
            strata_mounts(&la, &u, &w, &m)
        };
        assert!(first, "first mount ({tag})");
        assert!(
            !kernel_mounts(&lb, &u, &w, &m),
            "kernel, other lower ({tag})"
        );
        assert!(
            !strata_mounts(&lb, &u, &w, &m),
            "stratafs, other lower ({tag})"
        );
        assert!(kernel_mounts(&la, &u, &w, &m), "kernel, same lower ({tag})");
        assert!(
            strata_mounts(&la, &u, &w, &m),
            "stratafs, same lower ({tag})"
        );
    }
}

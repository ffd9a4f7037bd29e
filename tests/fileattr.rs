//! `chattr`/`lsattr` (FS_IOC_GETFLAGS/SETFLAGS, FS_IOC_FSGETXATTR/FSSETXATTR) through the
//! mount, as a differential against the kernel overlayfs on the same layers (/tmp is
//! ext4 here, which keeps the flags): the flags read are the real object's; a set copies up
//! first; immutable and append-only go to `overlay.protattr` on the upper, never onto the
//! upper inode, and are enforced (EPERM for what the VFS refuses), also after a remount; a
//! copy-up carries a lower's noatime flag and turns its immutable flag into the marker.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{sh_script, Kernel, Scratch, Stack, Strata};

/// Through the mount (`$1`), first mount: reads, sets, and what each flag refuses.
const FIRST: &str = r#"
cd "$1" || exit 1
st() { "$@" >/dev/null 2>&1; echo "$*: $?"; }
lsattr f h L I; lsattr -d d
st chattr +i f
lsattr f
st sh -c 'echo x >> f'
st sh -c 'echo x > f'
st rm -f f
st mv f f2
st ln f f3
st chmod 600 f
st touch f
st touch -d @0 f
st setfattr -n user.x -v 1 f
cat f
st chattr -i f
lsattr f
st sh -c 'echo y >> f'
st chattr +a g
lsattr g
st sh -c 'echo y >> g'
st sh -c 'echo y > g'
st truncate -s 0 g
st rm -f g
st chattr +a d
lsattr -d d
st touch d/new
st rm -f d/x
st mv d/new d/new2
st chattr -a d
st chattr +i d
st touch d/new3
st chattr -i d
st chattr +A h
lsattr h
st sh -c 'echo z >> I'
st chmod 600 I
st rm -f I
st chmod 600 L
lsattr L
st chattr +i e
st chattr +a e
lsattr e
"#;

/// After a remount: the markers still protect.
const SECOND: &str = r#"
cd "$1" || exit 1
st() { "$@" >/dev/null 2>&1; echo "$*: $?"; }
lsattr g e
st sh -c 'echo y >> g'
st sh -c 'echo y > g'
st rm -f e
st chattr -i -a e
st rm -f e
st chattr -a g
st rm -f g
"#;

/// What the upper holds: the real flags and the markers of each entry.
const UPPER: &str = r#"
cd "$1" || exit 1
for n in f g h L d e; do
  [ -f "$n" ] || [ -d "$n" ] || { echo "$n: none"; continue; }
  echo "$n: $(lsattr -d "$n" | cut -d' ' -f1) $(getfattr --absolute-names --only-values -n trusted.overlay.protattr "$n" 2>/dev/null)"
done
"#;

/// The same through FS_IOC_FSGETXATTR/FSSETXATTR (`xfs_io`'s chattr and lsattr).
const FSX: &str = r#"
cd "$1" || exit 1
st() { "$@" >/dev/null 2>&1; echo "$*: $?"; }
xfs_io -r -c lsattr f
st xfs_io -r -c 'chattr +a' g
xfs_io -r -c lsattr g
st sh -c 'echo y > g'
st sh -c 'echo y >> g'
st xfs_io -r -c 'chattr +i' -c 'chattr -a' g
xfs_io -r -c lsattr g
st sh -c 'echo y >> g'
st xfs_io -r -c 'chattr -i' g
st xfs_io -r -c 'chattr +A' h
xfs_io -r -c lsattr h
lsattr g h
"#;

/// The stratafs mount options to compare: each transport this machine offers.
fn transports() -> Vec<&'static str> {
    let ring = fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y");
    if ring {
        vec!["noio_uring", "io_uring"]
    } else {
        vec!["noio_uring"]
    }
}

/// Runs `scripts` on a fresh stack, each in a mount of its own: the kernel overlayfs's
/// (`strata` None) or stratafs's with those options.
fn run_scripts(s: &Scratch, strata: Option<&str>, scripts: &[&str]) -> String {
    let tag = match strata {
        None => "k".to_string(),
        Some(o) => format!("s-{o}"),
    };
    let l = s.dir(&format!("{tag}-l"));
    fs::create_dir_all(l.join("d")).unwrap();
    for n in ["f", "g", "h", "L", "I", "e", "d/x"] {
        fs::write(l.join(n), format!("{n}\n")).unwrap();
    }
    chattr("+A", &l.join("L"));
    chattr("+i", &l.join("I"));
    let (u, w, m) = (
        s.dir(&format!("{tag}-u")),
        s.dir(&format!("{tag}-w")),
        s.dir(&format!("{tag}-m")),
    );
    let stack = Stack::one(&l, &u, &w);
    let mut out = String::new();
    for script in scripts {
        match strata {
            None => {
                let _k = Kernel::mount(&stack, "", &m);
                out += &sh_script(script, &m);
            }
            Some(opts) => {
                let _s = Strata::mount(&stack, opts, &m);
                out += &sh_script(script, &m);
            }
        }
        out += "--\n";
        out += &sh_script(UPPER, &u);
        out += "--\n";
    }
    // Scratch must be able to remove it all.
    let _ = Command::new("chattr")
        .args(["-R", "-f", "-i", "-a"])
        .arg(&s.0)
        .stderr(std::process::Stdio::null())
        .status();
    out
}

fn chattr(flags: &str, p: &Path) {
    let st = Command::new("chattr")
        .arg(flags)
        .arg(p)
        .status()
        .expect("chattr");
    assert!(st.success(), "chattr {flags} {}", p.display());
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (trusted xattrs, chattr +i)")]
fn chattr_lsattr_as_the_kernel_overlayfs() {
    let s = Scratch::new("fileattr");
    let kernel = run_scripts(&s, None, &[FIRST, SECOND]);
    for opts in transports() {
        let strata = run_scripts(&s, Some(opts), &[FIRST, SECOND]);
        assert_eq!(
            kernel, strata,
            "kernel overlayfs:\n{kernel}\nstratafs ({opts}):\n{strata}"
        );
    }
    // The differential is only worth something if the flags did something.
    assert!(kernel.contains("chattr +i f: 0"), "{kernel}");
    assert!(kernel.contains("sh -c echo x >> f: 2"), "{kernel}");
    assert!(kernel.contains("e: --------------e------- ai"), "{kernel}");
}

#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root (trusted xattrs, chattr +i)")]
#[cfg_attr(not(have = "xfs_io"), ignore = "needs xfs_io")]
fn fsxattr_as_the_kernel_overlayfs() {
    let s = Scratch::new("fsxattr");
    let kernel = run_scripts(&s, None, &[FSX]);
    for opts in transports() {
        let strata = run_scripts(&s, Some(opts), &[FSX]);
        assert_eq!(
            kernel, strata,
            "kernel overlayfs:\n{kernel}\nstratafs ({opts}):\n{strata}"
        );
    }
    assert!(kernel.contains("echo y > g: 2"), "{kernel}");
}

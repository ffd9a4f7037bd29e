//! The live-CD recipe (scripts/live-cd.sh): a squashfs image as the lower, loop-mounted by
//! the kernel (and, second, through squashfuse), under a tmpfs upper. The merged view must
//! equal the image's content, and the image must be byte-identical afterwards.
//!
//! The write half (create and modify files, visible while mounted, only in the tmpfs
//! upper, image unchanged) is strict: the write path is merged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stratafs");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/live-cd.sh");

fn sh(cmd: &mut Command) -> String {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mounts_under(prefix: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(String::from))
        .filter(|mp| Path::new(mp).starts_with(prefix))
        .collect()
}

/// Live stratafs daemons whose command line mentions `tag`.
fn daemons(tag: &str) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let p = e.path();
            let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(p.join("stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            let s = String::from_utf8_lossy(&cmd);
            !zombie && s.split('\0').next().unwrap_or("").ends_with("stratafs") && s.contains(tag)
        })
        .count()
}

/// A work directory; Drop stops the live system and unmounts anything left below it.
struct Live {
    root: PathBuf,
    tag: String,
}

impl Live {
    fn new(name: &str) -> Live {
        let tag = format!("stratafs-live-{name}-{}", std::process::id());
        let l = Live {
            root: PathBuf::from("/tmp").join(&tag),
            tag,
        };
        l.cleanup();
        std::fs::create_dir_all(l.root.join("m")).unwrap();
        l
    }

    fn p(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }

    fn cleanup(&self) {
        let _ = Command::new(SCRIPT)
            .arg("stop")
            .arg(self.p("m"))
            .arg(self.p("state"))
            .stderr(Stdio::null())
            .status();
        for mp in mounts_under(&self.root).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        let end = Instant::now() + Duration::from_secs(5);
        while daemons(&self.tag) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn build_tree(src: &Path) {
    for d in ["etc", "usr/bin", "var/empty", "home/user"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/motd"), "welcome to the live system\n").unwrap();
    std::fs::write(src.join("etc/hostname"), "live\n").unwrap();
    std::fs::write(src.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("usr/big.bin"), big).unwrap();
    std::os::unix::fs::symlink("../../etc/motd", src.join("usr/bin/motd-link")).unwrap();
    std::os::unix::fs::symlink("tool", src.join("usr/bin/alias")).unwrap();
}

/// `find -printf` listing; owners included (the image is built with -all-root).
fn listing(dir: &Path) -> String {
    let out = sh(Command::new("find").arg(dir).args([
        "-mindepth",
        "1",
        "-printf",
        "%P %y %m %U %G %l\n",
    ]));
    let mut v: Vec<&str> = out.lines().collect();
    v.sort();
    v.join("\n")
}

fn sha256(file: &Path) -> String {
    sh(Command::new("sha256sum").arg(file))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn write_ok(what: &str, r: std::io::Result<()>) -> bool {
    if let Err(e) = r {
        panic!("{what}: {e}");
    }
    true
}

fn live_cd(name: &str, squashfuse: bool) {
    let live = Live::new(name);
    let src = live.p("src");
    build_tree(&src);
    let image = live.p("live.squashfs");
    sh(Command::new(SCRIPT).arg("build").arg(&src).arg(&image));
    // -all-root: compare against the tree as root owns it.
    sh(Command::new("chown").arg("-R").arg("0:0").arg(&src));
    let sum = sha256(&image);
    let m = live.p("m");

    let mut start = Command::new(SCRIPT);
    start.arg("start").env("STRATAFS", BIN);
    if squashfuse {
        start.arg("--squashfuse");
    }
    let o = start
        .arg(&image)
        .arg(&m)
        .arg(live.p("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "start: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "start is quiet");
    let mounted = mounts_under(&live.root);
    assert!(mounted.iter().any(|mp| Path::new(mp) == m), "{mounted:?}");

    // Reading: the merged view is the image.
    assert_eq!(listing(&m), listing(&src));
    sh(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(&m));

    // Writing: new and modified files live in the tmpfs upper, visible while mounted.
    let created = write_ok(
        "create home/user/notes",
        std::fs::write(m.join("home/user/notes"), "scratch\n"),
    );
    if created {
        assert_eq!(
            std::fs::read_to_string(m.join("home/user/notes")).unwrap(),
            "scratch\n"
        );
    }
    let modified = write_ok(
        "modify etc/motd",
        std::fs::write(m.join("etc/motd"), "changed in RAM\n"),
    );
    if modified {
        assert_eq!(
            std::fs::read_to_string(m.join("etc/motd")).unwrap(),
            "changed in RAM\n"
        );
        assert_eq!(
            std::fs::read_to_string(live.p("state/rw/upper/etc/motd")).unwrap(),
            "changed in RAM\n",
            "the change is in the tmpfs upper"
        );
        assert_eq!(
            std::fs::read_to_string(live.p("state/ro/etc/motd")).unwrap(),
            "welcome to the live system\n",
            "the mounted image is unchanged"
        );
    }

    sh(Command::new(SCRIPT)
        .arg("stop")
        .arg(&m)
        .arg(live.p("state")));
    assert!(
        mounts_under(&live.root).is_empty(),
        "stop unmounts everything"
    );
    assert_eq!(daemons(&live.tag), 0, "no daemon left after stop");
    assert!(!live.p("state").exists(), "stop removes the state dir");
    assert_eq!(sha256(&image), sum, "the image is byte-identical");
    assert!(!m.join("etc").exists(), "nothing left on the mountpoint");
}

#[test]
#[cfg_attr(
    not(all(have = "root", have = "mksquashfs")),
    ignore = "needs root and mksquashfs"
)]
fn live_cd_kernel_loop_lower_tmpfs_upper() {
    live_cd("loop", false);
}

#[test]
#[cfg_attr(
    not(all(have = "root", have = "mksquashfs", have = "squashfuse")),
    ignore = "needs root and mksquashfs and squashfuse"
)]
fn live_cd_squashfuse_lower() {
    live_cd("squashfuse", true);
}

/// A module (a second squashfs image) activated at run time on the running live system, as
/// Slax/Porteus do with aufs: `stratafs branch MNT add:1:MODULE=rr` (right below the tmpfs
/// upper), its files visible at once, a running process's open file from the old stack
/// intact, then deactivated again (`del:`) and its image unmounted.
#[test]
#[cfg_attr(
    not(all(have = "root", have = "mksquashfs")),
    ignore = "needs root and mksquashfs"
)]
fn live_cd_module_activated_at_runtime() {
    let live = Live::new("module");
    let src = live.p("src");
    build_tree(&src);
    let image = live.p("live.squashfs");
    sh(Command::new(SCRIPT).arg("build").arg(&src).arg(&image));
    sh(Command::new("chown").arg("-R").arg("0:0").arg(&src));
    // The module: a new tree, and a replacement of one of the image's files.
    let msrc = live.p("module-src");
    std::fs::create_dir_all(msrc.join("opt/module/bin")).unwrap();
    std::fs::create_dir_all(msrc.join("usr/bin")).unwrap();
    std::fs::write(
        msrc.join("opt/module/bin/mtool"),
        "#!/bin/sh\necho module\n",
    )
    .unwrap();
    std::fs::write(msrc.join("usr/bin/tool"), "#!/bin/sh\necho module tool\n").unwrap();
    std::fs::write(msrc.join("etc-module.conf"), "on\n").unwrap();
    let module = live.p("module.squashfs");
    sh(Command::new(SCRIPT).arg("build").arg(&msrc).arg(&module));
    sh(Command::new("chown").arg("-R").arg("0:0").arg(&msrc));
    let expected = live.p("expected");
    sh(Command::new("cp").arg("-a").arg(&src).arg(&expected));
    sh(Command::new("sh").arg("-c").arg(format!(
        "cp -a {}/. {}",
        msrc.display(),
        expected.display()
    )));
    let m = live.p("m");
    let o = Command::new(SCRIPT)
        .arg("start")
        .env("STRATAFS", BIN)
        .arg(&image)
        .arg(&m)
        .arg(live.p("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "start: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(listing(&m), listing(&src));
    // A running process holding the image's usr/bin/tool open (and its cwd in /etc).
    let flag = live.p("flag");
    let reader = Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$1\"; i=0; while [ ! -e \"$2\" ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done; cat <&3")
        .arg("sh")
        .arg(m.join("usr/bin/tool"))
        .arg(&flag)
        .current_dir(m.join("etc"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if the test fails before it ends (it holds the mount).
    struct Reap(Option<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut reader = Reap(Some(reader));
    let fd3 = PathBuf::from(format!("/proc/{}/fd/3", reader.0.as_ref().unwrap().id()));
    let end = Instant::now() + Duration::from_secs(5);
    while !fd3.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Activate: the module mounted, then added right below the upper.
    let mmnt = live.p("module-mnt");
    std::fs::create_dir_all(&mmnt).unwrap();
    sh(Command::new("mount")
        .args(["-t", "squashfs", "-o", "ro,loop"])
        .arg(&module)
        .arg(&mmnt));
    let out = sh(Command::new(BIN)
        .arg("branch")
        .arg(&m)
        .arg(format!("add:1:{}=rr", mmnt.display())));
    assert_eq!(out.trim(), format!("added {} at 1 (rr)", mmnt.display()));
    assert_eq!(listing(&m), listing(&expected), "the module's files show");
    assert_eq!(
        std::fs::read_to_string(m.join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho module tool\n"
    );
    assert_eq!(
        sh(Command::new("sh").arg(m.join("opt/module/bin/mtool"))).trim(),
        "module"
    );
    std::fs::write(&flag, "").unwrap();
    let got = reader.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "#!/bin/sh\necho tool\n",
        "the process's open file from the old stack reads on unchanged"
    );
    // Deactivate, and the image can go.
    let out = sh(Command::new(BIN)
        .arg("branch")
        .arg(&m)
        .arg(format!("del:{}", mmnt.display())));
    assert_eq!(out.trim(), format!("removed {}", mmnt.display()));
    assert_eq!(
        listing(&m),
        listing(&src),
        "the module is gone from the view"
    );
    sh(Command::new("umount").arg(&mmnt));
    assert_eq!(
        std::fs::read_to_string(m.join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho tool\n"
    );
    sh(Command::new(SCRIPT)
        .arg("stop")
        .arg(&m)
        .arg(live.p("state")));
    assert!(
        mounts_under(&live.root).is_empty(),
        "stop unmounts everything"
    );
    assert_eq!(daemons(&live.tag), 0, "no daemon left after stop");
}

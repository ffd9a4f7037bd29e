//! Apptainer's use of an overlay program, reproduced call for call (apptainer 1.4's
//! internal/pkg/image/driver/imagedriver.go, `fuseappsDriver.Mount`/`stop`/`filterMsg`,
//! and internal/pkg/runtime/engine/apptainer/container_linux.go, `mountImageDriver`, and
//! cleanup_linux.go):
//!
//! - setuid mode: the starter opens /dev/fuse and mounts it itself, `mount("fuse", TARGET,
//!   "fuse", MS_NOSUID|MS_NODEV[|MS_RDONLY], "fd=N,rootmode=40000,user_id=UID,group_id=GID,
//!   allow_other")`, then runs the program as the user, without capabilities, in its own
//!   process group, with the descriptor as fd 3: `PROG -f -o allow_other[,ro],lowerdir=…,
//!   upperdir=…,workdir=…,noacl /dev/fd/3` (the options string built as the Go code builds
//!   it: `,xino=on` removed, `,noacl` appended). It does not wait for the mount.
//! - unprivileged mode: the program mounts a directory itself; the driver polls
//!   /proc/self/mountinfo every 25 ms for up to 10 s for the target.
//! - the end: syncfs on the mount, umount(2) (retried on EBUSY), then the program must exit
//!   within 1 s, else SIGTERM, 1 s, SIGKILL. Any line on stderr not in the driver's list of
//!   known messages is reported as an error: stratafs prints nothing at all.
//!
//! The "user" is uid/gid 65534 and the lower is owned by it, as squashfuse's `uid=`/`gid=`
//! show a SIF image to the user in that mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, mount_type, sh_as, Scratch};

const USER: u32 = 65534;

/// What the setuid starter does before running the program: open /dev/fuse and mount it
/// on `target` with the options of `mountImageDriver` (`extra` appended, for the tests of
/// other callers). Returns the descriptor the program is handed.
fn starter_mount(target: &Path, uid: u32, gid: u32, ro: bool, extra: &str) -> File {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("open /dev/fuse");
    // rootmode: Go's `syscall.S_IFDIR & syscall.S_IFMT` printed with %o.
    let data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},allow_other{extra}",
        dev.as_raw_fd(),
        libc::S_IFDIR & libc::S_IFMT
    );
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if ro {
        flags |= libc::MS_RDONLY;
    }
    let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
    let (src, tgt, ty, d) = (
        c(b"fuse"),
        c(target.as_os_str().as_bytes()),
        c(b"fuse"),
        c(data.as_bytes()),
    );
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            d.as_ptr().cast(),
        )
    };
    assert_eq!(r, 0, "mount fuse: {}", std::io::Error::last_os_error());
    dev
}

/// The options string of `fuseappsDriver.Mount` for an overlay: `allow_other`, `,ro` for a
/// read-only mount, the overlay's options, `,xino=on` removed, `,noacl` appended.
fn apptainer_options(ro: bool, fs_options: &[String]) -> String {
    let mut opts = "allow_other".to_string();
    if ro {
        opts.push_str(",ro");
    }
    if !fs_options.is_empty() {
        opts.push(',');
        opts.push_str(&fs_options.join(","));
    }
    opts = opts.replace(",xino=on", "");
    opts.push_str(",noacl");
    opts
}

/// The overlay's FSOptions as Apptainer's `AddOverlay` makes them.
fn overlay_fs_options(lower: &Path, upper: Option<(&Path, &Path)>) -> Vec<String> {
    match upper {
        Some((u, w)) => vec![format!(
            "lowerdir={},upperdir={},workdir={},xino=on",
            lower.display(),
            u.display(),
            w.display()
        )],
        None => vec![format!("lowerdir={}", lower.display())],
    }
}

/// Runs the program as the driver does: `-f -o OPTS TARGET`, its own process group, stdout
/// and stderr read by the driver; `fd` becomes descriptor 3; `user` drops to that uid/gid
/// (setuid mode: no capabilities).
fn spawn_driver(opts: &str, target: &str, fd: Option<&File>, user: Option<u32>) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["-f", "-o", opts, target])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(u) = user {
        cmd.uid(u).gid(u);
    }
    if let Some(f) = fd {
        let raw = f.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().expect("spawn stratafs")
}

/// The unprivileged driver's wait: /proc/self/mountinfo every 25 ms, up to 10 s.
fn wait_like_driver(target: &Path, child: &mut Child) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(25));
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        if info
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        {
            return start.elapsed();
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "stratafs exited ({st}) before mounting: {}",
                output_of(child).1
            );
        }
    }
    panic!("stratafs did not mount {} in 10 s", target.display());
}

fn output_of(child: &mut Child) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err)
}

/// How the driver's stop went.
#[derive(Debug)]
struct Stopped {
    syncfs: std::io::Result<()>,
    /// Exited by itself within 1 s of the unmount, with this status.
    exited: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Apptainer's cleanup: syncfs on the (writable) mount, umount(2) retried on EBUSY, then
/// the driver's `stop(kill=false)`: 1 s for the program to exit, SIGTERM, 1 s, SIGKILL.
fn stop_like_apptainer(target: &Path, mut child: Child) -> Stopped {
    let syncfs = File::open(target).and_then(|d| {
        // SAFETY: syncfs on an open fd.
        match unsafe { libc::syncfs(d.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    let t = std::ffi::CString::new(target.as_os_str().as_bytes()).unwrap();
    for _ in 0..=10 {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut exited = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if exited.is_none() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_secs(1));
        let _ = child.kill();
        let _ = child.wait();
        if mount_type(target).is_some() {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
    let (stdout, stderr) = output_of(&mut child);
    Stopped {
        syncfs,
        exited,
        stdout,
        stderr,
    }
}

/// What a test leaves if it fails half-way: on drop, the mount at `mnt` is detached and
/// every stratafs process whose command line names the scratch directory is killed.
struct Leftovers {
    scratch: PathBuf,
    mnt: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if mount_type(&self.mnt).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let tag = self.scratch.as_os_str().as_bytes();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            if argv0.ends_with(b"stratafs") && cmd.windows(tag.len()).any(|w| w == tag) {
                // SAFETY: a process of this test (its command line names our scratch dir).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A SIF-like lower (owned by `owner`, as squashfuse shows it with `uid=`/`gid=`), an
/// upper and a workdir owned by `owner`, and the mount target.
fn layers(s: &Scratch, owner: u32) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (l, u, w, m) = (s.dir("lower"), s.dir("upper"), s.dir("work"), s.dir("mnt"));
    fs::create_dir_all(l.join("usr/bin")).unwrap();
    fs::create_dir_all(l.join("d/sub")).unwrap();
    fs::write(l.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        l.join("usr/bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(l.join("d/f"), "lower f\n").unwrap();
    fs::write(l.join("d/sub/x"), "x\n").unwrap();
    fs::write(l.join("g"), "g\n").unwrap();
    fs::write(l.join("keep"), "keep\n").unwrap();
    for p in [&l, &u, &w] {
        let st = Command::new("chown")
            .args(["-R", &format!("{owner}:{owner}")])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    (l, u, w, m)
}

/// The container's side, as the user: reads the merged view, then writes.
const WORKLOAD: &str = "set -e
test \"$(cat keep)\" = keep
test \"$(cat d/f)\" = 'lower f'
test -x usr/bin/tool
echo new > n
echo more >> g
mv g g2
rm d/f
rm -r d
mkdir d
echo y > d/y
t=$(mktemp usr/bin/.tmpXXXXXX) && rm \"$t\"
echo listing: $(ls -A .) / $(ls -A d)";

/// What the upper holds after [`WORKLOAD`], and the merged view through a fresh kernel
/// overlayfs mount of the same layers (`xattr` is the namespace the daemon wrote markers in).
fn check_after_workload(lower: &Path, upper: &Path, userxattr: bool) {
    assert_eq!(fs::read_to_string(upper.join("n")).unwrap(), "new\n");
    assert_eq!(fs::read_to_string(upper.join("g2")).unwrap(), "g\nmore\n");
    let g = fs::symlink_metadata(upper.join("g")).unwrap();
    assert!(
        g.file_type().is_char_device() && g.rdev() == 0,
        "whiteout g"
    );
    let ns = if userxattr { "user" } else { "trusted" };
    let dir = stratafs::sys::open_host_dir(upper).unwrap();
    let attr = std::ffi::CString::new(format!("{ns}.overlay.opaque")).unwrap();
    let opaque = stratafs::sys::xattr::get(std::os::fd::AsFd::as_fd(&dir), c"d", &attr).unwrap();
    assert_eq!(
        opaque.as_deref(),
        Some(&b"y"[..]),
        "{ns}.overlay.opaque on d"
    );
    // The kernel overlayfs reads the result the same way.
    let s = Scratch::new("apptainer-kernel");
    let m = s.dir("m");
    let mut o = format!("lowerdir={}:{}", upper.display(), lower.display());
    if userxattr {
        o.push_str(",userxattr");
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success(), "kernel overlay mount");
    let names = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let top = names(&m);
    let d = names(&m.join("d"));
    let _ = Command::new("umount").arg(&m).status();
    assert_eq!(top, ["d", "g2", "keep", "n", "usr"]);
    assert_eq!(d, ["y"]);
}

fn run_workload(mnt: &Path, as_user: bool) -> String {
    let out = sh_as(as_user, WORKLOAD, mnt).output().unwrap();
    assert!(
        out.status.success(),
        "workload in the mount failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_clean_stop(st: &Stopped) {
    assert!(st.syncfs.is_ok(), "syncfs: {:?}", st.syncfs);
    assert!(
        st.exited.is_some_and(|s| s.success()),
        "stratafs did not exit 0 within 1 s of the unmount: {:?}; stderr: {}",
        st.exited,
        st.stderr
    );
    assert_eq!(st.stderr, "", "stderr of a successful mount");
    assert_eq!(st.stdout, "", "stdout of a successful mount");
}

/// setuid mode, writable: `/dev/fd/3` mounted by the starter, stratafs as the user.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn setuid_starter_dev_fd_writable() {
    let s = Scratch::new("apptainer-fd-rw");
    let (l, u, w, m) = layers(&s, USER);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: m.clone(),
    };
    let fd = starter_mount(&m, USER, USER, false, "");
    let opts = apptainer_options(false, &overlay_fs_options(&l, Some((&u, &w))));
    assert_eq!(
        opts,
        format!(
            "allow_other,lowerdir={},upperdir={},workdir={},noacl",
            l.display(),
            u.display(),
            w.display()
        )
    );
    let child = spawn_driver(&opts, "/dev/fd/3", Some(&fd), Some(USER));
    drop(fd); // the starter closes its copy (`defer unix.Close(fuseFd)`)
    let listing = run_workload(&m, true);
    assert!(
        listing.contains("listing: d g2 keep n usr / y"),
        "{listing}"
    );
    assert_clean_stop(&stop_like_apptainer(&m, child));
    // As a plain user the daemon cannot write trusted.* xattrs: user.overlay.* markers.
    check_after_workload(&l, &u, true);
}

/// setuid mode, read-only: the mount is MS_RDONLY and the options carry `ro`.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn setuid_starter_dev_fd_read_only() {
    let s = Scratch::new("apptainer-fd-ro");
    let (l, _u, _w, m) = layers(&s, USER);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: m.clone(),
    };
    let fd = starter_mount(&m, USER, USER, true, "");
    let opts = apptainer_options(true, &overlay_fs_options(&l, None));
    assert_eq!(
        opts,
        format!("allow_other,ro,lowerdir={},noacl", l.display())
    );
    let child = spawn_driver(&opts, "/dev/fd/3", Some(&fd), Some(USER));
    drop(fd);
    let out = sh_as(
        true,
        "test \"$(cat keep)\" = keep && test \"$(cat d/sub/x)\" = x && ! touch n 2>/dev/null",
        &m,
    )
    .status()
    .unwrap();
    assert!(out.success(), "read-only merged view");
    assert_clean_stop(&stop_like_apptainer(&m, child));
}

/// unprivileged mode: stratafs mounts the directory itself; the driver waits for it in
/// mountinfo. Writable, then read-only.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn unprivileged_driver_directory_form() {
    let s = Scratch::new("apptainer-dir");
    let (l, u, w, m) = layers(&s, 0);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: m.clone(),
    };
    let opts = apptainer_options(false, &overlay_fs_options(&l, Some((&u, &w))));
    let mut child = spawn_driver(&opts, m.to_str().unwrap(), None, None);
    let took = wait_like_driver(&m, &mut child);
    assert!(
        took < Duration::from_secs(2),
        "mount took {took:?} (Apptainer says so above 2 s)"
    );
    run_workload(&m, false);
    assert_clean_stop(&stop_like_apptainer(&m, child));
    check_after_workload(&l, &u, false);

    let opts = apptainer_options(true, &overlay_fs_options(&l, None));
    let mut child = spawn_driver(&opts, m.to_str().unwrap(), None, None);
    wait_like_driver(&m, &mut child);
    let ok = sh_as(
        false,
        "test \"$(cat keep)\" = keep && ! touch z 2>/dev/null",
        &m,
    )
    .status()
    .unwrap();
    assert!(ok.success(), "read-only merged view");
    assert_clean_stop(&stop_like_apptainer(&m, child));
}

/// /dev/fuse usable by the user while held (0666 if it was not; put back on drop).
struct FuseAccess(Option<u32>);

impl FuseAccess {
    fn get() -> FuseAccess {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        FuseAccess((mode & 0o666 != 0o666).then(|| {
            fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
            mode
        }))
    }
}

impl Drop for FuseAccess {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(m) = self.0 {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(m));
        }
    }
}

/// The unprivileged driver inside the user's namespace, as Apptainer runs it without the
/// setuid starter: the user is root of a new user and mount namespace, stratafs mounts the
/// directory itself, the driver waits for it in mountinfo (25 ms steps, 10 s), the
/// container writes, then `sync -f` (syncfs), umount, and the exit status and output.
const IN_USERNS: &str = r#"set -e
out=$1 opts=$2 mnt=$3
"$4" -f -o "$opts" "$mnt" >"$out/stdout" 2>"$out/stderr" &
pid=$!
i=0
until awk -v m="$mnt" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; do
  i=$((i + 1)); [ "$i" -le 400 ] || { echo "no mount after 10 s"; exit 1; }
  sleep 0.025
done
(cd "$mnt" && sh -c "$5")
sync -f "$mnt"
umount "$mnt"
set +e
wait "$pid"
echo "exit status $?"
"#;

/// unprivileged mode for real: in a user namespace of the user, writable.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn unprivileged_driver_in_a_user_namespace() {
    let s = Scratch::new("apptainer-userns");
    let (l, u, w, m) = layers(&s, USER);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: m.clone(),
    };
    let out = s.dir("out");
    let st = Command::new("chown")
        .arg(format!("{USER}:{USER}"))
        .arg(&out)
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success());
    let opts = apptainer_options(false, &overlay_fs_options(&l, Some((&u, &w))));
    let _fuse = FuseAccess::get();
    let o = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
        ])
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            IN_USERNS,
            "sh",
        ])
        .arg(&out)
        .arg(&opts)
        .arg(&m)
        .arg(bin())
        .arg(WORKLOAD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && said.contains("listing: d g2 keep n usr / y"),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("exit status 0"), "{said}");
    assert_eq!(
        fs::read_to_string(out.join("stderr")).unwrap(),
        "",
        "stderr"
    );
    assert_eq!(
        fs::read_to_string(out.join("stdout")).unwrap(),
        "",
        "stdout"
    );
    // In a user namespace the markers are user.overlay.* (the kernel's userxattr form).
    check_after_workload(&l, &u, true);
}

/// A root daemon on a caller's mount without `default_permissions` would do for every user
/// what root can: refused with one line. With `default_permissions` it serves.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn dev_fd_as_root_needs_default_permissions() {
    let s = Scratch::new("apptainer-fd-root");
    let (l, u, w, m) = layers(&s, 0);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: m.clone(),
    };
    let opts = apptainer_options(false, &overlay_fs_options(&l, Some((&u, &w))));
    let fd = starter_mount(&m, 0, 0, false, "");
    let mut child = spawn_driver(&opts, "/dev/fd/3", Some(&fd), None);
    drop(fd);
    let st = child.wait().unwrap();
    let (_, err) = output_of(&mut child);
    let _ = Command::new("umount").arg(&m).status();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("no default_permissions"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let fd = starter_mount(&m, 0, 0, false, ",default_permissions");
    let child = spawn_driver(&opts, "/dev/fd/3", Some(&fd), None);
    drop(fd);
    run_workload(&m, false);
    // Permissions are the kernel's: the user may not write into root's 0755 directories.
    let denied = sh_as(true, "exec 2>/dev/null; echo x > nobody-was-here", &m)
        .status()
        .unwrap();
    assert!(!denied.success(), "a user wrote into root's directory");
    assert_clean_stop(&stop_like_apptainer(&m, child));
    check_after_workload(&l, &u, false);
}

/// `/dev/fd/N` that is not an open /dev/fuse descriptor: one line, exit 1, nothing mounted.
#[test]
#[cfg_attr(not(have = "root"), ignore = "needs root")]
fn dev_fd_that_is_not_fuse() {
    let s = Scratch::new("apptainer-fd-bad");
    let (l, _u, _w, _m) = layers(&s, 0);
    let _left = Leftovers {
        scratch: s.0.clone(),
        mnt: _m.clone(),
    };
    let opts = apptainer_options(true, &overlay_fs_options(&l, None));
    let null = File::open("/dev/null").unwrap();
    for (target, fd) in [("/dev/fd/3", Some(&null)), ("/dev/fd/97", None)] {
        let mut child = spawn_driver(&opts, target, fd, None);
        let st = child.wait().unwrap();
        let (_, err) = output_of(&mut child);
        assert_eq!(st.code(), Some(1), "{target}: {err}");
        assert!(
            err.contains("not an open read-write descriptor of /dev/fuse"),
            "{err}"
        );
    }
}

//! Setuid and setgid bits dropped by changes, stratafs against the kernel overlayfs on the
//! same layers: write, truncate (ftruncate and `open(O_TRUNC)`), fallocate, chown by the
//! owner, `chown(-1, -1)` (drops setuid, even for root), `utimensat` with both times
//! UTIME_OMIT (drops nothing), `setfacl -m u::rwx,g::rwx,o::rx`
//! (xfstests generic/375) and a write through a
//! shared mapping (which drops nothing), and a write through a handle opened before
//! the bits were set (chmod while open: the kernel drops them at the write; with
//! FUSE_HANDLE_KILLPRIV_V2 the daemon sees no passthrough write, only the empty SETATTR the
//! FUSE module sends from the writer before it), on files of mode
//! 04755, 02755, 02766, 02777, 06777 and 0755 owned by nobody with group 0 (nobody is
//! outside it) and group nobody, each done by nobody (uid/gid 65534, no supplementary
//! groups: no CAP_FSETID) and by root (CAP_FSETID keeps what the kernel keeps).
//!
//! Then programs (copies of `id`) of root's with modes 04777 and 02777, run by nobody before
//! and after nobody writes them: the kernel's cached attributes must lose the bits too.
//!
//! Run twice: as root (stratafs uses FUSE passthrough there), and inside a user namespace
//! mapping ids 0..65535 to themselves (no passthrough: the writeback cache), where the
//! kernel overlayfs itself treats the namespace's root as holding no CAP_FSETID for
//! writes. Both mounts get `allow_other,default_permissions` so nobody may use them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_tree, sh_script as sh, Scratch};

const MODES: &str = "4755 2755 2766 2777 6777 0755";
const OPS: &str = "write trunc otrunc falloc chown chownid omit acl mmap late";

/// `$1`: the lower directory to fill.
const MAKE_LOWER: &str = r#"set -e
L=$1
for who in nobody root; do for op in OPS; do for m in MODES; do for g in 0 65534; do
  f=$L/$who-$op-$m-g$g; echo data > $f; chown 65534:$g $f; chmod $m $f
done; done; done; done
# Opened for write before the mode is set (see RUN_OPS).
chmod 0666 $L/*-late-*
# Programs of root's that nobody may write: after a write, running one must not give
# root's uid or gid any more.
for m in 4777 2777; do cp /usr/bin/id $L/exec-$m; chown 0:0 $L/exec-$m; chmod $m $L/exec-$m; done
"#;

/// `$1`: the mount. Each operation on its own file; then `name mode uid:gid size` of all.
const RUN_OPS: &str = r#"M=$1
MMAP="import mmap,os,sys; fd=os.open(sys.argv[1],os.O_RDWR); m=mmap.mmap(fd,4,mmap.MAP_SHARED); m[0:1]=b'X'; m.flush()"
OMIT="import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); t=(ctypes.c_long*4)(0,(1<<30)-2,0,(1<<30)-2); sys.exit(l.utimensat(-100,sys.argv[1].encode(),t,0))"
LATE="import os,sys; fd=os.open(sys.argv[1],os.O_WRONLY|os.O_APPEND); os.write(fd,b'a'); os.chmod(sys.argv[1],int(sys.argv[2],8)); os.write(fd,b'b'); os.close(fd)"
run() { who=$1; shift
  if [ $who = nobody ]; then setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$*"
  else sh -c "$*"; fi 2>/dev/null || echo "failed: $*"; }
for who in nobody root; do for m in MODES; do for g in 0 65534; do
  s=$m-g$g
  run $who "echo more >> $M/$who-write-$s"
  run $who "truncate -s 2 $M/$who-trunc-$s"
  run $who ": > $M/$who-otrunc-$s"
  run $who "fallocate -l 8192 $M/$who-falloc-$s"
  run $who "chown 65534:65534 $M/$who-chown-$s"
  run $who "/usr/bin/python3 -c \"import os,sys; os.chown(sys.argv[1],-1,-1)\" $M/$who-chownid-$s"
  run $who "/usr/bin/python3 -c \"$OMIT\" $M/$who-omit-$s"
  run $who "setfacl -m u::rwx,g::rwx,o::rx $M/$who-acl-$s"
  MMAP_OP
  run $who "/usr/bin/python3 -c \"$LATE\" $M/$who-late-$s $m"
done; done; done
for f in exec-4777 exec-2777; do
  printf '%s: ' $f-ids
  setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$M/$f -u; $M/$f -g; echo >> $M/$f; $M/$f -u; $M/$f -g" | tr '\n' ' '
  echo
done
cd $M && for f in *; do echo "$f $(stat -c '%a %u:%g %s' $f)"; done
"#;

fn script(s: &str) -> String {
    script_with(s, true)
}

/// With or without the write through a shared mapping. In a user namespace stratafs's own
/// write-back of the pages, as the namespace's root without CAP_FSETID in the initial
/// namespace, makes the upper filesystem drop the bits itself (the kernel overlayfs drops
/// none): a difference that does not come from these rules, left out there.
fn script_with(s: &str, mmap: bool) -> String {
    let op = if mmap {
        r#"run $who "/usr/bin/python3 -c \"$MMAP\" $M/$who-mmap-$s""#
    } else {
        ":"
    };
    s.replace("MODES", MODES)
        .replace("OPS", OPS)
        .replace("MMAP_OP", op)
}

fn lower(s: &Scratch) -> std::path::PathBuf {
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    let l = s.dir("lower");
    fs::set_permissions(&l, fs::Permissions::from_mode(0o755)).unwrap();
    sh(&script(MAKE_LOWER), &l);
    l
}

/// Line by line, the differences (kernel first).
fn compare(kernel: &str, ours: &str) {
    let k: Vec<&str> = kernel.lines().collect();
    let o: Vec<&str> = ours.lines().collect();
    let diffs: Vec<String> = k
        .iter()
        .zip(o.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kernel {a:<32} stratafs {b}"))
        .collect();
    assert!(
        diffs.is_empty() && k.len() == o.len(),
        "{} differences ({} vs {} lines):\n{}",
        diffs.len(),
        k.len(),
        o.len(),
        diffs.join("\n")
    );
    // The cases the rules are about, stated outright.
    for (name, mode) in [
        ("nobody-write-2766-g0", "766"),
        ("nobody-write-2766-g65534", "2766"),
        ("nobody-write-4755-g65534", "755"),
        ("nobody-trunc-2766-g0", "766"),
        ("nobody-otrunc-2766-g0", "766"),
        ("nobody-chown-2766-g0", "766"),
        ("nobody-acl-2755-g0", "775"),
        ("nobody-acl-6777-g0", "4775"),
        ("nobody-acl-2755-g65534", "2775"),
        ("nobody-mmap-4755-g0", "4755"),
        ("nobody-mmap-2755-g0", "2755"),
        ("nobody-late-4755-g65534", "755"),
        ("nobody-late-6777-g65534", "777"),
        ("root-chownid-4755-g0", "755"),
        ("nobody-chownid-2766-g0", "766"),
        ("nobody-omit-6777-g0", "6777"),
    ] {
        let line = o
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert_eq!(line.split(' ').nth(1), Some(mode), "{line}");
    }
    let failed: Vec<&&str> = o.iter().filter(|l| l.starts_with("failed:")).collect();
    assert!(
        failed.iter().all(|l| l.contains("nobody-chown")),
        "only nobody's chown to a group it is not in may fail: {failed:?}"
    );
    // Run by nobody before and after its write: root's id before, nobody's after.
    assert!(o.contains(&"exec-4777-ids: 0 65534 65534 65534 "), "{o:?}");
    assert!(o.contains(&"exec-2777-ids: 65534 0 65534 65534 "), "{o:?}");
    assert!(o.len() >= 172, "{} entries", o.len());
}

#[test]
fn as_root_with_passthrough_bits_drop_as_in_the_kernel_overlayfs() {
    let s = Scratch::new("privs");
    let l = lower(&s);
    let (k, o) = common::kernel_and_strata(&s, &l, "allow_other,default_permissions", |m| {
        sh(&script(RUN_OPS), m)
    });
    compare(&k, &o);
}

/// The same inside a user namespace (ids 0..65535 mapped to themselves): stratafs gets no
/// passthrough there and runs with the writeback cache, the kernel overlayfs is mounted with
/// `userxattr`.
#[test]
fn in_a_user_namespace_with_writeback_bits_drop_as_in_the_kernel_overlayfs() {
    let s = Scratch::new("privs-ns");
    let l = lower(&s);
    let bin = s.path("stratafs");
    fs::copy(common::bin(), &bin).unwrap();
    let mut outs = Vec::new();
    for kernel in [true, false] {
        let tag = if kernel { "k" } else { "s" };
        let l2 = s.path(&format!("{tag}-lower"));
        copy_tree(&l, &l2);
        let (u, w, m) = (
            s.dir(&format!("{tag}-u")),
            s.dir(&format!("{tag}-w")),
            s.dir(&format!("{tag}-m")),
        );
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            l2.display(),
            u.display(),
            w.display()
        );
        let mount = if kernel {
            format!(
                "mount -t overlay overlay -o userxattr,{opts} {m}",
                m = m.display()
            )
        } else {
            format!(
                "{bin} -f -o {opts},allow_other,default_permissions {m} & pid=$!
i=0; while ! grep -q ' {m} fuse' /proc/mounts; do i=$((i+1)); [ $i -lt 150 ] || exit 1; sleep 0.1; done",
                bin = bin.display(),
                m = m.display()
            )
        };
        let ops = s.path("ops.sh");
        fs::write(&ops, script_with(RUN_OPS, false)).unwrap();
        // Waits for its id maps, mounts, runs the operations, unmounts (also on failure).
        let inner = format!(
            r#"while [ -z "$(cat /proc/self/uid_map)" ] || [ -z "$(cat /proc/self/gid_map)" ]; do sleep 0.02; done
set -e
{mount}
trap 'umount {m} 2>/dev/null || true; [ -z "$pid" ] || wait $pid' EXIT
sh {ops} {m}
"#,
            m = m.display(),
            ops = ops.display()
        );
        let child = Command::new("timeout")
            .args([
                "-k", "10", "120", "unshare", "--user", "--mount", "sh", "-c",
            ])
            .arg(&inner)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        // `timeout` forks: the namespace's process is its child.
        let start = Instant::now();
        let ns_pid = loop {
            let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children", p = child.id()))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next() {
                let p: u32 = p.parse().unwrap();
                let own = fs::read_link(format!("/proc/{p}/ns/user")).ok();
                if own.is_some() && own != fs::read_link("/proc/self/ns/user").ok() {
                    break p;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no namespace");
            std::thread::sleep(Duration::from_millis(10));
        };
        for map in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{ns_pid}/{map}"), "0 0 65536\n").expect(map);
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "in the namespace ({tag}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    compare(&outs[0], &outs[1]);
}

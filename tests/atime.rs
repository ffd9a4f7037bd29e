//! Access-time mount options (`atime`, `noatime`, `relatime`, `strictatime`,
//! `nodiratime`) against the kernel overlayfs on the same layers.
//!
//! One shell scenario runs on each mount: an upper file whose atime is three days old is
//! read twice a second apart; a lower file, a lower symlink and a lower directory are
//! read; an upper-only and a merged directory are listed (twice for the upper one). It
//! prints, for each, whether the real atime in the layer changed and whether the mount
//! shows it, then the atime flags /proc/mounts shows. stratafs must print what the kernel
//! overlayfs prints, as root (upper reads through FUSE passthrough) and as root of a user
//! namespace (`unshare -Urm`: atime attributes are locked there, so the lowers are
//! read-only private mounts, which get no atime updates, and the daemon applies the
//! policy to the upper itself).

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, mount_type, Scratch};

const SCENARIO: &str = r#"
set -u
MODE=$1 BIN=$2 T=$3 OPTS=$4
mkdir -p $T/l $T/u $T/w $T/m $T/l/ld $T/l/md $T/u/md $T/u/ud
echo lower > $T/l/lf; echo upper > $T/u/uf
echo x > $T/l/ld/a; echo y > $T/u/ud/b; echo z > $T/l/md/c; echo z > $T/u/md/d
ln -s target $T/l/lsym
touch -a -d '3 days ago' $T/l/lf $T/u/uf $T/l/ld $T/u/ud $T/l/md $T/u/md
touch -h -a -d '3 days ago' $T/l/lsym
o="lowerdir=$T/l,upperdir=$T/u,workdir=$T/w${OPTS:+,$OPTS}"
trap 'umount $T/m 2>/dev/null' EXIT
if [ $MODE = kernel ]; then mount -t overlay overlay -o $o $T/m; else $BIN -o $o $T/m; fi || exit 9
A() { stat -c %X "$1"; }
c() { [ "$1" = "$2" ] && echo same || echo CHANGED; }
a0=$(A $T/u/uf); cat $T/m/uf >/dev/null; a1=$(A $T/u/uf); sleep 1.1
cat $T/m/uf >/dev/null; a2=$(A $T/u/uf)
echo "upper file: 1st read $(c $a0 $a1), 2nd read $(c $a1 $a2), shown $(c $(A $T/m/uf) $a2) as upper"
b=$(A $T/l/lf); s0=$(A $T/m/lf); cat $T/m/lf >/dev/null
echo "lower file: in the lower $(c $b $(A $T/l/lf)), shown $(c $s0 $(A $T/m/lf))"
b=$(stat -c %X $T/l/lsym); readlink $T/m/lsym >/dev/null
echo "lower symlink read: in the lower $(c $b $(stat -c %X $T/l/lsym))"
b=$(A $T/l/ld); s0=$(A $T/m/ld); ls $T/m/ld >/dev/null
echo "lower dir listed: in the lower $(c $b $(A $T/l/ld)), shown $(c $s0 $(A $T/m/ld))"
b=$(A $T/u/ud); ls $T/m/ud >/dev/null; b2=$(A $T/u/ud); sleep 1.1; ls $T/m/ud >/dev/null
echo "upper dir listed: 1st $(c $b $b2), 2nd $(c $b2 $(A $T/u/ud)), shown $(c $(A $T/m/ud) $(A $T/u/ud)) as upper"
b=$(A $T/u/md); bl=$(A $T/l/md); ls $T/m/md >/dev/null
echo "merged dir listed: upper $(c $b $(A $T/u/md)), lower $(c $bl $(A $T/l/md)), shown $(c $(A $T/m/md) $(A $T/u/md)) as upper"
flags=$(grep " $T/m " /proc/mounts | cut -d' ' -f4 | tr ',' '\n' | grep -xE 'noatime|relatime|nodiratime' | tr '\n' ' ')
echo "mount flags: $flags"
"#;

/// Runs the scenario on a fresh stack; `mode` is "kernel" or "strata".
fn observe(tag: &str, mode: &str, opts: &str, userns: bool) -> Vec<String> {
    let t = Scratch::new(tag);
    let mut cmd = if userns {
        let mut c = Command::new("unshare");
        c.args(["-Urm", "sh", "-c"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c");
        c
    };
    let out = cmd
        .arg(SCENARIO)
        .args(["scenario", mode, bin()])
        .arg(&t.0)
        .arg(opts)
        .output()
        .expect("run the scenario");
    // The scenario unmounts on exit; make sure of it even if it was killed.
    let m = t.path("m");
    if mount_type(&m).is_some() {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    assert!(
        out.status.success(),
        "{mode} [{opts}]: scenario failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn same_as_kernel(opts: &str) {
    let tag = format!("atime-{}", opts.replace(',', "-"));
    let kernel = observe(&tag, "kernel", opts, false);
    let strata = observe(&tag, "strata", opts, false);
    assert_eq!(
        strata, kernel,
        "as root, -o {opts:?}: stratafs vs kernel overlayfs"
    );
    let in_ns = observe(&tag, "strata", opts, true);
    assert_eq!(
        in_ns, kernel,
        "in a user namespace, -o {opts:?}: stratafs vs kernel overlayfs"
    );
}

#[test]
fn default_is_relatime() {
    same_as_kernel("");
}

#[test]
fn atime_option() {
    same_as_kernel("atime");
}

#[test]
fn relatime_option() {
    same_as_kernel("relatime");
}

#[test]
fn noatime_option() {
    same_as_kernel("noatime");
}

#[test]
fn strictatime_option() {
    same_as_kernel("strictatime");
}

#[test]
fn nodiratime_option() {
    same_as_kernel("nodiratime");
}

/// mount(2) gives strictatime precedence over noatime, in either order.
#[test]
fn strictatime_wins_over_noatime() {
    same_as_kernel("strictatime,noatime");
    same_as_kernel("noatime,strictatime");
}

/// relatime does not undo strictatime (mount(8) sets both flags; the kernel picks strict).
#[test]
fn relatime_after_strictatime() {
    same_as_kernel("strictatime,relatime");
}

#[test]
fn strictatime_nodiratime() {
    same_as_kernel("strictatime,nodiratime");
}

/// A read of a lower file, and its copy-up for an append, leave the lower file's content
/// and times (atime included) as they were; the copy-up reads it through the lower's
/// read-only private mount.
#[test]
fn lower_stays_untouched_by_copy_up_and_reads() {
    let t = Scratch::new("atime-lower");
    let (l, u, w, m) = (t.dir("l"), t.dir("u"), t.dir("w"), t.dir("m"));
    std::fs::write(l.join("f"), b"lower data").unwrap();
    let st = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        use std::os::unix::fs::MetadataExt;
        (
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    Command::new("touch")
        .args(["-a", "-d", "3 days ago"])
        .arg(l.join("f"))
        .status()
        .unwrap();
    let before = st(&l.join("f"));
    {
        let _s = common::Strata::mount(&common::Stack::one(&l, &u, &w), "", &m);
        assert_eq!(std::fs::read(m.join("f")).unwrap(), b"lower data");
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("f"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b" more"))
            .unwrap();
        assert_eq!(std::fs::read(m.join("f")).unwrap(), b"lower data more");
    }
    // Times first: reading the lower here would update its atime (relatime).
    assert_eq!(st(&l.join("f")), before, "the lower file's times changed");
    assert_eq!(std::fs::read(l.join("f")).unwrap(), b"lower data");
}

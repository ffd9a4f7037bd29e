//! File capabilities (`security.capability`) of lower files, stratafs against the kernel
//! overlayfs on the same layers, as root: a copy-up for a metadata change (chmod, touch,
//! a user xattr, chown to the same owner) keeps them (the kernel overlayfs sets the copy's
//! owner without the chown(2) that would remove them); a write, a truncate or a chown
//! through the mount removes them, also done by nobody (write, truncate, `open(O_TRUNC)`:
//! the FUSE module leaves no check out with FUSE_HANDLE_KILLPRIV_V2), and the chown succeeds (it used to fail with ENODATA:
//! the copy-up had already lost the capability the kernel then asked to remove).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::Scratch;

const OPS: &str = "chmod touch xattr chown_same chown_other write trunc nobody_write nobody_trunc nobody_otrunc none";

/// `$1`: the lower directory to fill.
const MAKE_LOWER: &str = r#"set -e
for op in OPS; do echo data > $1/$op; setcap cap_net_raw+ep $1/$op; done
chmod 0666 $1/nobody_*
"#;

/// `$1`: the mount. Each operation on its own file, then `name: caps` of all.
const RUN_OPS: &str = r#"M=$1
chmod 0750 $M/chmod || echo "failed chmod"
touch -m -d @1000 $M/touch || echo "failed touch"
setfattr -n user.x -v 1 $M/xattr || echo "failed xattr"
chown 0:0 $M/chown_same || echo "failed chown_same"
chown 1:1 $M/chown_other || echo "failed chown_other"
echo more >> $M/write || echo "failed write"
truncate -s 2 $M/trunc || echo "failed trunc"
nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$1" || echo "failed $1"; }
nobody "echo more >> $M/nobody_write"
nobody "truncate -s 2 $M/nobody_trunc"
nobody ": > $M/nobody_otrunc"
for op in OPS; do echo "$op: $(getfattr --absolute-names --only-values -e hex -n security.capability $M/$op 2>/dev/null | od -An -tx1 | tr -d ' \n') $(stat -c '%a %u:%g %s' $M/$op)"; done
"#;

fn sh(script: &str, arg: &Path) -> String {
    common::sh_script(&script.replace("OPS", OPS), arg)
}

#[test]
fn capabilities_survive_metadata_copy_up_and_go_on_write_as_in_the_kernel_overlayfs() {
    let s = Scratch::new("caps");
    let l = s.dir("lower");
    sh(MAKE_LOWER, &l);
    let (k, o) = common::kernel_and_strata(&s, &l, "allow_other,default_permissions", |m| {
        sh(RUN_OPS, m)
    });
    assert_eq!(k, o, "kernel:\n{k}\nstratafs:\n{o}");
    // The cases stated outright (against a kernel that would change its mind).
    let caps = |name: &str| {
        o.lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
            .unwrap()
    };
    for kept in ["chmod", "touch", "xattr", "none"] {
        assert!(!caps(kept).is_empty(), "{kept} lost its capabilities:\n{o}");
    }
    for gone in [
        "chown_same",
        "chown_other",
        "write",
        "trunc",
        "nobody_write",
        "nobody_trunc",
        "nobody_otrunc",
    ] {
        assert!(caps(gone).is_empty(), "{gone} kept its capabilities:\n{o}");
    }
    assert!(!o.contains("failed"), "{o}");
}

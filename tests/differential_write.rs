//! The write path against the kernel overlayfs: the same scripted operations (tests/write_ops)
//! on a kernel overlayfs mount and on a stratafs mount of identical copies of the same
//! layers, then (1) both merged views compared entry by entry, (2) the upper stratafs wrote
//! mounted by the kernel with the same lowers, (3) the upper the kernel wrote mounted by
//! stratafs. Zero differences allowed; every operation must also succeed or fail alike.
//! The kernel is mounted with `redirect_dir=on`: stratafs renames directories that way
//! (the kernel's default here is off, which answers EXDEV instead).

mod common;
mod write_ops;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{assert_same, copy_tree, snapshot, Entry, Kernel, Scratch, Stack, Strata};

/// The two runs happen at different moments, so a time set *by* the run differs between
/// them; such times (at or after `since`) become a marker, while every older time (the
/// layers' fixed 2017 times, which copy-up must keep) is still compared exactly.
fn normalize(v: &BTreeMap<Vec<u8>, Entry>, since: i64) -> BTreeMap<Vec<u8>, Entry> {
    v.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            if e.mtime.0 >= since {
                e.mtime = (-1, 0);
            }
            (k.clone(), e)
        })
        .collect()
}

fn differential(tag: &str, kernel_opts: &str, strata_opts: &str) {
    let s = Scratch::new(tag);
    let base = s.dir("base");
    write_ops::make_lowers(&base);
    for side in ["k", "s"] {
        s.dir(side);
        copy_tree(&base.join("l1"), &s.path(&format!("{side}/l1")));
        copy_tree(&base.join("l2"), &s.path(&format!("{side}/l2")));
        for d in ["u", "w", "m"] {
            s.dir(&format!("{side}/{d}"));
        }
    }
    let (kl1, kl2, ku, kw, km) = (
        s.path("k/l1"),
        s.path("k/l2"),
        s.path("k/u"),
        s.path("k/w"),
        s.path("k/m"),
    );
    let (sl1, sl2, su, sw, sm) = (
        s.path("s/l1"),
        s.path("s/l2"),
        s.path("s/u"),
        s.path("s/w"),
        s.path("s/m"),
    );
    let kstack = Stack {
        lowers: vec![&kl1, &kl2],
        upper: Some((&ku, &kw)),
    };
    let sstack = Stack {
        lowers: vec![&sl1, &sl2],
        upper: Some((&su, &sw)),
    };

    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let (klog, kview) = {
        let _k = Kernel::mount(&kstack, kernel_opts, &km);
        (write_ops::run(&km), snapshot(&km))
    };
    let (slog, sview) = {
        let m = Strata::mount(&sstack, strata_opts, &sm);
        let r = (write_ops::run(&sm), snapshot(&sm));
        assert_eq!(
            m.unmount().map(|s| s.success()),
            Some(true),
            "daemon exit status"
        );
        r
    };
    assert!(
        klog.len() >= 40,
        "the scenario must keep at least 40 operations"
    );
    assert_eq!(klog, slog, "operation outcomes differ");
    assert!(
        kview.len() > 50,
        "scenario view unexpectedly small: {}",
        kview.len()
    );
    assert_same(
        "(1) merged views, kernel vs stratafs",
        &normalize(&kview, since),
        &normalize(&sview, since),
    );

    // (2) stratafs's upper through the kernel, (3) the kernel's upper through stratafs.
    let x1 = s.dir("x1");
    let x2 = s.dir("x2");
    let w1 = s.dir("xw1");
    let w2 = s.dir("xw2");
    let via_kernel = {
        let _k = Kernel::mount(
            &Stack {
                lowers: vec![&sl1, &sl2],
                upper: Some((&su, &w1)),
            },
            kernel_opts,
            &x1,
        );
        snapshot(&x1)
    };
    assert_same(
        "(2) stratafs upper mounted by the kernel",
        &sview,
        &via_kernel,
    );
    let via_strata = {
        let _m = Strata::mount(
            &Stack {
                lowers: vec![&kl1, &kl2],
                upper: Some((&ku, &w2)),
            },
            strata_opts,
            &x2,
        );
        snapshot(&x2)
    };
    assert_same("(3) kernel upper mounted by stratafs", &kview, &via_strata);
    // Nothing left in the staging directory.
    let leftovers: Vec<_> = std::fs::read_dir(sw.join("work")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "workdir/work not empty: {leftovers:?}"
    );
}

#[test]
fn write_path_matches_kernel_overlayfs() {
    differential("dw", "redirect_dir=on", "");
}

#[test]
fn metacopy_write_path_matches_kernel_overlayfs() {
    differential("dwm", "redirect_dir=on,metacopy=on", "metacopy=on");
}

/// The kernel's default `redirect_dir=off` against stratafs's: renaming a directory with a
/// lower part answers EXDEV on both, and everything else is the same.
#[test]
fn redirect_dir_off_write_path_matches_kernel_overlayfs() {
    differential("dwr", "redirect_dir=off", "redirect_dir=off");
}

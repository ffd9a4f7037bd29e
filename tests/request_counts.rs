//! The daemon's request counters (src/stats.rs), read through `user.stratafs.stats` on the
//! mount root, and the round trips they show the kernel's caches saving.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Scratch, Stack, Strata};

/// The counters of the mount at `m`, by request kind.
fn stats(m: &Path) -> BTreeMap<String, u64> {
    let out = Command::new("getfattr")
        .args([
            "--absolute-names",
            "--only-values",
            "-n",
            "user.stratafs.stats",
        ])
        .arg(m)
        .output()
        .expect("getfattr");
    assert!(
        out.status.success(),
        "reading the counters: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

fn reset(m: &Path) {
    let st = Command::new("setfattr")
        .args(["-n", "user.stratafs.stats", "-v", "reset"])
        .arg(m)
        .status()
        .expect("setfattr");
    assert!(st.success(), "resetting the counters");
}

#[test]
fn counters_count_requests_by_kind() {
    let s = Scratch::new("req-count");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    fs::write(l.join("low"), b"lower\n").unwrap();
    let _mnt = Strata::mount(&Stack::one(&l, &u, &w), "", &m);
    reset(&m);
    let zero = stats(&m);
    // Reading them is not counted (getfattr's own stat of the root may be).
    assert!(
        zero.get("total").is_some_and(|n| *n <= 2) && zero.get("getxattr") == Some(&0),
        "{zero:?}"
    );
    fs::create_dir(m.join("d")).unwrap();
    for i in 0..10 {
        fs::write(m.join(format!("d/f{i}")), b"x").unwrap();
    }
    let c = stats(&m);
    assert_eq!(c.get("mkdir"), Some(&1));
    assert_eq!(c.get("create"), Some(&10));
    assert_eq!(c.get("release"), Some(&10));
    let sum: u64 = c
        .iter()
        .filter(|(k, _)| *k != "total" && *k != "getxattr_security.capability")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(c.get("total"), Some(&sum));
    reset(&m);
    assert_eq!(stats(&m).get("create"), Some(&0));
    // The name is not a real xattr of the root: not listed, not in the upper.
    let listed = Command::new("getfattr")
        .args(["--absolute-names", "-d", "-m", "-"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("stratafs"));
    assert!(Command::new("getfattr")
        .args(["-n", "user.stratafs.stats"])
        .arg(&u)
        .output()
        .map(|o| !o.status.success())
        .unwrap());
}

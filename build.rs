//! Tells the tests what this machine can run, as `cfg(have = "...")` values, so that a test
//! whose prerequisite is missing is reported by `cargo test` as *ignored* (with the reason)
//! instead of returning early and counting as passed:
//!
//! ```ignore
//! #[test]
//! #[cfg_attr(not(have = "fuse-overlayfs"), ignore = "needs fuse-overlayfs")]
//! fn compared_with_fuse_overlayfs() { ... }
//! ```
//!
//! Under scripts/test.sh (`STRATAFS_TEST_STRICT=1`) every value is set whatever the machine
//! has: there a missing prerequisite makes its tests run and fail, never skip.
//! The library and the binary do not use these values.

use std::path::Path;

/// What the tests may need beyond root, /dev/fuse and Debian's base system: the `have` value
/// and the program whose presence stands for it (or a special probe, below).
const PROGRAMS: &[&str] = &[
    "fuse-overlayfs",
    "strace",
    "xfs_io",
    "podman",
    "mksquashfs",
    "squashfuse",
    "fuse2fs",
];
const BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn main() {
    let strict = std::env::var_os("STRATAFS_TEST_STRICT").is_some_and(|v| v == "1");
    println!("cargo::rerun-if-env-changed=STRATAFS_TEST_STRICT");
    println!("cargo::rerun-if-changed=build.rs");
    for d in BIN_DIRS {
        if Path::new(d).is_dir() {
            // Installing or removing a program changes the directory: probe again.
            println!("cargo::rerun-if-changed={d}");
        }
    }
    let mut values: Vec<&str> = PROGRAMS.to_vec();
    values.extend(["root", "loop"]);
    let list = values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("cargo::rustc-check-cfg=cfg(have, values({list}))");

    let mut have: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| BIN_DIRS.iter().any(|d| Path::new(d).join(p).is_file()))
        .collect();
    if is_root() {
        have.push("root");
    }
    // A loop device for an ext4 image (tests/full_upper.rs).
    if Path::new("/dev/loop-control").exists() {
        have.push("loop");
    }
    if strict {
        have = values;
    }
    for v in have {
        println!("cargo::rustc-cfg=have=\"{v}\"");
    }
}

/// Whether the build runs as root (the tests run as the same user): the effective uid in
/// /proc/self/status ("Uid:\treal\teffective\tsaved\tfs").
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

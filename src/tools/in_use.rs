//! Is a branch directory serving a mount right now? The layer tools that write (`check
//! --repair`, `merge`) must not change a layer under a live mount. Three sources:
//! - the in-use `flock` a stratafs daemon holds on its upper and workdir
//!   (`layers::lock_in_use`): the tools take the same lock and keep it while they write,
//!   so no stratafs mount can start on those directories meanwhile;
//! - /proc/self/mountinfo: a kernel overlayfs mount names its `lowerdir=`, `upperdir=`,
//!   `workdir=` in its superblock options;
//! - running stratafs and fuse-overlayfs daemons (a FUSE mount's options are not in
//!   mountinfo):
//!   their command lines, parsed with the mount's own parser (this covers lowers and
//!   read-only mounts, which hold no lock).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::control::MountEntry;
use crate::error::{Error, Result};
use crate::options::{self, Command};

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// One line naming the mount that uses `path`, if one does.
pub fn user_of(path: &Path) -> Option<String> {
    let want = canon(path);
    for m in MountEntry::all() {
        if m.fstype != "overlay" {
            continue;
        }
        for o in &m.super_opts {
            let (key, v) = match o.split_once('=') {
                Some(x) => x,
                None => continue,
            };
            let dirs = match key {
                "lowerdir" => options::split_lowerdirs(v.as_bytes()),
                "upperdir" | "workdir" => vec![PathBuf::from(v)],
                _ => continue,
            };
            if dirs.iter().any(|d| canon(d) == want) {
                return Some(format!(
                    "the overlay mount on {} ({key})",
                    m.point.display()
                ));
            }
        }
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // fuse-overlayfs takes the same `-o lowerdir=…` command line.
        let comm = comm.trim_end();
        if comm != "stratafs" && comm != "fuse-overlayfs" {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<OsString> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        let Ok(Command::Mount(cfg)) = options::parse_args(&args) else {
            continue;
        };
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let dirs = cfg
            .lowerdirs
            .iter()
            .chain(cfg.upperdir.iter())
            .chain(cfg.workdir.iter());
        if dirs.map(|d| canon(&cwd.join(d))).any(|d| d == want) {
            return Some(format!(
                "the {comm} mount on {} (pid {pid})",
                canon(&cwd.join(&cfg.mountpoint)).display()
            ));
        }
    }
    None
}

/// Refuses with one line if any of `dirs` (option name, path) serves a mount; otherwise
/// takes the stratafs in-use lock on each and returns the locks (hold them while writing).
pub fn lock_all(dirs: &[(&str, &Path)]) -> Result<Vec<OwnedFd>> {
    let mut locks = Vec::new();
    for (opt, p) in dirs {
        let root = crate::sys::open_host_dir(p)
            .map_err(|e| Error::io(e, format!("{opt} {}", p.display())))?;
        locks.push(crate::layers::lock_in_use(opt, p, &root)?);
    }
    for (opt, p) in dirs {
        if let Some(who) = user_of(p) {
            return Err(Error::new(
                libc::EBUSY,
                format!("{opt} {}: in use by {who}", p.display()),
            ));
        }
    }
    Ok(locks)
}

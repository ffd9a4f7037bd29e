//! `remount`: what `mount -o remount,ro|rw MNT` (through mount.fuse3) and
//! `stratafs -o remount,ro|rw MNT` do. mount(8) passes the mount's whole option set,
//! merged with the change: mount.fuse3 runs `stratafs SOURCE MNT -o
//! ro,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,dev,suid`.
//!
//! A remount changes read-only/read-write, and the branches with aufs's operations
//! (`add:`, `append:`, `prepend:`, `del:`, `mod:`, `lowerdir+=`: `branch.rs`), which go to
//! the daemon as one `Request::Branch` before any ro/rw change. Every other option must
//! describe the mount as it is (per-mount flags and superblock options from mountinfo);
//! one that would change it is refused with one line, before anything is touched. When
//! the set is mount(8)'s full one (it carries `user_id=`), a flag the mount has but the set
//! lacks (`noexec` after `remount,exec`) is a change too.
//!
//! Order, so that no dirty page is refused and nothing is half done:
//! - to ro: the VFS first (`MS_REMOUNT|MS_RDONLY`: the kernel syncs the FUSE mount's dirty
//!   pages into the still-writable daemon, and refuses with EBUSY while a file is open for
//!   writing, as for any filesystem), then the daemon (EROFS for every write from then on,
//!   then syncfs of the upper). Without the privilege for the VFS remount (a non-root
//!   owner's fusermount3 mount) the command syncfs's the mount instead and only the daemon
//!   refuses writes; /proc/mounts then still says `rw`.
//! - to rw: the daemon first, then the VFS.
//!
//! A failure in the second step undoes the first.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::control::{Client, MountEntry, Reply, Request};
use crate::sys::{self, RemountFlags};

pub use crate::options::RemountArgs;

/// Options that only mount(8) reads (fstab): no effect on a mounted filesystem.
const USERSPACE_ONLY: &[&str] = &[
    "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group", "defaults",
];

fn has(set: &[String], o: &str) -> bool {
    set.iter().any(|x| x == o)
}

/// What a remount asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The mount is to be read-only.
    pub read_only: bool,
    /// Mount-time options for the daemon to check (`Request::Check`).
    pub check: Vec<String>,
    /// Branch operations, in order (`Request::Branch`).
    pub branch: Vec<String>,
}

/// Checks the kernel-level options against the mount as it is; returns whether it is to be
/// read-only, the mount-time options left for the daemon to check, and the branch
/// operations.
pub fn plan(m: &MountEntry, options: &[String]) -> Result<Planned, String> {
    let (mo, so) = (&m.mount_opts, &m.super_opts);
    let cur_ro = has(mo, "ro") || has(so, "ro");
    let full = options.iter().any(|o| o.starts_with("user_id="));
    let mut want_ro = None;
    let mut rest = Vec::new();
    let mut branch = Vec::new();
    let change = |o: &str| {
        Err(format!(
            "option {o} would change the mount: a stratafs remount changes only ro/rw"
        ))
    };
    for o in options {
        if crate::branch::is_op(o) {
            branch.push(o.clone());
            continue;
        }
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let same = match key {
            "" => true,
            "ro" => {
                want_ro = Some(true);
                true
            }
            "rw" => {
                want_ro = Some(false);
                true
            }
            "nodev" | "nosuid" | "noexec" => has(mo, key),
            "dev" | "suid" | "exec" => !has(mo, &format!("no{key}")),
            "noatime" | "relatime" | "nodiratime" => has(mo, key),
            "strictatime" => !has(mo, "noatime") && !has(mo, "relatime"),
            "atime" => !has(mo, "noatime"),
            "diratime" => !has(mo, "nodiratime"),
            "sync" | "dirsync" | "lazytime" | "mand" => has(so, key),
            "async" => !has(so, "sync"),
            "nolazytime" => !has(so, "lazytime"),
            "nomand" => !has(so, "mand"),
            "default_permissions" | "allow_other" => value.is_none() && has(so, key),
            "user_id" | "group_id" | "max_read" | "blksize" => {
                value.is_some() && m.super_value(key) == value
            }
            k if USERSPACE_ONLY.contains(&k) || k.starts_with("x-") || k == "comment" => true,
            _ => {
                rest.push(o.clone());
                true
            }
        };
        if !same {
            return change(o);
        }
    }
    if full {
        for f in ["nodev", "nosuid", "noexec"] {
            if has(mo, f) && !has(options, f) {
                return change(&f.replace("no", ""));
            }
        }
        for f in ["default_permissions", "allow_other"] {
            if has(so, f) && !has(options, f) {
                return change(&format!("no {f}"));
            }
        }
    }
    Ok(Planned {
        read_only: want_ro.unwrap_or(cur_ro),
        check: rest,
        branch,
    })
}

/// The mount's flags as they are, with `read_only` as wanted.
fn flags(m: &MountEntry, read_only: bool) -> RemountFlags {
    RemountFlags {
        read_only,
        nodev: has(&m.mount_opts, "nodev"),
        nosuid: has(&m.mount_opts, "nosuid"),
        noexec: has(&m.mount_opts, "noexec"),
        sync: has(&m.super_opts, "sync"),
        dirsync: has(&m.super_opts, "dirsync"),
        lazytime: has(&m.super_opts, "lazytime"),
    }
}

/// The mount point as mountinfo writes it, found without entering the mount itself.
fn mount_path(p: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|c| c.join(name))
            .map_err(|e| format!("{}: {e}", parent.display())),
        _ => Ok(abs),
    }
}

fn call(m: &MountEntry, req: &Request) -> Result<Vec<String>, String> {
    let reply: Reply = Client::connect(m)?.call(req)?;
    match reply.result {
        Ok(()) => Ok(reply.lines),
        Err((_, msg)) => Err(msg),
    }
}

/// Carries out `remount`; returns the lines to print, or the one-line error. Only branch
/// operations have lines (one per operation, as `stratafs branch` prints): a remount that
/// changes ro/rw, or nothing, succeeds silently, as a mount helper must.
pub fn run(args: &RemountArgs) -> Result<Vec<String>, String> {
    let mnt = mount_path(&args.mountpoint)?;
    let fail = |msg: String| format!("remount {}: {msg}", mnt.display());
    let m = MountEntry::fuse_at(&mnt).ok_or_else(|| fail("not a FUSE mount point".into()))?;
    let p = plan(&m, &args.options).map_err(fail)?;
    let (want_ro, rest) = (p.read_only, p.check);
    let cur_ro = has(&m.mount_opts, "ro") || has(&m.super_opts, "ro");
    // Reach the daemon, and have it check the mount-time options, before changing anything.
    drop(Client::connect(&m).map_err(fail)?);
    if !rest.is_empty() {
        call(&m, &Request::Check(rest)).map_err(fail)?;
    }
    let mut lines = Vec::new();
    if !p.branch.is_empty() {
        lines = call(&m, &Request::Branch(p.branch)).map_err(fail)?;
        if want_ro == cur_ro {
            return Ok(lines);
        }
    }
    ro_rw(&m, &mnt, want_ro, cur_ro).map_err(fail)?;
    Ok(lines)
}

/// `stratafs branch [--force] MNT OP...`: the branch operations without mount(8); one
/// line per operation on success. `--force` makes every `del:` a `del!:`.
pub fn branch_command(args: &[String]) -> Result<Vec<String>, String> {
    let mut force = false;
    let mut words = Vec::new();
    for a in args {
        match a.as_str() {
            "--force" | "-f" => force = true,
            _ => words.push(a.clone()),
        }
    }
    let Some((mnt, ops)) = words.split_first() else {
        return Err(BRANCH_USAGE.into());
    };
    if ops.is_empty() {
        return Err(BRANCH_USAGE.into());
    }
    let ops: Vec<String> = ops
        .iter()
        .map(|o| match (force, o.strip_prefix("del:")) {
            (true, Some(d)) => format!("del!:{d}"),
            _ => o.clone(),
        })
        .collect();
    for o in &ops {
        crate::branch::parse(o)?;
    }
    let mnt = mount_path(Path::new(mnt))?;
    let fail = |msg: String| format!("branch {}: {msg}", mnt.display());
    let m = MountEntry::fuse_at(&mnt).ok_or_else(|| fail("not a FUSE mount point".into()))?;
    call(&m, &Request::Branch(ops)).map_err(fail)
}

/// Usage of `stratafs branch`.
pub const BRANCH_USAGE: &str = "usage: stratafs branch [--force] MOUNTPOINT OP...
  OP: add:INDEX:DIR[=MODE] | append:DIR[=MODE] | prepend:DIR[=MODE] | del:DIR | del!:DIR |
      mod:DIR=MODE | lowerdir+=DIR     MODE: ro+wh (default) | ro | rr
  Changes the branches of a live mount (as mount -o remount,OP does); one line per
  operation. --force: remove branches even while in use (del: as del!:).";

/// The ro/rw part of a remount.
fn ro_rw(m: &MountEntry, mnt: &Path, want_ro: bool, cur_ro: bool) -> Result<(), String> {
    let fail = |s: String| s;
    if want_ro {
        let vfs = match sys::remount(mnt, flags(m, true)) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // Not ours to remount: flush the mount's dirty pages into the daemon.
                let fd = sys::open_host_dir(mnt)
                    .and_then(|p| sys::reopen(p.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY));
                if let Ok(fd) = fd {
                    let _ = sys::syncfs(fd.as_fd());
                }
                false
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(fail("busy: a file is open for writing".into()))
            }
            Err(e) => return Err(fail(format!("mount(2): {e}"))),
        };
        match call(m, &Request::SetReadOnly(true)) {
            Ok(_) => Ok(()),
            Err(e) => {
                if vfs && !cur_ro {
                    let _ = sys::remount(mnt, flags(m, false));
                }
                Err(fail(e))
            }
        }
    } else {
        call(m, &Request::SetReadOnly(false)).map_err(fail)?;
        if cur_ro {
            if let Err(e) = sys::remount(mnt, flags(m, false)) {
                let _ = call(m, &Request::SetReadOnly(true));
                return Err(fail(format!("mount(2): {e}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mo: &str, so: &str) -> MountEntry {
        MountEntry::parse(&format!(
            "48 27 0:44 / /m {mo} - fuse.stratafs stratafs {so}"
        ))
        .unwrap()
    }

    fn opts(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn what_mount_8_passes_is_accepted() {
        let so = "rw,user_id=0,group_id=0,default_permissions,allow_other";
        let m = entry("rw,relatime", so);
        let full = "relatime,user_id=0,group_id=0,default_permissions,allow_other,dev,suid";
        let ro = |o: &str| plan(&m, &opts(o)).map(|p| p.read_only);
        assert_eq!(ro(&format!("ro,{full}")), Ok(true));
        assert_eq!(ro(&format!("rw,{full}")), Ok(false));
        assert_eq!(ro("ro"), Ok(true));
        assert_eq!(ro(""), Ok(false), "no change asked: as it is");
        // fstab's mount-time options go to the daemon.
        assert_eq!(
            plan(&m, &opts("ro,lowerdir=/l,volatile,dev,suid")),
            Ok(Planned {
                read_only: true,
                check: vec!["lowerdir=/l".to_string(), "volatile".to_string()],
                branch: vec![],
            })
        );
        // Branch operations go to the daemon as they are, in order.
        assert_eq!(
            plan(
                &m,
                &opts(&format!("add:1:/a=rr,rw,{full},del:/b,lowerdir+=/c"))
            )
            .map(|p| (p.read_only, p.branch)),
            Ok((
                false,
                vec!["add:1:/a=rr".into(), "del:/b".into(), "lowerdir+=/c".into()]
            ))
        );
        let m = entry("ro,nosuid,nodev,noexec,noatime", &so.replace("rw,", "ro,"));
        let full =
            "nosuid,nodev,noexec,noatime,user_id=0,group_id=0,default_permissions,allow_other";
        let simple = |o: &str| plan(&m, &opts(o)).map(|p| (p.read_only, p.check));
        assert_eq!(simple(&format!("rw,{full}")), Ok((false, vec![])));
        assert_eq!(simple("x-systemd.automount,nofail,ro"), Ok((true, vec![])));
    }

    #[test]
    fn anything_else_is_refused() {
        let so = "rw,user_id=0,group_id=0,default_permissions,allow_other";
        let m = entry("rw,nosuid,noexec,relatime", so);
        for bad in [
            "ro,exec",
            "ro,suid",
            "ro,nodev",
            "ro,noatime",
            "ro,strictatime",
            "ro,user_id=5",
            "ro,sync",
            // mount(8)'s full set without noexec: `remount,exec`.
            "ro,nosuid,relatime,user_id=0,group_id=0,default_permissions,allow_other,dev",
        ] {
            let e = plan(&m, &opts(bad)).expect_err(bad);
            assert!(e.contains("remount changes only ro/rw"), "{bad}: {e}");
        }
        let m = entry("rw,relatime", "rw,user_id=0,group_id=0,default_permissions");
        assert!(plan(&m, &opts("ro,allow_other")).is_err());
    }
}

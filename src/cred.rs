//! Who is asking, as the kernel's rules for setuid/setgid bits see it, and those rules.
//!
//! A FUSE request carries the caller's fsuid, fsgid and thread id, not its supplementary
//! groups or capabilities. The kernel overlayfs decides with the caller's full credentials
//! (the VFS's `setattr_should_drop_suidgid`, `setattr_should_drop_sgid`,
//! `in_group_or_capable`, and overlayfs's own check before setting an ACL), while the real
//! change below stratafs is made with the daemon's credentials, which would keep every bit.
//! The FUSE module passes on only part of the rule (it drops setuid, and setgid where the
//! group may execute; the ACL case travels in a flag fuser 0.18 does not decode), so the
//! daemon applies the whole rule itself, reading what the request lacks from
//! `/proc/<tid>/status` (sys::proc).
//!
//! Caveats, and what is done about them:
//! - The thread may be gone and its id reused by the time /proc is read: the status's
//!   fsuid/fsgid must equal the request's, else it is not trusted.
//! - /proc unreadable (hidepid, another pid namespace, a request without a thread id): the
//!   caller is taken to be in no supplementary group and to hold CAP_FSETID only if its
//!   fsuid is 0. Privileged bits are then dropped for any other caller outside the group:
//!   the safe side.
//! - Capabilities count in the daemon's own user namespace: a caller in another one (a
//!   container's root on a rootful mount) is taken to hold none. A capability the kernel
//!   checks in the initial namespace (`capable(CAP_FSETID)`) is never held by anyone when the
//!   daemon itself runs in a user namespace.

use crate::sys;
use crate::types::Caller;

/// Bit number of CAP_FSETID (linux/capability.h).
const CAP_FSETID: u32 = 4;

/// What the rules need to know about a caller beyond its fsuid/fsgid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// CAP_FSETID over files of this mount (`capable_wrt_inode_uidgid`).
    pub fsetid: bool,
    /// CAP_FSETID in the initial user namespace (`capable`).
    pub fsetid_initial: bool,
}

impl Privileges {
    /// Read from /proc for `caller` (see the module comment for the fallbacks).
    pub fn of(caller: &Caller) -> Privileges {
        let status = (caller.pid != 0)
            .then(|| sys::proc::task_status(caller.pid).ok())
            .flatten()
            .filter(|t| t.fsuid == caller.uid && t.fsgid == caller.gid);
        let Some(t) = status else {
            let root = caller.uid == 0;
            return Privileges {
                groups: Vec::new(),
                fsetid: root,
                fsetid_initial: root && !sys::in_user_namespace(),
            };
        };
        let same_ns = sys::proc::same_user_ns(caller.pid).unwrap_or(true);
        let fsetid = same_ns && t.cap_eff & (1 << CAP_FSETID) != 0;
        Privileges {
            groups: t.groups,
            fsetid,
            fsetid_initial: fsetid && !sys::in_user_namespace(),
        }
    }

    /// Everything, as for the daemon's own changes.
    pub fn all() -> Privileges {
        Privileges {
            groups: Vec::new(),
            fsetid: true,
            fsetid_initial: true,
        }
    }
}

/// Is `gid` one of the caller's groups (fsgid or supplementary)? Reads /proc only when
/// the fsgid does not already answer.
pub fn in_group(caller: &Caller, gid: u32) -> bool {
    caller.gid == gid || Privileges::of(caller).groups.contains(&gid)
}

/// The kernel's `in_group_or_capable` for a file of group `gid`.
fn in_group_or_capable(caller: &Caller, p: &Privileges, gid: u32) -> bool {
    caller.gid == gid || p.groups.contains(&gid) || p.fsetid
}

fn is_reg(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG
}

/// The setgid bit to drop when the caller changes a file (`setattr_should_drop_sgid`):
/// where the group may execute, always; else unless the caller is in the group or holds
/// CAP_FSETID.
fn sgid_to_drop(mode: u32, gid: u32, caller: &Caller, p: &Privileges) -> u32 {
    if mode & libc::S_ISGID == 0 {
        0
    } else if mode & libc::S_IXGRP != 0 || !in_group_or_capable(caller, p, gid) {
        libc::S_ISGID
    } else {
        0
    }
}

/// A file is written or truncated: the bits to drop from its `mode` (with type bits) and
/// group `gid` as shown (`setattr_should_drop_suidgid`, used by `file_remove_privs` and
/// truncate): none for a writer with CAP_FSETID; else setuid, and setgid per
/// [`sgid_to_drop`]. Regular files only.
pub fn drop_on_write(mode: u32, gid: u32, caller: &Caller) -> u32 {
    if !is_reg(mode) || mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return 0;
    }
    let p = Privileges::of(caller);
    let kill = (mode & libc::S_ISUID) | sgid_to_drop(mode, gid, caller, &p);
    if kill != 0 && !p.fsetid_initial {
        kill
    } else {
        0
    }
}

/// A file's owner or group changes (`chown_common`): setuid always, setgid per
/// [`sgid_to_drop`]; not for directories.
pub fn drop_on_chown(mode: u32, gid: u32, caller: &Caller) -> u32 {
    if mode & libc::S_IFMT == libc::S_IFDIR || mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return 0;
    }
    let p = Privileges::of(caller);
    (mode & libc::S_ISUID) | sgid_to_drop(mode, gid, caller, &p)
}

/// An access ACL is set (overlayfs's check before `set_acl`, as `posix_acl_update_mode`
/// would do it with the caller's credentials): setgid, unless the caller is in the group or
/// holds CAP_FSETID.
pub fn drop_on_acl(mode: u32, gid: u32, caller: &Caller) -> u32 {
    if mode & libc::S_ISGID == 0 {
        return 0;
    }
    let p = Privileges::of(caller);
    if in_group_or_capable(caller, &p, gid) {
        0
    } else {
        libc::S_ISGID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody_pid0() -> Caller {
        // No thread id: nothing is read from /proc; not root, so no capability.
        Caller {
            uid: 65534,
            gid: 65534,
            pid: 0,
        }
    }

    const REG: u32 = libc::S_IFREG;

    #[test]
    fn write_drops_as_the_kernel_does() {
        let c = nobody_pid0();
        assert_eq!(drop_on_write(REG | 0o4755, 0, &c), libc::S_ISUID);
        assert_eq!(drop_on_write(REG | 0o2755, 65534, &c), libc::S_ISGID);
        assert_eq!(
            drop_on_write(REG | 0o2745, 65534, &c),
            0,
            "in group, no g+x"
        );
        assert_eq!(
            drop_on_write(REG | 0o2745, 0, &c),
            libc::S_ISGID,
            "not in group"
        );
        assert_eq!(
            drop_on_write(REG | 0o6777, 0, &c),
            libc::S_ISUID | libc::S_ISGID
        );
        assert_eq!(drop_on_write(libc::S_IFDIR | 0o2777, 0, &c), 0);
        let root = Caller {
            pid: 0,
            ..Caller::ROOT
        };
        if !sys::in_user_namespace() {
            assert_eq!(
                drop_on_write(REG | 0o6777, 5, &root),
                0,
                "CAP_FSETID keeps all"
            );
        }
    }

    #[test]
    fn chown_and_acl_rules() {
        let c = nobody_pid0();
        let root = Caller {
            pid: 0,
            ..Caller::ROOT
        };
        assert_eq!(
            drop_on_chown(REG | 0o4755, 0, &root),
            libc::S_ISUID,
            "even root"
        );
        assert_eq!(drop_on_chown(REG | 0o2766, 0, &root), 0);
        assert_eq!(drop_on_chown(REG | 0o2766, 0, &c), libc::S_ISGID);
        assert_eq!(drop_on_chown(REG | 0o2766, 65534, &c), 0);
        assert_eq!(drop_on_chown(libc::S_IFDIR | 0o6777, 0, &c), 0);
        assert_eq!(drop_on_acl(REG | 0o2755, 0, &c), libc::S_ISGID);
        assert_eq!(drop_on_acl(REG | 0o4755, 0, &c), 0);
        assert_eq!(drop_on_acl(REG | 0o2755, 65534, &c), 0);
        assert_eq!(drop_on_acl(REG | 0o2755, 0, &root), 0);
    }

    #[test]
    fn a_reused_thread_id_is_not_trusted() {
        // Our own thread id, but ids that are not ours: the status is ignored.
        let me = sys::proc::task_status(std::process::id()).unwrap();
        let other = Caller {
            uid: me.fsuid.wrapping_add(1),
            gid: me.fsgid.wrapping_add(1),
            pid: std::process::id(),
        };
        let p = Privileges::of(&other);
        assert!(p.groups.is_empty());
        assert_eq!(p.fsetid, other.uid == 0);
    }
}

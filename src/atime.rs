//! Access-time policy (the VFS's `atime_needs_update` and `relatime_need_update`, which
//! the kernel overlayfs applies to its upper layer through its own mount's flags).
//!
//! Normally the host kernel applies the policy for us: every branch is reached through a
//! private mount whose atime attribute is the right one (`layers.rs`). Where no such mount
//! can be had (a user namespace locks the atime attributes of the mounts it inherited) and
//! the host mount of the upper has another policy than the one asked for, the upper is
//! opened `O_NOATIME` and the daemon updates atimes itself by the rule below, for the reads
//! and listings it serves. Lower layers never get atime updates, whatever the policy.

use std::os::fd::BorrowedFd;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::options::Config;
use crate::sys::{self, ops};

pub use crate::types::Atime;

pub use crate::types::Policy;

/// Seconds and nanoseconds.
pub type Time = (i64, i64);

const DAY: i64 = 24 * 60 * 60;

impl Policy {
    /// The policy the mount options ask for (`strictatime` wins over `noatime`, as in
    /// mount(2)).
    pub fn from_config(cfg: &Config) -> Policy {
        Policy {
            atime: if cfg.strictatime {
                Atime::Strict
            } else if cfg.noatime {
                Atime::Never
            } else {
                Atime::Relative
            },
            nodiratime: cfg.nodiratime,
        }
    }

    /// The policy of a host mount, from its `statvfs` `f_flag`.
    pub fn from_statvfs_flags(f_flag: u64) -> Policy {
        Policy {
            atime: if f_flag & libc::ST_NOATIME != 0 {
                Atime::Never
            } else if f_flag & libc::ST_RELATIME != 0 {
                Atime::Relative
            } else {
                Atime::Strict
            },
            nodiratime: f_flag & libc::ST_NODIRATIME != 0,
        }
    }

    /// The `MOUNT_ATTR_*` bits of this policy for `mount_setattr`.
    pub fn mount_attrs(self) -> u64 {
        use crate::sys::mount_attr as a;
        let atime = match self.atime {
            Atime::Never => a::NOATIME,
            Atime::Relative => a::RELATIME,
            Atime::Strict => a::STRICTATIME,
        };
        atime | if self.nodiratime { a::NODIRATIME } else { 0 }
    }

    /// Does a read (or a listing, `dir`) at `now` of an object with these times update
    /// its atime? Strict updates are made at most once a second (the kernel's clock tick
    /// is finer; a second is what `stat` users compare).
    pub fn needs_update(self, dir: bool, atime: Time, mtime: Time, ctime: Time, now: i64) -> bool {
        if dir && self.nodiratime {
            return false;
        }
        match self.atime {
            Atime::Never => false,
            Atime::Strict => atime.0 < now,
            Atime::Relative => mtime >= atime || ctime >= atime || now - atime.0 >= DAY,
        }
    }
}

/// After the daemon read or listed `fd` (a file, or a directory if `dir`): updates its
/// atime if `policy` says so. Failures are logged and ignored, as the kernel ignores a
/// failed atime update.
pub fn touch(policy: Policy, fd: BorrowedFd<'_>, dir: bool) {
    let Ok(st) = sys::fstat(fd) else { return };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = |s: i64, ns: i64| (s, ns);
    if policy.needs_update(
        dir,
        t(st.st_atime, st.st_atime_nsec),
        t(st.st_mtime, st.st_mtime_nsec),
        t(st.st_ctime, st.st_ctime_nsec),
        now,
    ) {
        if let Err(e) = ops::utimensat(fd, c"", ops::SetTime::Now, ops::SetTime::Omit) {
            log::debug!("atime update: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REL: Policy = Policy {
        atime: Atime::Relative,
        nodiratime: false,
    };

    #[test]
    fn relatime_rule() {
        let now = 1_000_000;
        // atime before mtime or ctime, or a day old: update.
        assert!(REL.needs_update(false, (10, 0), (20, 0), (20, 0), now));
        assert!(REL.needs_update(false, (30, 0), (20, 0), (30, 0), now));
        assert!(REL.needs_update(false, (now - DAY, 0), (0, 0), (0, 0), now));
        // Recent and after both: no update.
        assert!(!REL.needs_update(false, (now - 5, 1), (now - 5, 0), (now - 6, 0), now));
    }

    #[test]
    fn strict_never_and_nodiratime() {
        let strict = Policy {
            atime: Atime::Strict,
            nodiratime: true,
        };
        assert!(strict.needs_update(false, (99, 0), (0, 0), (0, 0), 100));
        assert!(!strict.needs_update(false, (100, 5), (0, 0), (0, 0), 100));
        assert!(!strict.needs_update(true, (0, 0), (0, 0), (0, 0), 100));
        let never = Policy {
            atime: Atime::Never,
            nodiratime: false,
        };
        assert!(!never.needs_update(false, (0, 0), (50, 0), (50, 0), 100));
    }

    #[test]
    fn host_flags() {
        let p = Policy::from_statvfs_flags(libc::ST_RELATIME | libc::ST_NODIRATIME);
        assert_eq!(p.atime, Atime::Relative);
        assert!(p.nodiratime);
        assert_eq!(Policy::from_statvfs_flags(0).atime, Atime::Strict);
        assert_eq!(
            Policy::from_statvfs_flags(libc::ST_NOATIME | libc::ST_RELATIME).atime,
            Atime::Never
        );
    }
}

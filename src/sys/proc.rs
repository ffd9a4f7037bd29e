//! What /proc says about another task: the credentials the kernel's permission rules use
//! beyond a FUSE request's fsuid/fsgid (supplementary groups, effective capabilities) and
//! its user namespace. Plain file reads; the interpretation is the caller's (cred.rs).

use std::io;

/// The parts of `/proc/<tid>/status` that permission rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// The fourth fields of `Uid:` and `Gid:` (filesystem ids), in the reader's namespace.
    pub fsuid: u32,
    pub fsgid: u32,
    /// `Groups:`.
    pub groups: Vec<u32>,
    /// `CapEff:` as a bit mask.
    pub cap_eff: u64,
}

/// Parses the text of a status file.
pub fn parse_status(text: &str) -> Option<TaskStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let fs_id =
        |name: &str| -> Option<u32> { field(name)?.split_whitespace().nth(3)?.parse().ok() };
    Some(TaskStatus {
        fsuid: fs_id("Uid:")?,
        fsgid: fs_id("Gid:")?,
        groups: field("Groups:")?
            .split_whitespace()
            .map(|g| g.parse().ok())
            .collect::<Option<Vec<u32>>>()?,
        cap_eff: u64::from_str_radix(field("CapEff:")?, 16).ok()?,
    })
}

/// `/proc/<tid>/status` of task `tid` (a thread id works: FUSE requests carry the calling
/// thread's id, and credentials are per thread).
pub fn task_status(tid: u32) -> io::Result<TaskStatus> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    parse_status(&text).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Is task `tid` in this process's user namespace? `None` when either link is unreadable.
pub fn same_user_ns(tid: u32) -> Option<bool> {
    let theirs = std::fs::read_link(format!("/proc/{tid}/ns/user")).ok()?;
    let ours = std::fs::read_link("/proc/self/ns/user").ok()?;
    Some(theirs == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_permission_rules_use() {
        let s = "Name:\tsh\nUid:\t65534\t65534\t65534\t65534\nGid:\t0\t1\t2\t3\n\
                 Groups:\t4 24 27 \nCapEff:\t0000000000000010\n";
        let t = parse_status(s).unwrap();
        assert_eq!((t.fsuid, t.fsgid), (65534, 3));
        assert_eq!(t.groups, vec![4, 24, 27]);
        assert_eq!(t.cap_eff, 1 << 4);
        let none = parse_status("Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\t\nCapEff:\t0\n");
        assert_eq!(none.unwrap().groups, Vec::<u32>::new());
        assert!(parse_status("Uid:\t1\n").is_none());
    }

    #[test]
    fn reads_this_thread() {
        let me = task_status(std::process::id()).unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((me.fsuid, me.fsgid), (uid, gid));
        assert_eq!(same_user_ns(std::process::id()), Some(true));
        assert!(task_status(u32::MAX).is_err());
    }
}

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

/// The FUSE connection number of our descriptor `fd` of /dev/fuse, from the
/// `fuse_connection:` line of /proc/self/fdinfo (Linux 6.x): the minor device number of
/// the connection's superblock (`0:N` in /proc/self/mountinfo). `None` on kernels without it.
pub fn fuse_connection(fd: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_fuse_connection(&text)
}

/// The `fuse_connection:` value of an fdinfo text.
pub fn parse_fuse_connection(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("fuse_connection:"))
        .and_then(|v| v.trim().parse().ok())
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
    fn reads_the_fuse_connection_of_fdinfo() {
        let t = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t89\nfuse_connection:\t40\n";
        assert_eq!(parse_fuse_connection(t), Some(40));
        assert_eq!(parse_fuse_connection("pos:\t0\nflags:\t02\n"), None);
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

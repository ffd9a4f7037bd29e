//! FUSE request counters: how many requests of each kind the daemon has answered, so the
//! round trips a workload costs can be counted instead of estimated from `-d` logs.
//!
//! One relaxed atomic per request kind, bumped by the adapter before it handles a request
//! (a few nanoseconds; no lock). Read through the mount: `getfattr -n user.stratafs.stats`
//! (or `os.getxattr`) on the mount's root directory returns one `name count` line per kind,
//! fixed width, then `total`, then the requests per transport (`requests_classic`,
//! `requests_io_uring`), after a first line naming the transport in use (`transport
//! classic`); `setfattr -n user.stratafs.stats -v reset` on the root sets them all to zero
//! (anyone who can reach the mount may; they are diagnostics). Requests for this name are
//! not counted and never reach the layers; the name is not listed by listxattr.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::Transport;

/// The xattr of the mount's root that reads (and, set to `reset`, clears) the counters.
pub const STATS_XATTR: &str = "user.stratafs.stats";

/// The request kinds counted: every request the adapter handles, plus `getxattr` of
/// `security.capability` on its own (the kernel's kill-suid check asks for it on writes and
/// setattr; it is counted in `getxattr` too), and one kind of message the daemon sends: the
/// drops of a directory's cached listing (notify inval_inode from `names_changed` in
/// dispatch/dir.rs; not a request, not in `total`), and the opens that had to wait for another
/// backing file of their inode to be released (backing.rs; counted in `open` too), and the
/// bytes the READ requests asked for (their sizes show the kernel's request size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Init,
    Lookup,
    Forget,
    Getattr,
    Readlink,
    Open,
    Read,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Getxattr,
    GetxattrCapability,
    Listxattr,
    Access,
    Lseek,
    Setattr,
    Mknod,
    Mkdir,
    Symlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Create,
    Write,
    Flush,
    Fsync,
    Fsyncdir,
    Setxattr,
    Removexattr,
    Fallocate,
    CopyFileRange,
    NotifyInvalListing,
    NotifyInvalRemoved,
    OpenWaited,
    ReadBytes,
}

impl Op {
    pub const ALL: [Op; 39] = [
        Op::Init,
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Readlink,
        Op::Open,
        Op::Read,
        Op::Release,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Statfs,
        Op::Getxattr,
        Op::GetxattrCapability,
        Op::Listxattr,
        Op::Access,
        Op::Lseek,
        Op::Setattr,
        Op::Mknod,
        Op::Mkdir,
        Op::Symlink,
        Op::Link,
        Op::Unlink,
        Op::Rmdir,
        Op::Rename,
        Op::Create,
        Op::Write,
        Op::Flush,
        Op::Fsync,
        Op::Fsyncdir,
        Op::Setxattr,
        Op::Removexattr,
        Op::Fallocate,
        Op::CopyFileRange,
        Op::NotifyInvalListing,
        Op::NotifyInvalRemoved,
        Op::OpenWaited,
        Op::ReadBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Init => "init",
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Readlink => "readlink",
            Op::Open => "open",
            Op::Read => "read",
            Op::Release => "release",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Statfs => "statfs",
            Op::Getxattr => "getxattr",
            Op::GetxattrCapability => "getxattr_security.capability",
            Op::Listxattr => "listxattr",
            Op::Access => "access",
            Op::Lseek => "lseek",
            Op::Setattr => "setattr",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Symlink => "symlink",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Create => "create",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Fsync => "fsync",
            Op::Fsyncdir => "fsyncdir",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::Fallocate => "fallocate",
            Op::CopyFileRange => "copy_file_range",
            Op::NotifyInvalListing => "notify_inval_listing",
            Op::NotifyInvalRemoved => "notify_inval_removed",
            Op::OpenWaited => "open_waited",
            Op::ReadBytes => "read_bytes",
        }
    }
}

/// The counters, one per [`Op`], and the requests per transport.
#[derive(Debug)]
pub struct Stats {
    counts: [AtomicU64; Op::ALL.len()],
    /// Requests that came over /dev/fuse (read/write) and over io_uring.
    classic: AtomicU64,
    uring: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            classic: AtomicU64::new(0),
            uring: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One request came over `t` (every request but those for [`STATS_XATTR`]; a
    /// BATCH_FORGET is one request, counted as one `forget` per node).
    pub fn count_transport(&self, t: Transport) {
        match t {
            Transport::Classic => &self.classic,
            Transport::Uring => &self.uring,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, op: Op, n: u64) {
        self.counts[op as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        for c in self.counts.iter().chain([&self.classic, &self.uring]) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// One `name count` line per kind (every kind, so the text has the same length from
    /// one read to the next: a size query followed by a read cannot get ERANGE), then
    /// `total` (the sum of the requests: not counting the capability line twice, nor the
    /// notifications). First the transport `now` in use (the line `transport classic` or
    /// `transport io_uring`), last the requests per transport.
    pub fn render(&self, now: Transport) -> String {
        let mut out = format!("{:<28} {:>16}\n", "transport", transport_name(now));
        let mut total = 0;
        for op in Op::ALL {
            let n = self.get(op);
            if !matches!(
                op,
                Op::GetxattrCapability
                    | Op::NotifyInvalListing
                    | Op::NotifyInvalRemoved
                    | Op::OpenWaited
                    | Op::ReadBytes
            ) {
                total += n;
            }
            out.push_str(&format!("{:<28} {:>16}\n", op.name(), n));
        }
        out.push_str(&format!("{:<28} {:>16}\n", "total", total));
        for (t, c) in [
            (Transport::Classic, &self.classic),
            (Transport::Uring, &self.uring),
        ] {
            let name = format!("requests_{}", transport_name(t));
            out.push_str(&format!("{:<28} {:>16}\n", name, c.load(Ordering::Relaxed)));
        }
        out
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Classic => "classic",
        Transport::Uring => "io_uring",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_listed_once_in_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?} out of place in Op::ALL");
        }
    }

    #[test]
    fn counts_render_and_reset() {
        let s = Stats::default();
        let empty = s.render(Transport::Classic);
        s.count(Op::Lookup);
        s.count(Op::Lookup);
        s.count(Op::Getxattr);
        s.count(Op::GetxattrCapability);
        s.count_transport(Transport::Classic);
        s.count_transport(Transport::Uring);
        s.count_transport(Transport::Uring);
        let text = s.render(Transport::Classic);
        assert_eq!(text.len(), empty.len(), "fixed width");
        let line = |name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(|n| n.parse::<u64>().unwrap())
        };
        assert_eq!(line("lookup"), Some(2));
        assert_eq!(line("getxattr"), Some(1));
        assert_eq!(line("getxattr_security.capability"), Some(1));
        assert_eq!(line("total"), Some(3));
        assert_eq!(line("requests_classic"), Some(1));
        assert_eq!(line("requests_io_uring"), Some(2));
        assert!(
            text.starts_with("transport ") && text.lines().next().unwrap().ends_with(" classic")
        );
        assert_eq!(s.render(Transport::Uring).len(), empty.len(), "fixed width");
        s.reset();
        assert_eq!(s.render(Transport::Classic), empty);
    }
}

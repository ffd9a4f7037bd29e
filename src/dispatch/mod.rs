//! The transport-neutral dispatcher: one [`Op`] in, one [`Reply`] out, for every
//! transport (fuser's /dev/fuse loop, FUSE over io_uring). Here are the decisions the
//! kernel protocol asks of a FUSE daemon beyond the filesystem operations themselves: the
//! TTLs of entries and attributes, open flags and the passthrough choice, the cache
//! invalidations a change needs before it is answered, the request counters, and how
//! directory listings are cut into replies. The filesystem itself is [`UnionFs`]; a
//! transport only decodes requests into [`Op`]s and encodes [`Reply`]s.
//!
//! Files by job: `entry.rs` (names and attributes), `open.rs` (file handles and data),
//! `dir.rs` (directory streams), `init.rs` (what INIT asks of the kernel), `notify.rs`
//! (invalidations, always over /dev/fuse), `types.rs` (the shared types).

mod dir;
mod entry;
pub mod init;
pub mod notify;
pub mod open;
pub mod types;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use fuser::Notifier;
use log::debug;

use crate::backing::Backings;
use crate::error::Error;
use crate::fs::UnionFs;
use crate::stats::{Op as Count, Stats, STATS_XATTR};
use crate::types::Caller;

pub use entry::secs_nsecs;
pub use notify::{send_inval, Invalidator};
pub use open::Pending;
pub use types::*;

/// How long the kernel may cache entries, attributes and negative lookups. Every change
/// made through the mount goes through this daemon and the kernel updates or drops its own
/// cache for it, so only changes made to the branches behind the mount's back wait this
/// long to show (`timeout=` lowers it).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86400);

/// The attribute TTL of an inode whose times can change unseen (a read-write passthrough
/// handle is open: stores through a shared mapping of it change the backing file's mtime
/// and ctime without a request; `UnionFs::times_change_unseen`). Not zero: with zero,
/// every fstat and SEEK_END is a GETATTR, and each GETATTR clears the inode's S_NOSEC so
/// the next write asks for security.capability too (fsx: 2.9 round trips per operation).
/// The kernel rounds a TTL up to whole clock ticks and keeps the attributes until the
/// tick after that, so a `stat` shows such a store at most two ticks late (8 ms at
/// HZ=250, 2 ms at HZ=1000); docs/guarantees.md, "File times".
pub const UNSEEN_ATTR_TTL: Duration = Duration::from_millis(1);

/// Serves the requests of one mount, from every thread of every transport (shared by
/// `Arc`).
pub struct Dispatcher {
    fs: Arc<UnionFs>,
    ttl: Duration,
    /// FUSE passthrough: backing files and how each open does its I/O (backing.rs).
    pt: Arc<Backings>,
    /// Directories the kernel may hold a cached listing of: listed (READDIR or READDIRPLUS
    /// answered) since their cached listing was last dropped. Only these need the drop
    /// when their names change (see `names_changed`).
    listed: DashMap<u64, ()>,
    /// Requests answered, by kind (stats.rs; read through `user.stratafs.stats` on the root).
    stats: Stats,
    /// Sends cache invalidations to the kernel; set by `mount.rs` once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
    /// The connection's /dev/fuse fd, for registering backing files; set by `mount.rs`
    /// once the session exists.
    dev: Arc<OnceLock<Arc<OwnedFd>>>,
    /// The mount's `MAJ:MIN`, set by `mount.rs`; taken by the first OPEN to raise the
    /// mount's readahead (`open.rs`, `raise_readahead`), once INIT is done.
    bdi: Arc<OnceLock<String>>,
    readahead_set: std::sync::Once,
    /// Whether INIT asks for FUSE over io_uring (init.rs); off until a ring can serve it.
    want_uring: AtomicBool,
    /// Whether the kernel granted FUSE over io_uring at INIT.
    uring_granted: Arc<AtomicBool>,
    /// The kernel refuses attributes with an invalid size in a READDIRPLUS entry without
    /// refusing the entry (FUSE 7.32, Linux 5.10, and later; see `dir.rs`, `plus_links`).
    /// Set at INIT.
    plus_without_node: AtomicBool,
    /// Whether the ring serves the connection (its queues registered): the transport the
    /// counters name.
    ring_serving: AtomicBool,
}

impl Dispatcher {
    pub fn new(fs: Arc<UnionFs>, ttl: Duration) -> Self {
        Dispatcher {
            fs,
            ttl,
            pt: Arc::new(Backings::default()),
            listed: DashMap::new(),
            stats: Stats::default(),
            notifier: Arc::new(OnceLock::new()),
            dev: Arc::new(OnceLock::new()),
            bdi: Arc::new(OnceLock::new()),
            readahead_set: std::sync::Once::new(),
            want_uring: AtomicBool::new(false),
            uring_granted: Arc::new(AtomicBool::new(false)),
            plus_without_node: AtomicBool::new(false),
            ring_serving: AtomicBool::new(false),
        }
    }

    /// The slot `mount.rs` fills with the mount's device number (`MAJ:MIN`).
    pub fn bdi_slot(&self) -> Arc<OnceLock<String>> {
        self.bdi.clone()
    }

    /// The slot `mount.rs` fills with the session's notifier.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// The slot `mount.rs` fills with (a duplicate of) the session's /dev/fuse fd.
    pub fn dev_slot(&self) -> Arc<OnceLock<Arc<OwnedFd>>> {
        self.dev.clone()
    }

    /// Drops kernel caches from outside a request (branch changes, udba).
    pub fn invalidator(&self) -> Invalidator {
        Invalidator::new(self.notifier.clone())
    }

    /// Serves one request. The reply is to be sent, then handed to [`Dispatcher::replied`].
    pub fn handle(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let stats_xattr = |name: &OsStr| ctx.nodeid == ROOT_ID && name == STATS_XATTR;
        if !matches!(op, Op::Getxattr { name, .. } | Op::Setxattr { name, .. } if stats_xattr(name))
        {
            self.stats.count_transport(ctx.transport);
        }
        match op {
            Op::Lookup { name } => self.lookup(ctx, name),
            Op::Forget { nlookup } => self.forget(ctx.nodeid, nlookup),
            Op::BatchForget(nodes) => {
                for &(node, n) in nodes {
                    self.forget(node, n);
                }
                Reply::NoReply
            }
            Op::Getattr { fh } => self.getattr(ctx, fh),
            op @ Op::Setattr { .. } => self.setattr(ctx, op),
            Op::Readlink => self.readlink(ctx),
            Op::Symlink { .. } | Op::Mknod { .. } | Op::Mkdir { .. } | Op::Create { .. } => {
                self.create(ctx, op)
            }
            Op::Unlink { name } => self.remove(ctx, name, false),
            Op::Rmdir { name } => self.remove(ctx, name, true),
            Op::Rename {
                newdir,
                name,
                newname,
                flags,
            } => self.rename(ctx, name, newdir, newname, flags),
            Op::Link { oldnodeid, newname } => self.link(ctx, oldnodeid, newname),
            Op::Open { flags } => self.open(ctx, flags),
            Op::Read {
                fh, offset, size, ..
            } => self.read(fh, offset, size),
            op @ Op::Write { .. } => self.write(ctx, op),
            Op::Statfs => self.statfs(),
            Op::Release { fh, .. } => self.release(ctx, fh),
            Op::Fsync { fh, datasync } => self.fsync(fh, datasync),
            Op::Setxattr {
                name, value, flags, ..
            } => self.setxattr(ctx, name, value, flags),
            Op::Getxattr { name, size } => self.getxattr(ctx, name, size),
            Op::Listxattr { size } => self.listxattr(ctx, size),
            Op::Removexattr { name } => self.removexattr(ctx, name),
            Op::Flush { .. } => self.flush(),
            Op::Opendir { .. } => self.opendir(ctx),
            Op::Readdir { fh, offset, size } => {
                let mut out = SizedDir::new(size);
                self.readdir(ctx, fh, offset, &mut out)
                    .unwrap_or(Reply::Dir(out.entries))
            }
            Op::Readdirplus { fh, offset, size } => {
                let mut out = SizedDir::new(size);
                self.readdirplus(ctx, fh, offset, &mut out)
                    .unwrap_or(Reply::DirPlus(out.entries))
            }
            Op::Releasedir { fh } => self.releasedir(fh),
            Op::Fsyncdir { datasync, .. } => self.fsyncdir(ctx, datasync),
            Op::Access { mask } => self.access(ctx, mask),
            op @ Op::Fallocate { .. } => self.fallocate(ctx, op),
            Op::Lseek { fh, offset, whence } => self.lseek(fh, offset, whence),
            op @ Op::CopyFileRange { .. } => self.copy_file_range(ctx, op),
            Op::Ioctl {
                flags,
                cmd,
                in_data,
                out_size,
                ..
            } => self.ioctl(ctx, flags, cmd, in_data, out_size),
        }
    }

    /// After `reply` (to the request of `ctx`) is sent: what must follow the reply, not
    /// precede it. A passthrough CREATE's attributes went out with the entry's (long) TTL:
    /// dropped now if the file's times can change unseen (the kernel knows the inode only
    /// once it has the reply); a READ's buffer goes back to the thread.
    pub fn replied(&self, _ctx: &Ctx, reply: Reply) {
        match reply {
            Reply::Create { entry, open }
                if open.backing_id.is_some() && self.fs.times_change_unseen(entry.nodeid) =>
            {
                self.forget_cached_attrs(entry.nodeid);
            }
            Reply::Data(buf) => open::give_back_read_buf(buf),
            _ => {}
        }
    }

    /// Counts INIT (answered by the transport that negotiates it: init.rs).
    pub fn count_init(&self, transport: Transport) {
        self.stats.count(Count::Init);
        self.stats.count_transport(transport);
    }

    fn statfs(&self) -> Reply {
        self.stats.count(Count::Statfs);
        match self.fs.statfs() {
            Ok(s) => Reply::Statfs(StatfsOut {
                blocks: s.blocks,
                bfree: s.bfree,
                bavail: s.bavail,
                files: s.files,
                ffree: s.ffree,
                bsize: s.bsize,
                namelen: s.namelen,
                frsize: s.frsize,
            }),
            Err(e) => errno("statfs", e),
        }
    }

    fn getxattr(&self, ctx: &Ctx, name: &OsStr, size: u32) -> Reply {
        if ctx.nodeid == ROOT_ID && name == STATS_XATTR {
            return xattr_reply(size, self.stats.render(self.transport()).into_bytes());
        }
        self.stats.count(Count::Getxattr);
        if name == "security.capability" {
            self.stats.count(Count::GetxattrCapability);
        }
        match self.fs.getxattr(ctx.nodeid, name) {
            Ok(v) => xattr_reply(size, v),
            Err(e) => errno("getxattr", e),
        }
    }

    fn listxattr(&self, ctx: &Ctx, size: u32) -> Reply {
        self.stats.count(Count::Listxattr);
        match self.fs.listxattr(ctx.nodeid) {
            Ok(v) => xattr_reply(size, v),
            Err(e) => errno("listxattr", e),
        }
    }

    fn setxattr(&self, ctx: &Ctx, name: &OsStr, value: &[u8], flags: i32) -> Reply {
        if ctx.nodeid == ROOT_ID && name == STATS_XATTR {
            // Diagnostics only: whoever may reach the mount may clear them.
            return if value == b"reset" || value == b"reset\n" {
                self.stats.reset();
                Reply::Empty
            } else {
                Reply::Err(libc::EINVAL)
            };
        }
        self.stats.count(Count::Setxattr);
        let r = self
            .fs
            .setxattr_as(ctx.nodeid, name, value, flags, caller(ctx));
        empty("setxattr", r)
    }

    fn removexattr(&self, ctx: &Ctx, name: &OsStr) -> Reply {
        self.stats.count(Count::Removexattr);
        empty("removexattr", self.fs.removexattr(ctx.nodeid, name))
    }

    /// FUSE_IOCTL: the file attribute commands (`chattr`, `lsattr`; the kernel sends them
    /// for regular files and directories, FS_IOC_GETFLAGS/SETFLAGS with an `int`); any
    /// other command ENOTTY, as a filesystem that does not know it answers.
    fn ioctl(&self, ctx: &Ctx, flags: u32, cmd: u32, data: &[u8], out_size: u32) -> Reply {
        use crate::fileattr::Request as R;
        use crate::sys::fileattr as fa;
        const UNRESTRICTED: u32 = 1 << 1;
        if flags & UNRESTRICTED != 0 {
            return Reply::Err(libc::ENOSYS);
        }
        let int = |d: &[u8]| {
            d.get(..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let req = match cmd {
            fa::FS_IOC_GETFLAGS | fa::FS_IOC32_GETFLAGS => Some(R::GetFlags),
            fa::FS_IOC_SETFLAGS | fa::FS_IOC32_SETFLAGS => int(data).map(R::SetFlags),
            fa::FS_IOC_FSGETXATTR => Some(R::GetXattr),
            fa::FS_IOC_FSSETXATTR => fa::Fsxattr::from_bytes(data).map(R::SetXattr),
            _ => return Reply::Err(libc::ENOTTY),
        };
        let Some(req) = req else {
            return Reply::Err(libc::EINVAL);
        };
        match self.fs.fileattr(ctx.nodeid, req) {
            Ok(mut data) => {
                data.resize(out_size as usize, 0);
                Reply::Ioctl { result: 0, data }
            }
            Err(e) => errno("ioctl", e),
        }
    }

    fn access(&self, ctx: &Ctx, mask: i32) -> Reply {
        self.stats.count(Count::Access);
        empty("access", self.fs.access(ctx.nodeid, mask, caller(ctx)))
    }

    /// Records that the ring's queues are registered and serve the connection (mount.rs).
    pub fn set_ring_serving(&self, on: bool) {
        self.ring_serving.store(on, Ordering::Relaxed);
    }

    /// The transport the mount's requests go over (for the counters).
    fn transport(&self) -> Transport {
        if self.ring_serving.load(Ordering::Relaxed) {
            Transport::Uring
        } else {
            Transport::Classic
        }
    }
}

/// The node id of the mount's root (`FUSE_ROOT_ID`).
pub const ROOT_ID: u64 = 1;

fn errno(op: &str, e: Error) -> Reply {
    debug!("{op}: {e}");
    Reply::Err(e.errno)
}

fn empty(op: &str, r: crate::Result<()>) -> Reply {
    match r {
        Ok(()) => Reply::Empty,
        Err(e) => errno(op, e),
    }
}

fn caller(ctx: &Ctx) -> Caller {
    Caller {
        uid: ctx.uid,
        gid: ctx.gid,
        pid: ctx.pid,
    }
}

/// An xattr value (or list) for a request of `size`: the size needed when asked with 0,
/// ERANGE when it does not fit.
fn xattr_reply(size: u32, data: Vec<u8>) -> Reply {
    if size == 0 {
        Reply::Xattr {
            size: data.len() as u32,
        }
    } else if data.len() > size as usize {
        Reply::Err(libc::ERANGE)
    } else {
        Reply::XattrData(data)
    }
}

/// A READ's buffer (or any reply buffer) after a transport sent it without going through
/// [`Dispatcher::replied`]: kept for the thread's next READ.
pub fn recycle_read_buf(buf: Vec<u8>) {
    open::give_back_read_buf(buf);
}

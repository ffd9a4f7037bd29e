//! The FUSE adapter: decodes each request, makes one call into [`UnionFs`], replies.
//! No filesystem logic lives here; every error is logged at debug and answered with its
//! errno.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use dashmap::DashMap;
use fuser::BackingId;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, info, warn};

use crate::attr::{Attr, SetAttr};
use crate::backing::{Backings, OpenIo, OPEN_WAIT};
use crate::dir::NewKind;
use crate::error::Error;
use crate::fs::{Caller, UnionFs};
use crate::inode::Kind;
use crate::stats::{Op, Stats, STATS_XATTR};
use crate::sys::ops::SetTime;

/// How long the kernel may cache entries, attributes and negative lookups. Every change
/// made through the mount goes through this daemon and the kernel updates or drops its own
/// cache for it, so only changes made to the branches behind the mount's back wait this
/// long to show (`timeout=` lowers it).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86400);

/// Set on every file open: close(2) sends no FLUSH. Nothing here needs one (writes are
/// written through when they arrive, no POSIX locks are kept here, and `flush` never
/// fails); with the writeback cache the kernel ignores it and still writes back and sends
/// FLUSH at close.
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// The largest read buffer a daemon thread keeps between READs (see `read`): the largest
/// READ asked for (max_pages = 1 MiB, from max_write) and the reply header.
const READ_BUF_KEEP: usize = (1 << 20) + 4096;

/// The `fuser::Filesystem` over a shared [`UnionFs`].
pub struct FuseAdapter {
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
    /// The mount's `MAJ:MIN`, set by `mount.rs`; taken by the first OPEN to raise the
    /// mount's readahead (`mount::raise_readahead`), once INIT is done.
    bdi: Arc<OnceLock<String>>,
    readahead_set: std::sync::Once,
    /// The kernel refuses attributes with an invalid size in a READDIRPLUS entry without
    /// refusing the entry (FUSE 7.32, Linux 5.10, and later; see `plus_entry`).
    plus_without_node: bool,
}

/// Sends cache invalidations for changes the kernel did not see go through a request (a
/// branch change, `stack.rs`; a branch changed behind the mount's back). Each call returns
/// once the kernel has dropped the entry; call it with no daemon lock held (the kernel may
/// wait for a request on the same directory, which a daemon thread must be free to answer).
#[derive(Clone)]
pub struct Invalidator(Arc<OnceLock<Notifier>>);

impl Invalidator {
    /// Drops the kernel's dentry `name` in `parent` (positive or negative); ENOENT (no
    /// such entry cached) is not an error.
    pub fn entry(&self, parent: u64, name: &std::ffi::OsStr) {
        if let Some(n) = self.0.get() {
            if let Err(e) = n.inval_entry(INodeNo(parent), name) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    debug!("inval_entry {parent:#x} {name:?}: {e}");
                }
            }
        }
    }

    /// Drops the kernel's cached attributes and pages (a directory's cached listing) of `ino`.
    pub fn inode(&self, ino: u64) {
        if let Some(n) = self.0.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    debug!("inval_inode {ino:#x}: {e}");
                }
            }
        }
    }

    /// Everything a branch change lists.
    pub fn apply(&self, inval: &crate::stack::Inval) {
        for (dir, name) in &inval.names {
            self.entry(*dir, name);
        }
        for d in &inval.dirs {
            self.inode(*d);
        }
    }
}

impl FuseAdapter {
    pub fn new(fs: Arc<UnionFs>, ttl: Duration) -> Self {
        FuseAdapter {
            fs,
            ttl,
            pt: Arc::new(Backings::default()),
            listed: DashMap::new(),
            stats: Stats::default(),
            notifier: Arc::new(OnceLock::new()),
            bdi: Arc::new(OnceLock::new()),
            readahead_set: std::sync::Once::new(),
            plus_without_node: false,
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

    /// Drops kernel caches from outside a request (branch changes, udba).
    pub fn invalidator(&self) -> Invalidator {
        Invalidator(self.notifier.clone())
    }

    fn forget_cached_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                debug!("inval_inode {ino:#x}: {e}");
            }
        }
    }

    /// Before a reply carrying `a`'s attributes: while a name of its node goes or just
    /// went, the kernel must not cache them, or its link count may end one short, at 0
    /// (inode.rs, "Link counts the kernel keeps"). A notify inval_inode first moves the
    /// inode's attribute version past the one the request was sent with, and the kernel
    /// drops the reply's attributes (a stat still gets them: it reads the reply).
    fn settle_count(&self, a: &Attr) {
        if self.fs.count_settling(a.node) {
            self.stats.count(Op::NotifyInvalRemoved);
            self.forget_cached_attrs(a.node);
        }
    }

    /// The daemon changed `ino`'s mode while serving a write (dropped setuid/setgid bits):
    /// the kernel's cached attributes must go before the reply, or its next permission
    /// check or exec would still see the bits (the reply of a write carries no attributes,
    /// and with the writeback cache a later stat would not ask either).
    fn mode_changed(&self, ino: INodeNo, changed: bool) {
        if changed {
            self.forget_cached_attrs(ino.0);
        }
    }

    /// The open flags of a directory stream. The kernel may keep listings (FOPEN_CACHE_DIR)
    /// and across opens (FOPEN_KEEP_CACHE) when every change of names goes through this
    /// mount, i.e. with the default timeout (with `timeout=`, branches may change behind
    /// its back, and the kernel would not see those). Why that is safe:
    /// - the kernel starts a stream from its cached listing only if the directory's change
    ///   counter (bumped by the kernel for every create/link/unlink/rename it makes) and
    ///   mtime equal those of when the cache was begun;
    /// - a stream already past offset 0 reads on in the cache, or appends what the daemon
    ///   sends it to the cache: [`FuseAdapter::names_changed`] drops the cached listing
    ///   (notify inval_inode, before the change is answered, while the kernel holds the
    ///   directory locked against readers), and a dropped page of a cached listing makes
    ///   the kernel start it over; the daemon rebuilds a directory's listing after any change
    ///   (UnionFs::readdir), and cookie offsets (readdir.rs) let a stream go on in a later
    ///   listing, in the cache or from the daemon, without skipping or repeating a name;
    /// - a READDIRPLUS reply never leaves out a name that exists (see `readdirplus`).
    ///
    /// With `strictatime` (and not `nodiratime`) every listing must reach the branch, where
    /// the directory's atime is updated, so listings are not cached then; nor with
    /// `udba=reval`, nor under `udba=notify` for a directory not watched (udba.rs).
    fn dir_flags(&self, ino: INodeNo) -> FopenFlags {
        let p = self.fs.layers.atime;
        let strict_dirs = p.atime == crate::atime::Atime::Strict && !p.nodiratime;
        if self.ttl == DEFAULT_TTL && !strict_dirs && self.fs.udba_covers_dir(ino.0) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// Whether directories are opened at all. Where every directory gets
    /// FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE (`dir_flags` with the default timeout, directory
    /// atimes not strict, `udba=none`), OPENDIR is answered ENOSYS: the kernel then sends
    /// no OPENDIR or RELEASEDIR on the connection again and opens every directory with
    /// handle 0 and exactly those flags (Linux fs/fuse/file.c, `no_opendir`), which saves
    /// two round trips per directory walked. Streams share their directory's listing
    /// (readdir.rs), so nothing needs a handle; `stack.rs` finds open directories in
    /// /proc. Decided from fixed settings: it holds for the life of the connection.
    fn opens_dirs(&self) -> bool {
        let p = self.fs.layers.atime;
        let strict_dirs = p.atime == crate::atime::Atime::Strict && !p.nodiratime;
        !(self.ttl == DEFAULT_TTL && !strict_dirs && self.fs.udba == crate::udba::Udba::None)
    }

    /// After a request that changed (or tried to change) names in the directories `dirs`,
    /// before it is answered: open streams' listings are out of date, and the kernel's
    /// cached listings of `dirs` are dropped.
    ///
    /// Only where the kernel may hold one: a directory listed since its last drop (see
    /// `listed`). The kernel fills its cached listing only from READDIR/READDIRPLUS replies,
    /// and it holds the directory locked shared while it reads one and exclusive while it
    /// creates, removes or renames a name in it, so a listing cannot be filled between this
    /// check and the change. The drop (notify inval_inode) also throws away the
    /// directory's cached attributes, mode included, so skipping it where nothing is cached
    /// spares the GETATTR the kernel's next permission check of the directory would make
    /// (one per created file in an untar; the kernel itself invalidates only the times and
    /// size of a directory it changed).
    fn names_changed(&self, dirs: &[INodeNo]) {
        self.fs.names_changed();
        let Some(n) = self.notifier.get() else {
            return;
        };
        for (i, d) in dirs.iter().enumerate() {
            if dirs[..i].contains(d) || self.listed.remove(&d.0).is_none() {
                continue;
            }
            self.stats.count(Op::NotifyInvalListing);
            if let Err(e) = n.inval_inode(*d, 0, 0) {
                debug!("inval_inode {:#x}: {e}", d.0);
            }
        }
    }

    /// See [`served_flags`].
    fn served_flags(&self, fh: u64, ino: u64) -> FopenFlags {
        served_flags(&self.fs, self.ttl, self.pt.enabled(), fh, ino)
    }

    /// The backing file for handle `fh` of a new file, if it may use passthrough (see
    /// `UnionFs::passthrough_source`). `register` is the reply's `open_backing`.
    fn backing_for(
        &self,
        fh: u64,
        ino: u64,
        register: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        match self.pt.decide(&self.fs, fh, ino, register) {
            OpenIo::Passthrough(b) => Some(b),
            OpenIo::Served | OpenIo::Wait => None,
        }
    }
}

/// The open flags for handle `fh`, which the daemon serves. Without passthrough a file's
/// data only changes through this daemon, so the page cache stays valid from one open
/// to the next. With passthrough in use, writes through a passthrough handle go around
/// the page cache, so it is kept only for files that cannot have had any
/// (`UnionFs::keeps_page_cache`: lower files not copied up), and only with the default
/// timeout (with `timeout=`, a lower layer may be changed behind the mount's back and
/// a new open should see it).
///
/// A handle whose writes must reach the daemon from the writer (a file with setuid or
/// setgid bits opened for write, on a mount with the writeback cache) gets direct I/O.
/// With `strictatime` every read must reach the branch (where the atime is updated),
/// so the page cache is not kept across opens either; nor with `udba=reval`, nor under
/// `udba=notify` for a file whose directory is not watched (udba.rs).
fn served_flags(fs: &UnionFs, ttl: Duration, passthrough: bool, fh: u64, ino: u64) -> FopenFlags {
    let strict = fs.layers.atime.atime == crate::atime::Atime::Strict;
    let udba_keeps = match fs.udba {
        crate::udba::Udba::None => true,
        crate::udba::Udba::Reval => false,
        crate::udba::Udba::Notify => fs.udba_covers_attrs(ino),
    };
    if fs.direct_io(fh) {
        FopenFlags::FOPEN_DIRECT_IO
    } else if strict || !udba_keeps {
        FopenFlags::empty()
    } else if !passthrough || (ttl == DEFAULT_TTL && fs.keeps_page_cache(fh)) {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// Decides how the just opened handle `fh` of `ino` does its I/O (its open lock held) and
/// answers the open; gives the reply back if the open must wait (backing.rs).
fn finish_open(
    fs: &UnionFs,
    pt: &Backings,
    notifier: &OnceLock<Notifier>,
    ttl: Duration,
    fh: u64,
    ino: u64,
    reply: ReplyOpen,
) -> Option<ReplyOpen> {
    let io = pt.decide(fs, fh, ino, |fd| reply.open_backing(fd));
    match io {
        OpenIo::Wait => return Some(reply),
        OpenIo::Passthrough(b) => {
            fs.set_passthrough(fh);
            // Recorded before the reply: the kernel may send RELEASE (on another thread) as
            // soon as it has the reply, and a backing id recorded after that release would
            // stay registered, holding the file, until unmount.
            pt.by_handle.insert(fh, b.clone());
            drop_staled_attrs(fs, notifier, ino, fh);
            reply.opened_passthrough(FileHandle(fh), NO_FLUSH, &b);
        }
        // Without passthrough the file's data only changes through this daemon, so the page
        // cache stays valid from one open to the next.
        OpenIo::Served => {
            drop_staled_attrs(fs, notifier, ino, fh);
            let flags = served_flags(fs, ttl, pt.enabled(), fh, ino);
            reply.opened(FileHandle(fh), flags | NO_FLUSH);
        }
    }
    None
}

/// An open that needs another backing file than the one `ino` has (a copy-up while
/// `lower_passthrough` readers hold the lower file): decided again once those handles are
/// released; after [`OPEN_WAIT`] it fails with ETXTBSY (as a write open of a running
/// program does), and the handle is dropped.
fn wait_then_open(
    fs: &UnionFs,
    pt: &Backings,
    notifier: &OnceLock<Notifier>,
    ttl: Duration,
    fh: u64,
    ino: u64,
    mut reply: ReplyOpen,
) {
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(2));
        if pt.in_use(ino) && start.elapsed() < OPEN_WAIT {
            continue;
        }
        let one_at_a_time = pt.open_lock(ino).lock();
        match finish_open(fs, pt, notifier, ttl, fh, ino, reply) {
            None => return,
            Some(r) if start.elapsed() < OPEN_WAIT => reply = r,
            Some(r) => {
                drop(one_at_a_time);
                warn!("open of {ino:#x}: its lower file is still open through passthrough after {OPEN_WAIT:?} (lower_passthrough); failing with ETXTBSY");
                fs.release(fh);
                r.error(Errno::from_i32(libc::ETXTBSY));
                return;
            }
        }
    }
}

/// Drops the kernel's cached attributes of `ino` (not its pages: offset -1) if opening `fh`
/// made them stale.
/// Attributes cached before an open (with the long TTL) may be wrong now: the lower's
/// after a copy-up, or about to change unseen (mmap stores). Dropped before the reply:
/// after it, the opener may close and stat before a later notification is read, and
/// see the lower's attributes (a flake of mmap_times under load).
fn drop_staled_attrs(fs: &UnionFs, notifier: &OnceLock<Notifier>, ino: u64, fh: u64) {
    if fs.open_staled_attrs(fh) {
        if let Some(n) = notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                debug!("inval_inode {ino:#x}: {e}");
            }
        }
    }
}

/// Sends one invalidation asked for by `udba=notify` (udba.rs) to the kernel. ENOENT (the
/// kernel holds nothing for it) is no error.
pub fn send_inval(n: &Notifier, i: &crate::udba::Inval) {
    use crate::udba::Inval;
    let r = match i {
        Inval::Entry(parent, name) => n.inval_entry(INodeNo(*parent), name),
        // Offset -1: the attributes only; 0: and every page (a directory's cached listing).
        Inval::Inode { ino, pages } => n.inval_inode(INodeNo(*ino), if *pages { 0 } else { -1 }, 0),
    };
    if let Err(e) = r {
        debug!("udba: {i:?}: {e}");
    }
}

fn errno(op: &str, e: Error) -> Errno {
    debug!("{op}: {e}");
    Errno::from_i32(e.errno)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// `a` as an entry reply carries it: fuser takes the entry's node id from `ino`.
fn entry_attr(a: &Attr) -> fuser::FileAttr {
    let mut f = fuse_attr(a);
    f.ino = INodeNo(a.node);
    f
}

/// The largest file size the kernel accepts in attributes (it refuses a larger one as
/// invalid).
const MAX_VALID_SIZE: u64 = i64::MAX as u64;

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if n == 0 {
                    SetTime::At(-s, 0)
                } else {
                    SetTime::At(-s - 1, 1_000_000_000 - n)
                }
            }
        },
    }
}

impl FuseAdapter {
    fn reply_new(
        &self,
        op: &str,
        parent: INodeNo,
        r: crate::Result<(Attr, Option<u64>)>,
        reply: ReplyEntry,
    ) {
        match r {
            Ok((a, _)) => self.reply_entry(parent, &a, reply),
            Err(e) => reply.error(errno(op, e)),
        }
    }

    /// The attribute TTL for `a`: zero for a name node (its GETATTR replies carry the
    /// number shown, which its entry replies cannot), while its times can change unseen
    /// (see `UnionFs::times_change_unseen`) and under `udba=notify` when a direct change
    /// to it would not be seen (udba.rs), so every stat asks; the mount's TTL otherwise.
    fn attr_ttl(&self, a: &Attr) -> Duration {
        if a.node != a.ino
            || self.fs.times_change_unseen(a.node)
            || !self.fs.udba_covers_attrs(a.node)
        {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// The TTL of an entry (positive or negative) in directory `parent`: zero under
    /// `udba=notify` for a directory not watched, the mount's otherwise.
    fn entry_ttl(&self, parent: INodeNo) -> Duration {
        if self.fs.udba_covers_dir(parent.0) {
            self.ttl
        } else {
            Duration::ZERO
        }
    }

    /// The READDIRPLUS entry of `a`, and whether the kernel links it (makes a dentry of
    /// the node, holding one reference).
    ///
    /// The kernel takes an entry's d_ino from its dirent and the node from its entry part;
    /// fuser fills both, and the attributes' number, from one field. An object node's id
    /// is the number it shows, so one field serves. A name node's id is not (see
    /// `inode.rs`): its entry carries the number it shows, with a size the kernel refuses
    /// as invalid, so that the kernel lists it (the dirent goes out before the entry part
    /// is checked) and links nothing, as for an entry without a node (node id 0, which
    /// fuser cannot send with a d_ino); it then sends a FORGET of that number, which names
    /// no node (a lower file's number is an object node's only while it has one link) and
    /// changes nothing. A later stat looks the name up, as after a plain READDIR. (A
    /// kernel older than that check would link the number: such an entry then carries its
    /// node, and its node id as d_ino.)
    fn plus_entry(&self, a: &Attr) -> (fuser::FileAttr, bool) {
        let name_node = a.node != a.ino;
        if !name_node || !self.plus_without_node || self.fs.has_node(a.ino) {
            return (entry_attr(a), true);
        }
        let mut f = fuse_attr(a);
        f.size = MAX_VALID_SIZE + 1;
        (f, false)
    }

    fn reply_entry(&self, parent: INodeNo, a: &Attr, reply: ReplyEntry) {
        reply.entry_with_ttls(
            &self.attr_ttl(a),
            &self.entry_ttl(parent),
            &entry_attr(a),
            Generation(0),
        )
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: Vec<u8>) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(&data);
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.stats.count(Op::Init);
        self.plus_without_node = config.kernel_abi().1 >= 32;
        // Each capability on its own, so one the kernel lacks does not cost the others.
        use fuser::InitFlags as F;
        for (flag, why) in [
            (
                F::FUSE_PARALLEL_DIROPS,
                "lookups and readdirs in one directory run in parallel",
            ),
            (F::FUSE_DO_READDIRPLUS, "readdir returns attributes"),
            (
                F::FUSE_READDIRPLUS_AUTO,
                "the kernel picks plain readdir when it needs no attributes",
            ),
            (F::FUSE_ASYNC_READ, "several reads of one file in flight"),
            (F::FUSE_BIG_WRITES, "writes larger than a page"),
            (F::FUSE_EXPORT_SUPPORT, "lookups of . and .. are answered"),
            (
                F::FUSE_DIRECT_IO_ALLOW_MMAP,
                "shared mmap of the direct-I/O handles of setuid/setgid files",
            ),
            // The daemon drops setuid/setgid bits on write, truncate and chown itself, with
            // the caller's credentials (cred.rs, attr.rs `drop_privs_for`): the kernel then
            // skips its GETATTR before each chown and truncate, and sets SB_NOSEC, so a
            // file without bits or capabilities is not asked for security.capability at
            // every write. Without it the kernel does part of the rule and we the rest.
            (
                F::FUSE_HANDLE_KILLPRIV_V2,
                "the daemon drops setuid/setgid bits itself (no GETATTR per chown, SB_NOSEC)",
            ),
        ] {
            match config.add_capabilities(flag) {
                Ok(()) => debug!("init: {flag:?} granted: {why}"),
                Err(_) => info!("init: kernel lacks {flag:?} ({why}); going on without"),
            }
        }
        // udba=reval|notify: a read of an open file whose attributes are found changed
        // (size or mtime; after their TTL, or an invalidation) drops its pages.
        if self.fs.udba != crate::udba::Udba::None
            && config.add_capabilities(F::FUSE_AUTO_INVAL_DATA).is_err()
        {
            info!("init: kernel lacks FUSE_AUTO_INVAL_DATA; open files may read old pages after a direct change");
        }
        // Fast data path, one of two (the kernel refuses both together):
        // - passthrough: the kernel reads and writes upper files itself. Registering a
        //   backing file needs CAP_SYS_ADMIN in the initial user namespace, so it is only
        //   asked for where that holds (stack depth 1: backing files on any plain fs);
        // - otherwise the writeback cache: the kernel batches writes in its page cache.
        let may_passthrough = crate::sys::has_initial_ns_sys_admin();
        if may_passthrough
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.pt.on.store(true, Ordering::Relaxed);
            if self.fs.lower_passthrough {
                info!("init: FUSE_PASSTHROUGH granted: upper files, and lower files opened read-only (lower_passthrough), do I/O in the kernel");
            } else {
                debug!("init: FUSE_PASSTHROUGH granted: upper files do I/O in the kernel");
            }
        } else if self.fs.lower_passthrough && self.fs.no_writeback {
            info!("init: lower_passthrough has no effect: passthrough is not usable here (it needs CAP_SYS_ADMIN in the initial user namespace); writeback=0: all I/O goes through the daemon");
        } else if self.fs.no_writeback {
            warn!("init: writeback=0 and passthrough not usable here: all I/O goes through the daemon");
        } else if config.add_capabilities(F::FUSE_WRITEBACK_CACHE).is_ok() {
            self.fs.set_writeback_cache(true);
            if self.fs.lower_passthrough {
                info!("init: lower_passthrough has no effect: passthrough is not usable here (it needs CAP_SYS_ADMIN in the initial user namespace); writeback cache granted instead");
            } else {
                info!("init: passthrough not usable here; writeback cache granted instead");
            }
        } else if self.fs.lower_passthrough {
            info!("init: lower_passthrough has no effect: passthrough is not usable here; neither passthrough nor writeback cache: all I/O goes through the daemon");
        } else {
            info!("init: neither passthrough nor writeback cache; all I/O goes through the daemon");
        }
        // POSIX ACLs: the kernel checks them and sends the unmasked mode with the umask;
        // stratafs applies the umask or the parent's default ACL itself (dir.rs).
        if self.fs.acl {
            for flag in [F::FUSE_POSIX_ACL, F::FUSE_DONT_MASK] {
                if config.add_capabilities(flag).is_err() {
                    info!("init: kernel lacks {flag:?}; ACLs are stored but not enforced");
                }
            }
        }
        let _ = config.set_max_background(64);
        let _ = config
            .set_max_write(1 << 20)
            .or_else(|max| config.set_max_write(max));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.stats.count(Op::Lookup);
        match self.fs.lookup(parent.0, name) {
            Ok(a) => {
                self.settle_count(&a);
                self.reply_entry(parent, &a, reply)
            }
            // A negative entry (node id 0) lets the kernel cache "no such name" too.
            Err(e) if e.errno == libc::ENOENT && !self.entry_ttl(parent).is_zero() => {
                let mut neg = fuse_attr(&Attr::negative());
                neg.ino = INodeNo(0);
                reply.entry(&self.entry_ttl(parent), &neg, Generation(0))
            }
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.stats.count(Op::Forget);
        self.fs.forget(ino.0, nlookup);
    }

    // batch_forget: fuser's default calls `forget` for each node (its ForgetOne type is
    // private, so it cannot be overridden).

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.stats.count(Op::Getattr);
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => {
                self.settle_count(&a);
                reply.attr(&self.attr_ttl(&a), &fuse_attr(&a))
            }
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.stats.count(Op::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(Op::Open);
        // After INIT (whose reply would lower it again), before any file's readahead state
        // is set up (at the end of its open, after this reply).
        if !self.readahead_set.is_completed() {
            self.readahead_set.call_once(|| {
                if let Some(dev) = self.bdi.get() {
                    crate::mount::raise_readahead(dev);
                }
            });
        }
        let one_at_a_time = self.pt.open_lock(ino.0).lock();
        let fh = match self.fs.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno("open", e)),
        };
        let waiting = finish_open(
            &self.fs,
            &self.pt,
            &self.notifier,
            self.ttl,
            fh,
            ino.0,
            reply,
        );
        drop(one_at_a_time);
        if let Some(reply) = waiting {
            self.stats.count(Op::OpenWaited);
            let (fs, pt, notifier, ttl) = (
                self.fs.clone(),
                self.pt.clone(),
                self.notifier.clone(),
                self.ttl,
            );
            // Not on this request thread: the RELEASEs that end the wait need one.
            std::thread::spawn(move || wait_then_open(&fs, &pt, &notifier, ttl, fh, ino.0, reply));
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.stats.count(Op::Read);
        self.stats.add(Op::ReadBytes, size as u64);
        // One buffer per daemon thread, kept across requests (up to the largest READ the
        // kernel sends: 1 MiB), so a read costs no allocation nor page faults on it.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            match self.fs.read_into(fh.0, offset, size, &mut b) {
                Ok(()) => reply.data(&b),
                Err(e) => reply.error(errno("read", e)),
            }
            if b.capacity() > READ_BUF_KEEP {
                *b = Vec::new();
            }
        })
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Release);
        // Attributes answered while the handle was a passthrough writer had a zero TTL,
        // so nothing the kernel holds needs dropping now.
        self.fs.release(fh.0);
        self.pt.released(fh.0, ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(Op::Opendir);
        if !self.opens_dirs() {
            self.fs.no_dir_handles();
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.dir_flags(ino)),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.stats.count(Op::Readdir);
        self.listed.insert(ino.0, ());
        let listing = match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdir", e)),
        };
        let start = crate::readdir::position_after(&listing, offset);
        if start >= listing.len() {
            self.fs.readdir_done(ino.0);
        }
        for e in listing.get(start..).unwrap_or_default() {
            if reply.add(INodeNo(e.ino), e.off, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.stats.count(Op::Readdirplus);
        self.listed.insert(ino.0, ());
        let listing = match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        let start = crate::readdir::position_after(&listing, offset);
        if start >= listing.len() {
            self.fs.readdir_done(ino.0);
        }
        let mut added = false;
        for e in listing.get(start..).unwrap_or_default() {
            let counted = !(e.name == "." || e.name == "..");
            let attr = match self.fs.readdirplus_entry(ino.0, e) {
                Ok(a) => a,
                // Gone since the listing was made: skip it, as a fresh listing would (and
                // `.` or `..` without attributes: as before, not worth failing a listing).
                Err(err) if err.errno == libc::ENOENT || !counted => {
                    debug!("readdirplus: skipping {:?}: {err}", e.name);
                    continue;
                }
                // Any other failure must not drop the name silently (the kernel may keep
                // this reply as the directory's listing): end the reply before it, so the
                // next request starts at it, or fail this one.
                Err(err) if added => {
                    debug!("readdirplus: stopping at {:?}: {err}", e.name);
                    break;
                }
                Err(err) => return reply.error(errno("readdirplus", err)),
            };
            let (entry, linked) = self.plus_entry(&attr);
            if counted && !linked {
                // The kernel makes no dentry of it: it holds no reference.
                self.fs.forget(attr.node, 1);
            }
            // One TTL for the entry and its attributes.
            let ttl = if self.fs.udba_covers_dir(ino.0) {
                self.attr_ttl(&attr)
            } else {
                Duration::ZERO
            };
            if linked {
                self.settle_count(&attr);
            }
            if reply.add(entry.ino, e.off, &e.name, &ttl, &entry, Generation(0)) {
                // Did not fit: the kernel never saw it, so it does not hold the reference.
                if counted && linked {
                    self.fs.forget(attr.node, 1);
                }
                break;
            }
            added = true;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Releasedir);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.stats.count(Op::Statfs);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino == INodeNo::ROOT && name == STATS_XATTR {
            return reply_xattr(reply, size, self.stats.render().into_bytes());
        }
        self.stats.count(Op::Getxattr);
        if name == "security.capability" {
            self.stats.count(Op::GetxattrCapability);
        }
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.stats.count(Op::Listxattr);
        match self.fs.listxattr(ino.0) {
            Ok(v) => reply_xattr(reply, size, v),
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.stats.count(Op::Access);
        match self.fs.access(ino.0, mask.bits(), caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("access", e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.stats.count(Op::Lseek);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.stats.count(Op::Setattr);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
            caller: Some(caller(req)),
        };
        match self.fs.setattr(ino.0, s) {
            Ok(a) => reply.attr(&self.attr_ttl(&a), &fuse_attr(&a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Mknod);
        let r = self.fs.create_entry(
            parent.0,
            name,
            mode,
            umask,
            NewKind::Node { rdev: rdev as u64 },
            caller(req),
        );
        self.names_changed(&[parent]);
        self.reply_new("mknod", parent, r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Mkdir);
        let r = self.fs.create_entry(
            parent.0,
            name,
            mode | libc::S_IFDIR,
            umask,
            NewKind::Dir,
            caller(req),
        );
        self.names_changed(&[parent]);
        self.reply_new("mkdir", parent, r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Symlink);
        use std::os::unix::ffi::OsStrExt;
        let r = self.fs.create_entry(
            parent.0,
            link_name,
            libc::S_IFLNK | 0o777,
            0,
            NewKind::Symlink(target.as_os_str().as_bytes()),
            caller(req),
        );
        self.names_changed(&[parent]);
        self.reply_new("symlink", parent, r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Link);
        let r = self.fs.link(ino.0, newparent.0, newname);
        self.names_changed(&[newparent]);
        match r {
            Ok(a) => self.reply_entry(newparent, &a, reply),
            Err(e) => reply.error(errno("link", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Unlink);
        let r = self.fs.remove(parent.0, name, false);
        self.names_changed(&[parent]);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Rmdir);
        let r = self.fs.remove(parent.0, name, true);
        self.names_changed(&[parent]);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Rename);
        let r = self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        self.names_changed(&[parent, newparent]);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.stats.count(Op::Create);
        let r = self.fs.create_entry(
            parent.0,
            name,
            mode | libc::S_IFREG,
            umask,
            NewKind::File { flags },
            caller(req),
        );
        self.names_changed(&[parent]);
        match r {
            // A new file is an object node (its id is the number it shows).
            Ok((a, Some(fh))) => match self.backing_for(fh, a.node, |fd| reply.open_backing(fd)) {
                Some(bk) => {
                    self.fs.set_passthrough(fh);
                    // Before the reply (see `open`).
                    self.pt.by_handle.insert(fh, bk.clone());
                    reply.created_passthrough(
                        &self.entry_ttl(parent),
                        &entry_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        NO_FLUSH,
                        &bk,
                    );
                    // The reply's attributes carry the entry's (long) TTL; see `open`.
                    if self.fs.times_change_unseen(a.node) {
                        self.forget_cached_attrs(a.node);
                    }
                }
                None => reply.created(
                    &self.entry_ttl(parent),
                    &entry_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    self.served_flags(fh, a.node) | NO_FLUSH,
                ),
            },
            Ok((_, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.stats.count(Op::Write);
        // A delayed write from the page cache (mmap'ed pages written back) is nobody's
        // write(2): it drops no bits, as on the kernel overlayfs.
        let by = (!write_flags.contains(WriteFlags::FUSE_WRITE_CACHE)).then(|| caller(req));
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write_as(fh.0, offset, data, by, kill) {
            Ok(w) => {
                self.mode_changed(ino, w.mode_changed);
                reply.written(w.bytes as u32)
            }
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Flush);
        // Nothing to do at close (no POSIX locks are kept here, data goes to the real file
        // with each write): ENOSYS makes the kernel send no FLUSH again on this mount. It
        // still writes dirty pages back and reports their errors at close before it would
        // send one. (Handles are FOPEN_NOFLUSH, which the kernel ignores under the
        // writeback cache: rootless mounts closed every file with a FLUSH round trip.)
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Fsync);
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Fsyncdir);
        match self.fs.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if ino == INodeNo::ROOT && name == STATS_XATTR {
            // Diagnostics only: whoever may reach the mount may clear them.
            return if value == b"reset" || value == b"reset\n" {
                self.stats.reset();
                reply.ok()
            } else {
                reply.error(Errno::EINVAL)
            };
        }
        self.stats.count(Op::Setxattr);
        match self.fs.setxattr_as(ino.0, name, value, flags, caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Removexattr);
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("removexattr", e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Fallocate);
        match self
            .fs
            .fallocate_as(fh.0, offset, length, mode, Some(caller(req)))
        {
            Ok(w) => {
                self.mode_changed(ino, w.mode_changed);
                reply.ok()
            }
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.stats.count(Op::CopyFileRange);
        match self.fs.copy_file_range_as(
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            Some(caller(req)),
        ) {
            Ok(w) => {
                self.mode_changed(ino_out, w.mode_changed);
                reply.written(w.bytes as u32)
            }
            Err(e) => reply.error(errno("copy_file_range", e)),
        }
    }
}

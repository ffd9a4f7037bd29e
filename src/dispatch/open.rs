//! File handles and data: OPEN and CREATE's open (the passthrough choice, open flags),
//! READ, WRITE, RELEASE, FLUSH, FSYNC, FALLOCATE, COPY_FILE_RANGE, LSEEK. An open that
//! must wait for another backing file to go ([`Reply::Wait`]) is finished off the request
//! thread by [`Pending::then`].

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fuser::Notifier;
use log::{debug, info, warn};

use super::{caller, errno, Ctx, Dispatcher, Op, OpenOut, Reply, DEFAULT_TTL};
use crate::attr::Attr;
use crate::backing::{Backings, OpenIo, OPEN_WAIT};
use crate::fs::UnionFs;
use crate::stats::Op as Count;
use crate::sys::backing::BackingFile;

/// `FOPEN_DIRECT_IO`, `FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`, `FOPEN_NOFLUSH` and
/// `FOPEN_PASSTHROUGH` of uapi linux/fuse.h.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// `FUSE_WRITE_CACHE` and `FUSE_WRITE_KILL_SUIDGID` of `fuse_write_in.write_flags`.
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Set on every file open: close(2) sends no FLUSH. Nothing here needs one (writes are
/// written through when they arrive, no POSIX locks are kept here, and `flush` never
/// fails); with the writeback cache the kernel ignores it and still writes back and sends
/// FLUSH at close.
const NO_FLUSH: u32 = FOPEN_NOFLUSH;

/// The largest read buffer a daemon thread keeps between READs (see `read`): the largest
/// READ asked for (max_pages = 1 MiB, from max_write) and the reply header.
const READ_BUF_KEEP: usize = (1 << 20) + 4096;

thread_local! {
    /// One buffer per daemon thread, kept across requests (up to the largest READ the
    /// kernel sends: 1 MiB), so a read costs no allocation nor page faults on it: lent to
    /// the [`Reply::Data`] and given back by `Dispatcher::replied`.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `buf` as the thread's READ buffer if it is larger than the one kept (a small reply
/// buffer — a readlink's, an xattr's — never replaces a READ buffer grown to 1 MiB).
pub(super) fn give_back_read_buf(mut buf: Vec<u8>) {
    if buf.capacity() <= READ_BUF_KEEP {
        buf.clear();
        READ_BUF.with(|b| {
            let mut kept = b.borrow_mut();
            if buf.capacity() > kept.capacity() {
                *kept = buf;
            }
        });
    }
}

/// What decides an open's I/O, shared with the thread that finishes a waiting open.
#[derive(Clone)]
struct Opener {
    fs: Arc<UnionFs>,
    pt: Arc<Backings>,
    notifier: Arc<OnceLock<Notifier>>,
    dev: Arc<OnceLock<Arc<std::os::fd::OwnedFd>>>,
    ttl: Duration,
}

/// An OPEN waiting for the handles that hold its inode's other backing file to be
/// released (a copy-up while `lower_passthrough` readers hold the lower file).
#[derive(Debug)]
pub struct Pending {
    opener: OpenerBox,
    fh: u64,
    ino: u64,
}

struct OpenerBox(Opener);

impl std::fmt::Debug for OpenerBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opener")
    }
}

impl Pending {
    /// Decides the open again once those handles are released, on a thread of its own
    /// (the RELEASEs that end the wait need the request threads), and calls `send` with
    /// the reply; after [`OPEN_WAIT`] the reply is ETXTBSY (as a write open of a running
    /// program gets) and the handle is dropped.
    pub fn then(self, send: impl FnOnce(Reply) + Send + 'static) {
        std::thread::spawn(move || send(self.wait()));
    }

    fn wait(self) -> Reply {
        let (o, fh, ino) = (self.opener.0, self.fh, self.ino);
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(2));
            if o.pt.in_use(ino) && start.elapsed() < OPEN_WAIT {
                continue;
            }
            let one_at_a_time = o.pt.open_lock(ino).lock();
            if let Some(r) = o.finish_open(fh, ino) {
                return r;
            }
            if start.elapsed() >= OPEN_WAIT {
                drop(one_at_a_time);
                let holders = o.pt.holders(ino);
                warn!("open of {ino:#x}: its lower file is still open through passthrough after {OPEN_WAIT:?} (lower_passthrough; held by handles {holders:?}); failing with ETXTBSY");
                o.fs.release(fh);
                return Reply::Err(libc::ETXTBSY);
            }
        }
    }
}

impl Opener {
    fn register(&self, fd: &std::os::fd::OwnedFd) -> std::io::Result<BackingFile> {
        match self.dev.get() {
            Some(dev) => BackingFile::open(dev, fd),
            None => Err(std::io::Error::from_raw_os_error(libc::ENODEV)),
        }
    }

    /// Decides how the just opened handle `fh` of `ino` does its I/O (its open lock held)
    /// and makes the reply; `None` if the open must wait (backing.rs).
    fn finish_open(&self, fh: u64, ino: u64) -> Option<Reply> {
        let fs = &self.fs;
        match self.pt.decide(fs, fh, ino, |fd| self.register(fd)) {
            OpenIo::Wait => None,
            OpenIo::Passthrough(b) => {
                fs.set_passthrough(fh);
                // Recorded before the reply: the kernel may send RELEASE (on another thread)
                // as soon as it has the reply, and a backing id recorded after that release
                // would stay registered, holding the file, until unmount.
                let id = b.id();
                self.pt.by_handle.insert(fh, b);
                self.drop_staled_attrs(ino, fh);
                Some(Reply::Open(OpenOut {
                    fh,
                    open_flags: NO_FLUSH | FOPEN_PASSTHROUGH,
                    backing_id: Some(id),
                }))
            }
            // Without passthrough the file's data only changes through this daemon, so the
            // page cache stays valid from one open to the next.
            OpenIo::Served => {
                self.drop_staled_attrs(ino, fh);
                let flags = served_flags(fs, self.ttl, self.pt.enabled(), fh, ino);
                Some(Reply::Open(OpenOut {
                    fh,
                    open_flags: flags | NO_FLUSH,
                    backing_id: None,
                }))
            }
        }
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages: offset -1) if opening
    /// `fh` made them stale. Attributes cached before an open (with the long TTL) may be
    /// wrong now: the lower's after a copy-up, or about to change unseen (mmap stores).
    /// Dropped before the reply: after it, the opener may close and stat before a later
    /// notification is read, and see the lower's attributes (a flake of mmap_times under
    /// load).
    fn drop_staled_attrs(&self, ino: u64, fh: u64) {
        if self.fs.open_staled_attrs(fh) {
            if let Some(n) = self.notifier.get() {
                if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                    debug!("inval_inode {ino:#x}: {e}");
                }
            }
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
fn served_flags(fs: &UnionFs, ttl: Duration, passthrough: bool, fh: u64, ino: u64) -> u32 {
    let strict = fs.layers.atime.atime == crate::atime::Atime::Strict;
    let udba_keeps = match fs.udba {
        crate::udba::Udba::None => true,
        crate::udba::Udba::Reval => false,
        crate::udba::Udba::Notify => fs.udba_covers_attrs(ino),
    };
    if fs.direct_io(fh) {
        FOPEN_DIRECT_IO
    } else if strict || !udba_keeps {
        0
    } else if !passthrough || (ttl == DEFAULT_TTL && fs.keeps_page_cache(fh)) {
        FOPEN_KEEP_CACHE
    } else {
        0
    }
}

impl Dispatcher {
    fn opener(&self) -> Opener {
        Opener {
            fs: self.fs.clone(),
            pt: self.pt.clone(),
            notifier: self.notifier.clone(),
            dev: self.dev.clone(),
            ttl: self.ttl,
        }
    }

    pub(super) fn open(&self, ctx: &Ctx, flags: i32) -> Reply {
        self.stats.count(Count::Open);
        let ino = ctx.nodeid;
        // After INIT (whose reply would lower it again), before any file's readahead state
        // is set up (at the end of its open, after this reply).
        if !self.readahead_set.is_completed() {
            self.readahead_set.call_once(|| {
                if let Some(dev) = self.bdi.get() {
                    raise_readahead(dev);
                }
            });
        }
        let opener = self.opener();
        let one_at_a_time = self.pt.open_lock(ino).lock();
        let fh = match self.fs.open(ino, flags) {
            Ok(fh) => fh,
            Err(e) => return errno("open", e),
        };
        let r = opener.finish_open(fh, ino);
        drop(one_at_a_time);
        r.unwrap_or_else(|| {
            self.stats.count(Count::OpenWaited);
            Reply::Wait(Pending {
                opener: OpenerBox(opener),
                fh,
                ino,
            })
        })
    }

    /// CREATE's open of the new file `a` (an object node: its id is the number it shows),
    /// handle `fh`.
    pub(super) fn created(&self, parent: u64, a: &Attr, fh: u64) -> Reply {
        let mut entry = self.entry_out(parent, a);
        // One TTL for the entry and its attributes, as fuser has always sent them; the
        // attributes are dropped after the reply where needed (`replied`).
        entry.attr_valid = entry.entry_valid;
        let opener = self.opener();
        let open = match self
            .pt
            .decide(&self.fs, fh, a.node, |fd| opener.register(fd))
        {
            OpenIo::Passthrough(bk) => {
                self.fs.set_passthrough(fh);
                // Before the reply (see `finish_open`).
                let id = bk.id();
                self.pt.by_handle.insert(fh, bk);
                OpenOut {
                    fh,
                    open_flags: NO_FLUSH | FOPEN_PASSTHROUGH,
                    backing_id: Some(id),
                }
            }
            OpenIo::Served | OpenIo::Wait => OpenOut {
                fh,
                open_flags: served_flags(&self.fs, self.ttl, self.pt.enabled(), fh, a.node)
                    | NO_FLUSH,
                backing_id: None,
            },
        };
        Reply::Create { entry, open }
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Reply {
        self.stats.count(Count::Read);
        self.stats.add(Count::ReadBytes, size as u64);
        let mut b = READ_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        match self.fs.read_into(fh, offset, size, &mut b) {
            Ok(()) => Reply::Data(b),
            Err(e) => {
                give_back_read_buf(b);
                errno("read", e)
            }
        }
    }

    pub(super) fn write(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let Op::Write {
            fh,
            offset,
            data,
            write_flags,
            ..
        } = op
        else {
            return Reply::Err(libc::EIO);
        };
        self.stats.count(Count::Write);
        // A delayed write from the page cache (mmap'ed pages written back) is nobody's
        // write(2): it drops no bits, as on the kernel overlayfs.
        let by = (write_flags & FUSE_WRITE_CACHE == 0).then(|| caller(ctx));
        let kill = write_flags & FUSE_WRITE_KILL_SUIDGID != 0;
        match self.fs.write_as(fh, offset, data, by, kill) {
            Ok(w) => {
                self.mode_changed(ctx.nodeid, w.mode_changed);
                Reply::Write {
                    size: w.bytes as u32,
                }
            }
            Err(e) => errno("write", e),
        }
    }

    pub(super) fn release(&self, ctx: &Ctx, fh: u64) -> Reply {
        self.stats.count(Count::Release);
        // Attributes answered while the handle was a read-write passthrough handle had
        // the short UNSEEN_ATTR_TTL: what the kernel holds expires within two ticks.
        self.fs.release(fh);
        self.pt.released(fh, ctx.nodeid);
        Reply::Empty
    }

    pub(super) fn flush(&self) -> Reply {
        self.stats.count(Count::Flush);
        // Nothing to do at close (no POSIX locks are kept here, data goes to the real file
        // with each write): ENOSYS makes the kernel send no FLUSH again on this mount. It
        // still writes dirty pages back and reports their errors at close before it would
        // send one. (Handles are FOPEN_NOFLUSH, which the kernel ignores under the
        // writeback cache: rootless mounts closed every file with a FLUSH round trip.)
        Reply::Err(libc::ENOSYS)
    }

    pub(super) fn fsync(&self, fh: u64, datasync: bool) -> Reply {
        self.stats.count(Count::Fsync);
        super::empty("fsync", self.fs.fsync(fh, datasync))
    }

    pub(super) fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Reply {
        self.stats.count(Count::Lseek);
        match self.fs.lseek(fh, offset, whence) {
            Ok(offset) => Reply::Lseek { offset },
            Err(e) => errno("lseek", e),
        }
    }

    pub(super) fn fallocate(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } = op
        else {
            return Reply::Err(libc::EIO);
        };
        self.stats.count(Count::Fallocate);
        match self
            .fs
            .fallocate_as(fh, offset, length, mode, Some(caller(ctx)))
        {
            Ok(w) => {
                self.mode_changed(ctx.nodeid, w.mode_changed);
                Reply::Empty
            }
            Err(e) => errno("fallocate", e),
        }
    }

    pub(super) fn copy_file_range(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let Op::CopyFileRange {
            fh_in,
            off_in,
            nodeid_out,
            fh_out,
            off_out,
            len,
            ..
        } = op
        else {
            return Reply::Err(libc::EIO);
        };
        self.stats.count(Count::CopyFileRange);
        let by = Some(caller(ctx));
        match self
            .fs
            .copy_file_range_as(fh_in, off_in, fh_out, off_out, len, by)
        {
            Ok(w) => {
                self.mode_changed(nodeid_out, w.mode_changed);
                Reply::Write {
                    size: w.bytes as u32,
                }
            }
            Err(e) => errno("copy_file_range", e),
        }
    }
}

/// The readahead of the mount (KiB) where the daemon may set it: READs of up to 1 MiB, the
/// largest request (max_pages, from max_write). The kernel gives a FUSE mount 128 KiB
/// (32-page READs) and an INIT reply can only lower that.
const READAHEAD_KB: u32 = 1024;

/// Raises the readahead of our mount's bdi (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`) to
/// [`READAHEAD_KB`] unless it is larger already: a sequential read of a file served by the
/// daemon then takes a READ per MiB instead of per 128 KiB (8 times fewer round trips).
/// Called once, after INIT. Only as root of the initial user namespace (the sysfs file is
/// root's; rootless, this is skipped, logged once at debug level).
fn raise_readahead(dev: &str) {
    if !crate::sys::has_initial_ns_sys_admin() {
        debug!("readahead: not root of the initial user namespace; kept at the kernel's default");
        return;
    }
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let now = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match now {
        Some(kb) if kb >= READAHEAD_KB => {}
        _ => match std::fs::write(&path, READAHEAD_KB.to_string()) {
            Ok(()) => debug!("readahead: {path} = {READAHEAD_KB}"),
            Err(e) => info!("readahead: cannot set {path} ({e}); READs stay at 128 KiB"),
        },
    }
}

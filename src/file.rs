//! Open files (the kernel's `file.c`): open, read, write, lseek, fsync, fallocate,
//! copy_file_range, release. A handle holds a real fd of the file in its top layer (the
//! data file for a metacopy entry opened read-only). Opening for write copies the file up
//! first; handles already open read-only on the lower copy are switched to the upper copy
//! at that moment, so every opener sees the new data from then on, as in the kernel.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use std::sync::atomic::Ordering;

use crate::copy_up::CopyUp;
use crate::error::{err, Error, Result};
use crate::fileattr::Change;
use crate::fs::{Caller, UnionFs};
use crate::inode::Kind;
use crate::sys::{self, ops};

pub use crate::types::FileHandle;

/// What a write through the daemon did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub bytes: usize,
    /// It dropped setuid/setgid bits first: the kernel's cached attributes of the inode are
    /// stale (the adapter tells the kernel to drop them).
    pub mode_changed: bool,
}

/// Open flags passed on to the real file; the rest is decided here or by the kernel.
pub const PASS_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_LARGEFILE
    | libc::O_TRUNC;

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl UnionFs {
    /// Opens `ino` with open(2) `flags`; returns the handle number.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        let write = wants_write(flags);
        let was_upper = self.layers.writable(node.loc.read().top);
        if write {
            if self.is_read_only() {
                return err(libc::EROFS);
            }
            let append = flags & libc::O_APPEND != 0 && flags & libc::O_TRUNC == 0;
            self.check_change(&node, Change::Write { append })?;
            // With O_TRUNC the old data is not needed: copy up an empty file.
            let want = if flags & libc::O_TRUNC != 0 && node.kind == Kind::File {
                CopyUp::Empty
            } else {
                CopyUp::Data
            };
            self.copy_up(&node, want)?;
        }
        let real = self.real(&node)?;
        let real_flags = self.real_open_flags(flags);
        let (fd, data_only) = match (&real.loc.data, write) {
            // The data file is in a lower layer: never change its atime.
            (Some(data), false) => (
                sys::reopen_noatime(data.as_fd(), real_flags & !libc::O_TRUNC, true),
                true,
            ),
            _ => (real.open(real_flags), false),
        };
        let fd = fd.map_err(|e| {
            Error::io(
                e,
                format!(
                    "open {ino:#x} ({:?} in {:#x}, layer {:?}, pinned {})",
                    real.loc.name,
                    real.loc.parent,
                    real.loc.top,
                    real.loc.pinned.is_some()
                ),
            )
        })?;
        let mut h = FileHandle::new(ino, fd, flags, data_only);
        h.copied_up = write && !was_upper;
        let fh = self.new_fh();
        self.files.insert(fh, Arc::new(h));
        if write && node.kind == Kind::File {
            self.guard_if_privileged(ino, fh);
        }
        Ok(fh)
    }

    /// Marks write handle `fh` as guarded if the file has a setuid or setgid bit now.
    ///
    /// Why the guard is needed: the kernel overlayfs removes such bits on write with the
    /// writer's credentials (`file_remove_privs`). With FUSE_HANDLE_KILLPRIV_V2 the FUSE
    /// module leaves that to the daemon, whose own writes (as root, with CAP_FSETID) never
    /// drop anything: it flags a WRITE whose writer lacks CAP_FSETID, and turns its own
    /// `file_remove_privs` into a SETATTR that changes nothing (attr.rs `drop_privs_for`).
    /// Through passthrough no WRITE reaches the daemon, and with the writeback cache it
    /// comes later without the writer's credentials. So a guarded handle gets neither (see
    /// `passthrough_source` and `direct_io`), and its writes call `remove_privs` with the
    /// writer. (A handle that was passthrough before the bits were set relies on that empty
    /// SETATTR, sent from the writer before its write reaches the backing file.)
    pub(crate) fn guard_if_privileged(&self, ino: u64, fh: u64) {
        let Ok(h) = self.handle(fh) else { return };
        let privileged = self
            .getattr(ino, Some(fh))
            .map(|a| a.perm as u32 & (libc::S_ISUID | libc::S_ISGID) != 0)
            .unwrap_or(false);
        h.guard_privs.store(privileged, Ordering::Relaxed);
    }

    /// The kernel must send this handle's writes synchronously, from the writer (no
    /// writeback cache): a guarded handle on a mount with the writeback cache on.
    pub fn direct_io(&self, fh: u64) -> bool {
        self.writeback_cache.load(Ordering::Relaxed)
            && self
                .handle(fh)
                .is_ok_and(|h| h.guard_privs.load(Ordering::Relaxed))
    }

    /// Before `caller` modifies a file's data through `fh`: the bits a write drops, on a
    /// guarded handle or where the kernel asked (`kill`: FUSE_WRITE_KILL_SUIDGID, the
    /// writer holds no CAP_FSETID). True when that changed the file's mode.
    fn before_write(
        &self,
        h: &FileHandle,
        fh: u64,
        caller: Option<Caller>,
        kill: bool,
    ) -> Result<bool> {
        match caller {
            Some(c) if kill || h.guard_privs.load(Ordering::Relaxed) => {
                self.remove_privs(h.ino, fh, &c)
            }
            _ => Ok(false),
        }
    }

    /// Is `ino` open for writing through any handle?
    pub(crate) fn open_for_write(&self, ino: u64) -> bool {
        self.files.iter().any(|h| h.ino == ino && h.writable())
    }

    /// Must the kernel's cached attributes of `fh`'s inode be dropped now that it is open?
    /// Yes after a copy-up (they are the lower's), and while a read-write passthrough handle
    /// is open (see [`UnionFs::times_change_unseen`]).
    pub fn open_staled_attrs(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| h.copied_up || self.times_change_unseen(h.ino))
    }

    /// The flags to open the real file with for an open(2) with `flags`. With the writeback
    /// cache the kernel reads pages of files opened write-only and positions appends
    /// itself, so the real file is opened read-write and without O_APPEND.
    pub(crate) fn real_open_flags(&self, flags: i32) -> i32 {
        let mut f = flags & PASS_FLAGS;
        if self.writeback_cache.load(Ordering::Relaxed) {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    /// Called once at INIT when the kernel granted the writeback cache.
    pub fn set_writeback_cache(&self, on: bool) {
        self.writeback_cache.store(on, Ordering::Relaxed);
    }

    /// After a copy-up: reopen the upper copy under every read-only handle of `ino`.
    pub(crate) fn switch_handles_to_upper(&self, ino: u64) {
        let handles: Vec<Arc<FileHandle>> = self
            .files
            .iter()
            .filter(|h| h.ino == ino)
            .map(|h| h.value().clone())
            .collect();
        if handles.is_empty() {
            return;
        }
        let Ok(node) = self.node(ino) else { return };
        let Ok(real) = self.real(&node) else { return };
        for h in handles {
            let flags = self.real_open_flags(h.flags) & !libc::O_TRUNC;
            match real.open(flags) {
                Ok(fd) => *h.fd.write() = Arc::new(fd),
                Err(e) => log::warn!("copy-up: could not switch an open handle of {ino:#x}: {e}"),
            }
        }
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::errno(libc::EBADF))
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.read_into(fh, offset, size, &mut data)?;
        Ok(data)
    }

    /// [`UnionFs::read`] into `data` (a buffer the caller reuses from one read to the next).
    pub fn read_into(&self, fh: u64, offset: u64, size: u32, data: &mut Vec<u8>) -> Result<()> {
        let h = self.handle(fh)?;
        let fd = h.fd();
        sys::pread_into(fd.as_fd(), data, size as usize, offset)
            .map_err(|e| Error::io(e, "read"))?;
        if let Some(policy) = self.layers.upper_daemon_atime() {
            let upper = !h.data_only
                && self
                    .node(h.ino)
                    .is_ok_and(|n| self.layers.writable(n.loc.read().top));
            if upper {
                crate::atime::touch(policy, fd.as_fd(), false);
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` (the kernel turns O_APPEND into the right offset).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_as(fh, offset, data, None, false)
            .map(|w| w.bytes)
    }

    /// `write` by `caller` (from the request): a guarded handle, or one the kernel flagged
    /// (`kill`: FUSE_WRITE_KILL_SUIDGID), drops setuid/setgid bits first, as
    /// `file_remove_privs` does.
    pub fn write_as(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        caller: Option<Caller>,
        kill: bool,
    ) -> Result<Written> {
        self.check_writable()?;
        let h = self.handle(fh)?;
        let mode_changed = self.before_write(&h, fh, caller, kill)?;
        let bytes = sys::pwrite(h.fd().as_fd(), data, offset).map_err(|e| Error::io(e, "write"))?;
        Ok(Written {
            bytes,
            mode_changed,
        })
    }

    /// lseek, for SEEK_DATA and SEEK_HOLE (the kernel handles the others itself).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        sys::lseek(h.fd().as_fd(), offset, whence).map_err(|e| Error::io(e, "lseek"))
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let h = self.handle(fh)?;
        ops::fsync(h.fd().as_fd(), datasync).map_err(|e| Error::io(e, "fsync"))
    }

    /// fsync of a directory: its topmost copy on a writable branch, if it has one.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let node = self.node(ino)?;
        let up = node
            .loc
            .read()
            .dirs
            .iter()
            .find(|(l, _)| self.layers.writable(*l))
            .map(|(_, fd)| fd.clone());
        let Some(up) = up else {
            return Ok(());
        };
        let fd = sys::openat(up.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        ops::fsync(fd.as_fd(), datasync).map_err(|e| Error::io(e, "fsyncdir"))
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        self.fallocate_as(fh, offset, len, mode, None).map(|_| ())
    }

    pub fn fallocate_as(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        caller: Option<Caller>,
    ) -> Result<Written> {
        self.check_writable()?;
        let h = self.handle(fh)?;
        let mode_changed = self.before_write(&h, fh, caller, false)?;
        ops::fallocate(h.fd().as_fd(), mode, offset, len).map_err(|e| Error::io(e, "fallocate"))?;
        Ok(Written {
            bytes: 0,
            mode_changed,
        })
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        self.copy_file_range_as(fh_in, off_in, fh_out, off_out, len, None)
            .map(|w| w.bytes)
    }

    pub fn copy_file_range_as(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        caller: Option<Caller>,
    ) -> Result<Written> {
        self.check_writable()?;
        let a = self.handle(fh_in)?;
        let b = self.handle(fh_out)?;
        let mode_changed = self.before_write(&b, fh_out, caller, false)?;
        let len = len.min(1 << 30) as usize;
        let bytes = ops::copy_file_range(a.fd().as_fd(), off_in, b.fd().as_fd(), off_out, len)
            .map_err(|e| Error::io(e, "copy_file_range"))?;
        Ok(Written {
            bytes,
            mode_changed,
        })
    }

    /// The fd the kernel may do this handle's I/O on directly (FUSE passthrough), with the
    /// real file's (dev, ino) so one backing file serves all handles of an inode.
    ///
    /// An upper file qualifies. A lower file (or a metacopy entry's lower data file) only
    /// for a read-only handle, and only where no copy-up can make it stale: while the mount
    /// is read-only (the default; `reserve_ro_lower`), or always with `lower_passthrough`.
    /// Its fd is read-only, opened through the lower's read-only private mount, and no
    /// writer ever shares it: the kernel allows one backing file per inode, so with
    /// `lower_passthrough` an open that needs another one (a writer's, after its copy-up)
    /// waits until the handles on the lower file are closed (`Dispatcher::open`). Those
    /// handles keep reading the lower data after a copy-up; that is the option's trade
    /// (docs/guarantees.md). And only while every other open handle of the inode is a
    /// passthrough one too: a handle served by this daemon reads through the FUSE page
    /// cache, which writes on the backing file would leave stale.
    pub fn passthrough_source(&self, fh: u64) -> Option<(Arc<OwnedFd>, (u64, u64))> {
        use crate::options::LowerPassthrough as Lp;
        let h = self.handle(fh).ok()?;
        let node = self.node(h.ino).ok()?;
        let lower = h.data_only || !self.layers.writable(node.loc.read().top);
        let off = match self.lower_passthrough {
            Lp::Never => true,
            Lp::ReadOnly => !self.ro_lower_allowed.load(Ordering::SeqCst),
            Lp::Always => false,
        };
        if lower && (off || wants_write(h.flags)) {
            return None;
        }
        let (fd, id) = self.passthrough_fd(&h, fh, &node)?;
        if lower && self.lower_passthrough == Lp::ReadOnly && !self.reserve_ro_lower(&h) {
            return None;
        }
        Some((fd, id))
    }

    /// The fd and (dev, ino) of handle `fh` for passthrough, unless another handle of its
    /// inode is served here, the file's name is gone (see below) or it has setuid/setgid
    /// bits (see `passthrough_source`).
    fn passthrough_fd(
        &self,
        h: &FileHandle,
        fh: u64,
        node: &crate::inode::Node,
    ) -> Option<(Arc<OwnedFd>, (u64, u64))> {
        let (mut others_served_here, mut others_passthrough) = (false, false);
        for o in self
            .files
            .iter()
            .filter(|o| *o.key() != fh && o.ino == h.ino)
        {
            if o.passthrough.load(Ordering::Relaxed) {
                others_passthrough = true;
            } else {
                others_served_here = true;
            }
        }
        if others_served_here {
            return None;
        }
        {
            // A file whose name is gone is served here, unless a handle opened before is
            // passthrough: the kernel then refuses any other kind of open (ETXTBSY; an
            // open by file handle of an unlinked open file, xfstests generic/467).
            let loc = node.loc.read();
            if loc.pinned.is_some() && !(others_passthrough && self.layers.writable(loc.top)) {
                return None;
            }
        }
        let fd = h.fd();
        let st = sys::fstat(fd.as_fd()).ok()?;
        // Files with setuid/setgid bits are served here (see `guard_if_privileged`); a
        // read-only handle too, as the kernel would then force every later open of the
        // inode, writers included, onto passthrough. Where another handle already is
        // passthrough (the bits were set while it was open) the kernel allows nothing else.
        let mode = if self.shows_overrides() || h.data_only {
            self.getattr(h.ino, Some(fh)).ok()?.perm as u32
        } else {
            st.st_mode
        };
        if !others_passthrough && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            return None;
        }
        Some((fd, (st.st_dev, st.st_ino)))
    }

    /// Counts `h` among the lower passthrough handles of a read-only mount, if the mount is
    /// still read-only for that purpose: counted first, checked after, against a remount
    /// to read-write that clears the flag first and checks the count after
    /// (`UnionFs::stop_ro_lower_passthrough`), so that one of the two sees the other.
    fn reserve_ro_lower(&self, h: &FileHandle) -> bool {
        if !h.ro_lower.swap(true, Ordering::SeqCst) {
            self.ro_lower_handles.fetch_add(1, Ordering::SeqCst);
        }
        if self.ro_lower_allowed.load(Ordering::SeqCst) {
            return true;
        }
        if h.ro_lower.swap(false, Ordering::SeqCst) {
            self.ro_lower_handles.fetch_sub(1, Ordering::SeqCst);
        }
        false
    }

    /// Whether the kernel may keep the page cache it has of this handle's file from earlier
    /// opens (FOPEN_KEEP_CACHE) although passthrough is in use: true for a lower file not
    /// copied up. Its data has been the lower file's, which nothing changes through the
    /// mount, for as long as the node has existed; once it is copied up, later opens get
    /// no KEEP_CACHE, so the kernel drops the cache then (writes may have gone to the
    /// upper copy by passthrough, around the page cache). A writer that copies it up while
    /// a reader has it open is served by the daemon too (see `passthrough_source`), so its
    /// writes go through the same page cache and the reader sees them, as in the kernel.
    pub fn keeps_page_cache(&self, fh: u64) -> bool {
        let Ok(h) = self.handle(fh) else {
            return false;
        };
        if wants_write(h.flags) || h.data_only {
            return false;
        }
        let Ok(node) = self.node(h.ino) else {
            return false;
        };
        let loc = node.loc.read();
        !self.layers.writable(loc.top) && loc.pinned.is_none()
    }

    /// Records that the kernel does this handle's I/O itself.
    pub fn set_passthrough(&self, fh: u64) {
        if let Ok(h) = self.handle(fh) {
            if !h.passthrough.swap(true, Ordering::Relaxed) && h.may_map_shared_writable() {
                *self.passthrough_mappers.entry(h.ino).or_insert(0) += 1;
            }
        }
    }

    /// Can the times of `ino` change without this daemon seeing it? True while a
    /// read-write handle of it does its I/O in the kernel (passthrough): stores through a
    /// shared mapping of the backing file set its mtime and ctime at page-fault time and
    /// no request tells us (plain writes and truncates do reach the FUSE inode). Only a
    /// read-write descriptor can be mapped shared and writable, so write-only handles do
    /// not count. The kernel must then cache the inode's attributes only briefly: the
    /// dispatcher answers with `UNSEEN_ATTR_TTL` (dispatch/entry.rs).
    pub fn times_change_unseen(&self, ino: u64) -> bool {
        self.passthrough_mappers.contains_key(&ino)
    }

    /// Forgets handle `fh`; returns whether it was a read-write passthrough handle.
    pub fn release(&self, fh: u64) -> bool {
        let Some((_, h)) = self.files.remove(&fh) else {
            return false;
        };
        if h.ro_lower.swap(false, Ordering::SeqCst) {
            self.ro_lower_handles.fetch_sub(1, Ordering::SeqCst);
        }
        let unseen = h.passthrough.load(Ordering::Relaxed) && h.may_map_shared_writable();
        if unseen {
            self.passthrough_mappers.remove_if_mut(&h.ino, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        unseen
    }
}

//! Open files (the kernel's `file.c`): open, read, write, lseek, fsync, fallocate,
//! copy_file_range, release. A handle holds a real fd of the file in its top layer (the
//! data file for a metacopy entry opened read-only). Opening for write copies the file up
//! first; handles already open read-only on the lower copy are switched to the upper copy
//! at that moment, so every opener sees the new data from then on, as in the kernel.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::copy_up::CopyUp;
use crate::error::{err, Error, Result};
use crate::fs::UnionFs;
use crate::inode::Kind;
use crate::sys::{self, ops};

/// An open file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    fd: RwLock<Arc<OwnedFd>>,
    /// The open(2) flags it was opened with.
    pub flags: i32,
    /// The fd is a metacopy entry's data file, not the entry itself.
    pub data_only: bool,
    /// The kernel does this handle's I/O on the backing file itself (FUSE passthrough).
    passthrough: AtomicBool,
}

impl FileHandle {
    pub fn new(ino: u64, fd: OwnedFd, flags: i32, data_only: bool) -> Self {
        FileHandle {
            ino,
            fd: RwLock::new(Arc::new(fd)),
            flags,
            data_only,
            passthrough: AtomicBool::new(false),
        }
    }

    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }
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
        if write {
            if self.read_only {
                return err(libc::EROFS);
            }
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
            (Some(data), false) => (sys::reopen(data.as_fd(), real_flags & !libc::O_TRUNC), true),
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
        Ok(self.add_handle(ino, fd, flags, data_only))
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
        let h = self.handle(fh)?;
        sys::pread(h.fd().as_fd(), size as usize, offset).map_err(|e| Error::io(e, "read"))
    }

    /// Writes `data` at `offset` (the kernel turns O_APPEND into the right offset).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        sys::pwrite(h.fd().as_fd(), data, offset).map_err(|e| Error::io(e, "write"))
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

    /// fsync of a directory: its upper copy, if it has one.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let node = self.node(ino)?;
        let Some(up) = node.loc.read().dir_in(crate::layers::UPPER) else {
            return Ok(());
        };
        let fd = sys::openat(up.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        ops::fsync(fd.as_fd(), datasync).map_err(|e| Error::io(e, "fsyncdir"))
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        ops::fallocate(h.fd().as_fd(), mode, offset, len).map_err(|e| Error::io(e, "fallocate"))
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        let a = self.handle(fh_in)?;
        let b = self.handle(fh_out)?;
        let len = len.min(1 << 30) as usize;
        ops::copy_file_range(a.fd().as_fd(), off_in, b.fd().as_fd(), off_out, len)
            .map_err(|e| Error::io(e, "copy_file_range"))
    }

    /// The fd the kernel may do this handle's I/O on directly (FUSE passthrough), with the
    /// real file's (dev, ino) so one backing file serves all handles of an inode.
    ///
    /// Only an upper file qualifies: a lower file is never handed to the kernel, so no
    /// write can reach a lower layer. And only while every other open handle of the inode
    /// is a passthrough one too: a handle served by this daemon reads through the FUSE page
    /// cache, which writes on the backing file would leave stale.
    pub fn passthrough_source(&self, fh: u64) -> Option<(Arc<OwnedFd>, (u64, u64))> {
        let h = self.handle(fh).ok()?;
        if h.data_only {
            return None;
        }
        let node = self.node(h.ino).ok()?;
        {
            let loc = node.loc.read();
            if !loc.in_upper() || loc.pinned.is_some() {
                return None;
            }
        }
        let others_served_here = self
            .files
            .iter()
            .any(|o| *o.key() != fh && o.ino == h.ino && !o.passthrough.load(Ordering::Relaxed));
        if others_served_here {
            return None;
        }
        let fd = h.fd();
        let st = sys::fstat(fd.as_fd()).ok()?;
        Some((fd, (st.st_dev, st.st_ino)))
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
        !loc.in_upper() && loc.pinned.is_none()
    }

    /// Records that the kernel does this handle's I/O itself.
    pub fn set_passthrough(&self, fh: u64) {
        if let Ok(h) = self.handle(fh) {
            h.passthrough.store(true, Ordering::Relaxed);
        }
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }
}

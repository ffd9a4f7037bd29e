//! Open files (the kernel's `file.c`): open, read, lseek, release. A handle holds a real
//! fd of the file in its top layer (the data file for metacopy entries).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{err, Error, Result};
use crate::fs::UnionFs;
use crate::inode::Kind;
use crate::sys;

/// An open file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    fd: RwLock<Arc<OwnedFd>>,
    /// The fd is a metacopy entry's data file, not the entry itself.
    pub data_only: bool,
}

impl FileHandle {
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }
}

/// Open flags passed on to the real file; the rest is decided here or by the kernel.
const PASS_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_LARGEFILE;

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
        if wants_write(flags) && self.read_only {
            return err(libc::EROFS);
        }
        if wants_write(flags) {
            // The write path (copy-up) is not there yet: refuse rather than write a lower.
            let real = self.real(&node)?;
            if !real.loc.in_upper() {
                return err(libc::EROFS);
            }
        }
        let real = self.real(&node)?;
        let (fd, data_only) = match (&real.loc.data, wants_write(flags)) {
            (Some(data), false) => (sys::reopen(data.as_fd(), flags & PASS_FLAGS), true),
            _ => (
                sys::openat(real.dir.as_fd(), &real.name, flags & PASS_FLAGS, 0),
                false,
            ),
        };
        let fd = fd.map_err(|e| Error::io(e, "open"))?;
        let fh = self.new_fh();
        self.files.insert(
            fh,
            Arc::new(FileHandle {
                ino,
                fd: RwLock::new(Arc::new(fd)),
                data_only,
            }),
        );
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<Arc<FileHandle>> {
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

    /// lseek, for SEEK_DATA and SEEK_HOLE (the kernel handles the others itself).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        sys::lseek(h.fd().as_fd(), offset, whence).map_err(|e| Error::io(e, "lseek"))
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }
}

//! FUSE passthrough backing files, registered by the daemon itself on the connection's
//! `/dev/fuse` fd (uapi linux/fuse.h, `FUSE_DEV_IOC_BACKING_OPEN` / `_CLOSE`), so that a
//! backing id is a plain number any transport can put in its OPEN or CREATE reply
//! (`fuse_open_out.backing_id`). [`BackingFile`] owns one id and closes it when dropped.
//!
//! Also the one place where fuser is handed such an id for a reply (`wrap_backing` is
//! `unsafe`: fuser must not close an id it does not own, so it is taken back at once).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use log::debug;

/// `_IOW(type, nr, size)` of the kernel's asm-generic/ioctl.h.
const fn iow(ty: u32, nr: u32, size: usize) -> u32 {
    (1 << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

/// `struct fuse_backing_map` (uapi linux/fuse.h).
#[repr(C)]
struct FuseBackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// The ioctl type of /dev/fuse (`FUSE_DEV_IOC_MAGIC`).
const FUSE_DEV_IOC_MAGIC: u32 = 229;
const FUSE_DEV_IOC_BACKING_OPEN: u32 =
    iow(FUSE_DEV_IOC_MAGIC, 1, std::mem::size_of::<FuseBackingMap>());
const FUSE_DEV_IOC_BACKING_CLOSE: u32 = iow(FUSE_DEV_IOC_MAGIC, 2, std::mem::size_of::<u32>());

/// One backing file registered with the kernel for a FUSE connection: the id goes in the
/// OPEN/CREATE reply of every passthrough handle of one inode. Closed (unregistered) on
/// drop; the kernel keeps its own reference for the inodes that use it.
#[derive(Debug)]
pub struct BackingFile {
    id: u32,
    dev: Arc<OwnedFd>,
}

impl BackingFile {
    /// Registers `file` on the connection of the /dev/fuse fd `dev`. EPERM without
    /// CAP_SYS_ADMIN in the initial user namespace.
    pub fn open(dev: &Arc<OwnedFd>, file: &OwnedFd) -> io::Result<BackingFile> {
        let map = FuseBackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: `dev` is an open fd; `map` is a valid fuse_backing_map the kernel only
        // reads during the call.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_OPEN as _,
                &map as *const FuseBackingMap,
            )
        };
        let id = super::cvt(r)?;
        Ok(BackingFile {
            id: id as u32,
            dev: dev.clone(),
        })
    }

    /// The id to put in `fuse_open_out.backing_id`.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        let id = self.id;
        // SAFETY: `dev` is an open fd; `id` is a valid u32 the kernel only reads.
        let r = unsafe {
            libc::ioctl(
                self.dev.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &id as *const u32,
            )
        };
        if let Err(e) = super::cvt(r) {
            debug!("closing backing id {id}: {e}");
        }
    }
}

/// Answers an OPEN with passthrough on backing id `id` (owned by a live [`BackingFile`]
/// for as long as the reply is being sent).
pub fn fuser_opened_passthrough(
    reply: fuser::ReplyOpen,
    fh: fuser::FileHandle,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: the id is open (a BackingFile holds it) and belongs to this session; the
    // wrapper is taken apart with `into_raw` before anything could close it.
    let b = unsafe { reply.wrap_backing(id) };
    reply.opened_passthrough(fh, flags, &b);
    let _ = b.into_raw();
}

/// Answers a CREATE with passthrough on backing id `id` (as [`fuser_opened_passthrough`]).
pub fn fuser_created_passthrough(
    reply: fuser::ReplyCreate,
    ttl: &std::time::Duration,
    attr: &fuser::FileAttr,
    fh: fuser::FileHandle,
    generation: u64,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: as in fuser_opened_passthrough.
    let b = unsafe { reply.wrap_backing(id) };
    reply.created_passthrough(ttl, attr, fuser::Generation(generation), fh, flags, &b);
    let _ = b.into_raw();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        assert_eq!(std::mem::size_of::<FuseBackingMap>(), 16);
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }
}

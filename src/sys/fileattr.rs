//! File attributes of `chattr`/`lsattr`: the inode flags (`FS_IOC_GETFLAGS`,
//! `FS_IOC_SETFLAGS`, an `int` despite the `long` in the command's size) and the extended
//! attribute block (`FS_IOC_FSGETXATTR`, `FS_IOC_FSSETXATTR`, `struct fsxattr`), on an fd
//! opened read-only; and the immutable/append-only bits `statx` reports without an open.
//! Numbers from uapi linux/fs.h.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// `_IOR('f', 1, long)`, `_IOW('f', 2, long)` on a 64-bit kernel.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// The same for a 32-bit caller (`_IOR('f', 1, int)`, `FUSE_IOCTL_COMPAT`).
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
pub const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
/// `_IOR('X', 31, struct fsxattr)`, `_IOW('X', 32, struct fsxattr)`.
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

pub const FS_SYNC_FL: u32 = 0x0000_0008;
pub const FS_IMMUTABLE_FL: u32 = 0x0000_0010;
pub const FS_APPEND_FL: u32 = 0x0000_0020;
pub const FS_NOATIME_FL: u32 = 0x0000_0080;
pub const FS_XFLAG_IMMUTABLE: u32 = 0x0000_0008;
pub const FS_XFLAG_APPEND: u32 = 0x0000_0010;
pub const FS_XFLAG_SYNC: u32 = 0x0000_0020;
pub const FS_XFLAG_NOATIME: u32 = 0x0000_0040;

/// `sizeof(struct fsxattr)`.
pub const FSXATTR_SIZE: usize = 28;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fsxattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

impl Fsxattr {
    /// From the bytes of a FUSE_IOCTL request (native endian, as the kernel lays it out).
    pub fn from_bytes(b: &[u8]) -> Option<Fsxattr> {
        if b.len() < FSXATTR_SIZE {
            return None;
        }
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut pad = [0u8; 8];
        pad.copy_from_slice(&b[20..28]);
        Some(Fsxattr {
            xflags: w(0),
            extsize: w(4),
            nextents: w(8),
            projid: w(12),
            cowextsize: w(16),
            pad,
        })
    }

    pub fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(FSXATTR_SIZE);
        for w in [
            self.xflags,
            self.extsize,
            self.nextents,
            self.projid,
            self.cowextsize,
        ] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(&self.pad);
        v
    }
}

/// The inode flags of an open file or directory.
pub fn get_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: v is a writable int, which is what the command fills; fd is live.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut v) })?;
    Ok(v as u32)
}

/// Sets the inode flags of an open file or directory.
pub fn set_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let v = flags as libc::c_int;
    // SAFETY: v is a readable int, which is what the command reads; fd is live.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS as _, &v) })?;
    Ok(())
}

/// The extended attribute block of an open file or directory.
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> io::Result<Fsxattr> {
    let mut v = Fsxattr::default();
    // SAFETY: v is a writable struct fsxattr (repr(C), 28 bytes); fd is live.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR as _, &mut v) })?;
    Ok(v)
}

/// Sets the extended attribute block of an open file or directory.
pub fn set_fsxattr(fd: BorrowedFd<'_>, v: &Fsxattr) -> io::Result<()> {
    // SAFETY: v is a readable struct fsxattr (repr(C), 28 bytes); fd is live.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR as _, v as *const Fsxattr) })?;
    Ok(())
}

/// The `FS_IMMUTABLE_FL | FS_APPEND_FL` bits of `dir/name` (not following a symlink), as
/// statx's attributes report them: no open, so it works on any type and any mode.
pub fn protection_flags(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<u32> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: st points to writable memory of the right size; name is NUL-terminated.
    cvt(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, 0, st.as_mut_ptr()) })?;
    // SAFETY: statx succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    let on = |a: libc::c_int| st.stx_attributes_mask & st.stx_attributes & a as u64 != 0;
    let mut out = 0;
    if on(libc::STATX_ATTR_IMMUTABLE) {
        out |= FS_IMMUTABLE_FL;
    }
    if on(libc::STATX_ATTR_APPEND) {
        out |= FS_APPEND_FL;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_uapi_header() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: u32, ty: u8, nr: u32, size: usize| {
            dir << 30 | (size as u32) << 16 | u32::from(ty) << 8 | nr
        };
        assert_eq!(FS_IOC_GETFLAGS, ioc(2, b'f', 1, 8));
        assert_eq!(FS_IOC_SETFLAGS, ioc(1, b'f', 2, 8));
        assert_eq!(FS_IOC32_GETFLAGS, ioc(2, b'f', 1, 4));
        assert_eq!(FS_IOC_FSGETXATTR, ioc(2, b'X', 31, FSXATTR_SIZE));
        assert_eq!(FS_IOC_FSSETXATTR, ioc(1, b'X', 32, FSXATTR_SIZE));
        assert_eq!(std::mem::size_of::<Fsxattr>(), FSXATTR_SIZE);
        let x = Fsxattr {
            xflags: 8,
            projid: 7,
            ..Default::default()
        };
        assert_eq!(Fsxattr::from_bytes(&x.to_bytes()), Some(x));
    }
}

//! Wrappers for the calls that change a branch: create, link, rename, remove, change
//! attributes, copy data. Same conventions as the rest of `sys`: names are relative to a
//! directory fd and symlinks are never followed.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cvt, openat};

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name, live fd.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// `mknodat(dir, name, mode, rdev)` (fifos, sockets, devices, whiteouts).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: NUL-terminated name, live fd.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })?;
    Ok(())
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings, live fd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink. An empty
/// `oldname` links the object `olddir` itself is open on (an `O_PATH` fd), through its
/// /proc magic link, which names that object and resolves no name in a branch.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> io::Result<()> {
    if oldname.is_empty() {
        let path = std::ffi::CString::new(format!("/proc/self/fd/{}", olddir.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated strings, live fd.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                path.as_ptr(),
                newdir.as_raw_fd(),
                newname.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        return Ok(());
    }
    // SAFETY: NUL-terminated strings, live fds.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

/// `unlinkat(dir, name, flags)` (`AT_REMOVEDIR` for directories).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: NUL-terminated name, live fd.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2` with `RENAME_NOREPLACE`, `RENAME_EXCHANGE` or `RENAME_WHITEOUT` flags.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: NUL-terminated strings, live fds.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id alone.
pub fn fchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: NUL-terminated name, live fd.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) })?;
    Ok(())
}

const SYS_FCHMODAT2: libc::c_long = 452;

/// chmod of `dir/name` without following a symlink: `fchmodat2(AT_SYMLINK_NOFOLLOW)`
/// (Linux 6.6+), else through the object's /proc magic link.
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name, live fd.
    let r = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) && !name.is_empty() {
        return Err(e);
    }
    let (_holder, p) = proc_path(dir, name)?;
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// The /proc magic link of `dir/name` (`dir` itself for an empty name), with the fd that
/// keeps it valid: the link names the object, so calls that follow it reach that object
/// and never a symlink's target.
fn proc_path(
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<(Option<std::os::fd::OwnedFd>, std::ffi::CString)> {
    let holder = if name.is_empty() {
        None
    } else {
        Some(openat(dir, name, libc::O_PATH, 0)?)
    };
    let fd = holder
        .as_ref()
        .map(|h| h.as_raw_fd())
        .unwrap_or(dir.as_raw_fd());
    let p = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((holder, p))
}

/// A timestamp for [`utimensat`]: a time, now, or leave alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(i64, i64),
    Now,
    Omit,
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// `utimensat(dir, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: SetTime,
    mtime: SetTime,
) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    if name.is_empty() {
        let (_holder, p) = proc_path(dir, name)?;
        // SAFETY: valid timespec array; NUL-terminated path.
        cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) })?;
        return Ok(());
    }
    // SAFETY: ts is a valid array of two timespecs; NUL-terminated name.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// `ftruncate(fd, size)`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: live fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
    Ok(())
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: live fd.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: live fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })?;
    Ok(())
}

/// One `copy_file_range` call; returns the bytes copied (0 at end of input).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let mut so = src_off as libc::loff_t;
    let mut d = dst_off as libc::loff_t;
    // SAFETY: offsets are valid out-pointers; fds are live.
    let r =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `sendfile(dst, src, src_off, len)` after moving `dst`'s file offset to `dst_off`: an
/// in-kernel copy that, unlike `copy_file_range`, works between any two filesystems.
/// Returns the bytes copied (0 at end of input). Moves `dst`'s file offset.
pub fn sendfile_at(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    super::lseek(dst, dst_off as i64, libc::SEEK_SET)?;
    let mut so = src_off as libc::off_t;
    // SAFETY: so is a valid out-pointer; fds are live.
    let r = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut so, len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `ioctl(dst, FICLONE, src)`: share all of src's extents (reflink), if the fs can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) })?;
    Ok(())
}

//! Extended attributes of objects named relative to a directory fd, never following a
//! symlink. Uses `getxattrat`/`listxattrat` (Linux 6.13+) and falls back to the object's
//! /proc magic link on older kernels (the caller passes an `O_PATH` fd then).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::openat;

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn at_flags(name: &CStr) -> libc::c_int {
    if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    }
}

/// True when the *at syscall can't serve this call: an old kernel (ENOSYS), or an empty
/// name on an `O_PATH` fd, which the *xattrat calls refuse with EBADF.
fn use_proc(name: &CStr, e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSYS)
        || (name.is_empty() && e.raw_os_error() == Some(libc::EBADF))
}

/// Runs `f` on the /proc magic link of `dir/name` (the fallback for kernels before 6.13).
fn via_proc<T>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    f: impl FnOnce(&CStr) -> io::Result<T>,
) -> io::Result<T> {
    let holder;
    let fd = if name.is_empty() {
        dir.as_raw_fd()
    } else {
        holder = openat(dir, name, libc::O_PATH, 0)?;
        holder.as_raw_fd()
    };
    let p = CString::new(format!("/proc/self/fd/{fd}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    f(&p)
}

fn getxattr_raw(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: args points to a buffer of args.size writable bytes; strings are NUL-terminated.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            at_flags(name),
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = io::Error::last_os_error();
    if !use_proc(name, &e) {
        return Err(e);
    }
    via_proc(dir, name, |p| {
        // SAFETY: p and attr are NUL-terminated; buf is writable.
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}

/// The value of `attr` on `dir/name`, `None` when it is not set (ENODATA) or the
/// filesystem has no xattrs (EOPNOTSUPP).
pub fn get(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match getxattr_raw(dir, name, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let size = getxattr_raw(dir, name, attr, &mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2)];
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

fn listxattr_raw(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for buf.len() bytes.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            at_flags(name),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = io::Error::last_os_error();
    if !use_proc(name, &e) {
        return Err(e);
    }
    via_proc(dir, name, |p| {
        // SAFETY: p is NUL-terminated; buf is writable.
        let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}

/// All xattr names of `dir/name` as the kernel lists them (NUL-separated).
pub fn list(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match listxattr_raw(dir, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let size = listxattr_raw(dir, name, &mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2)];
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
}

/// Sets `attr` on `dir/name` (flags: 0, XATTR_CREATE or XATTR_REPLACE).
pub fn set(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    // SAFETY: args points to value.len() readable bytes; strings are NUL-terminated.
    let r = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            at_flags(name),
            attr.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !use_proc(name, &e) {
        return Err(e);
    }
    via_proc(dir, name, |p| {
        // SAFETY: p, attr NUL-terminated; value readable.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                attr.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

/// Removes `attr` from `dir/name`.
pub fn remove(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated.
    let r = unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            at_flags(name),
            attr.as_ptr(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !use_proc(name, &e) {
        return Err(e);
    }
    via_proc(dir, name, |p| {
        // SAFETY: p, attr NUL-terminated.
        let r = unsafe { libc::removexattr(p.as_ptr(), attr.as_ptr()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

//! File handles (`name_to_handle_at(2)`, `open_by_handle_at(2)`) and a filesystem's UUID
//! (`FS_IOC_GETFSUUID`): what the kernel overlayfs's `overlay.origin` is made of.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// The largest handle the kernel encodes (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_BYTES: usize = 128;

/// `struct file_handle` with room for the largest handle, 4-byte aligned as the kernel
/// expects of the bytes after the header.
#[repr(C)]
struct HandleBuf {
    bytes: libc::c_uint,
    kind: libc::c_int,
    data: [u32; MAX_HANDLE_BYTES / 4],
}

/// A file handle: its exportfs type and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub kind: i32,
    pub bytes: Vec<u8>,
}

/// `AT_HANDLE_CONNECTABLE` (Linux 6.13): a handle that also names the parent, so that a
/// decode can return a connected path (xfstests generic/777).
pub const AT_HANDLE_CONNECTABLE: libc::c_int = 0x002;

/// The handle of `dir/name`, never following a symlink (non-connectable: the inode alone,
/// as the kernel overlayfs encodes a lower origin).
pub fn name_to_handle(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Handle> {
    name_to_handle_flags(dir, name, 0)
}

/// [`name_to_handle`] with extra flags (`AT_HANDLE_CONNECTABLE`).
pub fn name_to_handle_flags(
    dir: BorrowedFd<'_>,
    name: &CStr,
    extra: libc::c_int,
) -> io::Result<Handle> {
    let mut buf = HandleBuf {
        bytes: MAX_HANDLE_BYTES as libc::c_uint,
        kind: 0,
        data: [0; MAX_HANDLE_BYTES / 4],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = extra
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: buf is a file_handle header followed by `bytes` writable bytes; name is
    // NUL-terminated; mount_id is a valid out pointer; dir is live for the call.
    cvt(unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    })?;
    let n = (buf.bytes as usize).min(MAX_HANDLE_BYTES);
    let bytes = buf
        .data
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(n)
        .collect();
    Ok(Handle {
        kind: buf.kind,
        bytes,
    })
}

/// Opens the object `h` names on the filesystem holding `mount_fd` (a non-`O_PATH` fd),
/// as an `O_PATH` fd. Needs CAP_DAC_READ_SEARCH in the initial user namespace (EPERM
/// otherwise); ESTALE when the object no longer exists.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &Handle) -> io::Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_BYTES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = HandleBuf {
        bytes: h.bytes.len() as libc::c_uint,
        kind: h.kind,
        data: [0; MAX_HANDLE_BYTES / 4],
    };
    for (i, chunk) in h.bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        buf.data[i] = u32::from_ne_bytes(w);
    }
    // SAFETY: buf is a valid file_handle of `bytes` bytes; mount_fd is live for the call;
    // the returned fd is fresh and owned by us.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: fresh fd from open_by_handle_at.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `FS_IOC_GETFSUUID` (Linux 6.5+): the UUID of the filesystem holding `fd` (a
/// non-`O_PATH` fd), the one the kernel keeps in `sb->s_uuid`.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // _IOR(0x15, 0, struct fsuuid2): read, size 17, type 0x15, number 0.
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: out is a writable fsuuid2 the ioctl fills; fd is live for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID as _, &mut out) })?;
    let mut uuid = [0u8; 16];
    let n = (out.len as usize).min(16);
    uuid[..n].copy_from_slice(&out.uuid[..n]);
    Ok(uuid)
}

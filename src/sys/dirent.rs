//! Directory listing with `getdents64`, so a listing needs only a directory fd.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;

/// One raw entry of a real directory.
#[derive(Debug, Clone)]
pub struct RawDirent {
    pub ino: u64,
    /// `DT_*` value; `DT_UNKNOWN` on filesystems that do not fill it in.
    pub d_type: u8,
    pub name: OsString,
}

/// One `getdents64` call into a buffer of `buf_len` bytes: the entries it returned (`.` and
/// `..` included) with each one's `d_off`, the position to seek to for the entries after it
/// (what telldir/seekdir use). Empty at the end of the directory.
pub fn read_dir_page(dir: BorrowedFd<'_>, buf_len: usize) -> io::Result<Vec<(RawDirent, i64)>> {
    let mut buf = vec![0u8; buf_len.max(512)];
    // SAFETY: buf is writable for buf.len() bytes; the fd is live.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 19 <= n {
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or([0; 8]));
        let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        if reclen == 0 || pos + reclen > n {
            break;
        }
        let name_bytes = &buf[pos + 19..pos + reclen];
        let len = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        out.push((
            RawDirent {
                ino,
                d_type: buf[pos + 18],
                name: OsString::from_vec(name_bytes[..len].to_vec()),
            },
            off,
        ));
        pos += reclen;
    }
    Ok(out)
}

/// Lists every entry of the directory `dir` (which must be opened for reading, not
/// `O_PATH`), `.` and `..` excluded, in the filesystem's order.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<RawDirent>> {
    let mut out = Vec::new();
    loop {
        let page = read_dir_page(dir, 64 * 1024)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(
            page.into_iter()
                .map(|(e, _)| e)
                .filter(|e| e.name != "." && e.name != ".."),
        );
    }
}

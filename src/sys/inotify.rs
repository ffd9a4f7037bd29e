//! inotify(7) for `udba=notify` (udba.rs): one instance per mount, watches on branch
//! directories given as fds, and a blocking read of the event queue.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use super::{cvt, cvt_size};

/// What a watch reports: names created, removed, renamed, attributes and contents changed
/// in the directory, and the directory itself removed or moved. `IN_EXCL_UNLINK`: nothing
/// from a child after it is unlinked (an open file whose name is gone).
pub const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// One event: the watch, what happened, and the child's name (empty: the directory itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub wd: i32,
    pub mask: u32,
    pub name: OsString,
}

/// An inotify instance.
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    /// A new instance (blocking reads, close-on-exec).
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: no pointers; the fd returned is ours.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })?;
        // SAFETY: fresh fd.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The instance's fd number (tests read /proc/PID/fdinfo/FD).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches the directory `dir` (any fd of it, `O_PATH` included) with [`WATCH_MASK`];
    /// its watch descriptor (the same one again for a directory already watched).
    /// inotify takes a path: the fd's `/proc/self/fd` link, which names the directory
    /// itself whatever its path (no name in a branch is resolved).
    pub fn add_watch(&self, dir: BorrowedFd<'_>) -> io::Result<i32> {
        let path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: path is NUL-terminated; both fds are live for the call.
        cvt(unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), WATCH_MASK) })
    }

    /// Removes watch `wd` (an `IN_IGNORED` event for it follows).
    pub fn rm_watch(&self, wd: i32) -> io::Result<()> {
        // SAFETY: plain integers.
        cvt(unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) }).map(|_| ())
    }

    /// Blocks until events are queued and returns all that fit in `buf` (at least
    /// `size_of::<inotify_event>() + NAME_MAX + 1` bytes).
    pub fn read_events(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        let n = loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            match cvt_size(unsafe {
                libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            }) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        Ok(parse_events(&buf[..n]))
    }
}

/// The events in a buffer read from an inotify fd (`struct inotify_event` records: wd,
/// mask, cookie, len, then `len` bytes of NUL-padded name).
pub fn parse_events(mut b: &[u8]) -> Vec<Event> {
    let word = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut out = Vec::new();
    while b.len() >= 16 {
        let wd = word(b, 0) as i32;
        let mask = word(b, 4);
        let len = word(b, 12) as usize;
        let Some(raw) = b.get(16..16 + len) else {
            break;
        };
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        out.push(Event {
            wd,
            mask,
            name: OsString::from_vec(raw[..end].to_vec()),
        });
        b = &b[16 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_with_and_without_names() {
        let mut b = Vec::new();
        for (wd, mask, name) in [
            (3i32, libc::IN_CREATE, &b"abc"[..]),
            (4, libc::IN_IGNORED, b""),
        ] {
            b.extend_from_slice(&wd.to_ne_bytes());
            b.extend_from_slice(&mask.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            let padded = if name.is_empty() { 0 } else { 16 };
            b.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            b.extend_from_slice(&n);
        }
        let ev = parse_events(&b);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            (ev[0].wd, ev[0].mask, ev[0].name.as_os_str()),
            (3, libc::IN_CREATE, "abc".as_ref())
        );
        assert_eq!((ev[1].wd, ev[1].name.is_empty()), (4, true));
    }
}

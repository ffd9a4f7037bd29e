//! Process plumbing for daemon mode: pipe, fork, setsid, stdio to /dev/null, waitpid and
//! syslog, as safe wrappers.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cstr;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which side of a fork we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// `fork()`. Only call it while the process has a single thread: the child gets a copy of
/// the calling thread alone.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no pointer arguments; the caller guarantees a single thread, so
    // the child's memory (locks included) is consistent.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// `setsid()`: a new session without a controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/null (closing whatever they were).
pub fn stdio_to_dev_null() -> io::Result<()> {
    let null = cstr(std::ffi::OsStr::new("/dev/null"))?;
    // SAFETY: null is NUL-terminated.
    let fd = cvt(unsafe { libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; both fds are valid.
        cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Waits for child `pid` to end.
pub fn waitpid(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    if libc::WIFSIGNALED(status) {
        Ok(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        Ok(ExitStatus::Code(libc::WEXITSTATUS(status)))
    }
}

/// `openlog(ident, LOG_PID, LOG_DAEMON)`. syslog keeps the pointer, so `ident` is static.
pub fn openlog(ident: &'static CStr) {
    // SAFETY: ident lives for the whole program.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// Sends one message to syslog at `priority` (`libc::LOG_ERR`, …).
pub fn syslog(priority: libc::c_int, msg: &str) {
    let Ok(m) = CString::new(msg.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: a constant "%s" format with one NUL-terminated string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), m.as_ptr()) };
}

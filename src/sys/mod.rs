//! Every raw libc call and `unsafe` block of the crate, as small safe wrappers that return
//! `io::Result`. Callers outside this module never see a raw pointer.
//!
//! Conventions: every path argument is a single name or a relative path *below a directory
//! fd*; every open adds `O_CLOEXEC | O_NOFOLLOW`, every stat/xattr/chown uses
//! `AT_SYMLINK_NOFOLLOW`, so nothing here ever follows a symlink that lives in a branch.

pub mod backing;
pub mod daemon;
pub mod dirent;
pub mod fileattr;
pub mod fuse_abi;
pub mod handle;
pub mod inotify;
pub mod ops;
pub mod proc;
pub mod uring;
pub mod xattr;

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use dirent::{read_dir, read_dir_page, RawDirent};

/// The `struct stat` we pass around; a plain copy of the kernel's answer.
pub type Stat = libc::stat;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A name as a C string. Names containing NUL cannot exist on Linux.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens a host path given by the administrator (a branch root or the mount point).
/// This is the only open that may follow symlinks: the kernel overlayfs resolves its
/// `lowerdir=` paths the same way.
pub fn open_host_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: c is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: name is NUL-terminated; dir is a live fd for the duration of the call.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`openat`], with `O_NOATIME` if `noatime` and the kernel permits it (the caller owns
/// the file or has CAP_FOWNER over its owner); without it otherwise.
pub fn openat_noatime(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    noatime: bool,
) -> io::Result<OwnedFd> {
    if noatime && flags & libc::O_PATH == 0 {
        match openat(dir, name, flags | libc::O_NOATIME, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            r => return r,
        }
    }
    openat(dir, name, flags, 0)
}

/// [`reopen`], with `O_NOATIME` where permitted if `noatime` (see [`openat_noatime`]).
pub fn reopen_noatime(fd: BorrowedFd<'_>, flags: i32, noatime: bool) -> io::Result<OwnedFd> {
    if noatime && flags & libc::O_PATH == 0 {
        match reopen(fd, flags | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            r => return r,
        }
    }
    reopen(fd, flags)
}

/// An `O_PATH` handle on a directory below `dir`; fails with ENOTDIR on anything else,
/// and with ELOOP on a symlink.
pub fn open_dir_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Reopens an `O_PATH` fd with real access flags through its /proc magic link. The link
/// names the object itself, so no name is resolved and no symlink in a branch is followed.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: path is NUL-terminated.
    let nfd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            (flags | libc::O_CLOEXEC) & !libc::O_NOFOLLOW & !libc::O_CREAT,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(nfd) })
}

/// An all-zero stat (a valid value of the plain C struct), for tests and defaults.
pub fn zeroed_stat() -> Stat {
    // SAFETY: libc::stat is plain old data; all-zero bytes are a valid value.
    unsafe { std::mem::MaybeUninit::<Stat>::zeroed().assume_init() }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<Stat>::zeroed();
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: st points to writable memory of the right size; name is NUL-terminated.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// glibc's `dev_t` encoding of a device number.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// (st_dev, st_ino) of what `path` leads to (following links, as /proc/PID/cwd's), from
/// the kernel's inode as it is: `AT_STATX_DONT_SYNC`, so a FUSE filesystem is never asked
/// (a hung mount elsewhere cannot block the caller).
pub fn statx_cached(path: &CStr) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: st points to writable memory of the right size; path is NUL-terminated.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            st.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    Ok((
        makedev(u64::from(st.stx_dev_major), u64::from(st.stx_dev_minor)),
        st.stx_ino,
    ))
}

/// One GETATTR of what `path` leads to, asked of its filesystem whatever its caches hold
/// (`AT_STATX_FORCE_SYNC`: a FUSE mount always sends the request). No descriptor is kept,
/// so the caller never makes a mount busy.
pub fn statx_force_sync(path: &Path) -> io::Result<()> {
    let c = cstr(path.as_os_str())?;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: st points to writable memory of the right size; c is NUL-terminated.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_MODE,
            st.as_mut_ptr(),
        )
    })?;
    Ok(())
}

/// The link count the kernel has cached for what `path` names (not following a last
/// symlink): `AT_STATX_DONT_SYNC`, so a FUSE filesystem is not asked (tests compare it
/// with what the filesystem says).
pub fn statx_cached_nlink(path: &CStr) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: st points to writable memory of the right size; path is NUL-terminated.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_NLINK,
            st.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the struct.
    Ok(u64::from(unsafe { st.assume_init() }.stx_nlink))
}

/// `fstat` on any fd, `O_PATH` included.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstatat(fd, c"")
}

/// `readlinkat(dir, name)`; an empty name reads the symlink an `O_PATH` fd refers to.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `pread` into a fresh buffer of at most `size` bytes.
pub fn pread(fd: BorrowedFd<'_>, size: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    pread_into(fd, &mut buf, size, offset)?;
    Ok(buf)
}

/// `pread` of at most `size` bytes at `offset` into `buf`, replacing what it held (short
/// reads are retried until EOF). The bytes are read into `buf`'s spare capacity, not zeroed
/// first: a reused buffer costs no allocation and no extra pass over the memory.
pub fn pread_into(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    size: usize,
    offset: u64,
) -> io::Result<()> {
    buf.clear();
    buf.reserve(size);
    let mut done = 0;
    while done < size {
        // SAFETY: the capacity is at least `size`, so buf's pointer + done is writable for
        // size - done bytes; only bytes the kernel wrote are made part of the vector.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                size - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
        // SAFETY: the first `done` bytes were written by pread above.
        unsafe { buf.set_len(done) };
    }
    Ok(())
}

/// `pwrite` of the whole buffer (short writes are retried).
pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: data[done..] is readable.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if done > 0 {
                return Ok(done);
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a live fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

/// `fstatvfs` on any fd.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: st is writable; fd is live.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by a successful fstatvfs.
    Ok(unsafe { st.assume_init() })
}

/// The filesystem type (`statfs` `f_type`, a magic number) of the filesystem holding `fd`.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: st is writable; fd is live.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by a successful fstatfs.
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (and the hard one as far as we may).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: valid pointer; failure (no CAP_SYS_RESOURCE) is handled below.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// The raw number of a borrowed fd, for log lines only.
pub fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// The process's umask, read without changing it (from /proc, then by a set-and-restore).
pub fn current_umask() -> u32 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for line in s.lines() {
            if let Some(v) = line.strip_prefix("Umask:") {
                if let Ok(m) = u32::from_str_radix(v.trim(), 8) {
                    return m;
                }
            }
        }
    }
    0o022
}

fn exit_sigset() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: set is a valid sigset_t buffer, initialized by sigemptyset.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later.
pub fn block_exit_signals() {
    let set = exit_sigset();
    // SAFETY: set is initialized; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for one of the blocked exit signals; returns its number.
pub fn wait_exit_signal() -> Option<i32> {
    let set = exit_sigset();
    let mut sig: libc::c_int = 0;
    // SAFETY: set is initialized and sig is a valid out-pointer.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    (r == 0).then_some(sig)
}

/// Mount flags and data for [`fuse_mount`].
#[derive(Debug, Clone, Default)]
pub struct FuseMountArgs {
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub strictatime: bool,
    pub nodiratime: bool,
    /// Extra comma-separated kernel options (`default_permissions`, `allow_other`).
    pub data: String,
}

/// Opens /dev/fuse and mounts it at `target` with mount(2). EPERM means the caller should
/// go through fusermount3 instead.
pub fn fuse_mount(target: &Path, args: &FuseMountArgs) -> io::Result<OwnedFd> {
    let dev = cstr(OsStr::new("/dev/fuse"))?;
    // SAFETY: dev is NUL-terminated.
    let fd = cvt(unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target_c = cstr(target.as_os_str())?;
    let mut target_st = std::mem::MaybeUninit::<Stat>::zeroed();
    // SAFETY: valid path and out-pointer.
    cvt(unsafe { libc::stat(target_c.as_ptr(), target_st.as_mut_ptr()) })?;
    // SAFETY: filled by stat.
    let root_mode = unsafe { target_st.assume_init() }.st_mode & libc::S_IFMT;
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid}",
        fd.as_raw_fd(),
        root_mode
    );
    if !args.data.is_empty() {
        data.push(',');
        data.push_str(&args.data);
    }
    let mut flags: libc::c_ulong = 0;
    for (on, f) in [
        (args.read_only, libc::MS_RDONLY),
        (args.nodev, libc::MS_NODEV),
        (args.nosuid, libc::MS_NOSUID),
        (args.noexec, libc::MS_NOEXEC),
        (args.noatime, libc::MS_NOATIME),
        (args.strictatime, libc::MS_STRICTATIME),
        (args.nodiratime, libc::MS_NODIRATIME),
    ] {
        if on {
            flags |= f;
        }
    }
    let source = cstr(OsStr::new(&args.source))?;
    let fstype = cstr(OsStr::new(&args.fstype))?;
    let data = cstr(OsStr::new(&data))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(fd)
}

/// The FUSE device's numbers (misc major 10, minor 229: linux/miscdevice.h).
const FUSE_DEV_MAJOR: u64 = 10;
const FUSE_DEV_MINOR: u64 = 229;

/// Checks that descriptor number `fd` (a `/dev/fd/N` mountpoint, libfuse 3's convention
/// for a FUSE connection the caller opened and mounted) is open, read-write, and the FUSE
/// device. Only fstat/fcntl on the number: nothing is taken over.
pub fn check_fuse_fd(fd: RawFd) -> io::Result<()> {
    let mut st = std::mem::MaybeUninit::<Stat>::zeroed();
    // SAFETY: fstat on any number is memory-safe (EBADF when it is not open).
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled by fstat.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || st.st_rdev != makedev(FUSE_DEV_MAJOR, FUSE_DEV_MINOR)
    {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    // SAFETY: as above.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if fl & libc::O_ACCMODE != libc::O_RDWR {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(())
}

/// Takes over descriptor number `fd` after [`check_fuse_fd`], close-on-exec from now on
/// (nothing we start must hold the connection open after we exit).
pub fn take_fuse_fd(fd: RawFd) -> io::Result<OwnedFd> {
    check_fuse_fd(fd)?;
    // SAFETY: the number is open (checked) and from here on owned by this process's one
    // FUSE session only: main() takes it once, before any other thread exists.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on an open fd.
    cvt(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(owned)
}

/// Whether this process may open /dev/fuse (for fuser's per-thread clones of the
/// connection): not so for a user the device is not open to, serving a descriptor it was
/// handed (`/dev/fd/N`).
pub fn dev_fuse_openable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: EWOULDBLOCK when another open file description holds
/// a lock on the same object. The lock ends when the last fd of this description closes
/// (so with the process, however it dies).
pub fn flock_exclusive_nb(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is a live fd for the duration of the call.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
    Ok(())
}

/// `syncfs(fd)`: writes the whole filesystem holding `fd` to disk.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is a live fd for the duration of the call.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

/// Credentials of the process at the other end of a unix socket (`SO_PEERCRED`), in this
/// process's user namespace.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// `getsockopt(SO_PEERCRED)` on a connected unix socket.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: c and len are valid out-pointers of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

/// Per-mount and superblock flags kept across a remount (everything MS_REMOUNT resets when
/// not given again; the atime mode is kept by the kernel when none is given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemountFlags {
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub lazytime: bool,
}

/// `mount(NULL, target, NULL, MS_REMOUNT | flags, NULL)`: reconfigures the superblock
/// mounted at `target` (for FUSE: syncs its dirty pages, then switches ro/rw; EBUSY while
/// a file is open for writing on the way to ro) and resets the mount's own flags to `f`.
pub fn remount(target: &Path, f: RemountFlags) -> io::Result<()> {
    let t = cstr(target.as_os_str())?;
    let mut flags: libc::c_ulong = libc::MS_REMOUNT;
    for (on, bit) in [
        (f.read_only, libc::MS_RDONLY),
        (f.nodev, libc::MS_NODEV),
        (f.nosuid, libc::MS_NOSUID),
        (f.noexec, libc::MS_NOEXEC),
        (f.sync, libc::MS_SYNCHRONOUS),
        (f.dirsync, libc::MS_DIRSYNC),
        (f.lazytime, libc::MS_LAZYTIME),
    ] {
        if on {
            flags |= bit;
        }
    }
    // SAFETY: t is NUL-terminated; null source, type and data are allowed for a remount.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// The effective uid of this process (in its own user namespace).
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Mount attributes for [`clone_mount`] (`MOUNT_ATTR_*` of linux/mount.h).
pub mod mount_attr {
    pub const RDONLY: u64 = 0x01;
    /// The atime field: one of `RELATIME` (0), `NOATIME`, `STRICTATIME`.
    pub const ATIME_MASK: u64 = 0x70;
    pub const RELATIME: u64 = 0x00;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A private, detached copy of the mount that holds directory `dir`, rooted at `dir`
/// (`open_tree(OPEN_TREE_CLONE)`, not recursive: mounts below `dir` are not in it, as in
/// the kernel overlayfs' private layer mounts), with mount attributes `set` after clearing
/// `clear` (`mount_setattr`). The returned `O_PATH` fd is the copy's root; the copy lives
/// as long as some fd or file opened through it does. Needs CAP_SYS_ADMIN over the mount
/// namespace; in a user namespace the atime attributes of mounts it inherited are locked
/// (EPERM).
pub fn clone_mount(dir: BorrowedFd<'_>, set: u64, clear: u64) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: the path is a NUL-terminated empty string; dir is live for the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh fd.
    let mnt = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid mount_attr of the size passed; the path is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mnt)
}

/// Lazily unmounts `target` (the mount point given by the administrator).
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let c = cstr(target.as_os_str())?;
    // SAFETY: c is NUL-terminated.
    cvt(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

/// Returns the allocator's free pages to the system (glibc `malloc_trim`).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only inspects and trims the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// True when this process runs in a user namespace other than the initial one (its uid map
/// is not the identity map of all ids).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => {
            let f: Vec<&str> = m.split_whitespace().collect();
            f != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// Bit number of CAP_SYS_ADMIN in the capability sets (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// True when this process holds CAP_SYS_ADMIN in the initial user namespace (what FUSE
/// passthrough's backing-file registration requires).
pub fn has_initial_ns_sys_admin() -> bool {
    if in_user_namespace() {
        return false;
    }
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

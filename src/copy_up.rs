//! Copy-up (the kernel's `copy_up.c`): making a lower entry exist in the upper before it
//! changes.
//!
//! Every copy is staged in `workdir/work` under a temporary name with its data, owner,
//! mode, xattrs and times complete (and fsynced unless `volatile`), then renamed into the
//! upper in one step: after a crash the upper holds either no copy or the complete one.
//! The staging directory is emptied at every mount (the kernel does the same with it).
//!
//! Parents are copied up first. A node's copy-up is serialised by its own `copy_lock`;
//! other nodes never wait for it (no filesystem-wide lock).
//!
//! Data keeps its holes: a reflink (FICLONE) when the filesystems allow it, else
//! `copy_file_range` over each data extent found with SEEK_DATA/SEEK_HOLE, else
//! read/write of those extents.
//!
//! Copied-up entries get an empty `overlay.origin` (the kernel's "copied up, origin not
//! encoded" form) so they keep their lower inode number (see `lookup.rs`), and their upper
//! parent gets `overlay.impure`, as the kernel marks it.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::inode::{Kind, Node};
use crate::layers::UPPER;
use crate::sys::{self, ops, xattr, Stat};
use crate::whiteout;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name in the staging directory.
pub fn tmp_name() -> CString {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("#sfs.{}.{n:x}", std::process::id())).unwrap_or_default()
}

/// Removes `dir/name` and, for a directory, everything below it, never following a
/// symlink (used on our own staging area only).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    match ops::unlinkat(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    {
        let sub = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        for e in sys::read_dir(sub.as_fd())? {
            if let Some(c) = whiteout::c_name(&e.name) {
                remove_tree(sub.as_fd(), &c)?;
            }
        }
    }
    ops::unlinkat(dir, name, libc::AT_REMOVEDIR)
}

/// Creates `workdir/work` afresh (removing a previous one, with any leftovers of a crash)
/// and returns its `O_PATH` fd.
pub fn prepare_staging(workdir: BorrowedFd<'_>) -> Result<OwnedFd> {
    remove_tree(workdir, c"work").map_err(|e| Error::io(e, "workdir: cleaning work/"))?;
    ops::mkdirat(workdir, c"work", 0o700).map_err(|e| Error::io(e, "workdir: creating work/"))?;
    sys::open_dir_path(workdir, c"work").map_err(|e| Error::io(e, "workdir: opening work/"))
}

/// Copies every xattr but the overlay-private ones from `src` to `dst`.
pub fn copy_xattrs(
    src: BorrowedFd<'_>,
    sname: &CStr,
    dst: BorrowedFd<'_>,
    dname: &CStr,
) -> Result<()> {
    let list = match xattr::list(src, sname) {
        Ok(l) => l,
        Err(_) => return Ok(()),
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if whiteout::is_private_xattr(name) {
            continue;
        }
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let Ok(Some(value)) = xattr::get(src, sname, &cname) else {
            continue;
        };
        if let Err(e) = xattr::set(dst, dname, &cname, &value, 0) {
            match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::E2BIG) => {
                    return Err(Error::io(e, "copy-up xattr"))
                }
                // user.* on symlinks and specials, or a namespace the upper lacks: the
                // kernel skips those too.
                _ => log::debug!(
                    "copy-up: xattr {} not copied: {e}",
                    String::from_utf8_lossy(name)
                ),
            }
        }
    }
    Ok(())
}

/// Copies the data of `src` to `dst` (both open), keeping holes; then sets the size.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    if ops::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off: u64 = 0;
    let mut use_cfr = true;
    while off < size {
        let start = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(s) => s as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole remains
            Err(_) => off,                                            // no SEEK_DATA: copy all
        };
        let end = match sys::lseek(src, start as i64, libc::SEEK_HOLE) {
            Ok(e) => (e as u64).min(size),
            Err(_) => size,
        };
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(1 << 30);
            let n = if use_cfr {
                match ops::copy_file_range(src, pos, dst, pos, want) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV)
                                | Some(libc::EINVAL)
                                | Some(libc::ENOSYS)
                                | Some(libc::EOPNOTSUPP)
                        ) =>
                    {
                        use_cfr = false;
                        continue;
                    }
                    Err(e) => return Err(Error::io(e, "copy-up data")),
                }
            } else {
                let buf = sys::pread(src, want.min(1 << 20), pos)
                    .map_err(|e| Error::io(e, "copy-up read"))?;
                if buf.is_empty() {
                    0
                } else {
                    sys::pwrite(dst, &buf, pos).map_err(|e| Error::io(e, "copy-up write"))?
                }
            };
            if n == 0 {
                break; // the source shrank under us
            }
            pos += n as u64;
        }
        off = end.max(pos);
    }
    ops::ftruncate(dst, size).map_err(|e| Error::io(e, "copy-up size"))
}

/// Sets owner, mode (not on symlinks) and times of `dir/name` from `st`.
pub fn copy_meta(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> Result<()> {
    ops::fchownat(dir, name, st.st_uid, st.st_gid).map_err(|e| Error::io(e, "copy-up chown"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        ops::fchmodat(dir, name, st.st_mode & 0o7777).map_err(|e| Error::io(e, "copy-up chmod"))?;
    }
    Ok(())
}

pub fn copy_times(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> Result<()> {
    ops::utimensat(
        dir,
        name,
        ops::SetTime::At(st.st_atime, st.st_atime_nsec),
        ops::SetTime::At(st.st_mtime, st.st_mtime_nsec),
    )
    .map_err(|e| Error::io(e, "copy-up times"))
}

impl UnionFs {
    /// The staging directory, or EROFS on a mount without an upper.
    pub(crate) fn staging(&self) -> Result<Arc<OwnedFd>> {
        if self.read_only {
            return Err(Error::errno(libc::EROFS));
        }
        self.work.clone().ok_or_else(|| Error::errno(libc::EROFS))
    }

    /// Makes `node` exist in the upper (its parents first). With `data == false` a
    /// regular file is created empty (the caller is about to truncate it).
    pub fn copy_up(&self, node: &Arc<Node>, data: bool) -> Result<()> {
        if node.loc.read().in_upper() {
            return Ok(());
        }
        let work = self.staging()?;
        let _guard = node.copy_lock.lock();
        if node.loc.read().in_upper() {
            return Ok(()); // another request copied it while we waited
        }
        let loc = node.loc();
        let parent = self.node(loc.parent)?;
        self.copy_up(&parent, true)?;
        let upper_parent = parent
            .loc
            .read()
            .dir_in(UPPER)
            .ok_or_else(|| Error::new(libc::EIO, "parent has no upper after copy-up"))?;
        let src = self.real(node)?;
        let st =
            sys::fstatat(src.dir.as_fd(), &src.name).map_err(|e| Error::io(e, "copy-up stat"))?;
        let tmp = tmp_name();
        let w = work.as_fd();
        let staged = self.stage_copy(node.kind, &src, &st, w, &tmp, data);
        if let Err(e) = staged {
            let _ = remove_tree(w, &tmp);
            return Err(e);
        }
        let name = whiteout::c_name(&loc.name).ok_or_else(|| Error::errno(libc::EINVAL))?;
        let dirfd = if node.kind == Kind::Dir {
            Some(Arc::new(
                sys::open_dir_path(w, &tmp).map_err(|e| Error::io(e, "copy-up open"))?,
            ))
        } else {
            None
        };
        // A copy-up is not a change the user made: the parent keeps its times.
        let pst = sys::fstatat(upper_parent.as_fd(), c".")
            .map_err(|e| Error::io(e, "copy-up parent stat"))?;
        if let Err(e) = ops::renameat2(w, &tmp, upper_parent.as_fd(), &name, libc::RENAME_NOREPLACE)
        {
            let _ = remove_tree(w, &tmp);
            return Err(Error::io(e, "copy-up rename"));
        }
        let impure = self.layers.marker("impure");
        let _ = xattr::set(upper_parent.as_fd(), c".", &impure, b"y", 0);
        let _ = copy_times(upper_parent.as_fd(), c".", &pst);
        {
            let mut l = node.loc.write();
            l.top = UPPER;
            if let Some(fd) = dirfd {
                l.dirs.insert(0, (UPPER, fd));
            }
            l.data = None;
        }
        self.switch_handles_to_upper(node.ino);
        Ok(())
    }

    /// Builds the complete copy of `src` as `work/tmp`.
    fn stage_copy(
        &self,
        kind: Kind,
        src: &crate::fs::Real,
        st: &Stat,
        w: BorrowedFd<'_>,
        tmp: &CStr,
        data: bool,
    ) -> Result<()> {
        let origin = self.layers.marker("origin");
        match kind {
            Kind::Dir => {
                ops::mkdirat(w, tmp, 0o700).map_err(|e| Error::io(e, "copy-up mkdir"))?;
            }
            Kind::File => {
                let out = sys::openat(w, tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
                    .map_err(|e| Error::io(e, "copy-up create"))?;
                if data {
                    let data_fd = match &src.loc.data {
                        Some(d) => sys::reopen(d.as_fd(), libc::O_RDONLY),
                        None => sys::openat(src.dir.as_fd(), &src.name, libc::O_RDONLY, 0),
                    }
                    .map_err(|e| Error::io(e, "copy-up open lower"))?;
                    copy_data(data_fd.as_fd(), out.as_fd(), st.st_size as u64)?;
                    if !self.volatile {
                        ops::fsync(out.as_fd(), false)
                            .map_err(|e| Error::io(e, "copy-up fsync"))?;
                    }
                }
            }
            Kind::Symlink => {
                let target = sys::readlinkat(src.dir.as_fd(), &src.name)
                    .map_err(|e| Error::io(e, "copy-up readlink"))?;
                let target = CString::new(target).map_err(|_| Error::errno(libc::EINVAL))?;
                ops::symlinkat(&target, w, tmp).map_err(|e| Error::io(e, "copy-up symlink"))?;
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                ops::mknodat(w, tmp, st.st_mode, st.st_rdev)
                    .map_err(|e| Error::io(e, "copy-up mknod"))?;
            }
        }
        copy_xattrs(src.dir.as_fd(), &src.name, w, tmp)?;
        copy_meta(w, tmp, st)?;
        let _ = xattr::set(w, tmp, &origin, b"", 0);
        copy_times(w, tmp, st)
    }
}

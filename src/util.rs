//! Renames in the upper with `renameat2` flags, and what is done where the upper's
//! filesystem has no such flags (the kernel's `util.c` keeps its rename helpers too).
//!
//! A FUSE filesystem whose daemon does not implement RENAME2 (GlusterFS 10's client, for
//! one) gets `EINVAL` from the kernel for every flagged rename: `RENAME_NOREPLACE`,
//! `RENAME_EXCHANGE` and `RENAME_WHITEOUT` alike, while a plain rename(2) works. The
//! fallbacks here assume what overlayfs assumes of an upper: nothing but this mount changes
//! it. Then:
//! - no-replace is a check that the target is absent and a plain rename: the same outcome,
//!   since within one mount the kernel holds the parent directory's lock for the name;
//! - an exchange of a staged entry (in `work/`) with an upper entry is three plain renames
//!   through a second staging name. It is not atomic against a crash: between the first
//!   and the second rename the name is absent from the upper, so after a crash at that
//!   point the lower entry (if any) shows again and the staged one is discarded with the
//!   rest of `work/` at the next mount.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::sys::{self, ops};
use crate::whiteout;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name in the staging directory.
pub fn tmp_name() -> CString {
    // The process id, read once (std::process::id() is a getpid(2) per call).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = PID.get_or_init(std::process::id);
    CString::new(format!("#sfs.{pid}.{n:x}")).unwrap_or_default()
}

/// Whether a flagged rename failed only because the filesystem lacks the flag.
fn no_flags(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// `olddir/old` to `newdir/new` unless `new` exists (EEXIST then).
pub fn rename_noreplace(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
) -> io::Result<()> {
    match ops::renameat2(olddir, old, newdir, new, libc::RENAME_NOREPLACE) {
        Err(e) if no_flags(&e) => {
            match sys::fstatat(newdir, new) {
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::EEXIST)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            log::debug!("rename: no RENAME_NOREPLACE here; checked and renamed");
            ops::renameat2(olddir, old, newdir, new, 0)
        }
        r => r,
    }
}

/// Swaps the staged `work/tmp` with `dir/name` (both must exist): afterwards `dir/name`
/// is what was staged and `work/tmp` what was at `dir/name`.
pub fn exchange_staged(
    work: BorrowedFd<'_>,
    tmp: &CStr,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    match ops::renameat2(work, tmp, dir, name, libc::RENAME_EXCHANGE) {
        Err(e) if no_flags(&e) => {
            log::debug!("rename: no RENAME_EXCHANGE here; three plain renames");
            let aside = tmp_name();
            ops::renameat2(dir, name, work, &aside, 0)?;
            if let Err(e) = ops::renameat2(work, tmp, dir, name, 0) {
                let _ = ops::renameat2(work, &aside, dir, name, 0);
                return Err(e);
            }
            ops::renameat2(work, &aside, work, tmp, 0)
        }
        r => r,
    }
}

/// Creates `workdir/work` afresh (removing a previous one, with any leftovers of a crash)
/// and returns its `O_PATH` fd.
pub fn prepare_staging(workdir: BorrowedFd<'_>) -> Result<OwnedFd> {
    remove_tree(workdir, c"work").map_err(|e| Error::io(e, "workdir: cleaning work/"))?;
    ops::mkdirat(workdir, c"work", 0o700).map_err(|e| Error::io(e, "workdir: creating work/"))?;
    sys::open_dir_path(workdir, c"work").map_err(|e| Error::io(e, "workdir: opening work/"))
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

//! `index=on`: the names of a lower hard link stay one file after one of them is copied up,
//! in the kernel overlayfs's on-disk format (Documentation/filesystems/overlayfs.rst,
//! "Inode index"), so the same upper mounts with the kernel's `index=on` and back:
//! - the copy of a lower non-directory with several links is made in `workdir/work`,
//!   carries its origin's file handle in `overlay.origin` (the copies of such a file record
//!   it only with the index) and `overlay.nlink` ("U+N": the union's link count is the
//!   upper inode's plus N), is renamed to `workdir/index/<hex of the origin value>`, and the
//!   name being copied up is a hard link of that index entry;
//! - a lookup of another name of the lower file finds the index entry by the lower's handle
//!   and shows it (content, attributes) until that name itself is changed, which links the
//!   index entry up under it (as the kernel's "link up");
//! - all names of a lower hard link are one inode numbered as the lower one, before and
//!   after copy-up (the kernel hashes them by the lower inode), with the union link count;
//! - removing a name that has no upper link yet (a whiteout) lowers N by one.
//!
//! Costs, with the option only: a lookup of a lower non-directory with several links takes
//! a `name_to_handle_at` and a `fstatat` in the index; a lookup or getattr of an upper
//! non-directory with several links one `getxattr` (its link count); a copy-up of a hard
//! link one rename and one link more. Nothing without it.
//!
//! At mount, as the kernel: the upper root's `overlay.origin` (the topmost lower root) and
//! the index directory's `overlay.upper` (the upper root) are written the first time and
//! must match after (ESTALE otherwise). `stratafs check` judges the entries (tools/check.rs).
//!
//! Not done (see docs/guarantees.md): the kernel's mount-time clean-up of stale and orphan
//! entries (`stratafs check --repair` does it offline) and `nfs_export`'s indexing of every
//! copy-up. (Links and renames of an indexed file need nothing more: a new or moved upper
//! name changes the union count and the upper inode's alike.)

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::inode::Loc;
use crate::layers::{Layers, UPPER};
use crate::lookup::{Alias, Found};
use crate::sys::{self, ops, xattr, Stat};
use crate::whiteout;

/// Makes (if needed) and opens `workdir/index`, after the kernel's mount-time checks that
/// the upper goes with these layers: the upper root's `overlay.origin` is the topmost
/// lower root's handle, the index directory's `overlay.upper` the upper root's (written at
/// the first mount with the index, as the kernel does; a mismatch refuses the mount with
/// ESTALE, as the kernel's).
fn open_index_dir(layers: &Layers) -> Result<Arc<OwnedFd>> {
    let (Some(work), Some(upper)) = (layers.work.as_ref(), layers.upper.as_ref()) else {
        return Err(Error::new(
            libc::EINVAL,
            "index=on needs an upper and a workdir",
        ));
    };
    if let Some(lower) = layers.stack().lowers.first() {
        let want = crate::origin::encode(lower.root.as_fd(), c".", lower.uuid);
        verify_or_set(
            layers,
            upper.root.as_fd(),
            "origin",
            &want,
            "upper root origin",
        )?;
    }
    match ops::mkdirat(work.as_fd(), c"index", 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io(e, "mkdir workdir/index")),
    }
    let fd = sys::open_dir_path(work.as_fd(), c"index")
        .map_err(|e| Error::io(e, "open workdir/index"))?;
    let mut want = crate::origin::encode(upper.root.as_fd(), c".", upper.uuid);
    if let Some(flags) = want.get_mut(3) {
        *flags |= FLAG_PATH_UPPER;
    }
    verify_or_set(
        layers,
        fd.as_fd(),
        "upper",
        &want,
        "index directory's upper",
    )?;
    Ok(Arc::new(fd))
}

/// The ovl_fh flag of a handle of an upper object (`OVL_FH_FLAG_PATH_UPPER`).
const FLAG_PATH_UPPER: u8 = 1 << 2;

/// Marker `suffix` of directory `dir` must be `want`: set if absent, ESTALE if another.
/// (Nothing to compare with where no handle could be had.)
fn verify_or_set(
    layers: &Layers,
    dir: BorrowedFd<'_>,
    suffix: &str,
    want: &[u8],
    what: &str,
) -> Result<()> {
    if want.is_empty() {
        return Ok(());
    }
    match whiteout::marker(dir, c".", suffix) {
        Some(v) if v == want => Ok(()),
        Some(_) => Err(Error::new(
            libc::ESTALE,
            format!("index=on: the {what} does not match these layers (mount them with index=off, or use the layers it was made with)"),
        )),
        None => xattr::set(dir, c".", &layers.marker(suffix), want, 0)
            .map_err(|e| Error::io(e, format!("index=on: set the {what}"))),
    }
}

/// The index entry name of an origin value: its bytes in lowercase hex.
pub fn index_name(origin: &[u8]) -> Option<CString> {
    if origin.is_empty() {
        return None;
    }
    let hex: String = origin.iter().map(|b| format!("{b:02x}")).collect();
    CString::new(hex).ok()
}

/// The union link count of the upper non-directory `dir/name` whose stat is `st`, from its
/// `overlay.nlink` ("U+N", "U-N"); `st`'s own when it has none or another form.
pub fn union_nlink(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> u64 {
    let own = st.st_nlink;
    match nlink_delta(dir, name) {
        Some(n) if own as i64 + n > 0 => (own as i64 + n) as u64,
        _ => own,
    }
}

/// N of `overlay.nlink` "U+N" / "U-N" of `dir/name` (None: no such marker, or another form).
pub fn nlink_delta(dir: BorrowedFd<'_>, name: &CStr) -> Option<i64> {
    let v = whiteout::marker(dir, name, "nlink")?;
    let rest = v.strip_prefix(b"U")?;
    std::str::from_utf8(rest).ok()?.parse::<i64>().ok()
}

fn nlink_value(n: i64) -> Vec<u8> {
    format!("U{n:+}").into_bytes()
}

impl UnionFs {
    /// At mount, with `index=on` and an upper: `workdir/index` (see [`open_index_dir`]).
    pub(crate) fn open_index(&mut self) -> Result<()> {
        self.index = Some(open_index_dir(&self.layers)?);
        Ok(())
    }

    /// At lookup, with the index: an upper non-directory with several links shows the
    /// union link count; a name of a lower hard link whose copy-up went through another
    /// name shows the index entry (`found.index_alias`).
    pub(crate) fn find_index(&self, ploc: &Loc, name: &OsStr, f: &mut Found) {
        let Some(index) = &self.index else { return };
        if f.is_dir() || f.st.st_nlink < 2 {
            return;
        }
        let Ok(cname) = CString::new(name.as_bytes()) else {
            return;
        };
        let Some(dir) = ploc.dir_in(f.top) else {
            return;
        };
        if f.top == UPPER {
            f.st.st_nlink = union_nlink(dir.as_fd(), &cname, &f.st);
            return;
        }
        let uuid = self.layers.stack().lower(f.top).and_then(|l| l.uuid);
        let Some(hex) = index_name(&crate::origin::encode(dir.as_fd(), &cname, uuid)) else {
            return;
        };
        let Ok(mut st) = sys::fstatat(index.as_fd(), &hex) else {
            return;
        };
        if st.st_mode & libc::S_IFMT != f.st.st_mode & libc::S_IFMT {
            return;
        }
        let Ok(fd) = sys::openat(index.as_fd(), &hex, libc::O_PATH, 0) else {
            return;
        };
        st.st_nlink = union_nlink(index.as_fd(), &hex, &st);
        self.renumbered
            .entry((st.st_dev, st.st_ino))
            .or_insert(f.ino);
        f.index_alias = Some(Alias {
            fd: Arc::new(fd),
            name: Arc::new(hex),
            lower: f.top,
        });
        f.st = st;
        f.top = UPPER;
    }

    /// Whether a copy-up of a non-directory whose lower stat is `st` goes through the index.
    pub(crate) fn indexed_copy(&self, is_dir: bool, st: &Stat) -> bool {
        self.index.is_some() && !is_dir && st.st_nlink > 1
    }

    /// Marks the staged copy `w/tmp` of a lower hard link with `lower_nlink` links (its
    /// upper inode will have two: the index entry and the name).
    pub(crate) fn mark_indexed(
        &self,
        w: BorrowedFd<'_>,
        tmp: &CStr,
        lower_nlink: u64,
    ) -> Result<()> {
        let v = nlink_value(lower_nlink as i64 - 2);
        xattr::set(w, tmp, &self.layers.marker("nlink"), &v, 0)
            .map_err(|e| Error::io(e, "set overlay.nlink"))
    }

    /// Places the staged copy `w/tmp`, whose origin value names index entry `hex`, in the
    /// index and links it up as `updir/name`. An entry already there (an earlier copy-up
    /// through another name) is the one linked up; the staged copy goes.
    pub(crate) fn place_indexed(
        &self,
        w: BorrowedFd<'_>,
        tmp: &CStr,
        hex: &CStr,
        updir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<()> {
        let index = self
            .index
            .as_ref()
            .ok_or_else(|| Error::new(libc::EIO, "no index"))?;
        match crate::util::rename_noreplace(w, tmp, index.as_fd(), hex) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let _ = ops::unlinkat(w, tmp, 0);
            }
            Err(e) => return Err(Error::io(e, "copy-up into the index")),
        }
        self.link_up(hex, updir, name)
    }

    /// Links index entry `hex` up as `updir/name`.
    pub(crate) fn link_up(&self, hex: &CStr, updir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        let index = self
            .index
            .as_ref()
            .ok_or_else(|| Error::new(libc::EIO, "no index"))?;
        ops::linkat(index.as_fd(), hex, updir, name).map_err(|e| Error::io(e, "link up"))
    }

    /// Before a name of an indexed node goes: the node holds on to the index entry (the
    /// file all its names share) rather than to the name. False when not indexed.
    pub(crate) fn pin_to_index(&self, node: &crate::inode::Node) -> bool {
        let Some(index) = &self.index else {
            return false;
        };
        let Some(hex) = node.loc.read().indexed.clone() else {
            return false;
        };
        match sys::openat(index.as_fd(), &hex, libc::O_PATH, 0) {
            Ok(fd) => {
                node.loc_mut().pinned = Some(Arc::new(fd));
                true
            }
            Err(_) => false,
        }
    }

    /// One lower name of indexed file `hex` less: whited out, or linked up (an upper link
    /// of the entry now stands for it). The union count falls by one, or stays while the
    /// upper inode gains a link: either way N (`overlay.nlink` of the shared inode) is one
    /// less.
    pub(crate) fn index_lower_name_gone(&self, hex: &CStr) {
        let Some(index) = &self.index else { return };
        let n = nlink_delta(index.as_fd(), hex).unwrap_or(0);
        let _ = xattr::set(
            index.as_fd(),
            hex,
            &self.layers.marker("nlink"),
            &nlink_value(n - 1),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts_as_the_kernel_writes_them() {
        assert_eq!(
            index_name(&[0x00, 0xfb, 0x1d, 0xab]).unwrap().as_bytes(),
            b"00fb1dab"
        );
        assert!(index_name(&[]).is_none());
        assert_eq!(nlink_value(1), b"U+1");
        assert_eq!(nlink_value(0), b"U+0");
        assert_eq!(nlink_value(-1), b"U-1");
    }
}

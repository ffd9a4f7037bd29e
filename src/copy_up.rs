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
//! Copied-up entries get `overlay.origin`, the lower's file handle as the kernel encodes
//! it (`origin.rs`; empty where there is none to record), so they keep their lower inode
//! number whatever their name becomes (see `lookup.rs`), and their upper parent gets
//! `overlay.impure`, as the kernel marks it.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::inode::{Kind, Node, StagedName};
use crate::layers::UPPER;
use crate::sys::{self, ops, xattr, Stat};
use crate::whiteout;

/// How much of an entry a copy-up must bring to the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUp {
    /// Metadata is about to change (chmod, chown, utimens, xattrs, a child is created):
    /// the data may stay below when `metacopy=on`.
    Meta,
    /// The data is about to change: all of it.
    Data,
    /// The data is about to be discarded (open with O_TRUNC, truncate to 0): none of it.
    Empty,
}

pub use crate::util::{prepare_staging, remove_tree, tmp_name};

/// File capabilities. A chown(2) removes them (the VFS's `cap_inode_killpriv`, whoever
/// calls), while the kernel overlayfs sets the copy's owner without that: so they are
/// copied after the owner (`copy_caps`), not with the other xattrs.
const CAPS: &[u8] = b"security.capability";

/// Copies every xattr but the overlay-private ones and [`CAPS`] from `src` to `dst`; a
/// caller that copies a whole entry calls [`copy_caps`] after its owner is set, if this
/// says the source may have capabilities (it listed them, or its list could not be read).
pub fn copy_xattrs(
    src: BorrowedFd<'_>,
    sname: &CStr,
    dst: BorrowedFd<'_>,
    dname: &CStr,
) -> Result<bool> {
    let list = match xattr::list(src, sname) {
        Ok(l) => l,
        Err(_) => return Ok(true),
    };
    let mut caps = false;
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == CAPS {
            caps = true;
            continue;
        }
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
    Ok(caps)
}

/// Copies `src`'s file capabilities to `dst`, after its owner is set (see [`CAPS`]).
pub fn copy_caps(
    src: BorrowedFd<'_>,
    sname: &CStr,
    dst: BorrowedFd<'_>,
    dname: &CStr,
) -> Result<()> {
    let caps = c"security.capability";
    if let Ok(Some(value)) = xattr::get(src, sname, caps) {
        match xattr::set(dst, dname, caps, &value, 0) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                return Err(Error::io(e, "copy-up capabilities"))
            }
            Err(e) => log::debug!("copy-up: security.capability not copied: {e}"),
        }
    }
    Ok(())
}

/// Pairs of filesystems (source st_dev, destination st_dev) between which a reflink
/// (bit 1) or `copy_file_range` (bit 2) was refused for good (EXDEV, EOPNOTSUPP, ENOSYS):
/// not tried again for the life of the daemon (a tmpfs upper over disk lowers refuses both
/// for every copy-up).
static REFUSED: parking_lot::Mutex<Vec<((u64, u64), u8)>> = parking_lot::Mutex::new(Vec::new());
const NO_REFLINK: u8 = 1;
const NO_COPY_RANGE: u8 = 2;

fn refused(devs: Option<(u64, u64)>, what: u8) -> bool {
    devs.is_some_and(|d| REFUSED.lock().iter().any(|(p, w)| *p == d && w & what != 0))
}

fn remember_refused(devs: Option<(u64, u64)>, what: u8, e: &std::io::Error) {
    let Some(d) = devs else { return };
    if !matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) {
        return;
    }
    let mut r = REFUSED.lock();
    match r.iter_mut().find(|(p, _)| *p == d) {
        Some((_, w)) => *w |= what,
        None => r.push((d, what)),
    }
}

/// Copies the data of `src` to `dst` (both open), keeping holes; then sets the size.
/// `devs`: (source, destination) st_dev where known, so that a way of copying their
/// filesystems refuse is not tried for every file.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    devs: Option<(u64, u64)>,
) -> Result<()> {
    copy_data_dense(src, dst, size, devs, false)
}

/// [`copy_data`]; `dense`: the source is known to have no holes (as many blocks as bytes),
/// so it is copied as one run, without asking where its data is (two lseeks), and the
/// copy needs no final ftruncate when that run reached `size`.
pub fn copy_data_dense(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    devs: Option<(u64, u64)>,
    dense: bool,
) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    if !refused(devs, NO_REFLINK) {
        match ops::ficlone(dst, src) {
            Ok(()) => return Ok(()),
            Err(e) => remember_refused(devs, NO_REFLINK, &e),
        }
    }
    // copy_file_range, else sendfile (across filesystems, e.g. a tmpfs upper over disk
    // lowers, where copy_file_range says EXDEV), else read and write.
    enum How {
        CopyFileRange,
        Sendfile,
        ReadWrite,
    }
    let fallback = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        )
    };
    let mut off: u64 = 0;
    let mut how = if refused(devs, NO_COPY_RANGE) {
        How::Sendfile
    } else {
        How::CopyFileRange
    };
    let mut reached = 0;
    while off < size {
        let (start, end) = if dense {
            (off, size)
        } else {
            let start = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
                Ok(s) => s as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole remains
                Err(_) => off,                                            // no SEEK_DATA: copy all
            };
            let end = match sys::lseek(src, start as i64, libc::SEEK_HOLE) {
                Ok(e) => (e as u64).min(size),
                Err(_) => size,
            };
            (start, end)
        };
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(1 << 30);
            let n = match how {
                How::CopyFileRange => match ops::copy_file_range(src, pos, dst, pos, want) {
                    Ok(n) => n,
                    Err(e) if fallback(&e) => {
                        remember_refused(devs, NO_COPY_RANGE, &e);
                        how = How::Sendfile;
                        continue;
                    }
                    Err(e) => return Err(Error::io(e, "copy-up data")),
                },
                How::Sendfile => match ops::sendfile_at(src, pos, dst, pos, want) {
                    Ok(n) => n,
                    Err(e) if fallback(&e) => {
                        how = How::ReadWrite;
                        continue;
                    }
                    Err(e) => return Err(Error::io(e, "copy-up data")),
                },
                How::ReadWrite => {
                    let buf = sys::pread(src, want.min(1 << 20), pos)
                        .map_err(|e| Error::io(e, "copy-up read"))?;
                    if buf.is_empty() {
                        0
                    } else {
                        sys::pwrite(dst, &buf, pos).map_err(|e| Error::io(e, "copy-up write"))?
                    }
                }
            };
            if n == 0 {
                break; // the source shrank under us
            }
            pos += n as u64;
        }
        reached = pos;
        if dense && pos < end {
            break; // the source shrank under us
        }
        off = end.max(pos);
    }
    if dense && reached == size {
        return Ok(()); // the copy is `size` long already
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
        self.check_writable()?;
        self.work
            .get()
            .cloned()
            .ok_or_else(|| Error::errno(libc::EROFS))
    }

    /// The staging directory of writable layer `t` (the upper's `workdir/work`, a
    /// writable branch's `.wh..wh.orph/work`), or EROFS.
    pub(crate) fn staging_on(&self, t: crate::layers::LayerId) -> Result<Arc<OwnedFd>> {
        if t == UPPER {
            return self.staging();
        }
        self.check_writable()?;
        let l = self.layers.get(t)?;
        let Some(orph) = &l.orph else {
            return Err(Error::new(
                libc::EROFS,
                format!("layer {t} is not writable"),
            ));
        };
        if let Some(w) = l.work.get() {
            return Ok(w.clone());
        }
        // Made once per opening of the branch (a race makes it twice: the loser's is gone
        // before anything is staged in it, as only the winner's is handed out).
        let _g = self.staging_made.lock();
        if let Some(w) = l.work.get() {
            return Ok(w.clone());
        }
        let w = Arc::new(prepare_staging(orph.as_fd())?);
        let _ = l.work.set(w.clone());
        Ok(w)
    }

    /// Makes `node` exist in a writable layer (its parents first), with as much of its data
    /// as `want` asks for: nothing to do where its top layer is writable (a change happens
    /// in place there), else a copy to the branch the `cpup=` policy picks above it
    /// (`wbr_policy.rs`; the upper, on a mount of the kernel's shape).
    pub fn copy_up(&self, node: &Arc<Node>, want: CopyUp) -> Result<()> {
        {
            let loc = node.loc.read();
            let alias = loc.pinned.is_some() && loc.indexed.is_some();
            if self.layers.writable(loc.top)
                && (loc.data.is_none() || want == CopyUp::Meta)
                && !alias
            {
                return Ok(());
            }
        }
        self.check_writable()?;
        let _guard = node.copy_lock.lock();
        let loc = node.loc();
        if let (true, Some(_), Some(hex)) =
            (self.layers.writable(loc.top), &loc.pinned, &loc.indexed)
        {
            return self.link_up_alias(node, &loc, hex);
        }
        if self.layers.writable(loc.top) {
            // Upper already, but metadata only: bring the data up now if it is wanted.
            return match (loc.data.is_some(), want) {
                (true, CopyUp::Data) => self.copy_up_data(node),
                (true, CopyUp::Empty) => self.drop_metacopy(node),
                _ => Ok(()), // another request copied it while we waited
            };
        }
        let parent = self.node(loc.parent)?.loc();
        let t = self
            .wbr
            .copy_up_target(&self.layers, self.cpup, loc.top, &parent)?;
        let work = self.staging_on(t)?;
        if loc.pinned.is_some() {
            // Its name is gone (unlinked or replaced while open): a whiteout or another
            // file holds it, so the copy cannot go there.
            return self.copy_up_nameless(node, &work, want, t);
        }
        self.copy_up_locked(node, &loc, want, t, &work)
    }

    /// Directory `node` made on writable layer `t` (copied there, metadata only, its own
    /// parents first) where it is not yet: a parent of an entry placed on `t`. Its top
    /// layer stays where it is when `t` is below it.
    pub(crate) fn dir_on(
        &self,
        node: &Arc<Node>,
        t: crate::layers::LayerId,
    ) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = node.loc.read().dir_in(t) {
            return Ok(fd);
        }
        let work = self.staging_on(t)?;
        {
            let _guard = node.copy_lock.lock();
            let loc = node.loc();
            if loc.dir_in(t).is_none() {
                self.copy_up_locked(node, &loc, CopyUp::Meta, t, &work)?;
            }
        }
        node.loc
            .read()
            .dir_in(t)
            .ok_or_else(|| Error::new(libc::EIO, "directory missing on its branch after copy-up"))
    }

    /// The copy of `node` (as `loc`) to writable layer `t` through staging directory
    /// `work`. Caller holds `copy_lock`.
    fn copy_up_locked(
        &self,
        node: &Arc<Node>,
        loc: &crate::inode::Loc,
        want: CopyUp,
        t: crate::layers::LayerId,
        work: &Arc<OwnedFd>,
    ) -> Result<()> {
        let upper_parent = self.parent_on(loc.parent, t)?;
        let src = self.real(node)?;
        let st =
            sys::fstatat(src.dir.as_fd(), &src.name).map_err(|e| Error::io(e, "copy-up stat"))?;
        // Metadata only (the kernel's metacopy): when allowed, for a file with data.
        let meta_only =
            want == CopyUp::Meta && self.metacopy && node.kind == Kind::File && st.st_size > 0;
        let data_fd = if meta_only {
            Some(Arc::new(match &src.loc.data {
                Some(d) => sys::reopen(d.as_fd(), libc::O_PATH),
                None => src.open(libc::O_PATH),
            }?))
        } else {
            None
        };
        let w = work.as_fd();
        let tmp = self.stage((&src, &st), w, want, meta_only)?;
        let name = whiteout::c_name(&loc.name).ok_or_else(|| Error::errno(libc::EINVAL))?;
        let (dirfd, pst, hex) =
            self.place_staged(node, (&src, &st), w, &tmp, upper_parent.as_fd(), &name)?;
        let impure = self.layers.marker("impure");
        let _ = xattr::set(upper_parent.as_fd(), c".", &impure, b"y", 0);
        let _ = copy_times(upper_parent.as_fd(), c".", &pst);
        self.took_copy(node, t, dirfd, data_fd, hex, meta_only);
        Ok(())
    }

    /// Builds the copy of `src` (stat `st`) under a new name in staging directory `w`, and
    /// returns that name; on failure nothing of it is left there.
    fn stage(
        &self,
        (src, st): (&crate::fs::Real, &Stat),
        w: BorrowedFd<'_>,
        want: CopyUp,
        meta_only: bool,
    ) -> Result<CString> {
        let tmp = tmp_name();
        // The real type (an owner override may show a regular file as a device).
        let staged = self.stage_copy(
            Kind::from_mode(st.st_mode),
            src,
            st,
            w,
            &tmp,
            want,
            meta_only,
        );
        if let Err(e) = staged {
            let _ = remove_tree(w, &tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Places the staged copy `w/tmp` of `node` at `updir/name` (`place_copy`), keeping the
    /// node's number for it. Returns a directory's new fd, the parent's stat from before
    /// (to restore its times) and the index entry's name, if any. On failure the staged
    /// copy is gone and the number not kept.
    fn place_staged(
        &self,
        node: &Arc<Node>,
        (src, st): (&crate::fs::Real, &Stat),
        w: BorrowedFd<'_>,
        tmp: &CStr,
        updir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(Option<Arc<OwnedFd>>, Stat, Option<CString>)> {
        let dirfd = if node.kind == Kind::Dir {
            Some(Arc::new(
                sys::open_dir_path(w, tmp).map_err(|e| Error::io(e, "copy-up open"))?,
            ))
        } else {
            None
        };
        // A copy-up is not a change the user made: the parent keeps its times.
        let pst = sys::fstatat(updir, c".").map_err(|e| Error::io(e, "copy-up parent stat"))?;
        // The copy stays this node (see `UnionFs::renumbered`), whatever names it gets
        // later: recorded before the copy can be looked up.
        let number = match node.kind {
            Kind::Dir => None,
            _ => sys::fstatat(w, tmp)
                .ok()
                .map(|st| (st.st_dev, st.st_ino))
                .filter(|&(dev, ino)| self.layers.ino(dev, ino) != node.id),
        };
        if let Some(key) = number {
            self.renumbered.insert(key, node.id);
        }
        let placed = self.place_copy(node.kind, (src, st), w, tmp, updir, name);
        match placed {
            Ok(hex) => Ok((dirfd, pst, hex)),
            Err(e) => {
                if let Some(key) = number {
                    self.renumbered.remove(&key);
                }
                let _ = remove_tree(w, tmp);
                Err(e)
            }
        }
    }

    /// After `node` was copied to writable layer `t`: its location takes the copy (its top
    /// where `t` is above the old one; a directory's new part in layer order), handles move
    /// to it where it holds the data now.
    fn took_copy(
        &self,
        node: &Arc<Node>,
        t: crate::layers::LayerId,
        dirfd: Option<Arc<OwnedFd>>,
        data_fd: Option<Arc<OwnedFd>>,
        hex: Option<CString>,
        meta_only: bool,
    ) {
        let gained_dir = dirfd.is_some();
        let became_top = {
            let stack = self.layers.stack();
            let pos = |id| stack.pos(id).unwrap_or(usize::MAX);
            let mut l = node.loc_mut();
            if pos(t) < pos(l.top) {
                l.top = t;
            }
            if let Some(fd) = dirfd {
                let end = l.dirs.len();
                let at = l.dirs.iter().position(|(d, _)| pos(*d) > pos(t));
                l.dirs.insert(at.unwrap_or(end), (t, fd));
            }
            if l.top == t {
                l.data = data_fd;
                l.indexed = hex.map(Arc::new);
            }
            l.top == t
        };
        if gained_dir {
            // udba=notify watches the new upper part too.
            self.inodes.located(node.id);
        }
        if !meta_only && became_top {
            self.switch_handles_to_upper(node.id);
        }
    }

    /// Puts the staged copy `w/tmp` of `src` (stat `st`) at `updir/name`: renamed there, or
    /// with `index=on` for a lower hard link through `workdir/index` (index.rs), whose
    /// entry name it then returns.
    fn place_copy(
        &self,
        kind: Kind,
        (src, st): (&crate::fs::Real, &Stat),
        w: BorrowedFd<'_>,
        tmp: &CStr,
        updir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Option<CString>> {
        let hex = if self.indexed_copy(kind == Kind::Dir, st) {
            crate::index::index_name(&self.origin_value(kind, src, st))
        } else {
            None
        };
        match &hex {
            Some(hex) => {
                self.mark_indexed(w, tmp, st.st_nlink)?;
                self.place_indexed(w, tmp, hex, updir, name)?;
            }
            None => crate::util::rename_noreplace(w, tmp, updir, name)
                .map_err(|e| Error::io(e, "copy-up rename"))?,
        }
        Ok(hex)
    }

    /// index=on: a name of a lower hard link shown from the index entry (another name was
    /// copied up) gets its own upper link of that entry before it changes (the kernel's
    /// link-up). Where the name cannot take it (it was removed while the node lives on),
    /// the node goes on with the index entry, which is the file. Caller holds `copy_lock`.
    /// The directory of node `parent` on writable layer `t`, made there first (metadata
    /// only) if needed.
    fn parent_on(&self, parent: u64, t: crate::layers::LayerId) -> Result<Arc<OwnedFd>> {
        self.dir_on(&self.node(parent)?, t)
    }

    fn link_up_alias(&self, node: &Arc<Node>, loc: &crate::inode::Loc, hex: &CStr) -> Result<()> {
        let upper_parent = self.parent_on(loc.parent, UPPER)?;
        let name = whiteout::c_name(&loc.name).ok_or_else(|| Error::errno(libc::EINVAL))?;
        let pst = sys::fstatat(upper_parent.as_fd(), c".")
            .map_err(|e| Error::io(e, "copy-up parent stat"))?;
        if self.link_up(hex, upper_parent.as_fd(), &name).is_ok() {
            self.index_lower_name_gone(hex);
            let impure = self.layers.marker("impure");
            let _ = xattr::set(upper_parent.as_fd(), c".", &impure, b"y", 0);
            let _ = copy_times(upper_parent.as_fd(), c".", &pst);
            node.loc_mut().pinned = None;
        }
        Ok(())
    }

    /// Completes a metadata-only copy: the data goes into the upper file in place, and only
    /// then is `overlay.metacopy` removed. Until that last step the data is still read from
    /// the lower file, so a crash midway loses nothing. Caller holds `copy_lock`.
    fn copy_up_data(&self, node: &Arc<Node>) -> Result<()> {
        let real = self.real(node)?;
        let Some(data) = real.loc.data.clone() else {
            return Ok(());
        };
        let st = sys::fstatat(real.dir.as_fd(), &real.name).map_err(|e| Error::io(e, "stat"))?;
        let src = sys::reopen(data.as_fd(), libc::O_RDONLY)
            .map_err(|e| Error::io(e, "open lower data"))?;
        let out = real
            .open(libc::O_WRONLY)
            .map_err(|e| Error::io(e, "open upper"))?;
        copy_data(src.as_fd(), out.as_fd(), st.st_size as u64, None)?;
        if !self.volatile {
            ops::fsync(out.as_fd(), false).map_err(|e| Error::io(e, "copy-up fsync"))?;
        }
        // Writing the data moved the mtime: the user did not change the file yet.
        copy_times(real.dir.as_fd(), &real.name, &st)?;
        self.drop_metacopy(node)
    }

    /// Removes `overlay.metacopy`: from now on the upper file holds the data.
    fn drop_metacopy(&self, node: &Arc<Node>) -> Result<()> {
        let real = self.real(node)?;
        for p in crate::layers::READ_PREFIXES {
            let mut a = p.to_bytes().to_vec();
            a.extend_from_slice(b"metacopy");
            if let Ok(a) = CString::new(a) {
                let _ = xattr::remove(real.dir.as_fd(), &real.name, &a);
            }
        }
        node.loc_mut().data = None;
        self.switch_handles_to_upper(node.id);
        Ok(())
    }

    /// Builds the copy of `src` as `work/tmp`: complete, or (`meta_only`) a file of the
    /// right size with no data, marked `overlay.metacopy`.
    #[allow(clippy::too_many_arguments)]
    fn stage_copy(
        &self,
        kind: Kind,
        src: &crate::fs::Real,
        st: &Stat,
        w: BorrowedFd<'_>,
        tmp: &CStr,
        want: CopyUp,
        meta_only: bool,
    ) -> Result<()> {
        match kind {
            Kind::Dir => {
                ops::mkdirat(w, tmp, 0o700).map_err(|e| Error::io(e, "copy-up mkdir"))?;
            }
            Kind::File => {
                let out = sys::openat(w, tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
                    .map_err(|e| Error::io(e, "copy-up create"))?;
                if meta_only {
                    ops::ftruncate(out.as_fd(), st.st_size as u64)
                        .map_err(|e| Error::io(e, "copy-up size"))?;
                    let mc = self.layers.marker("metacopy");
                    xattr::set(w, tmp, &mc, b"", 0).map_err(|e| Error::io(e, "set metacopy"))?;
                } else if want != CopyUp::Empty {
                    let out_dev = sys::fstat(out.as_fd()).ok().map(|s| s.st_dev);
                    copy_file_data(src, st, out.as_fd(), out_dev)?;
                    if !self.volatile {
                        ops::fsync(out.as_fd(), false)
                            .map_err(|e| Error::io(e, "copy-up fsync"))?;
                    }
                }
            }
            _ => make_special(src, st, w, tmp)?,
        }
        self.copy_attrs(src, st, w, tmp)?;
        if matches!(kind, Kind::File | Kind::Dir) {
            self.copy_fileattr(src, w, tmp)?;
        }
        let origin = self.layers.marker("origin");
        let _ = xattr::set(w, tmp, &origin, &self.origin_value(kind, src, st), 0);
        copy_times(w, tmp, st)
    }

    /// The `overlay.origin` value for a copy of `src`: its file handle (`origin.rs`),
    /// except for a file with several links, whose copies must not all claim it (the
    /// kernel records no origin there without `index`; an empty one here, as before).
    fn origin_value(&self, kind: Kind, src: &crate::fs::Real, st: &Stat) -> Vec<u8> {
        if kind != Kind::Dir && st.st_nlink > 1 && self.index.is_none() {
            return Vec::new();
        }
        let uuid = self.layers.stack().lower(src.loc.top).and_then(|l| l.uuid);
        crate::origin::encode(src.dir.as_fd(), &src.name, uuid)
    }

    /// xattrs, owner overrides, owner and mode of `src` onto its copy `dir/name`.
    fn copy_attrs(
        &self,
        src: &crate::fs::Real,
        st: &Stat,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<()> {
        let caps = copy_xattrs(src.dir.as_fd(), &src.name, dir, name)?;
        let mut meta = *st;
        match (self.override_level, self.read_level(src.loc.top)) {
            (Some(level), _) => {
                // An override under an older name (not copied: it is a marker prefix)
                // moves to the current one.
                let current = xattr::get(dir, name, level.xattr()).ok().flatten();
                if current.is_none() {
                    if let Some(o) = crate::override_stat::read(level, src.dir.as_fd(), &src.name) {
                        let _ = crate::override_stat::write(level, dir, name, &o);
                    }
                }
            }
            (None, Some(level)) => {
                // A lower marked at its root, without xattr_permissions: the upper keeps
                // real owners, so the override becomes the copy's real owner and mode (as
                // fuse-overlayfs does) and is not carried along.
                if let Some(o) = crate::override_stat::read(level, src.dir.as_fd(), &src.name) {
                    meta.st_uid = o.uid;
                    meta.st_gid = o.gid;
                    meta.st_mode = (meta.st_mode & libc::S_IFMT) | o.mode;
                }
                for n in level.read_names() {
                    let _ = xattr::remove(dir, name, n);
                }
            }
            (None, None) => {}
        }
        copy_meta(dir, name, &meta)?;
        if caps {
            copy_caps(src.dir.as_fd(), &src.name, dir, name)?;
        }
        Ok(())
    }

    /// Copy-up of a node whose name is gone: to an anonymous file in the workdir (an
    /// `O_TMPFILE`, never linked), which then answers for the node until the kernel
    /// forgets it, and which the upper filesystem frees at its last close. Where the upper
    /// has no `O_TMPFILE` (GlusterFS; and for non-regular files, which it cannot make),
    /// the copy is made under a temporary name in `work/` that stays until the node goes
    /// (`StagedName`): GlusterFS refuses attribute changes to a file without a name
    /// (ESTALE), as NFS would. Caller holds `copy_lock`.
    fn copy_up_nameless(
        &self,
        node: &Arc<Node>,
        work: &Arc<OwnedFd>,
        want: CopyUp,
        t: crate::layers::LayerId,
    ) -> Result<()> {
        let w = work.as_fd();
        let src = self.real(node)?;
        let st = sys::fstat(src.dir.as_fd()).map_err(|e| Error::io(e, "copy-up stat"))?;
        let kind = Kind::from_mode(st.st_mode);
        if kind == Kind::Dir {
            // A removed directory is empty, and nothing can be created in it.
            return Err(Error::new(libc::ENOENT, "copy-up of a removed directory"));
        }
        let (copy, staged) = match kind {
            Kind::File => {
                let (out, name) = anonymous_file(w)?;
                let staged = name.map(|name| StagedName {
                    work: work.clone(),
                    name,
                });
                if want != CopyUp::Empty {
                    copy_file_data(
                        &src,
                        &st,
                        out.as_fd(),
                        self.layers.get(t).ok().map(|l| l.dev),
                    )?;
                }
                (out, staged)
            }
            _ => {
                let tmp = tmp_name();
                make_special(&src, &st, w, &tmp)?;
                let staged = StagedName {
                    work: work.clone(),
                    name: tmp,
                };
                let fd = sys::openat(w, &staged.name, libc::O_PATH, 0)
                    .map_err(|e| Error::io(e, "copy-up open"))?;
                (fd, Some(staged))
            }
        };
        // No fsync and no origin marker: the copy has no name to be found by, and goes
        // with the last reference to it.
        self.copy_attrs(&src, &st, copy.as_fd(), c"")?;
        copy_times(copy.as_fd(), c"", &st)?;
        {
            let mut l = node.loc_mut();
            l.top = t;
            l.pinned = Some(Arc::new(copy));
            l.staged = staged.map(Arc::new);
            l.data = None;
        }
        log::debug!(
            "copy-up: {:#x} (its name is gone) to an anonymous file",
            node.id
        );
        self.switch_handles_to_upper(node.id);
        Ok(())
    }
}

/// The data of regular file `src` (its metacopy data file, if any) into `out`, a file on
/// the filesystem `out_dev` (where known).
fn copy_file_data(
    src: &crate::fs::Real,
    st: &Stat,
    out: BorrowedFd<'_>,
    out_dev: Option<u64>,
) -> Result<()> {
    let data_fd = match &src.loc.data {
        Some(d) => sys::reopen(d.as_fd(), libc::O_RDONLY),
        None => src.open(libc::O_RDONLY),
    }
    .map_err(|e| Error::io(e, "copy-up open lower"))?;
    // The data file of a metacopy may be on another layer: only `src`'s own is known.
    let devs = out_dev
        .filter(|_| src.loc.data.is_none())
        .map(|d| (st.st_dev, d));
    // The entry's own blocks say whether its data has holes (not a metacopy's: its data
    // is another file's).
    let dense = src.loc.data.is_none() && (st.st_blocks as u64) * 512 >= st.st_size as u64;
    copy_data_dense(data_fd.as_fd(), out, st.st_size as u64, devs, dense)
}

/// A symlink, device, fifo or socket like `src` at `w/tmp`.
fn make_special(src: &crate::fs::Real, st: &Stat, w: BorrowedFd<'_>, tmp: &CStr) -> Result<()> {
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        let target = sys::readlinkat(src.dir.as_fd(), &src.name)
            .map_err(|e| Error::io(e, "copy-up readlink"))?;
        let target = CString::new(target).map_err(|_| Error::errno(libc::EINVAL))?;
        ops::symlinkat(&target, w, tmp).map_err(|e| Error::io(e, "copy-up symlink"))
    } else {
        ops::mknodat(w, tmp, st.st_mode, st.st_rdev).map_err(|e| Error::io(e, "copy-up mknod"))
    }
}

/// A new regular file in directory `w` with no name, open read-write: `O_TMPFILE`, or
/// where the filesystem lacks it a file created under a temporary name, returned with it.
fn anonymous_file(w: BorrowedFd<'_>) -> Result<(OwnedFd, Option<CString>)> {
    match sys::openat(w, c".", libc::O_TMPFILE | libc::O_RDWR, 0o600) {
        Ok(fd) => Ok((fd, None)),
        // EOPNOTSUPP: the filesystem has no tmpfile; EISDIR/EINVAL: a kernel or library
        // without O_TMPFILE.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
            ) =>
        {
            log::debug!("copy-up: no O_TMPFILE in the workdir ({e}); a staging name");
            let tmp = tmp_name();
            let fd = sys::openat(w, &tmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)
                .map_err(|e| Error::io(e, "copy-up create"))?;
            Ok((fd, Some(tmp)))
        }
        Err(e) => Err(Error::io(e, "copy-up tmpfile")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("stratafs-cu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_dense_copy_is_the_same_bytes_and_size() {
        let d = scratch("dense");
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(d.join("src"), &data).unwrap();
        let src = std::fs::File::open(d.join("src")).unwrap();
        let dst = std::fs::File::create(d.join("dst")).unwrap();
        copy_data_dense(src.as_fd(), dst.as_fd(), data.len() as u64, None, true).unwrap();
        assert_eq!(std::fs::read(d.join("dst")).unwrap(), data);
        // Told a larger size than the source has (it shrank): the copy still gets `size`.
        let dst2 = std::fs::File::create(d.join("dst2")).unwrap();
        copy_data_dense(src.as_fd(), dst2.as_fd(), 60_000, None, true).unwrap();
        let got = std::fs::read(d.join("dst2")).unwrap();
        assert_eq!(got.len(), 60_000);
        assert_eq!(&got[..50_000], &data[..]);
        assert!(got[50_000..].iter().all(|b| *b == 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_sparse_copy_keeps_its_holes() {
        let d = scratch("sparse");
        let mut f = std::fs::File::create(d.join("src")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let size = std::fs::metadata(d.join("src")).unwrap().len();
        let src = std::fs::File::open(d.join("src")).unwrap();
        let dst = std::fs::File::create(d.join("dst")).unwrap();
        copy_data(src.as_fd(), dst.as_fd(), size, None).unwrap();
        let m = std::fs::metadata(d.join("dst")).unwrap();
        assert_eq!(m.len(), size);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "holes kept: {} blocks",
            m.blocks()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A lookup that read the branches before a copy-up (a READDIRPLUS of the directory
    /// beside a chmod through the file's name) and records what it saw after the copy-up
    /// finished: the node stays in the upper. When the lookup's record replaced the
    /// location, the node was "lower" again, and the next link copied it up a second time
    /// over the first copy (EEXIST; the stress test's "File exists").
    #[test]
    fn a_lookup_older_than_a_copy_up_does_not_undo_it() {
        use crate::layers::ROOT_INO;
        use std::ffi::OsStr;
        let base = scratch("stale-lookup");
        let (l, u, w, m) = (
            base.join("l"),
            base.join("u"),
            base.join("w"),
            base.join("m"),
        );
        for d in [&l, &u, &w, &m] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir(l.join("d")).unwrap();
        std::fs::write(l.join("d/f"), b"lower\n").unwrap();
        let ufs = UnionFs::for_test(&l, &u, &w, &m, "");
        let d = ufs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        let f = ufs.lookup(d.node, OsStr::new("f")).unwrap();
        let node = ufs.node(f.node).unwrap();
        // The racing lookup reads the branches: the file is only in the lower.
        let seen = crate::inode::epoch();
        let dnode = ufs.node(d.node).unwrap();
        let ploc = dnode.loc();
        let found = crate::lookup::lookup(&ufs.layers, &ploc, OsStr::new("f"))
            .unwrap()
            .unwrap();
        assert_ne!(found.top, UPPER);
        // Meanwhile the file is copied up (a chmod through its name)...
        ufs.copy_up(&node, CopyUp::Meta).unwrap();
        assert!(node.loc().in_upper());
        // ...and the lookup records what it saw.
        let again = ufs
            .enter(d.node, &ploc, OsStr::new("f"), found, seen)
            .unwrap();
        assert_eq!(again.node, f.node);
        assert!(
            node.loc().in_upper(),
            "the copy-up was undone by an older lookup"
        );
        // A link now links the copy: no second copy-up over the first.
        ufs.link(f.node, ROOT_INO, OsStr::new("h")).unwrap();
        let cu = std::fs::metadata(u.join("d/f")).unwrap();
        let hu = std::fs::metadata(u.join("h")).unwrap();
        assert_eq!((cu.ino(), cu.nlink()), (hu.ino(), 2));
        assert_eq!(std::fs::metadata(l.join("d/f")).unwrap().nlink(), 1);
        drop(ufs);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The stress test's "link t1-h8 ...: ENOENT": a lower file linked through the mount
    /// (copied up), a READDIRPLUS of its first directory that read it before the copy-up
    /// recorded after it, its first name removed (the node pinned to the copy), then a link
    /// of its second name: the node, taken for "lower" and nameless, was copied up again
    /// to an anonymous file, which cannot get a name (ENOENT).
    #[test]
    fn a_lookup_older_than_a_link_keeps_the_other_name_linkable() {
        use crate::layers::ROOT_INO;
        use std::ffi::OsStr;
        let base = scratch("stale-link");
        let (l, u, w, m) = (
            base.join("l"),
            base.join("u"),
            base.join("w"),
            base.join("m"),
        );
        for d in [&l, &u, &w, &m] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir(l.join("d")).unwrap();
        std::fs::write(l.join("d/f"), b"lower\n").unwrap();
        let ufs = UnionFs::for_test(&l, &u, &w, &m, "");
        let d = ufs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        let f = ufs.lookup(d.node, OsStr::new("f")).unwrap();
        let seen = crate::inode::epoch();
        let ploc = ufs.node(d.node).unwrap().loc();
        let found = crate::lookup::lookup(&ufs.layers, &ploc, OsStr::new("f"))
            .unwrap()
            .unwrap();
        let h = ufs.link(f.node, ROOT_INO, OsStr::new("h")).unwrap();
        assert_eq!(h.node, f.node);
        ufs.enter(d.node, &ploc, OsStr::new("f"), found, seen)
            .unwrap();
        ufs.remove(d.node, OsStr::new("f"), false).unwrap();
        ufs.link(h.node, ROOT_INO, OsStr::new("h2"))
            .expect("link of the remaining name");
        assert_eq!(std::fs::read(u.join("h2")).unwrap(), b"lower\n");
        let hu = std::fs::metadata(u.join("h")).unwrap();
        assert_eq!(std::fs::metadata(u.join("h2")).unwrap().ino(), hu.ino());
        drop(ufs);
        let _ = std::fs::remove_dir_all(&base);
    }
}

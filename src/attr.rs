//! Metadata: getattr, statfs, xattrs and access (the kernel's `inode.c`, `xattrs.c`).
//! Attributes come from the topmost real entry; overlay-private xattrs are never shown.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::copy_up::CopyUp;
use crate::error::{err, Error, Result};
use crate::fileattr::Change;
use crate::fs::{Caller, UnionFs};
use crate::inode::Kind;
use crate::sys::{self, ops, xattr, Stat};
use crate::whiteout;

pub use crate::types::Attr;

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

impl Attr {
    /// Placeholder attributes for a negative entry (only its TTL matters to the kernel).
    pub fn negative() -> Attr {
        Attr {
            ino: 0,
            node: 0,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            kind: Kind::File,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 0,
        }
    }

    /// The mode with its type bits (`S_IFREG | perm`, …).
    pub fn mode(&self) -> u32 {
        let fmt = match self.kind {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        };
        fmt | self.perm as u32
    }

    /// From a real entry's stat. `merged` directories report one link, as the kernel's.
    pub fn from_stat(st: &Stat, ino: u64, merged: bool) -> Attr {
        Attr {
            ino,
            node: ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            kind: Kind::from_mode(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: if merged { 1 } else { st.st_nlink as u32 },
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }
}

/// Filesystem statistics.
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl UnionFs {
    /// Attributes of `ino`; with an open file handle, of the file it has open (so an
    /// unlinked open file still answers, with its real link count).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        if let Some(h) = fh.and_then(|fh| self.files.get(&fh).map(|h| h.clone())) {
            if h.ino == ino {
                let mut st = sys::fstat(h.fd().as_fd())?;
                if h.data_only {
                    // A metacopy file's handle is on the data; the metadata is the node's.
                } else {
                    if self.shows_overrides() {
                        let layer = self.node(ino).map(|n| n.loc.read().top).unwrap_or(0);
                        self.show_override(&mut st, layer, h.fd().as_fd(), c"");
                    }
                    if self.index.is_some()
                        && st.st_nlink > 1
                        && self
                            .node(ino)
                            .is_ok_and(|n| self.layers.writable(n.loc.read().top))
                    {
                        st.st_nlink = crate::index::union_nlink(h.fd().as_fd(), c"", &st);
                    }
                    let mut a = self.attr(&st, self.shown_ino(ino, &st), false);
                    a.node = ino;
                    return Ok(a);
                }
            }
        }
        let node = self.node(ino)?;
        let real = self.real(&node)?;
        let keep = self.keep_lower_attrs
            && !self.layers.writable(real.loc.top)
            && real.loc.pinned.is_none();
        let st = match &real.loc.lower_attr {
            Some(st) if keep => **st,
            _ => {
                let mut st = sys::fstatat(real.dir.as_fd(), &real.name)
                    .map_err(|e| Error::io(e, "getattr"))?;
                self.show_override(&mut st, real.loc.top, real.dir.as_fd(), &real.name);
                if let Some(data) = &real.loc.data {
                    if let Ok(d) = sys::fstat(data.as_fd()) {
                        st.st_blocks = d.st_blocks;
                    }
                }
                if self.index.is_some()
                    && self.layers.writable(real.loc.top)
                    && !node.is_dir()
                    && st.st_nlink > 1
                {
                    st.st_nlink = crate::index::union_nlink(real.dir.as_fd(), &real.name, &st);
                }
                if keep {
                    let mut l = node.loc.write();
                    // Still the same lower entry (no copy-up or new lookup meanwhile).
                    if l.top == real.loc.top && l.pinned.is_none() && !self.layers.writable(l.top) {
                        l.lower_attr = Some(std::sync::Arc::new(st));
                    }
                }
                st
            }
        };
        // Merged from several branches (whichever are writable), as `Found::merged`.
        let merged = node.is_dir() && real.loc.dirs.len() > 1;
        let mut a = self.attr(&st, self.shown_ino(ino, &st), merged);
        a.node = ino;
        Ok(a)
    }

    /// The stat of `ino`'s real entry with its owner override applied: owner and mode as
    /// stored, before any id mapping.
    pub(crate) fn stored_stat(&self, ino: u64) -> Result<Stat> {
        let node = self.node(ino)?;
        let real = self.real(&node)?;
        let mut st =
            sys::fstatat(real.dir.as_fd(), &real.name).map_err(|e| Error::io(e, "getattr"))?;
        self.show_override(&mut st, real.loc.top, real.dir.as_fd(), &real.name);
        Ok(st)
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != Kind::Symlink {
            return err(libc::EINVAL);
        }
        let real = self.real(&node)?;
        sys::readlinkat(real.dir.as_fd(), &real.name).map_err(|e| Error::io(e, "readlink"))
    }

    /// Statistics of the highest writable branch's filesystem (the highest lower's when
    /// none is writable); with `sum`, of every writable branch's filesystem added up, each
    /// filesystem once (aufs's `sum`: a pool of disks shows its total size and free space).
    pub fn statfs(&self) -> Result<Statfs> {
        let stack = self.layers.stack();
        let writable: Vec<&std::sync::Arc<crate::layers::Layer>> = self
            .layers
            .upper
            .iter()
            .chain(stack.writable_lowers())
            .collect();
        let first = writable
            .first()
            .copied()
            .or_else(|| stack.lowers.first())
            .ok_or_else(|| Error::errno(libc::EIO))?;
        let s = sys::fstatvfs(first.root.as_fd())?;
        let mut out = Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: crate::fs::NAME_MAX as u32,
            frsize: s.f_frsize as u32,
        };
        if !self.sum {
            return Ok(out);
        }
        let unit = s.f_frsize.max(1);
        // Each filesystem once (two branches on one disk are one disk's space).
        let mut seen = vec![first.dev];
        for l in writable.iter().skip(1) {
            if seen.contains(&l.dev) {
                continue;
            }
            seen.push(l.dev);
            let v = sys::fstatvfs(l.root.as_fd())?;
            let scale = |n: u64| n.saturating_mul(v.f_frsize) / unit;
            out.blocks = out.blocks.saturating_add(scale(v.f_blocks));
            out.bfree = out.bfree.saturating_add(scale(v.f_bfree));
            out.bavail = out.bavail.saturating_add(scale(v.f_bavail));
            out.files = out.files.saturating_add(v.f_files);
            out.ffree = out.ffree.saturating_add(v.f_ffree);
        }
        Ok(out)
    }

    /// One xattr of the topmost real entry; overlay markers do not exist, and names in the
    /// overlay namespace are escaped as the kernel does (see `whiteout::xattr_to_real`).
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if self.noxattrs {
            return err(libc::ENOTSUP);
        }
        if self.is_override_xattr(name.as_bytes()) {
            return err(libc::ENODATA);
        }
        let real_name =
            whiteout::xattr_to_real(name.as_bytes()).ok_or_else(|| Error::errno(libc::ENODATA))?;
        let cname = std::ffi::CString::new(real_name).map_err(|_| Error::errno(libc::EINVAL))?;
        let node = self.node(ino)?;
        if self.lower_lacks_xattr(&node, cname.as_bytes()) {
            return err(libc::ENODATA);
        }
        let real = self.real(&node)?;
        if !self.lower_may_have_xattr(&node, &real, cname.as_bytes()) {
            return err(libc::ENODATA);
        }
        match xattr::get(real.dir.as_fd(), &real.name, &cname) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => err(libc::ENODATA),
            Err(e) => Err(Error::io(e, "getxattr")),
        }
    }

    /// False when `real` (node's real entry) is a lower entry known not to have xattr
    /// `real_name`: its names were read once (`Loc::lower_xattrs`, kept only where the
    /// lowers are assumed not to change: `keep_lower_attrs`) and the name is not among
    /// them. Only for the namespaces whose names every Linux filesystem lists (user,
    /// trusted, security, POSIX ACLs); the upper, which changes, is always asked.
    /// The common case of [`lower_may_have_xattr`] without copying the location: the
    /// names are already kept and `real_name` is not among them.
    fn lower_lacks_xattr(&self, node: &crate::inode::Node, real_name: &[u8]) -> bool {
        if !self.keep_lower_attrs || !listed_xattr_ns(real_name) {
            return false;
        }
        let l = node.loc.read();
        match &l.lower_xattrs {
            Some(names) if !self.layers.writable(l.top) && l.pinned.is_none() => {
                !names.split(|&b| b == 0).any(|n| n == real_name)
            }
            _ => false,
        }
    }

    fn lower_may_have_xattr(
        &self,
        node: &crate::inode::Node,
        real: &crate::fs::Real,
        real_name: &[u8],
    ) -> bool {
        if !self.keep_lower_attrs
            || self.layers.writable(real.loc.top)
            || real.loc.pinned.is_some()
            || !listed_xattr_ns(real_name)
        {
            return true;
        }
        let names = match &real.loc.lower_xattrs {
            Some(n) => n.clone(),
            None => {
                let Ok(list) = xattr::list(real.dir.as_fd(), &real.name) else {
                    return true;
                };
                let names: std::sync::Arc<[u8]> = std::sync::Arc::from(list.as_slice());
                let mut l = node.loc.write();
                // Still the same lower entry (no copy-up or new lookup meanwhile).
                if l.top == real.loc.top && l.pinned.is_none() && !self.layers.writable(l.top) {
                    l.lower_xattrs = Some(names.clone());
                }
                names
            }
        };
        names.split(|&b| b == 0).any(|n| n == real_name)
    }

    /// The visible xattr names of the topmost real entry, NUL-separated.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        if self.noxattrs {
            return err(libc::ENOTSUP);
        }
        let node = self.node(ino)?;
        let real = self.real(&node)?;
        let list =
            xattr::list(real.dir.as_fd(), &real.name).map_err(|e| Error::io(e, "listxattr"))?;
        let shown = whiteout::filter_xattr_list(&list);
        if self.override_level.is_none() {
            return Ok(shown);
        }
        let mut out = Vec::with_capacity(shown.len());
        for n in shown.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !self.is_override_xattr(n) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// With `xattr_permissions`, the override names are the mount's own: hidden, and not
    /// settable (a user could otherwise make a file show as root's and setuid).
    fn is_override_xattr(&self, name: &[u8]) -> bool {
        self.override_level
            .is_some_and(|l| l.is_override_name(name))
    }

    /// POSIX permission check of `mask` (R_OK/W_OK/X_OK) for `caller` against the mode
    /// bits (used when the kernel is not doing it itself with `default_permissions`).
    pub fn access(&self, ino: u64, mask: i32, caller: Caller) -> Result<()> {
        let a = self.getattr(ino, None)?;
        if mask & libc::W_OK != 0 && self.is_read_only() {
            return err(libc::EROFS);
        }
        let mode = a.perm as i32;
        if caller.uid == 0 {
            if mask & libc::X_OK != 0 && a.kind != Kind::Dir && mode & 0o111 == 0 {
                return err(libc::EACCES);
            }
            return Ok(());
        }
        let shift = if caller.uid == a.uid {
            6
        } else if crate::cred::in_group(&caller, a.gid) {
            3
        } else {
            0
        };
        let granted = (mode >> shift) & 7;
        if granted & mask != mask & 7 {
            return err(libc::EACCES);
        }
        Ok(())
    }
}

/// What a SETATTR asks to change.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<ops::SetTime>,
    pub mtime: Option<ops::SetTime>,
    /// The open file the change comes through (ftruncate, futimens), if any.
    pub fh: Option<u64>,
    /// Who asks (from the request): a truncate or chown by a caller the kernel's rules do
    /// not exempt drops setuid/setgid bits (cred.rs). `None`: the daemon's own change.
    pub caller: Option<Caller>,
}

impl SetAttr {
    /// No field and no file handle: nothing asked but what the kernel left to the daemon.
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
            && self.fh.is_none()
    }

    /// Would this leave attributes `cur` as they are?
    fn changes_nothing(&self, cur: &Attr) -> bool {
        let same_time = |t: Option<ops::SetTime>, now: SystemTime| match t {
            None | Some(ops::SetTime::Omit) => true,
            Some(ops::SetTime::At(sec, nsec)) => time(sec, nsec) == now,
            Some(ops::SetTime::Now) => false,
        };
        self.mode.is_none_or(|m| m & 0o7777 == cur.perm as u32)
            && self.uid.is_none_or(|u| u == cur.uid)
            && self.gid.is_none_or(|g| g == cur.gid)
            && self.size.is_none_or(|z| z == cur.size)
            && same_time(self.atime, cur.atime)
            && same_time(self.mtime, cur.mtime)
    }
}

impl UnionFs {
    /// chmod/chown/truncate/utimens. The entry is copied up first (without its data when it
    /// is truncated to zero).
    pub fn setattr(&self, ino: u64, s: SetAttr) -> Result<Attr> {
        if self.is_read_only() {
            return err(libc::EROFS);
        }
        let node = self.node(ino)?;
        if s.size.is_some() && node.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        self.check_change(&node, setattr_change(&s))?;
        // No field at all: chown(-1, -1), or a write's removal of privileges (see
        // `drop_privs_for`); either way a change of the inode, made as one below.
        let touch = s.is_empty();
        let s = self.drop_privs_for(ino, s)?;
        // Ids given through the mount are stored mapped (uidmapping=/gidmapping=); one no
        // range covers is stored as the overflow id, as fuse-overlayfs does.
        let uid = s.uid.map(|u| self.ids.uids.disk(u));
        let gid = s.gid.map(|g| self.ids.gids.disk(g));
        let want = match s.size {
            Some(0) => CopyUp::Empty,
            Some(_) => CopyUp::Data,
            None => CopyUp::Meta,
        };
        {
            let loc = node.loc.read();
            let nameless_lower = loc.pinned.is_some() && !self.layers.writable(loc.top);
            drop(loc);
            // A lower file whose name is gone would be copied to an anonymous file that
            // nothing else can see: not for a change that changes nothing. (The kernel's
            // writeback cache sends one at the close of an unlinked file: its unchanged
            // mtime, and a ctime, which is not settable.)
            if nameless_lower {
                let cur = self.getattr(ino, None)?;
                if s.changes_nothing(&cur) {
                    return Ok(cur);
                }
            }
        }
        self.copy_up(&node, want)?;
        let real = self.real(&node)?;
        let (dir, name) = (real.dir.as_fd(), real.name.as_c_str());
        self.change_owner_mode(dir, name, uid, gid, s.mode, touch)?;
        if let Some(size) = s.size {
            let h =
                s.fh.and_then(|fh| self.handle(fh).ok())
                    .filter(|h| h.ino == ino && !h.data_only);
            match h {
                Some(h) if h.flags & libc::O_ACCMODE != libc::O_RDONLY => {
                    ops::ftruncate(h.fd().as_fd(), size).map_err(|e| Error::io(e, "truncate"))?
                }
                _ => {
                    let fd = real
                        .open(libc::O_WRONLY)
                        .map_err(|e| Error::io(e, "truncate open"))?;
                    ops::ftruncate(fd.as_fd(), size).map_err(|e| Error::io(e, "truncate"))?;
                }
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            ops::utimensat(
                dir,
                name,
                s.atime.unwrap_or(ops::SetTime::Omit),
                s.mtime.unwrap_or(ops::SetTime::Omit),
            )
            .map_err(|e| Error::io(e, "utimens"))?;
        }
        self.getattr(ino, None)
    }

    /// The owner and mode part of a setattr on the real entry `dir`/`name` (ids already
    /// mapped to the disk's). `touch`: the request had no field (chown(-1, -1)): the real
    /// entry gets a chown(-1, -1) too, which changes no owner but is a change of the inode
    /// (its ctime, as the kernel overlayfs's setattr of its upper; file capabilities go,
    /// as a chown takes them).
    fn change_owner_mode(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
        touch: bool,
    ) -> Result<()> {
        let overridden = (uid.is_some() || gid.is_some() || mode.is_some())
            && self.set_override(dir, name, uid, gid, mode)?;
        if !overridden {
            if uid.is_some() || gid.is_some() {
                ops::fchownat(dir, name, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                    .map_err(|e| Error::io(e, "chown"))?;
            }
            if let Some(mode) = mode {
                ops::fchmodat(dir, name, mode & 0o7777).map_err(|e| Error::io(e, "chmod"))?;
            }
        }
        if touch {
            ops::fchownat(dir, name, u32::MAX, u32::MAX).map_err(|e| Error::io(e, "chown"))?;
        }
        Ok(())
    }

    /// A truncate or chown drops the setuid/setgid bits the kernel's rules say it drops for
    /// this caller (the kernel sends part of that as a mode change in the same request; the
    /// real change, made with the daemon's credentials, would keep the rest).
    ///
    /// A request that changes nothing at all (no field, no file handle) is the kernel's
    /// `__remove_privs` with FUSE_HANDLE_KILLPRIV_V2: the FUSE module takes the setuid/setgid
    /// part of the change out and leaves it to the daemon. It comes from `file_remove_privs`
    /// before a write (also one done by passthrough, which never reaches the daemon),
    /// fallocate or copy_file_range by a writer the kernel found must drop bits, so while the
    /// file is open for writing it drops what a write drops; else it is `chown(-1, -1)`,
    /// which drops what a chown drops. (`utimensat` with both times UTIME_OMIT does not
    /// come here: tests/remove_privs.rs, operation `omit`.)
    fn drop_privs_for(&self, ino: u64, mut s: SetAttr) -> Result<SetAttr> {
        let Some(caller) = s.caller else {
            return Ok(s);
        };
        let chown = s.uid.is_some() || s.gid.is_some();
        let remove_privs = s.is_empty();
        if s.size.is_none() && !chown && !remove_privs {
            return Ok(s);
        }
        let a = self.getattr(ino, None)?;
        if a.perm as u32 & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(s);
        }
        let mut drop = 0;
        let written = remove_privs && self.open_for_write(ino);
        if s.size.is_some() || written {
            drop |= crate::cred::drop_on_write(a.mode(), a.gid, &caller);
        }
        if chown || (remove_privs && !written) {
            drop |= crate::cred::drop_on_chown(a.mode(), a.gid, &caller);
        }
        if drop != 0 {
            s.mode = Some(s.mode.unwrap_or(a.perm as u32) & !drop);
        }
        Ok(s)
    }

    /// Before `caller` writes through handle `fh` of `ino` (write, fallocate,
    /// copy_file_range): drops what `file_remove_privs` would, as a mode change. Requests
    /// without a thread id (the kernel's own writeback of mmap'ed pages) drop nothing: the
    /// kernel removes no bits for those either. True when the mode changed: the kernel's
    /// cached attributes do not know it then (a write's reply carries none).
    pub(crate) fn remove_privs(&self, ino: u64, fh: u64, caller: &Caller) -> Result<bool> {
        if caller.pid == 0 {
            return Ok(false);
        }
        let a = self.getattr(ino, Some(fh))?;
        let drop = crate::cred::drop_on_write(a.mode(), a.gid, caller);
        if drop != 0 {
            self.setattr(
                ino,
                SetAttr {
                    mode: Some(a.perm as u32 & !drop),
                    ..Default::default()
                },
            )?;
        }
        Ok(drop != 0)
    }

    /// With `xattr_permissions`: chown/chmod of the (upper) `dir/name` rewrite its override
    /// instead of the real owner and mode. False where no override applies (no option, or
    /// a type that cannot carry the xattr): the caller changes the real entry then.
    fn set_override(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<bool> {
        use crate::override_stat::{self as ov, Override};
        let Some(level) = self.override_level else {
            return Ok(false);
        };
        let st = sys::fstatat(dir, name).map_err(|e| Error::io(e, "getattr"))?;
        let mut o = ov::read(level, dir, name).unwrap_or_else(|| Override::from_stat(&st));
        let mut shown = st;
        o.apply(&mut shown);
        if let Some(u) = uid {
            o.uid = u;
        }
        if let Some(g) = gid {
            o.gid = g;
        }
        if let Some(m) = mode {
            o.mode = m & 0o7777;
        } else if (uid.is_some() || gid.is_some()) && shown.st_mode & libc::S_IFMT != libc::S_IFDIR
        {
            // chown clears setuid, and setgid where it means "group-executable", as the
            // kernel does for a real chown.
            o.mode &= !libc::S_ISUID;
            if o.mode & 0o010 != 0 {
                o.mode &= !libc::S_ISGID;
            }
        }
        match ov::write(level, dir, name, &o) {
            Ok(()) => Ok(true),
            // user.* xattrs cannot go on symlinks, pipes, sockets or devices.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP))
                    && st.st_mode & libc::S_IFMT != libc::S_IFREG
                    && st.st_mode & libc::S_IFMT != libc::S_IFDIR =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::io(e, "set owner override")),
        }
    }

    /// setxattr on the entry's upper copy. Overlay-private names are refused.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.change_xattr(ino, name, Some((value, flags)))
    }

    /// setxattr by `caller`. Setting an access ACL first drops the setgid bit where the
    /// caller is neither in the file's group nor holds CAP_FSETID, as the kernel overlayfs
    /// does before it sets the ACL with the mounter's credentials (xfstests generic/375).
    /// The kernel's FUSE module says so in FUSE_SETXATTR_ACL_KILL_SGID, a flag of the
    /// extended setxattr request that fuser 0.18 cannot decode, so the rule is applied here.
    pub fn setxattr_as(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        if self.acl
            && !self.is_read_only()
            && name.as_bytes() == crate::acl::ACCESS_XATTR.to_bytes()
        {
            let a = self.getattr(ino, None)?;
            if crate::cred::drop_on_acl(a.mode(), a.gid, &caller) != 0 {
                self.setattr(
                    ino,
                    SetAttr {
                        mode: Some(a.perm as u32 & !libc::S_ISGID),
                        ..Default::default()
                    },
                )?;
            }
        }
        self.setxattr(ino, name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.change_xattr(ino, name, None)
    }

    fn change_xattr(&self, ino: u64, name: &OsStr, set: Option<(&[u8], i32)>) -> Result<()> {
        if self.noxattrs {
            return err(libc::ENOTSUP);
        }
        if self.is_override_xattr(name.as_bytes()) {
            return err(libc::EPERM);
        }
        let real_name =
            whiteout::xattr_to_real(name.as_bytes()).ok_or_else(|| Error::errno(libc::EPERM))?;
        if self.is_read_only() {
            return err(libc::EROFS);
        }
        let cname = std::ffi::CString::new(real_name).map_err(|_| Error::errno(libc::EINVAL))?;
        let node = self.node(ino)?;
        self.check_change(&node, Change::Meta)?;
        if set.is_none() {
            // Removing what is not there must not copy anything up.
            self.getxattr(ino, name)?;
        }
        self.copy_up(&node, CopyUp::Meta)?;
        let real = self.real(&node)?;
        match set {
            Some((value, flags)) => xattr::set(real.dir.as_fd(), &real.name, &cname, value, flags),
            None => xattr::remove(real.dir.as_fd(), &real.name, &cname),
        }
        .map_err(|e| Error::io(e, "xattr"))
    }
}

/// What a SETATTR changes, for the immutable and append-only checks: the owner, mode, size
/// or a given time are refused for both; times set to now only for an immutable file (the
/// VFS asks write permission then, which an append-only file gives).
fn setattr_change(s: &SetAttr) -> Change {
    let given = |t: &Option<ops::SetTime>| matches!(t, Some(ops::SetTime::At(..)));
    if s.mode.is_some()
        || s.uid.is_some()
        || s.gid.is_some()
        || s.size.is_some()
        || given(&s.atime)
        || given(&s.mtime)
    {
        Change::Meta
    } else {
        // Times set to now, or nothing (a write's removal of privileges).
        Change::Write { append: true }
    }
}

/// Namespaces whose names every Linux filesystem lists (see `lower_may_have_xattr`).
fn listed_xattr_ns(real_name: &[u8]) -> bool {
    [
        &b"user."[..],
        b"trusted.",
        b"security.",
        b"system.posix_acl_access",
        b"system.posix_acl_default",
    ]
    .iter()
    .any(|p| real_name.starts_with(p))
}

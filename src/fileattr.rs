//! File attributes (`chattr`/`lsattr`: FS_IOC_GETFLAGS/SETFLAGS, FS_IOC_FSGETXATTR/
//! FSSETXATTR), as the kernel overlayfs keeps them (fs/overlayfs/inode.c `ovl_fileattr_*`,
//! util.c `ovl_set_protattr`, copy_up.c `ovl_copy_fileattr`):
//! - reading answers the real object's flags (upper, else the topmost lower);
//! - setting copies the object up first, then sets the flags on the upper object, except
//!   immutable (`i`) and append-only (`a`): those go to the `overlay.protattr` xattr
//!   ("a", "i" or "ai") and never onto the upper inode (an immutable upper file could not
//!   take a marker, nor a copied-up child be linked into an immutable directory), and are
//!   added back when read;
//! - a copy-up carries the lower's sync and noatime flags over, and its immutable and
//!   append-only flags into `overlay.protattr`.
//!
//! The kernel overlayfs enforces `i`/`a` with the VFS's own checks on its inode. A FUSE
//! inode carries no such flags, so the daemon refuses the changes itself ([`Change`],
//! `UnionFs::check_change`), as the VFS would: EPERM. Each node caches what protects it
//! (`Node::prot`): an upper entry's from the markers its lookup reads anyway (no extra call),
//! a lower entry's from one `statx` at the first change asked of it.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::copy_up::CopyUp;
use crate::error::{err, Error, Result};
use crate::fs::UnionFs;
use crate::inode::{Kind, Node};
use crate::lookup::Found;
use crate::sys::fileattr::{
    self as fa, Fsxattr, FS_APPEND_FL, FS_IMMUTABLE_FL, FS_NOATIME_FL, FS_SYNC_FL, FS_XFLAG_APPEND,
    FS_XFLAG_IMMUTABLE,
};
use crate::sys::{self, xattr};
use crate::whiteout;

pub use crate::whiteout::{prot_of_marker, PROT_KNOWN};
const PROT_FLAGS: u32 = FS_IMMUTABLE_FL | FS_APPEND_FL;
const PROT_XFLAGS: u32 = FS_XFLAG_IMMUTABLE | FS_XFLAG_APPEND;
/// The flags a copy-up carries to the upper inode.
const COPY_FLAGS: u32 = FS_SYNC_FL | FS_NOATIME_FL;

fn marker_value(bits: u32) -> Vec<u8> {
    let mut v = Vec::new();
    if bits & FS_APPEND_FL != 0 {
        v.push(b'a');
    }
    if bits & FS_IMMUTABLE_FL != 0 {
        v.push(b'i');
    }
    v
}

/// A change the `i`/`a` flags may forbid (the VFS's checks: `may_open`, `notify_change`,
/// `may_delete`, `vfs_link`, `xattr_permission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An open for writing or a truncate: `append` when only appending (O_APPEND, no
    /// O_TRUNC), which an append-only file allows.
    Write { append: bool },
    /// Owner, mode, times, size, xattrs.
    Meta,
    /// The object loses a name (unlink, rmdir, rename from or over) or gets another (link).
    Name,
    /// A directory gets a new entry.
    AddEntry,
    /// A directory loses an entry.
    RemoveEntry,
}

/// What a FUSE_IOCTL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    GetFlags,
    SetFlags(u32),
    GetXattr,
    SetXattr(Fsxattr),
}

impl UnionFs {
    /// Refuses `change` of `node` (EPERM) if its `i` or `a` flag forbids it.
    pub(crate) fn check_change(&self, node: &Node, change: Change) -> Result<()> {
        refuse(self.prot_flags(node), change)
    }

    /// As [`UnionFs::check_change`] for an entry a lookup `found` at `name` in directory
    /// `parent` (not a node: the victim of an unlink or a rename).
    pub(crate) fn check_found(
        &self,
        found: &Found,
        parent: &Node,
        name: &CStr,
        change: Change,
    ) -> Result<()> {
        let p = if found.prot & PROT_KNOWN != 0 {
            u32::from(found.prot & !PROT_KNOWN)
        } else if let Some((_, d)) = found.dirs.first() {
            fa::protection_flags(d.as_fd(), c"").unwrap_or(0)
        } else if let Some(d) = parent.loc.read().dir_in(found.top) {
            fa::protection_flags(d.as_fd(), name).unwrap_or(0)
        } else {
            0
        };
        refuse(p, change)
    }

    /// The checks of a rename of `src` (entry, name) in `pnode` to `npnode`, over `dst`.
    pub(crate) fn check_rename(
        &self,
        pnode: &Node,
        npnode: &Node,
        src: (&Found, &CStr),
        dst: Option<(&Found, &CStr)>,
    ) -> Result<()> {
        self.check_change(pnode, Change::RemoveEntry)?;
        self.check_change(npnode, Change::AddEntry)?;
        self.check_found(src.0, pnode, src.1, Change::Name)?;
        if let Some((d, name)) = dst {
            self.check_change(npnode, Change::RemoveEntry)?;
            self.check_found(d, npnode, name, Change::Name)?;
        }
        Ok(())
    }

    /// The `FS_IMMUTABLE_FL | FS_APPEND_FL` bits protecting `node` (read once, then cached).
    pub(crate) fn prot_flags(&self, node: &Node) -> u32 {
        let p = node.prot.load(Ordering::Relaxed);
        if p & PROT_KNOWN != 0 {
            return u32::from(p & !PROT_KNOWN);
        }
        let Ok(real) = self.real(node) else { return 0 };
        let p = if self.layers.writable(real.loc.top) {
            prot_of_marker(whiteout::marker(real.dir.as_fd(), &real.name, "protattr").as_deref())
        } else {
            let bits = fa::protection_flags(real.dir.as_fd(), &real.name).unwrap_or(0);
            PROT_KNOWN | bits as u8
        };
        node.prot.store(p, Ordering::Relaxed);
        u32::from(p & !PROT_KNOWN)
    }

    /// Serves a file attribute request on node `ino`: the reply's bytes.
    pub fn fileattr(&self, ino: u64, req: Request) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if !matches!(node.kind, Kind::File | Kind::Dir) {
            return err(libc::ENOTTY);
        }
        match req {
            Request::GetFlags => {
                let flags = fa::get_flags(self.open_real(&node)?.as_fd())
                    .map_err(|e| Error::io(e, "FS_IOC_GETFLAGS"))?;
                let flags = flags | self.upper_prot(&node);
                Ok(flags.to_ne_bytes().to_vec())
            }
            Request::GetXattr => {
                let mut x = fa::get_fsxattr(self.open_real(&node)?.as_fd())
                    .map_err(|e| Error::io(e, "FS_IOC_FSGETXATTR"))?;
                x.xflags |= xflags_of(self.upper_prot(&node));
                Ok(x.to_bytes())
            }
            Request::SetFlags(flags) => {
                self.set_fileattr(&node, flags & PROT_FLAGS, |fd| {
                    fa::set_flags(fd, flags & !PROT_FLAGS)
                })?;
                Ok(Vec::new())
            }
            Request::SetXattr(x) => {
                let prot = flags_of_xflags(x.xflags);
                let real = Fsxattr {
                    xflags: x.xflags & !PROT_XFLAGS,
                    ..x
                };
                self.set_fileattr(&node, prot, |fd| fa::set_fsxattr(fd, &real))?;
                Ok(Vec::new())
            }
        }
    }

    /// The `i`/`a` flags an upper object keeps in its marker (none for a lower object: its
    /// real flags are its own).
    fn upper_prot(&self, node: &Node) -> u32 {
        if self.layers.writable(node.loc.read().top) {
            self.prot_flags(node)
        } else {
            0
        }
    }

    /// Copies `node` up, records `prot` (the `i`/`a` bits asked for) in its marker, then
    /// sets the rest with `set` on the upper object.
    fn set_fileattr(
        &self,
        node: &std::sync::Arc<Node>,
        prot: u32,
        set: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<()>,
    ) -> Result<()> {
        self.check_writable()?;
        self.copy_up(node, CopyUp::Meta)?;
        let real = self.real(node)?;
        let had = self.prot_flags(node);
        self.write_protattr(real.dir.as_fd(), &real.name, prot, had != 0)?;
        node.prot.store(PROT_KNOWN | prot as u8, Ordering::Relaxed);
        let fd = self.open_real(node)?;
        set(fd.as_fd()).map_err(|e| Error::io(e, "set file attributes"))
    }

    /// Writes `overlay.protattr` of the upper `dir/name` for the bits `prot` (removes it
    /// when none and `had` some). EPERM where the upper takes no xattrs, as the kernel.
    fn write_protattr(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &CStr,
        prot: u32,
        had: bool,
    ) -> Result<()> {
        let attr = self.layers.marker("protattr");
        if prot != 0 {
            xattr::set(dir, name, &attr, &marker_value(prot), 0)
                .map_err(|e| Error::new(libc::EPERM, format!("set protattr: {e}")))?;
        } else if had {
            for p in crate::layers::READ_PREFIXES {
                let mut a = p.to_bytes().to_vec();
                a.extend_from_slice(b"protattr");
                if let Ok(a) = std::ffi::CString::new(a) {
                    let _ = xattr::remove(dir, name, &a);
                }
            }
        }
        Ok(())
    }

    /// The node's real object (its top layer), opened read-only for an ioctl.
    fn open_real(&self, node: &Node) -> Result<OwnedFd> {
        let real = self.real(node)?;
        let extra = if node.kind == Kind::Dir {
            libc::O_DIRECTORY
        } else {
            libc::O_NONBLOCK | libc::O_NOCTTY
        };
        real.open(libc::O_RDONLY | extra)
            .map_err(|e| Error::io(e, "open for file attributes"))
    }

    /// At a copy-up of a regular file or directory, onto its staged copy `dir/name`: the
    /// lower's sync and noatime flags, and its immutable and append-only flags as the
    /// `overlay.protattr` marker. A lower that has no flags to give (ENOTTY, EOPNOTSUPP,
    /// EINVAL) gives none.
    pub(crate) fn copy_fileattr(
        &self,
        src: &crate::fs::Real,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<()> {
        let flags = match src
            .open(libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)
            .and_then(|fd| fa::get_flags(fd.as_fd()))
        {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        if flags & PROT_FLAGS != 0 {
            // No xattrs on the upper: the kernel goes on without the marker.
            let _ = self.write_protattr(dir, name, flags & PROT_FLAGS, false);
        }
        if flags & COPY_FLAGS == 0 {
            return Ok(());
        }
        let Ok(out) = sys::openat(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0) else {
            return Ok(());
        };
        let Ok(now) = fa::get_flags(out.as_fd()) else {
            return Ok(());
        };
        let want = (now & !COPY_FLAGS) | (flags & COPY_FLAGS);
        match fa::set_flags(out.as_fd(), want) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EOPNOTSUPP)) => Ok(()),
            Err(e) => Err(Error::io(e, "copy-up file attributes")),
        }
    }
}

/// EPERM if the `i`/`a` bits `p` forbid `change`.
fn refuse(p: u32, change: Change) -> Result<()> {
    if p == 0 {
        return Ok(());
    }
    let refused = match change {
        Change::Write { append } => p & FS_IMMUTABLE_FL != 0 || !append,
        Change::AddEntry => p & FS_IMMUTABLE_FL != 0,
        Change::Meta | Change::Name | Change::RemoveEntry => true,
    };
    if refused {
        return Err(Error::new(libc::EPERM, "immutable or append-only"));
    }
    Ok(())
}

fn xflags_of(prot: u32) -> u32 {
    let mut x = 0;
    if prot & FS_IMMUTABLE_FL != 0 {
        x |= FS_XFLAG_IMMUTABLE;
    }
    if prot & FS_APPEND_FL != 0 {
        x |= FS_XFLAG_APPEND;
    }
    x
}

fn flags_of_xflags(x: u32) -> u32 {
    let mut f = 0;
    if x & FS_XFLAG_IMMUTABLE != 0 {
        f |= FS_IMMUTABLE_FL;
    }
    if x & FS_XFLAG_APPEND != 0 {
        f |= FS_APPEND_FL;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protattr_reads_and_writes_as_the_kernel() {
        assert_eq!(prot_of_marker(None), PROT_KNOWN);
        assert_eq!(
            prot_of_marker(Some(b"ai")),
            PROT_KNOWN | (FS_APPEND_FL | FS_IMMUTABLE_FL) as u8
        );
        assert_eq!(
            prot_of_marker(Some(b"i")),
            PROT_KNOWN | FS_IMMUTABLE_FL as u8
        );
        // An unknown letter: the kernel ignores the value.
        assert_eq!(prot_of_marker(Some(b"ix")), PROT_KNOWN);
        assert_eq!(marker_value(FS_APPEND_FL | FS_IMMUTABLE_FL), b"ai");
        assert_eq!(flags_of_xflags(xflags_of(PROT_FLAGS)), PROT_FLAGS);
    }
}

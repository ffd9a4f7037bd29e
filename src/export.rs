//! File handles that outlive the kernel's caches (`nfs_export=on`).
//!
//! A FUSE file handle (`name_to_handle_at` on the mount, the kernel's `fuse_encode_fh`) is
//! the node id and the entry's generation, nothing of the real file. Once the kernel has
//! forgotten the inode (memory pressure, `drop_caches`, a remount), `open_by_handle_at`
//! sends LOOKUP of "." in that node id (FUSE_EXPORT_SUPPORT), and the daemon must say what
//! it was. Node ids here are stable (an object's id is its number, `inode.rs`), so what is
//! needed is where a forgotten id was: the inode table keeps a [`Ghost`] (parent id and
//! name) of every node the kernel forgets, and a lookup of "." in a ghost looks its name
//! up again in its parent (reviving the parent the same way first) and answers only if
//! the name still leads to that same id: a file removed, or a name now holding another
//! object, gives ESTALE.
//!
//! The ghosts, and where every live node is, are written at unmount to
//! `workdir/stratafs.handles` and read back at the next mount, so handles also decode after
//! a remount (not after a crash, which writes nothing; an entry made stale meanwhile only
//! costs a lookup that fails). Costs: a ghost per forgotten node (~80 bytes and the
//! name), and nothing at all without `nfs_export=on`.
//!
//! Each node gets a generation (which the kernel puts in the handle and compares): a
//! ghost's is kept, a new node takes the next of a counter seeded from the clock at mount
//! and raised above every generation read back, so a new object that reuses a removed
//! one's number (ext4 reuses them at once) does not answer the removed one's handles.
//! Without the option every generation stays 0, as before.
//!
//! Assumes the branches do not change behind the mount between a handle's encoding and
//! its use (as the kernel overlayfs's index does).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use log::{debug, info, warn};

use crate::attr::Attr;
use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::inode::Ghost;
use crate::sys::{self, ops};

/// The file in the workdir that keeps the ghosts across a remount.
const HANDLES: &std::ffi::CStr = c"stratafs.handles";
const HANDLES_TMP: &std::ffi::CStr = c"stratafs.handles.tmp";
/// The file's first bytes (format version 2).
const MAGIC: &[u8; 8] = b"sfsghst2";

/// How many parents up a revival may go (deeper than any real tree).
const MAX_DEPTH: u32 = 4096;

impl UnionFs {
    /// LOOKUP of "." in node `id`, which the kernel forgot: the node again, with one kernel
    /// reference counted (as any lookup), or ESTALE.
    pub(crate) fn revive(&self, id: u64) -> Result<Attr> {
        self.revive_at(id, 0)
    }

    fn revive_at(&self, id: u64, depth: u32) -> Result<Attr> {
        let stale = || Error::new(libc::ESTALE, format!("no node {id:#x} to revive"));
        if depth > MAX_DEPTH {
            return Err(stale());
        }
        let g = self.inodes.ghost(id).ok_or_else(stale)?;
        let parent_revived = !self.has_node(g.parent);
        if parent_revived {
            self.revive_at(g.parent, depth + 1)?;
        }
        let found = self.lookup(g.parent, &g.name);
        if parent_revived {
            // Held by the child now, if found; the kernel never had this reference.
            self.forget(g.parent, 1);
        }
        let attr = found.map_err(|e| match e.errno {
            libc::ENOENT | libc::ENOTDIR => stale(),
            _ => e,
        })?;
        if attr.node != id {
            self.forget(attr.node, 1);
            debug!("revive {id:#x}: {:?} is {:#x} now", g.name, attr.node);
            return Err(stale());
        }
        Ok(attr)
    }

    /// At mount time: the ghosts the last unmount wrote (none if there is no file, or it
    /// is not ours).
    pub(crate) fn load_ghosts(&self) {
        let Some(work) = &self.layers.work else {
            return;
        };
        let Ok(fd) = sys::openat(work.as_fd(), HANDLES, libc::O_RDONLY, 0) else {
            return;
        };
        let mut bytes = Vec::new();
        if std::fs::File::from(fd).read_to_end(&mut bytes).is_err() {
            return;
        }
        match parse(&bytes) {
            Some(all) => {
                info!("nfs_export: {} file handle places read back", all.len());
                for (id, g) in all {
                    self.inodes.add_ghost(id, g);
                }
            }
            None => warn!("nfs_export: workdir/stratafs.handles is not readable; ignored"),
        }
    }

    /// At unmount: where every node the kernel knew of is, for the next mount.
    pub fn save_ghosts(&self) {
        let Some(work) = self.layers.work.as_ref().filter(|_| self.nfs_export) else {
            return;
        };
        let all = self.inodes.all_ghosts();
        match write_file(work.as_fd(), &render(&all)) {
            Ok(()) => info!("nfs_export: {} file handle places kept", all.len()),
            Err(e) => warn!("nfs_export: could not write workdir/stratafs.handles: {e}"),
        }
    }
}

fn write_file(dir: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<()> {
    let fd = sys::openat(
        dir,
        HANDLES_TMP,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    f.sync_all()?;
    ops::renameat2(dir, HANDLES_TMP, dir, HANDLES, 0)
}

/// `MAGIC`, then per entry: id (u64 LE), parent (u64 LE), generation (u32 LE), name length
/// (u32 LE), name.
fn render(all: &[(u64, Ghost)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (id, g) in all {
        let name = g.name.as_bytes();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&g.parent.to_le_bytes());
        out.extend_from_slice(&g.generation.to_le_bytes());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
    }
    out
}

fn parse(bytes: &[u8]) -> Option<Vec<(u64, Ghost)>> {
    let mut rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let mut all = Vec::new();
    let u64_at = |b: &[u8]| {
        b.get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    while !rest.is_empty() {
        let id = u64_at(rest)?;
        let parent = u64_at(rest.get(8..)?)?;
        let generation = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?);
        let len = u32::from_le_bytes(rest.get(20..24)?.try_into().ok()?) as usize;
        let name = rest.get(24..24 + len)?;
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return None;
        }
        all.push((
            id,
            Ghost {
                parent,
                name: OsString::from_vec(name.to_vec()),
                generation,
            },
        ));
        rest = &rest[24 + len..];
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghosts_read_back_as_written() {
        let all = vec![
            (
                7,
                Ghost {
                    parent: 1,
                    name: "a".into(),
                    generation: 5,
                },
            ),
            (
                crate::inode::NAME_IDS | 3,
                Ghost {
                    parent: 7,
                    name: "b c".into(),
                    generation: u32::MAX,
                },
            ),
        ];
        assert_eq!(parse(&render(&all)), Some(all));
        assert_eq!(parse(b"other"), None);
        let mut cut = render(&[(
            9,
            Ghost {
                parent: 1,
                name: "x".into(),
                generation: 1,
            },
        )]);
        cut.pop();
        assert_eq!(parse(&cut), None);
    }
}

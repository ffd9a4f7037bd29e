//! Namespace changes (the kernel's `dir.c`): create, mkdir, mknod, symlink, link, unlink,
//! rmdir, rename.
//!
//! New entries are made in place in the upper directory when nothing is in the way there,
//! as the kernel overlayfs makes them; after a crash such an entry may exist with the
//! daemon's owner or empty, as on any filesystem. Over a whiteout the entry is built
//! complete in the staging directory (`workdir/work`: owner, mode, opaque marker) and
//! renamed over in one step: the rename replaces the whiteout (non-directories) or swaps
//! with it (`RENAME_EXCHANGE`, directories), so a crash never resurrects a lower entry.
//!
//! Removing a name that a lower layer also has leaves a whiteout (a 0/0 character device,
//! the kernel's format). A directory made where lower content was deleted is marked
//! opaque. A directory with lower content is renamed by copying the directory itself up
//! and recording where its lower part lives in `overlay.redirect` (the kernel's
//! `redirect_dir=on` format, always an absolute path here); its lower content is never
//! copied. A pure upper directory moved into a merged directory is marked opaque.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::acl;
use crate::attr::Attr;
use crate::copy_up::{remove_tree, tmp_name, CopyUp};
use crate::error::{err, Error, Result};
use crate::file::FileHandle;
use crate::fileattr::Change;
use crate::fs::{Caller, UnionFs};
use crate::inode::{Kind, Loc, NameGoing, Node, NodeKey};
use crate::layers::{ROOT_INO, UPPER};
use crate::lookup::{self, marker, Slot};
use crate::readdir;
use crate::sys::{self, ops, xattr};
use crate::util;
use crate::whiteout;

/// What the upper directory holds at a name.
#[derive(Debug, PartialEq, Eq)]
enum UpperAt {
    Nothing,
    Whiteout,
    Entry,
}

fn upper_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<UpperAt> {
    match sys::fstatat(dir, name) {
        Ok(st) if whiteout::is_whiteout_stat(&st) => Ok(UpperAt::Whiteout),
        Ok(_) => Ok(UpperAt::Entry),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(UpperAt::Nothing),
        Err(e) => Err(Error::io(e, "upper stat")),
    }
}

/// The directories of `parent` below layer `t`, top first.
fn dirs_below<'a>(
    stack: &'a crate::layers::Stack,
    parent: &'a Loc,
    t: crate::layers::LayerId,
) -> impl Iterator<Item = &'a (crate::layers::LayerId, Arc<OwnedFd>)> + 'a {
    let tp = stack.pos(t).unwrap_or(usize::MAX);
    parent
        .dirs
        .iter()
        .filter(move |(l, _)| stack.pos(*l).is_some_and(|p| p > tp))
}

impl UnionFs {
    /// Does a layer of `parent` below `t` show something at `name` (so removing it from
    /// `t` needs a whiteout)? Stops at the first whiteout or opaque boundary, as lookup does.
    /// `skip_writable`: writable layers are not looked at (an rmdir removes the directory's
    /// copies there too, `remove_writable_copies`).
    fn lower_positive(
        &self,
        parent: &Loc,
        t: crate::layers::LayerId,
        (name, cname): (&OsStr, &CStr),
        skip_writable: bool,
    ) -> bool {
        let stack = self.layers.stack();
        for (l, fd) in dirs_below(&stack, parent, t) {
            if skip_writable && stack.writable(*l) {
                continue;
            }
            match sys::fstatat(fd.as_fd(), cname) {
                Ok(st) => return !whiteout::is_whiteout_stat(&st),
                Err(_) => {
                    if whiteout::has_aufs_whiteout(fd.as_fd(), name) {
                        return false;
                    }
                }
            }
        }
        false
    }

    /// Does any layer of `parent` below `t` have anything at `name`, whiteouts included?
    /// A new directory there is made opaque.
    fn lower_has_any(
        &self,
        parent: &Loc,
        t: crate::layers::LayerId,
        name: &OsStr,
        cname: &CStr,
    ) -> bool {
        let stack = self.layers.stack();
        let found = dirs_below(&stack, parent, t).any(|(_, fd)| {
            sys::fstatat(fd.as_fd(), cname).is_ok() || whiteout::has_aufs_whiteout(fd.as_fd(), name)
        });
        found
    }
}

fn check_name(name: &OsStr) -> Result<CString> {
    crate::fs::check_component(name)?;
    if name.as_bytes() == b"." || name.as_bytes() == b".." {
        return err(libc::EINVAL);
    }
    if whiteout::is_marker_name(name) {
        // `.wh.*` names are layer markers; creating one would delete or hide something.
        return err(libc::EINVAL);
    }
    whiteout::c_name(name).ok_or_else(|| Error::errno(libc::EINVAL))
}

/// The new entry's object type and data.
pub enum NewKind<'a> {
    Dir,
    Node { rdev: u64 },
    Symlink(&'a [u8]),
    File { flags: i32 },
}

/// The owner and permissions of a new entry (`UnionFs::new_perms`).
struct NewPerms {
    /// The owner, as stored.
    uid: u32,
    gid: u32,
    /// Its permission bits, setuid/setgid included.
    perm: u32,
    /// The ACLs it inherits.
    inherited: acl::Inherited,
    /// The parent has a default ACL on the entry's branch.
    default: bool,
}

/// A new entry being made (`UnionFs::create_entry`).
struct NewEntry<'a> {
    kind: &'a NewKind<'a>,
    /// The mode asked for (its type bits make a node's type).
    mode: u32,
    name: &'a OsStr,
    perms: NewPerms,
    is_dir: bool,
    /// It replaces a whiteout on its branch.
    upper_whiteout: bool,
    /// Built in the staging directory and renamed into place.
    staged: bool,
    /// Where it is made: `work/tmp`, or its final place.
    at: (BorrowedFd<'a>, &'a CStr),
    /// Its final place: the parent's directory on its branch, and its name.
    dest: (BorrowedFd<'a>, &'a CStr),
}

/// A rename's two ends, resolved and checked before anything changes (`UnionFs::rename`).
struct RenameEnds<'a> {
    parent: u64,
    name: &'a OsStr,
    newparent: u64,
    newname: &'a OsStr,
    cname: CString,
    cnew: CString,
    pnode: Arc<Node>,
    npnode: Arc<Node>,
    src: lookup::Found,
    src_key: NodeKey,
    dst: Option<lookup::Found>,
    dst_key: Option<NodeKey>,
    exchange: bool,
    noreplace: bool,
}

/// Makes a 0/0 character device at `dir/name` (fails if something is there).
fn make_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    ops::mknodat(dir, name, libc::S_IFCHR, 0).map_err(|e| Error::io(e, "whiteout"))
}

/// Makes aufs's whiteout of `name` in `dir`: an empty file `.wh.NAME`, mode 0444, its own
/// (never a hard link of a shared one, which is all `rw+nolwh` asks of aufs).
fn make_aufs_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let wh = whiteout::aufs_name(name).ok_or_else(|| Error::errno(libc::ENAMETOOLONG))?;
    match sys::openat(
        dir,
        &wh,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o444,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(Error::io(e, "aufs whiteout")),
    }
}

impl UnionFs {
    /// Marks new directory `dir/name` opaque: the kernel's `overlay.opaque`, or on an
    /// aufs-format mount a `.wh..wh..opq` inside it.
    fn make_opaque(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        if self.aufs_whiteouts {
            let d = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| Error::io(e, "open new directory"))?;
            let opq =
                CString::new(whiteout::AUFS_OPAQUE).map_err(|_| Error::errno(libc::EINVAL))?;
            return sys::openat(d.as_fd(), &opq, libc::O_CREAT | libc::O_WRONLY, 0o444)
                .map(drop)
                .map_err(|e| Error::io(e, "aufs opaque marker"));
        }
        let opaque = self.layers.marker("opaque");
        xattr::set(dir, name, &opaque, b"y", 0).map_err(|e| Error::io(e, "set opaque"))
    }

    fn dir_node(&self, ino: u64) -> Result<Arc<Node>> {
        let n = self.node(ino)?;
        if !n.is_dir() {
            return err(libc::ENOTDIR);
        }
        Ok(n)
    }

    /// Moves the staged `work/tmp` to `dir/name`, replacing (or, for a directory, swapping
    /// out) a whiteout there. Tried as a rename that replaces nothing first: only where
    /// that finds the name taken is it looked at.
    fn place(
        &self,
        work: BorrowedFd<'_>,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &CStr,
        is_dir: bool,
    ) -> Result<()> {
        let r = match util::rename_noreplace(work, tmp, dir, name) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match upper_at(dir, name)? {
                UpperAt::Entry | UpperAt::Nothing => return err(libc::EEXIST),
                UpperAt::Whiteout if is_dir => {
                    util::exchange_staged(work, tmp, dir, name).map(|()| {
                        let _ = ops::unlinkat(work, tmp, 0);
                    })
                }
                UpperAt::Whiteout => ops::renameat2(work, tmp, dir, name, 0),
            },
            r => r,
        };
        r.map_err(|e| Error::io(e, "place new entry"))
    }

    /// Creates a new entry `name` in `parent` owned by `caller`; returns its attributes
    /// (counted as a lookup) and, for files, an open handle.
    ///
    /// Where it is made follows the kernel overlayfs (`ovl_create_or_link`): in place, in
    /// the upper directory, when nothing is in the way there; built complete in the
    /// staging directory and renamed over when a whiteout must be replaced, so that the
    /// whiteout is never gone while the new entry is incomplete (a directory made there is
    /// opaque, as the kernel makes it). With `xattr_permissions` every new entry is staged
    /// (owner and mode live in an xattr that must be there before the name shows), and
    /// under `noacl` one below a default ACL (which it must not inherit).
    ///
    /// The reply is built from what the create made (its stat, the parent's place), not
    /// by resolving the name again through the layers: a new upper entry has no overlay
    /// markers, and shows its own number.
    pub fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        kind: NewKind<'_>,
        caller: Caller,
    ) -> Result<(Attr, Option<u64>)> {
        self.check_writable()?;
        // What it makes is new; only a change of a reused inode number's node while it is
        // made would be newer.
        let seen = crate::inode::epoch();
        let cname = check_name(name)?;
        let pnode = self.dir_node(parent)?;
        let (t, upper_whiteout) = self.new_entry_target(&pnode, name, mode, &kind)?;
        let work = self.staging_on(t)?;
        let updir = self.dir_on(&pnode, t)?;
        let ploc = pnode.loc();
        let is_dir = matches!(kind, NewKind::Dir);
        let p = self.new_perms(parent, updir.as_fd(), mode, umask, is_dir, caller)?;
        // Staged also under `noacl` below a default ACL: made in place, the entry would
        // inherit it from the upper's filesystem.
        let staged = upper_whiteout || self.override_level.is_some() || (!self.acl && p.default);
        let tmp = tmp_name();
        // Where the entry is made: `work/tmp`, or its final place.
        let at: (BorrowedFd<'_>, &CStr) = if staged {
            (work.as_fd(), &tmp)
        } else {
            (updir.as_fd(), &cname)
        };
        let e = NewEntry {
            kind: &kind,
            mode,
            name,
            perms: p,
            is_dir,
            upper_whiteout,
            staged,
            at,
            dest: (updir.as_fd(), &cname),
        };
        let (st, file) = self.build_entry(&e)?;
        let found = self.found_new(t, updir.as_fd(), &cname, st, is_dir)?;
        let attr = self.enter(parent, &ploc, name, found, seen)?;
        let fh = self.new_entry_handle(&attr, file, kind);
        Ok((attr, fh))
    }

    /// Where a new entry `name` of `pnode` goes: EEXIST where something shows there, EPERM
    /// for a whiteout-shaped device; else the writable branch it is made on, and whether
    /// it replaces a whiteout there.
    fn new_entry_target(
        &self,
        pnode: &Arc<Node>,
        name: &OsStr,
        mode: u32,
        kind: &NewKind<'_>,
    ) -> Result<(crate::layers::LayerId, bool)> {
        self.check_change(pnode, Change::AddEntry)?;
        let whiteout_at = match lookup::probe_create(&self.layers, &pnode.loc(), name)? {
            Slot::Taken => return err(libc::EEXIST),
            Slot::Free { whiteout } => whiteout,
        };
        if let NewKind::Node { rdev: 0 } = kind {
            if mode & libc::S_IFMT == libc::S_IFCHR {
                // A 0/0 character device is a whiteout; the kernel overlayfs refuses it too.
                return err(libc::EPERM);
            }
        }
        // The writable branch it goes to (`wbr_policy.rs`; the upper on a kernel-shaped
        // mount), and whether it replaces a whiteout there.
        let t = self
            .wbr
            .create_target(&self.layers, self.create, &pnode.loc(), whiteout_at)?;
        Ok((t, whiteout_at == Some(t)))
    }

    /// The owner, permission bits and ACLs of a new entry of `caller` in `parent` (whose
    /// directory on the entry's branch is `updir`).
    fn new_perms(
        &self,
        parent: u64,
        updir: BorrowedFd<'_>,
        mode: u32,
        umask: u32,
        is_dir: bool,
        caller: Caller,
    ) -> Result<NewPerms> {
        // The owner is the caller's ids as stored (mapped, the overflow id where no range
        // covers them); under a setgid directory the group is the directory's own, as
        // stored, whatever it shows as.
        let pst = self.stored_stat(parent)?;
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let (owner_uid, mut owner_gid) = self.ids.store(caller.uid, caller.gid)?;
        if sgid_parent {
            owner_gid = pst.st_gid;
        }
        // The umask, or the parent's default ACL, as the upper filesystem would apply them
        // had the entry been created by the caller.
        let stored_default = xattr::get(updir, c".", acl::DEFAULT_XATTR).ok().flatten();
        let parent_default = stored_default
            .as_deref()
            .filter(|_| self.acl)
            .and_then(acl::Acl::parse);
        let inherited = acl::inherit(parent_default.as_ref(), mode & 0o7777, umask, is_dir);
        let mut perm = inherited.mode;
        if is_dir && sgid_parent {
            perm |= libc::S_ISGID;
        }
        Ok(NewPerms {
            uid: owner_uid,
            gid: owner_gid,
            perm,
            inherited,
            default: stored_default.is_some(),
        })
    }

    /// Makes new entry `e` complete (its stat, and the open file of a create); on failure
    /// nothing this call made is left.
    fn build_entry(&self, e: &NewEntry<'_>) -> Result<(sys::Stat, Option<OwnedFd>)> {
        let mut file: Option<OwnedFd> = None;
        // Set once the entry exists (so a failure removes only what this call made).
        let mut made = false;
        match self.build_steps(e, &mut file, &mut made) {
            Ok(st) => Ok((st, file)),
            Err(err) => {
                // Staged: `work/tmp` goes. Made in place but not complete (e.g. no space
                // for an ACL): gone again, as if the create had failed before it.
                let (d, n) = e.at;
                if e.staged || made {
                    let _ = remove_tree(d, n);
                }
                Err(err)
            }
        }
    }

    /// `build_entry`'s steps: made (`file`, `made` set as they are), given its owner and
    /// permissions, marked opaque and placed where staged.
    fn build_steps(
        &self,
        e: &NewEntry<'_>,
        file: &mut Option<OwnedFd>,
        made: &mut bool,
    ) -> Result<sys::Stat> {
        let (d, n) = e.at;
        *file = self.make_new(e)?;
        *made = true;
        let mut st = match file.as_ref() {
            Some(f) => sys::fstat(f.as_fd()),
            None => sys::fstatat(d, n),
        }
        .map_err(|e| Error::io(e, "stat new entry"))?;
        // Each change below moves the ctime: the entry is stat'ed again after one.
        let mut changed = self.set_new_perms(e, &st)?;
        if e.is_dir && e.upper_whiteout {
            self.make_opaque(d, n)?;
        }
        let (updir, cname) = e.dest;
        if e.staged {
            self.place(d, n, updir, cname, e.is_dir)?;
            // A rename may move the ctime too.
            changed = true;
            // An aufs whiteout of the name on this branch has done its job: the new
            // entry hides what it hid.
            if let Some(wh) = whiteout::aufs_name(e.name) {
                let _ = ops::unlinkat(updir, &wh, 0);
            }
        }
        if changed {
            st = match file.as_ref() {
                Some(f) => sys::fstat(f.as_fd()),
                None => sys::fstatat(updir, cname),
            }
            .map_err(|e| Error::io(e, "stat new entry"))?;
        }
        Ok(st)
    }

    /// Makes the object of new entry `e` at `e.at`; for a file, returns it open.
    fn make_new(&self, e: &NewEntry<'_>) -> Result<Option<OwnedFd>> {
        let (d, n) = e.at;
        // Made with the permission bits only: setuid/setgid come with the chmod, after
        // the owner (a crash in between leaves an entry of the daemon's, never a
        // setuid one).
        let first_mode = e.perms.perm & 0o777;
        match e.kind {
            NewKind::Dir => ops::mkdirat(d, n, first_mode).map_err(|e| Error::io(e, "mkdir"))?,
            NewKind::Node { rdev } => {
                ops::mknodat(d, n, (e.mode & libc::S_IFMT) | first_mode, *rdev)
                    .map_err(|e| Error::io(e, "mknod"))?
            }
            NewKind::Symlink(target) => {
                let t = CString::new(*target).map_err(|_| Error::errno(libc::EINVAL))?;
                ops::symlinkat(&t, d, n).map_err(|e| Error::io(e, "symlink"))?
            }
            NewKind::File { flags } => {
                let f = sys::openat(
                    d,
                    n,
                    (self.real_open_flags(*flags) & !libc::O_TRUNC) | libc::O_CREAT | libc::O_EXCL,
                    first_mode,
                )
                .map_err(|e| Error::io(e, "create"))?;
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// Gives new entry `e` (stat `st`) its owner, mode and inherited ACLs; true where that
    /// changed it.
    fn set_new_perms(&self, e: &NewEntry<'_>, st: &sys::Stat) -> Result<bool> {
        let (d, n) = e.at;
        let p = &e.perms;
        let mut changed = false;
        // With xattr_permissions the owner and mode live in the override; the real
        // entry stays the daemon's, owner-accessible, never setuid/setgid.
        let overridden = self.override_new_entry(d, n, p.uid, p.gid, p.perm)?;
        changed |= overridden;
        if !overridden && (st.st_uid, st.st_gid) != (p.uid, p.gid) {
            ops::fchownat(d, n, p.uid, p.gid).map_err(|e| Error::io(e, "chown new entry"))?;
            changed = true;
        }
        if !matches!(e.kind, NewKind::Symlink(_)) {
            let real_perm = if overridden {
                (p.perm & 0o777) | 0o700
            } else {
                p.perm
            };
            if st.st_mode & 0o7777 != real_perm {
                ops::fchmodat(d, n, real_perm).map_err(|e| Error::io(e, "chmod new entry"))?;
                changed = true;
            }
            for (attr, acl) in [
                (acl::ACCESS_XATTR, &p.inherited.access),
                (acl::DEFAULT_XATTR, &p.inherited.default),
            ] {
                if let Some(a) = acl {
                    xattr::set(d, n, attr, &a.to_bytes(), 0)
                        .map_err(|e| Error::io(e, "inherit ACL"))?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// What a lookup of the new entry `updir/cname` (stat `st`) on branch `t` would find.
    fn found_new(
        &self,
        t: crate::layers::LayerId,
        updir: BorrowedFd<'_>,
        cname: &CStr,
        st: sys::Stat,
        is_dir: bool,
    ) -> Result<lookup::Found> {
        let dirs = if is_dir {
            let fd =
                sys::open_dir_path(updir, cname).map_err(|e| Error::io(e, "open new directory"))?;
            vec![(t, Arc::new(fd))]
        } else {
            Vec::new()
        };
        Ok(lookup::Found {
            top: t,
            ino: self.layers.ino(st.st_dev, st.st_ino),
            st,
            dirs,
            data: None,
            xattr_names: None,
            prot: crate::fileattr::PROT_KNOWN,
            index_alias: None,
        })
    }

    /// The handle of a created file (`file`), guarded where it is setuid/setgid.
    fn new_entry_handle(
        &self,
        attr: &Attr,
        file: Option<OwnedFd>,
        kind: NewKind<'_>,
    ) -> Option<u64> {
        match (file, kind) {
            (Some(fd), NewKind::File { flags }) => {
                let fh = self.add_handle(attr.node, fd, flags, false);
                if attr.perm as u32 & (libc::S_ISUID | libc::S_ISGID) != 0 {
                    self.guard_if_privileged(attr.node, fh);
                }
                Some(fh)
            }
            _ => None,
        }
    }

    /// Writes the override of a new entry (`xattr_permissions`); false where none applies
    /// (no option, or a type that cannot carry the xattr).
    fn override_new_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        uid: u32,
        gid: u32,
        perm: u32,
    ) -> Result<bool> {
        let Some(level) = self.override_level else {
            return Ok(false);
        };
        let o = crate::override_stat::Override {
            uid,
            gid,
            mode: perm & 0o7777,
            kind: None,
        };
        match crate::override_stat::write(level, dir, name, &o) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {
                let st = sys::fstatat(dir, name).map_err(|e| Error::io(e, "stat new entry"))?;
                let fmt = st.st_mode & libc::S_IFMT;
                if fmt == libc::S_IFREG || fmt == libc::S_IFDIR {
                    Err(Error::io(e, "set owner override"))
                } else {
                    Ok(false) // user.* xattrs cannot go on symlinks, pipes or devices
                }
            }
            Err(e) => Err(Error::io(e, "set owner override")),
        }
    }

    /// link(2): a new name `newname` in `newparent` for `ino` (copied up first). The new
    /// name is the same node (`UnionFs::renumbered` maps the upper file to it since its
    /// copy-up), so the kernel's cached entry for the old name stays right, and both names
    /// are one inode from then on, as in the kernel overlayfs.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        self.check_writable()?;
        let cname = check_name(newname)?;
        let node = self.node(ino)?;
        if node.is_dir() {
            return err(libc::EPERM);
        }
        let pnode = self.dir_node(newparent)?;
        let whiteout_at = match lookup::probe_create(&self.layers, &pnode.loc(), newname)? {
            Slot::Taken => return err(libc::EEXIST),
            Slot::Free { whiteout } => whiteout,
        };
        self.check_change(&node, Change::Name)?;
        self.check_change(&pnode, Change::AddEntry)?;
        // Links and renames of a metadata-only copy would need a redirect to its data;
        // bring the data up instead.
        self.copy_up(&node, CopyUp::Data)?;
        // The link is made on the file's own (writable) branch: EXDEV where a name made
        // there would not show.
        let t = node.loc.read().top;
        if !crate::wbr_policy::shows_on(&self.layers, &pnode.loc(), whiteout_at, t) {
            return err(libc::EXDEV);
        }
        let updir = self.dir_on(&pnode, t)?;
        let src = self.real(&node)?;
        let work = self.staging_on(t)?;
        let tmp = tmp_name();
        ops::linkat(src.dir.as_fd(), &src.name, work.as_fd(), &tmp)
            .map_err(|e| Error::io(e, "link"))?;
        if let Err(e) = self.place(work.as_fd(), &tmp, updir.as_fd(), &cname, false) {
            let _ = ops::unlinkat(work.as_fd(), &tmp, 0);
            return Err(e);
        }
        self.mark_impure(updir.as_fd(), &cname);
        let attr = self.lookup(newparent, newname)?;
        if self.nfs_export {
            let alias = crate::inode::Ghost {
                parent: newparent,
                name: newname.to_os_string(),
                generation: node.generation,
            };
            self.inodes.note_alias(attr.node, alias);
        }
        Ok(attr)
    }

    /// unlink(2) and rmdir(2).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        self.check_writable()?;
        let cname = check_name(name)?;
        let pnode = self.dir_node(parent)?;
        let ploc = pnode.loc();
        let mut found =
            lookup::lookup(&self.layers, &ploc, name)?.ok_or_else(|| Error::errno(libc::ENOENT))?;
        self.find_index(&ploc, name, &mut found);
        let key = self.identify(parent, name, &mut found);
        match (dir, found.is_dir()) {
            (false, true) => return err(libc::EISDIR),
            (true, false) => return err(libc::ENOTDIR),
            _ => {}
        }
        self.check_change(&pnode, Change::RemoveEntry)?;
        self.check_found(&found, &pnode, &cname, Change::Name)?;
        // index=on: a name shown from the index entry is in its lower layer only.
        let alias = found.index_alias.clone();
        let top = alias.as_ref().map(|a| a.lower).unwrap_or(found.top);
        let (t, drop_copies) = self.removal_branch(&ploc, (parent, name), &found, top, dir)?;
        let work = self.staging_on(t)?;
        let updir = self.dir_on(&pnode, t)?;
        let ploc = pnode.loc();
        // Found in a layer below `t`: the merged view shows it from there, so it takes a
        // whiteout (no need to probe the lowers again).
        let needs_whiteout = top != t || self.lower_positive(&ploc, t, (name, &cname), drop_copies);
        let node = self.inodes.find(&key).filter(|_| !dir);
        let was_pinned = node.as_ref().map(|n| n.loc.read().pinned.clone());
        if let Some(node) = &node {
            if !self.pin_to_index(node) {
                self.pin_before_remove(node, &ploc, top, &cname);
            }
        }
        if !dir && top == t {
            self.drop_number(updir.as_fd(), &cname);
        }
        // The kernel's link count of the node must settle (inode.rs); to the end.
        let _going = node.as_ref().map(|n| n.name_going());
        // The copy whose inode number the node shows goes last, just before the kernel
        // learns of the removal: freed earlier, the number could be taken by a new
        // directory elsewhere while the kernel still holds this one under it (it then
        // refuses the new one with ESTALE).
        let top_numbered = drop_copies
            && sys::fstatat(updir.as_fd(), &cname)
                .is_ok_and(|st| self.layers.ino(st.st_dev, st.st_ino) == found.ino);
        let mut r = Ok(());
        if top_numbered {
            r = self.remove_writable_copies(&ploc, &found.dirs, t, &cname);
        }
        if r.is_ok() {
            r = self.remove_real(&work, &updir, name, top == t, dir, needs_whiteout);
        }
        if r.is_ok() && drop_copies && !top_numbered {
            r = self.remove_writable_copies(&ploc, &found.dirs, t, &cname);
        }
        if let (Ok(()), Some(a)) = (&r, &alias) {
            self.index_lower_name_gone(&a.name);
        }
        match (&r, node, was_pinned) {
            // The name is still there (e.g. no space for the whiteout): unpin it.
            (Err(_), Some(node), Some(prev)) => node.loc_mut().pinned = prev,
            // A name node is that name's: nothing leads to it any more.
            (Ok(()), Some(node), _) => self.inodes.unname(&node),
            _ => {}
        }
        r
    }

    /// Where a removal of `found` (top layer `top`) happens: in place where its top layer
    /// is writable, else by a whiteout on the writable branch the copy-up policy picks
    /// above it (EROFS where none is); and whether a directory merged from several
    /// writable branches goes from the others too. ENOTEMPTY for a directory that lists
    /// anything.
    fn removal_branch(
        &self,
        ploc: &Loc,
        (parent, name): (u64, &OsStr),
        found: &lookup::Found,
        top: crate::layers::LayerId,
        dir: bool,
    ) -> Result<(crate::layers::LayerId, bool)> {
        let t = if self.layers.writable(top) {
            top
        } else {
            self.wbr
                .copy_up_target(&self.layers, self.cpup, top, ploc)?
        };
        if dir {
            let floc = Loc::new(parent, name.to_os_string(), found.top, found.dirs.clone());
            if readdir::list(&self.layers, &floc, 0, 0)?.len() > 2 {
                return err(libc::ENOTEMPTY);
            }
        }
        let drop_copies = dir
            && top == t
            && found
                .dirs
                .iter()
                .any(|(l, _)| *l != t && self.layers.writable(*l));
        Ok((t, drop_copies))
    }

    /// The branch side of `remove`: unlink/rmdir in the writable branch (`in_place`: the
    /// entry is there) and/or a whiteout there.
    fn remove_real(
        &self,
        work: &OwnedFd,
        updir: &OwnedFd,
        name: &OsStr,
        in_place: bool,
        dir: bool,
        needs_whiteout: bool,
    ) -> Result<()> {
        let cname = whiteout::c_name(name).ok_or_else(|| Error::errno(libc::EINVAL))?;
        let cname = cname.as_c_str();
        let w = work.as_fd();
        if self.aufs_whiteouts {
            // aufs's format: the entry goes, then `.wh.NAME` hides what is below (two
            // steps, as aufs takes them).
            if in_place {
                self.remove_in_place(w, updir, cname, dir)?;
            }
            return match needs_whiteout {
                true => make_aufs_whiteout(updir.as_fd(), name),
                false => Ok(()),
            };
        }
        if !in_place {
            return make_whiteout(updir.as_fd(), cname);
        }
        if !needs_whiteout {
            return self.remove_in_place(w, updir, cname, dir);
        }
        // Swap a fresh whiteout in: one atomic step.
        let wh = tmp_name();
        make_whiteout(w, &wh)?;
        let r = if dir {
            util::exchange_staged(w, &wh, updir.as_fd(), cname)
        } else {
            ops::renameat2(w, &wh, updir.as_fd(), cname, 0)
        };
        if let Err(e) = r {
            let _ = ops::unlinkat(w, &wh, 0);
            return Err(Error::io(e, "whiteout over upper entry"));
        }
        if dir {
            remove_tree(w, &wh).map_err(|e| Error::io(e, "rmdir cleanup"))?;
        }
        Ok(())
    }

    /// rmdir of a directory merged from several writable branches: with its copy on `t`,
    /// its copies on the writable branches below go too (empty in the merged view, each
    /// holds at most whiteouts), so that a whiteout on `t` is only for read-only branches,
    /// as aufs removes a directory from every writable branch. (A crash in between leaves
    /// an empty directory showing again.)
    fn remove_writable_copies(
        &self,
        parent: &Loc,
        dirs: &[(crate::layers::LayerId, Arc<OwnedFd>)],
        t: crate::layers::LayerId,
        cname: &CStr,
    ) -> Result<()> {
        for (l, _) in dirs
            .iter()
            .filter(|(l, _)| *l != t && self.layers.writable(*l))
        {
            let Some(pdir) = parent.dir_in(*l) else {
                continue;
            };
            let work = self.staging_on(*l)?;
            self.remove_in_place(work.as_fd(), &pdir, cname, true)?;
        }
        Ok(())
    }

    /// Unlinks `updir/cname`; a directory (which may still hold whiteouts) is moved out of
    /// sight into the staging directory `w` first, then emptied.
    fn remove_in_place(
        &self,
        w: BorrowedFd<'_>,
        updir: &OwnedFd,
        cname: &CStr,
        dir: bool,
    ) -> Result<()> {
        if !dir {
            return ops::unlinkat(updir.as_fd(), cname, 0).map_err(|e| Error::io(e, "unlink"));
        }
        let t = tmp_name();
        util::rename_noreplace(updir.as_fd(), cname, w, &t).map_err(|e| Error::io(e, "rmdir"))?;
        remove_tree(w, &t).map_err(|e| Error::io(e, "rmdir cleanup"))
    }

    /// Keeps a node the kernel still holds reachable after its name goes away.
    fn pin_before_remove(
        &self,
        node: &Node,
        parent: &Loc,
        top: crate::layers::LayerId,
        cname: &CStr,
    ) {
        let Some(dir) = parent.dir_in(top) else {
            return;
        };
        if let Ok(fd) = sys::openat(dir.as_fd(), cname, libc::O_PATH, 0) {
            node.loc_mut().pinned = Some(Arc::new(fd));
        }
    }

    /// Where the lower part of directory `node` lives, as an absolute path from the layer
    /// roots (following redirects already recorded on it or its ancestors).
    fn lower_path(&self, node: &Arc<Node>) -> Result<Vec<u8>> {
        if node.id == ROOT_INO {
            return Ok(Vec::new());
        }
        let loc = node.loc();
        if let Some(up) = loc.dir_in(UPPER) {
            if let Some(r) = marker(up.as_fd(), c".", "redirect") {
                if r.first() == Some(&b'/') {
                    return Ok(r);
                }
                let mut p = self.lower_path(&self.node(loc.parent)?)?;
                p.push(b'/');
                p.extend_from_slice(&r);
                return Ok(p);
            }
        }
        let mut p = self.lower_path(&self.node(loc.parent)?)?;
        p.push(b'/');
        p.extend_from_slice(loc.name.as_bytes());
        Ok(p)
    }

    /// Marks a directory about to move so that the lower layers below its new place do
    /// not merge into it: a redirect to its own lower part, or opaque if it has none.
    fn prepare_dir_move(
        &self,
        node: &Arc<Node>,
        dest_parent: &Loc,
        dest: &OsStr,
        cdest: &CStr,
    ) -> Result<()> {
        let loc = node.loc();
        let t = loc.top;
        let up = loc
            .dir_in(t)
            .ok_or_else(|| Error::new(libc::EIO, "moving dir not copied up"))?;
        if loc.dirs.len() > 1 {
            let path = self.lower_path(node)?;
            let redirect = self.layers.marker("redirect");
            xattr::set(up.as_fd(), c".", &redirect, &path, 0)
                .map_err(|e| Error::io(e, "set redirect"))
        } else if self.lower_has_any(dest_parent, t, dest, cdest) {
            self.make_opaque(up.as_fd(), c".")
        } else {
            Ok(())
        }
    }

    /// The writable branch a rename of `src` (in `pnode`) over `dst` (`newname` in
    /// `npnode`) happens on: the source's own where it is writable, else where the copy-up
    /// policy takes it. EXDEV (callers such as mv(1) copy instead, as with aufs) where the
    /// result would not show or not be one step on one branch: a destination shown from a
    /// branch above it, a new name that an entry made on that branch would not be sure to
    /// show under (a whiteout of it above, or below the new parent's lowest directory, an
    /// opaque one say: `wbr_policy::shows_on`, as for a link or a new entry), an exchange
    /// partner on another branch, or a directory merged from several branches on a mount
    /// with writable branches below the upper (no redirects there).
    fn rename_branch(
        &self,
        pnode: &Arc<Node>,
        src: &lookup::Found,
        (npnode, newname): (&Arc<Node>, &OsStr),
        dst: Option<&lookup::Found>,
        exchange: bool,
    ) -> Result<crate::layers::LayerId> {
        let t = if self.layers.writable(src.top) {
            src.top
        } else {
            self.wbr
                .copy_up_target(&self.layers, self.cpup, src.top, &pnode.loc())?
        };
        let stack = self.layers.stack();
        if stack.writable_lowers().next().is_none() {
            return Ok(t); // the kernel's shape: everything goes up
        }
        let pos = |id| stack.pos(id).unwrap_or(usize::MAX);
        let split_dir = |f: &lookup::Found| f.is_dir() && f.dirs.iter().any(|(l, _)| *l != t);
        let blocked = match dst {
            Some(d) if exchange => {
                split_dir(d) || (d.top != t && (self.layers.writable(d.top) || pos(d.top) < pos(t)))
            }
            Some(d) => pos(d.top) < pos(t),
            None => false,
        };
        if blocked || split_dir(src) {
            return err(libc::EXDEV);
        }
        if dst.is_none() {
            let nploc = npnode.loc();
            let whiteout = match lookup::probe_create(&self.layers, &nploc, newname)? {
                Slot::Taken => return err(libc::EEXIST),
                Slot::Free { whiteout } => whiteout,
            };
            if !crate::wbr_policy::shows_on(&self.layers, &nploc, whiteout, t) {
                return err(libc::EXDEV);
            }
        }
        Ok(t)
    }

    /// rename(2) with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        let Some(r) = self.rename_ends(parent, name, newparent, newname, flags)? else {
            return Ok(());
        };
        if !self.rename_allowed(&r)? {
            return Ok(());
        }
        // The writable branch the rename happens on (`rename_branch`).
        let t = self.rename_branch(
            &r.pnode,
            &r.src,
            (&r.npnode, r.newname),
            r.dst.as_ref(),
            r.exchange,
        )?;
        let work = self.staging_on(t)?;
        // Counted lookups give us nodes to copy up; released at the end.
        let (src_node, dst_node) = self.rename_nodes(&r)?;
        let (replaced, _going) = self.rename_replaced(&r);
        let result = self.rename_on(&r, t, work.as_fd(), &src_node, dst_node.as_ref());
        if result.is_ok() {
            self.renamed(&r, replaced, &src_node, dst_node.as_ref());
        }
        self.forget(src_node.id, 1);
        if let Some(d) = &dst_node {
            self.forget(d.id, 1);
        }
        result
    }

    /// The two ends of a rename, resolved (the flags and names checked first); None where
    /// a name is renamed to itself.
    fn rename_ends<'a>(
        &self,
        parent: u64,
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    ) -> Result<Option<RenameEnds<'a>>> {
        let cname = check_name(name)?;
        let cnew = check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return err(libc::EINVAL);
        }
        let pnode = self.dir_node(parent)?;
        let npnode = self.dir_node(newparent)?;
        let mut src = lookup::lookup(&self.layers, &pnode.loc(), name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        self.find_index(&pnode.loc(), name, &mut src);
        let src_key = self.identify(parent, name, &mut src);
        let mut dst = lookup::lookup(&self.layers, &npnode.loc(), newname)?;
        if let Some(d) = dst.as_mut() {
            self.find_index(&npnode.loc(), newname, d);
        }
        let dst_key = dst.as_mut().map(|d| self.identify(newparent, newname, d));
        if parent == newparent && name == newname {
            return Ok(None);
        }
        Ok(Some(RenameEnds {
            parent,
            name,
            newparent,
            newname,
            cname,
            cnew,
            pnode,
            npnode,
            src,
            src_key,
            dst,
            dst_key,
            exchange,
            noreplace,
        }))
    }

    /// Checks rename `r` before anything changes: its flags against the destination, the
    /// types of the two ends, an empty destination directory, what the ends' protections
    /// allow. False where it does nothing (two links of one inode).
    fn rename_allowed(&self, r: &RenameEnds<'_>) -> Result<bool> {
        // redirect_dir=off: a directory with a lower part stays where it is (the kernel's
        // `ovl_can_move`); mv(1) copies it instead.
        let has_lower = |f: &lookup::Found| f.is_dir() && f.dirs.iter().any(|(l, _)| *l != UPPER);
        if self.no_dir_redirects
            && (has_lower(&r.src) || (r.exchange && r.dst.as_ref().is_some_and(has_lower)))
        {
            return err(libc::EXDEV);
        }
        match (&r.dst, r.exchange, r.noreplace) {
            (None, true, _) => return err(libc::ENOENT),
            (Some(_), _, true) => return err(libc::EEXIST),
            (Some(d), false, false) => {
                if r.dst_key.as_ref() == Some(&r.src_key) {
                    // Two links to one inode: rename(2) does nothing. (Two names of a
                    // lower file with several links are two inodes, as in the kernel
                    // overlayfs: the source is copied up and replaces the other name.)
                    return Ok(false);
                }
                match (r.src.is_dir(), d.is_dir()) {
                    (true, false) => return err(libc::ENOTDIR),
                    (false, true) => return err(libc::EISDIR),
                    (true, true) if self.lists_entries(r.newparent, r.newname, d)? => {
                        return err(libc::ENOTEMPTY);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.check_rename(
            &r.pnode,
            &r.npnode,
            (&r.src, &r.cname),
            r.dst.as_ref().map(|d| (d, &*r.cnew)),
        )?;
        Ok(true)
    }

    /// Does directory `d` (found at `name` in `parent`) list anything but `.` and `..`?
    fn lists_entries(&self, parent: u64, name: &OsStr, d: &lookup::Found) -> Result<bool> {
        let dloc = Loc::new(parent, name.to_os_string(), d.top, d.dirs.clone());
        Ok(readdir::list(&self.layers, &dloc, 0, 0)?.len() > 2)
    }

    /// The nodes of rename `r`'s source and, for an exchange, its destination: counted
    /// lookups (the caller forgets them).
    fn rename_nodes(&self, r: &RenameEnds<'_>) -> Result<(Arc<Node>, Option<Arc<Node>>)> {
        let src_attr = self.lookup(r.parent, r.name)?;
        let node = |ino: u64| self.node(ino).inspect_err(|_| self.forget(ino, 1));
        let src_node = node(src_attr.node)?;
        let dst_node = match &r.dst {
            Some(_) if r.exchange => {
                // The source's counted lookup is given back if the partner's fails.
                let a = self
                    .lookup(r.newparent, r.newname)
                    .inspect_err(|_| self.forget(src_node.id, 1))?;
                Some(node(a.node).inspect_err(|_| self.forget(src_node.id, 1))?)
            }
            _ => None,
        };
        Ok((src_node, dst_node))
    }

    /// The file rename `r` replaces, if the kernel holds its node: the node with its real
    /// inode pinned, and the guard of its going name.
    fn rename_replaced(
        &self,
        r: &RenameEnds<'_>,
    ) -> (Option<(Arc<Node>, OwnedFd)>, Option<NameGoing>) {
        // A file replaced by the rename keeps its node if the kernel holds it (an open
        // file, another hard link): pin its real inode first, or the node would go on
        // naming the place the source now takes.
        let replaced = match (&r.dst, &r.dst_key) {
            (Some(d), Some(key)) if !r.exchange && !d.is_dir() => {
                self.inodes.find(key).and_then(|node| {
                    r.npnode
                        .loc()
                        .dir_in(d.top)
                        .and_then(|dir| sys::openat(dir.as_fd(), &r.cnew, libc::O_PATH, 0).ok())
                        .map(|fd| (node, fd))
                })
            }
            _ => None,
        };
        // The replaced file's link count in the kernel must settle (inode.rs).
        let going = match (&r.dst, &r.dst_key) {
            (Some(d), Some(key)) if !r.exchange && !d.is_dir() => {
                self.inodes.find(key).map(|n| n.name_going())
            }
            _ => None,
        };
        (replaced, going)
    }

    /// Rename `r` on writable branch `t` (staging directory `w`): both ends' nodes copied
    /// there first, directories prepared for their move, then one exchange or a rename
    /// that may leave a whiteout.
    fn rename_on(
        &self,
        r: &RenameEnds<'_>,
        t: crate::layers::LayerId,
        w: BorrowedFd<'_>,
        src_node: &Arc<Node>,
        dst_node: Option<&Arc<Node>>,
    ) -> Result<()> {
        let updir = self.dir_on(&r.pnode, t)?;
        let newupdir = self.dir_on(&r.npnode, t)?;
        if !r.exchange && r.dst.as_ref().is_some_and(|d| !d.is_dir() && d.top == t) {
            self.drop_number(newupdir.as_fd(), &r.cnew);
        }
        self.copy_up(src_node, CopyUp::Data)?;
        if let Some(d) = dst_node {
            self.copy_up(d, CopyUp::Data)?;
        }
        let on_t = |n: &Arc<Node>| n.loc.read().top == t;
        if !on_t(src_node) || dst_node.is_some_and(|d| !on_t(d)) {
            return err(libc::EXDEV);
        }
        let ploc = r.pnode.loc();
        let nploc = r.npnode.loc();
        let src_lower = self.lower_positive(&ploc, t, (r.name, &r.cname), false);
        if src_node.is_dir() {
            self.prepare_dir_move(src_node, &nploc, r.newname, &r.cnew)?;
        }
        if let Some(d) = dst_node {
            if d.is_dir() {
                self.prepare_dir_move(d, &ploc, r.name, &r.cname)?;
            }
        }
        if r.exchange {
            return ops::renameat2(
                updir.as_fd(),
                &r.cname,
                newupdir.as_fd(),
                &r.cnew,
                libc::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::io(e, "rename exchange"));
        }
        let dirs = (updir.as_fd(), newupdir.as_fd());
        self.rename_over(r, t, dirs, w, src_node.is_dir(), src_lower)
    }

    /// The rename (no exchange) of `r` from `updir` to `newupdir` on branch `t`: over the
    /// destination's upper entry, leaving a whiteout where the source has a lower part
    /// (`src_lower`).
    fn rename_over(
        &self,
        r: &RenameEnds<'_>,
        t: crate::layers::LayerId,
        (updir, newupdir): (BorrowedFd<'_>, BorrowedFd<'_>),
        w: BorrowedFd<'_>,
        src_dir: bool,
        src_lower: bool,
    ) -> Result<()> {
        // Clear the destination's upper entry if it is a directory (it may hold
        // whiteouts) or a whiteout that a directory can't replace.
        let mut moved_away: Option<CString> = None;
        match upper_at(newupdir, &r.cnew)? {
            UpperAt::Entry if r.dst.as_ref().is_some_and(|d| d.is_dir() && d.top == t) => {
                let t = tmp_name();
                util::rename_noreplace(newupdir, &r.cnew, w, &t)
                    .map_err(|e| Error::io(e, "rename: clear target"))?;
                moved_away = Some(t);
            }
            UpperAt::Whiteout if src_dir => {
                ops::unlinkat(newupdir, &r.cnew, 0)
                    .map_err(|e| Error::io(e, "rename: clear whiteout"))?;
            }
            _ => {}
        }
        if let Err(e) = self.move_name(r, updir, newupdir, src_lower) {
            if let Some(t) = &moved_away {
                let _ = util::rename_noreplace(w, t, newupdir, &r.cnew);
            }
            return Err(Error::io(e, "rename"));
        }
        if let Some(t) = moved_away {
            remove_tree(w, &t).map_err(|e| Error::io(e, "rename cleanup"))?;
        }
        if !src_dir && r.parent != r.newparent {
            self.mark_impure(newupdir, &r.cnew);
        }
        // An aufs whiteout of the new name on this branch: the entry now hides it all.
        if let Some(wh) = whiteout::aufs_name(r.newname) {
            let _ = ops::unlinkat(newupdir, &wh, 0);
        }
        Ok(())
    }

    /// Moves `updir/name` to `newupdir/newname` for rename `r`, leaving a whiteout of the
    /// mount's format where the source has a lower part (`src_lower`).
    fn move_name(
        &self,
        r: &RenameEnds<'_>,
        updir: BorrowedFd<'_>,
        newupdir: BorrowedFd<'_>,
        src_lower: bool,
    ) -> std::io::Result<()> {
        let (cname, cnew) = (&r.cname, &r.cnew);
        if src_lower && self.aufs_whiteouts {
            ops::renameat2(updir, cname, newupdir, cnew, 0).and_then(|()| {
                make_aufs_whiteout(updir, r.name)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.errno))
            })
        } else if src_lower {
            ops::renameat2(updir, cname, newupdir, cnew, libc::RENAME_WHITEOUT).or_else(|e| {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP)
                ) {
                    ops::renameat2(updir, cname, newupdir, cnew, 0)
                        .and_then(|()| ops::mknodat(updir, cname, libc::S_IFCHR, 0))
                } else {
                    Err(e)
                }
            })
        } else {
            ops::renameat2(updir, cname, newupdir, cnew, 0)
        }
    }

    /// After rename `r`: the replaced file's node keeps its pinned inode and loses its
    /// name; the moved nodes take their new places and keep their numbers.
    fn renamed(
        &self,
        r: &RenameEnds<'_>,
        replaced: Option<(Arc<Node>, OwnedFd)>,
        src_node: &Arc<Node>,
        dst_node: Option<&Arc<Node>>,
    ) {
        if let Some((node, fd)) = replaced {
            node.loc_mut().pinned = Some(Arc::new(fd));
            self.inodes.unname(&node);
        }
        self.inodes.relocate(src_node.id, r.newparent, r.newname);
        self.keep_number(src_node, &r.npnode, &r.cnew);
        if let Some(d) = dst_node {
            self.inodes.relocate(d.id, r.parent, r.name);
            self.keep_number(d, &r.pnode, &r.cname);
        }
    }

    /// Marks upper directory `dir` `impure` (as the kernel's rename does) when its new entry
    /// `name` carries a recorded origin: a listing of it must then give that entry the
    /// origin's number (`readdir.rs`), as its lookup does.
    fn mark_impure(&self, dir: BorrowedFd<'_>, name: &CStr) {
        let has = whiteout::marker(dir, name, "origin").is_some_and(|v| !v.is_empty());
        if has {
            let impure = self.layers.marker("impure");
            let _ = xattr::set(dir, c".", &impure, b"y", 0);
        }
    }

    /// After a rename: a non-directory that now sits at `dir/name` keeps the number it had
    /// (see `UnionFs::renumbered`), if its new place would give it another.
    fn keep_number(&self, node: &Arc<Node>, dir: &Arc<Node>, name: &CStr) {
        if node.is_dir() {
            return;
        }
        let t = node.loc.read().top;
        let Some(up) = dir.loc.read().dir_in(t) else {
            return;
        };
        if let Ok(st) = sys::fstatat(up.as_fd(), name) {
            if self.layers.ino(st.st_dev, st.st_ino) != node.id {
                self.renumbered.insert((st.st_dev, st.st_ino), node.id);
            }
        }
    }

    /// Before the last name of an upper file goes: forget the number it kept, since its
    /// inode number may be reused by a file that must not inherit it.
    fn drop_number(&self, updir: BorrowedFd<'_>, name: &CStr) {
        if self.renumbered.is_empty() {
            return;
        }
        if let Ok(st) = sys::fstatat(updir, name) {
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink <= 1 {
                self.renumbered.remove(&(st.st_dev, st.st_ino));
            }
        }
    }

    /// Registers an open fd as a handle.
    pub(crate) fn add_handle(&self, ino: u64, fd: OwnedFd, flags: i32, data_only: bool) -> u64 {
        let fh = self.new_fh();
        self.files
            .insert(fh, Arc::new(FileHandle::new(ino, fd, flags, data_only)));
        fh
    }
}

/// Kind of a mknod mode, for the create API.
pub fn mknod_kind(mode: u32) -> Kind {
    Kind::from_mode(mode)
}

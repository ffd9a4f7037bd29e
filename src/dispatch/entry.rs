//! Names and attributes: LOOKUP/FORGET/GETATTR/SETATTR/READLINK and the requests that
//! create, remove or move names, with the TTLs their replies carry and the invalidations
//! a change of names needs before it is answered.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    caller, errno, Ctx, Dispatcher, EntryOut, FileAttrOut, Op, Reply, TimeOrNow, UNSEEN_ATTR_TTL,
};
use crate::attr::{Attr, SetAttr};
use crate::dir::NewKind;
use crate::stats::Op as Count;
use crate::sys::ops::SetTime;

impl Dispatcher {
    pub(super) fn lookup(&self, ctx: &Ctx, name: &OsStr) -> Reply {
        self.stats.count(Count::Lookup);
        match self.fs.lookup(ctx.nodeid, name) {
            Ok(a) => {
                self.settle_count(&a);
                Reply::Entry(self.entry_out(ctx.nodeid, &a))
            }
            // A negative entry (node id 0) lets the kernel cache "no such name" too.
            Err(e) if e.errno == libc::ENOENT && !self.entry_ttl(ctx.nodeid).is_zero() => {
                let ttl = self.entry_ttl(ctx.nodeid);
                Reply::Entry(EntryOut {
                    nodeid: 0,
                    generation: 0,
                    entry_valid: ttl,
                    attr_valid: ttl,
                    attr: attr_out(&Attr::negative(), 0),
                })
            }
            Err(e) => errno("lookup", e),
        }
    }

    pub(super) fn forget(&self, node: u64, nlookup: u64) -> Reply {
        self.stats.count(Count::Forget);
        self.fs.forget(node, nlookup);
        Reply::NoReply
    }

    pub(super) fn getattr(&self, ctx: &Ctx, fh: Option<u64>) -> Reply {
        self.stats.count(Count::Getattr);
        match self.fs.getattr(ctx.nodeid, fh) {
            Ok(a) => {
                self.settle_count(&a);
                self.attr_reply(&a)
            }
            Err(e) => errno("getattr", e),
        }
    }

    pub(super) fn setattr(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let Op::Setattr {
            fh,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ..
        } = op
        else {
            return Reply::Err(libc::EIO);
        };
        self.stats.count(Count::Setattr);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh,
            caller: Some(caller(ctx)),
        };
        match self.fs.setattr(ctx.nodeid, s) {
            Ok(a) => self.attr_reply(&a),
            Err(e) => errno("setattr", e),
        }
    }

    pub(super) fn readlink(&self, ctx: &Ctx) -> Reply {
        self.stats.count(Count::Readlink);
        match self.fs.readlink(ctx.nodeid) {
            Ok(t) => Reply::Readlink(t),
            Err(e) => errno("readlink", e),
        }
    }

    /// SYMLINK, MKNOD, MKDIR and CREATE: a new name in `ctx.nodeid`.
    pub(super) fn create(&self, ctx: &Ctx, op: Op<'_>) -> Reply {
        let parent = ctx.nodeid;
        let (what, name, mode, umask, kind) = match op {
            Op::Symlink { name, target } => (
                "symlink",
                name,
                libc::S_IFLNK | 0o777,
                0,
                NewKind::Symlink(target.as_bytes()),
            ),
            Op::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => (
                "mknod",
                name,
                mode,
                umask,
                NewKind::Node { rdev: rdev as u64 },
            ),
            Op::Mkdir { name, mode, umask } => {
                ("mkdir", name, mode | libc::S_IFDIR, umask, NewKind::Dir)
            }
            Op::Create {
                name,
                flags,
                mode,
                umask,
            } => (
                "create",
                name,
                mode | libc::S_IFREG,
                umask,
                NewKind::File { flags },
            ),
            _ => return Reply::Err(libc::EIO),
        };
        self.stats.count(match what {
            "symlink" => Count::Symlink,
            "mknod" => Count::Mknod,
            "mkdir" => Count::Mkdir,
            _ => Count::Create,
        });
        let r = self
            .fs
            .create_entry(parent, name, mode, umask, kind, caller(ctx));
        self.names_changed(&[parent]);
        match r {
            Ok((a, Some(fh))) if what == "create" => self.created(parent, &a, fh),
            Ok((_, None)) if what == "create" => Reply::Err(libc::EIO),
            Ok((a, _)) => Reply::Entry(self.entry_out(parent, &a)),
            Err(e) => errno(what, e),
        }
    }

    pub(super) fn link(&self, ctx: &Ctx, oldnodeid: u64, newname: &OsStr) -> Reply {
        self.stats.count(Count::Link);
        let r = self.fs.link(oldnodeid, ctx.nodeid, newname);
        self.names_changed(&[ctx.nodeid]);
        match r {
            Ok(a) => Reply::Entry(self.entry_out(ctx.nodeid, &a)),
            Err(e) => errno("link", e),
        }
    }

    pub(super) fn remove(&self, ctx: &Ctx, name: &OsStr, dir: bool) -> Reply {
        self.stats
            .count(if dir { Count::Rmdir } else { Count::Unlink });
        let r = self.fs.remove(ctx.nodeid, name, dir);
        self.names_changed(&[ctx.nodeid]);
        super::empty(if dir { "rmdir" } else { "unlink" }, r)
    }

    pub(super) fn rename(
        &self,
        ctx: &Ctx,
        name: &OsStr,
        newdir: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Reply {
        self.stats.count(Count::Rename);
        let r = self.fs.rename(ctx.nodeid, name, newdir, newname, flags);
        self.names_changed(&[ctx.nodeid, newdir]);
        super::empty("rename", r)
    }

    /// The attribute TTL for `a`: zero for a name node (its GETATTR replies carry the
    /// number shown, which its entry replies cannot) and under `udba=notify` when a direct
    /// change to it would not be seen (udba.rs), so every stat asks; `UNSEEN_ATTR_TTL`
    /// while its times can change unseen (see `UnionFs::times_change_unseen`); the mount's
    /// TTL otherwise.
    pub(super) fn attr_ttl(&self, a: &Attr) -> Duration {
        if a.node != a.ino || !self.fs.udba_covers_attrs(a.node) {
            Duration::ZERO
        } else if self.fs.times_change_unseen(a.node) {
            self.ttl.min(UNSEEN_ATTR_TTL)
        } else {
            self.ttl
        }
    }

    /// The TTL of an entry (positive or negative) in directory `parent`: zero under
    /// `udba=notify` for a directory not watched, the mount's otherwise.
    pub(super) fn entry_ttl(&self, parent: u64) -> Duration {
        if self.fs.udba_covers_dir(parent) {
            self.ttl
        } else {
            Duration::ZERO
        }
    }

    /// The entry reply for `a` in `parent`. The attributes carry the node id as their
    /// ino, as fuser has always sent them (it takes the entry's node id from there).
    pub(super) fn entry_out(&self, parent: u64, a: &Attr) -> EntryOut {
        EntryOut {
            nodeid: a.node,
            generation: self.fs.generation_of(a.node),
            entry_valid: self.entry_ttl(parent),
            attr_valid: self.attr_ttl(a),
            attr: attr_out(a, a.node),
        }
    }

    fn attr_reply(&self, a: &Attr) -> Reply {
        Reply::Attr {
            attr_valid: self.attr_ttl(a),
            attr: attr_out(a, a.ino),
        }
    }

    /// Before a reply carrying `a`'s attributes: while a name of its node goes or just
    /// went, the kernel must not cache them, or its link count may end one short, at 0
    /// (inode.rs, "Link counts the kernel keeps"). A notify inval_inode first moves the
    /// inode's attribute version past the one the request was sent with, and the kernel
    /// drops the reply's attributes (a stat still gets them: it reads the reply).
    pub(super) fn settle_count(&self, a: &Attr) {
        if self.fs.count_settling(a.node) {
            self.stats.count(Count::NotifyInvalRemoved);
            self.forget_cached_attrs(a.node);
        }
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages).
    pub(super) fn forget_cached_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                log::debug!("inval_inode {ino:#x}: {e}");
            }
        }
    }

    /// The daemon changed `ino`'s mode while serving a write (dropped setuid/setgid bits):
    /// the kernel's cached attributes must go before the reply, or its next permission
    /// check or exec would still see the bits (the reply of a write carries no attributes,
    /// and with the writeback cache a later stat would not ask either).
    pub(super) fn mode_changed(&self, ino: u64, changed: bool) {
        if changed {
            self.forget_cached_attrs(ino);
        }
    }
}

/// `a` as the kernel's `struct fuse_attr`, with `ino` as its number.
pub(super) fn attr_out(a: &Attr, ino: u64) -> FileAttrOut {
    let (atime, atimensec) = secs_nsecs(a.atime);
    let (mtime, mtimensec) = secs_nsecs(a.mtime);
    let (ctime, ctimensec) = secs_nsecs(a.ctime);
    FileAttrOut {
        ino,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: a.mode(),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Seconds since the epoch (negative before it) and nanoseconds 0..1e9, saturating.
pub fn secs_nsecs(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => match i64::try_from(d.as_secs()) {
            Ok(s) => (s, d.subsec_nanos()),
            Err(_) => (i64::MAX, 999_999_999),
        },
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs(), d.subsec_nanos());
            if s > i64::MAX as u64 {
                (i64::MIN, 0)
            } else if n == 0 {
                (-(s as i64), 0)
            } else {
                (-(s as i64) - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::At { secs, nsecs } => SetTime::At(secs, nsecs as i64),
    }
}

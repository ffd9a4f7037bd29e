//! The classic transport: fuser's `Filesystem` over /dev/fuse. Each handler turns fuser's
//! arguments into an [`Op`], has the [`Dispatcher`] serve it, and turns the [`Reply`] into
//! fuser's reply; no decision is made here. INIT is answered here (fuser answers it), with
//! the dispatcher's choices (dispatch/init.rs).
//!
//! READDIR and READDIRPLUS are filled straight into fuser's reply buffer (fuser does not
//! tell its filesystem the request's size, only when its buffer is full), by the same
//! dispatcher code that cuts [`Reply::Dir`] for other transports.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow as FuserTime, WriteFlags,
};

use crate::dispatch::{Ctx, Dispatcher, Invalidator, Op, Reply, Transport};
use crate::fs::UnionFs;

mod reply;

use reply::{err, system_time_set, time_or_now, Answer, Dirents, DirentsPlus, NoReply};

/// The `fuser::Filesystem` over a shared [`Dispatcher`].
pub struct FuseAdapter {
    d: Arc<Dispatcher>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<UnionFs>, ttl: Duration) -> Self {
        FuseAdapter {
            d: Arc::new(Dispatcher::new(fs, ttl)),
        }
    }

    /// The dispatcher, to share with another transport.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.d.clone()
    }

    /// The slot `mount.rs` fills with the mount's device number (`MAJ:MIN`).
    pub fn bdi_slot(&self) -> Arc<std::sync::OnceLock<String>> {
        self.d.bdi_slot()
    }

    /// The slot `mount.rs` fills with the session's notifier.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<Notifier>> {
        self.d.notifier_slot()
    }

    /// Drops kernel caches from outside a request (branch changes, udba).
    pub fn invalidator(&self) -> Invalidator {
        self.d.invalidator()
    }

    /// Serves `op` for node `ino` and sends the reply.
    fn serve(&self, req: &Request, ino: INodeNo, op: Op<'_>, reply: impl Answer) {
        let ctx = ctx(req, ino);
        let r = self.d.handle(&ctx, op);
        reply.answer(&r);
        self.d.replied(&ctx, r);
    }
}

fn ctx(req: &Request, ino: INodeNo) -> Ctx {
    Ctx {
        unique: req.unique().0,
        nodeid: ino.0,
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        transport: Transport::Classic,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.d.count_init(Transport::Classic);
        self.d.init(config);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve(req, parent, Op::Lookup { name }, reply)
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.serve(req, ino, Op::Forget { nlookup }, NoReply)
    }

    // batch_forget: fuser's default calls `forget` for each node (its ForgetOne type is
    // private, so it cannot be overridden).

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let fh = fh.map(|f| f.0);
        self.serve(req, ino, Op::Getattr { fh }, reply)
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(req, ino, Op::Readlink, reply)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ctx = ctx(req, ino);
        match self.d.handle(&ctx, Op::Open { flags: flags.0 }) {
            Reply::Wait(p) => p.then(move |r| reply.answer(&r)),
            r => {
                reply.answer(&r);
                self.d.replied(&ctx, r);
            }
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (fh, flags, lock_owner) = (fh.0, flags.0, lock_owner.map(|l| l.0));
        let op = Op::Read {
            fh,
            offset,
            size,
            flags,
            lock_owner,
        };
        self.serve(req, ino, op, reply)
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        let op = Op::Release {
            fh: fh.0,
            flags: flags.0,
            release_flags: flush as u32, // FUSE_RELEASE_FLUSH
            lock_owner: lock_owner.map(|l| l.0),
        };
        self.serve(req, ino, op, reply)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve(req, ino, Op::Opendir { flags: flags.0 }, reply)
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = (self.d).readdir_to(&ctx(req, ino), fh.0, offset, &mut Dirents(&mut reply));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut out = DirentsPlus(&mut reply);
        match (self.d).readdirplus_to(&ctx(req, ino), fh.0, offset, &mut out) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.serve(req, ino, Op::Releasedir { fh: fh.0 }, reply)
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.serve(req, ino, Op::Statfs, reply)
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(req, ino, Op::Getxattr { name, size }, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.serve(req, ino, Op::Listxattr { size }, reply)
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve(req, ino, Op::Access { mask: mask.bits() }, reply)
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let fh = fh.0;
        self.serve(req, ino, Op::Lseek { fh, offset, whence }, reply)
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<FuserTime>,
        mtime: Option<FuserTime>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = Op::Setattr {
            fh: fh.map(|f| f.0),
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(system_time_set),
            lock_owner: None,
            kill_suidgid: false,
        };
        self.serve(req, ino, op, reply)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mknod {
            name,
            mode,
            rdev,
            umask,
        };
        self.serve(req, parent, op, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.serve(req, parent, Op::Mkdir { name, mode, umask }, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = (link_name, target.as_os_str());
        self.serve(req, parent, Op::Symlink { name, target }, reply)
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let oldnodeid = ino.0;
        self.serve(req, newparent, Op::Link { oldnodeid, newname }, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(req, parent, Op::Unlink { name }, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(req, parent, Op::Rmdir { name }, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let op = Op::Rename {
            newdir: newparent.0,
            name,
            newname,
            flags: flags.bits(),
        };
        self.serve(req, parent, op, reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let op = Op::Create {
            name,
            flags,
            mode,
            umask,
        };
        self.serve(req, parent, op, reply)
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let op = Op::Write {
            fh: fh.0,
            offset,
            data,
            write_flags: write_flags.bits(),
            flags: flags.0,
            lock_owner: lock_owner.map(|l| l.0),
        };
        self.serve(req, ino, op, reply)
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (fh, lock_owner) = (fh.0, lock_owner.0);
        self.serve(req, ino, Op::Flush { fh, lock_owner }, reply)
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fh = fh.0;
        self.serve(req, ino, Op::Fsync { fh, datasync }, reply)
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fh = fh.0;
        self.serve(req, ino, Op::Fsyncdir { fh, datasync }, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Setxattr {
            name,
            value,
            flags,
            setxattr_flags: 0,
        };
        self.serve(req, ino, op, reply)
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(req, ino, Op::Removexattr { name }, reply)
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fallocate {
            fh: fh.0,
            offset,
            length,
            mode,
        };
        self.serve(req, ino, op, reply)
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let op = Op::CopyFileRange {
            fh_in: fh_in.0,
            off_in: offset_in,
            nodeid_out: ino_out.0,
            fh_out: fh_out.0,
            off_out: offset_out,
            len,
            flags: flags.bits(),
        };
        self.serve(req, ino_in, op, reply)
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let op = Op::Ioctl {
            fh: fh.0,
            flags: flags.bits(),
            cmd,
            in_data,
            out_size,
        };
        self.serve(req, ino, op, reply)
    }
}

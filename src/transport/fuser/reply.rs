//! fuser's side of the classic transport's replies: each fuser reply type answers a
//! [`Reply`] ([`Answer`]), fuser's directory buffers as the dispatcher's sinks, fuser's
//! INIT view as an [`InitConfig`], and the conversions between the kernel's attribute and
//! time fields and fuser's types.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, TimeOrNow as FuserTime,
};
use log::warn;

use crate::dispatch::init::{Cap, InitConfig};
use crate::dispatch::{DirPlusSink, DirSink, EntryOut, FileAttrOut, Reply, TimeOrNow};
use crate::sys::backing::{fuser_created_passthrough, fuser_opened_passthrough};

/// A fuser reply type answering a [`Reply`].
pub(super) trait Answer {
    fn answer(self, r: &Reply);
}

/// A reply of a kind the request cannot carry: a bug in the dispatcher.
fn mismatch(r: &Reply) -> Errno {
    warn!("reply {r:?} does not fit its request; answering EIO");
    Errno::EIO
}

pub(super) fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Answer for ReplyEntry {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Entry(e) => self.entry_with_ttls(
                &e.attr_valid,
                &e.entry_valid,
                &file_attr(&e.attr, e.nodeid),
                Generation(e.generation),
            ),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyAttr {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Attr { attr_valid, attr } => self.attr(attr_valid, &file_attr(attr, attr.ino)),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyData {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Data(d) | Reply::Readlink(d) => self.data(d),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyOpen {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Open(o) => {
                let flags = FopenFlags::from_bits_retain(o.open_flags);
                match o.backing_id {
                    Some(id) => fuser_opened_passthrough(self, FileHandle(o.fh), flags, id),
                    None => self.opened(FileHandle(o.fh), flags),
                }
            }
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyCreate {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Create { entry, open } => {
                let (ttl, attr) = (&entry.entry_valid, file_attr(&entry.attr, entry.nodeid));
                let (fh, flags) = (
                    FileHandle(open.fh),
                    FopenFlags::from_bits_retain(open.open_flags),
                );
                match open.backing_id {
                    Some(id) => {
                        let g = entry.generation;
                        fuser_created_passthrough(self, ttl, &attr, fh, g, flags, id)
                    }
                    None => self.created(ttl, &attr, Generation(entry.generation), fh, flags),
                }
            }
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyWrite {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Write { size } => self.written(*size),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyStatfs {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Statfs(s) => self.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyXattr {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Xattr { size } => self.size(*size),
            Reply::XattrData(d) => self.data(d),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyIoctl {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Ioctl { result, data } => self.ioctl(*result, data),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyLseek {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Lseek { offset } => self.offset(*offset),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

impl Answer for ReplyEmpty {
    fn answer(self, r: &Reply) {
        match r {
            Reply::Empty => self.ok(),
            Reply::Err(e) => self.error(err(*e)),
            r => self.error(mismatch(r)),
        }
    }
}

/// FORGET has no reply.
pub(super) struct NoReply;

impl Answer for NoReply {
    fn answer(self, _: &Reply) {}
}

/// fuser's READDIR buffer as a [`DirSink`].
pub(super) struct Dirents<'a>(pub &'a mut ReplyDirectory);

impl DirSink for Dirents<'_> {
    fn add(&mut self, ino: u64, off: u64, typ: u32, name: &OsStr) -> bool {
        !self.0.add(INodeNo(ino), off, file_type(typ << 12), name)
    }
}

/// fuser's READDIRPLUS buffer as a [`DirPlusSink`] (fuser sends one TTL for the entry and
/// its attributes, and the attributes' ino as the node id and the dirent's ino).
pub(super) struct DirentsPlus<'a>(pub &'a mut ReplyDirectoryPlus);

impl DirPlusSink for DirentsPlus<'_> {
    fn add(&mut self, e: &EntryOut, off: u64, name: &OsStr) -> bool {
        // An entry not to be linked (node id 0) cannot go out as such with a d_ino: its
        // attributes' number goes as both, and their invalid size stops the link
        // (dispatch/dir.rs, `unlinked_entry`).
        let ino = if e.nodeid == 0 { e.attr.ino } else { e.nodeid };
        let attr = file_attr(&e.attr, ino);
        let g = Generation(e.generation);
        !self
            .0
            .add(INodeNo(ino), off, name, &e.entry_valid, &attr, g)
    }
}

/// fuser's view of INIT as an [`InitConfig`].
impl InitConfig for KernelConfig {
    fn add(&mut self, cap: Cap) -> bool {
        self.add_capabilities(InitFlags::from_bits_retain(cap.bits))
            .is_ok()
    }

    fn set_max_stack_depth(&mut self, depth: u32) -> bool {
        KernelConfig::set_max_stack_depth(self, depth).is_ok()
    }

    fn set_max_background(&mut self, n: u16) {
        let _ = KernelConfig::set_max_background(self, n);
    }

    fn set_max_write(&mut self, bytes: u32) {
        let _ = KernelConfig::set_max_write(self, bytes)
            .or_else(|max| KernelConfig::set_max_write(self, max));
    }

    fn kernel_minor(&self) -> u32 {
        self.kernel_abi().1
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: i64, nsecs: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// `a` as fuser's attributes, `ino` as their number (fuser sends an entry's node id there).
fn file_attr(a: &FileAttrOut, ino: u64) -> ::fuser::FileAttr {
    let ctime = system_time(a.ctime, a.ctimensec);
    ::fuser::FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime, a.atimensec),
        mtime: system_time(a.mtime, a.mtimensec),
        ctime,
        crtime: ctime,
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: a.flags,
    }
}

pub(super) fn time_or_now(t: FuserTime) -> TimeOrNow {
    match t {
        FuserTime::Now => TimeOrNow::Now,
        FuserTime::SpecificTime(t) => system_time_set(t),
    }
}

pub(super) fn system_time_set(t: SystemTime) -> TimeOrNow {
    let (secs, nsecs) = crate::dispatch::secs_nsecs(t);
    TimeOrNow::At { secs, nsecs }
}

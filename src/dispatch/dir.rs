//! Directory streams: OPENDIR (or none at all), READDIR and READDIRPLUS cut into replies
//! entry by entry (into a [`DirSink`]/[`DirPlusSink`]: sized by the request for
//! [`Reply::Dir`], or a transport's own buffer), RELEASEDIR, FSYNCDIR, and the drops of
//! the kernel's cached listings when names change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;

use super::open::{FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE};
use super::{errno, Ctx, DirPlusSink, DirSink, Dispatcher, EntryOut, OpenOut, Reply, DEFAULT_TTL};
use crate::attr::Attr;
use crate::inode::Kind;
use crate::stats::Op as Count;

impl Dispatcher {
    /// The open flags of a directory stream. The kernel may keep listings (FOPEN_CACHE_DIR)
    /// and across opens (FOPEN_KEEP_CACHE) when every change of names goes through this
    /// mount, i.e. with the default timeout (with `timeout=`, branches may change behind
    /// its back, and the kernel would not see those). Why that is safe:
    /// - the kernel starts a stream from its cached listing only if the directory's change
    ///   counter (bumped by the kernel for every create/link/unlink/rename it makes) and
    ///   mtime equal those of when the cache was begun;
    /// - a stream already past offset 0 reads on in the cache, or appends what the daemon
    ///   sends it to the cache: [`Dispatcher::names_changed`] drops the cached listing
    ///   (notify inval_inode, before the change is answered, while the kernel holds the
    ///   directory locked against readers), and a dropped page of a cached listing makes
    ///   the kernel start it over; the daemon rebuilds a directory's listing after any change
    ///   (UnionFs::readdir), and cookie offsets (readdir.rs) let a stream go on in a later
    ///   listing, in the cache or from the daemon, without skipping or repeating a name;
    /// - a READDIRPLUS reply never leaves out a name that exists (see `readdirplus`).
    ///
    /// With `strictatime` (and not `nodiratime`) every listing must reach the branch, where
    /// the directory's atime is updated, so listings are not cached then; nor with
    /// `udba=reval`, nor under `udba=notify` for a directory not watched (udba.rs).
    fn dir_flags(&self, ino: u64) -> u32 {
        let p = self.fs.layers.atime;
        let strict_dirs = p.atime == crate::atime::Atime::Strict && !p.nodiratime;
        if self.ttl == DEFAULT_TTL && !strict_dirs && self.fs.udba_covers_dir(ino) {
            FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE
        } else {
            0
        }
    }

    /// Whether directories are opened at all. Where every directory gets
    /// FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE (`dir_flags` with the default timeout, directory
    /// atimes not strict, `udba=none`), OPENDIR is answered ENOSYS: the kernel then sends
    /// no OPENDIR or RELEASEDIR on the connection again and opens every directory with
    /// handle 0 and exactly those flags (Linux fs/fuse/file.c, `no_opendir`), which saves
    /// two round trips per directory walked. Streams share their directory's listing
    /// (readdir.rs), so nothing needs a handle; `stack.rs` finds open directories in
    /// /proc. Decided from fixed settings: it holds for the life of the connection.
    fn opens_dirs(&self) -> bool {
        let p = self.fs.layers.atime;
        let strict_dirs = p.atime == crate::atime::Atime::Strict && !p.nodiratime;
        !(self.ttl == DEFAULT_TTL && !strict_dirs && self.fs.udba == crate::udba::Udba::None)
    }

    /// After a request that changed (or tried to change) names in the directories `dirs`,
    /// before it is answered: open streams' listings are out of date, and the kernel's
    /// cached listings of `dirs` are dropped.
    ///
    /// Only where the kernel may hold one: a directory listed since its last drop (see
    /// `listed`). The kernel fills its cached listing only from READDIR/READDIRPLUS replies,
    /// and it holds the directory locked shared while it reads one and exclusive while it
    /// creates, removes or renames a name in it, so a listing cannot be filled between this
    /// check and the change. The drop (notify inval_inode) also throws away the
    /// directory's cached attributes, mode included, so skipping it where nothing is cached
    /// spares the GETATTR the kernel's next permission check of the directory would make
    /// (one per created file in an untar; the kernel itself invalidates only the times and
    /// size of a directory it changed).
    pub(super) fn names_changed(&self, dirs: &[u64]) {
        self.fs.names_changed();
        let Some(n) = self.notifier.get() else {
            return;
        };
        for (i, d) in dirs.iter().enumerate() {
            if dirs[..i].contains(d) || self.listed.remove(d).is_none() {
                continue;
            }
            self.stats.count(Count::NotifyInvalListing);
            if let Err(e) = n.inval_inode(fuser::INodeNo(*d), 0, 0) {
                debug!("inval_inode {d:#x}: {e}");
            }
        }
    }

    pub(super) fn opendir(&self, ctx: &Ctx) -> Reply {
        self.stats.count(Count::Opendir);
        if !self.opens_dirs() {
            self.fs.no_dir_handles();
            return Reply::Err(libc::ENOSYS);
        }
        match self.fs.opendir(ctx.nodeid) {
            Ok(fh) => Reply::Open(OpenOut {
                fh,
                open_flags: self.dir_flags(ctx.nodeid),
                backing_id: None,
            }),
            Err(e) => errno("opendir", e),
        }
    }

    pub(super) fn releasedir(&self, fh: u64) -> Reply {
        self.stats.count(Count::Releasedir);
        self.fs.releasedir(fh);
        Reply::Empty
    }

    pub(super) fn fsyncdir(&self, ctx: &Ctx, datasync: bool) -> Reply {
        self.stats.count(Count::Fsyncdir);
        super::empty("fsyncdir", self.fs.fsyncdir(ctx.nodeid, datasync))
    }

    /// READDIR for a transport that fills its own reply buffer (`out` says when it is
    /// full); the same as [`Op::Readdir`](super::Op::Readdir) otherwise. Err: the errno
    /// to answer.
    pub fn readdir_to(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        out: &mut impl DirSink,
    ) -> Result<(), i32> {
        self.stats.count_transport(ctx.transport);
        match self.readdir(ctx, fh, offset, out) {
            Some(Reply::Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// READDIRPLUS for a transport that fills its own reply buffer (as [`Self::readdir_to`]).
    pub fn readdirplus_to(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        out: &mut impl DirPlusSink,
    ) -> Result<(), i32> {
        self.stats.count_transport(ctx.transport);
        match self.readdirplus(ctx, fh, offset, out) {
            Some(Reply::Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the kernel is to link `a`'s READDIRPLUS entry (make a dentry of the node,
    /// holding one reference).
    ///
    /// The kernel takes an entry's d_ino from its dirent and the node from its entry part.
    /// An object node's id is the number it shows, so it is linked. A name node's id is
    /// not (see `inode.rs`): its entry goes out unlinked ([`unlinked_entry`]) with the
    /// number it shows, so that the kernel lists it and links nothing; a later stat looks
    /// the name up, as after a plain READDIR. The FORGET fuser's form of it draws names no
    /// node (a lower file's number is an object node's only while it has one link) and
    /// changes nothing. A kernel older than FUSE 7.32 would link an invalid-size entry
    /// from fuser: such an entry then carries its node, and its node id as d_ino.
    fn plus_links(&self, a: &Attr) -> bool {
        let name_node = a.node != a.ino;
        !name_node || !self.plus_without_node.load(Ordering::Relaxed) || self.fs.has_node(a.ino)
    }

    /// The entries of the stream `fh` of `ctx.nodeid` after `offset`, as many as `out`
    /// takes. `Some`: the error reply.
    pub(super) fn readdir(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        out: &mut impl DirSink,
    ) -> Option<Reply> {
        let ino = ctx.nodeid;
        self.stats.count(Count::Readdir);
        self.listed.insert(ino, ());
        let listing = match self.fs.readdir(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return Some(errno("readdir", e)),
        };
        let start = crate::readdir::position_after(&listing, offset);
        if start >= listing.len() {
            self.fs.readdir_done(ino);
        }
        for e in listing.get(start..).unwrap_or_default() {
            if !out.add(e.ino, e.off, dtype(e.kind), &e.name) {
                break;
            }
        }
        None
    }

    /// As `readdir`, each entry with its attributes (a lookup: the kernel holds a
    /// reference on each node sent, so one that does not fit is forgotten again).
    pub(super) fn readdirplus(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        out: &mut impl DirPlusSink,
    ) -> Option<Reply> {
        let ino = ctx.nodeid;
        self.stats.count(Count::Readdirplus);
        self.listed.insert(ino, ());
        let listing = match self.fs.readdir(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return Some(errno("readdirplus", e)),
        };
        let start = crate::readdir::position_after(&listing, offset);
        if start >= listing.len() {
            self.fs.readdir_done(ino);
        }
        let mut added = false;
        for e in listing.get(start..).unwrap_or_default() {
            let counted = !(e.name == "." || e.name == "..");
            let attr = match self.fs.readdirplus_entry(ino, e) {
                Ok(a) => a,
                // Gone since the listing was made: skip it, as a fresh listing would (and
                // `.` or `..` without attributes: as before, not worth failing a listing).
                Err(err) if err.errno == libc::ENOENT || !counted => {
                    debug!("readdirplus: skipping {:?}: {err}", e.name);
                    continue;
                }
                // Any other failure must not drop the name silently (the kernel may keep
                // this reply as the directory's listing): end the reply before it, so the
                // next request starts at it, or fail this one.
                Err(err) if added => {
                    debug!("readdirplus: stopping at {:?}: {err}", e.name);
                    break;
                }
                Err(err) => return Some(errno("readdirplus", err)),
            };
            let linked = self.plus_links(&attr);
            if counted && !linked {
                // The kernel makes no dentry of it: it holds no reference.
                self.fs.forget(attr.node, 1);
            }
            // One TTL for the entry and its attributes.
            let ttl = if self.fs.udba_covers_dir(ino) {
                self.attr_ttl(&attr)
            } else {
                Duration::ZERO
            };
            let entry = if linked {
                self.settle_count(&attr);
                EntryOut {
                    nodeid: attr.node,
                    generation: self.fs.generation_of(attr.node),
                    entry_valid: ttl,
                    attr_valid: ttl,
                    attr: super::entry::attr_out(&attr, attr.node),
                }
            } else {
                unlinked_entry(&attr, ttl)
            };
            if !out.add(&entry, e.off, &e.name) {
                // Did not fit: the kernel never saw it, so it does not hold the reference.
                if counted && linked {
                    self.fs.forget(attr.node, 1);
                }
                break;
            }
            added = true;
        }
        None
    }
}

/// The largest file size the kernel accepts in attributes (it refuses a larger one as
/// invalid).
const MAX_VALID_SIZE: u64 = i64::MAX as u64;

/// The READDIRPLUS entry of a name the kernel is not to link (see `plus_links`): node id
/// 0, and the number shown as the attributes' ino (the dirent's d_ino), with a size the
/// kernel refuses as invalid. A transport that can send node id 0 with a d_ino (the ring)
/// sends it so, and the kernel skips the entry part (fs/fuse/readdir.c: "zero nodeid ...
/// did not want to return attributes"); fuser sends one number as both, so it sends the
/// attributes' ino, and the kernel refuses the invalid attributes after listing the name
/// (then sends a FORGET of that number, which names no node: see `plus_links`). Either
/// way the kernel lists the name with d_ino = st_ino and makes no dentry.
fn unlinked_entry(a: &Attr, ttl: Duration) -> EntryOut {
    let mut attr = super::entry::attr_out(a, a.ino);
    attr.size = MAX_VALID_SIZE + 1;
    EntryOut {
        nodeid: 0,
        generation: 0,
        entry_valid: ttl,
        attr_valid: ttl,
        attr,
    }
}

/// The `DT_*` type of `k` (its `S_IF*` bits >> 12).
fn dtype(k: Kind) -> u32 {
    (match k {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
        Kind::CharDev => libc::S_IFCHR,
        Kind::BlockDev => libc::S_IFBLK,
    }) >> 12
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::Arc;

    use super::super::{
        dirent_size, direntplus_size, Ctx, Dispatcher, Op, Reply, Transport, DEFAULT_TTL,
    };
    use crate::fs::UnionFs;

    fn ctx(nodeid: u64) -> Ctx {
        Ctx {
            unique: 1,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            transport: Transport::Uring,
        }
    }

    /// READDIR and READDIRPLUS replies hold as many entries as the request's size takes,
    /// as the kernel reads them, and a READDIRPLUS entry that did not fit is not left
    /// counted as a lookup (the kernel never saw it); the next request goes on from the
    /// last entry's offset.
    #[test]
    fn listings_are_cut_to_the_request_size() {
        let base = std::env::temp_dir().join(format!("stratafs-dispatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let [l, u, w, m] = ["l", "u", "w", "m"].map(|d| base.join(d));
        for d in [&l, &u, &w, &m] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir(l.join("d")).unwrap();
        for i in 0..10 {
            std::fs::write(l.join(format!("d/f{i:02}")), b"x").unwrap();
        }
        let fs = Arc::new(UnionFs::for_test(&l, &u, &w, &m, ""));
        let d = Dispatcher::new(fs.clone(), DEFAULT_TTL);
        let Reply::Entry(dir) = d.handle(
            &ctx(1),
            Op::Lookup {
                name: OsStr::new("d"),
            },
        ) else {
            panic!("lookup of d");
        };
        // A default mount opens no directories: streams read with handle 0.
        let r = d.handle(&ctx(dir.nodeid), Op::Opendir { flags: 0 });
        assert!(matches!(r, Reply::Err(libc::ENOSYS)), "{r:?}");
        let nodes = fs.inodes.len();
        // `.`, `..` and two files fit (160 bytes each); the third file does not.
        let size = (4 * direntplus_size(3) + 100) as u32;
        let op = Op::Readdirplus {
            fh: 0,
            offset: 0,
            size,
        };
        let Reply::DirPlus(plus) = d.handle(&ctx(dir.nodeid), op) else {
            panic!("readdirplus");
        };
        let names: Vec<_> = plus.iter().map(|e| e.name.to_str().unwrap()).collect();
        // In the listing's order (the branch's): `.`, `..`, then two of the files.
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names[..2], [".", ".."]);
        assert_eq!(
            fs.inodes.len(),
            nodes + 2,
            "the third file's lookup was forgotten"
        );
        assert_eq!(fs.inodes.refs(plus[2].entry.nodeid), 1);
        assert_eq!(plus[2].entry.attr.ino, plus[2].entry.nodeid);
        assert_eq!(plus[2].entry.entry_valid, DEFAULT_TTL);
        let offset = plus[3].off;
        let size = (3 * dirent_size(3) + 31) as u32;
        let op = Op::Readdir {
            fh: 0,
            offset,
            size,
        };
        let Reply::Dir(plain) = d.handle(&ctx(dir.nodeid), op) else {
            panic!("readdir");
        };
        let more: Vec<_> = plain.iter().map(|e| e.name.to_str().unwrap()).collect();
        assert_eq!(more.len(), 3, "{more:?}");
        assert!(more
            .iter()
            .all(|n| n.starts_with('f') && !names.contains(n)));
        assert_eq!(plain[0].typ, libc::DT_REG as u32);
        let _ = std::fs::remove_dir_all(&base);
    }
}

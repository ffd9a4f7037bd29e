//! What INIT asks of the kernel, decided once for every transport: each capability on its
//! own (with why, and what happens without it), the fast data path (passthrough or the
//! writeback cache), and FUSE over io_uring when a ring is ready to serve it. The
//! transport that answers INIT (fuser's, on /dev/fuse) passes its view of the kernel's
//! offer as an [`InitConfig`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{debug, info, warn};

use super::Dispatcher;
use crate::options::LowerPassthrough;

/// The largest WRITE (and READ) asked for: also what sizes a ring entry's payload buffer
/// (`transport::ring::payload_size`), so that no request can be larger than a ring buffer.
pub const MAX_WRITE: u32 = 1 << 20;

/// One INIT capability: its bit in `fuse_init_in.flags | flags2 << 32` (uapi
/// linux/fuse.h) and its name for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bits: u64,
    pub name: &'static str,
}

macro_rules! caps {
    ($($id:ident = $bit:expr;)*) => {
        $(pub const $id: Cap = Cap { bits: 1 << $bit, name: stringify!($id) };)*
    };
}

caps! {
    FUSE_ASYNC_READ = 0;
    FUSE_EXPORT_SUPPORT = 4;
    FUSE_BIG_WRITES = 5;
    FUSE_DONT_MASK = 6;
    FUSE_AUTO_INVAL_DATA = 12;
    FUSE_DO_READDIRPLUS = 13;
    FUSE_READDIRPLUS_AUTO = 14;
    FUSE_WRITEBACK_CACHE = 16;
    FUSE_PARALLEL_DIROPS = 18;
    FUSE_POSIX_ACL = 20;
    FUSE_CACHE_SYMLINKS = 23;
    FUSE_HANDLE_KILLPRIV_V2 = 28;
    FUSE_DIRECT_IO_ALLOW_MMAP = 36;
    FUSE_PASSTHROUGH = 37;
    FUSE_OVER_IO_URING = 41;
}

/// The kernel's INIT offer, and the reply being built, as the transport answering INIT
/// holds them.
pub trait InitConfig {
    /// Asks for `cap`; false (nothing asked) when the kernel does not offer it.
    fn add(&mut self, cap: Cap) -> bool;
    /// `max_stack_depth` (passthrough); false if refused.
    fn set_max_stack_depth(&mut self, depth: u32) -> bool;
    fn set_max_background(&mut self, n: u16);
    /// `max_write`, or the largest the kernel takes if it is less.
    fn set_max_write(&mut self, bytes: u32);
    /// The kernel's FUSE protocol minor version (`fuse_init_in.minor`).
    fn kernel_minor(&self) -> u32;
}

impl Dispatcher {
    /// Whether INIT asks for FUSE over io_uring (only where the kernel offers it). Set
    /// before the session is created, and only when a ring will register its queues right
    /// after INIT: with the flag granted and no ring, every request waits forever.
    pub fn set_want_uring(&self, on: bool) {
        self.want_uring.store(on, Ordering::Relaxed);
    }

    /// True once INIT granted FUSE over io_uring (read by the mount code after the session
    /// is created: INIT is answered by then).
    pub fn uring_granted(&self) -> Arc<AtomicBool> {
        self.uring_granted.clone()
    }

    /// Answers INIT's capabilities and limits.
    pub fn init(&self, config: &mut impl InitConfig) {
        let minor = config.kernel_minor();
        self.plus_without_node.store(minor >= 32, Ordering::Relaxed);
        for (cap, why) in [
            (
                FUSE_PARALLEL_DIROPS,
                "lookups and readdirs in one directory run in parallel",
            ),
            (FUSE_DO_READDIRPLUS, "readdir returns attributes"),
            (
                FUSE_READDIRPLUS_AUTO,
                "the kernel picks plain readdir when it needs no attributes",
            ),
            (FUSE_ASYNC_READ, "several reads of one file in flight"),
            (FUSE_BIG_WRITES, "writes larger than a page"),
            (FUSE_EXPORT_SUPPORT, "lookups of . and .. are answered"),
            (
                FUSE_DIRECT_IO_ALLOW_MMAP,
                "shared mmap of the direct-I/O handles of setuid/setgid files",
            ),
            // The daemon drops setuid/setgid bits on write, truncate and chown itself, with
            // the caller's credentials (cred.rs, attr.rs `drop_privs_for`): the kernel then
            // skips its GETATTR before each chown and truncate, and sets SB_NOSEC, so a
            // file without bits or capabilities is not asked for security.capability at
            // every write. Without it the kernel does part of the rule and we the rest.
            (
                FUSE_HANDLE_KILLPRIV_V2,
                "the daemon drops setuid/setgid bits itself (no GETATTR per chown, SB_NOSEC)",
            ),
        ] {
            if config.add(cap) {
                debug!("init: {} granted: {why}", cap.name);
            } else {
                info!("init: kernel lacks {} ({why}); going on without", cap.name);
            }
        }
        // udba=reval|notify: a read of an open file whose attributes are found changed
        // (size or mtime; after their TTL, or an invalidation) drops its pages.
        if self.fs.udba != crate::udba::Udba::None && !config.add(FUSE_AUTO_INVAL_DATA) {
            info!("init: kernel lacks FUSE_AUTO_INVAL_DATA; open files may read old pages after a direct change");
        }
        self.init_symlink_cache(config);
        self.init_data_path(config);
        // POSIX ACLs: the kernel checks them and sends the unmasked mode with the umask;
        // stratafs applies the umask or the parent's default ACL itself (dir.rs).
        if self.fs.acl {
            for cap in [FUSE_POSIX_ACL, FUSE_DONT_MASK] {
                if !config.add(cap) {
                    info!(
                        "init: kernel lacks {}; ACLs are stored but not enforced",
                        cap.name
                    );
                }
            }
        }
        config.set_max_background(64);
        config.set_max_write(MAX_WRITE);
        self.init_uring(config);
    }

    /// Fast data path, one of two (the kernel refuses both together):
    /// - passthrough: the kernel reads and writes upper files itself. Registering a
    ///   backing file needs CAP_SYS_ADMIN in the initial user namespace, so it is only
    ///   asked for where that holds (stack depth 1: backing files on any plain fs);
    /// - otherwise the writeback cache: the kernel batches writes in its page cache.
    fn init_data_path(&self, config: &mut impl InitConfig) {
        let fs = &self.fs;
        let may_passthrough = crate::sys::has_initial_ns_sys_admin();
        let lp_asked = fs.lower_passthrough == LowerPassthrough::Always;
        if may_passthrough && config.add(FUSE_PASSTHROUGH) && config.set_max_stack_depth(1) {
            self.pt.on.store(true, Ordering::Relaxed);
            match fs.lower_passthrough {
                LowerPassthrough::Always => info!("init: FUSE_PASSTHROUGH granted: upper files, and lower files opened read-only (lower_passthrough), do I/O in the kernel"),
                LowerPassthrough::ReadOnly => debug!("init: FUSE_PASSTHROUGH granted: upper files, and lower files opened read-only while the mount is read-only, do I/O in the kernel"),
                LowerPassthrough::Never => debug!("init: FUSE_PASSTHROUGH granted: upper files do I/O in the kernel"),
            }
        } else if lp_asked && fs.no_writeback {
            info!("init: lower_passthrough has no effect: passthrough is not usable here (it needs CAP_SYS_ADMIN in the initial user namespace); writeback=0: all I/O goes through the daemon");
        } else if fs.no_writeback {
            warn!("init: writeback=0 and passthrough not usable here: all I/O goes through the daemon");
        } else if config.add(FUSE_WRITEBACK_CACHE) {
            fs.set_writeback_cache(true);
            if lp_asked {
                info!("init: lower_passthrough has no effect: passthrough is not usable here (it needs CAP_SYS_ADMIN in the initial user namespace); writeback cache granted instead");
            } else {
                info!("init: passthrough not usable here; writeback cache granted instead");
            }
        } else if lp_asked {
            info!("init: lower_passthrough has no effect: passthrough is not usable here; neither passthrough nor writeback cache: all I/O goes through the daemon");
        } else {
            info!("init: neither passthrough nor writeback cache; all I/O goes through the daemon");
        }
    }

    /// Symlink targets kept in the kernel's page cache (FUSE_CACHE_SYMLINKS): without it
    /// every path walk through a symlink is a READLINK (a merged-/usr image's `/lib` alone
    /// was 3,097 of dpkg's 6,454 during an apt-get install). A node's target never changes
    /// through the mount (a symlink is replaced, never rewritten: a new name gets a new
    /// node, and a branch change pins the old node to its old symlink, stack.rs), so the
    /// cached target stays true as long as the kernel holds the inode. A direct change on
    /// a branch is what could make it stale, and the kernel drops a symlink's page only
    /// on an invalidation, never because its attributes changed: so only where the
    /// branches are assumed not to change behind the mount (`udba=none` and no `timeout=`,
    /// as for keeping lower attributes: `keep_lower_attrs`).
    fn init_symlink_cache(&self, config: &mut impl InitConfig) {
        if !self.fs.keep_lower_attrs {
            debug!("init: FUSE_CACHE_SYMLINKS not asked for: direct changes to the branches are looked for (udba=reval|notify, or timeout=), every readlink is answered afresh");
        } else if config.add(FUSE_CACHE_SYMLINKS) {
            debug!("init: FUSE_CACHE_SYMLINKS granted: the kernel keeps symlink targets");
        } else {
            info!("init: kernel lacks FUSE_CACHE_SYMLINKS; every readlink is a request");
        }
    }

    /// FUSE over io_uring, when asked for (`set_want_uring`) and offered (the kernel offers
    /// it only with `/sys/module/fuse/parameters/enable_uring` = Y).
    fn init_uring(&self, config: &mut impl InitConfig) {
        if !self.want_uring.load(Ordering::Relaxed) {
            return;
        }
        if config.add(FUSE_OVER_IO_URING) {
            self.uring_granted.store(true, Ordering::Relaxed);
            debug!("init: FUSE_OVER_IO_URING granted: requests go over io_uring once the queues are registered");
        } else {
            debug!("init: kernel does not offer FUSE_OVER_IO_URING; requests go over /dev/fuse");
        }
    }
}

//! stratafs: a union filesystem in userspace that reads and writes the Linux kernel
//! overlayfs on-disk format.
//!
//! The crate is split the way the kernel's `fs/overlayfs` is: [`lookup`] resolves names
//! across layers, [`readdir`] merges listings, [`attr`] answers metadata, [`file`] serves
//! data. [`fs::UnionFs`] is the operation API in plain Rust types; [`dispatch`] serves FUSE
//! requests with it (TTLs, open flags, invalidations) for every [`transport`], which only
//! decode and encode, so everything but the transports is testable without mounting.

pub mod acl;
pub mod atime;
pub mod attr;
pub mod backing;
pub mod branch;
pub mod channel;
pub mod control;
pub mod copy_up;
pub mod cred;
pub mod daemon;
pub mod dir;
pub mod dispatch;
pub mod error;
pub mod export;
pub mod file;
pub mod fileattr;
pub mod fs;
pub mod ids;
pub mod index;
pub mod inode;
pub mod layers;
pub mod lookup;
pub mod mount;
pub mod options;
pub mod origin;
pub mod override_stat;
pub mod readdir;
pub mod remount;
pub mod stack;
pub mod stats;
pub mod sys;
pub mod tools;
pub mod transport;
pub mod types;
pub mod udba;
pub mod util;
pub mod watch;
pub mod wbr_policy;
pub mod whiteout;

pub use error::{Error, Result};

pub use fs::UnionFs;
pub use options::Config;

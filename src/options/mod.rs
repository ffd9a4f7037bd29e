//! Every accepted command-line and `-o` option syntax, turned into one validated [`Config`]
//! (the kernel's `params.c`). Parsing is pure (no filesystem access) so it is unit-tested
//! in full; [`Config::validate`] then checks the paths once, at startup, without writing
//! anything, and [`Config::prepare`] makes the one thing we may create (an automatic
//! workdir).
//!
//! Three branch syntaxes: the kernel overlayfs's and fuse-overlayfs's (`-o
//! lowerdir=A:B,upperdir=U,workdir=W`: one writable top branch over read-only lowers),
//! unionfs-fuse's (`/u=RW:/a=RO:/b` or `-o dirs=`) and aufs's (`-o br=/u=rw:/a=ro`), whose
//! branch permissions may make any branch writable (branches.rs).
//!
//! By job: this file holds what the rest of the crate names ([`Config`], [`Command`], the
//! errors, the splitting and unescaping of option strings); `parse.rs` reads a command line
//! into a configuration (one `-o` item at a time); `branches.rs` turns a unionfs-fuse or
//! aufs branch list into branches and modes; `policy.rs` reads aufs's `create=`/`cpup=`
//! policies; `validate.rs` checks the paths against the filesystem; `help.rs` is the option
//! table behind `--help` and the man page; `remount.rs` reads the remount form and compares
//! a remount's options with the running mount.
//!
//! The unionfs and aufs syntaxes have no workdir. Unless `workdir=` is given, stratafs uses
//! the sibling directory `UPPER.stratafs-work` (created at mount time, mode 0700): a
//! sibling is on the upper's filesystem yet outside the merged view. When the upper is the
//! root of its filesystem (a tmpfs, say) there is no such sibling and `workdir=` is
//! required.

mod branches;
mod help;
mod parse;
mod policy;
mod remount;
mod validate;

pub use help::{help_text, OptionDoc, OPTIONS};
pub use parse::parse_args;
pub use remount::{remount_unchanged, RemountArgs};

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Mount(Box<Config>),
    /// `-o remount,…`: change a live mount through its daemon (remount.rs).
    Remount(RemountArgs),
    Help,
    Version,
}

/// The one validated configuration of a mount.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Lower branches, highest first (the kernel's leftmost `lowerdir`).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// The workdir was chosen by us (`UPPER.stratafs-work`); [`Config::prepare`] creates it.
    pub auto_workdir: bool,
    pub mountpoint: PathBuf,
    /// The mountpoint was `/dev/fd/N` (libfuse 3's convention, as Apptainer's starter uses
    /// it): the caller opened /dev/fuse and mounted it; we serve descriptor N and mount
    /// nothing (mount.rs).
    pub mount_fd: Option<i32>,
    /// Shown as the source in /proc/mounts: the source argument, `fsname=`, or "stratafs".
    pub fsname: String,
    pub subtype: Option<String>,
    /// `ro`, or no writable branch (no upperdir and no lower of mode `Rw`): every write
    /// gets EROFS.
    pub read_only: bool,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `-o debug`: log every request.
    pub debug: bool,
    /// Every user may use the mount. On by default when stratafs runs as root (euid 0,
    /// also root of a user namespace), as fuse-overlayfs; see [`Config::resolve_access`].
    pub allow_other: bool,
    /// `noallow_other`: keep a root mount to root (and `allow_root`'s owner) only.
    pub owner_only: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub auto_unmount: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// `noatime` (`atime` undoes it): reads never change a file's access time.
    pub noatime: bool,
    /// `strictatime` (`nostrictatime` undoes it): every read updates the access time;
    /// wins over `noatime`, as in mount(2). The default is the kernel's `relatime` rule.
    pub strictatime: bool,
    /// `nodiratime` (`diratime` undoes it): listing a directory never changes its atime.
    pub nodiratime: bool,
    /// `threads=` / `max_threads=`; `None` means one per CPU.
    pub threads: Option<usize>,
    /// `volatile`: never fsync (throw-away uppers).
    pub volatile: bool,
    /// `userxattr`: use `user.overlay.*` instead of `trusted.overlay.*` markers.
    pub userxattr: bool,
    /// `noacl`: no POSIX ACL checks or inheritance (as fuse-overlayfs's option).
    pub noacl: bool,
    /// `static_nlink`: every directory reports one link.
    pub static_nlink: bool,
    /// `timeout=`: entry/attr cache lifetime in seconds, if given.
    pub timeout: Option<f64>,
    /// `udba=none|reval|notify`: what is done about direct changes to the branches (udba.rs).
    pub udba: crate::types::Udba,
    /// `udba_max_watches=N`: at most N inotify watches with `udba=notify`.
    pub udba_max_watches: Option<usize>,
    pub log_file: Option<PathBuf>,
    /// Options accepted but without effect, kept for one log line at startup.
    pub ignored: Vec<String>,
    /// `redirect_dir=off|follow|nofollow`: renaming a directory that has a lower part answers
    /// EXDEV (callers such as mv(1) copy instead), as the kernel overlayfs with those values
    /// and fuse-overlayfs do, so the upper holds no `overlay.redirect` (tools that parse an
    /// upper themselves, CernVM-FS's publisher, do not follow one). `redirect_dir=on`, the
    /// default, records such renames as redirects. Existing redirects are read either way.
    pub no_dir_redirects: bool,
    /// `metacopy=on`: metadata-only copy-up, in the kernel's format (off by default, as in
    /// the kernel; a kernel mount of such an upper needs `metacopy=on` too).
    pub metacopy: bool,
    /// `nfs_export=on`: file handles outlive the kernel's caches and remounts (export.rs).
    pub nfs_export: bool,
    /// `index=on`: lower hard links stay one file across copy-up (index.rs).
    pub index: bool,
    /// uid/gid mapping and squashing (`uidmapping=`, `gidmapping=`, `squash_to_*`).
    pub ids: crate::ids::Ids,
    /// `xattr_permissions=1|2`: ownership and mode overrides kept in an xattr.
    pub xattr_permissions: Option<crate::types::Level>,
    /// `noxattrs=1`: no xattrs through the mount (ENOTSUP), as fuse-overlayfs's option.
    pub noxattrs: bool,
    /// `writeback=0`: never negotiate the kernel's writeback cache.
    pub no_writeback: bool,
    /// `lower_passthrough[=0|1]`: when read-only opens of lower files use FUSE passthrough
    /// (file.rs `passthrough_source`; docs/guarantees.md).
    pub lower_passthrough: LowerPassthrough,
    /// The mode of each of `lowerdirs`, in the same order (aufs's branch permissions, given
    /// with `br=`, `dirs=` or a branch list; options/branches.rs): `Rw` makes a branch below
    /// the top writable (`wbr_policy.rs`). Parsing fills it for every lower (`RoWh` for
    /// `lowerdir=`, the kernel overlayfs's lowers); a `Config` built by hand may leave it
    /// short, and missing entries read as `RoWh` (see [`Config::lower_mode`]).
    pub lower_modes: Vec<crate::types::Mode>,
    /// `create=`: where new entries go among several writable branches.
    pub create: crate::types::Create,
    /// `cpup=`: which writable branch a copy-up goes to.
    pub cpup: crate::types::Cpup,
    /// `sum`: statfs shows the writable branches' totals (aufs's `sum`), not the top one's.
    pub sum: bool,
    /// Whiteouts and opaque markers are written in aufs's `.wh.` format (aufs-syntax
    /// mounts, `br=`), not the kernel's.
    pub aufs_whiteouts: bool,
    /// `io_uring` / `noio_uring`: which FUSE transport serves requests (default: the ring
    /// where the kernel offers it, see src/transport/).
    pub io_uring: IoUring,
}

/// The FUSE transport choice of `-o io_uring` / `-o noio_uring`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoUring {
    /// FUSE-over-io_uring when the fuse module's `enable_uring` is Y and INIT grants it,
    /// else /dev/fuse (one log line says which and why).
    #[default]
    Auto,
    /// `io_uring`: the ring or no mount (one-line error naming the module parameter).
    Require,
    /// `noio_uring`: /dev/fuse only.
    Off,
}

/// When a read-only open of a lower file is passthrough (the kernel reads the lower file
/// itself) rather than served by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowerPassthrough {
    /// While the mount is read-only: nothing can be copied up then, so a reader never
    /// holds a lower file that another opener's copy-up has made stale. A remount to
    /// read-write is refused (EBUSY) while such a reader is open.
    #[default]
    ReadOnly,
    /// `lower_passthrough` / `=1`: on read-write mounts too, with the trade of
    /// docs/guarantees.md (a copy-up waits for those readers to close).
    Always,
    /// `lower_passthrough=0`: never; every lower read is served by the daemon.
    Never,
}

/// A malformed command line: one line naming the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError(pub String);

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> OptionsError {
    OptionsError(msg.into())
}

/// Splits an `-o` string on unescaped `,` outside double quotes (podman passes
/// `context="a:b:c1,c2"`). Escapes and quotes stay in the items.
pub fn split_options(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' && i + 1 < s.len() {
            cur.extend_from_slice(&s[i..i + 2]);
            i += 2;
            continue;
        }
        if c == b'"' {
            quoted = !quoted;
        }
        if c == b',' && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
        i += 1;
    }
    out.push(cur);
    out
}

/// Splits on unescaped `sep`. With `unescape`, `\X` becomes `X` in the output; otherwise
/// escapes are kept for a later split.
fn split_escaped(s: &[u8], sep: u8, unescape: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' && i + 1 < s.len() {
            if !unescape {
                cur.push(c);
            }
            cur.push(s[i + 1]);
            i += 2;
            continue;
        }
        if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
        i += 1;
    }
    out.push(cur);
    out
}

/// `lowerdir=A:B\:C` → [A, B:C].
pub fn split_lowerdirs(v: &[u8]) -> Vec<PathBuf> {
    split_escaped(v, b':', true)
        .into_iter()
        .map(|p| PathBuf::from(OsString::from_vec(p)))
        .collect()
}

fn unescape(v: &[u8]) -> PathBuf {
    let mut parts = split_escaped(v, 0, true);
    PathBuf::from(OsString::from_vec(parts.pop().unwrap_or_default()))
}

/// Index of the last unescaped `c` in `s`.
fn last_unescaped(s: &[u8], c: u8) -> Option<usize> {
    let mut found = None;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i] == c {
            found = Some(i);
        }
        i += 1;
    }
    found
}

/// Unescapes the octal escapes (`\040`) of /proc/self/mountinfo.
pub fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// `/dev/fd/N` → N: libfuse 3's spelling of "serve the FUSE connection on descriptor N,
/// which the caller has mounted already". Only that exact form (no `/proc/self/fd/N`).
pub fn fd_mountpoint(p: &Path) -> Option<i32> {
    let n = p.as_os_str().as_bytes().strip_prefix(b"/dev/fd/")?;
    if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

impl Config {
    /// Who may use the mount, given the euid stratafs runs with. As root (euid 0, also
    /// root of a user namespace, as podman's rootless mount program) every user may, as
    /// with fuse-overlayfs (which adds `allow_other` then) and the kernel overlayfs:
    /// without it the FUSE module answers EACCES to every other uid. `noallow_other`
    /// keeps it root's. Non-root mounts keep FUSE's default (owner only; `allow_other`
    /// needs `user_allow_other` in /etc/fuse.conf). Permissions themselves are always the
    /// kernel's (`default_permissions`).
    pub fn resolve_access(&mut self, euid: u32) {
        if euid == 0 && !self.owner_only {
            self.allow_other = true;
        }
    }

    /// The mode of lower `i` (`lower_modes`, `RoWh` by default).
    pub fn lower_mode(&self, i: usize) -> crate::types::Mode {
        self.lower_modes
            .get(i)
            .copied()
            .unwrap_or(crate::types::Mode::RoWh)
    }

    /// True when writes are possible at all: some branch is writable (the upper, or a
    /// lower of mode `Rw`) and the mount is not `ro`.
    pub fn writable(&self) -> bool {
        let rw_lower = self.lower_modes.contains(&crate::types::Mode::Rw);
        (self.upperdir.is_some() || rw_lower) && !self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration `stratafs ARGS…` asks for (the tests of every file of the module).
    pub(super) fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["stratafs"];
        v.extend_from_slice(args);
        match parse_args(v).expect("parses") {
            Command::Mount(c) => *c,
            other => panic!("expected a mount, got {other:?}"),
        }
    }

    /// The one-line refusal of `stratafs ARGS…`.
    pub(super) fn err(args: &[&str]) -> String {
        let mut v = vec!["stratafs"];
        v.extend_from_slice(args);
        let e = parse_args(v).expect_err("refused").0;
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    pub(super) fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn dev_fd_mountpoint_is_a_given_connection() {
        assert_eq!(fd_mountpoint(Path::new("/dev/fd/3")), Some(3));
        assert_eq!(fd_mountpoint(Path::new("/dev/fd/17")), Some(17));
        for p in [
            "/dev/fd/",
            "/dev/fd/3x",
            "/dev/fd/-1",
            "/proc/self/fd/3",
            "/dev/fd/3/",
            "/mnt",
        ] {
            assert_eq!(fd_mountpoint(Path::new(p)), None, "{p}");
        }
        let c = cfg(&["-f", "-o", "allow_other,ro,lowerdir=/a,noacl", "/dev/fd/3"]);
        assert_eq!(c.mount_fd, Some(3));
        assert!(c.foreground && c.read_only && c.noacl && c.allow_other);
        assert_eq!(cfg(&["-o", "lowerdir=/a", "/mnt"]).mount_fd, None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), p(r"/a b\c"));
        assert_eq!(unescape_mountinfo(r"/x\04"), p(r"/x\04"));
    }
}

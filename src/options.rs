//! Every accepted command-line and `-o` option syntax, turned into one validated [`Config`]
//! (the kernel's `params.c`). Parsing is pure (no filesystem access) so it is unit-tested
//! in full; [`Config::validate`] then checks the paths once, at startup, without writing
//! anything, and [`Config::prepare`] makes the one thing we may create (an automatic
//! workdir).
//!
//! Three branch syntaxes give the same configuration (one writable top branch, then
//! read-only lowers, highest first):
//! - kernel overlayfs / fuse-overlayfs: `-o lowerdir=A:B,upperdir=U,workdir=W`;
//! - unionfs-fuse: `stratafs [-o cow] /u=RW:/a=RO:/b MNT` or `-o dirs=/u=RW:/a:/b`; a branch
//!   without a mode is read-only, except the first one with `cow`;
//! - aufs: `-o br=/u=rw:/a=ro:/b` (or `br:/u=rw:…`); `ro`, `rr` and `ro+wh` are read-only;
//!   a branch without a mode is writable if it is the first, read-only otherwise.
//!
//! The positional rule (mount.fuse3 runs `stratafs SOURCE MOUNTPOINT -o OPTS`): with two
//! positionals and no `lowerdir=`/`br=`/`dirs=`, the first is a unionfs-fuse branch list
//! when it contains `:` or ends a branch with `=RW`/`=RO`, or when `cow` is given;
//! otherwise it is the source, shown as the fsname.
//!
//! The unionfs and aufs syntaxes have no workdir. Unless `workdir=` is given, stratafs uses
//! the sibling directory `UPPER.stratafs-work` (created at mount time, mode 0700): a
//! sibling is on the upper's filesystem yet outside the merged view. When the upper is the
//! root of its filesystem (a tmpfs, say) there is no such sibling and `workdir=` is
//! required.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
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
    /// `ro`, or no upperdir: every write gets EROFS.
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
    /// with `br=`): `Rw` makes a branch below the top writable (`wbr_policy.rs`). Missing
    /// entries are `RoWh`, the kernel overlayfs's lowers (see [`Config::lower_mode`]).
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

/// One line of `--help`, and one entry of the man page's OPTIONS section.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    /// The name the man page must mention (`\fBkey` in docs/stratafs.1).
    pub key: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
}

const fn doc(key: &'static str, usage: &'static str, help: &'static str) -> OptionDoc {
    OptionDoc { key, usage, help }
}

/// Every option, in `--help` order. docs/stratafs.1 is checked against this table by a unit
/// test, both ways, so the two cannot drift.
pub const OPTIONS: &[OptionDoc] = &[
    doc(
        "-o",
        "-o OPT[,OPT...]",
        "mount options (below); may be repeated",
    ),
    doc(
        "-f",
        "-f, --foreground",
        "stay in the foreground (default: detach once the mount is live)",
    ),
    doc(
        "-d",
        "-d, --debug",
        "log every request to stderr; implies -f (RUST_LOG is respected)",
    ),
    doc(
        "--log-file",
        "--log-file=FILE",
        "the daemon logs to FILE instead of syslog",
    ),
    doc("-h", "-h, --help", "print this help and exit"),
    doc("-V", "-V, --version", "print the version and exit"),
    doc(
        "lowerdir",
        "lowerdir=DIR[:DIR...]",
        "read-only branches, highest first; \\: and \\, escape",
    ),
    doc(
        "upperdir",
        "upperdir=DIR",
        "the writable upper branch (needs workdir=)",
    ),
    doc(
        "workdir",
        "workdir=DIR",
        "scratch dir on the upper's filesystem, outside the upper",
    ),
    doc(
        "dirs",
        "dirs=DIR[=RW|=RO][:DIR...]",
        "unionfs-fuse branches, top first (also as SOURCE)",
    ),
    doc(
        "cow",
        "cow",
        "unionfs-fuse: the first branch without a mode is the writable one",
    ),
    doc(
        "br",
        "br=DIR[=rw|=ro|=rr|=ro+wh][:DIR...]",
        "aufs branches, top first (also br:DIR...)",
    ),
    doc("ro", "ro", "read-only mount (also without an upper branch)"),
    doc(
        "remount",
        "remount,ro|rw|OP",
        "make a live mount read-only or writable again, or change its branches with aufs's add:/append:/prepend:/del:/mod:/lowerdir+= (also via mount -o remount; see stratafs branch)",
    ),
    doc(
        "rw",
        "rw",
        "read-write mount (the default with an upper branch)",
    ),
    doc(
        "allow_other",
        "allow_other",
        "let every user access the mount (the default as root)",
    ),
    doc(
        "noallow_other",
        "noallow_other",
        "as root: only root may access the mount (default: every user)",
    ),
    doc(
        "allow_root",
        "allow_root",
        "let the owner and root access the mount",
    ),
    doc(
        "default_permissions",
        "default_permissions",
        "the kernel checks permissions (always on)",
    ),
    doc("nodev", "nodev", "no device files (dev undoes it)"),
    doc(
        "nosuid",
        "nosuid",
        "ignore set-user/group-id bits (suid undoes it)",
    ),
    doc("noexec", "noexec", "no execution (exec undoes it)"),
    doc(
        "noatime",
        "noatime",
        "reads never update access times (atime undoes it)",
    ),
    doc(
        "relatime",
        "relatime",
        "a read updates atime if older than mtime/ctime or a day (default)",
    ),
    doc(
        "strictatime",
        "strictatime",
        "every read updates atime; wins over noatime (nostrictatime undoes it)",
    ),
    doc(
        "nodiratime",
        "nodiratime",
        "listing a directory never updates its atime (diratime undoes it)",
    ),
    doc(
        "fsname",
        "fsname=NAME",
        "source shown in /proc/mounts (default: SOURCE or stratafs)",
    ),
    doc(
        "subtype",
        "subtype=NAME",
        "filesystem type shown as fuse.NAME (default stratafs)",
    ),
    doc(
        "auto_unmount",
        "auto_unmount",
        "unmount if the daemon dies (via fusermount3; implies allow_root)",
    ),
    doc(
        "threads",
        "threads=N",
        "serve with N threads, 1 to 1024 (default: one per CPU; at least 16 with a branch on FUSE, NFS, SMB, Ceph or 9p)",
    ),
    doc("max_threads", "max_threads=N", "same as threads=N"),
    doc(
        "threaded",
        "threaded=0|1, -s",
        "fuse-overlayfs: threaded=0 and -s serve with one thread; threaded=1 the default",
    ),
    doc(
        "clone_fd",
        "clone_fd, max_idle_threads=N, max_read=N, nonempty",
        "libfuse tuning and fuse2 leftovers (fuse-overlayfs ignores them too): accepted and logged",
    ),
    doc(
        "timeout",
        "timeout=SECS",
        "kernel entry/attribute cache lifetime",
    ),
    doc(
        "udba",
        "udba=none|reval|notify",
        "changes made directly to the branches: not checked (default), checked on access, or watched (inotify)",
    ),
    doc(
        "udba_max_watches",
        "udba_max_watches=N",
        "udba=notify: at most N watches; directories beyond are checked on access",
    ),
    doc(
        "volatile",
        "volatile",
        "never fsync the upper (throw-away containers)",
    ),
    doc(
        "userxattr",
        "userxattr",
        "markers in user.overlay.* instead of trusted.overlay.*",
    ),
    doc(
        "noacl",
        "noacl",
        "no POSIX ACL enforcement or inheritance (ACL xattrs are still stored)",
    ),
    doc(
        "debug",
        "debug",
        "log every request (without -f: to syslog or --log-file)",
    ),
    doc(
        "index",
        "index=on|off",
        "lower hard links stay one file after a copy-up, in the kernel's workdir/index format (default off)",
    ),
    doc(
        "nfs_export",
        "nfs_export=on|off",
        "file handles (open_by_handle_at, NFS) outlive the kernel's caches and remounts (default off)",
    ),
    doc(
        "metacopy",
        "metacopy=on|off",
        "metadata-only copy-up in the kernel's format (default off)",
    ),
    doc(
        "uidmapping",
        "uidmapping=D:S:N[:D:S:N...]",
        "uids D..D+N on disk show as S..S+N (fuse-overlayfs)",
    ),
    doc(
        "gidmapping",
        "gidmapping=D:S:N[:D:S:N...]",
        "the same for gids",
    ),
    doc(
        "squash_to_root",
        "squash_to_root",
        "show everything as owned by 0:0",
    ),
    doc(
        "squash_to_uid",
        "squash_to_uid=U",
        "show everything as owned by uid U",
    ),
    doc(
        "squash_to_gid",
        "squash_to_gid=G",
        "show everything as owned by gid G",
    ),
    doc(
        "context",
        "context=, fscontext=, defcontext=, rootcontext=",
        "SELinux labels: accepted, logged, not applied",
    ),
    doc(
        "redirect_dir",
        "redirect_dir=on|off",
        "off (or follow, nofollow): renaming a lower directory answers EXDEV, no redirects",
    ),
    doc(
        "xino",
        "xino=, uuid=, verity=off",
        "kernel overlayfs tuning: accepted and logged",
    ),
    doc(
        "fsync",
        "fsync=0|1",
        "fsync=0 is volatile (fuse-overlayfs's spelling); fsync=1 the default",
    ),
    doc(
        "static_nlink",
        "static_nlink",
        "directories report one link (saves counting; as fuse-overlayfs)",
    ),
    doc(
        "xattr_permissions",
        "xattr_permissions=0|1|2",
        "owner/mode overrides in an xattr: 1 security.fuseoverlayfs.*, 2 user.containers.*",
    ),
    doc(
        "noxattrs",
        "noxattrs=0|1",
        "noxattrs=1: xattr calls through the mount fail with ENOTSUP",
    ),
    doc(
        "writeback",
        "writeback=0|1",
        "writeback=0: never use the kernel's writeback cache (default 1)",
    ),
    doc(
        "lower_passthrough",
        "lower_passthrough[=0|1]",
        "read-only opens of lower files use passthrough (root only): default on read-only mounts; 1: also read-write ones (trades copy-up visibility); 0: never",
    ),
    doc(
        "io_uring",
        "io_uring, noio_uring",
        "FUSE over io_uring: required (io_uring) or off (noio_uring); default: used when offered",
    ),
    doc(
        "fast_ino",
        "fast_ino=0|1",
        "fuse-overlayfs tuning: accepted and logged (inode numbers are always stable)",
    ),
    doc(
        "defaults",
        "defaults, auto, noauto, user, nofail, _netdev, sync, x-*, comment=",
        "mount(8)/fstab options: accepted and ignored",
    ),
];

/// Options that would change what the mount shows: refused rather than ignored.
const REFUSED: &[&str] = &["plugins", "datadir+", "lowerdir+"];

/// The `--help` text.
pub fn help_text() -> String {
    let mut s = String::from(
        "usage: stratafs [SOURCE] MOUNTPOINT -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTS]\n\
         \x20      stratafs [-o cow] /upper=RW:/lower1=RO:/lower2 MOUNTPOINT [-o OPTS]\n\
         \x20      stratafs MOUNTPOINT -o br=/upper=rw:/lower1=ro[,OPTS]\n\
         \x20      mount -t fuse.stratafs -o lowerdir=...,upperdir=...,workdir=... stratafs MOUNTPOINT\n\
         \x20      stratafs branch [--force] MOUNTPOINT OP...   (add:I:DIR[=MODE] append: prepend: del: mod:)\n\
         MOUNTPOINT /dev/fd/N: serve the FUSE descriptor N its caller opened and mounted\n\
         (libfuse 3's convention, as Apptainer uses it); the caller unmounts.\n\
         Returns once the mount is live (or failed); the daemon stays until umount.\n\
         With br=/dirs=/a branch list and no workdir=, the workdir is UPPER.stratafs-work.\n\
         Unknown options are refused.\n\noptions:\n",
    );
    for o in OPTIONS {
        if o.usage.len() > 34 {
            s.push_str(&format!("  {}\n  {:34} {}\n", o.usage, "", o.help));
        } else {
            s.push_str(&format!("  {:34} {}\n", o.usage, o.help));
        }
    }
    s
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

/// A branch's access mode as written (`=RW`, `=ro`, …) or not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rw,
    Ro,
    Unset,
}

fn parse_mode(m: &[u8]) -> Option<Mode> {
    match m.to_ascii_lowercase().as_slice() {
        b"rw" | b"rw+nolwh" => Some(Mode::Rw),
        b"ro" | b"rr" | b"ro+wh" | b"rr+wh" => Some(Mode::Ro),
        _ => None,
    }
}

/// Which branch syntax a branch list came from, for messages and the default modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// unionfs-fuse `dirs=` or a positional branch list.
    Unionfs(&'static str),
    /// aufs `br=` / `br:`.
    Aufs,
}

impl Syntax {
    fn name(self) -> &'static str {
        match self {
            Syntax::Unionfs(n) => n,
            Syntax::Aufs => "option br=",
        }
    }
}

/// `/u=RW:/a=RO:/b` → branches with their written modes.
fn parse_branches(v: &[u8], what: &str) -> Result<Vec<(PathBuf, Mode)>, OptionsError> {
    let mut out = Vec::new();
    for part in split_escaped(v, b':', false) {
        if part.is_empty() {
            return Err(bad(format!("{what} has an empty branch")));
        }
        let (path, mode) = match last_unescaped(&part, b'=') {
            Some(i) => {
                let m = parse_mode(&part[i + 1..]).ok_or_else(|| {
                    bad(format!(
                        "{what}: branch {}: unknown mode {} (expected RW or RO; escape a '=' in a path as \\=)",
                        String::from_utf8_lossy(&part[..i]),
                        String::from_utf8_lossy(&part[i + 1..])
                    ))
                })?;
                (&part[..i], m)
            }
            None => (&part[..], Mode::Unset),
        };
        if path.is_empty() {
            return Err(bad(format!("{what} has an empty branch")));
        }
        out.push((unescape(path), mode));
    }
    Ok(out)
}

/// The positional rule: does this first argument read as a unionfs-fuse branch list?
fn looks_like_branches(s: &[u8]) -> bool {
    split_escaped(s, b':', false).len() > 1
        || last_unescaped(s, b'=')
            .map(|i| parse_mode(&s[i + 1..]).is_some())
            .unwrap_or(false)
}

/// The command line while it is being read.
struct Parser {
    cfg: Config,
    lowerdir_given: bool,
    branches: Option<(Syntax, Vec<(PathBuf, Mode)>)>,
    cow: bool,
}

impl Parser {
    fn set_branches(&mut self, syntax: Syntax, v: &[u8]) -> Result<(), OptionsError> {
        if let Some((prev, _)) = &self.branches {
            return Err(bad(format!(
                "{} conflicts with {}: give the branches once",
                syntax.name(),
                prev.name()
            )));
        }
        self.branches = Some((syntax, parse_branches(v, syntax.name())?));
        Ok(())
    }

    /// Applies one `-o` item (already split on `,`).
    fn apply(&mut self, item: &[u8]) -> Result<(), OptionsError> {
        if item.is_empty() {
            return Ok(()); // podman passes ",,"
        }
        if let Some(v) = item.strip_prefix(b"br:") {
            return self.set_branches(Syntax::Aufs, v);
        }
        let (key, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let key = String::from_utf8_lossy(key).into_owned();
        let need = |v: Option<&[u8]>| -> Result<Vec<u8>, OptionsError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_vec()),
                _ => Err(bad(format!("option {key}= needs a value"))),
            }
        };
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let cfg = &mut self.cfg;
        match key.as_str() {
            "lowerdir" => {
                let v = need(value)?;
                let dirs = split_lowerdirs(&v);
                if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                    return Err(bad(format!(
                        "option lowerdir={} has an empty entry (data-only layers are not supported)",
                        text(&v)
                    )));
                }
                cfg.lowerdirs = dirs;
                self.lowerdir_given = true;
            }
            "upperdir" => cfg.upperdir = Some(unescape(&need(value)?)),
            "workdir" => cfg.workdir = Some(unescape(&need(value)?)),
            "br" => return self.set_branches(Syntax::Aufs, &need(value)?),
            "dirs" => return self.set_branches(Syntax::Unionfs("option dirs="), &need(value)?),
            "cow" => self.cow = true,
            "fsname" => cfg.fsname = text(&need(value)?),
            "subtype" => cfg.subtype = Some(text(&need(value)?)),
            "ro" => cfg.read_only = true,
            "rw" => cfg.read_only = false,
            "debug" => cfg.debug = true,
            "allow_other" => {
                cfg.allow_other = true;
                cfg.owner_only = false;
            }
            "noallow_other" => {
                cfg.allow_other = false;
                cfg.owner_only = true;
            }
            "allow_root" => cfg.allow_root = true,
            "default_permissions" => cfg.default_permissions = true,
            "auto_unmount" => cfg.auto_unmount = true,
            "nodev" => cfg.nodev = true,
            "dev" => cfg.nodev = false,
            "nosuid" => cfg.nosuid = true,
            "suid" => cfg.nosuid = false,
            "noexec" => cfg.noexec = true,
            "exec" => cfg.noexec = false,
            "noatime" => cfg.noatime = true,
            "atime" => cfg.noatime = false,
            "strictatime" => cfg.strictatime = true,
            "nostrictatime" => cfg.strictatime = false,
            // The default; as in mount(8) it does not undo strictatime or noatime.
            "relatime" | "norelatime" => {}
            "nodiratime" => cfg.nodiratime = true,
            "diratime" => cfg.nodiratime = false,
            "volatile" => cfg.volatile = true,
            "fsync" => match value {
                Some(b"0") => cfg.volatile = true,
                Some(b"1") => cfg.volatile = false,
                _ => return Err(bad("option fsync= takes 0 or 1")),
            },
            "static_nlink" => cfg.static_nlink = true,
            "xattr_permissions" => {
                let v = text(&need(value)?);
                cfg.xattr_permissions = v
                    .parse::<u32>()
                    .ok()
                    .and_then(crate::types::Level::from_option)
                    .ok_or_else(|| {
                        bad(format!("option xattr_permissions={v}: expected 0, 1 or 2"))
                    })?;
            }
            "noxattrs" | "writeback" | "lower_passthrough" => {
                let on = match value {
                    None | Some(b"1") => true,
                    Some(b"0") => false,
                    _ => return Err(bad(format!("option {key}= takes 0 or 1"))),
                };
                if key == "noxattrs" {
                    cfg.noxattrs = on;
                } else if key == "lower_passthrough" {
                    cfg.lower_passthrough = if on {
                        LowerPassthrough::Always
                    } else {
                        LowerPassthrough::Never
                    };
                } else {
                    cfg.no_writeback = !on;
                }
            }
            "io_uring" if value.is_none() => cfg.io_uring = IoUring::Require,
            "noio_uring" if value.is_none() => cfg.io_uring = IoUring::Off,
            "userxattr" => cfg.userxattr = true,
            "noacl" => cfg.noacl = true,
            "acl" => cfg.noacl = false,
            "index" => {
                cfg.index = match value {
                    Some(b"on") => true,
                    Some(b"off") => false,
                    _ => return Err(bad("option index= takes on or off")),
                }
            }
            "nfs_export" => {
                cfg.nfs_export = match value {
                    Some(b"on") => true,
                    Some(b"off") => false,
                    _ => return Err(bad("option nfs_export= takes on or off")),
                }
            }
            "redirect_dir" => {
                cfg.no_dir_redirects = match value {
                    Some(b"on") => false,
                    Some(b"off" | b"follow" | b"nofollow") => true,
                    _ => {
                        return Err(bad(
                            "option redirect_dir= takes on, follow, nofollow or off",
                        ))
                    }
                }
            }
            "metacopy" => {
                cfg.metacopy = match value {
                    Some(b"on") => true,
                    Some(b"off") => false,
                    _ => return Err(bad("option metacopy= takes on or off")),
                }
            }
            "uidmapping" | "gidmapping" => {
                let v = text(&need(value)?);
                let map =
                    crate::ids::IdMap::parse(&v).map_err(|e| bad(format!("option {key}={e}")))?;
                if key == "uidmapping" {
                    cfg.ids.uids = map;
                } else {
                    cfg.ids.gids = map;
                }
            }
            "squash_to_root" => cfg.ids.squash_root = true,
            "squash_to_uid" | "squash_to_gid" => {
                let v = text(&need(value)?);
                let id: u32 = v
                    .parse()
                    .map_err(|_| bad(format!("option {key}={v}: expected a numeric id")))?;
                if key == "squash_to_uid" {
                    cfg.ids.squash_uid = Some(id);
                } else {
                    cfg.ids.squash_gid = Some(id);
                }
            }
            "threads" | "max_threads" => {
                let v = text(&need(value)?);
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "option {key}={v}: expected a number from 1 to 1024"
                        ))
                    })?;
                cfg.threads = Some(n);
            }
            // fuse-overlayfs's switch between libfuse's one-thread and multi-thread loops
            // (its default is one thread; stratafs's default stays one thread per CPU).
            "threaded" => match value {
                Some(b"0") => cfg.threads = Some(1),
                Some(b"1") => {}
                _ => return Err(bad("option threaded= takes 0 or 1")),
            },
            // No plugins: what fuse-overlayfs does with an empty list too.
            "plugins" if value.is_none_or(|v| v.is_empty()) => {}
            "timeout" => {
                let v = text(&need(value)?);
                let t: f64 = v
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| bad(format!("option timeout={v}: expected seconds")))?;
                cfg.timeout = Some(t);
            }
            "udba" => {
                let v = need(value)?;
                cfg.udba = crate::types::Udba::parse(&v).ok_or_else(|| {
                    bad(format!(
                        "option udba={}: expected none, reval or notify",
                        text(&v)
                    ))
                })?;
            }
            "udba_max_watches" => {
                let v = text(&need(value)?);
                let n: usize = v
                    .parse()
                    .map_err(|_| bad(format!("option udba_max_watches={v}: expected a number")))?;
                cfg.udba_max_watches = Some(n);
            }
            "verity" => {
                let v = text(&need(value)?);
                if v != "off" {
                    return Err(bad(format!(
                        "option verity={v} is not supported (fs-verity digests are not checked)"
                    )));
                }
                cfg.ignored.push(text(item));
            }
            k if REFUSED.contains(&k) => {
                return Err(bad(format!(
                    "option {k} is not supported (it would change what the mount shows)"
                )))
            }
            // Accepted for compatibility with mount(8), the kernel overlayfs, fuse-overlayfs
            // and podman; they do not change what the mount shows.
            "lazytime" | "async" | "sync" | "dirsync" | "auto" | "noauto" | "user" | "nouser"
            | "users" | "owner" | "group" | "_netdev" | "nofail" | "defaults" | "context"
            | "fscontext" | "defcontext" | "rootcontext" | "seclabel" | "xino" | "uuid"
            | "fast_ino" | "large_read" | "big_writes" | "kernel_cache" | "auto_cache"
            | "noforget" | "clone_fd" | "max_idle_threads" | "max_read" | "nonempty" => {
                cfg.ignored.push(text(item));
            }
            k if k.starts_with("x-") || k == "comment" => cfg.ignored.push(text(item)),
            _ => return Err(bad(format!("unknown option {key}"))),
        }
        Ok(())
    }

    /// Positionals, branch lists and defaults → the configuration.
    fn finish(mut self, mut positional: Vec<OsString>) -> Result<Config, OptionsError> {
        let explicit_branches = self.lowerdir_given || self.branches.is_some();
        match positional.len() {
            1 => self.cfg.mountpoint = PathBuf::from(positional.remove(0)),
            2 => {
                let first = positional.remove(0);
                self.cfg.mountpoint = PathBuf::from(positional.remove(0));
                let b = first.as_bytes();
                if !explicit_branches && (self.cow || looks_like_branches(b)) {
                    self.set_branches(Syntax::Unionfs("branch list"), b)?;
                } else if self.cfg.fsname.is_empty() {
                    self.cfg.fsname = first.to_string_lossy().into_owned();
                }
            }
            0 => return Err(bad(
                "missing mountpoint (usage: stratafs [SOURCE] MOUNTPOINT -o lowerdir=...; see --help)",
            )),
            _ => {
                return Err(bad(
                    "too many arguments (usage: stratafs [SOURCE] MOUNTPOINT -o OPTIONS; see --help)",
                ))
            }
        }
        if self.cfg.mountpoint.as_os_str().is_empty() {
            return Err(bad("mountpoint: empty path"));
        }
        self.cfg.mount_fd = fd_mountpoint(&self.cfg.mountpoint);
        if let Some((syntax, branches)) = self.branches.take() {
            self.resolve_branches(syntax, branches)?;
        }
        let cfg = &mut self.cfg;
        if cfg.fsname.is_empty() {
            cfg.fsname = "stratafs".to_string();
        }
        if cfg.upperdir.is_none() {
            cfg.read_only = true;
        }
        // Permissions are always checked by the kernel: the daemon runs as root and does
        // no checks of its own.
        cfg.default_permissions = true;
        Ok(self.cfg)
    }

    /// A unionfs/aufs branch list → one writable top branch and read-only lowers.
    fn resolve_branches(
        &mut self,
        syntax: Syntax,
        branches: Vec<(PathBuf, Mode)>,
    ) -> Result<(), OptionsError> {
        let what = syntax.name();
        if self.lowerdir_given {
            return Err(bad(format!(
                "option lowerdir= conflicts with {what}: give the branches once"
            )));
        }
        if let Some(u) = &self.cfg.upperdir {
            return Err(bad(format!(
                "option upperdir={} conflicts with {what}: mark the top branch =RW instead",
                u.display()
            )));
        }
        let cow = self.cow;
        let writable: Vec<(usize, PathBuf)> = branches
            .iter()
            .enumerate()
            .filter(|(i, (_, m))| match (syntax, m) {
                (_, Mode::Rw) => true,
                (_, Mode::Ro) => false,
                (Syntax::Unionfs(_), Mode::Unset) => *i == 0 && cow,
                (Syntax::Aufs, Mode::Unset) => *i == 0,
            })
            .map(|(i, (p, _))| (i, p.clone()))
            .collect();
        if writable.len() > 1 {
            let names: Vec<String> = writable
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            return Err(bad(format!(
                "{what}: more than one writable branch ({}); stratafs has one writable top branch",
                names.join(", ")
            )));
        }
        let mut paths: Vec<PathBuf> = branches.into_iter().map(|(p, _)| p).collect();
        if let Some((i, p)) = writable.first() {
            if *i != 0 {
                return Err(bad(format!(
                    "{what}: writable branch {} must be the first (top) branch",
                    p.display()
                )));
            }
            let upper = paths.remove(0);
            if self.cfg.workdir.is_none() {
                let name = upper.file_name().ok_or_else(|| {
                    bad(format!(
                        "{what}: writable branch {}: cannot place a workdir next to it; give workdir=",
                        upper.display()
                    ))
                })?;
                let mut w = name.to_os_string();
                w.push(".stratafs-work");
                self.cfg.workdir = Some(upper.with_file_name(w));
                self.cfg.auto_workdir = true;
            }
            self.cfg.upperdir = Some(upper);
        }
        if paths.is_empty() {
            return Err(bad(format!("{what}: needs at least one read-only branch")));
        }
        self.cfg.lowerdirs = paths;
        Ok(())
    }
}

fn display(p: &Path) -> std::path::Display<'_> {
    p.display()
}

/// Is `inner` equal to or below `outer`? (Both canonical.)
fn within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
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

/// `p` as a canonical directory, and its device; the error names `opt`.
fn existing_dir(opt: &str, p: &Path) -> Result<(PathBuf, u64), OptionsError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            let c =
                std::fs::canonicalize(p).map_err(|e| bad(format!("{opt} {}: {e}", display(p))))?;
            Ok((c, m.dev()))
        }
        Ok(_) => Err(bad(format!("{opt} {}: not a directory", display(p)))),
        Err(e) => Err(bad(format!("{opt} {}: {e}", display(p)))),
    }
}

/// Neither of upperdir `u` and workdir `w` (both canonical) is inside the other, the
/// upper does not overlap a lower, and the workdir is not inside one.
fn check_nesting(u: &Path, w: &Path, lowers: &[PathBuf]) -> Result<(), OptionsError> {
    if within(w, u) {
        return Err(bad(format!(
            "workdir {}: inside upperdir {}",
            w.display(),
            u.display()
        )));
    }
    if within(u, w) {
        return Err(bad(format!(
            "upperdir {}: inside workdir {}",
            u.display(),
            w.display()
        )));
    }
    for l in lowers {
        if within(u, l) || within(l, u) {
            return Err(bad(format!(
                "upperdir {}: overlaps lowerdir {}",
                u.display(),
                l.display()
            )));
        }
        if within(w, l) {
            return Err(bad(format!(
                "workdir {}: inside lowerdir {}",
                w.display(),
                l.display()
            )));
        }
    }
    Ok(())
}

/// Is `path` (canonical) the mount point of a mounted filesystem?
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == path)
}

impl Config {
    /// Checks the paths without writing anything, then makes them canonical (the daemon
    /// changes to `/`): each branch exists and is a directory, workdir comes with upperdir
    /// on the same filesystem, no branch is inside another, and the mountpoint is a
    /// directory that is not inside a branch nor already a mount point. One line per
    /// error, naming the option and the path.
    pub fn validate(&mut self) -> Result<(), OptionsError> {
        let dir = existing_dir;
        if self.lowerdirs.is_empty() {
            return Err(bad("option lowerdir= is missing or empty"));
        }
        let mut lowers = Vec::new();
        for l in &self.lowerdirs {
            lowers.push(dir("lowerdir", l)?.0);
        }
        let (upper, work) = match (&self.upperdir, &self.workdir) {
            (Some(u), Some(w)) => {
                let (uc, udev) = dir("upperdir", u)?;
                let (wc, wdev) = if self.auto_workdir && !w.exists() {
                    // Created by prepare(): check where it would be.
                    let parent = w.parent().unwrap_or(Path::new("/"));
                    let (pc, pdev) = dir("workdir", parent)?;
                    let name = w.file_name().unwrap_or_default();
                    (pc.join(name), pdev)
                } else {
                    dir("workdir", w)?
                };
                if udev != wdev {
                    let hint = if self.auto_workdir {
                        " (the upper is the root of its filesystem: give workdir=)"
                    } else {
                        ""
                    };
                    return Err(bad(format!(
                        "workdir {}: not on the same filesystem as upperdir {}{hint}",
                        display(w),
                        display(u)
                    )));
                }
                (Some(uc), Some(wc))
            }
            (Some(u), None) => {
                return Err(bad(format!(
                    "upperdir {} given without workdir",
                    display(u)
                )))
            }
            (None, Some(w)) => {
                return Err(bad(format!(
                    "workdir {} given without upperdir",
                    display(w)
                )))
            }
            (None, None) => (None, None),
        };
        if let (Some(u), Some(w)) = (&upper, &work) {
            check_nesting(u, w, &lowers)?;
        }
        let branches: Vec<(&str, &PathBuf)> = lowers
            .iter()
            .map(|l| ("lowerdir", l))
            .chain(upper.iter().map(|u| ("upperdir", u)))
            .chain(work.iter().map(|w| ("workdir", w)))
            .collect();
        let mnt = self.validate_mountpoint(&branches)?;
        self.lowerdirs = lowers;
        self.upperdir = upper;
        self.workdir = work;
        self.mountpoint = mnt;
        if let Some(f) = &self.log_file {
            if let Ok(a) = std::path::absolute(f) {
                self.log_file = Some(a);
            }
        }
        Ok(())
    }

    /// The mountpoint's checks: a directory outside every branch and not a mount point
    /// yet; or, for `/dev/fd/N`, an open read-write descriptor of /dev/fuse (which the
    /// caller mounted: there is no directory of ours to check). Returns it canonical.
    fn validate_mountpoint(&self, branches: &[(&str, &PathBuf)]) -> Result<PathBuf, OptionsError> {
        if let Some(fd) = self.mount_fd {
            if self.auto_unmount {
                return Err(bad(format!(
                    "option auto_unmount: not with mountpoint /dev/fd/{fd} (the caller mounted it and unmounts it)"
                )));
            }
            crate::sys::check_fuse_fd(fd).map_err(|e| {
                bad(format!(
                    "mountpoint /dev/fd/{fd}: not an open read-write descriptor of /dev/fuse ({e})"
                ))
            })?;
            return Ok(self.mountpoint.clone());
        }
        let (mnt, _) = existing_dir("mountpoint", &self.mountpoint)?;
        for (opt, b) in branches {
            if within(&mnt, b) {
                return Err(bad(format!(
                    "mountpoint {}: inside {opt} {}",
                    mnt.display(),
                    b.display()
                )));
            }
        }
        if is_mount_point(&mnt) {
            return Err(bad(format!(
                "mountpoint {}: busy (already a mount point)",
                mnt.display()
            )));
        }
        Ok(mnt)
    }

    /// Creates what the mount may create before it starts: the automatic workdir.
    pub fn prepare(&self) -> Result<(), OptionsError> {
        if let (true, Some(w)) = (self.auto_workdir, &self.workdir) {
            if !w.is_dir() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(w)
                    .map_err(|e| bad(format!("workdir {}: {e}", w.display())))?;
            }
        }
        Ok(())
    }

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

    /// True when writes are possible at all.
    /// The mode of lower `i` (`lower_modes`, `RoWh` by default).
    pub fn lower_mode(&self, i: usize) -> crate::types::Mode {
        self.lower_modes
            .get(i)
            .copied()
            .unwrap_or(crate::types::Mode::RoWh)
    }

    pub fn writable(&self) -> bool {
        (self.upperdir.is_some() || self.lower_modes.contains(&crate::types::Mode::Rw))
            && !self.read_only
    }
}

/// Parses `stratafs [SOURCE] MOUNTPOINT [-o OPTS]… [-f] [-d]` and the other syntaxes.
pub fn parse_args<I, S>(args: I) -> Result<Command, OptionsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    if let Some(r) = parse_remount(&args)? {
        return Ok(Command::Remount(r));
    }
    let mut p = Parser {
        cfg: Config {
            default_permissions: true,
            ..Config::default()
        },
        lowerdir_given: false,
        branches: None,
        cow: false,
    };
    let mut positional: Vec<OsString> = Vec::new();
    let mut it = args.into_iter().skip(1);
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        let b = arg.as_bytes();
        if only_positional {
            positional.push(arg);
            continue;
        }
        match b {
            b"-h" | b"--help" => return Ok(Command::Help),
            b"-V" | b"--version" => return Ok(Command::Version),
            b"-f" | b"--foreground" => p.cfg.foreground = true,
            b"-d" | b"--debug" => {
                p.cfg.debug = true;
                p.cfg.foreground = true;
            }
            // libfuse's (and fuse-overlayfs's) single-threaded switch.
            b"-s" => p.cfg.threads = Some(1),
            b"--" => only_positional = true,
            b"-o" => {
                let v = it.next().ok_or_else(|| bad("option -o needs a value"))?;
                for item in split_options(v.as_bytes()) {
                    p.apply(&item)?;
                }
            }
            _ if b.starts_with(b"-o") => {
                for item in split_options(&b[2..]) {
                    p.apply(&item)?;
                }
            }
            b"--log-file" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("option --log-file needs a file"))?;
                p.cfg.log_file = Some(PathBuf::from(v));
            }
            _ if b.starts_with(b"--log-file=") => {
                if b.len() == 11 {
                    return Err(bad("option --log-file= needs a file"));
                }
                p.cfg.log_file = Some(PathBuf::from(OsStr::from_bytes(&b[11..])));
            }
            _ if b.starts_with(b"-") && b.len() > 1 => {
                return Err(bad(format!(
                    "unknown argument {} (see --help)",
                    arg.to_string_lossy()
                )))
            }
            _ => positional.push(arg),
        }
    }
    Ok(Command::Mount(Box::new(p.finish(positional)?)))
}

/// A remount's mount-time options (what mount(8) takes from an fstab line: `lowerdir=`,
/// `upperdir=`, `volatile`, …) checked against the configuration the daemon runs with:
/// each must leave it as it is (a remount changes only ro/rw). Branch paths are compared
/// after resolving them as at mount time. One line naming the first option that differs.
pub fn remount_unchanged(running: &Config, items: &[String]) -> Result<(), OptionsError> {
    fn canon(p: &Path) -> PathBuf {
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    }
    let branches = |c: &Config| {
        (
            c.lowerdirs.iter().map(|p| canon(p)).collect::<Vec<_>>(),
            c.upperdir.as_deref().map(canon),
            c.workdir.as_deref().map(canon),
        )
    };
    let want = branches(running);
    let differs = |o: &str| {
        Err(bad(format!(
            "option {o} differs from the running mount: a stratafs remount changes only ro/rw"
        )))
    };
    for item in items {
        let b = item.as_bytes();
        let key = item.split('=').next().unwrap_or("");
        if key == "cow" {
            continue; // a branch-list reading rule; no effect on a mounted list
        }
        if matches!(key, "br" | "dirs") || b.starts_with(b"br:") {
            // A whole branch list: resolve it as at mount time, then compare.
            let mut q = Parser {
                cfg: Config {
                    workdir: (!running.auto_workdir)
                        .then(|| running.workdir.clone())
                        .flatten(),
                    ..Config::default()
                },
                lowerdir_given: false,
                branches: None,
                cow: false,
            };
            q.apply(b)?;
            if let Some((syntax, list)) = q.branches.take() {
                q.resolve_branches(syntax, list)?;
            }
            if branches(&q.cfg) != want {
                return differs(item);
            }
            continue;
        }
        let mut p = Parser {
            cfg: running.clone(),
            lowerdir_given: false,
            branches: None,
            cow: false,
        };
        p.apply(b)?;
        let mut got = p.cfg;
        if matches!(key, "lowerdir" | "upperdir" | "workdir") {
            if branches(&got) != want {
                return differs(item);
            }
            continue;
        }
        got.ignored.clone_from(&running.ignored);
        if format!("{got:?}") != format!("{running:?}") {
            return differs(item);
        }
    }
    Ok(())
}

/// `[SOURCE] MOUNTPOINT -o …remount…`: the remount form (what mount.fuse3 runs for
/// `mount -o remount,…`). `None` when no `-o` item is `remount`.
fn parse_remount(args: &[OsString]) -> Result<Option<RemountArgs>, OptionsError> {
    let mut items: Vec<String> = Vec::new();
    let mut positional = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        let opts = if b == b"-o" {
            match it.next() {
                Some(v) => v.as_bytes(),
                None => return Ok(None), // the mount parser reports it
            }
        } else if let Some(v) = b.strip_prefix(b"-o") {
            v
        } else {
            if !b.starts_with(b"-") {
                positional.push(a.clone());
            }
            continue;
        };
        for i in split_options(opts) {
            items.push(String::from_utf8_lossy(&i).into_owned());
        }
    }
    if !items.iter().any(|i| i == "remount") {
        return Ok(None);
    }
    let mountpoint = match positional.len() {
        1 | 2 => PathBuf::from(positional.pop().unwrap_or_default()),
        0 => return Err(bad("remount: missing mountpoint")),
        _ => {
            return Err(bad(
                "remount: too many arguments (give [SOURCE] MOUNTPOINT)",
            ))
        }
    };
    Ok(Some(RemountArgs {
        mountpoint,
        options: items.into_iter().filter(|i| i != "remount").collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_dir_off_forbids_redirects() {
        assert!(!cfg(&["-o", "lowerdir=/a", "/m"]).no_dir_redirects);
        assert!(!cfg(&["-o", "lowerdir=/a,redirect_dir=on", "/m"]).no_dir_redirects);
        for v in ["off", "follow", "nofollow"] {
            let c = cfg(&["-o", &format!("lowerdir=/a,redirect_dir={v}"), "/m"]);
            assert!(c.no_dir_redirects && c.ignored.is_empty(), "{v}");
        }
        assert!(err(&["-o", "lowerdir=/a,redirect_dir=maybe", "/m"]).contains("redirect_dir="));
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
    fn remount_checks_mount_time_options_against_the_running_config() {
        let running = cfg(&[
            "-o",
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,volatile,threads=3",
            "/m",
        ]);
        let ok = |o: &[&str]| {
            let v: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            remount_unchanged(&running, &v)
        };
        assert_eq!(
            ok(&["lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"]),
            Ok(())
        );
        assert_eq!(
            ok(&["volatile", "threads=3", "context=x", "fsync=0"]),
            Ok(())
        );
        for bad in [
            "lowerdir=/l1",
            "upperdir=/v",
            "workdir=/w2",
            "threads=4",
            "metacopy=on",
            "fsync=1",
            "br=/u=rw:/l2=ro",
        ] {
            let e = ok(&[bad]).expect_err(bad).0;
            assert!(e.contains(bad) && e.contains("only ro/rw"), "{bad}: {e}");
        }
        assert!(ok(&["bogus"])
            .expect_err("bogus")
            .0
            .contains("unknown option"));
        let running = cfg(&["/m", "-o", "br=/x/u=rw:/l1=ro:/l2"]);
        assert_eq!(
            remount_unchanged(&running, &["br=/x/u=rw:/l1=ro:/l2=ro".to_string()]),
            Ok(())
        );
    }

    #[test]
    fn remount_form() {
        let r = |a: &[&str]| {
            let mut v = vec!["stratafs"];
            v.extend_from_slice(a);
            match parse_args(v).expect("parses") {
                Command::Remount(r) => r,
                other => panic!("{other:?}"),
            }
        };
        let got = r(&[
            "stratafs",
            "/m",
            "-o",
            "ro,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,dev,suid",
        ]);
        assert_eq!(got.mountpoint, p("/m"));
        assert_eq!(got.options[0], "ro");
        assert!(!got.options.iter().any(|o| o == "remount"));
        assert_eq!(r(&["-o", "remount,rw", "/m"]).options, ["rw"]);
        assert_eq!(r(&["-oremount", "-o", "ro", "/m"]).options, ["ro"]);
        assert!(parse_args(["s", "-o", "remount,ro"]).is_err());
    }

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["stratafs"];
        v.extend_from_slice(args);
        match parse_args(v).expect("parses") {
            Command::Mount(c) => *c,
            other => panic!("expected a mount, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        let mut v = vec!["stratafs"];
        v.extend_from_slice(args);
        let e = parse_args(v).expect_err("refused").0;
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// The atime options combine as in mount(8) and mount(2): strictatime wins over
    /// noatime, relatime undoes neither, atime/nostrictatime/diratime undo theirs.
    #[test]
    fn atime_options() {
        use crate::types::{Atime, Policy};
        let pol = |o: &str| {
            let c = cfg(&["-o", &format!("lowerdir=/a,{o}"), "/m"]);
            Policy::from_config(&c)
        };
        assert_eq!(pol("ro").atime, Atime::Relative);
        assert_eq!(pol("noatime").atime, Atime::Never);
        assert_eq!(pol("noatime,atime").atime, Atime::Relative);
        assert_eq!(pol("noatime,relatime").atime, Atime::Never);
        assert_eq!(pol("noatime,strictatime").atime, Atime::Strict);
        assert_eq!(pol("strictatime,noatime").atime, Atime::Strict);
        assert_eq!(pol("strictatime,relatime").atime, Atime::Strict);
        assert_eq!(pol("strictatime,nostrictatime").atime, Atime::Relative);
        assert!(pol("nodiratime").nodiratime);
        assert!(!pol("nodiratime,diratime").nodiratime);
        assert!(cfg(&["-o", "lowerdir=/a,lazytime", "/m"])
            .ignored
            .contains(&"lazytime".to_string()));
    }

    #[test]
    fn kernel_syntax_with_escapes() {
        let c = cfg(&[
            "-o",
            r"lowerdir=/a\:b:/c\,d:/e,upperdir=/u,workdir=/w",
            "/mnt",
        ]);
        assert_eq!(c.lowerdirs, vec![p("/a:b"), p("/c,d"), p("/e")]);
        assert_eq!(c.upperdir, Some(p("/u")));
        assert_eq!(c.workdir, Some(p("/w")));
        assert!(!c.auto_workdir);
        assert_eq!(c.mountpoint, p("/mnt"));
        assert!(!c.read_only);
        assert!(c.default_permissions);
        assert_eq!(c.fsname, "stratafs");
    }

    #[test]
    fn no_upper_means_read_only() {
        assert!(cfg(&["-o", "lowerdir=/a", "/mnt"]).read_only);
        assert!(cfg(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,ro", "/mnt"]).read_only);
    }

    #[test]
    fn source_becomes_fsname_and_empty_items_are_skipped() {
        let c = cfg(&["mysrc", "/mnt", "-o", "lowerdir=/a,,volatile,context=x"]);
        assert_eq!(c.fsname, "mysrc");
        assert!(c.volatile);
        assert_eq!(c.ignored, vec!["context=x".to_string()]);
        let c = cfg(&["mysrc", "/mnt", "-o", "lowerdir=/a,fsname=given"]);
        assert_eq!(c.fsname, "given");
    }

    #[test]
    fn podman_options() {
        let c = cfg(&[
            "-o",
            r#",lowerdir=/l1:/l2,upperdir=/u,workdir=/w,,volatile,context="system_u:object_r:container_file_t:s0:c1,c2",fsync=0,noatime,nodev,metacopy=on,userxattr"#,
            "/mnt",
        ]);
        assert_eq!(c.lowerdirs, vec![p("/l1"), p("/l2")]);
        assert!(c.volatile && c.noatime && c.nodev && c.userxattr);
        assert!(c
            .ignored
            .iter()
            .any(|i| i.starts_with("context=\"system_u")));
        // fsync=0 is applied (as volatile), not just logged.
        assert!(!c.ignored.contains(&"fsync=0".to_string()));
        let c = cfg(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,fsync=0", "/m"]);
        assert!(c.volatile);
        assert!(cfg(&["-o", "lowerdir=/a,static_nlink", "/m"]).static_nlink);
    }

    #[test]
    fn mount_helper_options() {
        // What mount.fuse3 passes: the user's options plus dev,suid (and ro first).
        let c = cfg(&[
            "stratafs",
            "/mnt",
            "-o",
            "ro,noatime,lowerdir=/a,upperdir=/u,workdir=/w,x-systemd.requires=/x,dev,suid",
        ]);
        assert!(c.read_only && c.noatime && !c.nodev && !c.nosuid);
        assert_eq!(c.fsname, "stratafs");
        let c = cfg(&["src", "/mnt", "-o", "nodev,nosuid,noexec,lowerdir=/a", "-f"]);
        assert!(c.nodev && c.nosuid && c.noexec && c.foreground);
    }

    #[test]
    fn metacopy_and_id_options() {
        assert!(!cfg(&["-o", "lowerdir=/a", "/m"]).metacopy);
        assert!(cfg(&["-o", "lowerdir=/a,metacopy=on", "/m"]).metacopy);
        let c = cfg(&[
            "-o",
            "lowerdir=/a,uidmapping=0:1000:10,gidmapping=0:2000:5:5:3000:1,squash_to_uid=7",
            "/m",
        ]);
        assert_eq!(c.ids.uids.ranges.len(), 1);
        assert_eq!(c.ids.gids.ranges.len(), 2);
        assert_eq!((c.ids.squash_uid, c.ids.squash_gid), (Some(7), None));
        let c = cfg(&["-o", "lowerdir=/a,squash_to_root", "/m"]);
        assert_eq!(c.ids.view(5, 6), (0, 0));
        // squash_to_uid wins over squash_to_root in either order (fuse-overlayfs).
        for o in [
            "lowerdir=/a,squash_to_uid=7,squash_to_root",
            "lowerdir=/a,squash_to_root,squash_to_uid=7",
        ] {
            assert_eq!(cfg(&["-o", o, "/m"]).ids.view(5, 6), (7, 0), "{o}");
        }
    }

    #[test]
    fn udba_options() {
        use crate::types::Udba;
        assert_eq!(cfg(&["-o", "lowerdir=/a", "/m"]).udba, Udba::None);
        for (v, want) in [
            ("none", Udba::None),
            ("reval", Udba::Reval),
            ("notify", Udba::Notify),
        ] {
            assert_eq!(
                cfg(&["-o", &format!("lowerdir=/a,udba={v}"), "/m"]).udba,
                want
            );
        }
        let c = cfg(&["-o", "lowerdir=/a,udba=notify,udba_max_watches=7", "/m"]);
        assert_eq!(c.udba_max_watches, Some(7));
        assert!(err(&["-o", "lowerdir=/a,udba=always", "/m"]).contains("udba=always"));
        assert!(err(&["-o", "lowerdir=/a,udba_max_watches=x", "/m"]).contains("udba_max_watches"));
    }

    #[test]
    fn fuse_overlayfs_xattr_and_cache_options() {
        use crate::types::Level;
        let c = cfg(&["-o", "lowerdir=/a", "/m"]);
        assert!(c.xattr_permissions.is_none() && !c.noxattrs && !c.no_writeback);
        let c = cfg(&[
            "-o",
            "lowerdir=/a,xattr_permissions=2,noxattrs=1,writeback=0",
            "/m",
        ]);
        assert_eq!(c.xattr_permissions, Some(Level::Containers));
        assert!(c.noxattrs && c.no_writeback);
        let c = cfg(&[
            "-o",
            "lowerdir=/a,xattr_permissions=1,noxattrs=0,writeback=1",
            "/m",
        ]);
        assert_eq!(c.xattr_permissions, Some(Level::Privileged));
        assert!(!c.noxattrs && !c.no_writeback);
        assert!(cfg(&["-o", "lowerdir=/a,noxattrs", "/m"]).noxattrs);
        assert_eq!(c.lower_passthrough, LowerPassthrough::ReadOnly);
        assert_eq!(c.io_uring, IoUring::Auto);
        assert_eq!(
            cfg(&["-o", "lowerdir=/a,io_uring", "/m"]).io_uring,
            IoUring::Require
        );
        assert_eq!(
            cfg(&["-o", "lowerdir=/a,noio_uring", "/m"]).io_uring,
            IoUring::Off
        );
        let lp = |o: &str| cfg(&["-o", &format!("lowerdir=/a,{o}"), "/m"]).lower_passthrough;
        assert_eq!(lp("lower_passthrough"), LowerPassthrough::Always);
        assert_eq!(lp("lower_passthrough=1"), LowerPassthrough::Always);
        assert_eq!(lp("lower_passthrough=0"), LowerPassthrough::Never);
        assert!(cfg(&["-o", "lowerdir=/a,xattr_permissions=0", "/m"])
            .xattr_permissions
            .is_none());
        let c = cfg(&["-o", "lowerdir=/a,fast_ino=1", "/m"]);
        assert!(c.ignored.contains(&"fast_ino=1".to_string()));
        for bad in [
            "xattr_permissions=3",
            "xattr_permissions=",
            "noxattrs=yes",
            "writeback=2",
            "lower_passthrough=yes",
        ] {
            let key = bad.split('=').next().unwrap_or_default();
            let e = err(&["-o", &format!("lowerdir=/a,{bad}"), "/m"]);
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn generic_fuse_options() {
        let c = cfg(&[
            "-o",
            "lowerdir=/a,allow_other,allow_root,default_permissions,auto_unmount,fsname=x,subtype=y,max_threads=3,timeout=1.5,debug",
            "/m",
            "--log-file=/tmp/l",
        ]);
        assert!(c.allow_other && c.allow_root && c.auto_unmount && c.debug && !c.foreground);
        assert_eq!(c.fsname, "x");
        assert_eq!(c.subtype.as_deref(), Some("y"));
        assert_eq!(c.threads, Some(3));
        assert_eq!(c.timeout, Some(1.5));
        assert_eq!(c.log_file, Some(p("/tmp/l")));
        assert_eq!(cfg(&["-olowerdir=/a,threads=2", "/m"]).threads, Some(2));
        assert!(cfg(&["-d", "-o", "lowerdir=/a", "/m"]).foreground);
    }

    /// fuse-overlayfs's thread switches and the libfuse tuning its --help lists.
    #[test]
    fn fuse_overlayfs_thread_options() {
        assert_eq!(
            cfg(&["-o", "lowerdir=/a,threaded=0", "/m"]).threads,
            Some(1)
        );
        assert_eq!(cfg(&["-o", "lowerdir=/a,threaded=1", "/m"]).threads, None);
        assert_eq!(cfg(&["-s", "-o", "lowerdir=/a", "/m"]).threads, Some(1));
        let c = cfg(&[
            "-o",
            "lowerdir=/a,clone_fd,max_idle_threads=3,plugins=,max_read=65536,nonempty",
            "/m",
        ]);
        assert_eq!(
            c.ignored,
            [
                "clone_fd",
                "max_idle_threads=3",
                "max_read=65536",
                "nonempty"
            ]
        );
        assert!(err(&["-o", "lowerdir=/a,threaded=2", "/m"]).contains("threaded"));
        assert!(err(&["-o", "lowerdir=/a,plugins=/x.so", "/m"]).contains("plugins"));
    }

    #[test]
    fn root_mounts_are_everyones_unless_noallow_other() {
        let mut c = cfg(&["-o", "lowerdir=/a", "/m"]);
        assert!(!c.allow_other && !c.owner_only);
        c.resolve_access(1000);
        assert!(!c.allow_other, "non-root keeps FUSE's owner-only default");
        c.resolve_access(0);
        assert!(c.allow_other && c.default_permissions);
        let mut c = cfg(&["-o", "lowerdir=/a,noallow_other", "/m"]);
        c.resolve_access(0);
        assert!(!c.allow_other && c.owner_only);
        // The last of the two wins.
        let mut c = cfg(&["-o", "lowerdir=/a,noallow_other,allow_other", "/m"]);
        c.resolve_access(1000);
        assert!(c.allow_other);
        let mut c = cfg(&["-o", "allow_other,lowerdir=/a,noallow_other", "/m"]);
        c.resolve_access(0);
        assert!(!c.allow_other);
    }

    /// The same mount written in each syntax gives the same branches.
    #[test]
    fn three_syntaxes_agree() {
        let all = [
            cfg(&[
                "-o",
                "lowerdir=/l1:/l2,upperdir=/x/u,workdir=/x/u.stratafs-work",
                "/m",
            ]),
            cfg(&["-o", "cow", "/x/u=RW:/l1=RO:/l2", "/m"]),
            cfg(&["/x/u=RW:/l1=RO:/l2=ro", "/m"]),
            cfg(&["-o", "cow", "/x/u:/l1:/l2", "/m"]),
            cfg(&["/m", "-o", "dirs=/x/u=rw:/l1:/l2"]),
            cfg(&["/m", "-o", "br=/x/u=rw:/l1=ro:/l2=rr"]),
            cfg(&["/m", "-o", "br:/x/u:/l1=ro+wh:/l2"]),
            cfg(&[
                "/m",
                "-o",
                "br=/x/u=rw:/l1=ro:/l2=ro,workdir=/x/u.stratafs-work",
            ]),
        ];
        for c in &all {
            assert_eq!(c.lowerdirs, vec![p("/l1"), p("/l2")], "{c:?}");
            assert_eq!(c.upperdir, Some(p("/x/u")), "{c:?}");
            assert_eq!(c.workdir, Some(p("/x/u.stratafs-work")), "{c:?}");
            assert_eq!(c.mountpoint, p("/m"));
            assert!(!c.read_only);
            assert_eq!(c.fsname, "stratafs");
        }
        assert!(all[1].auto_workdir && !all[0].auto_workdir && !all[7].auto_workdir);
    }

    #[test]
    fn unionfs_read_only_branches() {
        // Without cow and without =RW every branch is read-only.
        let c = cfg(&["/a:/b", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a"), p("/b")]);
        assert!(c.upperdir.is_none() && c.read_only && c.workdir.is_none());
        let c = cfg(&["/a=RO", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a")]);
        // A plain SOURCE is a source, not a branch.
        let c = cfg(&["/dev/sda1", "/m", "-o", "lowerdir=/l"]);
        assert_eq!(c.fsname, "/dev/sda1");
        // With explicit branches a colon in the source is just a name.
        let c = cfg(&["a:b", "/m", "-o", "lowerdir=/l"]);
        assert_eq!(c.fsname, "a:b");
        assert_eq!(c.lowerdirs, vec![p("/l")]);
        // An escaped '=' belongs to the path.
        let c = cfg(&[r"/a\=b=RO:/c", "/m"]);
        assert_eq!(c.lowerdirs, vec![p("/a=b"), p("/c")]);
    }

    #[test]
    fn refusals_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["-o", "lowerdir=/a:,upperdir=/u", "/m"], "lowerdir"),
            (&["-o", "lowerdir=/a::/b", "/m"], "lowerdir"),
            (&["-o", "lowerdir=", "/m"], "lowerdir"),
            (&["-o", "lowerdir", "/m"], "lowerdir"),
            (&["-o", "bogus", "/m"], "bogus"),
            (&["-o", "threads=0,lowerdir=/a", "/m"], "threads"),
            (&["-o", "max_threads=lots,lowerdir=/a", "/m"], "max_threads"),
            (&["-o", "timeout=-1,lowerdir=/a", "/m"], "timeout"),
            (&["-o", "upperdir=,lowerdir=/a", "/m"], "upperdir"),
            (&["-o", "fsname=,lowerdir=/a", "/m"], "fsname"),
            (&["-o", "uidmapping=0:1000,lowerdir=/a", "/m"], "uidmapping"),
            (
                &["-o", "squash_to_uid=me,lowerdir=/a", "/m"],
                "squash_to_uid",
            ),
            (&["-o", "metacopy=yes,lowerdir=/a", "/m"], "metacopy"),
            (&["-o", "plugins=/x.so,lowerdir=/a", "/m"], "plugins"),
            (&["-o", "verity=require,lowerdir=/a", "/m"], "verity"),
            (&["-o", "lowerdir=/a"], "mountpoint"),
            (&["a", "b", "c"], "too many"),
            (&["-x", "/m"], "-x"),
            (&["-o"], "-o"),
            (&["/u=RW:/a=RW", "/m"], "more than one writable"),
            (&["-o", "cow", "/u:/a=RW", "/m"], "more than one writable"),
            (&["/m", "-o", "br=/u=rw:/a=rw"], "more than one writable"),
            (&["/m", "-o", "br=/u:/a=rw"], "more than one writable"),
            (&["/a=RO:/u=RW", "/m"], "must be the first"),
            (&["/m", "-o", "dirs=/a:/u=RW"], "must be the first"),
            (&["/u=RW", "/m"], "at least one read-only"),
            (&["/m", "-o", "br=/u=rw"], "at least one read-only"),
            (&["/u=RX:/a", "/m"], "unknown mode"),
            (&["/u=RW::/a", "/m"], "empty branch"),
            (&["/m", "-o", "br=/u=rw:/a,dirs=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,lowerdir=/b"], "conflicts"),
            (&["/m", "-o", "br=/u=rw:/a,upperdir=/v"], "upperdir"),
            (&["/m", "-o", "br=/=rw:/a"], "workdir="),
            (&["-o", "lowerdir=/a", "--log-file="], "--log-file"),
        ];
        for (args, word) in cases {
            let e = err(args);
            assert!(e.contains(word), "{args:?}: {e}");
        }
    }

    #[test]
    fn help_lists_every_option_on_one_line() {
        let h = help_text();
        for o in OPTIONS {
            assert!(h.contains(o.usage), "{}", o.usage);
            assert!(h.contains(o.help), "{}", o.help);
        }
        assert!(matches!(parse_args(["s", "--help"]), Ok(Command::Help)));
        assert!(matches!(parse_args(["s", "-V"]), Ok(Command::Version)));
    }

    /// docs/stratafs.1 has one `.TP` entry per table row and no other: it cannot drift.
    #[test]
    fn man_page_matches_the_option_table() {
        let man = include_str!("../docs/stratafs.1");
        let keys: Vec<&str> = OPTIONS.iter().map(|o| o.key).collect();
        let mut entries = Vec::new();
        let lines: Vec<&str> = man
            .lines()
            .skip_while(|l| *l != ".SH OPTIONS")
            .skip(1)
            .take_while(|l| !l.starts_with(".SH"))
            .collect();
        for w in lines.windows(2) {
            if w[0].trim() == ".TP" {
                let key: String = w[1]
                    .replace("\\-", "-")
                    .trim_start_matches("\\fB")
                    .chars()
                    .take_while(|c| !matches!(c, '\\' | ' ' | ',' | '='))
                    .collect();
                entries.push(key);
            }
        }
        for k in &keys {
            assert!(
                entries.iter().any(|e| e == k),
                "option {k} of OPTIONS is missing from docs/stratafs.1"
            );
        }
        for e in &entries {
            assert!(
                keys.contains(&e.as_str()),
                "docs/stratafs.1 documents {e}, which is not in OPTIONS"
            );
        }
        assert_eq!(entries.len(), keys.len(), "{entries:?}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), p(r"/a b\c"));
        assert_eq!(unescape_mountinfo(r"/x\04"), p(r"/x\04"));
    }

    /// Temporary directory tree removed on drop.
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let d = std::env::temp_dir().join(format!("stratafs-opt-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            for s in ["l1", "l2", "u", "w", "m", "l1/inner"] {
                std::fs::create_dir_all(d.join(s)).expect("mkdir");
            }
            std::fs::write(d.join("file"), b"x").expect("write");
            Tmp(d)
        }
        fn s(&self, sub: &str) -> String {
            self.0.join(sub).display().to_string()
        }
        fn listing(&self) -> Vec<PathBuf> {
            fn walk(d: &Path, out: &mut Vec<PathBuf>) {
                if let Ok(rd) = std::fs::read_dir(d) {
                    for e in rd.flatten() {
                        out.push(e.path());
                        walk(&e.path(), out);
                    }
                }
            }
            let mut v = Vec::new();
            walk(&self.0, &mut v);
            v.sort();
            v
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn validated(args: &[String]) -> Result<Config, String> {
        let mut v = vec!["stratafs".to_string()];
        v.extend_from_slice(args);
        let mut c = match parse_args(v).map_err(|e| e.0)? {
            Command::Mount(c) => *c,
            _ => return Err("not a mount".into()),
        };
        c.validate().map_err(|e| e.0)?;
        Ok(c)
    }

    #[test]
    fn validation_refusals() {
        let t = Tmp::new("val");
        let before = t.listing();
        let o = |s: String| vec!["-o".to_string(), s, t.s("m")];
        let cases: Vec<(Vec<String>, String)> = vec![
            (
                o(format!("lowerdir={}", t.s("nope"))),
                format!("lowerdir {}", t.s("nope")),
            ),
            (
                o(format!("lowerdir={}", t.s("file"))),
                "not a directory".into(),
            ),
            (
                o(format!("lowerdir={},upperdir={}", t.s("l1"), t.s("u"))),
                "without workdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s("nope"),
                    t.s("w")
                )),
                format!("upperdir {}", t.s("nope")),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s("l1/inner"),
                    t.s("w")
                )),
                "overlaps lowerdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1/inner"),
                    t.s("l1"),
                    t.s("w")
                )),
                "overlaps lowerdir".into(),
            ),
            (
                o(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    t.s("l1"),
                    t.s(""),
                    t.s("w")
                )),
                "inside upperdir".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!("lowerdir={}", t.s("l1")),
                    t.s("l1/inner"),
                ],
                "mountpoint".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!(
                        "lowerdir={},upperdir={},workdir={}",
                        t.s("l1"),
                        t.s("u"),
                        t.s("w")
                    ),
                    t.s("u"),
                ],
                "inside upperdir".into(),
            ),
            (
                o(format!("lowerdir={}", t.s("l1")))
                    .into_iter()
                    .take(2)
                    .chain([t.s("nope")])
                    .collect(),
                "mountpoint".into(),
            ),
            (
                vec![
                    "-o".into(),
                    format!("lowerdir={}", t.s("l1")),
                    "/proc".into(),
                ],
                "busy".into(),
            ),
        ];
        for (args, want) in cases {
            let e = validated(&args).expect_err("refused");
            assert!(e.contains(&want), "{args:?}: {e} (wanted {want})");
            assert!(!e.contains('\n'));
        }
        // The upper's filesystem root has no sibling for an automatic workdir.
        if std::fs::metadata("/dev/shm").map(|m| m.dev()).ok()
            != std::fs::metadata("/dev").map(|m| m.dev()).ok()
        {
            let e =
                validated(&[format!("/dev/shm=RW:{}", t.s("l1")), t.s("m")]).expect_err("refused");
            assert!(e.contains("give workdir="), "{e}");
        }
        assert_eq!(before, t.listing(), "validation wrote nothing");
    }

    #[test]
    fn validation_makes_paths_canonical_and_prepare_makes_the_workdir() {
        let t = Tmp::new("ok");
        let c = validated(&[
            "-o".into(),
            "cow".into(),
            format!("{}:{}/../l2=RO", t.s("u"), t.s("l1")),
            t.s("m"),
        ])
        .expect("valid");
        let root = std::fs::canonicalize(&t.0).expect("canon");
        assert_eq!(c.upperdir, Some(root.join("u")));
        assert_eq!(c.lowerdirs, vec![root.join("l2")]);
        assert_eq!(c.workdir, Some(root.join("u.stratafs-work")));
        assert!(!root.join("u.stratafs-work").exists());
        c.prepare().expect("prepare");
        assert!(root.join("u.stratafs-work").is_dir());
        // A second time reuses it.
        let mut again = c.clone();
        again.validate().expect("still valid");
        again.prepare().expect("prepare again");
    }
}

/// A remount asked on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemountArgs {
    pub mountpoint: PathBuf,
    /// Every `-o` item but `remount` itself.
    pub options: Vec<String>,
}

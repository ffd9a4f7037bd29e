//! The command line → a [`Config`]: [`parse_args`] reads the arguments, a [`Parser`] applies
//! each `-o` item, one family of options per function (branches, mount flags, the overlay's
//! on-disk features, ownership, the daemon's tuning, and the options accepted for
//! compatibility), then [`Parser::finish`] reads the positionals and resolves a branch list
//! (`branches.rs`). Pure: nothing here looks at the filesystem.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::branches::{self, looks_like_branches, parse_branches, Branch, Syntax};
use super::policy;
use super::remount::parse_remount;
use super::{
    bad, fd_mountpoint, split_lowerdirs, split_options, unescape, Command, Config, IoUring,
    LowerPassthrough, OptionsError,
};
use crate::types::Mode;

/// Options that would change what the mount shows: refused rather than ignored.
const REFUSED: &[&str] = &["plugins", "datadir+", "lowerdir+"];

/// Accepted for compatibility with mount(8), the kernel overlayfs, fuse-overlayfs and
/// podman; they do not change what the mount shows (logged once at startup).
const IGNORED: &[&str] = &[
    "lazytime",
    "async",
    "sync",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "defaults",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "seclabel",
    "xino",
    "uuid",
    "fast_ino",
    "large_read",
    "big_writes",
    "kernel_cache",
    "auto_cache",
    "noforget",
    "clone_fd",
    "max_idle_threads",
    "max_read",
    "nonempty",
];

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// One `-o` item (already split on `,`): its key, and its value after the first `=`.
struct Item<'a> {
    raw: &'a [u8],
    key: String,
    value: Option<&'a [u8]>,
}

impl<'a> Item<'a> {
    fn new(raw: &'a [u8]) -> Item<'a> {
        let (key, value) = match raw.iter().position(|&b| b == b'=') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        Item {
            raw,
            key: text(key),
            value,
        }
    }

    /// The value, which must be there and not be empty.
    fn need(&self) -> Result<&'a [u8], OptionsError> {
        match self.value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(bad(format!("option {}= needs a value", self.key))),
        }
    }

    fn need_text(&self) -> Result<String, OptionsError> {
        self.need().map(text)
    }

    /// `on` or `off`.
    fn on_off(&self) -> Result<bool, OptionsError> {
        match self.value {
            Some(b"on") => Ok(true),
            Some(b"off") => Ok(false),
            _ => Err(bad(format!("option {}= takes on or off", self.key))),
        }
    }
}

/// The command line while it is being read.
pub(super) struct Parser {
    pub(super) cfg: Config,
    lowerdir_given: bool,
    branches: Option<(Syntax, Vec<Branch>)>,
    cow: bool,
}

impl Parser {
    pub(super) fn new(cfg: Config) -> Parser {
        Parser {
            cfg,
            lowerdir_given: false,
            branches: None,
            cow: false,
        }
    }

    fn set_branches(&mut self, syntax: Syntax, v: &[u8]) -> Result<(), OptionsError> {
        if let Some((prev, _)) = &self.branches {
            return Err(bad(format!(
                "{} conflicts with {}: give the branches once",
                syntax.name(),
                prev.name()
            )));
        }
        self.branches = Some((syntax, parse_branches(v, syntax)?));
        Ok(())
    }

    /// Applies one `-o` item (already split on `,`).
    pub(super) fn apply(&mut self, raw: &[u8]) -> Result<(), OptionsError> {
        if raw.is_empty() {
            return Ok(()); // podman passes ",,"
        }
        if let Some(v) = raw.strip_prefix(b"br:") {
            return self.set_branches(Syntax::Aufs, v);
        }
        let item = Item::new(raw);
        if self.branch_option(&item)?
            || mount_option(&mut self.cfg, &item)?
            || layer_option(&mut self.cfg, &item)?
            || policy_option(&mut self.cfg, &item)?
            || id_option(&mut self.cfg, &item)?
            || daemon_option(&mut self.cfg, &item)?
        {
            return Ok(());
        }
        compat_option(&mut self.cfg, &item)
    }

    /// `lowerdir=`, `upperdir=`, `workdir=`, `br=`, `dirs=`, `cow`.
    fn branch_option(&mut self, item: &Item) -> Result<bool, OptionsError> {
        match item.key.as_str() {
            "lowerdir" => {
                let v = item.need()?;
                let dirs = split_lowerdirs(v);
                if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                    return Err(bad(format!(
                        "option lowerdir={} has an empty entry (data-only layers are not supported)",
                        text(v)
                    )));
                }
                self.cfg.lowerdirs = dirs;
                self.lowerdir_given = true;
            }
            "upperdir" => self.cfg.upperdir = Some(unescape(item.need()?)),
            "workdir" => self.cfg.workdir = Some(unescape(item.need()?)),
            "br" => self.set_branches(Syntax::Aufs, item.need()?)?,
            "dirs" => self.set_branches(Syntax::Unionfs("option dirs="), item.need()?)?,
            "cow" => self.cow = true,
            _ => return Ok(false),
        }
        Ok(true)
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
        self.resolve_branches()?;
        let cfg = &mut self.cfg;
        if cfg.fsname.is_empty() {
            cfg.fsname = "stratafs".to_string();
        }
        if cfg.lower_modes.len() != cfg.lowerdirs.len() {
            // `lowerdir=`: the kernel overlayfs's lowers, whiteouts honoured.
            cfg.lower_modes = vec![Mode::RoWh; cfg.lowerdirs.len()];
        }
        if cfg.upperdir.is_none() && !cfg.lower_modes.contains(&Mode::Rw) {
            cfg.read_only = true;
        }
        check_kernel_shape(cfg)?;
        // Permissions are always checked by the kernel: the daemon runs as root and does
        // no checks of its own.
        cfg.default_permissions = true;
        Ok(self.cfg)
    }

    /// The branch list given (if any) → the configuration's branches (`branches.rs`).
    pub(super) fn resolve_branches(&mut self) -> Result<(), OptionsError> {
        let Some((syntax, list)) = self.branches.take() else {
            return Ok(());
        };
        if self.lowerdir_given {
            return Err(bad(format!(
                "option lowerdir= conflicts with {}: give the branches once",
                syntax.name()
            )));
        }
        branches::resolve(&mut self.cfg, syntax, list, self.cow)
    }
}

/// `index=on`, `nfs_export=on` and `metacopy=on` keep their state in the kernel
/// overlayfs's format for one upper (its index, its file handles, its metacopy
/// redirects): refused when a branch below the top is writable.
fn check_kernel_shape(cfg: &Config) -> Result<(), OptionsError> {
    let mut lowers = cfg.lowerdirs.iter().zip(&cfg.lower_modes);
    let Some((rw, _)) = lowers.find(|(_, m)| **m == Mode::Rw) else {
        return Ok(());
    };
    let on = [
        ("index=on", cfg.index),
        ("nfs_export=on", cfg.nfs_export),
        ("metacopy=on", cfg.metacopy),
    ];
    match on.iter().find(|(_, set)| *set) {
        Some((opt, _)) => Err(bad(format!(
            "option {opt} needs the kernel overlayfs's shape: one writable top branch (branch {} below it is rw)",
            rw.display()
        ))),
        None => Ok(()),
    }
}

/// What the mount looks like to its users: the source and type shown, ro/rw, who may use
/// it, and the flags mount(8) knows (dev, suid, exec, the atime rules).
fn mount_option(cfg: &mut Config, item: &Item) -> Result<bool, OptionsError> {
    match item.key.as_str() {
        "fsname" => cfg.fsname = item.need_text()?,
        "subtype" => cfg.subtype = Some(item.need_text()?),
        "ro" => cfg.read_only = true,
        "rw" => cfg.read_only = false,
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
        _ => return Ok(false),
    }
    Ok(true)
}

/// The overlay's own features: what goes on disk (index, nfs_export, redirect_dir,
/// metacopy, userxattr, fsync) and how entries are shown (acl, static_nlink).
fn layer_option(cfg: &mut Config, item: &Item) -> Result<bool, OptionsError> {
    match item.key.as_str() {
        "volatile" => cfg.volatile = true,
        "fsync" => match item.value {
            Some(b"0") => cfg.volatile = true,
            Some(b"1") => cfg.volatile = false,
            _ => return Err(bad("option fsync= takes 0 or 1")),
        },
        "static_nlink" => cfg.static_nlink = true,
        "userxattr" => cfg.userxattr = true,
        "noacl" => cfg.noacl = true,
        "acl" => cfg.noacl = false,
        "index" => cfg.index = item.on_off()?,
        "nfs_export" => cfg.nfs_export = item.on_off()?,
        "metacopy" => cfg.metacopy = item.on_off()?,
        "redirect_dir" => {
            cfg.no_dir_redirects = match item.value {
                Some(b"on") => false,
                Some(b"off" | b"follow" | b"nofollow") => true,
                _ => {
                    return Err(bad(
                        "option redirect_dir= takes on, follow, nofollow or off",
                    ))
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// aufs's policies among several writable branches: `create=`, `cpup=`, `sum`/`nosum`
/// (policy.rs).
fn policy_option(cfg: &mut Config, item: &Item) -> Result<bool, OptionsError> {
    match item.key.as_str() {
        "create" => cfg.create = policy::parse_create(&item.need_text()?)?,
        "cpup" => cfg.cpup = policy::parse_cpup(&item.need_text()?)?,
        "sum" | "nosum" if item.value.is_some() => {
            return Err(bad(format!(
                "option {} takes no value (sum on, nosum off)",
                item.key
            )))
        }
        "sum" => cfg.sum = true,
        "nosum" => cfg.sum = false,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Ownership as shown: id mappings, squashing, and overrides kept in xattrs.
fn id_option(cfg: &mut Config, item: &Item) -> Result<bool, OptionsError> {
    let key = item.key.as_str();
    match key {
        "uidmapping" | "gidmapping" => {
            let v = item.need_text()?;
            let map = crate::ids::IdMap::parse(&v).map_err(|e| bad(format!("option {key}={e}")))?;
            if key == "uidmapping" {
                cfg.ids.uids = map;
            } else {
                cfg.ids.gids = map;
            }
        }
        "squash_to_root" => cfg.ids.squash_root = true,
        "squash_to_uid" | "squash_to_gid" => {
            let v = item.need_text()?;
            let id: u32 = v
                .parse()
                .map_err(|_| bad(format!("option {key}={v}: expected a numeric id")))?;
            if key == "squash_to_uid" {
                cfg.ids.squash_uid = Some(id);
            } else {
                cfg.ids.squash_gid = Some(id);
            }
        }
        "xattr_permissions" => {
            let v = item.need_text()?;
            cfg.xattr_permissions = v
                .parse::<u32>()
                .ok()
                .and_then(crate::types::Level::from_option)
                .ok_or_else(|| bad(format!("option xattr_permissions={v}: expected 0, 1 or 2")))?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The daemon's tuning: threads, cache lifetime, transport, and fuse-overlayfs's 0|1
/// switches.
fn daemon_option(cfg: &mut Config, item: &Item) -> Result<bool, OptionsError> {
    let key = item.key.as_str();
    match key {
        "debug" => cfg.debug = true,
        "noxattrs" | "writeback" | "lower_passthrough" => zero_one_option(cfg, item)?,
        "io_uring" if item.value.is_none() => cfg.io_uring = IoUring::Require,
        "noio_uring" if item.value.is_none() => cfg.io_uring = IoUring::Off,
        "threads" | "max_threads" => {
            let v = item.need_text()?;
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
        "threaded" => match item.value {
            Some(b"0") => cfg.threads = Some(1),
            Some(b"1") => {}
            _ => return Err(bad("option threaded= takes 0 or 1")),
        },
        "timeout" => {
            let v = item.need_text()?;
            let t: f64 = v
                .parse()
                .ok()
                .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| bad(format!("option timeout={v}: expected seconds")))?;
            cfg.timeout = Some(t);
        }
        "udba" => {
            let v = item.need()?;
            cfg.udba = crate::types::Udba::parse(v).ok_or_else(|| {
                bad(format!(
                    "option udba={}: expected none, reval or notify",
                    text(v)
                ))
            })?;
        }
        "udba_max_watches" => {
            let v = item.need_text()?;
            let n: usize = v
                .parse()
                .map_err(|_| bad(format!("option udba_max_watches={v}: expected a number")))?;
            cfg.udba_max_watches = Some(n);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// fuse-overlayfs's `noxattrs`, `writeback` and `lower_passthrough`: `=1` (or no value)
/// or `=0`.
fn zero_one_option(cfg: &mut Config, item: &Item) -> Result<(), OptionsError> {
    let on = match item.value {
        None | Some(b"1") => true,
        Some(b"0") => false,
        _ => return Err(bad(format!("option {}= takes 0 or 1", item.key))),
    };
    match item.key.as_str() {
        "noxattrs" => cfg.noxattrs = on,
        "lower_passthrough" => {
            cfg.lower_passthrough = if on {
                LowerPassthrough::Always
            } else {
                LowerPassthrough::Never
            }
        }
        _ => cfg.no_writeback = !on,
    }
    Ok(())
}

/// The rest: options accepted for compatibility (logged), refused, or unknown.
fn compat_option(cfg: &mut Config, item: &Item) -> Result<(), OptionsError> {
    match item.key.as_str() {
        // No plugins: what fuse-overlayfs does with an empty list too.
        "plugins" if item.value.is_none_or(|v| v.is_empty()) => {}
        "verity" => {
            let v = item.need_text()?;
            if v != "off" {
                return Err(bad(format!(
                    "option verity={v} is not supported (fs-verity digests are not checked)"
                )));
            }
            cfg.ignored.push(text(item.raw));
        }
        k if REFUSED.contains(&k) => {
            return Err(bad(format!(
                "option {k} is not supported (it would change what the mount shows)"
            )))
        }
        k if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => {
            cfg.ignored.push(text(item.raw))
        }
        k => return Err(bad(format!("unknown option {k}"))),
    }
    Ok(())
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
    let mut p = Parser::new(Config {
        default_permissions: true,
        ..Config::default()
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::tests::{cfg, err, p};

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
            (&["-o", "lowerdir=/a", "--log-file="], "--log-file"),
        ];
        for (args, word) in cases {
            let e = err(args);
            assert!(e.contains(word), "{args:?}: {e}");
        }
    }
}

//! Every accepted command-line and `-o` option syntax, turned into one validated [`Config`]
//! (the kernel's `params.c`). Parsing is pure (no filesystem access) so it is unit-tested
//! in full; [`Config::validate`] then checks the paths once, at startup.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Mount(Box<Config>),
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
    pub mountpoint: PathBuf,
    /// Shown as the source in /proc/mounts: the source argument, `fsname=`, or "stratafs".
    pub fsname: String,
    pub subtype: Option<String>,
    /// `ro`, or no upperdir: every write gets EROFS.
    pub read_only: bool,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `-o debug`: log every request.
    pub debug: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub auto_unmount: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// `threads=` / `max_threads=`; `None` means one per CPU.
    pub threads: Option<usize>,
    /// `volatile`: never fsync (throw-away uppers).
    pub volatile: bool,
    /// `userxattr`: use `user.overlay.*` instead of `trusted.overlay.*` markers.
    pub userxattr: bool,
    /// `timeout=`: entry/attr cache lifetime in seconds, if given.
    pub timeout: Option<f64>,
    pub log_file: Option<PathBuf>,
    /// Options accepted but without effect, kept for one log line at startup.
    pub ignored: Vec<String>,
    /// `metacopy=on`: metadata-only copy-up, in the kernel's format (off by default, as in
    /// the kernel; a kernel mount of such an upper needs `metacopy=on` too).
    pub metacopy: bool,
    /// uid/gid mapping and squashing (`uidmapping=`, `gidmapping=`, `squash_to_*`).
    pub ids: crate::ids::Ids,
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

/// Splits an `-o` string on unescaped `,` (a `\,` stays in the value, unescaped later).
pub fn split_options(s: &[u8]) -> Vec<Vec<u8>> {
    split_escaped(s, b',', false)
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

impl Config {
    /// Applies one `-o` item (already split on `,`).
    fn apply(&mut self, item: &[u8]) -> Result<(), OptionsError> {
        if item.is_empty() {
            return Ok(()); // podman passes ",,"
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
        match key.as_str() {
            "lowerdir" => {
                let v = need(value)?;
                let dirs = split_lowerdirs(&v);
                if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                    return Err(bad("option lowerdir= has an empty entry"));
                }
                self.lowerdirs = dirs;
            }
            "upperdir" => self.upperdir = Some(unescape(&need(value)?)),
            "workdir" => self.workdir = Some(unescape(&need(value)?)),
            "fsname" => self.fsname = String::from_utf8_lossy(&need(value)?).into_owned(),
            "subtype" => self.subtype = Some(String::from_utf8_lossy(&need(value)?).into_owned()),
            "ro" => self.read_only = true,
            "rw" => self.read_only = false,
            "debug" => self.debug = true,
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "default_permissions" => self.default_permissions = true,
            "auto_unmount" => self.auto_unmount = true,
            "nodev" => self.nodev = true,
            "nosuid" => self.nosuid = true,
            "noexec" => self.noexec = true,
            "noatime" => self.noatime = true,
            "volatile" => self.volatile = true,
            "userxattr" => self.userxattr = true,
            "metacopy" => {
                self.metacopy = match value {
                    Some(b"on") => true,
                    Some(b"off") => false,
                    _ => return Err(bad("option metacopy= takes on or off")),
                }
            }
            "threads" | "max_threads" => {
                let v = String::from_utf8_lossy(&need(value)?).into_owned();
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "option {key}={v}: expected a number from 1 to 1024"
                        ))
                    })?;
                self.threads = Some(n);
            }
            "timeout" => {
                let v = String::from_utf8_lossy(&need(value)?).into_owned();
                let t: f64 = v
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| bad(format!("option timeout={v}: expected seconds")))?;
                self.timeout = Some(t);
            }
            // Accepted for compatibility with mount(8), the kernel overlayfs and podman; they
            // do not change what the mount shows.
            "dev"
            | "suid"
            | "exec"
            | "atime"
            | "relatime"
            | "strictatime"
            | "nodiratime"
            | "async"
            | "sync"
            | "dirsync"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail"
            | "defaults"
            | "context"
            | "fscontext"
            | "defcontext"
            | "rootcontext"
            | "index"
            | "nfs_export"
            | "xino"
            | "redirect_dir"
            | "uuid"
            | "fsync"
            | "noacl"
            | "x-systemd.automount" => {
                self.ignored
                    .push(String::from_utf8_lossy(item).into_owned());
            }
            k if k.starts_with("x-") || k.starts_with("comment=") => {
                self.ignored.push(k.to_string());
            }
            _ => return Err(bad(format!("unknown option {key}"))),
        }
        Ok(())
    }

    /// Checks the paths: each branch exists and is a directory, workdir comes with
    /// upperdir, the mountpoint is a directory. One line per error, naming option and path.
    pub fn validate(&self) -> Result<(), OptionsError> {
        fn is_dir(opt: &str, p: &Path) -> Result<(), OptionsError> {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(bad(format!("{opt} {}: not a directory", p.display()))),
                Err(e) => Err(bad(format!("{opt} {}: {e}", p.display()))),
            }
        }
        if self.lowerdirs.is_empty() {
            return Err(bad("option lowerdir= is missing or empty"));
        }
        for l in &self.lowerdirs {
            is_dir("lowerdir", l)?;
        }
        match (&self.upperdir, &self.workdir) {
            (Some(u), Some(w)) => {
                is_dir("upperdir", u)?;
                is_dir("workdir", w)?;
                let du = std::fs::metadata(u).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
                let dw = std::fs::metadata(w).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
                if let (Ok(a), Ok(b)) = (du, dw) {
                    if a != b {
                        return Err(bad(format!(
                            "workdir {}: not on the same filesystem as upperdir {}",
                            w.display(),
                            u.display()
                        )));
                    }
                }
            }
            (Some(u), None) => {
                return Err(bad(format!(
                    "upperdir {} given without workdir",
                    u.display()
                )))
            }
            (None, Some(w)) => {
                return Err(bad(format!(
                    "workdir {} given without upperdir",
                    w.display()
                )))
            }
            (None, None) => {}
        }
        is_dir("mountpoint", &self.mountpoint)?;
        Ok(())
    }

    /// True when writes are possible at all.
    pub fn writable(&self) -> bool {
        self.upperdir.is_some() && !self.read_only
    }
}

/// Parses `stratafs [SOURCE] MOUNTPOINT [-o OPTS]… [-f] [-d]`.
pub fn parse_args<I, S>(args: I) -> Result<Command, OptionsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cfg = Config {
        default_permissions: true,
        ..Config::default()
    };
    let mut positional: Vec<OsString> = Vec::new();
    let mut it = args.into_iter().skip(1).map(|a| a.as_ref().to_os_string());
    while let Some(arg) = it.next() {
        let b = arg.as_bytes();
        match b {
            b"-h" | b"--help" => return Ok(Command::Help),
            b"-V" | b"--version" => return Ok(Command::Version),
            b"-f" | b"--foreground" => cfg.foreground = true,
            b"-d" | b"--debug" => {
                cfg.debug = true;
                cfg.foreground = true;
            }
            b"-o" => {
                let v = it.next().ok_or_else(|| bad("option -o needs a value"))?;
                for item in split_options(v.as_bytes()) {
                    cfg.apply(&item)?;
                }
            }
            _ if b.starts_with(b"-o") => {
                for item in split_options(&b[2..]) {
                    cfg.apply(&item)?;
                }
            }
            _ if b.starts_with(b"--log-file=") => {
                cfg.log_file = Some(PathBuf::from(OsStr::from_bytes(&b[11..])));
            }
            _ if b.starts_with(b"-") && b.len() > 1 => {
                return Err(bad(format!("unknown argument {}", arg.to_string_lossy())))
            }
            _ => positional.push(arg),
        }
    }
    match positional.len() {
        1 => cfg.mountpoint = PathBuf::from(positional.remove(0)),
        2 => {
            let source = positional.remove(0);
            if cfg.fsname.is_empty() {
                cfg.fsname = source.to_string_lossy().into_owned();
            }
            cfg.mountpoint = PathBuf::from(positional.remove(0));
        }
        0 => return Err(bad(
            "missing mountpoint (usage: stratafs -o lowerdir=…[,upperdir=…,workdir=…] MOUNTPOINT)",
        )),
        _ => {
            return Err(bad(
                "too many arguments (usage: stratafs [SOURCE] MOUNTPOINT -o OPTIONS)",
            ))
        }
    }
    if cfg.fsname.is_empty() {
        cfg.fsname = "stratafs".to_string();
    }
    if cfg.upperdir.is_none() {
        cfg.read_only = true;
    }
    Ok(Command::Mount(Box::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["stratafs"];
        v.extend_from_slice(args);
        match parse_args(v).expect("parses") {
            Command::Mount(c) => *c,
            other => panic!("expected a mount, got {other:?}"),
        }
    }

    #[test]
    fn kernel_syntax_with_escapes() {
        let c = cfg(&[
            "-o",
            r"lowerdir=/a\:b:/c\,d:/e,upperdir=/u,workdir=/w",
            "/mnt",
        ]);
        assert_eq!(
            c.lowerdirs,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c,d"),
                PathBuf::from("/e")
            ]
        );
        assert_eq!(c.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(c.workdir, Some(PathBuf::from("/w")));
        assert_eq!(c.mountpoint, PathBuf::from("/mnt"));
        assert!(!c.read_only);
        assert_eq!(c.fsname, "stratafs");
    }

    #[test]
    fn no_upper_means_read_only() {
        let c = cfg(&["-o", "lowerdir=/a", "/mnt"]);
        assert!(c.read_only);
    }

    #[test]
    fn source_becomes_fsname_and_empty_items_are_skipped() {
        let c = cfg(&["mysrc", "/mnt", "-o", "lowerdir=/a,,volatile,context=x"]);
        assert_eq!(c.fsname, "mysrc");
        assert!(c.volatile);
        assert_eq!(c.ignored, vec!["context=x".to_string()]);
    }

    #[test]
    fn metacopy_is_off_unless_asked() {
        assert!(!cfg(&["-o", "lowerdir=/a", "/m"]).metacopy);
        assert!(cfg(&["-o", "lowerdir=/a,metacopy=on", "/m"]).metacopy);
        assert!(parse_args(["stratafs", "-o", "lowerdir=/a,metacopy=yes", "/m"]).is_err());
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse_args(["stratafs", "-o", "lowerdir=/a:,upperdir=/u", "/m"]).unwrap_err();
        assert!(e.0.contains("lowerdir"), "{e}");
        let e = parse_args(["stratafs", "-o", "bogus", "/m"]).unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = parse_args(["stratafs", "-o", "threads=0,lowerdir=/a", "/m"]).unwrap_err();
        assert!(e.0.contains("threads"), "{e}");
    }
}

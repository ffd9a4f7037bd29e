//! Ownership and mode overrides kept in an xattr (fuse-overlayfs's `xattr_permissions=`).
//!
//! With `xattr_permissions=1` the override lives in `security.fuseoverlayfs.override_stat`,
//! with `xattr_permissions=2` in `user.containers.override_stat`, the xattr that
//! containers-storage's `force_mask` writes on every regular file and directory it unpacks
//! (the real mode is then the mask, the real owner the storage's). fuse-overlayfs 1.10 to
//! 1.13 wrote `user.fuseoverlayfs.override_stat` for level 2; it is read as a fallback.
//!
//! The value, as containers-storage's `pkg/idtools` formats and parses it:
//! `UID:GID:MODE[:TYPE]`, UID and GID decimal, MODE octal (permission bits with
//! setuid/setgid/sticky; older writers use `0%o`, newer `%04o`, fuse-overlayfs 1.10 writes the
//! whole st_mode, so any type bits in MODE are ignored), TYPE one of `file`, `dir`, `symlink`,
//! `pipe`, `socket`, `block-MAJOR-MINOR`, `char-MAJOR-MINOR` (further `-` parts ignored). A
//! TYPE only changes what is shown for a real regular file (force_mask stores devices and
//! pipes as regular files); elsewhere the real type stands.
//!
//! stratafs writes the three-field form, which every reader accepts, and keeps the TYPE
//! field when the value it replaces had one.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use crate::sys::{xattr, Stat};

pub use crate::types::Level;

pub const PRIVILEGED_XATTR: &CStr = c"security.fuseoverlayfs.override_stat";
pub const CONTAINERS_XATTR: &CStr = c"user.containers.override_stat";
/// What fuse-overlayfs 1.10–1.13 wrote for `xattr_permissions=2`.
pub const LEGACY_XATTR: &CStr = c"user.fuseoverlayfs.override_stat";

impl Level {
    /// `xattr_permissions=N` → the level (0: none).
    pub fn from_option(n: u32) -> Option<Option<Level>> {
        match n {
            0 => Some(None),
            1 => Some(Some(Level::Privileged)),
            2 => Some(Some(Level::Containers)),
            _ => None,
        }
    }

    /// The name written.
    pub fn xattr(self) -> &'static CStr {
        match self {
            Level::Privileged => PRIVILEGED_XATTR,
            Level::Containers => CONTAINERS_XATTR,
        }
    }

    /// The names read, preferred first.
    pub fn read_names(self) -> &'static [&'static CStr] {
        match self {
            Level::Privileged => &[PRIVILEGED_XATTR],
            Level::Containers => &[CONTAINERS_XATTR, LEGACY_XATTR],
        }
    }

    /// Is `name` (as stored) an override name of this level? Such names are hidden and
    /// cannot be set or removed through the mount.
    pub fn is_override_name(self, name: &[u8]) -> bool {
        self.read_names().iter().any(|n| n.to_bytes() == name)
    }
}

/// The file type carried in the fourth field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    File,
    Dir,
    Symlink,
    Pipe,
    Socket,
    Block(u32, u32),
    Char(u32, u32),
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        let dev = |s: &str| -> Option<(u32, u32)> {
            let mut parts = s.split('-').skip(1);
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        };
        Some(if s.starts_with("file") {
            Type::File
        } else if s.starts_with("dir") {
            Type::Dir
        } else if s.starts_with("symlink") {
            Type::Symlink
        } else if s.starts_with("pipe") {
            Type::Pipe
        } else if s.starts_with("socket") {
            Type::Socket
        } else if s.starts_with("block") {
            let (a, b) = dev(s)?;
            Type::Block(a, b)
        } else if s.starts_with("char") {
            let (a, b) = dev(s)?;
            Type::Char(a, b)
        } else {
            return None;
        })
    }

    fn format(self) -> String {
        match self {
            Type::File => "file".into(),
            Type::Dir => "dir".into(),
            Type::Symlink => "symlink".into(),
            Type::Pipe => "pipe".into(),
            Type::Socket => "socket".into(),
            Type::Block(a, b) => format!("block-{a}-{b}"),
            Type::Char(a, b) => format!("char-{a}-{b}"),
        }
    }
}

/// One override value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub kind: Option<Type>,
}

impl Override {
    /// Parses `UID:GID:MODE[:TYPE]`; `None` if malformed (then the real stat is shown).
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?;
        let s = s.trim_end_matches('\0');
        let mut parts = s.split(':');
        let uid = parts.next()?.parse::<u32>().ok()?;
        let gid = parts.next()?.parse::<u32>().ok()?;
        let mode = u32::from_str_radix(parts.next()?, 8).ok()? & 0o7777;
        let kind = match parts.next() {
            Some(t) => Some(Type::parse(t)?),
            None => None,
        };
        Some(Override {
            uid,
            gid,
            mode,
            kind,
        })
    }

    /// `UID:GID:0MODE`, plus `:TYPE` when it carries one.
    pub fn format(&self) -> Vec<u8> {
        let mut s = format!("{}:{}:0{:o}", self.uid, self.gid, self.mode & 0o7777);
        if let Some(k) = self.kind {
            s.push(':');
            s.push_str(&k.format());
        }
        s.into_bytes()
    }

    /// The override a real entry implies when it has none (its own owner and mode).
    pub fn from_stat(st: &Stat) -> Override {
        Override {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: None,
        }
    }

    /// The type a real regular file carrying this override shows as, when it is not a
    /// regular file (a device, pipe or socket stored as a file).
    pub fn special_kind(&self) -> Option<crate::types::Kind> {
        use crate::types::Kind;
        match self.kind? {
            Type::Pipe => Some(Kind::Fifo),
            Type::Socket => Some(Kind::Socket),
            Type::Block(..) => Some(Kind::BlockDev),
            Type::Char(..) => Some(Kind::CharDev),
            Type::File | Type::Dir | Type::Symlink => None,
        }
    }

    /// Shows the override in `st`.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let mut fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFREG {
            let (f, rdev) = match self.kind {
                Some(Type::Pipe) => (libc::S_IFIFO, 0),
                Some(Type::Socket) => (libc::S_IFSOCK, 0),
                Some(Type::Block(a, b)) => (libc::S_IFBLK, libc::makedev(a, b)),
                Some(Type::Char(a, b)) => (libc::S_IFCHR, libc::makedev(a, b)),
                _ => (libc::S_IFREG, st.st_rdev),
            };
            fmt = f;
            st.st_rdev = rdev;
        }
        st.st_mode = fmt | (self.mode & 0o7777);
    }
}

/// fuse-overlayfs honours the overrides of a layer whose root directory carries one, with
/// or without `xattr_permissions`: the level such a root implies.
pub fn detect(root: BorrowedFd<'_>) -> Option<Level> {
    let has = |n: &CStr| matches!(xattr::get(root, c"", n), Ok(Some(_)));
    if has(PRIVILEGED_XATTR) {
        Some(Level::Privileged)
    } else if has(CONTAINERS_XATTR) || has(LEGACY_XATTR) {
        Some(Level::Containers)
    } else {
        None
    }
}

/// The override of `dir/name` at `level`, if it has a well-formed one.
pub fn read(level: Level, dir: BorrowedFd<'_>, name: &CStr) -> Option<Override> {
    level
        .read_names()
        .iter()
        .find_map(|n| xattr::get(dir, name, n).ok().flatten())
        .and_then(|v| Override::parse(&v))
}

/// Writes `ov` on `dir/name` at `level`.
pub fn write(level: Level, dir: BorrowedFd<'_>, name: &CStr, ov: &Override) -> std::io::Result<()> {
    xattr::set(dir, name, level.xattr(), &ov.format(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32) -> Stat {
        let mut s = crate::sys::zeroed_stat();
        s.st_mode = mode;
        s.st_uid = 1;
        s.st_gid = 2;
        s
    }

    #[test]
    fn parses_every_writer_format() {
        // containers-storage before 1.56 (force_mask): "%d:%d:0%o".
        let o = Override::parse(b"1000:1001:0640").unwrap();
        assert_eq!((o.uid, o.gid, o.mode, o.kind), (1000, 1001, 0o640, None));
        // containers-storage now: "%d:%d:%04o:TYPE".
        let o = Override::parse(b"0:0:4755:file").unwrap();
        assert_eq!((o.mode, o.kind), (0o4755, Some(Type::File)));
        let o = Override::parse(b"0:5:0620:char-4-64").unwrap();
        assert_eq!(o.kind, Some(Type::Char(4, 64)));
        let o = Override::parse(b"0:0:0660:block-8-1-future").unwrap();
        assert_eq!(o.kind, Some(Type::Block(8, 1)));
        // fuse-overlayfs 1.10 writes the whole st_mode: type bits are dropped.
        let o = Override::parse(b"9:9:100755").unwrap();
        assert_eq!(o.mode, 0o755);
        assert_eq!(Override::parse(b"7:8:40700").unwrap().mode, 0o700);
    }

    #[test]
    fn refuses_malformed_values() {
        for v in [
            &b""[..],
            b"1:2",
            b"x:2:0755",
            b"1:-2:0755",
            b"1:2:0789",
            b"1:2:0755:frob",
            b"1:2:0755:char-1",
            b"1:2:0755:char-a-b",
            b"\xff:2:0755",
        ] {
            assert_eq!(Override::parse(v), None, "{v:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for v in [
            &b"1000:1001:0640"[..],
            b"0:0:04755",
            b"3:4:0620:char-4-64",
            b"0:0:0755:dir",
        ] {
            let o = Override::parse(v).unwrap();
            assert_eq!(Override::parse(&o.format()).unwrap(), o);
        }
        let o = Override {
            uid: 5,
            gid: 6,
            mode: 0o2750,
            kind: None,
        };
        assert_eq!(o.format(), b"5:6:02750");
        assert_eq!(
            Override {
                kind: Some(Type::Pipe),
                ..o
            }
            .format(),
            b"5:6:02750:pipe"
        );
    }

    #[test]
    fn applies_ids_mode_and_device_types() {
        let mut s = st(libc::S_IFREG | 0o755);
        Override::parse(b"10:20:04711").unwrap().apply(&mut s);
        assert_eq!(
            (s.st_uid, s.st_gid, s.st_mode),
            (10, 20, libc::S_IFREG | 0o4711)
        );
        // A device stored as a regular file shows as the device.
        let mut s = st(libc::S_IFREG | 0o700);
        Override::parse(b"0:0:0666:char-1-3").unwrap().apply(&mut s);
        assert_eq!(s.st_mode, libc::S_IFCHR | 0o666);
        assert_eq!(s.st_rdev, libc::makedev(1, 3));
        // A type that contradicts a real directory is ignored.
        let mut s = st(libc::S_IFDIR | 0o700);
        Override::parse(b"0:0:0755:file").unwrap().apply(&mut s);
        assert_eq!(s.st_mode, libc::S_IFDIR | 0o755);
        assert_eq!(Override::from_stat(&s).mode, 0o755);
    }

    #[test]
    fn levels_and_names() {
        assert_eq!(Level::from_option(0), Some(None));
        assert_eq!(Level::from_option(2), Some(Some(Level::Containers)));
        assert_eq!(Level::from_option(3), None);
        assert!(Level::Containers.is_override_name(b"user.containers.override_stat"));
        assert!(Level::Containers.is_override_name(b"user.fuseoverlayfs.override_stat"));
        assert!(!Level::Containers.is_override_name(b"security.fuseoverlayfs.override_stat"));
        assert!(Level::Privileged.is_override_name(b"security.fuseoverlayfs.override_stat"));
    }
}

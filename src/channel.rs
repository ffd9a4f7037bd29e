//! The control channel's wire format and its client side (`control.rs` is the daemon's
//! server): the requests and replies, the mounts listed in /proc/self/mountinfo, the socket
//! address of a mount's daemon, and who holds a branch's in-use lock. Below the union's
//! core: `layers.rs` names the holder of a busy upper, the CLI and the layer tools talk to
//! daemons, and none of it knows the filesystem it serves. The format is documented in
//! `control.rs`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::sys;

/// Protocol version written in every request.
const VERSION: &str = "1";

/// Longest request line the daemon reads.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// One request to a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `ro` / `rw`: switch the mount read-only (flushing the upper first) or writable.
    SetReadOnly(bool),
    /// `branch OP…`: aufs branch operations (`branch.rs`), all or none.
    Branch(Vec<String>),
    /// `check OPT…`: a remount's mount-time options (`lowerdir=`, `volatile`, … as mount(8)
    /// takes them from fstab) must all describe the running mount; changes nothing.
    Check(Vec<String>),
}

impl Request {
    fn words(&self) -> Vec<Vec<u8>> {
        match self {
            Request::SetReadOnly(true) => vec![b"ro".to_vec()],
            Request::SetReadOnly(false) => vec![b"rw".to_vec()],
            Request::Check(opts) => std::iter::once(b"check".to_vec())
                .chain(opts.iter().map(|o| o.as_bytes().to_vec()))
                .collect(),
            Request::Branch(ops) => std::iter::once(b"branch".to_vec())
                .chain(ops.iter().map(|o| o.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// The request line (without the newline).
    pub fn encode(&self) -> String {
        let mut s = format!("stratafs {VERSION}");
        for w in self.words() {
            s.push(' ');
            s.push_str(&escape(&w));
        }
        s
    }

    /// Parses a request line; the error is the reply to send.
    pub fn decode(line: &str) -> std::result::Result<Request, Error> {
        let mut words = line.split(' ');
        if words.next() != Some("stratafs") {
            return Err(Error::new(libc::EPROTO, "not a stratafs control request"));
        }
        if words.next() != Some(VERSION) {
            return Err(Error::new(
                libc::EPROTO,
                "control protocol version mismatch (daemon and command differ)",
            ));
        }
        let args: Vec<Vec<u8>> = words.map(unescape).collect();
        match args.iter().map(|a| a.as_slice()).collect::<Vec<_>>()[..] {
            [b"ro"] => Ok(Request::SetReadOnly(true)),
            [b"rw"] => Ok(Request::SetReadOnly(false)),
            [b"check", ref opts @ ..] => Ok(Request::Check(
                opts.iter()
                    .map(|o| String::from_utf8_lossy(o).into_owned())
                    .collect(),
            )),
            [b"branch", ref ops @ ..] => Ok(Request::Branch(
                ops.iter()
                    .map(|o| String::from_utf8_lossy(o).into_owned())
                    .collect(),
            )),
            _ => Err(Error::new(
                libc::EINVAL,
                format!("unknown control request: {line}"),
            )),
        }
    }
}

/// A daemon's answer: the result lines, then success or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<String>,
    pub result: std::result::Result<(), (i32, String)>,
}

impl Reply {
    pub fn ok(lines: Vec<String>) -> Reply {
        Reply {
            lines,
            result: Ok(()),
        }
    }

    pub fn err(e: &Error) -> Reply {
        Reply {
            lines: Vec::new(),
            result: Err((e.errno, e.to_string())),
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str("line ");
            s.push_str(&escape(l.as_bytes()));
            s.push('\n');
        }
        match &self.result {
            Ok(()) => s.push_str("ok\n"),
            Err((errno, msg)) => s.push_str(&format!("err {errno} {}\n", escape(msg.as_bytes()))),
        }
        s
    }

    pub fn decode(text: &str) -> std::result::Result<Reply, String> {
        let mut lines = Vec::new();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("line ") {
                lines.push(String::from_utf8_lossy(&unescape(t)).into_owned());
            } else if l == "ok" {
                return Ok(Reply::ok(lines));
            } else if let Some(rest) = l.strip_prefix("err ") {
                let (n, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                let errno = n.parse().unwrap_or(libc::EIO);
                return Ok(Reply {
                    lines,
                    result: Err((errno, String::from_utf8_lossy(&unescape(msg)).into_owned())),
                });
            } else {
                return Err(format!("unexpected reply line: {l}"));
            }
        }
        Err("the daemon closed the connection without a reply".into())
    }
}

fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c == b'%' || c <= b' ' || c >= 0x7f {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push(c as char);
        }
    }
    s
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `MAJ:MIN` of the superblock.
    pub dev: String,
    pub point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,relatime`).
    pub mount_opts: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Superblock options (`rw,user_id=0,group_id=0,default_permissions`).
    pub super_opts: Vec<String>,
}

impl MountEntry {
    pub fn parse(line: &str) -> Option<MountEntry> {
        let f: Vec<&str> = line.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        let opts = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        Some(MountEntry {
            dev: f.get(2)?.to_string(),
            point: crate::options::unescape_mountinfo(f.get(4)?),
            mount_opts: opts(f.get(5)?),
            fstype: f.get(dash + 1)?.to_string(),
            source: f.get(dash + 2)?.to_string(),
            super_opts: opts(f.get(dash + 3)?),
        })
    }

    /// Every mount, in mount order.
    pub fn all() -> Vec<MountEntry> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(MountEntry::parse)
            .collect()
    }

    /// The FUSE mount visible at `point` (the last one mounted there).
    pub fn fuse_at(point: &Path) -> Option<MountEntry> {
        MountEntry::all()
            .into_iter()
            .rev()
            .find(|m| m.point == point)
            .filter(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
    }

    /// The value of superblock option `key=`.
    pub fn super_value(&self, key: &str) -> Option<&str> {
        self.super_opts
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

pub(crate) fn address(dev: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("stratafs/{dev}").as_bytes())
}

/// A connection to the daemon of a mount, with the server's credentials checked.
pub struct Client {
    stream: UnixStream,
    pub server_pid: i32,
}

impl Client {
    /// Connects to the daemon serving `m`. `Err` is one line for the user.
    pub fn connect(m: &MountEntry) -> std::result::Result<Client, String> {
        let addr = address(&m.dev).map_err(|e| e.to_string())?;
        let stream = UnixStream::connect_addr(&addr).map_err(|e| {
            format!(
                "{}: no stratafs daemon answers for this mount ({}: {e})",
                m.point.display(),
                m.fstype
            )
        })?;
        let c = sys::peer_cred(stream.as_fd()).map_err(|e| e.to_string())?;
        let me = sys::geteuid();
        let owner = m.super_value("user_id").and_then(|v| v.parse::<u32>().ok());
        if c.uid != 0 && c.uid != me && Some(c.uid) != owner {
            return Err(format!(
                "{}: the control socket is held by uid {} (pid {}), not by the mount's owner",
                m.point.display(),
                c.uid,
                c.pid
            ));
        }
        Ok(Client {
            stream,
            server_pid: c.pid,
        })
    }

    /// Sends one request and reads the reply.
    pub fn call(mut self, req: &Request) -> std::result::Result<Reply, String> {
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(60)));
        self.stream
            .write_all(format!("{}\n", req.encode()).as_bytes())
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut text = String::new();
        self.stream
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the reply: {e}"))?;
        Reply::decode(&text)
    }
}

/// Who holds the in-use lock on the directory `(dev, ino)`, for the refusal message: "the
/// stratafs mount on M (pid P)" when a daemon's control socket answers from that pid,
/// else "process P", else "another mount".
/// Who holds the in-use lock on the directory `(dev, ino)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No flock on it is listed (it was just released).
    Nobody,
    /// A stratafs daemon still serving the mount at `point`.
    Mount { pid: i32, point: std::path::PathBuf },
    /// A process with no live mount: a daemon whose mount is gone (unmounted, exiting), a
    /// layer tool, or a daemon whose control channel did not start.
    Process(i32),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Nobody => write!(f, "another mount"),
            Holder::Mount { pid, point } => {
                write!(f, "the stratafs mount on {} (pid {pid})", point.display())
            }
            Holder::Process(pid) => write!(f, "process {pid}"),
        }
    }
}

/// Finds the holder of the in-use lock on the directory `(dev, ino)`: the pid from
/// /proc/locks, then the mount whose control channel that pid serves.
pub fn holder_of(dev: u64, ino: u64) -> Holder {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let pid = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4).and_then(|p| p.parse::<i32>().ok()))
            .flatten()
    });
    let Some(pid) = pid else {
        return Holder::Nobody;
    };
    for m in MountEntry::all()
        .iter()
        .filter(|m| m.fstype.starts_with("fuse"))
    {
        if let Ok(c) = Client::connect(m) {
            if c.server_pid == pid {
                return Holder::Mount {
                    pid,
                    point: m.point.clone(),
                };
            }
        }
    }
    Holder::Process(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::SetReadOnly(true),
            Request::SetReadOnly(false),
            Request::Check(vec!["lowerdir=/a b:/c".into(), "volatile".into()]),
            Request::Check(vec![]),
            Request::Branch(vec!["add:1:/a b=rr".into(), "del!:/c".into()]),
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        assert_eq!(Request::SetReadOnly(true).encode(), "stratafs 1 ro");
        assert!(Request::decode("stratafs 2 ro")
            .unwrap_err()
            .is(libc::EPROTO));
        assert!(Request::decode("stratafs 1 fly")
            .unwrap_err()
            .is(libc::EINVAL));
        let r = Reply::ok(vec!["a b%\nc".into(), "two".into()]);
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let e = Reply::err(&Error::new(libc::EPERM, "no way"));
        let d = Reply::decode(&e.encode()).unwrap();
        assert_eq!(d.result.unwrap_err().0, libc::EPERM);
        assert!(Reply::decode("line x\n").is_err());
        assert_eq!(unescape(&escape(b"/a b/\xff%")), b"/a b/\xff%");
    }

    #[test]
    fn mountinfo_lines() {
        let m = MountEntry::parse(
            "48 27 0:44 / /tmp/a\\040b rw,nodev,relatime shared:1 - fuse.stratafs src rw,user_id=0,group_id=0,default_permissions",
        )
        .unwrap();
        assert_eq!(m.dev, "0:44");
        assert_eq!(m.point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.mount_opts, ["rw", "nodev", "relatime"]);
        assert_eq!(m.fstype, "fuse.stratafs");
        assert_eq!(m.super_value("user_id"), Some("0"));
    }
}

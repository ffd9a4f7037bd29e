//! The control channel between the `stratafs` command and the daemon serving a mount: one
//! request, one reply, over a unix stream socket: `remount,ro|rw`, and aufs-style branch
//! operations (`add:`, `del:`, `mod:`, …: `branch.rs`, `stack.rs`) from `remount` or
//! `stratafs branch`.
//!
//! **Address.** An abstract unix socket named `stratafs/MAJ:MIN`, the device number of the
//! mount's FUSE superblock (field 3 of /proc/self/mountinfo; the `st_dev` of the mount root).
//! Abstract: nothing on disk to go stale when a daemon is SIGKILLed (the name dies with the
//! socket), no per-user runtime directory to agree on, and reachable from every mount
//! namespace of the network namespace (podman's rootless mount program runs in its own user
//! and mount namespaces). The device number is unique while the superblock lives, and both
//! sides find it without touching the FUSE mount (the CLI reads mountinfo; the daemon reads
//! it right after mounting, before it serves).
//!
//! **Who may talk.** Anyone may connect to an abstract socket, so both ends check
//! `SO_PEERCRED`: the daemon serves only uid 0 and its own euid (the mount's owner), and
//! answers anyone else EPERM; the client talks only to a server running as uid 0, as
//! itself, or as the mount's `user_id=`, so another user cannot squat a name and answer.
//!
//! **Wire format.** Text, one line each way. Request: `stratafs 1 VERB ARG…`; reply:
//! zero or more `line TEXT` lines (one per result, printed by the CLI), then `ok` or
//! `err ERRNO TEXT`. Words are separated by one space; in ARGs and TEXT the bytes
//! `%`, space, control characters and bytes ≥ 0x7f are written `%XX`, so paths travel
//! unchanged. An unknown verb gets `err EINVAL`, so an old daemon answers a newer CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::options::Config;
use crate::sys;

use crate::channel::{address, MAX_LINE};
pub use crate::channel::{holder_of, Client, Holder, MountEntry, Reply, Request};

/// The daemon's end: listens on the address of the mount `entry` (ours, as found in
/// mountinfo) and answers requests on its own thread, one connection at a time (requests
/// are rare and short).
pub fn start_server(
    fs: Arc<UnionFs>,
    cfg: &Config,
    entry: &MountEntry,
    inval: crate::dispatch::Invalidator,
) -> Result<()> {
    let mut cfg = cfg.clone();
    let addr = address(&entry.dev).map_err(|e| Error::io(e, "control socket address"))?;
    let what = format!("control socket @stratafs/{}", entry.dev);
    // The name is the superblock's device number, which the kernel gives to the next FUSE
    // mount as soon as the last one's is gone: the daemon of that last mount may still hold
    // the name for a moment while it exits. Then the name is taken over once it is free.
    let first = match UnixListener::bind_addr(&addr) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => return Err(Error::io(e, what)),
    };
    let owner = sys::geteuid();
    if first.is_some() {
        info!("{what} (owner uid {owner})");
    }
    let env = Env {
        inval: Some(inval),
        dev: parse_dev(&entry.dev),
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let listener = match first {
                Some(l) => l,
                None => {
                    let deadline = std::time::Instant::now() + TAKE_OVER;
                    loop {
                        match UnixListener::bind_addr(&addr) {
                            Ok(l) => {
                                info!("{what} (owner uid {owner}, after its last holder left)");
                                break l;
                            }
                            Err(e) if std::time::Instant::now() >= deadline => {
                                warn!("no control channel (remount will not work): {what}: {e}");
                                return;
                            }
                            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                        }
                    }
                }
            };
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => serve_one(&fs, &mut cfg, &env, s, owner),
                    Err(e) => warn!("control: accept: {e}"),
                }
            }
        })
        .map_err(|e| Error::io(e, "control thread"))?;
    Ok(())
}

/// How long a new mount waits for an exiting daemon to free its control socket's name.
const TAKE_OVER: std::time::Duration = std::time::Duration::from_secs(10);

/// What a request may need of the daemon beyond the filesystem.
pub struct Env {
    /// Drops kernel caches after a branch change (none without a session: tests).
    pub inval: Option<crate::dispatch::Invalidator>,
    /// The mount's device number (its superblock's, as `st_dev` shows it).
    pub dev: Option<u64>,
}

/// `MAJ:MIN` → a `dev_t` (glibc's encoding).
fn parse_dev(s: &str) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    Some(sys::makedev(a.parse().ok()?, b.parse().ok()?))
}

fn serve_one(fs: &UnionFs, cfg: &mut Config, env: &Env, mut s: UnixStream, owner: u32) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    // Read the request first, whoever sent it: closing with it unread would reset the
    // connection before the client reads our answer.
    let mut line = String::new();
    let read = BufReader::new(&s)
        .take(MAX_LINE as u64)
        .read_line(&mut line);
    let reply = match (read, sys::peer_cred(s.as_fd())) {
        (Ok(0), _) => return, // a probe (see `holder_of`): nothing asked
        (Err(e), _) => Reply::err(&Error::io(e, "control: reading the request")),
        (_, Err(e)) => Reply::err(&Error::io(e, "control: peer credentials")),
        (Ok(_), Ok(c)) if c.uid == 0 || c.uid == owner => {
            match Request::decode(line.trim_end_matches('\n')) {
                Ok(req) => {
                    info!("control: uid {} pid {}: {req:?}", c.uid, c.pid);
                    handle(fs, cfg, &req, env)
                }
                Err(e) => Reply::err(&e),
            }
        }
        (Ok(_), Ok(c)) => {
            warn!("control: refused uid {} pid {}", c.uid, c.pid);
            Reply::err(&Error::new(
                libc::EPERM,
                format!("only root or the mount's owner (uid {owner}) may control it"),
            ))
        }
    };
    let _ = s.write_all(reply.encode().as_bytes());
}

/// Carries out one request in the daemon. A branch change's kernel invalidations are
/// all sent before this returns, so before the reply.
pub fn handle(fs: &UnionFs, cfg: &mut Config, req: &Request, env: &Env) -> Reply {
    let r = match req {
        Request::Branch(words) => {
            let ops = match words
                .iter()
                .map(|w| crate::branch::parse(w))
                .collect::<std::result::Result<Vec<_>, _>>()
            {
                Ok(ops) if !ops.is_empty() => ops,
                Ok(_) => return Reply::err(&Error::new(libc::EINVAL, "no branch operation")),
                Err(e) => return Reply::err(&Error::new(libc::EINVAL, e)),
            };
            fs.change_branches(cfg, &ops, env.dev).map(|c| {
                if let Some(i) = &env.inval {
                    let t = std::time::Instant::now();
                    i.apply(&c.inval);
                    info!("branches: kernel caches dropped in {:?}", t.elapsed());
                }
                cfg.lowerdirs = c.lowerdirs;
                c.lines
            })
        }
        Request::Check(opts) => {
            return match crate::options::remount_unchanged(cfg, opts) {
                Ok(()) => Reply::ok(Vec::new()),
                Err(e) => Reply {
                    lines: Vec::new(),
                    result: Err((libc::EINVAL, e.0)),
                },
            }
        }
        // No result line: a remount that succeeds prints nothing (mount(8) and xfstests
        // compare a mount helper's output); the log says it.
        Request::SetReadOnly(on) => fs.set_read_only(*on).map(|()| {
            info!("remount: {}", if *on { "read-only" } else { "read-write" });
            Vec::new()
        }),
    };
    match r {
        Ok(lines) => Reply::ok(lines),
        Err(e) => Reply::err(&e),
    }
}

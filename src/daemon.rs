//! Daemon mode and logging. `stratafs` returns only once the mount is live or has failed:
//! the parent makes a pipe and forks (before any thread exists: fuser starts its threads
//! later, in the child); the child starts a new session, mounts, and on `ready` writes a
//! success byte, closes the pipe and points stdio at /dev/null; on failure it writes the
//! one-line message. The parent exits 0 on the byte, 1 with the message on stderr, or 1
//! if the child died without writing either.
//!
//! Logs go to stderr in the foreground, else to `--log-file` or syslog (facility daemon).
//! The level is `warn` (accepted-and-ignored options, unmount problems), `debug` with
//! `-d`/`-o debug`; `RUST_LOG` overrides both.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use log::{Level, Log, Metadata, Record};

use crate::options::Config;
use crate::sys::daemon as sysd;

const OK: u8 = 0;
const FAILED: u8 = 1;

/// The child's end of the pipe to the waiting parent.
#[derive(Debug)]
pub struct Notifier {
    pipe: Option<File>,
}

impl Notifier {
    /// A notifier that tells nobody (foreground mode).
    pub fn none() -> Notifier {
        Notifier { pipe: None }
    }

    /// The mount is live: release the parent and leave the terminal.
    pub fn ready(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(&[OK]);
            drop(p);
            if let Err(e) = sysd::stdio_to_dev_null() {
                log::warn!("stdio to /dev/null: {e}");
            }
        }
    }

    /// The mount failed: hand the one-line message to the parent. Returns false in the
    /// foreground, where the caller prints it itself.
    pub fn fail(&mut self, msg: &str) -> bool {
        match self.pipe.take() {
            Some(mut p) => {
                let mut m = vec![FAILED];
                m.extend_from_slice(msg.replace('\n', " ").as_bytes());
                let _ = p.write_all(&m);
                true
            }
            None => false,
        }
    }
}

/// Which process we are after [`detach`].
#[derive(Debug)]
pub enum Role {
    /// The daemon: mount, report through the notifier, serve.
    Daemon(Notifier),
    /// The parent, done waiting: exit with this code (the message, if any, is printed).
    Exit(u8),
}

/// Forks the daemon and, in the parent, waits for its verdict.
pub fn detach() -> std::io::Result<Role> {
    let (r, w) = sysd::pipe()?;
    match sysd::fork()? {
        sysd::Fork::Child => {
            drop(r);
            // Cannot fail: a fresh child is never a process-group leader.
            let _ = sysd::setsid();
            let _ = std::env::set_current_dir("/");
            Ok(Role::Daemon(Notifier {
                pipe: Some(File::from(w)),
            }))
        }
        sysd::Fork::Parent(pid) => {
            drop(w);
            Ok(Role::Exit(wait_for_child(r, pid)))
        }
    }
}

fn wait_for_child(r: OwnedFd, pid: libc::pid_t) -> u8 {
    let mut f = File::from(r);
    let mut first = [0u8; 1];
    let n = loop {
        match f.read(&mut first) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap_or(0),
        }
    };
    if n == 1 && first[0] == OK {
        return 0;
    }
    if n == 1 {
        let mut msg = Vec::new();
        let _ = f.read_to_end(&mut msg);
        let _ = sysd::waitpid(pid);
        eprintln!("stratafs: {}", String::from_utf8_lossy(&msg).trim_end());
        return 1;
    }
    let how = match sysd::waitpid(pid) {
        Ok(sysd::ExitStatus::Code(c)) => format!("exit status {c}"),
        Ok(sysd::ExitStatus::Signal(s)) => format!("signal {s}"),
        Err(e) => e.to_string(),
    };
    eprintln!("stratafs: the daemon ended before the mount was live ({how})");
    1
}

/// Sends log records through env_logger's filter to syslog.
struct Syslog {
    filter: env_logger::Logger,
}

impl Log for Syslog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.filter.enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let prio = match record.level() {
            Level::Error => libc::LOG_ERR,
            Level::Warn => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug | Level::Trace => libc::LOG_DEBUG,
        };
        sysd::syslog(
            prio,
            &format!("{} {}: {}", record.level(), record.target(), record.args()),
        );
    }

    fn flush(&self) {}
}

/// Sets up logging for `cfg`; call before [`detach`]. Fails only when `--log-file` cannot
/// be opened (one line naming it).
pub fn init_logging(cfg: &Config) -> Result<(), String> {
    let default = if cfg.debug { "debug" } else { "warn" };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if let Some(path) = &cfg.log_file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
        let _ = b.try_init();
    } else if cfg.foreground {
        let _ = b.try_init();
    } else {
        sysd::openlog(c"stratafs");
        let filter = b.build();
        let max = filter.filter();
        if log::set_boxed_logger(Box::new(Syslog { filter })).is_ok() {
            log::set_max_level(max);
        }
    }
    Ok(())
}

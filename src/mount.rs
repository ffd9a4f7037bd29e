//! Mounting: the fuser configuration for a [`Config`], the session, signal handling and
//! unmount. `run` returns when the filesystem is unmounted (by `umount`, `fusermount3 -u`,
//! or SIGTERM/SIGINT/SIGHUP, which unmount), so the process can exit 0. "Unmounted" is the
//! kernel's view: the session ends when the last mount of the superblock goes, in every
//! mount namespace; a signal ends the daemon even while a copy elsewhere holds it
//! ([`end_on_signal`]).

use std::os::fd::AsFd;
use std::sync::Arc;

use fuser::{MountOption, Session, SessionACL};
use log::{info, warn};

use crate::control::MountEntry;
use crate::dispatch::init::MAX_WRITE;
use crate::dispatch::DEFAULT_TTL;
use crate::error::{Error, Result};
use crate::fs::UnionFs;
use crate::options::{Config, IoUring};
use crate::sys;
use crate::transport::fuser::FuseAdapter;
use crate::transport::ring::{self, Ring, RingConfig};

/// Daemon threads when no `threads=` is given and a branch is remote (FUSE, NFS, ...):
/// each request waiting for a stalled server holds a thread until the server's timeout, so
/// one per CPU lets as few stalled requests as there are CPUs stop the local upper too.
/// Measured cost: 16 threads instead of 2 took the daemon's RSS from 3.9 to 6.3 MiB after a
/// walk of 2,000 files and a 64 MiB write (each thread's request buffer and stack pages).
pub const REMOTE_MIN_THREADS: usize = 16;

/// The default thread count: one per CPU, at least `REMOTE_MIN_THREADS` with a remote
/// branch.
pub fn default_threads(cpus: usize, remote_branch: bool) -> usize {
    if remote_branch {
        cpus.max(REMOTE_MIN_THREADS)
    } else {
        cpus.max(1)
    }
}

/// The fuser mount configuration for `cfg` (`remote_branch`: some branch is on a network
/// or FUSE filesystem).
pub fn fuser_config(cfg: &Config, remote_branch: bool) -> fuser::Config {
    let mut opts = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype(cfg.subtype.clone().unwrap_or_else(|| "stratafs".into())),
    ];
    if cfg.default_permissions {
        opts.push(MountOption::DefaultPermissions);
    }
    if cfg.read_only {
        opts.push(MountOption::RO);
    }
    for (on, opt) in [
        (cfg.nodev, MountOption::NoDev),
        (cfg.nosuid, MountOption::NoSuid),
        (cfg.noexec, MountOption::NoExec),
        (cfg.noatime, MountOption::NoAtime),
        (cfg.auto_unmount, MountOption::AutoUnmount),
    ] {
        if on {
            opts.push(opt);
        }
    }
    let mut c = fuser::Config::default();
    c.mount_options = opts;
    c.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.allow_root || cfg.auto_unmount {
        // fusermount3's auto_unmount wants more than owner-only access (fuser checks it);
        // root may access the mount anyway.
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    c.n_threads = Some(
        cfg.threads
            .unwrap_or_else(|| default_threads(cpus, remote_branch))
            .max(1),
    );
    c.clone_fd = true;
    c
}

/// Flags and kernel options for our own mount(2).
fn mount_args(cfg: &Config) -> sys::FuseMountArgs {
    let mut data = Vec::new();
    if cfg.default_permissions {
        data.push("default_permissions");
    }
    if cfg.allow_other || cfg.allow_root {
        data.push("allow_other");
    }
    sys::FuseMountArgs {
        source: cfg.fsname.clone(),
        fstype: format!("fuse.{}", cfg.subtype.as_deref().unwrap_or("stratafs")),
        read_only: cfg.read_only,
        nodev: cfg.nodev,
        nosuid: cfg.nosuid,
        noexec: cfg.noexec,
        noatime: cfg.noatime,
        strictatime: cfg.strictatime,
        nodiratime: cfg.nodiratime,
        data: data.join(","),
    }
}

/// Who made the FUSE connection, and so who ends it.
#[derive(Debug)]
enum Connection {
    /// Our own mount(2) (root): a signal makes us unmount it.
    Own,
    /// fusermount3's mount (no privilege for mount(2)): fuser's unmounter.
    Fusermount,
    /// The caller's (`/dev/fd/N`), with its mountinfo line when we can see it: the caller
    /// unmounts; a signal only ends the daemon (the kernel aborts the connection when its
    /// last descriptor closes, as for a libfuse daemon on such a descriptor).
    Given(Option<MountEntry>),
}

/// Mounts `cfg` (or takes over the caller's connection, `/dev/fd/N`), calls `ready` once
/// the mount is live (the kernel has completed INIT), and serves requests until unmounted.
pub fn run(cfg: &Config, ready: impl FnOnce()) -> Result<()> {
    sys::raise_nofile_limit();
    // Signals are taken by one thread with sigwait; block them before any thread starts.
    sys::block_exit_signals();
    let fs = Arc::new(UnionFs::new(cfg)?);
    let adapter = FuseAdapter::new(fs.clone(), cache_ttl(cfg));
    let dispatcher = adapter.dispatcher();
    let notifier = adapter.notifier_slot();
    let fuse_dev = dispatcher.dev_slot();
    let bdi = adapter.bdi_slot();
    let invalidator = adapter.invalidator();
    let mnt = cfg.mountpoint.display().to_string();
    let remote = remote_branches(&fs);
    let mut fcfg = fuser_config(cfg, !remote.is_empty());
    if !sys::dev_fuse_openable() {
        // fuser clones the connection per thread by opening /dev/fuse: a user it is not
        // open to (serving a /dev/fd/N it was handed) shares the one descriptor instead.
        fcfg.clone_fd = false;
    }
    let threads = fcfg.n_threads.unwrap_or(1);
    // FUSE over io_uring is asked for at INIT only where a ring can serve it.
    let offered = uring_usable(cfg)?;
    dispatcher.set_want_uring(offered.is_ok());
    log_remote(cfg, &remote, threads);
    let (mut session, conn) = open_session(cfg, adapter, fcfg)?;
    let _ = notifier.set(session.notifier());
    // Passthrough backing files are registered on the connection's /dev/fuse fd.
    match session.as_fd().try_clone_to_owned() {
        Ok(fd) => {
            let _ = fuse_dev.set(Arc::new(fd));
        }
        Err(e) => warn!("no /dev/fuse fd to register passthrough backing files on: {e}"),
    }
    // INIT is answered by now: the ring's queues register here, if INIT granted them.
    let _ring = match start_ring(cfg, &dispatcher, session.as_fd(), offered, threads) {
        Ok(ring) => ring,
        Err(e) => {
            if !matches!(conn, Connection::Given(_)) {
                let _ = sys::umount_detach(&cfg.mountpoint);
            }
            return Err(e);
        }
    };
    spawn_udba(&fs, notifier.clone())?;
    let entry = our_mount_entry(cfg, &conn);
    if let Some(e) = &entry {
        let _ = bdi.set(e.dev.clone());
    }
    let saver = fs.clone();
    spawn_signal_thread(
        cfg,
        entry.as_ref(),
        conn,
        session.unmount_callable(),
        fs.clone(),
    )?;
    // The control channel (remount,ro|rw): listening before the mount is reported live.
    start_control(fs, cfg, entry.as_ref(), invalidator);
    for i in &cfg.ignored {
        warn!("option {i} accepted and ignored");
    }
    let shown = entry
        .as_ref()
        .map_or(mnt.clone(), |e| e.point.display().to_string());
    info!(
        "mounted {} on {shown} (lower {:?}, upper {:?}, work {:?})",
        cfg.fsname, cfg.lowerdirs, cfg.upperdir, cfg.workdir
    );
    ready();
    let served = session
        .run()
        .map_err(|e| Error::io(e, format!("serving {mnt}")));
    saver.save_ghosts();
    served
}

/// udba=notify: the thread that turns direct changes into invalidations, sent through the
/// session's notifier once it is set.
fn spawn_udba(
    fs: &Arc<UnionFs>,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
) -> Result<()> {
    crate::udba::spawn(fs.clone(), move |i| {
        if let Some(n) = notifier.get() {
            crate::dispatch::send_inval(n, i);
        }
    })
    .map_err(|e| Error::io(e, "udba thread"))
}

/// The kernel's entry/attribute cache lifetime: `timeout=`, else none with udba=reval
/// (nothing cached, udba.rs), else the default.
fn cache_ttl(cfg: &Config) -> std::time::Duration {
    cfg.timeout
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(if cfg.udba == crate::udba::Udba::Reval {
            std::time::Duration::ZERO
        } else {
            DEFAULT_TTL
        })
}

/// Starts the control channel on our mount's line of mountinfo, or says why not (at info
/// level for a caller's `/dev/fd/N` mount in another namespace: nothing on stderr then).
fn start_control(
    fs: Arc<UnionFs>,
    cfg: &Config,
    entry: Option<&MountEntry>,
    inval: crate::dispatch::Invalidator,
) {
    let mnt = cfg.mountpoint.display();
    match entry {
        Some(e) => {
            if let Err(e) = crate::control::start_server(fs, cfg, e, inval) {
                warn!("no control channel (remount will not work): {e}");
            }
        }
        None if cfg.mount_fd.is_some() => {
            info!(
                "no control channel: the mount of {mnt} is not in this mount namespace's mountinfo"
            )
        }
        None => warn!("no control channel (remount will not work): {mnt} not in mountinfo"),
    }
}

/// The paths of the branches on a network or FUSE filesystem.
fn remote_branches(fs: &UnionFs) -> Vec<String> {
    fs.layers
        .remote_branches()
        .iter()
        .map(|l| l.path.display().to_string())
        .collect()
}

fn log_remote(cfg: &Config, remote: &[String], threads: usize) {
    if !remote.is_empty() {
        info!(
            "branches on a network or FUSE filesystem ({}): {threads} threads{}",
            remote.join(", "),
            if cfg.threads.is_some() {
                " (threads=)"
            } else {
                " (at least 16 with such a branch)"
            }
        );
    }
}

/// The FUSE session: on the caller's descriptor (`/dev/fd/N`), on our own mount(2), or
/// through fusermount3 when mount(2) is not ours to call. Returns after INIT.
fn open_session(
    cfg: &Config,
    adapter: FuseAdapter,
    fcfg: fuser::Config,
) -> Result<(Session<FuseAdapter>, Connection)> {
    let mnt = cfg.mountpoint.display().to_string();
    if let Some(n) = cfg.mount_fd {
        let fd = sys::take_fuse_fd(n).map_err(|e| Error::io(e, format!("mountpoint {mnt}")))?;
        let entry = given_mount_entry(n)?;
        let acl = fcfg.acl;
        let s = Session::from_fd(adapter, fd, acl, fcfg)
            .map_err(|e| Error::io(e, format!("serving {mnt}")))?;
        return Ok((s, Connection::Given(entry)));
    }
    // Mount ourselves so /proc/mounts says `fuse.stratafs` (fuser's own mount always says
    // `fuse`); without the privilege for mount(2), fusermount3 does it and sets the subtype.
    // auto_unmount is fusermount3's: it keeps a process that unmounts when we die.
    let direct = if cfg.auto_unmount {
        Err(std::io::Error::from_raw_os_error(libc::EPERM))
    } else {
        sys::fuse_mount(&cfg.mountpoint, &mount_args(cfg))
    };
    match direct {
        Ok(fd) => {
            let acl = fcfg.acl;
            let s = Session::from_fd(adapter, fd, acl, fcfg).map_err(|e| {
                let _ = sys::umount_detach(&cfg.mountpoint);
                Error::io(e, format!("mount {mnt}"))
            })?;
            Ok((s, Connection::Own))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let s = Session::new(adapter, &cfg.mountpoint, &fcfg)
                .map_err(|e| Error::io(e, format!("mount {mnt}")))?;
            Ok((s, Connection::Fusermount))
        }
        Err(e) => Err(Error::io(e, format!("mount {mnt}"))),
    }
}

/// The caller's mount of descriptor `fd`, found by the connection number the kernel shows
/// in fdinfo (`None` on kernels without it, or when the mount is in another namespace).
///
/// Permissions: the kernel checks them only if the caller's mount has `default_permissions`
/// (stratafs's own mounts always do); without it every request is done with the daemon's
/// credentials. A daemon running as the real root would then let every user of the mount
/// do what root can, so that is refused; as a plain user (Apptainer's setuid starter runs
/// the overlay program as the user) or root of a user namespace, the daemon's credentials
/// bound what the mount can do, as with fuse-overlayfs.
fn given_mount_entry(fd: i32) -> Result<Option<MountEntry>> {
    let entry = sys::proc::fuse_connection(fd).and_then(|c| {
        let dev = format!("0:{c}");
        MountEntry::all().into_iter().rev().find(|m| m.dev == dev)
    });
    let real_root = sys::geteuid() == 0 && !sys::in_user_namespace();
    if let Some(e) = &entry {
        if real_root && !e.super_opts.iter().any(|o| o == "default_permissions") {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "mountpoint /dev/fd/{fd}: the caller's mount on {} has no default_permissions: \
                     served by root, every user of it could do what root can (add \
                     default_permissions to its mount options, or run stratafs as the mount's user)",
                    e.point.display()
                ),
            ));
        }
    }
    Ok(entry)
}

/// Our mount's line of mountinfo: the caller's for `/dev/fd/N`, else the last FUSE mount
/// of our type on the mountpoint.
fn our_mount_entry(cfg: &Config, conn: &Connection) -> Option<MountEntry> {
    if let Connection::Given(e) = conn {
        return e.clone();
    }
    let fstype = format!("fuse.{}", cfg.subtype.as_deref().unwrap_or("stratafs"));
    MountEntry::all()
        .into_iter()
        .rev()
        .find(|m| m.point == cfg.mountpoint && m.fstype == fstype)
}

/// The thread that takes SIGTERM/SIGINT/SIGHUP (see [`end_on_signal`]).
fn spawn_signal_thread(
    cfg: &Config,
    entry: Option<&MountEntry>,
    conn: Connection,
    mut unmounter: fuser::SessionUnmounter,
    saver: Arc<UnionFs>,
) -> Result<()> {
    let mountpoint = cfg.mountpoint.clone();
    // Our superblock's device number, to tell our mount from a later one on the same path.
    let dev = entry.map(|e| e.dev.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = sys::wait_exit_signal() {
                if matches!(conn, Connection::Given(_)) {
                    info!(
                        "signal {sig}: ending the daemon (the caller unmounts {})",
                        mountpoint.display()
                    );
                    saver.save_ghosts();
                    std::process::exit(0);
                }
                let own = matches!(conn, Connection::Own);
                end_on_signal(sig, &mountpoint, dev.as_deref(), own, &mut unmounter);
                // The session did not end (its mount is held elsewhere): what the normal
                // end keeps is kept before the exit.
                saver.save_ghosts();
                exit_after_signal(sig);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::io(e, "signal thread"))
}

/// The fuse module's switch for FUSE over io_uring.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether FUSE over io_uring may be asked for at INIT: `Ok(Err(why not))` to go on over
/// /dev/fuse; an error (no mount) when `-o io_uring` requires it and it cannot be had.
fn uring_usable(cfg: &Config) -> Result<std::result::Result<(), String>> {
    let why_not = match cfg.io_uring {
        IoUring::Off => Some("-o noio_uring".to_string()),
        _ => match std::fs::read_to_string(ENABLE_URING) {
            Err(e) => Some(format!("no {ENABLE_URING}: {e}")),
            Ok(v) if v.trim() != "Y" => Some(format!("{ENABLE_URING} is {}", v.trim())),
            Ok(_) => sys::uring::probe()
                .err()
                .map(|e| format!("io_uring not usable by this process: {e}")),
        },
    };
    match why_not {
        None => Ok(Ok(())),
        Some(why) if cfg.io_uring == IoUring::Require => Err(Error::new(
            libc::EOPNOTSUPP,
            format!("-o io_uring: FUSE over io_uring unavailable ({why}; root enables it with `echo Y > {ENABLE_URING}`)"),
        )),
        Some(why) => Ok(Err(why)),
    }
}

/// After INIT: registers the ring's queues when INIT granted FUSE over io_uring, and logs
/// the one line saying which transport serves the mount and why. A failed registration
/// leaves the connection on /dev/fuse (the kernel falls back by itself), or fails the
/// mount with `-o io_uring`. fuser's /dev/fuse threads run either way (FORGET, INTERRUPT).
fn start_ring(
    cfg: &Config,
    d: &Arc<crate::dispatch::Dispatcher>,
    fuse: std::os::fd::BorrowedFd<'_>,
    offered: std::result::Result<(), String>,
    threads: usize,
) -> Result<Option<Ring>> {
    let granted = d.uring_granted().load(std::sync::atomic::Ordering::Relaxed);
    let why_not = match offered {
        Err(why) => why,
        Ok(()) if !granted => "the kernel did not grant FUSE_OVER_IO_URING at INIT".into(),
        Ok(()) => {
            let mut rcfg = ring_config(threads);
            // A parked request's queue is kicked through the mount's root (not reachable
            // by path when the caller mounted it for us: /dev/fd/N). Nothing may touch the
            // mount here: no request is served until the ring is up.
            if cfg.mount_fd.is_none() {
                rcfg.kick = ring::kick::kicker(cfg.mountpoint.clone())
                    .inspect_err(|e| warn!("fuse ring: no queue kick ({e})"))
                    .ok();
            }
            let queues = ring::possible_cpus().map_or(0, |c| c.len());
            match Ring::start(fuse, &rcfg, |_q, _t| ring::encode::handler(d.clone())) {
                Ok(r) => {
                    d.set_ring_serving(true);
                    info!(
                        "transport: io_uring ({queues} queues x {} threads, {} KiB buffers)",
                        rcfg.threads_per_queue,
                        rcfg.payload_size >> 10
                    );
                    return Ok(Some(r));
                }
                Err(e) => format!("ring registration failed: {e}"),
            }
        }
    };
    if cfg.io_uring == IoUring::Require {
        return Err(Error::new(
            libc::EOPNOTSUPP,
            format!("-o io_uring: FUSE over io_uring unavailable ({why_not}; see {ENABLE_URING})"),
        ));
    }
    info!("transport: /dev/fuse ({why_not})");
    Ok(None)
}

/// Threads per ring queue, pinned to the queue's CPU: at least [`RING_THREADS_PER_QUEUE`], so that a request that
/// blocks (a copy-up of a large file, a stalled remote branch) holds only its own thread
/// while the others of its queue go on serving; more when `threads=` or a remote branch
/// asks for more threads in all. One entry per thread: a thread answers its entries one at
/// a time, so a second entry would wait behind a blocked first (tests/uring_transport.rs,
/// `a_blocked_handler_stalls_only_its_own_thread`).
fn ring_config(threads: usize) -> RingConfig {
    let queues = ring::possible_cpus().map_or(1, |c| c.len()).max(1);
    let mut rcfg = RingConfig::new(MAX_WRITE, MAX_WRITE / sys::uring::page_size() as u32);
    rcfg.threads_per_queue = threads.div_ceil(queues).max(RING_THREADS_PER_QUEUE);
    rcfg.entries_per_thread = 1;
    // Each queue's threads on the queue's CPU: the request's issuer and the thread serving
    // it hand over on one CPU (no cross-CPU wake-up). Measured with scripts/requests.sh --ab
    // (2,000-file stack, 2 vCPUs under load): walk_warm 0.80x, ls_lR 0.91x, untar 0.84x,
    // read_all 0.96x the wall time of unpinned threads, 4-9 % less CPU.
    rcfg.pin = true;
    rcfg
}

/// The fewest threads a ring queue has (see `ring_config`).
pub const RING_THREADS_PER_QUEUE: usize = 2;

/// How long a signal leaves the session to end by itself before the process exits.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGTERM/SIGINT/SIGHUP: unmount our mount if it is still on `mountpoint` in this mount
/// namespace (never a later mount on the same path), then end the daemon.
///
/// The session ends when the kernel drops the FUSE connection, which it does when the last
/// mount of the superblock goes, in every mount namespace: a process that copied the mount
/// table (`unshare -m`, a container runtime before its pivot_root) or a lazy unmount with
/// files still open keeps the connection, and the daemon keeps serving them. Asked to stop,
/// the daemon waits [`SIGNAL_GRACE`] for the session to end and then exits, as libfuse
/// daemons do on these signals: the kernel aborts the connection and the remaining copies
/// answer ENOTCONN. Exiting loses nothing acknowledged: the daemon keeps no write-back state
/// (every reply comes after the upper was changed; fsync and syncfs replies after the data
/// is on disk unless `volatile`; `nfs_export=on` writes its handle places before the exit).
fn end_on_signal(
    sig: i32,
    mountpoint: &std::path::Path,
    dev: Option<&str>,
    own_mount: bool,
    unmounter: &mut fuser::SessionUnmounter,
) {
    let ours = match (dev, crate::control::MountEntry::fuse_at(mountpoint)) {
        (Some(d), Some(m)) => m.dev == d,
        (None, Some(_)) => true,
        (_, None) => false,
    };
    if ours {
        info!("signal {sig}: unmounting");
        let r = if own_mount {
            sys::umount_detach(mountpoint)
        } else {
            unmounter.unmount()
        };
        if let Err(e) = r {
            warn!("unmount after signal {sig}: {e}");
        }
    } else {
        info!(
            "signal {sig}: {} is not mounted here any more",
            mountpoint.display()
        );
    }
    std::thread::sleep(SIGNAL_GRACE);
}

/// After [`end_on_signal`], when the session is still there.
fn exit_after_signal(sig: i32) -> ! {
    warn!(
        "signal {sig}: the session did not end within {SIGNAL_GRACE:?} (the mount is still held \
         elsewhere: another mount namespace or open files of a lazy unmount): exiting"
    );
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_branches_get_more_threads() {
        assert_eq!(default_threads(2, false), 2);
        assert_eq!(default_threads(0, false), 1);
        assert_eq!(default_threads(2, true), REMOTE_MIN_THREADS);
        assert_eq!(default_threads(64, true), 64);
        assert!(crate::layers::is_remote_fs(0x6573_5546)); // FUSE (GlusterFS, sshfs)
        assert!(crate::layers::is_remote_fs(0x6969)); // NFS
        assert!(!crate::layers::is_remote_fs(0x5846_5342)); // XFS
        assert!(!crate::layers::is_remote_fs(0xef53)); // ext4
    }
}

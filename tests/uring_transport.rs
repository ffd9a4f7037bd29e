//! FUSE over io_uring (issue #20): a tiny in-memory filesystem served by
//! `stratafs::transport::ring` with hand-encoded replies, fuser doing only the mount, INIT and
//! the /dev/fuse leftovers (FORGET). The server runs in a child process (this test binary
//! re-executed) so that tests can kill it, abort its connection, or unmount under it.
//!
//! Needs root, /dev/fuse and `/sys/module/fuse/parameters/enable_uring` (a kernel with
//! CONFIG_FUSE_IO_URING): without the parameter the tests fail, they do not skip. The
//! parameter is set to Y while a test runs and restored afterwards.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request,
};
use stratafs::sys::fuse_abi::{self as abi, opcode};
use stratafs::transport::ring::{RawReply, RawRequest, Ring, RingConfig, TaskRun};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
const MAX_WRITE: u32 = 128 << 10;
const SLOW_SECS: u64 = 3;

// ---------------------------------------------------------------- the tiny filesystem

/// (ino, parent, name, is_dir)
const NODES: &[(u64, u64, &str, bool)] = &[
    (1, 1, "", true),
    (2, 1, "hello", false),
    (3, 1, "sub", true),
    (4, 3, "deep", false),
    (5, 1, "big", false),
    (6, 1, "slow", false),
    (7, 1, "stats", false),
    (8, 1, "gate", false),
];

#[derive(Default)]
struct Tiny {
    big: Mutex<Vec<u8>>,
    ring: AtomicU64,
    dev: AtomicU64,
    /// Opens of "gate" are parked (`ring::park`) until a WRITE opens the gate.
    gate: std::sync::atomic::AtomicBool,
}

impl Tiny {
    fn node(ino: u64) -> Option<&'static (u64, u64, &'static str, bool)> {
        NODES.iter().find(|n| n.0 == ino)
    }

    fn lookup(parent: u64, name: &[u8]) -> Option<u64> {
        NODES
            .iter()
            .find(|n| n.1 == parent && n.0 != 1 && n.2.as_bytes() == name)
            .map(|n| n.0)
    }

    fn content(&self, ino: u64) -> Vec<u8> {
        match ino {
            2 => b"hello world\n".to_vec(),
            4 => b"deep file\n".to_vec(),
            5 => self.big.lock().unwrap().clone(),
            6 => b"slow\n".to_vec(),
            7 => format!(
                "ring={} dev={}\n",
                self.ring.load(Ordering::SeqCst),
                self.dev.load(Ordering::SeqCst)
            )
            .into_bytes(),
            _ => Vec::new(),
        }
    }

    fn size(&self, ino: u64) -> u64 {
        match ino {
            5 => self.big.lock().unwrap().len() as u64,
            7 => 4096,
            _ => self.content(ino).len() as u64,
        }
    }

    fn attr(&self, ino: u64) -> Option<abi::FuseAttr> {
        let n = Self::node(ino)?;
        let mode = if n.3 {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        };
        Some(abi::FuseAttr {
            ino,
            size: self.size(ino),
            mode,
            nlink: if n.3 { 2 } else { 1 },
            blksize: 4096,
            ..Default::default()
        })
    }

    fn children(dir: u64) -> Vec<(u64, &'static str, bool)> {
        NODES
            .iter()
            .filter(|n| n.1 == dir && n.0 != 1)
            .map(|n| (n.0, n.2, n.3))
            .collect()
    }

    fn read(&self, ino: u64, off: u64, size: u32) -> Vec<u8> {
        if ino == 6 {
            std::thread::sleep(Duration::from_secs(SLOW_SECS));
        }
        let c = self.content(ino);
        let start = (off as usize).min(c.len());
        let end = (start + size as usize).min(c.len());
        c[start..end].to_vec()
    }

    fn write(&self, ino: u64, off: u64, data: &[u8]) -> Result<u32, i32> {
        if ino != 5 {
            return Err(libc::EACCES);
        }
        let mut big = self.big.lock().unwrap();
        let end = off as usize + data.len();
        if big.len() < end {
            big.resize(end, 0);
        }
        big[off as usize..end].copy_from_slice(data);
        Ok(data.len() as u32)
    }

    fn truncate(&self, ino: u64, size: u64) {
        if ino == 5 {
            self.big.lock().unwrap().resize(size as usize, 0);
        }
    }
}

// ---------------------------------------------------------------- ring handler (hand-encoded)

fn entry_out(tiny: &Tiny, ino: u64) -> Vec<u8> {
    let out = abi::FuseEntryOut {
        nodeid: ino,
        attr: tiny.attr(ino).unwrap(),
        ..Default::default()
    };
    abi::bytes_of(&out).to_vec()
}

fn attr_out(tiny: &Tiny, ino: u64) -> RawReply {
    match tiny.attr(ino) {
        Some(attr) => RawReply::Data(
            abi::bytes_of(&abi::FuseAttrOut {
                attr,
                ..Default::default()
            })
            .to_vec(),
        ),
        None => RawReply::Error(libc::ENOENT),
    }
}

fn readdir(r: &RawRequest<'_>) -> RawReply {
    let Some(rd) = abi::read::<abi::FuseReadIn>(r.op_in) else {
        return RawReply::Error(libc::EIO);
    };
    let mut list = vec![
        (r.nodeid, ".", true),
        (Tiny::node(r.nodeid).map_or(1, |n| n.1), "..", true),
    ];
    list.extend(Tiny::children(r.nodeid));
    let mut out = Vec::new();
    for (i, (ino, name, dir)) in list.iter().enumerate().skip(rd.offset as usize) {
        let typ = if *dir { libc::DT_DIR } else { libc::DT_REG } as u32;
        if !abi::push_dirent(
            &mut out,
            rd.size as usize,
            *ino,
            i as u64 + 1,
            typ,
            name.as_bytes(),
        ) {
            break;
        }
    }
    RawReply::Data(out)
}

fn ring_handle(tiny: &Arc<Tiny>, r: &RawRequest<'_>) -> RawReply {
    tiny.ring.fetch_add(1, Ordering::SeqCst);
    match r.opcode {
        opcode::LOOKUP => {
            // LOOKUP has no op_in struct: the name (with NUL) is the payload.
            let Some((name, _)) = abi::split_name(r.payload) else {
                return RawReply::Error(libc::EIO);
            };
            match Tiny::lookup(r.nodeid, name) {
                Some(ino) => RawReply::Data(entry_out(tiny, ino)),
                None => RawReply::Error(libc::ENOENT),
            }
        }
        opcode::GETATTR => attr_out(tiny, r.nodeid),
        opcode::SETATTR => {
            let Some(sa) = abi::read::<abi::FuseSetattrIn>(r.op_in) else {
                return RawReply::Error(libc::EIO);
            };
            if sa.valid & (1 << 3) != 0 {
                tiny.truncate(r.nodeid, sa.size);
            }
            attr_out(tiny, r.nodeid)
        }
        opcode::OPEN if r.nodeid == 8 => park_until_the_gate_opens(tiny),
        opcode::OPEN | opcode::OPENDIR => {
            let Some(o) = abi::read::<abi::FuseOpenIn>(r.op_in) else {
                return RawReply::Error(libc::EIO);
            };
            if o.flags as i32 & libc::O_TRUNC != 0 {
                tiny.truncate(r.nodeid, 0);
            }
            // Direct I/O for big/slow/stats (every read reaches us); hello and deep go
            // through the page cache, so their READs are background (readahead) requests.
            let open_flags = u32::from(r.opcode == opcode::OPEN && ![2, 4].contains(&r.nodeid));
            RawReply::Data(
                abi::bytes_of(&abi::FuseOpenOut {
                    fh: 0,
                    open_flags,
                    backing_id: 0,
                })
                .to_vec(),
            )
        }
        opcode::READ => {
            let Some(rd) = abi::read::<abi::FuseReadIn>(r.op_in) else {
                return RawReply::Error(libc::EIO);
            };
            RawReply::Data(tiny.read(r.nodeid, rd.offset, rd.size))
        }
        opcode::WRITE => {
            // The fuse_write_in is op_in; the data is the payload.
            let Some(w) = abi::read::<abi::FuseWriteIn>(r.op_in) else {
                return RawReply::Error(libc::EIO);
            };
            if w.size as usize != r.payload.len() {
                return RawReply::Error(libc::EPROTO);
            }
            tiny.gate.store(true, Ordering::SeqCst);
            match tiny.write(r.nodeid, w.offset, r.payload) {
                Ok(size) => {
                    RawReply::Data(abi::bytes_of(&abi::FuseWriteOut { size, padding: 0 }).to_vec())
                }
                Err(e) => RawReply::Error(e),
            }
        }
        opcode::READDIR => readdir(r),
        opcode::STATFS => {
            let st = abi::FuseKstatfs {
                blocks: 1000,
                bfree: 500,
                bavail: 500,
                files: 100,
                ffree: 50,
                bsize: 4096,
                namelen: 255,
                frsize: 4096,
                ..Default::default()
            };
            RawReply::Data(abi::bytes_of(&abi::FuseStatfsOut { st }).to_vec())
        }
        opcode::FLUSH | opcode::RELEASE | opcode::RELEASEDIR | opcode::FSYNC => {
            RawReply::Data(Vec::new())
        }
        _ => RawReply::Error(libc::ENOSYS),
    }
}

/// An OPEN of "gate": parked, and answered from another thread once a WRITE has opened the
/// gate (or EIO after 10 s), as stratafs parks an OPEN that waits for other handles.
fn park_until_the_gate_opens(tiny: &Arc<Tiny>) -> RawReply {
    // A slow decision first (stratafs's OPEN copies up before it finds it must wait): a
    // request arriving now finds every entry of the queue busy and is queued in the kernel.
    std::thread::sleep(Duration::from_millis(300));
    let Some(later) = stratafs::transport::ring::park() else {
        return RawReply::Error(libc::EIO);
    };
    let tiny = tiny.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !tiny.gate.load(Ordering::SeqCst) {
            if start.elapsed() > Duration::from_secs(10) {
                return later.send(RawReply::Error(libc::EIO));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = abi::FuseOpenOut {
            fh: 0,
            open_flags: 1, // direct I/O
            backing_id: 0,
        };
        later.send(RawReply::Data(abi::bytes_of(&out).to_vec()));
    });
    RawReply::Parked
}

// ---------------------------------------------------------------- fuser side

struct FuserFs {
    tiny: Arc<Tiny>,
    uring: bool,
}

fn file_attr(a: &abi::FuseAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: if a.mode & libc::S_IFMT == libc::S_IFDIR {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl FuserFs {
    fn count(&self) {
        self.tiny.dev.fetch_add(1, Ordering::SeqCst);
    }
}

impl Filesystem for FuserFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        if self.uring {
            config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .map_err(|_| {
                    std::io::Error::other(
                        "kernel does not offer FUSE_OVER_IO_URING (enable_uring=N?)",
                    )
                })?;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count();
        use std::os::unix::ffi::OsStrExt;
        match Tiny::lookup(parent.0, name.as_bytes()).and_then(|i| self.tiny.attr(i)) {
            Some(a) => reply.entry(&Duration::ZERO, &file_attr(&a), fuser::Generation(0)),
            None => reply.error(fuser::Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count();
        match self.tiny.attr(ino.0) {
            Some(a) => reply.attr(&Duration::ZERO, &file_attr(&a)),
            None => reply.error(fuser::Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count();
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.count();
        reply.data(&self.tiny.read(ino.0, offset, size));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        self.count();
        match self.tiny.write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fuser::Errno::from_i32(e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count();
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count();
        for (i, (child, name, dir)) in Tiny::children(ino.0)
            .into_iter()
            .enumerate()
            .skip(offset as usize)
        {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count();
        reply.statfs(1000, 500, 500, 100, 50, 4096, 255, 4096);
    }
}

// ---------------------------------------------------------------- the child server

/// Serves the tiny filesystem when this binary is run as a child with `RING_CHILD` set to
/// `mnt;mode;threads;entries;pin` (mode = ring | classic). Prints the ring statistics at exit.
#[test]
#[ignore = "the server half of the tests below; runs only as their child process"]
fn ring_server_child() {
    let Ok(spec) = std::env::var("RING_CHILD") else {
        return;
    };
    let f: Vec<&str> = spec.split(';').collect();
    let (mnt, uring) = (PathBuf::from(f[0]), f[1] == "ring");
    let tiny = Arc::new(Tiny::default());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![fuser::MountOption::FSName("ringtest".into())];
    if !uring {
        // Classic: fuser's /dev/fuse loop with `threads` reader threads.
        cfg.n_threads = Some(f[2].parse().unwrap());
    }
    let fs = FuserFs {
        tiny: tiny.clone(),
        uring,
    };
    let session = fuser::Session::new(fs, &mnt, &cfg).expect("mount");
    if !uring {
        session.run().expect("classic loop");
        return;
    }
    let mut rcfg = RingConfig::new(MAX_WRITE, MAX_WRITE / 4096);
    rcfg.threads_per_queue = f[2].parse().unwrap();
    rcfg.entries_per_thread = f[3].parse().unwrap();
    rcfg.pin = f[4] == "pin";
    if f[5..].contains(&"coop") {
        rcfg.task_run = vec![TaskRun::Cooperative];
    }
    if f[5..].contains(&"kick") {
        rcfg.kick = Some(stratafs::transport::ring::kick::kicker(mnt.clone()).unwrap());
    }
    if f[5..].contains(&"small") {
        // Smaller than the kernel's max_payload_sz: REGISTER fails with EINVAL.
        rcfg.payload_size = 4096;
    }
    let started = Ring::start(std::os::fd::AsFd::as_fd(&session), &rcfg, |_q, _t| {
        let tiny = tiny.clone();
        move |r: &RawRequest<'_>| ring_handle(&tiny, r)
    });
    let ring = match started {
        Ok(ring) => ring,
        Err(e) => {
            println!("RING-FALLBACK {e}");
            session.run().expect("classic loop after a failed REGISTER");
            return;
        }
    };
    let bg = session.spawn().expect("fuser thread");
    let stats = ring.join().expect("ring threads");
    println!("RING-STATS {stats:?}");
    bg.join().expect("fuser thread end");
}

// ---------------------------------------------------------------- parent-side helpers

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the tests of this file one at a time with `enable_uring=Y`, restoring the old
/// value when dropped. Panics (the test fails) if the kernel has no such parameter.
struct EnableUring {
    old: String,
    _lock: MutexGuard<'static, ()>,
}

impl EnableUring {
    fn on() -> EnableUring {
        let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::fs::read_to_string(PARAM)
            .unwrap_or_else(|e| panic!("{PARAM}: {e} (kernel without CONFIG_FUSE_IO_URING?)"));
        std::fs::write(PARAM, "Y").expect("set enable_uring");
        EnableUring {
            old: old.trim().to_string(),
            _lock: lock,
        }
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, &self.old);
    }
}

struct Server {
    child: Option<Child>,
    mnt: PathBuf,
    _dir: PathBuf,
}

impl Server {
    fn start(tag: &str, mode: &str, threads: usize, entries: u32, opts: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("uring-{tag}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        // opts: "pin" or "nopin", then optionally ";coop" (COOP_TASKRUN instead of DEFER).
        let spec = format!("{};{mode};{threads};{entries};{opts}", mnt.display());
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ring_server_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RING_CHILD", spec)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let s = Server {
            child: Some(child),
            mnt,
            _dir: dir,
        };
        s.wait_mounted();
        s
    }

    fn wait_mounted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!(" {} fuse", self.mnt.display());
        while Instant::now() < deadline {
            if std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .contains(&want)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not mounted within 10 s", self.mnt.display());
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// (requests over the ring, requests over /dev/fuse), as the server counts them.
    fn counts(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(self.p("stats")).unwrap();
        let num = |k: &str| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .parse()
                .unwrap()
        };
        (num("ring="), num("dev="))
    }

    /// Unmounts (lazily if asked) and returns the server's exit status and stdout, failing if
    /// it does not exit within `within`.
    fn finish(&mut self, lazy: bool, within: Duration) -> (std::process::ExitStatus, String) {
        let mut args = vec![];
        if lazy {
            args.push("-l");
        }
        let st = Command::new("umount")
            .args(&args)
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "umount {}", self.mnt.display());
        self.wait_exit(within)
    }

    fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (st, out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Runs `f` in a thread and fails the test if it takes longer than `limit` (a hung mount).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: still blocked after {limit:?}"))
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn ring_serves_lookup_getattr_readdir_read_write_statfs() {
    let _uring = EnableUring::on();
    for (threads, entries) in [(1, 2), (2, 1)] {
        let mut s = Server::start("basic", "ring", threads, entries, "nopin");
        let ls = sh(&format!("ls {}", s.mnt.display()));
        assert_eq!(
            String::from_utf8_lossy(&ls.stdout),
            "big\ngate\nhello\nslow\nstats\nsub\n"
        );
        let ls = sh(&format!("ls {}", s.p("sub").display()));
        assert_eq!(String::from_utf8_lossy(&ls.stdout), "deep\n");
        assert_eq!(std::fs::metadata(s.p("hello")).unwrap().len(), 12);
        assert!(std::fs::metadata(s.p("sub")).unwrap().is_dir());
        assert_eq!(std::fs::read(s.p("hello")).unwrap(), b"hello world\n");
        assert_eq!(std::fs::read(s.p("sub/deep")).unwrap(), b"deep file\n");
        assert_eq!(
            std::fs::metadata(s.p("nope")).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        // One write(2) of 1 MiB + 3 bytes: more than one payload buffer (128 KiB), so the
        // kernel splits it into several WRITE requests.
        let data: Vec<u8> = (0..(1 << 20) + 3)
            .map(|i: u32| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(s.p("big"), &data).unwrap();
        assert_eq!(std::fs::read(s.p("big")).unwrap(), data);
        let df = sh(&format!("stat -f -c '%b %f %S' {}", s.mnt.display()));
        assert_eq!(String::from_utf8_lossy(&df.stdout).trim(), "1000 500 4096");
        let (ring, dev) = s.counts();
        assert!(ring > 20, "only {ring} requests came over the ring");
        assert_eq!(dev, 0, "{dev} requests came over /dev/fuse");
        let (st, out) = s.finish(false, Duration::from_secs(10));
        assert!(st.success(), "server: {st:?}\n{out}");
        assert!(out.contains("RING-STATS"), "{out}");
        assert!(
            !out.contains("malformed: 1") && out.contains("malformed: 0"),
            "{out}"
        );
        eprintln!(
            "{}",
            out.lines().find(|l| l.contains("RING-STATS")).unwrap_or("")
        );
    }
}

#[test]
fn failed_register_falls_back_to_dev_fuse() {
    let _uring = EnableUring::on();
    let mut s = Server::start("fallback", "ring", 1, 1, "nopin;small");
    let hello = s.p("hello");
    let got = within(
        Duration::from_secs(5),
        "read after a failed REGISTER",
        move || std::fs::read(hello),
    );
    assert_eq!(got.unwrap(), b"hello world\n");
    let (ring, dev) = s.counts();
    assert_eq!(
        ring, 0,
        "{ring} requests came over a ring that failed to register"
    );
    assert!(dev > 0, "no request came over /dev/fuse");
    let (st, out) = s.finish(false, Duration::from_secs(10));
    assert!(st.success(), "server: {st:?}\n{out}");
    assert!(
        out.contains("RING-FALLBACK") && out.contains("os error 22"),
        "{out}"
    );
}

/// A handler that blocks (here a 3 s READ; in stratafs a long copy-up) holds up only its own
/// thread: with 2 threads × 1 entry per queue, a request from the same CPU is answered at once;
/// with 1 thread × 2 entries, the kernel hands it to the busy thread's second entry and it
/// waits for the slow one (the reason to prefer one entry per thread).
#[test]
fn a_blocked_handler_stalls_only_its_own_thread() {
    use stratafs::sys::uring::pin_to_cpu;
    let _uring = EnableUring::on();
    for (threads, entries, stalls) in [(2, 1, false), (1, 2, true)] {
        let mut s = Server::start("stall", "ring", threads, entries, "nopin");
        let slow = s.p("slow");
        let reader = std::thread::spawn(move || {
            pin_to_cpu(0).unwrap();
            std::fs::read(slow)
        });
        std::thread::sleep(Duration::from_millis(300));
        let hello = s.p("hello");
        let t = Instant::now();
        let stat = std::thread::spawn(move || {
            pin_to_cpu(0).unwrap();
            std::fs::metadata(hello).map(|m| m.len())
        });
        assert_eq!(stat.join().unwrap().unwrap(), 12);
        let waited = t.elapsed();
        if stalls {
            assert!(
                waited > Duration::from_millis(1500),
                "{threads}×{entries}: stat took {waited:?}"
            );
        } else {
            assert!(
                waited < Duration::from_millis(1000),
                "{threads}×{entries}: stat took {waited:?}"
            );
        }
        assert_eq!(reader.join().unwrap().unwrap(), b"slow\n");
        let (st, out) = s.finish(false, Duration::from_secs(10));
        assert!(st.success(), "server: {st:?}\n{out}");
    }
}

#[test]
fn killed_daemon_does_not_hang_the_mount() {
    let _uring = EnableUring::on();
    let mut s = Server::start("kill", "ring", 1, 2, "nopin");
    let slow = s.p("slow");
    let reader = std::thread::spawn(move || std::fs::read(slow));
    std::thread::sleep(Duration::from_millis(500));
    let mut child = s.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let got = within(
        Duration::from_secs(2),
        "read in flight when the daemon died",
        move || reader.join().unwrap(),
    );
    assert!(got.is_err(), "read of a dead daemon succeeded: {got:?}");
    let hello = s.p("hello");
    let err = within(
        Duration::from_secs(2),
        "stat after the daemon died",
        move || std::fs::metadata(hello),
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
}

#[test]
fn lazy_unmount_with_a_request_in_flight_ends_the_ring_cleanly() {
    let _uring = EnableUring::on();
    let mut s = Server::start("umount", "ring", 2, 1, "nopin");
    let slow = s.p("slow");
    let reader = std::thread::spawn(move || std::fs::read(slow));
    std::thread::sleep(Duration::from_millis(300));
    let (st, out) = s.finish(true, Duration::from_secs(SLOW_SECS + 10));
    assert!(st.success(), "server: {st:?}\n{out}");
    assert_eq!(reader.join().unwrap().unwrap(), b"slow\n");
}

#[test]
fn abort_with_a_request_in_flight_ends_the_ring_cleanly() {
    let _uring = EnableUring::on();
    let mut s = Server::start("abort", "ring", 1, 2, "nopin");
    let dev = std::fs::metadata(&s.mnt).unwrap().dev();
    let conn = libc::minor(dev);
    let slow = s.p("slow");
    let reader = std::thread::spawn(move || std::fs::read(slow));
    std::thread::sleep(Duration::from_millis(300));
    // The fuse control filesystem; mounted here (and unmounted after) if nobody has.
    let ctl = "/sys/fs/fuse/connections";
    let mounted_ctl = !std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(" fusectl ");
    if mounted_ctl {
        assert!(Command::new("mount")
            .args(["-t", "fusectl", "fusectl", ctl])
            .status()
            .unwrap()
            .success());
    }
    let aborted = std::fs::write(format!("{ctl}/{conn}/abort"), "1");
    if mounted_ctl {
        let _ = Command::new("umount").arg(ctl).status();
    }
    aborted.unwrap();
    let got = within(
        Duration::from_secs(2),
        "read in flight at abort",
        move || reader.join().unwrap(),
    );
    assert!(got.is_err(), "read after abort succeeded: {got:?}");
    let (st, out) = s.wait_exit(Duration::from_secs(SLOW_SECS + 10));
    assert!(st.success(), "server: {st:?}\n{out}");
}

/// Two threads on CPU 0 opening "gate" (their OPENs park until a WRITE opens the gate).
fn open_gate_twice_from_cpu0(s: &Server) -> Vec<std::thread::JoinHandle<std::io::Result<()>>> {
    (0..2)
        .map(|_| {
            let gate = s.p("gate");
            std::thread::spawn(move || {
                stratafs::sys::uring::pin_to_cpu(0).unwrap();
                std::fs::File::open(gate).map(drop)
            })
        })
        .collect()
}

/// A request answered later does not hold its queue: with 2 threads x 1 entry per queue, two
/// OPENs of "gate" from CPU 0 are parked (`ring::park`) until a WRITE opens the gate — a
/// WRITE from the same CPU, so its requests need a free entry of queue 0, which both
/// parked requests hold: the ring registers a spare entry for each. Before parking existed
/// the handler waited in its thread (as stratafs's waiting OPEN did) and this deadlocked.
#[test]
fn a_parked_request_leaves_its_queue_serving() {
    use stratafs::sys::uring::pin_to_cpu;
    let _uring = EnableUring::on();
    let mut s = Server::start("park", "ring", 2, 1, "pin");
    let openers = open_gate_twice_from_cpu0(&s);
    std::thread::sleep(Duration::from_millis(500));
    let big = s.p("big");
    let wrote = within(
        Duration::from_secs(5),
        "a write while two opens are parked",
        move || {
            pin_to_cpu(0).unwrap();
            std::fs::write(big, b"opens the gate")
        },
    );
    wrote.unwrap();
    for o in openers {
        let opened = within(Duration::from_secs(5), "a parked open", move || {
            o.join().unwrap()
        });
        opened.unwrap();
    }
    // The queue serves on with its spare entries, from both CPUs.
    for cpu in 0..2 {
        let hello = s.p("hello");
        let len = within(
            Duration::from_secs(2),
            "stat after the parked opens",
            move || {
                let _ = pin_to_cpu(cpu);
                std::fs::read(hello).map(|d| d.len())
            },
        );
        assert_eq!(len.unwrap(), 12);
    }
    let (st, out) = s.finish(false, Duration::from_secs(10));
    assert!(st.success(), "server: {st:?}\n{out}");
}

/// A request that came while every entry of its queue was busy waits in the kernel for the
/// next COMMIT_AND_FETCH of that queue (a REGISTER does not fetch it). Here both entries of
/// queue 0 are busy with OPENs of "gate" that will park when the WRITE that opens the gate
/// arrives: the WRITE is queued, the two OPENs park (spares registered), and nothing on the
/// queue commits. The ring's kick (one GETATTR of the mount root from CPU 0, served by a
/// spare and committed) fetches the WRITE. Without the kick (`nokick`) it stays queued and
/// the parked opens time out: the second half checks that the kick is what saves it.
#[test]
fn a_request_queued_behind_parked_entries_is_fetched_by_the_kick() {
    use stratafs::sys::uring::pin_to_cpu;
    let _uring = EnableUring::on();
    for kick in [true, false] {
        let mut s = Server::start("kick", "ring", 2, 1, if kick { "pin;kick" } else { "pin" });
        let openers = open_gate_twice_from_cpu0(&s);
        std::thread::sleep(Duration::from_millis(100));
        let big = s.p("big");
        let writer = std::thread::spawn(move || {
            pin_to_cpu(0).unwrap();
            std::fs::write(big, b"opens the gate")
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(writer.join().unwrap());
        });
        let wrote = rx.recv_timeout(Duration::from_secs(3));
        if kick {
            wrote
                .expect("write queued behind parked entries: still waiting after 3 s")
                .unwrap();
            for o in openers {
                let opened = within(Duration::from_secs(5), "a parked open", move || {
                    o.join().unwrap()
                });
                opened.unwrap();
            }
            let (st, out) = s.finish(false, Duration::from_secs(10));
            assert!(st.success(), "server: {st:?}\n{out}");
        } else {
            assert!(
                wrote.is_err(),
                "without the kick the queued write got through: {wrote:?}"
            );
            // The parked opens give up after 10 s (EIO); then the queue commits and the write
            // goes through. Let the server go.
            drop(s);
        }
    }
}

/// INTERRUPT of a blocked request. A signal to a process whose READ a ring thread is still
/// answering makes the kernel queue an INTERRUPT — on /dev/fuse, never on the ring — which
/// fuser answers ENOSYS (the kernel then stops sending them for this connection). The kernel
/// keeps waiting for the READ's answer: a caller with a handled signal gets its whole data, a
/// SIGKILLed one dies once the answer is in; the entry that held the request goes back to its
/// queue and the ring keeps serving; nothing reaches the filesystem over /dev/fuse.
#[test]
fn interrupt_of_a_blocked_request_leaves_the_ring_serving() {
    use std::os::unix::thread::JoinHandleExt;
    extern "C" fn noop(_: libc::c_int) {}
    let _uring = EnableUring::on();
    let mut s = Server::start("intr", "ring", 2, 1, "nopin");
    let (ring0, dev0) = s.counts();
    // A caught signal (no SA_RESTART) while the READ is in the handler.
    // SAFETY: installs a handler that does nothing, for a signal nothing else here uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let slow = s.p("slow");
    let t = Instant::now();
    let reader = std::thread::spawn(move || std::fs::read(slow));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: the thread is alive (its READ takes SLOW_SECS) and handles SIGUSR1.
    assert_eq!(
        unsafe { libc::pthread_kill(reader.as_pthread_t(), libc::SIGUSR1) },
        0
    );
    let got = within(
        Duration::from_secs(SLOW_SECS + 5),
        "read interrupted by a caught signal",
        move || reader.join().unwrap(),
    );
    assert_eq!(got.unwrap(), b"slow\n", "the interrupted read's data");
    assert!(t.elapsed() >= Duration::from_secs(SLOW_SECS) - Duration::from_millis(200));
    // SIGKILL of a process blocked in the same READ: it dies when the answer is in.
    let mut cat = Command::new("cat")
        .arg(s.p("slow"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cat.kill().unwrap();
    let st = within(
        Duration::from_secs(SLOW_SECS + 5),
        "SIGKILLed reader",
        move || cat.wait().unwrap(),
    );
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    // Every entry is back in the kernel: requests from both CPUs are answered at once.
    for cpu in 0..2 {
        let hello = s.p("hello");
        let len = within(
            Duration::from_secs(2),
            "stat after the interrupts",
            move || {
                let _ = stratafs::sys::uring::pin_to_cpu(cpu);
                std::fs::metadata(hello).map(|m| m.len())
            },
        );
        assert_eq!(len.unwrap(), 12);
    }
    let (ring1, dev1) = s.counts();
    assert!(
        ring1 > ring0,
        "no request over the ring ({ring0} → {ring1})"
    );
    assert_eq!(dev1, dev0, "requests reached the filesystem over /dev/fuse");
    let (st, out) = s.finish(false, Duration::from_secs(10));
    assert!(st.success(), "server: {st:?}\n{out}");
}

// ---------------------------------------------------------------- round-trip benchmark

/// One forced GETATTR per call: statx with AT_STATX_FORCE_SYNC ignores the attribute cache.
fn forced_stat(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: statx on an open fd with an empty path writes only into `buf`.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut buf,
        )
    };
    assert_eq!(rc, 0);
}

/// `n` forced stats split over `par` caller threads; returns µs per request (wall time / n).
fn bench_one(mode: &str, threads: usize, entries: u32, opts: &str, n: u32, par: u32) -> f64 {
    let mut s = Server::start("bench", mode, threads, entries, opts);
    let hello = s.p("hello");
    let f = std::fs::File::open(&hello).unwrap();
    for _ in 0..1000 {
        forced_stat(&f);
    }
    let before = s.counts();
    let t = Instant::now();
    let callers: Vec<_> = (0..par)
        .map(|_| {
            let f = std::fs::File::open(&hello).unwrap();
            std::thread::spawn(move || (0..n / par).for_each(|_| forced_stat(&f)))
        })
        .collect();
    callers.into_iter().for_each(|c| c.join().unwrap());
    let el = t.elapsed();
    let after = s.counts();
    let reqs = (after.0 - before.0) + (after.1 - before.1);
    assert!(
        reqs >= (n / par * par) as u64,
        "{reqs} requests for {n} forced stats"
    );
    drop(f);
    s.finish(false, Duration::from_secs(10));
    el.as_secs_f64() * 1e6 / (n / par * par) as f64
}

/// `BENCH_N=20000 BENCH_ROUNDS=3 BENCH_CALLERS=1 cargo test --release --test uring_transport --
/// --ignored bench --nocapture`
#[test]
#[ignore = "benchmark: run by hand"]
fn bench_round_trip() {
    let _uring = EnableUring::on();
    let n: u32 = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let par: u32 = std::env::var("BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let configs: &[(&str, usize, u32, &str)] = &[
        ("classic", 1, 1, "nopin"),
        ("classic", 2, 1, "nopin"),
        ("ring", 1, 1, "nopin"),
        ("ring", 1, 1, "nopin;coop"),
        ("ring", 1, 4, "nopin"),
        ("ring", 2, 1, "nopin"),
        ("ring", 2, 2, "nopin"),
        ("ring", 1, 1, "pin"),
        ("ring", 2, 1, "pin"),
    ];
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut results = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for (i, &(mode, t, d, opts)) in configs.iter().enumerate() {
            let us = bench_one(mode, t, d, opts, n, par);
            println!(
                "round {round} {mode:8} threads/queue={t} entries/thread={d} {opts:10}: {us:.2} us"
            );
            results[i].push(us);
        }
    }
    println!(
        "us per request, {rounds} interleaved rounds of {n} forced GETATTRs from {par} caller \
         thread(s): min / median (classic: threads = fuser reader threads)"
    );
    for (i, &(mode, t, d, opts)) in configs.iter().enumerate() {
        let r = &mut results[i];
        r.sort_by(f64::total_cmp);
        println!(
            "{mode:8} threads/queue={t} entries/thread={d} {opts:10}: {:.2} / {:.2}",
            r[0],
            r[r.len() / 2]
        );
    }
}

//! FUSE over io_uring: the queues, their threads and the request loop, below any dispatcher.
//!
//! Model (fs/fuse/dev_uring.c, Documentation/filesystems/fuse/fuse-io-uring.rst): the kernel
//! keeps one queue per *possible* CPU and puts a request on the queue of the CPU its caller
//! runs on; it switches the connection to the ring only once every queue has a registered
//! entry, and until then (and forever, if a REGISTER fails) requests use /dev/fuse. FORGET,
//! INTERRUPT and every notification stay on /dev/fuse, so a classic reader must keep running.
//!
//! Threads: a queue is served by `threads_per_queue` threads, each with its own io_uring
//! instance and `entries_per_thread` entries registered for the same qid (the kernel allows
//! it: `fuse_uring_register` only looks the queue up by qid and adds an entry; a request goes
//! to whichever registered entry of its queue is free, and its completion goes to the ring
//! that submitted that entry). A thread answers its requests one at a time, so a request that
//! blocks (a long copy-up) holds up the other *entries of its thread*, which the kernel may
//! already have filled: with one entry per thread a blocked thread holds nothing but its own
//! request, and the other threads of the queue keep serving.
//!
//! Lifetime: the loop ends when every entry has come back with ENOTCONN/ECONNABORTED/ENODEV/
//! ECANCELED, i.e. at unmount or abort of the connection, or when the daemon dies. Stopping
//! the threads earlier would strand the requests of their queue, so there is no stop call.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod decode;
pub mod encode;

use crate::sys::fuse_abi::{self, FUSE_MIN_READ_BUFFER};
pub use crate::sys::uring::TaskRun;
use crate::sys::uring::{self, UringQueue};

/// How many queues, threads and entries, and how big the payload buffers are.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// io_uring instances (threads) per queue.
    pub threads_per_queue: usize,
    /// Ring entries each thread registers (the queue depth is this × threads_per_queue).
    pub entries_per_thread: u32,
    /// Bytes of each payload buffer: at least [`payload_size`] of the negotiated INIT values,
    /// or REGISTER fails with EINVAL (and the connection falls back to /dev/fuse).
    pub payload_size: usize,
    /// Pin each queue's threads to the queue's CPU.
    pub pin: bool,
    /// How long REGISTER is retried while the kernel answers EAGAIN (INIT not finished).
    pub register_timeout: Duration,
    /// Completion modes to try in order (the first the kernel accepts is used).
    pub task_run: Vec<TaskRun>,
}

impl RingConfig {
    /// One thread per queue with `entries` entries, payload for this `max_write`/`max_pages`.
    pub fn new(max_write: u32, max_pages: u32) -> Self {
        RingConfig {
            threads_per_queue: 1,
            entries_per_thread: 1,
            payload_size: payload_size(max_write, max_pages),
            pin: false,
            register_timeout: Duration::from_secs(5),
            task_run: vec![TaskRun::Deferred, TaskRun::Cooperative, TaskRun::Plain],
        }
    }
}

/// The kernel's minimum payload buffer: `max(FUSE_MIN_READ_BUFFER, max_write, max_pages ×
/// PAGE_SIZE)` (`fuse_uring_create`), with `max_pages` as the kernel kept it after INIT.
pub fn payload_size(max_write: u32, max_pages: u32) -> usize {
    let page = uring::page_size();
    FUSE_MIN_READ_BUFFER
        .max(max_write as usize)
        .max(max_pages as usize * page)
}

/// Number of possible CPUs = number of kernel queues (`num_possible_cpus()`), from
/// `/sys/devices/system/cpu/possible` ("0-1", "0,2-5", ...).
pub fn possible_cpus() -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Parses a kernel CPU list ("0-3,5") into CPU numbers.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// One request as the ring delivered it.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the request extensions at the end of `payload`, in 8-byte units.
    pub total_extlen: u16,
    /// The queue (CPU) it came on.
    pub qid: u16,
    /// The per-opcode `fuse_*_in` struct, exactly as long as the kernel sent it (empty for
    /// LOOKUP, UNLINK, RMDIR, SYMLINK, REMOVEXATTR, STATFS, READLINK).
    pub op_in: &'a [u8],
    /// The other in-args back to back: names with their NUL, WRITE data, xattr values.
    pub payload: &'a [u8],
}

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReply {
    /// A positive errno.
    Error(i32),
    /// The out-args back to back (e.g. a `fuse_entry_out`, or READ data), at most the payload
    /// buffer's size.
    Data(Vec<u8>),
}

/// What a ring thread runs for each request: any `FnMut(&RawRequest) -> RawReply`, or a type
/// that also takes back the buffers of its [`RawReply::Data`] once they are copied into the
/// ring's payload (so a READ's buffer is reused, not cloned nor reallocated).
pub trait Handler: Send + 'static {
    /// Answers one request.
    fn handle(&mut self, r: &RawRequest<'_>) -> RawReply;
    /// The buffer of a `RawReply::Data`, after the ring copied it out.
    fn recycle(&mut self, _buf: Vec<u8>) {}
}

impl<F: FnMut(&RawRequest<'_>) -> RawReply + Send + 'static> Handler for F {
    fn handle(&mut self, r: &RawRequest<'_>) -> RawReply {
        self(r)
    }
}

/// What one ring thread did, returned by [`Ring::join`].
#[derive(Debug, Clone)]
pub struct ThreadStats {
    pub qid: u16,
    pub thread: usize,
    pub requests: u64,
    /// Requests whose numbers did not add up (answered EIO); 0 unless the kernel's layout
    /// differs from what `fuse_abi` documents.
    pub malformed: u64,
    pub task_run: TaskRun,
}

/// The running ring: one thread per (queue, thread index).
pub struct Ring {
    threads: Vec<JoinHandle<io::Result<ThreadStats>>>,
}

impl Ring {
    /// Registers every queue's entries on the `/dev/fuse` connection `fuse` (INIT must be done
    /// and must have negotiated `FUSE_OVER_IO_URING`) and starts serving. `make_handler(qid,
    /// thread)` builds each thread's handler. Returns once every entry is registered, or the
    /// first registration error (the kernel then serves the connection over /dev/fuse).
    pub fn start<F, H>(fuse: BorrowedFd<'_>, cfg: &RingConfig, make_handler: F) -> io::Result<Ring>
    where
        F: Fn(u16, usize) -> H,
        H: Handler,
    {
        let cpus = possible_cpus()?;
        let (tx, rx) = mpsc::channel::<io::Result<()>>();
        let mut threads = Vec::new();
        for (qid, &cpu) in cpus.iter().enumerate() {
            for t in 0..cfg.threads_per_queue.max(1) {
                let fd = fuse.try_clone_to_owned()?;
                let (cfg, tx, handler) = (cfg.clone(), tx.clone(), make_handler(qid as u16, t));
                let name = format!("ring-q{qid}-t{t}");
                let spawned = std::thread::Builder::new().name(name).spawn(move || {
                    let pin = if cfg.pin { Some(cpu) } else { None };
                    serve_thread(fd, qid as u16, t, &cfg, pin, tx, handler)
                })?;
                threads.push(spawned);
            }
        }
        drop(tx);
        for _ in 0..threads.len() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::other(
                        "fuse ring thread ended before registering",
                    ))
                }
            }
        }
        Ok(Ring { threads })
    }

    /// Waits for every thread to end (after unmount/abort) and returns their statistics.
    pub fn join(self) -> io::Result<Vec<ThreadStats>> {
        let mut stats = Vec::new();
        for t in self.threads {
            stats.push(
                t.join()
                    .map_err(|_| io::Error::other("fuse ring thread panicked"))??,
            );
        }
        Ok(stats)
    }
}

fn serve_thread<H>(
    fd: std::os::fd::OwnedFd,
    qid: u16,
    thread: usize,
    cfg: &RingConfig,
    pin: Option<usize>,
    ready: mpsc::Sender<io::Result<()>>,
    mut handler: H,
) -> io::Result<ThreadStats>
where
    H: Handler,
{
    use std::os::fd::AsFd;
    if let Some(cpu) = pin {
        if let Err(e) = uring::pin_to_cpu(cpu) {
            log::warn!("fuse ring q{qid}: cannot pin to cpu {cpu}: {e}");
        }
    }
    let registered = UringQueue::new(
        fd.as_fd(),
        cfg.entries_per_thread,
        cfg.payload_size,
        &cfg.task_run,
    )
    .and_then(|mut q| register_all(&mut q, qid, cfg.register_timeout).map(|()| q));
    let mut queue = match registered {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("fuse ring q{qid}: {e}"),
            )));
            return Err(e);
        }
    };
    drop(fd);
    let (requests, malformed) = serve_loop(&mut queue, qid, &mut handler)?;
    Ok(ThreadStats {
        qid,
        thread,
        requests,
        malformed,
        task_run: queue.task_run,
    })
}

/// Registers every entry; a REGISTER that fails comes back at once as a CQE (success is
/// silent: the command stays queued until a request arrives). EAGAIN (INIT not done) is
/// retried until `timeout`.
fn register_all(q: &mut UringQueue, qid: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<usize> = (0..q.len()).collect();
    while !pending.is_empty() {
        for &idx in &pending {
            q.push_register(idx, qid)?;
        }
        q.submit_and_wait(0)?;
        pending.clear();
        while let Some((idx, res)) = q.next_completion() {
            if res == -libc::EAGAIN && Instant::now() < deadline {
                pending.push(idx);
            } else if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            } else {
                // A request arrived already: not possible before every queue registered,
                // but answer it through the loop rather than drop it.
                return Err(io::Error::other(
                    "fuse ring: unexpected completion at REGISTER",
                ));
            }
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Waits for requests, answers them, commits and fetches, until every entry is gone.
fn serve_loop<H>(q: &mut UringQueue, qid: u16, handler: &mut H) -> io::Result<(u64, u64)>
where
    H: Handler,
{
    let (mut requests, mut malformed) = (0u64, 0u64);
    while q.live() > 0 {
        if q.in_kernel() > 0 {
            q.submit_and_wait(1)?;
        }
        while let Some((idx, res)) = q.next_completion() {
            if res < 0 {
                match -res {
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => {}
                    e => log::warn!("fuse ring q{qid}: entry {idx} failed: errno {e}"),
                }
                q.mark_done(idx);
                continue;
            }
            requests += 1;
            let (commit_id, ok) = answer(q, idx, qid, handler);
            malformed += u64::from(!ok);
            q.push_commit(idx, qid, commit_id)?;
        }
        if q.in_kernel() == 0 && q.live() > 0 {
            // Only possible if a push failed; nothing can complete any more.
            return Err(io::Error::other("fuse ring: no entry left in the kernel"));
        }
    }
    Ok((requests, malformed))
}

/// Decodes entry `idx`, calls the handler, writes the reply into the entry. Returns the
/// commit id (the request's unique) and whether the request decoded.
fn answer<H>(q: &mut UringQueue, idx: usize, qid: u16, handler: &mut H) -> (u64, bool)
where
    H: Handler,
{
    let Some((header, payload)) = q.buffers(idx) else {
        return (0, false);
    };
    let ent: fuse_abi::FuseUringEntInOut =
        fuse_abi::read(&header[fuse_abi::RING_ENT_IN_OUT_OFFSET..]).unwrap_or_default();
    let mut ok = true;
    let (unique, reply) = match fuse_abi::split_ring_request(header, payload) {
        Some(r) => {
            let raw = RawRequest {
                opcode: r.header.opcode,
                unique: r.header.unique,
                nodeid: r.header.nodeid,
                uid: r.header.uid,
                gid: r.header.gid,
                pid: r.header.pid,
                total_extlen: r.header.total_extlen,
                qid,
                op_in: r.op_in,
                payload: r.payload,
            };
            (r.header.unique, handler.handle(&raw))
        }
        None => {
            log::warn!("fuse ring q{qid}: malformed request in entry {idx}");
            ok = false;
            (ent.commit_id, RawReply::Error(libc::EIO))
        }
    };
    let (error, len) = match reply {
        RawReply::Data(data) if data.len() <= payload.len() => {
            payload[..data.len()].copy_from_slice(&data);
            let len = data.len() as u32;
            handler.recycle(data);
            (0, len)
        }
        RawReply::Data(data) => {
            handler.recycle(data);
            (-libc::EIO, 0)
        }
        RawReply::Error(e) if (1..512).contains(&e) => (-e, 0),
        RawReply::Error(_) => (-libc::EIO, 0),
    };
    let _ = fuse_abi::put_ring_reply(header, unique, error, len);
    (ent.commit_id, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn payload_sizes() {
        assert_eq!(payload_size(4096, 1), FUSE_MIN_READ_BUFFER);
        assert_eq!(payload_size(1 << 20, 256), 1 << 20);
        assert_eq!(payload_size(128 << 10, 256), 1 << 20);
    }
}

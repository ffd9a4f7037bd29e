//! One io_uring instance serving FUSE ring entries: the unsafe half of
//! `transport::ring`. It owns the entries' buffers, builds the `IORING_OP_URING_CMD` SQEs
//! (REGISTER, COMMIT_AND_FETCH) and hands out a buffer only while the kernel does not own it.
//!
//! Ownership rule that makes the buffers sound: from the moment an entry's SQE is pushed
//! until its CQE is reaped, the kernel may write the entry's header and payload buffers at
//! any time (from task work run in this thread); we keep no reference to them meanwhile
//! (`EntryState::Kernel`) and [`UringQueue::buffers`] refuses such an entry. Buffers are freed
//! only when every entry is back (`EntryState::User`/`Done`); if the queue is dropped with an
//! entry still in the kernel, its buffers are leaked on purpose, since the kernel may still
//! write into them.
//!
//! SQE facts (kernel `io_uring_sqe`, fs/fuse/dev_uring.c): the ring must be created with
//! `IORING_SETUP_SQE128` (the command is refused with EINVAL otherwise), the 80-byte command
//! area starts with `fuse_uring_cmd_req`, `sqe->addr` points at an array of two iovecs
//! (header, payload) and `sqe->len` must be 2. The `io-uring` crate's `UringCmd80` has no
//! setter for `len`, so we patch it at its uapi offset (24) in [`uring_cmd`].

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::fuse_abi::{
    bytes_of, FuseUringCmdReq, FuseUringReqHeader, FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
    FUSE_IO_URING_CMD_REGISTER,
};

/// Which completion-work mode the ring got (see [`UringQueue::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions are produced only while this thread
    /// waits in `io_uring_enter`; no interruption of the handler by task work.
    Deferred,
    /// `COOP_TASKRUN`: task work runs at the next kernel entry, without an IPI.
    Cooperative,
    /// No flag (kernels without the above).
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// Not submitted yet, or its CQE came back: the buffers are ours.
    User,
    /// An SQE for it is in flight: the kernel owns the buffers.
    Kernel,
    /// Its CQE said the connection is gone: never submitted again.
    Done,
}

struct EntryBufs {
    header: *mut u8,
    payload: *mut u8,
    /// iov[0] = header, iov[1] = payload; read by the kernel at REGISTER.
    iov: Box<[libc::iovec; 2]>,
    state: EntryState,
}

impl EntryBufs {
    fn new(payload_size: usize) -> EntryBufs {
        let header = alloc(HEADER_SIZE);
        let payload = alloc(payload_size);
        let iov = Box::new([
            libc::iovec {
                iov_base: header.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: payload.cast(),
                iov_len: payload_size,
            },
        ]);
        EntryBufs {
            header,
            payload,
            iov,
            state: EntryState::User,
        }
    }
}

/// Pushes one SQE, submitting what is queued first if the submission ring is full.
///
/// # Safety
/// Whatever `sqe` points at must stay valid until its completion is reaped.
unsafe fn push_sqe(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: &squeue::Entry128,
) -> io::Result<()> {
    if ring.submission().is_full() {
        ring.submit()?;
    }
    ring.submission()
        .push(sqe)
        .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
}

/// Signals a ring's wake-up eventfd ([`UringQueue::arm_wake`]).
pub fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we hold.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// An io_uring instance with `n` FUSE ring entries registered (or to be registered) on one
/// `/dev/fuse` connection.
pub struct UringQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fuse: OwnedFd,
    entries: Vec<EntryBufs>,
    payload_size: usize,
    pub task_run: TaskRun,
    /// The wake-up eventfd ([`Self::arm_wake`]) and the 8 bytes its read lands in.
    wake: Option<Wake>,
}

/// An eventfd whose read is kept in flight on the ring, so that another thread can wake the
/// ring's thread out of `io_uring_enter` (a reply that was decided off the ring thread).
struct Wake {
    fd: std::sync::Arc<OwnedFd>,
    buf: *mut u8,
    in_flight: bool,
}

/// The completion's `user_data` of the wake-up read (entry indexes are small).
pub const WAKE: u64 = u64::MAX;

/// Fewest SQEs (and half the CQEs) a ring gets: a loop pass can queue a commit per entry,
/// a REGISTER of a spare entry and the wake-up read.
const MIN_SQ: u32 = 16;

// The raw pointers are owned allocations moved along with the queue; nothing else aliases
// them in userspace.
unsafe impl Send for UringQueue {}

const HEADER_SIZE: usize = size_of::<FuseUringReqHeader>();

fn alloc(len: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>()
}

/// # Safety
/// `ptr` must come from `alloc(len)` and not be freed yet.
unsafe fn free(ptr: *mut u8, len: usize) {
    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
}

/// Whether this process may create an SQE128 io_uring at all (`kernel.io_uring_disabled`,
/// seccomp, a kernel without io_uring): a ring of one entry, dropped at once.
pub fn probe() -> io::Result<()> {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build(1)
        .map(drop)
}

impl UringQueue {
    /// Creates the ring (SQE128, `entries` SQEs and at least twice as many CQEs) and the
    /// buffers of `entries` ring entries with payloads of `payload_size` bytes. Tries the
    /// task-run `modes` in order (EINVAL = not supported: next). Must be used by the thread
    /// that created it (SINGLE_ISSUER with `Deferred`).
    pub fn new(
        fuse: BorrowedFd<'_>,
        entries: u32,
        payload_size: usize,
        modes: &[TaskRun],
    ) -> io::Result<Self> {
        let n = entries.max(1);
        let sq = n.next_power_of_two().max(MIN_SQ);
        let try_build = |mode: TaskRun| {
            let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
            b.setup_cqsize(sq * 2);
            match mode {
                TaskRun::Deferred => {
                    b.setup_single_issuer().setup_defer_taskrun();
                }
                TaskRun::Cooperative => {
                    b.setup_coop_taskrun();
                }
                TaskRun::Plain => {}
            }
            b.build(sq)
        };
        let mut last = io::Error::from_raw_os_error(libc::EINVAL);
        for &mode in modes {
            match try_build(mode) {
                Ok(ring) => return Self::with_ring(ring, mode, fuse, n, payload_size),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn with_ring(
        ring: IoUring<squeue::Entry128, cqueue::Entry>,
        task_run: TaskRun,
        fuse: BorrowedFd<'_>,
        n: u32,
        payload_size: usize,
    ) -> io::Result<Self> {
        let fuse = fuse.try_clone_to_owned()?;
        let entries = (0..n).map(|_| EntryBufs::new(payload_size)).collect();
        Ok(UringQueue {
            ring,
            fuse,
            entries,
            payload_size,
            task_run,
            wake: None,
        })
    }

    /// One more entry (its buffers; REGISTER it with [`Self::push_register`]): a queue whose
    /// entry holds a request answered later keeps one free for the requests that follow.
    pub fn add_entry(&mut self) -> usize {
        self.entries.push(EntryBufs::new(self.payload_size));
        self.entries.len() - 1
    }

    /// Creates the wake-up eventfd (once) and queues its read; returns the eventfd, which
    /// other threads signal with [`wake`]. Its completion comes back with `user_data`
    /// [`WAKE`]; arm it again after each.
    pub fn arm_wake(&mut self) -> io::Result<std::sync::Arc<OwnedFd>> {
        if self.wake.is_none() {
            // SAFETY: eventfd(2) with valid flags; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor that nothing else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            self.wake = Some(Wake {
                fd: std::sync::Arc::new(fd),
                buf: alloc(8),
                in_flight: false,
            });
        }
        let w = self.wake.as_mut().ok_or_else(einval)?;
        if !w.in_flight {
            let sqe = opcode::Read::new(types::Fd(w.fd.as_raw_fd()), w.buf, 8)
                .build()
                .user_data(WAKE);
            let sqe: squeue::Entry128 = sqe.into();
            // SAFETY: the read lands in `w.buf`, 8 bytes freed only in Drop and leaked there
            // if the read is still in flight.
            unsafe { push_sqe(&mut self.ring, &sqe) }?;
            w.in_flight = true;
        }
        Ok(w.fd.clone())
    }

    /// Whether the wake-up read is in flight (the thread may wait on it alone).
    pub fn wake_armed(&self) -> bool {
        self.wake.as_ref().is_some_and(|w| w.in_flight)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn payload_size(&self) -> usize {
        self.payload_size
    }

    /// Entries whose SQE is in flight.
    pub fn in_kernel(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Kernel)
            .count()
    }

    /// Queues `FUSE_IO_URING_CMD_REGISTER` for entry `idx` on queue `qid` (sent at the next
    /// [`Self::submit_and_wait`]).
    pub fn push_register(&mut self, idx: usize, qid: u16) -> io::Result<()> {
        self.push_cmd(idx, FUSE_IO_URING_CMD_REGISTER, qid, 0)
    }

    /// Queues `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` for entry `idx`: the reply already written
    /// into its buffers is committed for request `commit_id` and the entry waits for the next.
    pub fn push_commit(&mut self, idx: usize, qid: u16, commit_id: u64) -> io::Result<()> {
        self.push_cmd(idx, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, qid, commit_id)
    }

    fn push_cmd(&mut self, idx: usize, cmd_op: u32, qid: u16, commit_id: u64) -> io::Result<()> {
        let ent = self.entries.get_mut(idx).ok_or_else(einval)?;
        if ent.state != EntryState::User {
            return Err(einval());
        }
        let req = FuseUringCmdReq {
            qid,
            commit_id,
            ..Default::default()
        };
        let sqe = uring_cmd(self.fuse.as_raw_fd(), cmd_op, &req, ent.iov.as_ptr() as u64)
            .user_data(idx as u64);
        // SAFETY: the SQE points at `ent.iov` and, through it, at the entry's buffers; all
        // stay allocated until every entry is back (see Drop), and we mark the entry as
        // owned by the kernel before anything can complete it.
        unsafe { push_sqe(&mut self.ring, &sqe) }?;
        ent.state = EntryState::Kernel;
        Ok(())
    }

    /// Submits the queued SQEs and waits for at least `want` completions. EINTR is retried.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        loop {
            match self.ring.submit_and_wait(want) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // A full CQ ring (EBUSY) just means: reap first.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                r => return r,
            }
        }
    }

    /// Takes the next completion: `(entry, result)`. The entry's buffers are ours again.
    /// A negative result `-ENOTCONN`/`-ECONNABORTED`/`-ENODEV`/`-ECANCELED` marks the entry
    /// done (the caller decides; see [`Self::mark_done`]).
    pub fn next_completion(&mut self) -> Option<(usize, i32)> {
        let cqe = self.ring.completion().next()?;
        if cqe.user_data() == WAKE {
            if let Some(w) = self.wake.as_mut() {
                w.in_flight = false;
            }
            return Some((WAKE as usize, cqe.result()));
        }
        let idx = cqe.user_data() as usize;
        if let Some(ent) = self.entries.get_mut(idx) {
            if ent.state == EntryState::Kernel {
                ent.state = EntryState::User;
            }
        }
        Some((idx, cqe.result()))
    }

    /// Marks an entry as finished for good (connection gone).
    pub fn mark_done(&mut self, idx: usize) {
        if let Some(ent) = self.entries.get_mut(idx) {
            if ent.state == EntryState::User {
                ent.state = EntryState::Done;
            }
        }
    }

    /// Entries not finished for good.
    pub fn live(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state != EntryState::Done)
            .count()
    }

    /// The header buffer (288 bytes) and payload buffer of entry `idx`, if the kernel does not
    /// own them now.
    pub fn buffers(&mut self, idx: usize) -> Option<(&mut [u8], &mut [u8])> {
        let ent = self.entries.get(idx)?;
        if ent.state == EntryState::Kernel {
            return None;
        }
        // SAFETY: both allocations are live (freed only in Drop), of these lengths, distinct,
        // and the kernel does not write them while the entry is not in flight (module
        // comment); `&mut self` makes this the only userspace reference.
        unsafe {
            Some((
                std::slice::from_raw_parts_mut(ent.header, HEADER_SIZE),
                std::slice::from_raw_parts_mut(ent.payload, self.payload_size),
            ))
        }
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        if let Some(w) = &self.wake {
            if !w.in_flight {
                // SAFETY: allocated by alloc(8) in arm_wake, no read in flight, freed once.
                unsafe { free(w.buf, 8) };
            }
        }
        let all_back = self.entries.iter().all(|e| e.state != EntryState::Kernel);
        if !all_back {
            log::warn!(
                "fuse ring: dropping a queue with entries in the kernel; leaking their buffers"
            );
            return;
        }
        for ent in &self.entries {
            // SAFETY: allocated by alloc() with these lengths in with_ring, freed once here,
            // and no SQE refers to them any more (all entries are back).
            unsafe {
                free(ent.header, HEADER_SIZE);
                free(ent.payload, self.payload_size);
            }
        }
    }
}

/// The system page size (`sysconf(_SC_PAGESIZE)`), 4096 if unknown.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Pins the calling thread to one CPU (`sched_setaffinity`).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * size_of::<libc::cpu_set_t>() {
        return Err(einval());
    }
    // SAFETY: cpu is below CPU_SETSIZE (checked); the set is ours.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set pointer and size are valid.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Offset of `len` in the kernel's `struct io_uring_sqe` (u8 opcode, u8 flags, u16 ioprio,
/// s32 fd, u64 off, u64 addr, then u32 len).
const SQE_LEN_OFFSET: usize = 24;
const _: () = assert!(size_of::<squeue::Entry128>() == 128);

/// Builds the SQE128 of a FUSE uring command: fd, cmd_op, `fuse_uring_cmd_req` at the start
/// of the 80-byte command area, `addr` = the iovec array, `len` = 2 iovecs.
fn uring_cmd(fd: i32, cmd_op: u32, req: &FuseUringCmdReq, iov: u64) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[..size_of::<FuseUringCmdReq>()].copy_from_slice(bytes_of(req));
    let mut sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(iov))
        .build();
    let base = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
    // SAFETY: Entry128 is repr(C) (a 64-byte io_uring_sqe then 64 command bytes, asserted
    // 128 bytes above), so bytes 24..28 are the sqe's `len` field inside the value we own.
    unsafe { base.add(SQE_LEN_OFFSET).cast::<u32>().write_unaligned(2) };
    sqe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_len_is_patched_at_the_uapi_offset() {
        let req = FuseUringCmdReq {
            qid: 3,
            commit_id: 42,
            ..Default::default()
        };
        let sqe = uring_cmd(7, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, &req, 0x1000);
        // SAFETY: reading the bytes of a 128-byte repr(C) value we own.
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(raw[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 7);
        assert_eq!(u64::from_ne_bytes(raw[16..24].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2);
        // cmd_op shares the 8 bytes at offset 8 (off / cmd_op in the uapi union).
        assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 2);
        // The command area starts at byte 48 of the SQE.
        assert_eq!(u64::from_ne_bytes(raw[56..64].try_into().unwrap()), 42);
        assert_eq!(u16::from_ne_bytes(raw[64..66].try_into().unwrap()), 3);
    }
}

//! The FUSE kernel ABI (protocol 7.45, Linux 6.18) as `#[repr(C)]` structs, and the safe
//! decode/encode helpers that turn them into and out of byte slices.
//!
//! Source of every layout: the kernel's `include/uapi/linux/fuse.h` (7.45). Each struct carries
//! two compile-time checks: its size equals the kernel's, and equals the sum of its fields, so
//! no struct has hidden padding — which is what makes reading one from arbitrary bytes and
//! viewing one as bytes sound (every field is an integer: every bit pattern is valid).
//!
//! # How a request sits in a FUSE-over-io_uring entry (read from fs/fuse/dev_uring.c, 6.18)
//! Each ring entry registers two buffers (the two iovecs at `sqe->addr`, `sqe->len == 2`,
//! `fuse_uring_get_iovec_from_sqe`): a header buffer of at least
//! `size_of::<FuseUringReqHeader>()` (288 bytes) and a payload buffer of at least
//! `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE)` (`fuse_uring_create`,
//! `fuse_uring_create_ring_ent` rejects a smaller one with EINVAL).
//! - `in_out` (128 bytes) gets the `fuse_in_header` (`fuse_uring_copy_to_ring`:
//!   `copy_to_user(&ent->headers->in_out, &req->in.h, sizeof(req->in.h))`).
//! - `op_in` (128 bytes) gets `in_args[0]` — the per-opcode struct — and only that
//!   (`fuse_uring_args_to_ring`: "the first argument is the per op header"). Since 6.14 every
//!   opcode has an `in_args[0]`; opcodes with no struct (LOOKUP, UNLINK, RMDIR, SYMLINK,
//!   REMOVEXATTR, NOTIFY_REPLY) have a zero-sized one (`fuse_set_zero_arg0`), so nothing is
//!   written and **op_in keeps the bytes of an earlier request**: never read past the struct the
//!   opcode defines. Opcodes with no arguments at all (STATFS, READLINK, DESTROY) leave it too.
//! - The payload buffer gets every other in-arg, back to back from offset 0 with no alignment
//!   (`fuse_copy_args` on an iov_iter over `ent->payload`): LOOKUP/UNLINK/RMDIR/MKDIR/MKNOD/
//!   CREATE: `name\0`; SYMLINK: `name\0` then the target (its NUL included); RENAME2:
//!   `old\0new\0`; LINK: `newname\0`; SETXATTR: `name\0` then the value; GETXATTR/
//!   REMOVEXATTR: `name\0`; WRITE: the data (the `fuse_write_in` is in op_in). Request
//!   extensions (security context, supplementary groups; `in_header.total_extlen` counts them
//!   in 8-byte units) are the last in-arg, so they come last in the payload.
//! - `ring_ent_in_out.payload_sz` says how many payload bytes the kernel wrote
//!   (`ent_in_out.payload_sz = cs.ring.copied_sz`) and `commit_id` is the request's `unique`.
//! - `in_header.len` is still `sizeof(fuse_in_header) + sum of all in-args` (set by the
//!   common send path before the transport is chosen), so the size of the op_in struct is
//!   `len - 40 - payload_sz`; [`split_ring_request`] uses that.
//!
//! # How a reply must be laid out
//! - `in_out` gets the `fuse_out_header` (`fuse_uring_commit`: `copy_from_user(&req->out.h,
//!   &ent->headers->in_out, ...)`). Its `unique` must equal the request's (else ENOENT and the
//!   request fails), `unique == 0` (a notification) is refused with EINVAL: notifications go
//!   on /dev/fuse. Its `len` is not checked on this path; we still set it.
//! - An error is `out_header.error = -errno` (in `-511..=-1`); the payload is then ignored.
//! - Otherwise **all** out-args go to the payload buffer from offset 0 — none to op_in
//!   (`fuse_uring_copy_from_ring` → `fuse_copy_out_args`, which for io_uring counts no out
//!   header: "args is payload only") — and `ring_ent_in_out.payload_sz` must be their exact
//!   total; it may be smaller only for variable-size replies (READ, READDIR, READLINK,
//!   GETXATTR/LISTXATTR data), never larger (EINVAL → the request fails with EIO).
//! - The reply is sent by `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` whose `fuse_uring_cmd_req`
//!   carries `commit_id` = the request's unique (looked up with `fuse_request_find` in that
//!   queue's processing list) and the same `qid` the entry was registered with.

use std::mem::size_of;

/// A kernel ABI struct: `#[repr(C)]`, integer fields only, no padding (checked at compile
/// time by [`abi_struct!`]).
///
/// # Safety
/// Implement only through `abi_struct!`, which proves the two properties above.
pub unsafe trait Abi: Copy + Default + 'static {}

/// Reads a `T` from the start of `bytes` (unaligned); `None` if `bytes` is too short.
pub fn read<T: Abi>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain integers without padding (trait Abi), so any byte
    // pattern is a valid T; read_unaligned copes with any alignment of `bytes`.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads a `T` and returns it with the bytes that follow it.
pub fn read_prefix<T: Abi>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let value = read::<T>(bytes)?;
    Some((value, &bytes[size_of::<T>()..]))
}

/// The bytes of `value`, exactly as the kernel lays the struct out.
pub fn bytes_of<T: Abi>(value: &T) -> &[u8] {
    // SAFETY: T has no padding (trait Abi), so all size_of::<T>() bytes are initialised; the
    // slice borrows `value` and cannot outlive it.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Appends the bytes of `value` to `out`.
pub fn push<T: Abi>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(bytes_of(value));
}

/// Writes `value` at the start of `dst`; `None` if `dst` is too short.
pub fn write<T: Abi>(dst: &mut [u8], value: &T) -> Option<()> {
    let src = bytes_of(value);
    dst.get_mut(..src.len())?.copy_from_slice(src);
    Some(())
}

/// Splits a NUL-terminated name off the front of `bytes`: `(name without NUL, rest)`.
/// `None` if there is no NUL.
pub fn split_name(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// Defines `#[repr(C)]` ABI structs with a size check against the kernel's and a no-padding
/// check (size == sum of the field sizes).
macro_rules! abi_struct {
    ($( $(#[$m:meta])* pub struct $name:ident = $size:literal { $(pub $f:ident: $t:ty,)* } )*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name { $(pub $f: $t,)* }
        const _: () = assert!(size_of::<$name>() == $size);
        const _: () = assert!(size_of::<$name>() == 0 $(+ size_of::<$t>())*);
        // SAFETY: the two assertions above: integer fields only, no padding.
        unsafe impl Abi for $name {}
    )*};
}

// Byte arrays larger than 32 have no Default impl; wrap them.
/// 128 opaque bytes (the `in_out` and `op_in` areas of the ring header).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Area128(pub [u8; 128]);
impl Default for Area128 {
    fn default() -> Self {
        Area128([0; 128])
    }
}
impl std::fmt::Debug for Area128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Area128")
    }
}

abi_struct! {
    /// Every request starts with this (in `in_out` on the ring).
    pub struct FuseInHeader = 40 {
        pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64,
        pub uid: u32, pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16,
    }
    /// Every reply starts with this (in `in_out` on the ring).
    pub struct FuseOutHeader = 16 { pub len: u32, pub error: i32, pub unique: u64, }
    pub struct FuseAttr = 88 {
        pub ino: u64, pub size: u64, pub blocks: u64, pub atime: u64, pub mtime: u64,
        pub ctime: u64, pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32,
        pub mode: u32, pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32,
        pub blksize: u32, pub flags: u32,
    }
    pub struct FuseKstatfs = 80 {
        pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64,
        pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32,
        pub spare: [u32; 6],
    }
    pub struct FuseEntryOut = 128 {
        pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64,
        pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: FuseAttr,
    }
    pub struct FuseForgetIn = 8 { pub nlookup: u64, }
    pub struct FuseForgetOne = 16 { pub nodeid: u64, pub nlookup: u64, }
    /// Followed by `count` × [`FuseForgetOne`].
    pub struct FuseBatchForgetIn = 8 { pub count: u32, pub dummy: u32, }
    pub struct FuseGetattrIn = 16 { pub getattr_flags: u32, pub dummy: u32, pub fh: u64, }
    pub struct FuseAttrOut = 104 {
        pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: FuseAttr,
    }
    /// Followed by `name\0`.
    pub struct FuseMknodIn = 16 { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32, }
    /// Followed by `name\0`.
    pub struct FuseMkdirIn = 8 { pub mode: u32, pub umask: u32, }
    /// Followed by `oldname\0newname\0`.
    pub struct FuseRename2In = 16 { pub newdir: u64, pub flags: u32, pub padding: u32, }
    /// Followed by `newname\0`.
    pub struct FuseLinkIn = 8 { pub oldnodeid: u64, }
    pub struct FuseSetattrIn = 88 {
        pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64, pub atimensec: u32,
        pub mtimensec: u32, pub ctimensec: u32, pub mode: u32, pub unused4: u32,
        pub uid: u32, pub gid: u32, pub unused5: u32,
    }
    /// OPEN and OPENDIR.
    pub struct FuseOpenIn = 8 { pub flags: u32, pub open_flags: u32, }
    /// Followed by `name\0`.
    pub struct FuseCreateIn = 16 { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32, }
    /// OPEN/OPENDIR reply; CREATE replies [`FuseEntryOut`] then this.
    pub struct FuseOpenOut = 16 { pub fh: u64, pub open_flags: u32, pub backing_id: i32, }
    /// RELEASE and RELEASEDIR.
    pub struct FuseReleaseIn = 24 {
        pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64,
    }
    pub struct FuseFlushIn = 24 { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64, }
    /// READ and READDIR(PLUS); the reply is the data alone.
    pub struct FuseReadIn = 40 {
        pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    /// Followed by the data (in the ring payload).
    pub struct FuseWriteIn = 40 {
        pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    pub struct FuseWriteOut = 8 { pub size: u32, pub padding: u32, }
    pub struct FuseStatfsOut = 80 { pub st: FuseKstatfs, }
    /// FSYNC and FSYNCDIR.
    pub struct FuseFsyncIn = 16 { pub fh: u64, pub fsync_flags: u32, pub padding: u32, }
    /// The extended form, sent when INIT negotiated `FUSE_SETXATTR_EXT`; otherwise only the
    /// first [`FUSE_COMPAT_SETXATTR_IN_SIZE`] bytes (size, flags) are sent. Followed by
    /// `name\0` and the value.
    pub struct FuseSetxattrIn = 16 {
        pub size: u32, pub flags: u32, pub setxattr_flags: u32, pub padding: u32,
    }
    /// GETXATTR (followed by `name\0`) and LISTXATTR.
    pub struct FuseGetxattrIn = 8 { pub size: u32, pub padding: u32, }
    /// The reply when the request's size was 0 (a size query).
    pub struct FuseGetxattrOut = 8 { pub size: u32, pub padding: u32, }
    pub struct FuseAccessIn = 8 { pub mask: u32, pub padding: u32, }
    pub struct FuseInterruptIn = 8 { pub unique: u64, }
    pub struct FuseFallocateIn = 32 {
        pub fh: u64, pub offset: u64, pub length: u64, pub mode: u32, pub padding: u32,
    }
    pub struct FuseLseekIn = 24 { pub fh: u64, pub offset: u64, pub whence: u32, pub padding: u32, }
    pub struct FuseLseekOut = 8 { pub offset: u64, }
    /// IOCTL, followed by `in_size` bytes of in-data.
    pub struct FuseIoctlIn = 32 {
        pub fh: u64, pub flags: u32, pub cmd: u32, pub arg: u64, pub in_size: u32,
        pub out_size: u32,
    }
    /// The IOCTL reply, followed by the out-data.
    pub struct FuseIoctlOut = 16 {
        pub result: i32, pub flags: u32, pub in_iovs: u32, pub out_iovs: u32,
    }
    /// COPY_FILE_RANGE (reply [`FuseWriteOut`]) and COPY_FILE_RANGE_64 (reply
    /// [`FuseCopyFileRangeOut`]).
    pub struct FuseCopyFileRangeIn = 56 {
        pub fh_in: u64, pub off_in: u64, pub nodeid_out: u64, pub fh_out: u64,
        pub off_out: u64, pub len: u64, pub flags: u64,
    }
    pub struct FuseCopyFileRangeOut = 8 { pub bytes_copied: u64, }
    /// READDIR record head; followed by `namelen` name bytes, padded to 8.
    pub struct FuseDirent = 24 { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32, }
    /// READDIRPLUS record head; followed by `dirent.namelen` name bytes, padded to 8.
    pub struct FuseDirentplus = 152 { pub entry_out: FuseEntryOut, pub dirent: FuseDirent, }

    /// Trailer of the ring header buffer, written by the kernel with the request and read
    /// back with the reply.
    pub struct FuseUringEntInOut = 32 {
        pub flags: u64, pub commit_id: u64, pub payload_sz: u32, pub padding: u32,
        pub reserved: u64,
    }
    /// The header buffer of one ring entry (iov[0] of REGISTER).
    pub struct FuseUringReqHeader = 288 {
        pub in_out: Area128, pub op_in: Area128, pub ring_ent_in_out: FuseUringEntInOut,
    }
    /// The first 24 of the 80 command bytes of an SQE128 `IORING_OP_URING_CMD`.
    pub struct FuseUringCmdReq = 24 {
        pub flags: u64, pub commit_id: u64, pub qid: u16, pub padding: [u8; 6],
    }
}

/// Size of `fuse_setxattr_in` without `FUSE_SETXATTR_EXT`.
pub const FUSE_COMPAT_SETXATTR_IN_SIZE: usize = 8;
/// Offset of `in_out`, `op_in` and `ring_ent_in_out` in [`FuseUringReqHeader`].
pub const RING_IN_OUT_OFFSET: usize = 0;
pub const RING_OP_IN_OFFSET: usize = 128;
pub const RING_ENT_IN_OUT_OFFSET: usize = 256;
/// Minimum size of a request buffer (`FUSE_MIN_READ_BUFFER`).
pub const FUSE_MIN_READ_BUFFER: usize = 8192;
/// `enum fuse_uring_cmd`: the `cmd_op` of the SQE.
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// INIT flag (flags2 bit 9, i.e. bit 41 of the 64-bit flags).
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
pub const FUSE_ROOT_ID: u64 = 1;

/// `enum fuse_opcode` (7.45).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    pub const COPY_FILE_RANGE_64: u32 = 53;
}

/// One request as found in a ring entry's buffers (see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct RingRequest<'a> {
    pub header: FuseInHeader,
    pub commit_id: u64,
    /// The per-opcode struct, cut to the size the kernel sent (0 for name-only opcodes).
    pub op_in: &'a [u8],
    /// `payload_sz` bytes of the payload buffer.
    pub payload: &'a [u8],
}

/// Decodes a ring entry: `header` is the 288-byte header buffer, `payload` the whole payload
/// buffer. Fails (EIO) when the kernel's numbers disagree with each other or the buffers.
pub fn split_ring_request<'a>(header: &'a [u8], payload: &'a [u8]) -> Option<RingRequest<'a>> {
    let in_header: FuseInHeader = read(header.get(RING_IN_OUT_OFFSET..)?)?;
    let ent: FuseUringEntInOut = read(header.get(RING_ENT_IN_OUT_OFFSET..)?)?;
    let payload_sz = ent.payload_sz as usize;
    let payload = payload.get(..payload_sz)?;
    let op_len = (in_header.len as usize)
        .checked_sub(size_of::<FuseInHeader>())?
        .checked_sub(payload_sz)?;
    if op_len > 128 {
        return None;
    }
    let op_in = header.get(RING_OP_IN_OFFSET..RING_OP_IN_OFFSET + op_len)?;
    Some(RingRequest {
        header: in_header,
        commit_id: ent.commit_id,
        op_in,
        payload,
    })
}

/// Writes a reply into a ring entry: the out header into `in_out`, `payload_sz` into the
/// trailer. The out-args themselves must already be at the start of the payload buffer.
pub fn put_ring_reply(header: &mut [u8], unique: u64, error: i32, payload_sz: u32) -> Option<()> {
    let len = if error == 0 { 16 + payload_sz } else { 16 };
    let out = FuseOutHeader { len, error, unique };
    write(header.get_mut(RING_IN_OUT_OFFSET..)?, &out)?;
    let ent = FuseUringEntInOut {
        payload_sz: if error == 0 { payload_sz } else { 0 },
        ..FuseUringEntInOut::default()
    };
    write(header.get_mut(RING_ENT_IN_OUT_OFFSET..)?, &ent)
}

/// Appends one READDIR record (`FuseDirent` + name + zero padding to 8 bytes) if it fits in
/// `max` bytes in total; returns whether it was added.
pub fn push_dirent(
    out: &mut Vec<u8>,
    max: usize,
    ino: u64,
    off: u64,
    typ: u32,
    name: &[u8],
) -> bool {
    let rec = (size_of::<FuseDirent>() + name.len()).div_ceil(8) * 8;
    if out.len() + rec > max {
        return false;
    }
    let head = FuseDirent {
        ino,
        off,
        namelen: name.len() as u32,
        typ,
    };
    push(out, &head);
    out.extend_from_slice(name);
    out.resize(out.len() + rec - size_of::<FuseDirent>() - name.len(), 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let h = FuseInHeader {
            len: 45,
            opcode: opcode::LOOKUP,
            unique: 8,
            nodeid: 1,
            ..Default::default()
        };
        let bytes = bytes_of(&h).to_vec();
        assert_eq!(bytes.len(), 40);
        assert_eq!(read::<FuseInHeader>(&bytes), Some(h));
        assert_eq!(read::<FuseInHeader>(&bytes[1..]), None);
        // Unaligned source.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(read::<FuseInHeader>(&shifted[1..]), Some(h));
    }

    #[test]
    fn names() {
        assert_eq!(split_name(b"a\0bc\0"), Some((&b"a"[..], &b"bc\0"[..])));
        assert_eq!(split_name(b"abc"), None);
    }

    #[test]
    fn ring_request_uses_len_for_op_in() {
        let mut header = vec![0u8; size_of::<FuseUringReqHeader>()];
        let h = FuseInHeader {
            len: 40 + 40 + 5,
            opcode: opcode::WRITE,
            unique: 2,
            ..Default::default()
        };
        write(&mut header[..], &h).unwrap();
        let ent = FuseUringEntInOut {
            commit_id: 2,
            payload_sz: 5,
            ..Default::default()
        };
        write(&mut header[RING_ENT_IN_OUT_OFFSET..], &ent).unwrap();
        let payload = [7u8; 64];
        let r = split_ring_request(&header, &payload).unwrap();
        assert_eq!((r.op_in.len(), r.payload.len(), r.commit_id), (40, 5, 2));
        // An inconsistent len is refused.
        let bad = FuseInHeader { len: 40 + 200, ..h };
        write(&mut header[..], &bad).unwrap();
        assert!(split_ring_request(&header, &payload).is_none());
    }

    #[test]
    fn dirent_padding() {
        let mut out = Vec::new();
        assert!(push_dirent(&mut out, 4096, 5, 1, 4, b"abc"));
        assert_eq!(out.len(), 32);
        assert!(!push_dirent(&mut out, 40, 6, 2, 8, b"x"));
    }
}

//! A tar writer: POSIX ustar headers, with a PAX extended header (POSIX.1-2001) in front
//! of an entry whenever ustar cannot hold it: a path or link target over 100 bytes, a size
//! of 8 GiB or more, ids of 2^21 or more, sub-second times (`mtime=S.NNNNNNNNN`), and
//! extended attributes as `SCHILY.xattr.NAME` records (the form GNU tar, Go's archive/tar
//! and containers-storage read and write). Only what `export` needs: no reading, no
//! sparse files.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// The ustar type flags used here.
pub mod kind {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
}

/// One entry's header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Relative path, `/`-separated; directories without the trailing `/` (added here).
    pub path: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Data bytes that follow (regular files only).
    pub size: u64,
    pub mtime: (i64, i64),
    /// Symlink target or hard-link target path.
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct TarWriter<W: Write> {
    w: W,
}

/// Writes `v` as zero-padded octal into `field` (its last byte NUL); false if it won't fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { w }
    }

    fn block(
        &mut self,
        path: &[u8],
        kind_flag: u8,
        h: &Header,
        size: u64,
        pax: &mut Vec<u8>,
    ) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        if path.len() <= 100 {
            b[..path.len()].copy_from_slice(path);
        } else {
            pax_record(pax, b"path", path);
            let cut = &path[..100];
            b[..100].copy_from_slice(cut);
        }
        octal(&mut b[100..108], u64::from(h.mode & 0o7777));
        if !octal(&mut b[108..116], u64::from(h.uid)) {
            pax_record(pax, b"uid", h.uid.to_string().as_bytes());
            octal(&mut b[108..116], 0);
        }
        if !octal(&mut b[116..124], u64::from(h.gid)) {
            pax_record(pax, b"gid", h.gid.to_string().as_bytes());
            octal(&mut b[116..124], 0);
        }
        if !octal(&mut b[124..136], size) {
            pax_record(pax, b"size", size.to_string().as_bytes());
            octal(&mut b[124..136], 0);
        }
        let secs = h.mtime.0.max(0) as u64;
        if !octal(&mut b[136..148], secs) {
            octal(&mut b[136..148], 0);
        }
        if h.mtime.1 != 0 || h.mtime.0 < 0 {
            let v = format!("{}.{:09}", h.mtime.0, h.mtime.1);
            pax_record(pax, b"mtime", v.as_bytes());
        }
        b[156] = kind_flag;
        if h.link.len() <= 100 {
            b[157..157 + h.link.len()].copy_from_slice(&h.link);
        } else {
            pax_record(pax, b"linkpath", &h.link);
        }
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(h.dev.0));
        octal(&mut b[337..345], u64::from(h.dev.1));
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(pax, &key, v);
        }
        b
    }

    fn finish_block(mut b: [u8; BLOCK]) -> [u8; BLOCK] {
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        b
    }

    fn pad(&mut self, n: u64) -> io::Result<()> {
        let rem = (n % BLOCK as u64) as usize;
        if rem != 0 {
            self.w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes one entry; `data` supplies exactly `h.size` bytes for a regular file.
    pub fn append(&mut self, h: &Header, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut path = h.path.clone();
        if h.kind == kind::DIR && !path.ends_with(b"/") {
            path.push(b'/');
        }
        let size = if h.kind == kind::FILE { h.size } else { 0 };
        let mut pax = Vec::new();
        let main = self.block(&path, h.kind, h, size, &mut pax);
        if !pax.is_empty() {
            let mut name = b"PaxHeaders/".to_vec();
            let base = path
                .rsplit(|&c| c == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"x");
            name.extend_from_slice(&base[..base.len().min(80)]);
            let ph = Header {
                mode: 0o644,
                ..Header::default()
            };
            let mut none = Vec::new();
            let xb = self.block(&name, kind::PAX, &ph, pax.len() as u64, &mut none);
            self.w.write_all(&Self::finish_block(xb))?;
            self.w.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.w.write_all(&Self::finish_block(main))?;
        if size > 0 {
            let src = data.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = io::copy(&mut src.take(size), &mut self.w)?;
            if n != size {
                // The file shrank while being read: keep the archive well-formed.
                io::copy(&mut io::repeat(0).take(size - n), &mut self.w)?;
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// The end-of-archive marker (two zero blocks); returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"a");
        assert_eq!(v, b"9 path=a\n");
        let mut v = Vec::new();
        pax_record(&mut v, b"k", &[b'x'; 93]);
        assert_eq!((&v[..3], v.len()), (&b"99 "[..], 99));
        // One byte more: the length needs a third digit, so the record is 101 long.
        let mut v = Vec::new();
        pax_record(&mut v, b"k", &[b'x'; 94]);
        assert_eq!((&v[..4], v.len()), (&b"101 "[..], 101));
    }

    #[test]
    fn header_checksum_and_long_names() {
        let mut t = TarWriter::new(Vec::new());
        let h = Header {
            path: vec![b'n'; 150],
            kind: kind::FILE,
            mode: 0o644,
            size: 3,
            mtime: (10, 5),
            xattrs: vec![(b"user.a".to_vec(), b"\x00\x01".to_vec())],
            ..Header::default()
        };
        t.append(&h, Some(&mut &b"abc"[..])).unwrap();
        let out = t.finish().unwrap();
        assert_eq!(out.len() % BLOCK, 0);
        assert_eq!(out[156], kind::PAX);
        let pax = &out[BLOCK..2 * BLOCK];
        let text = String::from_utf8_lossy(pax);
        assert!(text.contains("path=nnnn"), "{text}");
        assert!(text.contains("mtime=10.000000005"), "{text}");
        assert!(text.contains("SCHILY.xattr.user.a="), "{text}");
        let main = &out[2 * BLOCK..3 * BLOCK];
        let stored = u32::from_str_radix(std::str::from_utf8(&main[148..154]).unwrap(), 8).unwrap();
        let mut b = main.to_vec();
        b[148..156].fill(b' ');
        assert_eq!(stored, b.iter().map(|&x| u32::from(x)).sum::<u32>());
        assert_eq!(&out[3 * BLOCK..3 * BLOCK + 3], b"abc");
    }
}

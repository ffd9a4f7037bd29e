//! `stratafs export UPPER [LOWER…] -o layer.tar`: an upper layer as an OCI image layer
//! (a tar of the changes, with the OCI/aufs whiteout names), for `podman load`, registries
//! and anything that applies image layers.
//!
//! - a whiteout (any format) becomes an empty file `.wh.NAME`; an opaque directory gets a
//!   `.wh..wh..opq` entry first;
//! - a redirected directory (`redirect_dir`) is written out in full (its merged contents,
//!   the lower part read from the redirect's target) and marked opaque, and its old name
//!   gets a whiteout unless the upper already holds something there;
//! - a metacopy file gets its data from the lower that holds it;
//! - hard links (the same inode under several names) are tar hard links to the first name;
//! - xattrs, file capabilities included, go in PAX `SCHILY.xattr.*` records; overlay
//!   markers (`trusted.overlay.*`, `user.overlay.*`, `user.fuseoverlayfs.*`) never do.
//!
//! Lowers (highest first) are needed only for metacopy files and redirected directories;
//! without them those are an error. Sockets cannot be archived: skipped, with a warning.
//! The root directory's own attributes are not written (the base image's stay).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::sys::{self, Stat};
use crate::tools::layer::{self, Class, LowerDirs, Redirect};
use crate::tools::tar::{self, Header, TarWriter};
use crate::whiteout::{self, Opaque};

#[derive(Debug, Clone, Default)]
pub struct ExportArgs {
    pub upper: PathBuf,
    pub lowers: Vec<PathBuf>,
    /// `None`: standard output.
    pub output: Option<PathBuf>,
}

struct Exporter<W: Write> {
    tar: TarWriter<W>,
    lower_roots: Vec<OwnedFd>,
    upper_root: OwnedFd,
    /// (st_dev, st_ino) of multiply-linked files already written → their tar path.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Old locations of redirected directories (absolute lower paths).
    moved_from: Vec<Vec<u8>>,
    warnings: Vec<String>,
}

fn tar_path(parent: &[u8], name: &CStr) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.to_bytes());
    p
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl<W: Write> Exporter<W> {
    fn io(e: std::io::Error) -> Error {
        Error::io(e, "writing the archive")
    }

    /// An empty marker file (`.wh.NAME`, `.wh..wh..opq`).
    fn marker_file(&mut self, path: Vec<u8>, mtime: (i64, i64)) -> Result<()> {
        let h = Header {
            path,
            kind: tar::kind::FILE,
            mode: 0o644,
            mtime,
            ..Header::default()
        };
        self.tar.append(&h, None).map_err(Self::io)
    }

    fn whiteout(&mut self, parent: &[u8], target: &CStr, mtime: (i64, i64)) -> Result<()> {
        let mut n = b".wh.".to_vec();
        n.extend_from_slice(target.to_bytes());
        let n = CString::new(n).unwrap_or_default();
        self.marker_file(tar_path(parent, &n), mtime)
    }

    /// One real non-directory or directory header from `dir/name` (data from `data` for a
    /// metacopy file, else from the entry itself).
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        path: Vec<u8>,
        data: Option<OwnedFd>,
    ) -> Result<()> {
        let fmt = st.st_mode & libc::S_IFMT;
        let mut h = Header {
            path: path.clone(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            xattrs: layer::visible_xattrs(dir, name),
            ..Header::default()
        };
        if fmt != libc::S_IFDIR && st.st_nlink > 1 {
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                h.kind = tar::kind::HARDLINK;
                h.link = first.clone();
                h.xattrs.clear();
                return self.tar.append(&h, None).map_err(Self::io);
            }
            self.links.insert((st.st_dev, st.st_ino), path.clone());
        }
        match fmt {
            libc::S_IFDIR => h.kind = tar::kind::DIR,
            libc::S_IFLNK => {
                h.kind = tar::kind::SYMLINK;
                h.link = sys::readlinkat(dir, name).map_err(|e| Error::io(e, "readlink"))?;
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                h.kind = if fmt == libc::S_IFCHR {
                    tar::kind::CHAR
                } else {
                    tar::kind::BLOCK
                };
                h.dev = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
            }
            libc::S_IFIFO => h.kind = tar::kind::FIFO,
            libc::S_IFREG => {
                h.kind = tar::kind::FILE;
                h.size = st.st_size as u64;
                let fd = match data {
                    Some(fd) => fd,
                    None => sys::openat(dir, name, libc::O_RDONLY, 0)
                        .map_err(|e| Error::io(e, format!("open {}", shown(&path))))?,
                };
                let mut f = std::fs::File::from(fd);
                return self.tar.append(&h, Some(&mut f)).map_err(Self::io);
            }
            _ => {
                self.links.remove(&(st.st_dev, st.st_ino));
                self.warnings
                    .push(format!("{}: a socket, not archived", shown(&path)));
                return Ok(());
            }
        }
        self.tar.append(&h, None).map_err(Self::io)
    }

    fn redirect_of(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<Redirect>> {
        let m = layer::markers(dir, name);
        match layer::find(&m, "redirect") {
            None => Ok(None),
            Some(r) => layer::parse_redirect(&r.value).map(Some).map_err(|why| {
                Error::new(
                    libc::EINVAL,
                    format!("invalid redirect ({why}); run stratafs check"),
                )
            }),
        }
    }

    fn is_metacopy(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> bool {
        layer::is_reg(st) && layer::find(&layer::markers(dir, name), "metacopy").is_some()
    }

    /// A metacopy file's data, or an error naming it.
    fn data_for(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        lowers: &LowerDirs,
        lower_path: &[u8],
        path: &[u8],
    ) -> Result<OwnedFd> {
        let r = Self::redirect_of(dir, name)?;
        layer::metacopy_data(&self.lower_roots, lowers, lower_path, name, r.as_ref())?.ok_or_else(
            || {
                Error::new(
                    libc::ENOENT,
                    format!(
                        "{}: metacopy file without its data in the lowers given",
                        shown(path)
                    ),
                )
            },
        )
    }

    /// The upper directory `dir` as layer changes.
    fn changes(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &[u8],
        lower_path: &[u8],
        lowers: &LowerDirs,
    ) -> Result<()> {
        let state = whiteout::dir_opaque(dir);
        let dst = sys::fstat(dir).map_err(|e| Error::io(e, "stat"))?;
        let dir_time = (dst.st_mtime, dst.st_mtime_nsec);
        for (name, st) in layer::list(dir)? {
            let p = tar_path(path, &name);
            match layer::classify(dir, state, &name, &st) {
                Class::OpaqueMarker => continue,
                Class::Whiteout { target, .. } => {
                    self.whiteout(path, &target, dir_time)?;
                    continue;
                }
                Class::Entry => {}
            }
            if !layer::is_dir(&st) {
                let data = if Self::is_metacopy(dir, &name, &st) {
                    Some(self.data_for(dir, &name, lowers, lower_path, &p)?)
                } else {
                    None
                };
                self.entry(dir, &name, &st, p, data)?;
                continue;
            }
            let sub = layer::open_dir(dir, &name)?;
            self.entry(dir, &name, &st, p.clone(), None)?;
            let redirect = Self::redirect_of(dir, &name)?;
            let opaque = whiteout::dir_opaque(sub.as_fd()) == Opaque::Yes;
            let sub_time = (st.st_mtime, st.st_mtime_nsec);
            if opaque || redirect.is_some() {
                self.marker_file(tar_path(&p, c".wh..wh..opq"), sub_time)?;
            }
            if let (Some(r), false) = (&redirect, opaque) {
                let from = layer::redirect_path(lower_path, r);
                let below = LowerDirs::at_path(&self.lower_roots, &from)?;
                if self.lower_roots.is_empty() {
                    return Err(Error::new(
                        libc::EINVAL,
                        format!("{}: a redirected directory needs the lowers", shown(&p)),
                    ));
                }
                self.moved_from.push(from.clone());
                self.full(Some(sub.as_fd()), &p, &from, &below)?;
            } else if opaque {
                let own = layer::child_path(lower_path, &name);
                self.changes(sub.as_fd(), &p, &own, &LowerDirs::default())?;
            } else {
                let own = layer::child_path(lower_path, &name);
                self.changes(sub.as_fd(), &p, &own, &lowers.child(&name))?;
            }
        }
        Ok(())
    }

    /// The merged contents of a directory (an upper part and/or lower dirs), in full.
    fn full(
        &mut self,
        upper: Option<BorrowedFd<'_>>,
        path: &[u8],
        lower_path: &[u8],
        lowers: &LowerDirs,
    ) -> Result<()> {
        enum Src {
            Gone,
            Upper(Stat),
            Lower(Stat, usize),
        }
        let mut names: BTreeMap<CString, Src> = BTreeMap::new();
        for (n, st, i) in lowers.merged_names()? {
            names.insert(n, Src::Lower(st, i));
        }
        if let Some(u) = upper {
            let state = whiteout::dir_opaque(u);
            for (n, st) in layer::list(u)? {
                match layer::classify(u, state, &n, &st) {
                    Class::OpaqueMarker => {}
                    Class::Whiteout { target, .. } => {
                        names.insert(target, Src::Gone);
                    }
                    Class::Entry => {
                        names.insert(n, Src::Upper(st));
                    }
                }
            }
        }
        for (name, src) in names {
            let p = tar_path(path, &name);
            let own = layer::child_path(lower_path, &name);
            match src {
                Src::Gone => {}
                Src::Upper(st) => {
                    let Some(u) = upper else { continue };
                    if !layer::is_dir(&st) {
                        let data = if Self::is_metacopy(u, &name, &st) {
                            Some(self.data_for(u, &name, lowers, lower_path, &p)?)
                        } else {
                            None
                        };
                        self.entry(u, &name, &st, p, data)?;
                        continue;
                    }
                    self.entry(u, &name, &st, p.clone(), None)?;
                    let sub = layer::open_dir(u, &name)?;
                    let (from, below) = if whiteout::dir_opaque(sub.as_fd()) == Opaque::Yes {
                        (own, LowerDirs::default())
                    } else if let Some(r) = Self::redirect_of(u, &name)? {
                        let from = layer::redirect_path(lower_path, &r);
                        self.moved_from.push(from.clone());
                        let below = LowerDirs::at_path(&self.lower_roots, &from)?;
                        (from, below)
                    } else {
                        (own, lowers.child(&name))
                    };
                    self.full(Some(sub.as_fd()), &p, &from, &below)?;
                }
                Src::Lower(st, i) => {
                    let d = lowers.0[i].as_fd();
                    self.entry(d, &name, &st, p.clone(), None)?;
                    if layer::is_dir(&st) {
                        self.full(None, &p, &own, &lowers.child(&name))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whiteouts at the old names of redirected directories, where the upper leaves the
    /// lower entry visible (holds nothing on the way there that hides it).
    fn moved_whiteouts(&mut self) -> Result<()> {
        let mut done = Vec::new();
        for from in std::mem::take(&mut self.moved_from) {
            if done.contains(&from) || layer::upper_hides(self.upper_root.as_fd(), &from)? {
                continue;
            }
            let i = from.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let parent = from[..i].strip_prefix(b"/").unwrap_or(&from[..i]).to_vec();
            let last = CString::new(&from[i + 1..]).unwrap_or_default();
            self.whiteout(&parent, &last, (0, 0))?;
            done.push(from);
        }
        Ok(())
    }
}

/// Writes the archive; returns the warnings (entries that could not be archived).
pub fn run(a: &ExportArgs) -> Result<Vec<String>> {
    let upper = layer::open_root("upper", &a.upper)?;
    let mut lower_roots = Vec::new();
    for l in &a.lowers {
        lower_roots.push(layer::open_root("lower", l)?);
    }
    let out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).map_err(|e| Error::io(e, format!("{}", p.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut x = Exporter {
        tar: TarWriter::new(out),
        lower_roots,
        upper_root: sys::reopen(upper.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io(e, "upper"))?,
        links: HashMap::new(),
        moved_from: Vec::new(),
        warnings: Vec::new(),
    };
    let roots = LowerDirs::roots(&x.lower_roots)?;
    let rst = sys::fstat(upper.as_fd()).map_err(|e| Error::io(e, "upper"))?;
    let roots = if whiteout::dir_opaque(upper.as_fd()) == Opaque::Yes {
        x.marker_file(b".wh..wh..opq".to_vec(), (rst.st_mtime, rst.st_mtime_nsec))?;
        LowerDirs::default()
    } else {
        roots
    };
    x.changes(upper.as_fd(), b"", b"/", &roots)?;
    x.moved_whiteouts()?;
    let warnings = std::mem::take(&mut x.warnings);
    x.tar
        .finish()
        .map_err(|e| Error::io(e, "writing the archive"))?;
    Ok(warnings)
}

//! The option table: one [`OptionDoc`] per option, in `--help` order, which is both the
//! `--help` text ([`help_text`]) and the list the man page (docs/stratafs.1) is checked
//! against by a unit test, both ways, so that the two cannot drift.

/// One line of `--help`, and one entry of the man page's OPTIONS section.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    /// The name the man page must mention (`\fBkey` in docs/stratafs.1).
    pub key: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
}

const fn doc(key: &'static str, usage: &'static str, help: &'static str) -> OptionDoc {
    OptionDoc { key, usage, help }
}

/// Every option, in `--help` order. docs/stratafs.1 is checked against this table by a unit
/// test, both ways, so the two cannot drift.
pub const OPTIONS: &[OptionDoc] = &[
    doc(
        "-o",
        "-o OPT[,OPT...]",
        "mount options (below); may be repeated",
    ),
    doc(
        "-f",
        "-f, --foreground",
        "stay in the foreground (default: detach once the mount is live)",
    ),
    doc(
        "-d",
        "-d, --debug",
        "log every request to stderr; implies -f (RUST_LOG is respected)",
    ),
    doc(
        "--log-file",
        "--log-file=FILE",
        "the daemon logs to FILE instead of syslog",
    ),
    doc("-h", "-h, --help", "print this help and exit"),
    doc("-V", "-V, --version", "print the version and exit"),
    doc(
        "lowerdir",
        "lowerdir=DIR[:DIR...]",
        "read-only branches, highest first; \\: and \\, escape",
    ),
    doc(
        "upperdir",
        "upperdir=DIR",
        "the writable upper branch (needs workdir=)",
    ),
    doc(
        "workdir",
        "workdir=DIR",
        "scratch dir on the upper's filesystem, outside the upper",
    ),
    doc(
        "dirs",
        "dirs=DIR[=RW|=RO][:DIR...]",
        "unionfs-fuse branches, top first, any of them RW (also as SOURCE)",
    ),
    doc(
        "cow",
        "cow",
        "unionfs-fuse: the first branch without a mode is the writable one",
    ),
    doc(
        "br",
        "br=DIR[=rw|=ro|=rr|=ro+wh|=rr+wh|=rw+nolwh][:DIR...]",
        "aufs branches, top first (also br:DIR...); any of them, several, may be rw; ro and rr ignore whiteouts, ro+wh honours them; no mode: rw first, ro after",
    ),
    doc(
        "create",
        "create=tdp|rr|mfs[:SECS]|mfsrr:LOW[:SECS]|pmfs[:SECS]|pmfsrr:LOW[:SECS]",
        "aufs: the writable branch a new entry goes to: top-down-parent (default), round-robin, most-free-space (SECS default 30; LOW bytes, k/m/g/t)",
    ),
    doc(
        "cpup",
        "cpup=tdp|bup|bu",
        "aufs: the writable branch above a copy-up goes to: top-down-parent (default), bottom-up-parent, bottom-up",
    ),
    doc(
        "sum",
        "sum, nosum",
        "aufs: statfs shows the writable branches' totals (sum) or the top one's (nosum, default)",
    ),
    doc("ro", "ro", "read-only mount (also without an upper branch)"),
    doc(
        "remount",
        "remount,ro|rw|OP",
        "make a live mount read-only or writable again, or change its branches with aufs's add:/append:/prepend:/del:/mod:/lowerdir+= (also via mount -o remount; see stratafs branch)",
    ),
    doc(
        "rw",
        "rw",
        "read-write mount (the default with an upper branch)",
    ),
    doc(
        "allow_other",
        "allow_other",
        "let every user access the mount (the default as root)",
    ),
    doc(
        "noallow_other",
        "noallow_other",
        "as root: only root may access the mount (default: every user)",
    ),
    doc(
        "allow_root",
        "allow_root",
        "let the owner and root access the mount",
    ),
    doc(
        "default_permissions",
        "default_permissions",
        "the kernel checks permissions (always on)",
    ),
    doc("nodev", "nodev", "no device files (dev undoes it)"),
    doc(
        "nosuid",
        "nosuid",
        "ignore set-user/group-id bits (suid undoes it)",
    ),
    doc("noexec", "noexec", "no execution (exec undoes it)"),
    doc(
        "noatime",
        "noatime",
        "reads never update access times (atime undoes it)",
    ),
    doc(
        "relatime",
        "relatime",
        "a read updates atime if older than mtime/ctime or a day (default)",
    ),
    doc(
        "strictatime",
        "strictatime",
        "every read updates atime; wins over noatime (nostrictatime undoes it)",
    ),
    doc(
        "nodiratime",
        "nodiratime",
        "listing a directory never updates its atime (diratime undoes it)",
    ),
    doc(
        "fsname",
        "fsname=NAME",
        "source shown in /proc/mounts (default: SOURCE or stratafs)",
    ),
    doc(
        "subtype",
        "subtype=NAME",
        "filesystem type shown as fuse.NAME (default stratafs)",
    ),
    doc(
        "auto_unmount",
        "auto_unmount",
        "unmount if the daemon dies (via fusermount3; implies allow_root)",
    ),
    doc(
        "threads",
        "threads=N",
        "serve with N threads, 1 to 1024 (default: one per CPU; at least 16 with a branch on FUSE, NFS, SMB, Ceph or 9p)",
    ),
    doc("max_threads", "max_threads=N", "same as threads=N"),
    doc(
        "threaded",
        "threaded=0|1, -s",
        "fuse-overlayfs: threaded=0 and -s serve with one thread; threaded=1 the default",
    ),
    doc(
        "clone_fd",
        "clone_fd, max_idle_threads=N, max_read=N, nonempty",
        "libfuse tuning and fuse2 leftovers (fuse-overlayfs ignores them too): accepted and logged",
    ),
    doc(
        "timeout",
        "timeout=SECS",
        "kernel entry/attribute cache lifetime",
    ),
    doc(
        "udba",
        "udba=none|reval|notify",
        "changes made directly to the branches: not checked (default), checked on access, or watched (inotify)",
    ),
    doc(
        "udba_max_watches",
        "udba_max_watches=N",
        "udba=notify: at most N watches; directories beyond are checked on access",
    ),
    doc(
        "volatile",
        "volatile",
        "never fsync the upper (throw-away containers)",
    ),
    doc(
        "userxattr",
        "userxattr",
        "markers in user.overlay.* instead of trusted.overlay.*",
    ),
    doc(
        "noacl",
        "noacl",
        "no POSIX ACL enforcement or inheritance (ACL xattrs are still stored)",
    ),
    doc(
        "debug",
        "debug",
        "log every request (without -f: to syslog or --log-file)",
    ),
    doc(
        "index",
        "index=on|off",
        "lower hard links stay one file after a copy-up, in the kernel's workdir/index format (default off; not with a writable lower)",
    ),
    doc(
        "nfs_export",
        "nfs_export=on|off",
        "file handles (open_by_handle_at, NFS) outlive the kernel's caches and remounts (default off; not with a writable lower)",
    ),
    doc(
        "metacopy",
        "metacopy=on|off",
        "metadata-only copy-up in the kernel's format (default off; not with a writable lower)",
    ),
    doc(
        "uidmapping",
        "uidmapping=D:S:N[:D:S:N...]",
        "uids D..D+N on disk show as S..S+N (fuse-overlayfs)",
    ),
    doc(
        "gidmapping",
        "gidmapping=D:S:N[:D:S:N...]",
        "the same for gids",
    ),
    doc(
        "squash_to_root",
        "squash_to_root",
        "show everything as owned by 0:0",
    ),
    doc(
        "squash_to_uid",
        "squash_to_uid=U",
        "show everything as owned by uid U",
    ),
    doc(
        "squash_to_gid",
        "squash_to_gid=G",
        "show everything as owned by gid G",
    ),
    doc(
        "context",
        "context=, fscontext=, defcontext=, rootcontext=",
        "SELinux labels: accepted, logged, not applied",
    ),
    doc(
        "redirect_dir",
        "redirect_dir=on|off",
        "off (or follow, nofollow): renaming a lower directory answers EXDEV, no redirects",
    ),
    doc(
        "xino",
        "xino=, uuid=, verity=off",
        "kernel overlayfs tuning: accepted and logged",
    ),
    doc(
        "fsync",
        "fsync=0|1",
        "fsync=0 is volatile (fuse-overlayfs's spelling); fsync=1 the default",
    ),
    doc(
        "static_nlink",
        "static_nlink",
        "directories report one link (saves counting; as fuse-overlayfs)",
    ),
    doc(
        "xattr_permissions",
        "xattr_permissions=0|1|2",
        "owner/mode overrides in an xattr: 1 security.fuseoverlayfs.*, 2 user.containers.*",
    ),
    doc(
        "noxattrs",
        "noxattrs=0|1",
        "noxattrs=1: xattr calls through the mount fail with ENOTSUP",
    ),
    doc(
        "writeback",
        "writeback=0|1",
        "writeback=0: never use the kernel's writeback cache (default 1)",
    ),
    doc(
        "lower_passthrough",
        "lower_passthrough[=0|1]",
        "read-only opens of lower files use passthrough (root only): default on read-only mounts; 1: also read-write ones (trades copy-up visibility); 0: never",
    ),
    doc(
        "io_uring",
        "io_uring, noio_uring",
        "FUSE over io_uring: required (io_uring) or off (noio_uring); default: used when offered",
    ),
    doc(
        "fast_ino",
        "fast_ino=0|1",
        "fuse-overlayfs tuning: accepted and logged (inode numbers are always stable)",
    ),
    doc(
        "defaults",
        "defaults, auto, noauto, user, nofail, _netdev, sync, x-*, comment=",
        "mount(8)/fstab options: accepted and ignored",
    ),
];

/// The `--help` text.
pub fn help_text() -> String {
    let mut s = String::from(
        "usage: stratafs [SOURCE] MOUNTPOINT -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTS]\n\
         \x20      stratafs [-o cow] /upper=RW:/lower1=RO:/lower2 MOUNTPOINT [-o OPTS]\n\
         \x20      stratafs MOUNTPOINT -o br=/upper=rw:/lower1=ro[,OPTS]\n\
         \x20      mount -t fuse.stratafs -o lowerdir=...,upperdir=...,workdir=... stratafs MOUNTPOINT\n\
         \x20      stratafs branch [--force] MOUNTPOINT OP...   (add:I:DIR[=MODE] append: prepend: del: mod:)\n\
         MOUNTPOINT /dev/fd/N: serve the FUSE descriptor N its caller opened and mounted\n\
         (libfuse 3's convention, as Apptainer uses it); the caller unmounts.\n\
         Returns once the mount is live (or failed); the daemon stays until umount.\n\
         With no workdir=, a writable first branch's workdir is UPPER/.wh..wh.orph with br= (aufs), UPPER.stratafs-work with dirs=/a branch list.\n\
         Unknown options are refused.\n\noptions:\n",
    );
    for o in OPTIONS {
        if o.usage.len() > 34 {
            s.push_str(&format!("  {}\n  {:34} {}\n", o.usage, "", o.help));
        } else {
            s.push_str(&format!("  {:34} {}\n", o.usage, o.help));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{parse_args, Command};

    #[test]
    fn help_lists_every_option_on_one_line() {
        let h = help_text();
        for o in OPTIONS {
            assert!(h.contains(o.usage), "{}", o.usage);
            assert!(h.contains(o.help), "{}", o.help);
        }
        assert!(matches!(parse_args(["s", "--help"]), Ok(Command::Help)));
        assert!(matches!(parse_args(["s", "-V"]), Ok(Command::Version)));
    }

    /// docs/stratafs.1 has one `.TP` entry per table row and no other: it cannot drift.
    #[test]
    fn man_page_matches_the_option_table() {
        let man = include_str!("../../docs/stratafs.1");
        let keys: Vec<&str> = OPTIONS.iter().map(|o| o.key).collect();
        let mut entries = Vec::new();
        let lines: Vec<&str> = man
            .lines()
            .skip_while(|l| *l != ".SH OPTIONS")
            .skip(1)
            .take_while(|l| !l.starts_with(".SH"))
            .collect();
        for w in lines.windows(2) {
            if w[0].trim() == ".TP" {
                let key: String = w[1]
                    .replace("\\-", "-")
                    .trim_start_matches("\\fB")
                    .chars()
                    .take_while(|c| !matches!(c, '\\' | ' ' | ',' | '='))
                    .collect();
                entries.push(key);
            }
        }
        for k in &keys {
            assert!(
                entries.iter().any(|e| e == k),
                "option {k} of OPTIONS is missing from docs/stratafs.1"
            );
        }
        for e in &entries {
            assert!(
                keys.contains(&e.as_str()),
                "docs/stratafs.1 documents {e}, which is not in OPTIONS"
            );
        }
        assert_eq!(entries.len(), keys.len(), "{entries:?}");
    }
}

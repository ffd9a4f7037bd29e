//! uid/gid mapping and squashing, with fuse-overlayfs's option semantics (checked side by
//! side with fuse-overlayfs 1.10, tests/idmap_fuse_overlayfs.rs):
//!
//! - `uidmapping=D:S:N[:D:S:N…]` (and `gidmapping=`): ids `D..D+N` stored on the branches
//!   show through the mount as `S..S+N`, and an id given through the mount (chown, the
//!   owner of a new entry) in `S..S+N` is stored as `D..D+N`. With `uidmapping=0:1000:1` an
//!   on-disk 0 shows as 1000 and a chown to 1000 stores 0. Where ranges overlap, the one
//!   given last wins (both ways), as in fuse-overlayfs.
//! - An id no range covers becomes the overflow id, 65534, in either direction: a stored id
//!   shows as 65534, and an id given through the mount is stored as 65534 (no error, as
//!   fuse-overlayfs: a chown to an unmapped id succeeds and stores 65534, which then shows as
//!   whatever 65534 maps to).
//! - `squash_to_root`: everything shows as owned by 0:0; `squash_to_uid=U` /
//!   `squash_to_gid=G`: everything shows as owned by U / G, and take precedence over
//!   `squash_to_root` whatever the order. Squashing only changes what is shown; what is
//!   stored is still mapped.
//! - The ids inside POSIX ACL xattrs and the owner in `xattr_permissions` overrides are on
//!   the disk side: ACL entries are passed through unmapped (as fuse-overlayfs does), and
//!   an override's owner is mapped like a real owner.

use crate::error::Result;

/// The id that stands for an id no mapping covers (the kernel's overflow id, `nobody`).
pub const OVERFLOW_ID: u32 = 65534;

/// One mapped range: on-disk `disk..disk+len` ↔ shown `shown..shown+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub disk: u32,
    pub shown: u32,
    pub len: u32,
}

/// A set of ranges for one kind of id; empty means the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub ranges: Vec<Range>,
}

impl IdMap {
    /// Parses `D:S:N[:D:S:N…]`.
    ///
    /// A leading `:` is allowed: podman 4.3 passes `uidmapping=:0:200000:65536` for
    /// `--uidmap` (its list of ranges joined with a `:` in front), and fuse-overlayfs 1.10
    /// reads it as `0:200000:65536`.
    pub fn parse(s: &str) -> std::result::Result<IdMap, String> {
        let body = s.strip_prefix(':').unwrap_or(s);
        let nums: Vec<u32> = body
            .split(':')
            .map(|x| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{s}: {x:?} is not an id"))
            })
            .collect::<std::result::Result<_, _>>()?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(format!("{s}: expected on-disk:shown:length triples"));
        }
        let ranges: Vec<Range> = nums
            .chunks(3)
            .map(|c| Range {
                disk: c[0],
                shown: c[1],
                len: c[2],
            })
            .collect();
        for r in &ranges {
            if r.len == 0
                || r.disk.checked_add(r.len - 1).is_none()
                || r.shown.checked_add(r.len - 1).is_none()
            {
                return Err(format!(
                    "{s}: range {}:{}:{} is empty or overflows",
                    r.disk, r.shown, r.len
                ));
            }
        }
        Ok(IdMap { ranges })
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Stored id → id shown through the mount (65534 where no range covers it).
    pub fn shown(&self, disk: u32) -> u32 {
        if self.is_identity() {
            return disk;
        }
        self.ranges
            .iter()
            .rev()
            .find(|r| disk >= r.disk && disk - r.disk < r.len)
            .map(|r| r.shown + (disk - r.disk))
            .unwrap_or(OVERFLOW_ID)
    }

    /// Id given through the mount → id stored (65534 where no range covers it).
    pub fn disk(&self, shown: u32) -> u32 {
        if self.is_identity() {
            return shown;
        }
        self.ranges
            .iter()
            .rev()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map(|r| r.disk + (shown - r.shown))
            .unwrap_or(OVERFLOW_ID)
    }
}

/// Everything the mount does to ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    pub uids: IdMap,
    pub gids: IdMap,
    /// `squash_to_root`: show 0 where no `squash_to_uid` / `squash_to_gid` says otherwise.
    pub squash_root: bool,
    /// Show every entry as owned by this uid / gid.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

impl Ids {
    /// (uid, gid) as shown through the mount for a stored (uid, gid).
    pub fn view(&self, uid: u32, gid: u32) -> (u32, u32) {
        let root = self.squash_root.then_some(0);
        (
            self.squash_uid
                .or(root)
                .unwrap_or_else(|| self.uids.shown(uid)),
            self.squash_gid
                .or(root)
                .unwrap_or_else(|| self.gids.shown(gid)),
        )
    }

    /// (uid, gid) to store for ids given through the mount.
    pub fn store(&self, uid: u32, gid: u32) -> Result<(u32, u32)> {
        Ok((self.uids.disk(uid), self.gids.disk(gid)))
    }

    pub fn is_identity(&self) -> bool {
        self.uids.is_identity()
            && self.gids.is_identity()
            && !self.squash_root
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_disk_to_shown_as_fuse_overlayfs() {
        // fuse-overlayfs's man page example.
        let m = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!(m.shown(0), 1000);
        assert_eq!(m.shown(1), 110000);
        assert_eq!(m.shown(6), 110005);
        assert_eq!(m.shown(65536), 175535);
        assert_eq!(m.shown(65537), OVERFLOW_ID);
        assert_eq!(m.shown(1000), 110999);
        assert_eq!(m.disk(110005), 6);
        assert_eq!(m.disk(1000), 0);
        // Unmapped through the mount: stored as the overflow id.
        assert_eq!(m.disk(5), OVERFLOW_ID);
        assert_eq!(m.disk(175536), OVERFLOW_ID);
    }

    #[test]
    fn the_last_overlapping_range_wins() {
        let m = IdMap::parse("0:1000:10:5:2000:10").unwrap();
        assert_eq!(m.shown(5), 2000);
        assert_eq!(m.shown(1), 1001);
        assert_eq!(m.disk(1007), 7);
        assert_eq!(m.disk(2001), 6);
    }

    #[test]
    fn refuses_malformed_maps() {
        assert!(IdMap::parse("0:1000").is_err());
        assert!(IdMap::parse("0:x:1").is_err());
        assert!(IdMap::parse("0:1000:0").is_err());
        assert!(IdMap::parse("4294967295:0:2").is_err());
        assert!(IdMap::parse("::0:1:1").is_err());
    }

    /// podman 4.3's `--uidmap` form, with a `:` in front.
    #[test]
    fn a_leading_colon_is_podmans_form() {
        assert_eq!(
            IdMap::parse(":0:200000:65536").unwrap(),
            IdMap::parse("0:200000:65536").unwrap()
        );
    }

    #[test]
    fn squashing_changes_only_the_view() {
        let ids = Ids {
            uids: IdMap::parse("0:1000:10").unwrap(),
            gids: IdMap::default(),
            squash_root: true,
            squash_uid: Some(7),
            squash_gid: None,
        };
        assert_eq!(ids.view(5, 7), (7, 0));
        assert_eq!(ids.store(1005, 7).unwrap(), (5, 7));
    }
}

//! uid/gid mapping and squashing, with fuse-overlayfs's option semantics:
//!
//! - `uidmapping=C:H:N[:C:H:N…]` (and `gidmapping=`): ids `C..C+N` as seen through the
//!   mount are stored as `H..H+N` on the branches. An id stored on disk that no range
//!   covers shows as the overflow id (65534, `nobody`); an id given through the mount (chown,
//!   a new file's owner) that no range covers is refused with EINVAL.
//! - `squash_to_root`: everything shows as owned by 0:0; `squash_to_uid=U` /
//!   `squash_to_gid=G`: everything shows as owned by U / G. Squashing only changes what is
//!   shown; what is stored is still mapped.

use crate::error::{err, Result};

/// The id shown for a stored id that no mapping covers (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// One mapped range: mount-side `inner..inner+len` ↔ disk-side `outer..outer+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub inner: u32,
    pub outer: u32,
    pub len: u32,
}

/// A set of ranges for one kind of id; empty means the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub ranges: Vec<Range>,
}

impl IdMap {
    /// Parses `C:H:N[:C:H:N…]`.
    pub fn parse(s: &str) -> std::result::Result<IdMap, String> {
        let nums: Vec<u32> = s
            .split(':')
            .map(|x| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{s}: {x:?} is not an id"))
            })
            .collect::<std::result::Result<_, _>>()?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(format!("{s}: expected container:host:length triples"));
        }
        let ranges: Vec<Range> = nums
            .chunks(3)
            .map(|c| Range {
                inner: c[0],
                outer: c[1],
                len: c[2],
            })
            .collect();
        for r in &ranges {
            if r.len == 0
                || r.inner.checked_add(r.len - 1).is_none()
                || r.outer.checked_add(r.len - 1).is_none()
            {
                return Err(format!(
                    "{s}: range {}:{}:{} is empty or overflows",
                    r.inner, r.outer, r.len
                ));
            }
        }
        Ok(IdMap { ranges })
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Disk id → id shown through the mount.
    pub fn to_inner(&self, outer: u32) -> u32 {
        if self.is_identity() {
            return outer;
        }
        self.ranges
            .iter()
            .find(|r| outer >= r.outer && outer - r.outer < r.len)
            .map(|r| r.inner + (outer - r.outer))
            .unwrap_or(OVERFLOW_ID)
    }

    /// Id given through the mount → disk id; EINVAL where no range covers it.
    pub fn to_outer(&self, inner: u32) -> Result<u32> {
        if self.is_identity() {
            return Ok(inner);
        }
        match self
            .ranges
            .iter()
            .find(|r| inner >= r.inner && inner - r.inner < r.len)
        {
            Some(r) => Ok(r.outer + (inner - r.inner)),
            None => err(libc::EINVAL),
        }
    }
}

/// Everything the mount does to ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    pub uids: IdMap,
    pub gids: IdMap,
    /// Show every entry as owned by this uid / gid.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

impl Ids {
    /// (uid, gid) as shown through the mount for a stored (uid, gid).
    pub fn view(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.squash_uid.unwrap_or_else(|| self.uids.to_inner(uid)),
            self.squash_gid.unwrap_or_else(|| self.gids.to_inner(gid)),
        )
    }

    /// (uid, gid) to store for ids given through the mount.
    pub fn store(&self, uid: u32, gid: u32) -> Result<(u32, u32)> {
        Ok((self.uids.to_outer(uid)?, self.gids.to_outer(gid)?))
    }

    pub fn is_identity(&self) -> bool {
        self.uids.is_identity()
            && self.gids.is_identity()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triples_and_maps_both_ways() {
        let m = IdMap::parse("0:1000:1:1:100000:65536").unwrap();
        assert_eq!(m.to_inner(1000), 0);
        assert_eq!(m.to_inner(100000), 1);
        assert_eq!(m.to_inner(100999), 1000);
        assert_eq!(m.to_inner(5), OVERFLOW_ID);
        assert_eq!(m.to_outer(0).unwrap(), 1000);
        assert_eq!(m.to_outer(1000).unwrap(), 100999);
        assert!(m.to_outer(70000).is_err());
    }

    #[test]
    fn refuses_malformed_maps() {
        assert!(IdMap::parse("0:1000").is_err());
        assert!(IdMap::parse("0:x:1").is_err());
        assert!(IdMap::parse("0:1000:0").is_err());
        assert!(IdMap::parse("4294967295:0:2").is_err());
    }

    #[test]
    fn squashing_changes_only_the_view() {
        let ids = Ids {
            uids: IdMap::parse("0:1000:10").unwrap(),
            gids: IdMap::default(),
            squash_uid: Some(0),
            squash_gid: Some(0),
        };
        assert_eq!(ids.view(1005, 7), (0, 0));
        assert_eq!(ids.store(5, 7).unwrap(), (1005, 7));
    }
}

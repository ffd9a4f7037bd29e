//! POSIX ACL inheritance for new entries (what the kernel's `posix_acl_create` does).
//!
//! New entries are built in the staging directory and renamed into place, so the upper
//! filesystem never sees them created in their real parent and cannot apply the parent's
//! default ACL itself; this module computes what it would have applied. The xattr format
//! is the kernel's `system.posix_acl_*` one: a little-endian u32 version (2), then
//! entries of (u16 tag, u16 perm, u32 id).

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

pub const ACCESS_XATTR: &std::ffi::CStr = c"system.posix_acl_access";
pub const DEFAULT_XATTR: &std::ffi::CStr = c"system.posix_acl_default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses the xattr value; `None` if it is not a version-2 ACL.
    pub fn parse(b: &[u8]) -> Option<Acl> {
        if b.len() < 4 || (b.len() - 4) % 8 != 0 {
            return None;
        }
        if u32::from_le_bytes(b[0..4].try_into().ok()?) != VERSION {
            return None;
        }
        let entries = b[4..]
            .chunks(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Acl { entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// True when the ACL says no more than the mode bits (only the three base entries).
    fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }
}

/// What a new entry gets: its final mode, and the access and default ACLs to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    pub mode: u32,
    pub access: Option<Acl>,
    pub default: Option<Acl>,
}

/// The kernel's rule for a new entry with requested `mode` (permission bits) under a
/// parent whose default ACL is `parent_default`: without one, the umask applies; with one,
/// the default ACL (masked by the mode) becomes the access ACL, and directories inherit the
/// default ACL itself.
pub fn inherit(parent_default: Option<&Acl>, mode: u32, umask: u32, is_dir: bool) -> Inherited {
    let Some(def) = parent_default else {
        return Inherited {
            mode: mode & !umask,
            access: None,
            default: None,
        };
    };
    let mut acl = def.clone();
    let mut m = mode & 0o7777;
    let mut group_obj: Option<usize> = None;
    let mut mask: Option<usize> = None;
    for (i, e) in acl.entries.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((m >> 6) & 7) as u16;
                m &= !(0o700 & !((e.perm as u32) << 6));
            }
            USER | GROUP => {}
            GROUP_OBJ => group_obj = Some(i),
            MASK => mask = Some(i),
            OTHER => {
                e.perm &= (m & 7) as u16;
                m &= !(0o007 & !(e.perm as u32));
            }
            _ => {}
        }
    }
    // The group class bits follow the mask entry if there is one, else the owning group.
    if let Some(i) = mask.or(group_obj) {
        let e = &mut acl.entries[i];
        e.perm &= ((m >> 3) & 7) as u16;
        m &= !(0o070 & !((e.perm as u32) << 3));
    }
    Inherited {
        mode: m,
        access: if acl.is_minimal() { None } else { Some(acl) },
        default: is_dir.then(|| def.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    #[test]
    fn no_default_acl_means_umask() {
        let r = inherit(None, 0o666, 0o022, false);
        assert_eq!(r.mode, 0o644);
        assert!(r.access.is_none() && r.default.is_none());
    }

    #[test]
    fn default_acl_is_masked_by_mode_and_ignores_umask() {
        // default: u::rwx, u:1000:rwx, g::r-x, m::rwx, o::r-x
        let def = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let f = inherit(Some(&def), 0o666, 0o077, false);
        // file asks rw-rw-rw-: u::rw-, mask rw-, o::r--; umask ignored.
        assert_eq!(f.mode, 0o664);
        let a = f.access.expect("named user entry keeps an access ACL");
        assert_eq!(a.entries[0].perm, 6);
        assert_eq!(a.entries[3].perm, 6);
        assert_eq!(a.entries[4].perm, 4);
        assert!(f.default.is_none());
        let d = inherit(Some(&def), 0o777, 0o077, true);
        assert_eq!(d.mode, 0o775);
        assert_eq!(d.default, Some(def.clone()));
    }

    #[test]
    fn round_trips_the_xattr_format() {
        let a = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert_eq!(Acl::parse(&a.to_bytes()), Some(a));
        assert!(Acl::parse(b"\x01\0\0\0").is_none());
    }
}

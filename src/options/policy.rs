//! aufs's placement policies as options (aufs(5) names, short and long): `create=` (which
//! writable branch a new entry goes to), `cpup=` (which one a copy-up goes to), and
//! `sum`/`nosum` (statfs over the writable branches). Accepted with every branch syntax;
//! with one writable branch they choose nothing. The core interprets them (`wbr_policy.rs`).
//!
//! `SECONDS` (how long a measured free space is trusted) defaults to 30, as aufs's; `LOW`
//! is a number of bytes with an optional `k`, `m`, `g` or `t` suffix (1024-based, either
//! case).

use super::{bad, OptionsError};
use crate::types::{Cpup, Create};

/// aufs's default `SECONDS` for the free-space policies.
pub(super) const DEFAULT_SECS: u64 = 30;

const CREATE_VALUES: &str =
    "tdp, rr, mfs[:SECONDS], mfsrr:LOW[:SECONDS], pmfs[:SECONDS] or pmfsrr:LOW[:SECONDS]";

/// `create=VALUE`.
pub(super) fn parse_create(v: &str) -> Result<Create, OptionsError> {
    let wrong = |why: &str| bad(format!("option create={v}: {why}"));
    let mut parts = v.split(':');
    let name = parts.next().unwrap_or_default();
    let args: Vec<&str> = parts.collect();
    let secs = |a: Option<&&str>| match a {
        None => Ok(DEFAULT_SECS),
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| wrong(&format!("{s} is not a number of seconds"))),
    };
    let low = |a: Option<&&str>| match a {
        None => Err(wrong("needs LOW, a number of bytes (k, m, g, t: KiB…TiB)")),
        Some(s) => parse_size(s).ok_or_else(|| {
            wrong(&format!(
                "LOW {s} is not a number of bytes (k, m, g, t: KiB…TiB)"
            ))
        }),
    };
    let (policy, most) = match name {
        "tdp" | "top-down-parent" => (Create::Tdp, 0),
        "rr" | "round-robin" => (Create::Rr, 0),
        "mfs" | "most-free-space" => (
            Create::Mfs {
                secs: secs(args.first())?,
            },
            1,
        ),
        "pmfs" => (
            Create::Pmfs {
                secs: secs(args.first())?,
            },
            1,
        ),
        "mfsrr" => {
            let (low, secs) = (low(args.first())?, secs(args.get(1))?);
            (Create::MfsRr { low, secs }, 2)
        }
        "pmfsrr" => {
            let (low, secs) = (low(args.first())?, secs(args.get(1))?);
            (Create::PmfsRr { low, secs }, 2)
        }
        _ => return Err(wrong(&format!("expected {CREATE_VALUES}"))),
    };
    if args.len() > most {
        return Err(wrong(&format!(
            "too many ':' values (expected {CREATE_VALUES})"
        )));
    }
    Ok(policy)
}

/// `cpup=VALUE`.
pub(super) fn parse_cpup(v: &str) -> Result<Cpup, OptionsError> {
    match v {
        "tdp" | "top-down-parent" => Ok(Cpup::Tdp),
        "bup" | "bottom-up-parent" => Ok(Cpup::Bup),
        "bu" | "bottom-up" => Ok(Cpup::Bu),
        _ => Err(bad(format!(
            "option cpup={v}: expected tdp (top-down-parent), bup (bottom-up-parent) or bu (bottom-up)"
        ))),
    }
}

/// `N`, `Nk`, `Nm`, `Ng`, `Nt` (either case, 1024-based) → bytes; `None` when malformed or
/// past u64.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::tests::{cfg, err};

    fn create(v: &str) -> Create {
        cfg(&["/m", "-o", &format!("br=/x/u=rw:/a=rw,create={v}")]).create
    }

    /// Each `create=` value, short and long, with and without SECONDS.
    #[test]
    fn create_values() {
        assert_eq!(cfg(&["-o", "lowerdir=/a", "/m"]).create, Create::Tdp);
        let cases = [
            ("tdp", Create::Tdp),
            ("top-down-parent", Create::Tdp),
            ("rr", Create::Rr),
            ("round-robin", Create::Rr),
            ("mfs", Create::Mfs { secs: 30 }),
            ("mfs:5", Create::Mfs { secs: 5 }),
            ("most-free-space", Create::Mfs { secs: 30 }),
            ("most-free-space:120", Create::Mfs { secs: 120 }),
            ("pmfs", Create::Pmfs { secs: 30 }),
            ("pmfs:0", Create::Pmfs { secs: 0 }),
            ("mfsrr:100", Create::MfsRr { low: 100, secs: 30 }),
            (
                "mfsrr:1g:7",
                Create::MfsRr {
                    low: 1 << 30,
                    secs: 7,
                },
            ),
            (
                "pmfsrr:2m",
                Create::PmfsRr {
                    low: 2 << 20,
                    secs: 30,
                },
            ),
            (
                "pmfsrr:3K:9",
                Create::PmfsRr {
                    low: 3 << 10,
                    secs: 9,
                },
            ),
        ];
        for (v, want) in cases {
            assert_eq!(create(v), want, "create={v}");
        }
    }

    /// LOW's suffixes are 1024-based, in either case; malformed or overflowing ones fail.
    #[test]
    fn low_suffixes() {
        let cases = [
            ("0", 0),
            ("512", 512),
            ("1k", 1024),
            ("1K", 1024),
            ("10m", 10 << 20),
            ("2G", 2 << 30),
            ("1t", 1 << 40),
            ("16777215t", 16_777_215 << 40),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s), Some(want), "{s}");
        }
        for s in [
            "",
            "k",
            "1kb",
            "1p",
            "-1",
            "1.5g",
            " 1",
            "16777216t",
            "99999999999999999999",
        ] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }

    #[test]
    fn cpup_values_and_sum() {
        let c = cfg(&["-o", "lowerdir=/a", "/m"]);
        assert_eq!(c.cpup, Cpup::Tdp);
        assert!(!c.sum);
        let cases = [
            ("tdp", Cpup::Tdp),
            ("top-down-parent", Cpup::Tdp),
            ("bup", Cpup::Bup),
            ("bottom-up-parent", Cpup::Bup),
            ("bu", Cpup::Bu),
            ("bottom-up", Cpup::Bu),
        ];
        for (v, want) in cases {
            let c = cfg(&["/m", "-o", &format!("br=/x/u=rw:/a=rw,cpup={v}")]);
            assert_eq!(c.cpup, want, "cpup={v}");
        }
        assert!(cfg(&["/m", "-o", "br=/x/u=rw:/a=rw,sum"]).sum);
        assert!(!cfg(&["/m", "-o", "br=/x/u=rw:/a=rw,sum,nosum"]).sum);
    }

    /// The policies are accepted with every branch syntax, also where one branch is
    /// writable.
    #[test]
    fn policies_with_every_syntax() {
        for args in [
            vec!["-o", "lowerdir=/a,upperdir=/u,workdir=/w", "/m"],
            vec!["-o", "lowerdir=/a", "/m"],
            vec!["/x/u=RW:/a=RO", "/m"],
            vec!["/m", "-o", "dirs=/x/u=RW:/a"],
            vec!["/m", "-o", "br=/x/u=rw:/a=ro"],
        ] {
            let mut a = args.clone();
            a.extend(["-o", "create=mfsrr:1g:60,cpup=bu,sum"]);
            let c = cfg(&a);
            let want = Create::MfsRr {
                low: 1 << 30,
                secs: 60,
            };
            assert_eq!((c.create, c.cpup, c.sum), (want, Cpup::Bu, true), "{a:?}");
        }
    }

    #[test]
    fn bad_policy_values_name_the_option() {
        let cases = [
            ("create=", "create="),
            ("create", "create="),
            ("create=fastest", "create=fastest: expected tdp"),
            ("create=tdmfs:1g", "create=tdmfs:1g: expected"),
            ("create=TDP", "create=TDP"),
            ("create=tdp:5", "create=tdp:5: too many"),
            ("create=rr:1", "create=rr:1: too many"),
            (
                "create=mfs:soon",
                "create=mfs:soon: soon is not a number of seconds",
            ),
            ("create=mfs:-1", "create=mfs:-1"),
            ("create=mfs:1:2", "create=mfs:1:2: too many"),
            ("create=mfsrr", "create=mfsrr: needs LOW"),
            ("create=mfsrr:", "create=mfsrr:: LOW  is not"),
            ("create=pmfsrr:1x", "create=pmfsrr:1x: LOW 1x is not"),
            ("create=pmfsrr:1g:x", "create=pmfsrr:1g:x: x is not"),
            ("create=pmfsrr:1g:2:3", "too many"),
            ("cpup=", "cpup="),
            ("cpup=td", "cpup=td: expected tdp"),
            ("cpup=bottom-up-parent:1", "cpup=bottom-up-parent:1"),
            ("sum=1", "option sum takes no value"),
            ("nosum=0", "option nosum takes no value"),
        ];
        for (o, want) in cases {
            let e = err(&["-o", &format!("lowerdir=/a,{o}"), "/m"]);
            assert!(e.contains(want), "{o}: {e} (wanted {want})");
        }
    }
}

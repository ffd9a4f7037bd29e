//! aufs's branch management on a live mount: the operations `remount` and `stratafs branch`
//! take, read and checked into a new stack of lowers, without touching anything. Applying
//! the new stack to the running mount is `stack.rs`'s job.
//!
//! Operations, as aufs(5) gives them (interpreted left to right, each on the stack the
//! previous one left; one bad operation refuses the whole request):
//! - `add:INDEX:DIR[=MODE]` (also `ins:`): DIR becomes branch INDEX, counted from the top
//!   branch; the upper, when there is one, is index 0, so the topmost lower is 1 and a
//!   lower cannot go above the upper (it stays the single writable branch);
//! - `append:DIR[=MODE]`: DIR becomes the bottom branch; `lowerdir+=DIR` (the kernel's
//!   new-mount-API syntax) is the same with the default mode;
//! - `prepend:DIR[=MODE]`: DIR becomes the topmost lower, right below the upper;
//! - `del:DIR`: DIR leaves the stack (refused with EBUSY while something uses it, see
//!   `stack.rs`); `del!:DIR` removes it even then;
//! - `mod:DIR=MODE`: DIR's mode changes.
//!
//! Modes (`layers::Mode`): `ro+wh` (whiteouts and opaque markers honoured; the default,
//! as for every `lowerdir` of a fresh mount), `ro` (they are ignored), `rr` (ignored, and
//! the branch never changes), `rw` (`rw+nolwh`): writable, below the upper (aufs's branch
//! model, `wbr_policy.rs`): entries on it change in place, and it takes new entries and
//! copy-ups by the mount's `create=`/`cpup=` policies. A branch whose mode changes to or
//! from `rw` is opened again (a writable one is used through the host's mount, locked in
//! use, with its staging directory; a read-only one through a private read-only mount);
//! open files keep the file they opened.
//!
//! Refused, with one line and no change: a DIR that is not a directory, is already a
//! branch, or overlaps one (inside another branch, the upper or the workdir, or holding
//! one; on the mount itself, which `stack.rs` checks); an index out of range; the upper
//! or workdir as an operand; removing the last lower; a DIR that is not a branch for
//! `del:`/`mod:`.

use std::path::{Path, PathBuf};

use crate::layers::{LayerId, Mode};

/// One operation, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Add {
        index: usize,
        dir: PathBuf,
        mode: Mode,
    },
    Append {
        dir: PathBuf,
        mode: Mode,
    },
    Prepend {
        dir: PathBuf,
        mode: Mode,
    },
    Del {
        dir: PathBuf,
        force: bool,
    },
    Mod {
        dir: PathBuf,
        mode: Mode,
    },
}

/// Is `o` (one `-o` item) a branch operation? (`remount` routes those here.)
pub fn is_op(o: &str) -> bool {
    [
        "add:",
        "ins:",
        "append:",
        "prepend:",
        "del:",
        "del!:",
        "mod:",
        "lowerdir+=",
    ]
    .iter()
    .any(|p| o.starts_with(p))
}

/// Reads a mode word.
pub fn parse_mode(m: &str) -> Result<Mode, String> {
    match m.to_ascii_lowercase().as_str() {
        "ro+wh" | "rr+wh" => Ok(Mode::RoWh),
        "ro" => Ok(Mode::Ro),
        "rr" => Ok(Mode::Rr),
        "rw" | "rw+nolwh" => Ok(Mode::Rw),
        _ => Err(format!(
            "unknown branch mode {m} (expected rw, ro, rr or ro+wh)"
        )),
    }
}

/// `DIR[=MODE]`: the last `=` followed by a mode word splits them.
fn dir_mode(s: &str, default: Option<Mode>) -> Result<(PathBuf, Option<Mode>), String> {
    if let Some((d, m)) = s.rsplit_once('=') {
        let known = ["ro", "rr", "ro+wh", "rr+wh", "rw", "rw+nolwh"];
        if known.contains(&m.to_ascii_lowercase().as_str()) {
            return Ok((PathBuf::from(d), Some(parse_mode(m)?)));
        }
        if default.is_none() {
            return Err(format!(
                "unknown branch mode {m} (expected rw, ro, rr or ro+wh)"
            ));
        }
    }
    Ok((PathBuf::from(s), default))
}

fn nonempty(dir: PathBuf, op: &str) -> Result<PathBuf, String> {
    if dir.as_os_str().is_empty() {
        return Err(format!("{op}: no directory given"));
    }
    Ok(dir)
}

/// Parses one operation.
pub fn parse(s: &str) -> Result<Op, String> {
    let bad = |why: &str| format!("branch operation {s}: {why}");
    let (verb, rest) = if let Some(r) = s.strip_prefix("lowerdir+=") {
        ("append", r)
    } else {
        s.split_once(':')
            .ok_or_else(|| bad("expected VERB:ARGUMENTS"))?
    };
    let def = Some(Mode::RoWh);
    let op = match verb {
        "add" | "ins" => {
            let (i, d) = rest
                .split_once(':')
                .ok_or_else(|| bad("expected add:INDEX:DIR[=MODE]"))?;
            let index = i
                .parse::<usize>()
                .map_err(|_| bad(&format!("index {i} is not a number")))?;
            let (dir, mode) = dir_mode(d, def).map_err(|e| bad(&e))?;
            Op::Add {
                index,
                dir: nonempty(dir, verb).map_err(|e| bad(&e))?,
                mode: mode.unwrap_or(Mode::RoWh),
            }
        }
        "append" | "prepend" => {
            let (dir, mode) = dir_mode(rest, def).map_err(|e| bad(&e))?;
            let dir = nonempty(dir, verb).map_err(|e| bad(&e))?;
            let mode = mode.unwrap_or(Mode::RoWh);
            if verb == "append" {
                Op::Append { dir, mode }
            } else {
                Op::Prepend { dir, mode }
            }
        }
        "del" | "del!" => Op::Del {
            dir: nonempty(PathBuf::from(rest), verb).map_err(|e| bad(&e))?,
            force: verb == "del!",
        },
        "mod" => {
            let (dir, mode) = dir_mode(rest, None).map_err(|e| bad(&e))?;
            let mode = mode.ok_or_else(|| bad("expected mod:DIR=MODE"))?;
            Op::Mod {
                dir: nonempty(dir, verb).map_err(|e| bad(&e))?,
                mode,
            }
        }
        _ => return Err(bad(&format!("unknown operation {verb}"))),
    };
    Ok(op)
}

/// A lower of the stack being planned: one already in it (its id), or one to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// `None`: a new branch, opened when the plan is applied.
    pub id: Option<LayerId>,
    /// Canonical path.
    pub path: PathBuf,
    pub mode: Mode,
}

/// The stack a plan starts from.
#[derive(Debug, Clone)]
pub struct Current {
    /// Canonical paths of the upper and the workdir, if any.
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub lowers: Vec<Planned>,
}

/// The result of planning: the new lowers (top first), what was removed (with `force`),
/// and one line per operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub lowers: Vec<Planned>,
    /// Ids of the lowers removed, with whether their removal was forced.
    pub removed: Vec<(LayerId, bool)>,
    pub lines: Vec<String>,
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Checks `ops` one after the other against `cur`; `canon` resolves an operand to a
/// canonical directory path (or says why it cannot). Nothing is opened or changed.
pub fn plan(
    cur: &Current,
    ops: &[Op],
    canon: &dyn Fn(&Path) -> Result<PathBuf, String>,
) -> Result<Plan, String> {
    let mut lowers = cur.lowers.clone();
    let mut removed = Vec::new();
    let mut lines = Vec::new();
    let upper_slots = usize::from(cur.upper.is_some());
    let fixed: Vec<(&str, &PathBuf)> = cur
        .upper
        .iter()
        .map(|p| ("the upper", p))
        .chain(cur.work.iter().map(|p| ("the workdir", p)))
        .collect();
    // A new branch: a directory, not in the stack, overlapping no branch.
    let new_dir = |dir: &Path, lowers: &[Planned]| -> Result<PathBuf, String> {
        let p = canon(dir)?;
        for (what, f) in &fixed {
            if p == **f {
                return Err(format!("{}: is {what}", dir.display()));
            }
            if overlaps(&p, f) {
                return Err(format!(
                    "{}: overlaps {what} {} (a branch inside another, or holding one)",
                    dir.display(),
                    f.display()
                ));
            }
        }
        for l in lowers {
            if l.path == p {
                return Err(format!("{}: already a branch", dir.display()));
            }
            if overlaps(&p, &l.path) {
                return Err(format!(
                    "{}: overlaps branch {} (a branch inside another, or holding one)",
                    dir.display(),
                    l.path.display()
                ));
            }
        }
        Ok(p)
    };
    // An existing lower, by its path.
    let find = |dir: &Path, lowers: &[Planned]| -> Result<usize, String> {
        let p = canon(dir)?;
        for (what, f) in &fixed {
            if p == **f {
                return Err(format!(
                    "{}: is {what}, which cannot be removed or changed while mounted",
                    dir.display()
                ));
            }
        }
        lowers
            .iter()
            .position(|l| l.path == p)
            .ok_or_else(|| format!("{}: not a branch of this mount", dir.display()))
    };
    for op in ops {
        match op {
            Op::Add { index, dir, mode } => {
                if *index < upper_slots {
                    return Err(format!(
                        "add:{index}: index 0 is the upper; a lower goes at 1 or below"
                    ));
                }
                let at = index - upper_slots;
                if at > lowers.len() {
                    return Err(format!(
                        "add:{index}: index out of range (the stack has {} branches, 0 to {})",
                        lowers.len() + upper_slots,
                        lowers.len() + upper_slots
                    ));
                }
                let path = new_dir(dir, &lowers)?;
                lines.push(format!(
                    "added {} at {index} ({})",
                    path.display(),
                    mode.name()
                ));
                lowers.insert(
                    at,
                    Planned {
                        id: None,
                        path,
                        mode: *mode,
                    },
                );
            }
            Op::Append { dir, mode } | Op::Prepend { dir, mode } => {
                let path = new_dir(dir, &lowers)?;
                let at = if matches!(op, Op::Append { .. }) {
                    lowers.len()
                } else {
                    0
                };
                lines.push(format!(
                    "added {} at {} ({})",
                    path.display(),
                    at + upper_slots,
                    mode.name()
                ));
                lowers.insert(
                    at,
                    Planned {
                        id: None,
                        path,
                        mode: *mode,
                    },
                );
            }
            Op::Del { dir, force } => {
                let i = find(dir, &lowers)?;
                if lowers.len() == 1 {
                    return Err(format!(
                        "{}: the last lower branch cannot be removed",
                        dir.display()
                    ));
                }
                let l = lowers.remove(i);
                if let Some(id) = l.id {
                    removed.push((id, *force));
                }
                lines.push(format!("removed {}", l.path.display()));
            }
            Op::Mod { dir, mode } => {
                let i = find(dir, &lowers)?;
                lowers[i].mode = *mode;
                lines.push(format!(
                    "{} is {} now",
                    lowers[i].path.display(),
                    mode.name()
                ));
            }
        }
    }
    Ok(Plan {
        lowers,
        removed,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse() {
        let p = |s: &str| parse(s).unwrap();
        assert_eq!(
            p("add:1:/m/x=rr"),
            Op::Add {
                index: 1,
                dir: "/m/x".into(),
                mode: Mode::Rr
            }
        );
        assert_eq!(
            p("ins:2:/m/a=b"),
            Op::Add {
                index: 2,
                dir: "/m/a=b".into(),
                mode: Mode::RoWh
            },
            "an = followed by no mode word is part of the path"
        );
        assert_eq!(
            p("append:/a=ro"),
            Op::Append {
                dir: "/a".into(),
                mode: Mode::Ro
            }
        );
        assert_eq!(
            p("lowerdir+=/a"),
            Op::Append {
                dir: "/a".into(),
                mode: Mode::RoWh
            }
        );
        assert_eq!(
            p("prepend:/a=ro+wh"),
            Op::Prepend {
                dir: "/a".into(),
                mode: Mode::RoWh
            }
        );
        assert_eq!(
            p("del:/a"),
            Op::Del {
                dir: "/a".into(),
                force: false
            }
        );
        assert_eq!(
            p("del!:/a"),
            Op::Del {
                dir: "/a".into(),
                force: true
            }
        );
        assert_eq!(
            p("mod:/a=RR"),
            Op::Mod {
                dir: "/a".into(),
                mode: Mode::Rr
            }
        );
        for bad in [
            "add:/a",
            "add:x:/a",
            "add:1:",
            "mod:/a",
            "mod:/a=zz",
            "del:",
            "fly:/a",
            "append",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("append:/a=RW+nolwh"),
            Ok(Op::Append {
                dir: "/a".into(),
                mode: Mode::Rw
            })
        );
        assert_eq!(
            parse("mod:/a=rw"),
            Ok(Op::Mod {
                dir: "/a".into(),
                mode: Mode::Rw
            })
        );
        assert!(is_op("add:1:/x") && is_op("lowerdir+=/x") && !is_op("lowerdir=/x"));
    }

    fn cur() -> Current {
        let l = |id, p: &str| Planned {
            id: Some(id),
            path: p.into(),
            mode: Mode::RoWh,
        };
        Current {
            upper: Some("/s/upper".into()),
            work: Some("/s/work".into()),
            lowers: vec![l(1, "/s/l1"), l(2, "/s/l2")],
        }
    }

    fn canon(p: &Path) -> Result<PathBuf, String> {
        if p.starts_with("/missing") {
            Err(format!("{}: no such directory", p.display()))
        } else {
            Ok(p.to_path_buf())
        }
    }

    fn run(ops: &[&str]) -> Result<Plan, String> {
        let ops: Vec<Op> = ops.iter().map(|o| parse(o).unwrap()).collect();
        plan(&cur(), &ops, &canon)
    }

    fn paths(p: &Plan) -> Vec<String> {
        p.lowers
            .iter()
            .map(|l| format!("{}={}", l.path.display(), l.mode.name()))
            .collect()
    }

    #[test]
    fn stacks_change_as_aufs_says() {
        let p = run(&["add:1:/s/a=ro"]).unwrap();
        assert_eq!(paths(&p), ["/s/a=ro", "/s/l1=ro+wh", "/s/l2=ro+wh"]);
        assert_eq!(p.lines, ["added /s/a at 1 (ro)"]);
        let p = run(&["add:2:/s/a", "add:4:/s/b=rr"]).unwrap();
        assert_eq!(
            paths(&p),
            ["/s/l1=ro+wh", "/s/a=ro+wh", "/s/l2=ro+wh", "/s/b=rr"]
        );
        let p = run(&["prepend:/s/a", "append:/s/b"]).unwrap();
        assert_eq!(
            paths(&p),
            ["/s/a=ro+wh", "/s/l1=ro+wh", "/s/l2=ro+wh", "/s/b=ro+wh"]
        );
        let p = run(&["del:/s/l1", "mod:/s/l2=rr"]).unwrap();
        assert_eq!(paths(&p), ["/s/l2=rr"]);
        assert_eq!(p.removed, [(1, false)]);
        assert_eq!(p.lines, ["removed /s/l1", "/s/l2 is rr now"]);
        // Left to right: a branch added then removed.
        let p = run(&["append:/s/a", "del!:/s/a"]).unwrap();
        assert_eq!(paths(&p), ["/s/l1=ro+wh", "/s/l2=ro+wh"]);
        assert!(p.removed.is_empty());
        assert_eq!(run(&["del!:/s/l2"]).unwrap().removed, [(2, true)]);
    }

    #[test]
    fn invalid_requests_are_refused_with_one_line() {
        for (ops, why) in [
            (&["add:1:/missing/x"][..], "no such directory"),
            (&["add:0:/s/a"], "index 0 is the upper"),
            (&["add:4:/s/a"], "index out of range"),
            (&["append:/s/l1"], "already a branch"),
            (&["append:/s/l1/sub"], "overlaps branch /s/l1"),
            (&["append:/s"], "overlaps"),
            (&["append:/s/upper/x"], "overlaps the upper"),
            (&["append:/s/upper"], "is the upper"),
            (&["append:/s/work"], "is the workdir"),
            (&["del:/s/upper"], "cannot be removed or changed"),
            (&["mod:/s/upper=ro"], "cannot be removed or changed"),
            (&["del:/s/a"], "not a branch"),
            (&["del:/s/l1", "del:/s/l2"], "last lower"),
            (&["mod:/s/nope=ro"], "not a branch"),
        ] {
            let e = run(ops).expect_err(&format!("{ops:?}"));
            assert!(e.contains(why), "{ops:?}: {e}");
            assert!(!e.contains('\n'), "{ops:?}: one line: {e}");
        }
        // Without an upper, index 0 is the top lower.
        let mut c = cur();
        c.upper = None;
        c.work = None;
        let ops = [parse("add:0:/s/a").unwrap()];
        assert_eq!(
            plan(&c, &ops, &canon).unwrap().lowers[0].path,
            Path::new("/s/a")
        );
    }
}

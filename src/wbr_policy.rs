//! Where writes go when several branches are writable (aufs's `wbr_policy`): aufs's branch
//! model, where any branch may be `rw` and new entries and copy-ups are placed by policy.
//!
//! A writable branch is a place where an entry changes in place; an entry whose top layer
//! is read-only is copied up to a writable branch *above* it, chosen by `cpup=`, and EROFS
//! where there is none. A new entry goes to a writable branch chosen by `create=` among
//! those where it is sure to show: not below a whiteout that hides its name (the lookup's
//! `Slot::Free { whiteout }`), nor below the parent's lowest directory. The parent is then
//! made on the chosen branch where it is missing (`dir.rs`, `copy_up.rs`). So a pooled
//! directory's new files spread over the branches that hold it or lie above it, as
//! mergerfs's path-preserving policies do; aufs would also copy the directory down to a
//! branch below its lowest one, which stratafs cannot tell is visible from what it keeps.
//!
//! With one writable branch (the kernel overlayfs's shape: the upper) every choice is that
//! branch, decided without looking at anything.
//!
//! Policies (aufs(5)): create `tdp` (the highest candidate holding the parent directory;
//! where none does, the nearest writable branch above the parent's top, bottom-up, or else
//! the highest candidate), `rr` (the candidates in turn, each set of candidates with its own
//! turn; directories too, where aufs keeps all of a round-robin's new directories on one
//! branch), `mfs[:S]` (most free space,
//! measured at most every S seconds), `mfsrr:LOW[:S]` (mfs, round-robin once the most free
//! is below LOW bytes), `pmfs[:S]` (mfs among the candidates holding the parent, else tdp),
//! `pmfsrr:LOW[:S]`. Copy-up `tdp` (the highest writable branch above the source holding
//! the parent, else `bu`), `bup` (the nearest such), `bu` (the nearest writable branch
//! above the source).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::error::{Error, Result};
use crate::inode::Loc;
use crate::layers::{LayerId, Layers, Stack, UPPER};
use crate::sys;
use crate::types::{Cpup, Create};

/// The policies' state: each candidate set's round-robin turn, and the free space last
/// measured.
#[derive(Debug, Default)]
pub struct Wbr {
    rr: DashMap<Vec<LayerId>, usize>,
    free: DashMap<LayerId, (Instant, u64)>,
}

/// A writable branch: (position in the stack, id).
type Branch = (usize, LayerId);

/// The writable branches, top first.
fn writable(layers: &Layers, stack: &Stack) -> Vec<Branch> {
    let upper = layers.upper.as_ref().map(|_| (0, UPPER));
    let lowers = stack
        .writable_lowers()
        .filter_map(|l| stack.pos(l.id).map(|p| (p, l.id)));
    upper.into_iter().chain(lowers).collect()
}

/// Does the mount have writable branches below the upper (else every write goes up)?
fn only_upper(layers: &Layers, stack: &Stack) -> bool {
    layers.upper.is_some() && stack.writable_lowers().next().is_none()
}

fn erofs(what: &str) -> Error {
    Error::new(
        libc::EROFS,
        format!("{what}: no writable branch where it would show"),
    )
}

impl Wbr {
    /// Free bytes on branch `id` (statvfs `f_bavail`), measured at most every `secs`.
    fn free(&self, layers: &Layers, id: LayerId, secs: u64) -> u64 {
        if let Some(e) = self.free.get(&id) {
            if e.0.elapsed() < Duration::from_secs(secs) {
                return e.1;
            }
        }
        let root = match layers.get(id) {
            Ok(l) => l.root.clone(),
            Err(_) => return 0,
        };
        let bytes = sys::fstatvfs(root.as_fd())
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .unwrap_or(0);
        self.free.insert(id, (Instant::now(), bytes));
        bytes
    }

    /// Forgets measured free space (a create failed with ENOSPC there, or the stack changed).
    pub fn forget_free(&self, id: LayerId) {
        self.free.remove(&id);
    }

    /// The next of `of` in turn: each set of candidates (the writable branches where an
    /// entry would show) has its own turn, so creates in a directory that only some
    /// branches hold do not disturb the alternation of the others.
    fn round_robin(&self, of: &[Branch]) -> Option<LayerId> {
        if of.is_empty() {
            return None;
        }
        let key: Vec<LayerId> = of.iter().map(|b| b.1).collect();
        let mut turn = self.rr.entry(key).or_insert(0);
        let pick = of[*turn % of.len()].1;
        *turn = turn.wrapping_add(1);
        Some(pick)
    }

    /// The candidate with the most free space, and that space.
    fn most_free(&self, layers: &Layers, of: &[Branch], secs: u64) -> Option<(LayerId, u64)> {
        of.iter()
            .map(|&(_, id)| (id, self.free(layers, id, secs)))
            // The highest of equals: `max_by_key` keeps the last maximum, so go bottom up.
            .rev()
            .max_by_key(|&(_, f)| f)
    }

    /// The branch a new entry in directory `parent` goes to. `whiteout`: the layer whose
    /// whiteout hides the name (the new entry must not be below it).
    pub fn create_target(
        &self,
        layers: &Layers,
        policy: Create,
        parent: &Loc,
        whiteout: Option<LayerId>,
    ) -> Result<LayerId> {
        let stack = layers.stack();
        if only_upper(layers, &stack) {
            return Ok(UPPER);
        }
        let floor = show_floor(&stack, parent, whiteout);
        let cands: Vec<Branch> = writable(layers, &stack)
            .into_iter()
            .filter(|&(p, _)| p <= floor)
            .collect();
        let with_parent: Vec<Branch> = cands
            .iter()
            .copied()
            .filter(|&(_, id)| parent.dir_in(id).is_some())
            .collect();
        let tdp = || {
            with_parent.first().map(|b| b.1).or_else(|| {
                let top = stack.pos(parent.top).unwrap_or(usize::MAX);
                cands
                    .iter()
                    .rev()
                    .find(|&&(p, _)| p < top)
                    .or(cands.first())
                    .map(|b| b.1)
            })
        };
        let pick = match policy {
            Create::Tdp => tdp(),
            Create::Rr => self.round_robin(&cands),
            Create::Mfs { secs } => self.most_free(layers, &cands, secs).map(|b| b.0),
            Create::MfsRr { low, secs } => match self.most_free(layers, &cands, secs) {
                Some((id, f)) if f >= low => Some(id),
                _ => self.round_robin(&cands),
            },
            Create::Pmfs { secs } => self
                .most_free(layers, &with_parent, secs)
                .map(|b| b.0)
                .or_else(tdp),
            Create::PmfsRr { low, secs } => match self.most_free(layers, &with_parent, secs) {
                Some((id, f)) if f >= low => Some(id),
                Some(_) => self.round_robin(&with_parent),
                None => self.round_robin(&cands),
            },
        };
        pick.ok_or_else(|| erofs("create"))
    }

    /// The branch an entry whose top layer is `src` (read-only) is copied up to, in
    /// directory `parent`.
    pub fn copy_up_target(
        &self,
        layers: &Layers,
        policy: Cpup,
        src: LayerId,
        parent: &Loc,
    ) -> Result<LayerId> {
        let stack = layers.stack();
        if only_upper(layers, &stack) {
            return Ok(UPPER);
        }
        let src_pos = stack
            .pos(src)
            .ok_or_else(|| Error::new(libc::ESTALE, format!("no layer {src} in the stack")))?;
        let above: Vec<Branch> = writable(layers, &stack)
            .into_iter()
            .filter(|&(p, _)| p < src_pos)
            .collect();
        let has_parent = |b: &&Branch| parent.dir_in(b.1).is_some();
        let bu = above.last();
        let pick = match policy {
            Cpup::Tdp => above.iter().find(has_parent).or(bu),
            Cpup::Bup => above.iter().rev().find(has_parent).or(bu),
            Cpup::Bu => bu,
        };
        pick.map(|b| b.1).ok_or_else(|| erofs("copy-up"))
    }
}

/// Does a new entry of `parent` made on writable layer `t` show (see [`show_floor`])?
pub fn shows_on(layers: &Layers, parent: &Loc, whiteout: Option<LayerId>, t: LayerId) -> bool {
    let stack = layers.stack();
    stack
        .pos(t)
        .is_some_and(|p| p <= show_floor(&stack, parent, whiteout))
}

/// The lowest position where a new entry of `parent` is sure to show: not below the
/// whiteout that hides its name, nor below the parent's lowest directory (what stopped the
/// parent's merge there, an opaque marker, a whiteout or a file below, is not kept; a
/// branch between two of its directories, or above them, shows whatever is made on it).
fn show_floor(stack: &Stack, parent: &Loc, whiteout: Option<LayerId>) -> usize {
    let w = whiteout.and_then(|w| stack.pos(w)).unwrap_or(usize::MAX);
    let last = parent
        .dirs
        .last()
        .and_then(|(l, _)| stack.pos(*l))
        .unwrap_or(usize::MAX);
    w.min(last)
}

//! The layer tools: subcommands of the `stratafs` binary that work on branch directories
//! offline (nothing mounted), each in its own file: [`check`] (aufs's auchk), [`export`] (an OCI image layer, written by [`tar`]), [`merge`]
//! (aubrsync: an upper folded into its lower), and the
//! shared readers they use ([`layer`]: the on-disk formats of one layer and the lower view
//! at a path; [`in_use`]: refusing a layer a mount is using). [`cli`] parses their
//! command lines; `main.rs` only dispatches to it.

pub mod check;
pub mod cli;
pub mod export;
pub mod in_use;
pub mod layer;
pub mod merge;
pub mod tar;

//! The ways requests reach stratafs. `ring` is FUSE over io_uring (Linux 6.14+); the classic
//! /dev/fuse loop is fuser's. Both are meant to feed one transport-neutral dispatcher.

pub mod ring;

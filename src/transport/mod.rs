//! Transports: how requests reach the [`Dispatcher`](crate::dispatch::Dispatcher) and
//! replies go back. [`fuser`] is the classic one (read/write on /dev/fuse, through the
//! fuser crate), which also answers INIT and owns the session.

pub mod fuser;

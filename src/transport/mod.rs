//! Transports: how requests reach the [`Dispatcher`](crate::dispatch::Dispatcher) and
//! replies go back. [`fuser`] is the classic one (read/write on /dev/fuse, through the
//! fuser crate), which also answers INIT, owns the session and still carries FORGET,
//! INTERRUPT and notifications under io_uring; [`ring`] is FUSE over io_uring (Linux
//! 6.14+), which serves every other request once its queues are registered.

pub mod fuser;
pub mod ring;

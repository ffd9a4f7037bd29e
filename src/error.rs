//! One error type for the whole core: an errno the adapter replies with, plus context for
//! the log line. Startup errors use the same type; `Display` gives the one-line message.

use std::fmt;
use std::io;

/// An errno with what we were doing when it happened.
#[derive(Debug)]
pub struct Error {
    pub errno: i32,
    pub context: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, context: impl Into<String>) -> Self {
        Error {
            errno,
            context: context.into(),
        }
    }

    /// An errno with no further context (the common case on a request path).
    pub fn errno(errno: i32) -> Self {
        Error {
            errno,
            context: String::new(),
        }
    }

    /// Wraps an io::Error; anything without an OS error number becomes EIO.
    pub fn io(e: io::Error, context: impl Into<String>) -> Self {
        Error {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            context: context.into(),
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io(e, "")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = io::Error::from_raw_os_error(self.errno);
        if self.context.is_empty() {
            write!(f, "{msg}")
        } else {
            write!(f, "{}: {msg}", self.context)
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for `Err(Error::errno(libc::E…))`.
pub fn err<T>(errno: i32) -> Result<T> {
    Err(Error::errno(errno))
}

//! The one place where OS errors become Python exceptions.
//!
//! PyO3's `From<io::Error>` passes only the message, leaving `exc.errno` as `None`
//! and mapping errnos outside its small table to a bare `OSError`. Here the
//! exception is built as `OSError(errno, strerror)`, so CPython's constructor
//! (PEP 3151) picks the subclass (`ConnectionRefusedError`, `FileNotFoundError`, …)
//! exactly as the stdlib does.

use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;

/// `OSError(errno, strerror)` for an OS error; a plain `OSError(message)` otherwise.
pub fn os_error(err: &io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// The C library's message for `errno`, as `os.strerror` gives it.
pub fn strerror(errno: i32) -> String {
    // `io::Error`'s Display is "<strerror> (os error N)"; keep the first part.
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_matches_libc() {
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert_eq!(strerror(libc::EBADF), "Bad file descriptor");
    }
}

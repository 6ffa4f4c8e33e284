//! The one place where OS errors become Python exceptions.
//!
//! PyO3's `From<io::Error>` passes only the message, leaving `exc.errno` as `None`
//! and mapping errnos outside its small table to a bare `OSError`. Here the
//! exception is built as `OSError(errno, strerror)`, so CPython's constructor
//! (PEP 3151) picks the subclass (`ConnectionRefusedError`, `FileNotFoundError`, …)
//! exactly as the stdlib does.

use std::io;

use pyo3::exceptions::{PyMemoryError, PyOSError, PyOverflowError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use crate::gil::GilRefCell;

/// A buffer for a read could not be allocated: not an OS error, and raised as
/// CPython's `socket.recv`/`os.read` raise it, carried inside an `io::Error` so
/// that the read paths keep one error type.
#[derive(Debug)]
pub enum AllocError {
    /// The size does not fit a `Py_ssize_t`: `OverflowError`.
    TooLarge,
    /// The allocator refused: `MemoryError`.
    NoMemory,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "Python int too large to convert to C ssize_t",
            Self::NoMemory => "",
        })
    }
}

impl std::error::Error for AllocError {}

impl AllocError {
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::OutOfMemory, self)
    }
}

/// `SystemExit` or `KeyboardInterrupt`: the exceptions a callback's error report
/// lets through (asyncio's `except (SystemExit, KeyboardInterrupt): raise`).
pub fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
        || err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
}

/// `OSError(errno, strerror)` for an OS error; `MemoryError`/`OverflowError` for an
/// [`AllocError`]; a plain `OSError(message)` otherwise.
pub fn os_error(err: &io::Error) -> PyErr {
    if let Some(alloc) = err.get_ref().and_then(|e| e.downcast_ref::<AllocError>()) {
        return match alloc {
            AllocError::TooLarge => PyOverflowError::new_err(alloc.to_string()),
            AllocError::NoMemory => PyMemoryError::new_err(()),
        };
    }
    match err.raw_os_error() {
        Some(errno) => made_now(|py| {
            py.get_type::<PyOSError>()
                .call1((errno, strerror_text(py, errno)))
                .map(Bound::unbind)
        })
        .unwrap_or_else(|| PyOSError::new_err((errno, strerror(errno)))),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// The exception object made at once (`OSError(errno, text)` picks its subclass,
/// `ConnectionResetError` & co): a lazily made `PyErr` is made when first looked
/// at, and PyO3 releases and retakes the GIL to do that, which cost more than the
/// exception itself on every connection reset. `None` when no interpreter is
/// attached or making it failed; the caller falls back to the lazy error.
fn made_now(make: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> Option<PyErr> {
    Python::try_attach(|py| {
        make(py)
            .ok()
            .map(|value| PyErr::from_value(value.into_bound(py)))
    })
    .flatten()
}

/// The messages made so far, as Python strings, for the `LC_MESSAGES` locale named
/// `locale` (a connection reset on every closed connection asked the C library,
/// which looks the message up in the locale's catalogue, each time).
struct Messages {
    locale: Vec<u8>,
    texts: std::collections::HashMap<i32, Py<PyString>>,
}

/// [`strerror`] as a Python string, from [`Messages`] while the locale stays.
fn strerror_text(py: Python<'_>, errno: i32) -> Bound<'_, PyString> {
    static MESSAGES: PyOnceLock<GilRefCell<Messages>> = PyOnceLock::new();
    let messages = MESSAGES.get_or_init(py, || {
        GilRefCell::new(Messages {
            locale: Vec::new(),
            texts: std::collections::HashMap::new(),
        })
    });
    // SAFETY: a query (NULL locale) returns the current name, a NUL-terminated
    // string the C library keeps until the next setlocale(), which CPython calls
    // with the GIL held, as this runs.
    let name = unsafe { libc::setlocale(libc::LC_MESSAGES, std::ptr::null()) };
    let name = if name.is_null() {
        &[][..]
    } else {
        // SAFETY: as above.
        unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes()
    };
    let mut cache = messages.borrow_mut(py);
    if cache.locale != name {
        cache.locale = name.to_vec();
        cache.texts.clear();
    }
    cache
        .texts
        .entry(errno)
        .or_insert_with(|| PyString::new(py, &strerror(errno)).unbind())
        .bind(py)
        .clone()
}

/// The C library's message for `errno`, as `os.strerror` gives it.
pub fn strerror(errno: i32) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length; the XSI `strerror_r` (what
    // the libc crate binds) writes a NUL-terminated message into it, or fails.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        if let Ok(text) = std::ffi::CStr::from_bytes_until_nul(&buf) {
            return text.to_string_lossy().into_owned();
        }
    }
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
        assert_eq!(strerror(libc::ECONNRESET), "Connection reset by peer");
        assert_eq!(strerror(999_999), "Unknown error 999999");
    }
}

//! An accepted connection's `socket.socket`, made on first use.
//!
//! asyncio gives every accepted connection a `socket.socket` before it makes the
//! transport; most servers never look at it. oxloop's transport for a connection a
//! server accepted (`LoopCore._accept_batch`) owns the bare fd instead, and makes
//! the object only when asyncio's API hands it out (`transport._sock`,
//! `get_extra_info('socket')`, a `BufferedProtocol`'s `recv_into`): from then on the
//! object owns the fd, exactly as if it had been there from the start.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use pyo3::prelude::*;

use crate::errors::os_error;
use crate::py;

/// The family, type and protocol the object will have (the listener's: what
/// `socket.accept()` gives its connections).
#[derive(Clone, Copy)]
pub(crate) struct UnmadeSocket {
    family: i32,
    kind: i32,
    proto: i32,
}

impl UnmadeSocket {
    /// The connections of `listener`, an exact `socket.socket`.
    pub(crate) fn accepted_from(listener: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (family, kind, proto) = py::raw_socket_triple(listener)?;
        Ok(Self {
            family,
            kind,
            proto,
        })
    }

    /// `(family, type, proto)`, as `socket.socket`'s raw fields hold them.
    pub(crate) fn triple(self) -> (i32, i32, i32) {
        (self.family, self.kind, self.proto)
    }

    /// `socket.socket(family, type | SOCK_NONBLOCK, proto, fileno=fd)`, as
    /// `socket.accept()` makes it: the object owns `fd` from now on (also when this
    /// fails: the fd is closed then).
    pub(crate) fn make<'py>(self, py: Python<'py>, fd: OwnedFd) -> PyResult<Bound<'py, PyAny>> {
        let kind = self.kind | libc::SOCK_NONBLOCK;
        let raw = fd.into_raw_fd();
        py::socket_class(py)?
            .call1((self.family, kind, self.proto, raw))
            .inspect_err(|_| {
                // SAFETY: the object was not made, so `raw` is still ours alone.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
            })
    }

    /// A closed `socket.socket` of this family, type and protocol: what asyncio's
    /// `extra['socket']` wraps once the transport closed its socket, for a
    /// transport whose object was never made. It is a new socket closed at once:
    /// the old number may be another file's by now, and must not be touched.
    pub(crate) fn make_closed<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sock = py::socket_class(py)?.call1((
            self.family,
            self.kind | libc::SOCK_NONBLOCK,
            self.proto,
        ))?;
        sock.call_method0(pyo3::intern!(py, "close"))?;
        Ok(sock)
    }

    /// Closes `fd` as `socket.close()` does: `ECONNRESET` is not an error there.
    pub(crate) fn close(fd: RawFd) -> PyResult<()> {
        // SAFETY: the caller gives up `fd`, which it owned; it is closed once.
        let rc = unsafe { libc::close(fd) };
        let err = std::io::Error::last_os_error();
        if rc == 0 || err.raw_os_error() == Some(libc::ECONNRESET) {
            return Ok(());
        }
        Err(os_error(&err))
    }
}

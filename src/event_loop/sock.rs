//! The waiting half of `sock_recv`, `sock_recv_into` and `sock_sendall`.
//!
//! Mirrors `selector_events.py`: the Python method tries the operation once; when
//! it would block, a [`SockWaiter`] is registered as the fd's reader (or writer).
//! It retries on readiness, completes the future, and unregisters itself when the
//! future is done (result, exception or cancellation), exactly as
//! `_sock_recv`/`_sock_read_done` do, without their Python frames.

use std::os::fd::RawFd;

use oxloop_core::sys;

use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyKeyboardInterrupt, PyRuntimeError, PySystemExit,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::{Direction, LoopCore};
use crate::errors::os_error;
use crate::ffi::ReadCall;
use crate::gil::{GilCell, GilRefCell};
use crate::handles::Handle;
use crate::py;

/// Which `sock_*` method, parsed once from the name the Python side passes.
#[derive(Clone, Copy)]
pub(super) enum SockKind {
    Recv,
    RecvInto,
    SendAll,
}

impl SockKind {
    pub(super) fn parse(kind: &str) -> PyResult<Self> {
        match kind {
            "recv" => Ok(Self::Recv),
            "recv_into" => Ok(Self::RecvInto),
            "sendall" => Ok(Self::SendAll),
            _ => Err(PyValueError::new_err(format!(
                "unknown socket operation {kind:?}"
            ))),
        }
    }
}

enum SockOp {
    Recv(Py<PyAny>),
    RecvInto(Py<PyAny>),
    /// A memoryview of the data and how much of it was sent.
    SendAll(Py<PyAny>, usize),
}

#[pyclass(frozen, module = "oxloop._oxloop", name = "SockWaiter")]
pub struct SockWaiter {
    event_loop: Py<LoopCore>,
    future: Py<PyAny>,
    sock: Py<PyAny>,
    fd: RawFd,
    direction: Direction,
    op: GilRefCell<SockOp>,
    handle: GilCell<Option<Py<Handle>>>,
}

impl SockWaiter {
    /// Runs the operation once; `Ok(None)` means "would block, wait again".
    fn attempt<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let sock = self.sock.bind(py);
        let (method, arg) = match &*self.op.borrow_mut(py) {
            SockOp::Recv(n) => ("recv", n.clone_ref(py).into_bound(py)),
            SockOp::RecvInto(buf) => ("recv_into", buf.clone_ref(py).into_bound(py)),
            SockOp::SendAll(view, pos) => {
                let rest = view.bind(py).get_item(pyo3::types::PySlice::new(
                    py,
                    isize::try_from(*pos).unwrap_or(isize::MAX),
                    isize::MAX,
                    1,
                ))?;
                ("send", rest)
            }
        };
        // The raw fd only for an exact socket.socket that still holds it (closed or
        // detached since the wait began: its fd is -1, and `sock.recv` gives the
        // socket module's EBADF, as asyncio's retry would).
        if method == "recv"
            && crate::py::is_exact_socket(sock)?
            && crate::py::socket_fd_now(sock) == self.fd
        {
            if let Some(size) = fast_recv_size(&arg) {
                return recv_now(sock, self.fd, size);
            }
        }
        call_now(sock, method, &arg)
    }
}

#[pymethods]
impl SockWaiter {
    /// The fd callback (CPython `_sock_recv` / `_sock_recv_into` / `_sock_sendall`).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let future = self.future.bind(py);
        if future.call_method0("done")?.is_truthy()? {
            return Ok(());
        }
        match self.attempt(py) {
            Ok(None) => Ok(()),
            Err(e)
                if e.is_instance_of::<PySystemExit>(py)
                    || e.is_instance_of::<PyKeyboardInterrupt>(py) =>
            {
                Err(e)
            }
            Err(e) => future
                .call_method1("set_exception", (e.into_value(py),))
                .map(drop),
            Ok(Some(result)) => {
                let finished = {
                    let mut op = self.op.borrow_mut(py);
                    match &mut *op {
                        SockOp::SendAll(view, pos) => {
                            *pos += result.extract::<usize>()?;
                            *pos >= view.bind(py).len()?
                        }
                        _ => true,
                    }
                };
                if !finished {
                    return Ok(());
                }
                let value = if matches!(&*self.op.borrow_mut(py), SockOp::SendAll(..)) {
                    py.None().into_bound(py)
                } else {
                    result
                };
                future.call_method1("set_result", (value,)).map(drop)
            }
        }
    }

    /// The future's done callback (CPython `_sock_read_done`/`_sock_write_done`):
    /// unregister, unless another operation replaced this one's handle.
    fn _done(&self, py: Python<'_>, _future: &Bound<'_, PyAny>) -> PyResult<()> {
        let replaced = self
            .handle
            .clone_ref(py)
            .is_some_and(|h| h.get().is_cancelled());
        if !replaced {
            LoopCore::remove_fd_callback(self.event_loop.bind(py), self.fd, self.direction)?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.future)?;
        visit.call(&self.sock)?;
        // SAFETY: called by the GC only.
        unsafe {
            visit.call(self.handle.get_for_gc())?;
        }
        // SAFETY: called by the GC only.
        if let Some(op) = unsafe { self.op.try_get_for_gc() } {
            match op {
                SockOp::Recv(o) | SockOp::RecvInto(o) | SockOp::SendAll(o, _) => visit.call(o)?,
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        drop(self.handle.replace(py, None));
    }
}

/// The size for the raw `recv` fast path: an exact int from 1 to `isize::MAX`
/// (the socket module's `Py_ssize_t`). Anything else goes to `sock.recv(n)` for
/// the socket module's own answer: `b''` for 0 (no syscall), `ValueError` when
/// negative, `OverflowError` when too large, `TypeError` for a non-int.
fn fast_recv_size(arg: &Bound<'_, PyAny>) -> Option<usize> {
    if !arg.is_exact_instance_of::<pyo3::types::PyInt>() {
        return None; // e.g. __index__ would run twice
    }
    let n = arg.extract::<isize>().ok()?;
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// `sock.recv(n)` on an exact `socket.socket` whose fd the caller just read,
/// without raising on "would block" (`Ok(None)`). Allocates `n` bytes, as the
/// socket module does; when that fails, `sock.recv(n)` raises its `MemoryError`.
fn recv_now<'py>(
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    // SAFETY: the caller read `fd` from the exact `socket.socket` it holds just
    // now, with no Python code since: the socket owns it.
    let read = unsafe { sys::borrow(fd) }.and_then(|fd| {
        crate::ffi::read_into_new_bytes(py, fd, n, ReadCall::Recv(libc::MSG_DONTWAIT))
    });
    match read {
        Ok(Some(data)) => Ok(Some(data)),
        Ok(None) => Ok(Some(PyBytes::new(py, b"").into_any())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(None),
        // The bytes could not be allocated (or recv itself said ENOMEM): the
        // socket module's own attempt gives asyncio's exception.
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            call_now(sock, "recv", &n.into_pyobject(py)?.into_any())
        }
        Err(e) => Err(os_error(&e)),
    }
}

/// `sock.send(data)` for a `bytes` on an exact `socket.socket` whose fd the
/// caller just read, without raising on "would block" (0 sent).
fn send_now(data: &Bound<'_, PyBytes>, fd: RawFd) -> PyResult<usize> {
    // SAFETY: the caller read `fd` from the exact `socket.socket` it holds just
    // now, with no Python code since: the socket owns it.
    let sent = unsafe { sys::borrow(fd) }
        .and_then(|fd| sys::send(fd, data.as_bytes(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL));
    match sent {
        Ok(n) => Ok(n),
        Err(err) => {
            if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                Ok(0)
            } else {
                Err(os_error(&err))
            }
        }
    }
}

/// Runs `sock.<method>(arg)`, mapping "would block" to `Ok(None)`.
fn call_now<'py>(
    sock: &Bound<'py, PyAny>,
    method: &str,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    match sock.call_method1(method, (arg,)) {
        Ok(result) => Ok(Some(result)),
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl LoopCore {
    /// The synchronous half of `sock_recv`/`sock_recv_into`/`sock_sendall`
    /// (CPython `selector_events.py`): the checks, one immediate try, and when it
    /// would block, the waiter. Returns the result, or the future to await.
    pub(super) fn sock_start<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        kind: SockKind,
        arg: &Bound<'py, PyAny>,
    ) -> PyResult<(bool, Bound<'py, PyAny>)> {
        let py = slf.py();
        // base_events._check_ssl_socket
        if let Ok(ssl_socket) = crate::py::ssl_socket(py) {
            if sock.is_instance(ssl_socket)? {
                return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
            }
        }
        if slf.get().debug() && !sock.call_method0("gettimeout")?.eq(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        // The raw fd only for an exact socket.socket: a subclass or a duck type (a
        // TLS connection, a test double) gets its own recv/send called, as asyncio
        // calls them, and is asked for fileno() only once that first try would
        // block, as asyncio asks. `fd` is read from the socket under this GIL
        // hold: owned.
        let fast_fd: Option<RawFd> = if crate::py::is_exact_socket(sock)? {
            Some(sock.call_method0("fileno")?.extract()?)
        } else {
            None
        };
        let mut sent = 0;
        let done = match kind {
            SockKind::Recv => match (fast_recv_size(arg), fast_fd) {
                // MSG_DONTWAIT: a blocking socket waits for readiness instead of
                // blocking the loop.
                (Some(n), Some(fd)) => recv_now(sock, fd, n)?,
                _ => call_now(sock, "recv", arg)?,
            },
            SockKind::RecvInto => call_now(sock, "recv_into", arg)?,
            SockKind::SendAll => {
                sent = match (arg.cast::<PyBytes>(), fast_fd) {
                    (Ok(bytes), Some(fd)) => send_now(bytes, fd)?,
                    _ => call_now(sock, "send", arg)?.map_or(Ok(0), |n| n.extract())?,
                };
                // In bytes: `len()` of a memoryview of ints counts elements.
                let total = match arg.cast::<PyBytes>() {
                    Ok(bytes) => bytes.as_bytes().len(),
                    Err(_) => pyo3::types::PyMemoryView::from(arg)?
                        .getattr("nbytes")?
                        .extract()?,
                };
                if sent >= total {
                    Some(py.None().into_bound(py))
                } else {
                    None
                }
            }
        };
        if let Some(result) = done {
            return Ok((true, result));
        }
        let fd: RawFd = match fast_fd {
            Some(fd) => fd,
            None => sock.call_method0("fileno")?.extract()?,
        };
        Self::ensure_fd_no_transport(slf, fd)?;
        Ok((false, Self::sock_wait(slf, sock, fd, kind, arg, sent)?))
    }

    /// CPython `_ensure_fd_no_transport` for an int fd, reading the
    /// `WeakValueDictionary`'s own dict (no `KeyError` raised and caught).
    fn ensure_fd_no_transport(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        let transports = slf.getattr(pyo3::intern!(slf.py(), "_transports"))?;
        if let Ok(map) = transports.cast_exact::<super::transport_map::TransportMap>() {
            let Some(transport) = map.get().lookup(slf.py(), i64::from(fd)) else {
                return Ok(());
            };
            if transport.call_method0("is_closing")?.is_truthy()? {
                return Ok(());
            }
            return Err(PyRuntimeError::new_err(format!(
                "File descriptor {fd} is used by transport {}",
                transport.repr()?
            )));
        }
        let Some(data) = py::weak_value_dict_data(&transports) else {
            return slf
                .call_method1(py::names::ENSURE_FD_NO_TRANSPORT, (fd,))
                .map(drop);
        };
        let Some(weak) = data.get_item(fd)? else {
            return Ok(());
        };
        let transport = weak.call0()?;
        if transport.is_none() || transport.call_method0("is_closing")?.is_truthy()? {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "File descriptor {fd} is used by transport {}",
            transport.repr()?
        )))
    }

    /// Registers a waiter for `kind` and returns the future it completes.
    pub(super) fn sock_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        kind: SockKind,
        arg: &Bound<'py, PyAny>,
        sent: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (op, direction) = match kind {
            SockKind::Recv => (SockOp::Recv(arg.clone().unbind()), Direction::Read),
            SockKind::RecvInto => (SockOp::RecvInto(arg.clone().unbind()), Direction::Read),
            SockKind::SendAll => (
                SockOp::SendAll(
                    // A flat view of bytes: positions below are byte counts.
                    pyo3::types::PyMemoryView::from(arg)?
                        .call_method1("cast", ("B",))?
                        .unbind(),
                    sent,
                ),
                Direction::Write,
            ),
        };
        let future = Self::new_future(slf)?;
        let waiter = Bound::new(
            py,
            SockWaiter {
                event_loop: slf.clone().unbind(),
                future: future.clone().unbind(),
                sock: sock.clone().unbind(),
                fd,
                direction,
                op: GilRefCell::new(op),
                handle: GilCell::new(None),
            },
        )?;
        let handle =
            Self::add_fd_callback(slf, fd, waiter.as_any(), PyTuple::empty(py), direction)?;
        drop(waiter.get().handle.replace(py, Some(handle.unbind())));
        future.call_method1("add_done_callback", (waiter.getattr("_done")?,))?;
        Ok(future)
    }
}

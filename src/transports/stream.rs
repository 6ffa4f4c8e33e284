//! The native stream transport (TCP and Unix stream sockets).
//!
//! Mirrors `Lib/asyncio/selector_events.py::_SelectorSocketTransport` (CPython
//! 3.11) method by method: the same protocol call sequence, messages, flow-control
//! thresholds and close/abort semantics. The speed comes from doing the hot paths
//! without Python frames:
//!
//! * reads `recv` straight into a fresh `bytes` (no intermediate copy) and call the
//!   protocol's `data_received` (looked up per call, as asyncio does);
//! * `write` sends at once when nothing is buffered and buffers only the rest,
//!   keeping references to the caller's `bytes` (no copy); the buffer is flushed
//!   with `writev`.
//!
//! States: `closing` is set by `close()`/`abort()`/a fatal error and stops reading;
//! `conn_lost` counts the scheduling of `connection_lost` (and later writes, for
//! asyncio's "socket.send() raised exception." warning). `connection_lost` runs
//! exactly once, after the buffer is flushed (`close`) or dropped (`abort`, error).
//!
//! Invariant: `state` is never borrowed across a call into Python.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::{Direction, LoopCore};
use crate::gil::{GilCell, GilRefCell};
use crate::py;

/// CPython: `_SelectorTransport.max_size`, the most one read returns.
const MAX_SIZE: usize = 256 * 1024;
/// CPython: `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// Chunks handed to one `writev`.
const WRITEV_MAX: usize = 64;

struct StreamState {
    protocol: Option<Py<PyAny>>,
    /// A `BufferedProtocol` (reads go through `get_buffer`/`buffer_updated`).
    buffered: bool,
    protocol_connected: bool,
    server: Option<Py<PyAny>>,
    closing: bool,
    conn_lost: u32,
    /// `write_eof()` was called.
    eof: bool,
    /// Reading paused by `pause_reading()`.
    paused: bool,
    /// `pause_writing()` was called on the protocol.
    protocol_paused: bool,
    high_water: usize,
    low_water: usize,
    /// Unsent data: immutable `bytes`, the first one partly sent up to `head_sent`.
    buffer: VecDeque<Py<PyBytes>>,
    head_sent: usize,
    buffer_size: usize,
    empty_waiter: Option<Py<PyAny>>,
}

#[pyclass(frozen, weakref, module = "oxloop._oxloop", name = "SocketTransport")]
pub struct StreamTransport {
    event_loop: GilCell<Option<Py<LoopCore>>>,
    sock: GilCell<Option<Py<PyAny>>>,
    fd: RawFd,
    extra: Py<PyDict>,
    /// The bound methods registered as reader/writer callbacks (made once).
    read_ready: GilCell<Option<Py<PyAny>>>,
    write_ready: GilCell<Option<Py<PyAny>>>,
    state: GilRefCell<StreamState>,
}

fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

fn is_retry(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR))
}

impl StreamTransport {
    fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.event_loop.clone_ref(py).map(|l| l.into_bound(py))
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop(py).is_some_and(|l| l.get().debug())
    }

    /// `call_soon(callback, *args)` on the transport's loop.
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        if let Some(lp) = self.event_loop(py) {
            LoopCore::call_soon(&lp, callback, args, None)?;
        }
        Ok(())
    }

    fn unwatch(&self, py: Python<'_>, direction: Direction) -> PyResult<()> {
        if let Some(lp) = self.event_loop(py) {
            LoopCore::remove_fd_callback(&lp, self.fd, direction)?;
        }
        Ok(())
    }

    fn watch(&self, py: Python<'_>, direction: Direction) -> PyResult<()> {
        let callback = match direction {
            Direction::Read => self.read_ready.clone_ref(py),
            Direction::Write => self.write_ready.clone_ref(py),
        };
        if let (Some(lp), Some(callback)) = (self.event_loop(py), callback) {
            LoopCore::add_fd_callback(
                &lp,
                self.fd,
                callback.bind(py),
                PyTuple::empty(py),
                direction,
            )?;
        }
        Ok(())
    }

    fn logger_debug<'py>(py: Python<'py>, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<()> {
        py::asyncio_logger(py)?
            .call_method1("debug", args)
            .map(drop)
    }

    /// CPython: `_SelectorTransport._fatal_error`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if exc.is_instance_of::<PyOSError>(py) {
            if this.debug(py) {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", exc.clone_ref(py).into_value(py))?;
                py::asyncio_logger(py)?.call_method(
                    "debug",
                    ("%r: %s", slf, message),
                    Some(&kwargs),
                )?;
            }
        } else if let Some(lp) = this.event_loop(py) {
            let protocol = this
                .state
                .borrow_mut(py)
                .protocol
                .as_ref()
                .map(|p| p.clone_ref(py));
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", exc.clone_ref(py).into_value(py))?;
            context.set_item("transport", slf)?;
            context.set_item("protocol", protocol)?;
            lp.call_method1("call_exception_handler", (context,))?;
        }
        Self::force_close(slf, Some(exc.into_value(py).into_any()))
    }

    /// CPython: `_SelectorTransport._force_close`.
    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (had_buffer, was_closing, dropped) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let dropped = std::mem::take(&mut st.buffer);
            let had_buffer = !dropped.is_empty();
            st.head_sent = 0;
            st.buffer_size = 0;
            let was_closing = st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (had_buffer, was_closing, dropped)
        };
        drop(dropped);
        if had_buffer {
            this.unwatch(py, Direction::Write)?;
        }
        if !was_closing {
            this.unwatch(py, Direction::Read)?;
        }
        let callback = slf.getattr("_call_connection_lost")?;
        this.call_soon(
            py,
            &callback,
            PyTuple::new(py, [exc.unwrap_or_else(|| py.None())])?,
        )
    }

    /// CPython: `_read_ready__on_eof`.
    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().debug(py) {
            Self::logger_debug(py, ("%r received EOF", slf))?;
        }
        match protocol.call_method0("eof_received") {
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => {
                Self::fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed.")
            }
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    // The protocol may still write, but nothing more can be read.
                    slf.get().unwatch(py, Direction::Read)
                } else {
                    Self::close(slf)
                }
            }
        }
    }

    /// CPython: `_read_ready__get_buffer` (BufferedProtocol).
    fn read_into_buffer(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let buf = match protocol.call_method1("get_buffer", (-1,)).and_then(|buf| {
            if buf.len()? == 0 {
                Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ))
            } else {
                Ok(buf)
            }
        }) {
            Ok(buf) => buf,
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => {
                return Self::fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.")
            }
        };
        let Some(sock) = this.sock.clone_ref(py) else {
            return Ok(());
        };
        let nbytes: usize = match sock.bind(py).call_method1("recv_into", (buf,)) {
            Ok(n) => n.extract()?,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => return Ok(()),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => return Ok(()),
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => return Self::fatal_error(slf, e, "Fatal read error on socket transport"),
        };
        if nbytes == 0 {
            return Self::on_eof(slf, protocol);
        }
        match protocol.call_method1("buffer_updated", (nbytes,)) {
            Ok(_) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Self::fatal_error(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
        }
    }

    /// CPython: `_FlowControlMixin._maybe_pause_protocol`.
    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().state.borrow_mut(py);
            if st.buffer_size <= st.high_water || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow(
            slf,
            protocol,
            "pause_writing",
            "protocol.pause_writing() failed",
        )
    }

    /// CPython: `_FlowControlMixin._maybe_resume_protocol`.
    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().state.borrow_mut(py);
            if !(st.protocol_paused && st.buffer_size <= st.low_water) {
                return Ok(());
            }
            st.protocol_paused = false;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow(
            slf,
            protocol,
            "resume_writing",
            "protocol.resume_writing() failed",
        )
    }

    fn notify_flow(
        slf: &Bound<'_, Self>,
        protocol: Option<Py<PyAny>>,
        method: &str,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = protocol else {
            return Ok(());
        };
        match protocol.bind(py).call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => {
                let Some(lp) = slf.get().event_loop(py) else {
                    return Ok(());
                };
                let context = PyDict::new(py);
                context.set_item("message", message)?;
                context.set_item("exception", e.into_value(py))?;
                context.set_item("transport", slf)?;
                context.set_item("protocol", protocol)?;
                lp.call_method1("call_exception_handler", (context,))
                    .map(drop)
            }
        }
    }

    /// Sends from the buffer with `writev`; returns the bytes sent.
    fn send_buffer(&self, py: Python<'_>) -> std::io::Result<usize> {
        let st = self.state.borrow_mut(py);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(st.buffer.len().min(WRITEV_MAX));
        for (i, chunk) in st.buffer.iter().take(WRITEV_MAX).enumerate() {
            let bytes = chunk.bind(py).as_bytes();
            let skip = if i == 0 { st.head_sent } else { 0 };
            iov.push(libc::iovec {
                iov_base: bytes[skip..].as_ptr().cast_mut().cast(),
                iov_len: bytes.len() - skip,
            });
        }
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: every iovec points into a live `bytes` object kept alive by the
        // buffer for the duration of the call (we hold the GIL and the borrow).
        let n = unsafe { libc::writev(self.fd, iov.as_ptr(), count) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Drops `n` sent bytes from the front of the buffer.
    fn consume(&self, py: Python<'_>, mut n: usize) -> Vec<Py<PyBytes>> {
        let mut st = self.state.borrow_mut(py);
        let mut done = Vec::new();
        st.buffer_size -= n.min(st.buffer_size);
        while n > 0 {
            let Some(head) = st.buffer.front() else {
                break;
            };
            let left = head.bind(py).as_bytes().len() - st.head_sent;
            if n >= left {
                n -= left;
                st.head_sent = 0;
                if let Some(chunk) = st.buffer.pop_front() {
                    done.push(chunk);
                }
            } else {
                st.head_sent += n;
                n = 0;
            }
        }
        done
    }

    fn shutdown_write(&self) -> PyResult<()> {
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::shutdown(self.fd, libc::SHUT_WR) } < 0 {
            return Err(os_error(&std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn bytes_of<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(bytes.clone());
        }
        if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            // A mutable buffer can change after write() returns: keep a copy, as
            // asyncio's bytearray buffer does.
            return Ok(data
                .py()
                .get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?);
        }
        Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {}",
            data.get_type().name()?.repr()?
        )))
    }
}

#[pymethods]
impl StreamTransport {
    /// `_SelectorSocketTransport(loop, sock, protocol, waiter, extra, server)`.
    #[staticmethod]
    #[pyo3(signature = (event_loop, sock, protocol, waiter=None, extra=None, server=None))]
    fn _create<'py>(
        event_loop: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        waiter: Option<&Bound<'py, PyAny>>,
        extra: Option<Bound<'py, PyDict>>,
        server: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Self>> {
        let py = event_loop.py();
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let extra = extra.unwrap_or_else(|| PyDict::new(py));
        extra.set_item("socket", py::transport_socket(py)?.call1((sock,))?)?;
        let sockname = sock.call_method0("getsockname").or_else(|e| {
            if e.is_instance_of::<PyOSError>(py) {
                Ok(py.None().into_bound(py))
            } else {
                Err(e)
            }
        })?;
        extra.set_item("sockname", sockname)?;
        if !extra.contains("peername")? {
            let peername = sock.call_method0("getpeername").or_else(|e| {
                if e.is_instance_of::<PyOSError>(py) {
                    Ok(py.None().into_bound(py))
                } else {
                    Err(e)
                }
            })?;
            extra.set_item("peername", peername)?;
        }
        let server = server.filter(|s| !s.is_none());
        let transport = Bound::new(
            py,
            Self {
                event_loop: GilCell::new(Some(event_loop.clone().unbind())),
                sock: GilCell::new(Some(sock.clone().unbind())),
                fd,
                extra: extra.unbind(),
                read_ready: GilCell::new(None),
                write_ready: GilCell::new(None),
                state: GilRefCell::new(StreamState {
                    protocol: None,
                    buffered: false,
                    protocol_connected: false,
                    server: server.map(|s| s.clone().unbind()),
                    closing: false,
                    conn_lost: 0,
                    eof: false,
                    paused: false,
                    protocol_paused: false,
                    high_water: 64 * 1024,
                    low_water: 16 * 1024,
                    buffer: VecDeque::new(),
                    head_sent: 0,
                    buffer_size: 0,
                    empty_waiter: None,
                }),
            },
        )?;
        let this = transport.get();
        drop(
            this.read_ready
                .replace(py, Some(transport.getattr("_read_ready")?.unbind())),
        );
        drop(
            this.write_ready
                .replace(py, Some(transport.getattr("_write_ready")?.unbind())),
        );
        transport.call_method1("set_protocol", (protocol,))?;
        if let Some(server) = server {
            server.call_method0("_attach")?;
        }
        event_loop
            .getattr("_transports")?
            .set_item(fd, &transport)?;
        py::set_nodelay(py)?.call1((sock,))?;
        // CPython: connection_made first, then start reading, then the waiter.
        LoopCore::call_soon(
            event_loop,
            &protocol.getattr("connection_made")?,
            PyTuple::new(py, [&transport])?,
            None,
        )?;
        let add_reader = transport.getattr("_add_reader")?;
        let read_ready = transport.getattr("_read_ready")?;
        LoopCore::call_soon(
            event_loop,
            &add_reader,
            PyTuple::new(py, [fd.into_pyobject(py)?.into_any(), read_ready])?,
            None,
        )?;
        if let Some(waiter) = waiter.filter(|w| !w.is_none()) {
            LoopCore::call_soon(
                event_loop,
                py::set_result_unless_cancelled(py)?,
                PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?,
                None,
            )?;
        }
        Ok(transport)
    }

    // ----- hot paths ---------------------------------------------------------------

    /// The reader callback: `_read_ready__data_received` / `__get_buffer`.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, buffered) = {
            let st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let Some(protocol) = st.protocol.as_ref() else {
                return Ok(());
            };
            (protocol.clone_ref(py), st.buffered)
        };
        let protocol = protocol.into_bound(py);
        if buffered {
            return Self::read_into_buffer(slf, &protocol);
        }
        // Straight into a fresh `bytes`, as socket.recv does: one copy less than a
        // shared buffer, measured 0.5x -> ~1.0x uvloop on 100 KiB echo (benches/net.py).
        match crate::ffi::recv_into_new_bytes(py, this.fd, MAX_SIZE) {
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => Self::fatal_error(slf, os_error(&e), "Fatal read error on socket transport"),
            Ok(None) => Self::on_eof(slf, &protocol),
            // CPython looks the method up on every call (no caching).
            Ok(Some(data)) => match protocol
                .call_method1(pyo3::intern!(py, "data_received"), (data,))
            {
                Ok(_) => Ok(()),
                Err(e) if is_exit(py, &e) => Err(e),
                Err(e) => {
                    Self::fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.")
                }
            },
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes = Self::bytes_of(data)?;
        {
            let mut st = this.state.borrow_mut(py);
            if st.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if bytes.as_bytes().is_empty() {
                return Ok(());
            }
            if st.conn_lost > 0 {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                drop(st);
                if warn {
                    py::asyncio_logger(py)?
                        .call_method1("warning", ("socket.send() raised exception.",))?;
                }
                return Ok(());
            }
            if !st.buffer.is_empty() {
                st.buffer_size += bytes.as_bytes().len();
                st.buffer.push_back(bytes.unbind());
                drop(st);
                return Self::maybe_pause_protocol(slf);
            }
        }
        // Nothing buffered: try to send now.
        let raw = bytes.as_bytes();
        // SAFETY: `raw` is the live content of `bytes`, which we hold.
        let n = unsafe { libc::send(this.fd, raw.as_ptr().cast(), raw.len(), libc::MSG_NOSIGNAL) };
        let sent = match usize::try_from(n) {
            Ok(sent) if sent == raw.len() => return Ok(()),
            Ok(sent) => sent,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if !is_retry(&err) {
                    return Self::fatal_error(
                        slf,
                        os_error(&err),
                        "Fatal write error on socket transport",
                    );
                }
                0
            }
        };
        // Not all was written: register the writer and buffer the rest.
        this.watch(py, Direction::Write)?;
        {
            let mut st = this.state.borrow_mut(py);
            st.buffer_size += raw.len() - sent;
            st.head_sent = sent;
            st.buffer.push_back(bytes.clone().unbind());
        }
        Self::maybe_pause_protocol(slf)
    }

    /// The writer callback: flushes the buffer (CPython `_write_ready`).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            if st.buffer.is_empty() {
                drop(st);
                return this.unwatch(py, Direction::Write);
            }
        }
        match this.send_buffer(py) {
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => {
                this.unwatch(py, Direction::Write)?;
                let dropped = {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer_size = 0;
                    st.head_sent = 0;
                    std::mem::take(&mut st.buffer)
                };
                drop(dropped);
                let exc = os_error(&e);
                let waiter = this
                    .state
                    .borrow_mut(py)
                    .empty_waiter
                    .as_ref()
                    .map(|w| w.clone_ref(py));
                Self::fatal_error(
                    slf,
                    exc.clone_ref(py),
                    "Fatal write error on socket transport",
                )?;
                if let Some(waiter) = waiter {
                    waiter
                        .bind(py)
                        .call_method1("set_exception", (exc.into_value(py),))?;
                }
                Ok(())
            }
            Ok(n) => {
                drop(this.consume(py, n));
                Self::maybe_resume_protocol(slf)?; // may append to the buffer
                let (empty, waiter, closing, eof) = {
                    let st = this.state.borrow_mut(py);
                    (
                        st.buffer.is_empty(),
                        st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                        st.closing,
                        st.eof,
                    )
                };
                if !empty {
                    return Ok(());
                }
                this.unwatch(py, Direction::Write)?;
                if let Some(waiter) = waiter {
                    waiter.bind(py).call_method1("set_result", (py.None(),))?;
                }
                if closing {
                    Self::_call_connection_lost(slf, None)
                } else if eof {
                    this.shutdown_write()
                } else {
                    Ok(())
                }
            }
        }
    }

    // ----- the rest of the transport API ----------------------------------------------

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let joined = PyBytes::new(py, b"").call_method1("join", (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let empty = {
            let mut st = self.state.borrow_mut(py);
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buffer.is_empty()
        };
        if empty {
            self.shutdown_write()?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let empty = {
            let mut st = this.state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let empty = st.buffer.is_empty();
            if empty {
                st.conn_lost += 1;
            }
            empty
        };
        this.unwatch(py, Direction::Read)?;
        if empty {
            this.unwatch(py, Direction::Write)?;
            let callback = slf.getattr("_call_connection_lost")?;
            this.call_soon(py, &callback, PyTuple::new(py, [py.None()])?)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).closing
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.extra.bind(py).get_item(name)? {
            Some(value) => Ok(value),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = protocol.is_instance(py::buffered_protocol(py)?)?;
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.buffered = buffered;
            st.protocol_connected = true;
            st.protocol.replace(protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow_mut(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow_mut(py);
        !st.paused && !st.closing
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.state.borrow_mut(py);
            if st.paused || st.closing {
                return Ok(());
            }
            st.paused = true;
        }
        this.unwatch(py, Direction::Read)?;
        if this.debug(py) {
            Self::logger_debug(py, ("%r pauses reading", slf))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.state.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        this.watch(py, Direction::Read)?;
        if this.debug(py) {
            Self::logger_debug(py, ("%r resumes reading", slf))?;
        }
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (high, low) = match (high, low) {
            (None, None) => (64 * 1024, 16 * 1024),
            (None, Some(low)) => (4 * low, low),
            (Some(high), None) => (high, high / 4),
            (Some(high), Some(low)) => (high, low),
        };
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        {
            let mut st = slf.get().state.borrow_mut(slf.py());
            st.high_water = usize::try_from(high).unwrap_or(usize::MAX);
            st.low_water = usize::try_from(low).unwrap_or(0);
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let st = self.state.borrow_mut(py);
        (st.low_water, st.high_water)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).buffer_size
    }

    /// CPython: `_SelectorTransport._add_reader` (skipped once closing).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        if self.state.borrow_mut(py).closing {
            return Ok(());
        }
        if let Some(lp) = self.event_loop(py) {
            let all = PyTuple::new(py, [fd.clone(), callback.clone()])?
                .add(args)?
                .cast_into::<PyTuple>()?;
            lp.call_method1("_add_reader", all)?;
        }
        Ok(())
    }

    /// CPython: `_SelectorTransport._call_connection_lost`.
    #[pyo3(signature = (exc))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, connected) = {
            let st = this.state.borrow_mut(py);
            (
                st.protocol.as_ref().map(|p| p.clone_ref(py)),
                st.protocol_connected,
            )
        };
        let result = match (connected, protocol) {
            (true, Some(protocol)) => protocol
                .bind(py)
                .call_method1("connection_lost", (exc.unwrap_or_else(|| py.None()),))
                .map(drop),
            _ => Ok(()),
        };
        // finally: release everything, whatever connection_lost did.
        let sock = this.sock.replace(py, None);
        let closed = sock
            .as_ref()
            .map_or(Ok(()), |s| s.bind(py).call_method0("close").map(drop));
        let (server, old) = {
            let mut st = this.state.borrow_mut(py);
            (st.server.take(), st.protocol.take())
        };
        drop((sock, old));
        drop(this.event_loop.replace(py, None));
        drop(this.read_ready.replace(py, None));
        drop(this.write_ready.replace(py, None));
        let detached = server.map_or(Ok(()), |s| s.bind(py).call_method0("_detach").map(drop));
        result.and(closed).and(detached)
    }

    fn _make_empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.state.borrow_mut(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let lp = self
            .event_loop(py)
            .ok_or_else(|| PyRuntimeError::new_err("transport is closed"))?;
        let waiter = lp.call_method0("create_future")?;
        let empty = {
            let mut st = self.state.borrow_mut(py);
            st.empty_waiter = Some(waiter.clone().unbind());
            st.buffer.is_empty()
        };
        if empty {
            waiter.call_method1("set_result", (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.state.borrow_mut(py).empty_waiter.take();
        drop(old);
    }

    #[getter]
    fn _sendfile_compatible<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py::sendfile_try_native(py)?.getattr("TRY_NATIVE")
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).protocol_paused
    }

    #[getter]
    fn _start_tls_compatible(&self) -> bool {
        true
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock.clone_ref(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.event_loop.clone_ref(py).map(Py::into_any)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.is_closing(py)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.borrow_mut(py).conn_lost
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    /// `asyncio.selector_events._SelectorSocketTransport`, so that
    /// `isinstance(transport, asyncio.Transport)` holds (see `Handle.__class__`).
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::selector_socket_transport(py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let mut info = vec!["_SelectorSocketTransport".to_owned()];
        let closing = self.is_closing(py);
        if !self.sock.is_some(py) {
            info.push("closed".to_owned());
        } else if closing {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        if let Some(lp) = self.event_loop(py).filter(|l| !l.get().closed()) {
            let core = lp.get();
            let read = if core.is_watching(py, self.fd, Direction::Read) {
                "polling"
            } else {
                "idle"
            };
            info.push(format!("read={read}"));
            let write = if core.is_watching(py, self.fd, Direction::Write) {
                "polling"
            } else {
                "idle"
            };
            info.push(format!(
                "write=<{write}, bufsize={}>",
                self.get_write_buffer_size(py)
            ));
        }
        format!("<{}>", info.join(" "))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: called by the GC only.
        unsafe {
            visit.call(self.event_loop.get_for_gc())?;
            visit.call(self.sock.get_for_gc())?;
            visit.call(self.read_ready.get_for_gc())?;
            visit.call(self.write_ready.get_for_gc())?;
        }
        visit.call(&self.extra)?;
        // SAFETY: called by the GC only.
        if let Some(st) = unsafe { self.state.try_get_for_gc() } {
            visit.call(&st.protocol)?;
            visit.call(&st.server)?;
            visit.call(&st.empty_waiter)?;
            for chunk in &st.buffer {
                visit.call(chunk)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let old = (
            self.read_ready.replace(py, None),
            self.write_ready.replace(py, None),
            self.event_loop.replace(py, None),
        );
        let state = {
            let mut st = self.state.borrow_mut(py);
            (st.protocol.take(), st.server.take(), st.empty_waiter.take())
        };
        drop((old, state));
    }
}

impl Drop for StreamTransport {
    fn drop(&mut self) {
        // CPython: _SelectorTransport.__del__ warns about an unclosed transport and
        // closes its socket. Dealloc runs with the GIL held.
        Python::attach(|py| {
            let Some(sock) = self.sock.replace(py, None) else {
                return;
            };
            let message = format!(
                "unclosed transport <_SelectorSocketTransport fd={}>",
                self.fd
            );
            let warned = py::warn(py).and_then(|warn| {
                warn.call1((
                    message,
                    py.get_type::<pyo3::exceptions::PyResourceWarning>(),
                ))
                .map(drop)
            });
            if let Err(err) = warned {
                err.write_unraisable(py, None);
            }
            if let Err(err) = sock.bind(py).call_method0("close") {
                err.write_unraisable(py, None);
            }
        });
    }
}

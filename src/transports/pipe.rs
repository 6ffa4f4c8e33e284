//! The native pipe transports: `connect_read_pipe` and `connect_write_pipe` (pipes,
//! FIFOs, character devices such as ptys, and sockets), and so a subprocess's stdio.
//!
//! Mirror `Lib/asyncio/unix_events.py::_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` (CPython 3.11). They share the selector transports'
//! base (`base.rs`); where asyncio's pipe classes differ, their rules
//! (`READ_PIPE`, `WRITE_PIPE` below) say so: `extra` holds `pipe`, the pipes are
//! not in `loop._transports`, a read pipe reports `OSError`s other than `EIO` to
//! the exception handler, `_close` has no `_conn_lost` guard, and the reprs and the
//! dropped-write warning read differently.
//!
//! They have a `__dict__`, as asyncio's Python classes do: CPython's subprocess tests
//! (and users) replace their methods on the instance.
//!
//! What differs from the stream transport, as in asyncio: a read pipe's end of file
//! schedules `eof_received` (its result ignored) and then `connection_lost`; an
//! exception from `data_received` is not caught here (it reaches the exception
//! handler as the callback's); a write pipe has no half-close, `write_eof()` closes
//! once the buffer is flushed; it watches its fd for reading to notice that the
//! reader went away (`connection_lost(BrokenPipeError())` when data was pending).

use std::os::fd::RawFd;

use oxloop_core::sys;

use pyo3::exceptions::{
    PyAssertionError, PyAttributeError, PyBrokenPipeError, PyNotImplementedError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::base::{is_retry, KindRules, Transport, WriteCall};
use super::watch::ReadyFns;
use super::MAX_SIZE;
use crate::errors::os_error;
use crate::event_loop::{Direction, LoopCore};
use crate::ffi::ReadCall;
use crate::py;

/// The file type of `fd` (`os.fstat(fd).st_mode & S_IFMT`).
fn file_type(fd: RawFd) -> PyResult<libc::mode_t> {
    // SAFETY: the pipe object the transport is being made over holds `fd` (its
    // `fileno()` just now, as asyncio's `os.fstat(self._fileno)`).
    unsafe { sys::borrow(fd) }
        .and_then(sys::file_type)
        .map_err(|e| os_error(&e))
}

/// `os.set_blocking(fd, False)`.
fn set_non_blocking(fd: RawFd) -> PyResult<()> {
    // SAFETY: as in `file_type`.
    unsafe { sys::borrow(fd) }
        .and_then(sys::set_nonblocking)
        .map_err(|e| os_error(&e))
}

/// `pipe.fileno()`, its file type checked as the pipe transports check it, and the
/// fd made non-blocking (the fd is the pipe object's, just asked, under the same
/// GIL hold: still owned by it for the fstat and fcntl) (before the transport exists: a refused pipe is left open
/// and unwarned, as asyncio leaves it).
fn checked_fd(
    pipe: &Bound<'_, PyAny>,
    allowed: &[libc::mode_t],
    message: &str,
) -> PyResult<(RawFd, libc::mode_t)> {
    let fd: RawFd = pipe.call_method0("fileno")?.extract()?;
    let kind = file_type(fd)?;
    if !allowed.contains(&kind) {
        return Err(PyValueError::new_err(message.to_owned()));
    }
    set_non_blocking(fd)?;
    Ok((fd, kind))
}

fn log_closed_by_peer(slf: &Bound<'_, Transport>) -> PyResult<()> {
    let py = slf.py();
    if slf.get().debug(py) {
        py::asyncio_logger(py)?.call_method1("info", ("%r was closed by peer", slf))?;
    }
    Ok(())
}

fn no_attribute(name: &str) -> PyErr {
    PyAttributeError::new_err(format!(
        "'_UnixReadPipeTransport' object has no attribute '{name}'"
    ))
}

#[pyclass(extends = Transport, frozen, dict, module = "oxloop._oxloop", name = "ReadPipeTransport")]
pub struct ReadPipeTransport;

#[pymethods]
impl ReadPipeTransport {
    /// `_UnixReadPipeTransport(loop, pipe, protocol, waiter, extra)`.
    #[staticmethod]
    #[pyo3(signature = (event_loop, pipe, protocol, waiter=None, extra=None))]
    fn _create<'py>(
        event_loop: &Bound<'py, LoopCore>,
        pipe: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        waiter: Option<&Bound<'py, PyAny>>,
        extra: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, Self>> {
        let (fd, _) = checked_fd(
            pipe,
            &[libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR],
            "Pipe transport is for pipes/sockets only.",
        )?;
        let base = Transport::new_pipe(&READ_PIPE, pipe, fd, extra)?;
        Transport::create(
            base,
            Self,
            event_loop,
            protocol,
            waiter,
            &READ_PIPE_READY,
            true,
        )
    }

    /// The reader callback: `os.read(fd, max_size)`, then `data_received` or the
    /// end of file.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let Some(fd) = this.owned_fd(py) else {
            // The pipe was detached (`_pipe = None`) or the transport closed.
            return Ok(());
        };
        // SAFETY: `fd` is owned: `owned_fd` just now, and no Python code runs
        // before the read.
        let read = unsafe { sys::borrow(fd) }
            .and_then(|fd| crate::ffi::read_into_new_bytes(py, fd, MAX_SIZE, ReadCall::Read));
        if let Ok(Some(data)) = &read {
            let n = data
                .cast::<pyo3::types::PyBytes>()
                .map_or(0, |b| b.as_bytes().len());
            this.count_bytes(py, n, 0);
        }
        match read {
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => {
                Transport::fatal_error(base, os_error(&e), "Fatal read error on pipe transport")
            }
            Ok(Some(data)) => match this.protocol(py) {
                // Not caught: asyncio lets it reach the exception handler.
                Some(protocol) => crate::ffi::call_protocol(
                    protocol.bind(py),
                    pyo3::intern!(py, "data_received"),
                    &[data.as_any()],
                )
                .map(drop),
                None => Ok(()),
            },
            Ok(None) => {
                log_closed_by_peer(base)?;
                let protocol = {
                    let mut st = this.state.borrow_mut(py);
                    st.closing = true;
                    st.protocol.as_ref().map(|p| p.clone_ref(py))
                };
                this.unwatch(py, Direction::Read)?;
                if let (Some(lp), Some(protocol)) = (this.event_loop(py), protocol) {
                    let eof_received = protocol.bind(py).getattr("eof_received")?;
                    LoopCore::call_soon(&lp, &eof_received, PyTuple::empty(py), None)?;
                }
                this.schedule_connection_lost(base, py.None())
            }
        }
    }

    // asyncio's read pipe is a `ReadTransport` only: the write side of the shared
    // base is hidden (`hasattr` is false, and calling it is an `AttributeError`).

    #[getter]
    fn set_write_buffer_limits(&self) -> PyResult<()> {
        Err(no_attribute("set_write_buffer_limits"))
    }

    #[getter(get_write_buffer_size)] // named: a bare getter drops `get_`
    fn get_write_buffer_size(&self) -> PyResult<()> {
        Err(no_attribute("get_write_buffer_size"))
    }

    #[getter(get_write_buffer_limits)]
    fn get_write_buffer_limits(&self) -> PyResult<()> {
        Err(no_attribute("get_write_buffer_limits"))
    }

    #[getter]
    fn abort(&self) -> PyResult<()> {
        Err(no_attribute("abort"))
    }

    /// `asyncio.unix_events._UnixReadPipeTransport`, so that
    /// `isinstance(transport, asyncio.ReadTransport)` holds.
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::unix_read_pipe_transport(py)
    }
}

#[pyclass(extends = Transport, frozen, dict, module = "oxloop._oxloop", name = "WritePipeTransport")]
pub struct WritePipeTransport;

impl WritePipeTransport {
    /// CPython: `write_eof`, which is also what `close()` does.
    fn close_after_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let empty = {
            let mut st = this.state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            st.buffer.is_empty()
        };
        if empty {
            this.unwatch(py, Direction::Read)?;
            this.schedule_connection_lost(base, py.None())?;
        }
        Ok(())
    }
}

#[pymethods]
impl WritePipeTransport {
    /// `_UnixWritePipeTransport(loop, pipe, protocol, waiter, extra)`.
    #[staticmethod]
    #[pyo3(signature = (event_loop, pipe, protocol, waiter=None, extra=None))]
    fn _create<'py>(
        event_loop: &Bound<'py, LoopCore>,
        pipe: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        waiter: Option<&Bound<'py, PyAny>>,
        extra: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, Self>> {
        let (fd, file_type) = checked_fd(
            pipe,
            &[libc::S_IFCHR, libc::S_IFIFO, libc::S_IFSOCK],
            "Pipe transport is only for pipes, sockets and character devices",
        )?;
        let base = Transport::new_pipe(&WRITE_PIPE, pipe, fd, extra)?;
        // Readable means the reader went away; a character device never says so.
        let watch_reader = file_type != libc::S_IFCHR;
        Transport::create(
            base,
            Self,
            event_loop,
            protocol,
            waiter,
            &WRITE_PIPE_READY,
            watch_reader,
        )
    }

    /// The reader callback: the pipe's reader closed its end.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        log_closed_by_peer(base)?;
        let pending = !base.get().state.borrow_mut(py).buffer.is_empty();
        let exc = if pending {
            Some(PyBrokenPipeError::new_err(()).into_value(py).into_any())
        } else {
            None
        };
        Transport::force_close(base, exc)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let Some(bytes) = Transport::immutable_bytes(data)? else {
            // asyncio: `assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)`.
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        };
        if bytes.as_bytes().is_empty() {
            return Ok(());
        }
        let buffered = {
            let st = this.state.borrow_mut(py);
            if st.conn_lost > 0 || st.closing {
                drop(st);
                return this.count_write_after_lost(py);
            }
            !st.buffer.is_empty()
        };
        Transport::send_or_buffer(
            base,
            &bytes,
            buffered,
            "Fatal write error on pipe transport",
        )
    }

    /// `WriteTransport.writelines`: one `self.write()` of the joined data.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let joined = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        if let Some(write) = Transport::instance_override(slf.as_any(), "write")? {
            return write.call1((joined,)).map(drop);
        }
        Self::write(slf, &joined)
    }

    /// The writer callback: flushes the buffer (CPython `_write_ready`).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        if this.state.borrow_mut(py).buffer.is_empty() {
            return this.unwatch(py, Direction::Write);
        }
        match this.send_buffer(py) {
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => {
                drop(this.take_buffer(py));
                this.unwatch(py, Direction::Write)?;
                Transport::fatal_error(base, os_error(&e), "Fatal write error on pipe transport")
            }
            Ok(n) => {
                drop(this.consume(py, n));
                if !this.state.borrow_mut(py).buffer.is_empty() {
                    return Ok(());
                }
                this.unwatch(py, Direction::Write)?;
                Transport::maybe_resume_protocol(base)?; // may append to the buffer
                if this.is_closing(py) {
                    this.unwatch(py, Direction::Read)?;
                    Transport::_call_connection_lost(base, None)?;
                }
                Ok(())
            }
        }
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    // asyncio's write pipe is a `Transport` whose read side is `ReadTransport`'s
    // abstract methods.

    #[allow(clippy::unused_self)]
    fn is_reading(&self) -> PyResult<bool> {
        Err(PyNotImplementedError::new_err(()))
    }

    #[allow(clippy::unused_self)]
    fn pause_reading(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    #[allow(clippy::unused_self)]
    fn resume_reading(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    /// No half-close for a pipe: closes once the buffer is flushed.
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_after_flush(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.as_super().get().sock.is_some(slf.py()) {
            return Ok(());
        }
        // asyncio: `self.write_eof()`, whatever the instance put there.
        if let Some(write_eof) = Transport::instance_override(slf.as_any(), "write_eof")? {
            if slf.as_super().get().is_closing(slf.py()) {
                return Ok(());
            }
            return write_eof.call0().map(drop);
        }
        Self::close_after_flush(slf)
    }

    /// `asyncio.unix_events._UnixWritePipeTransport`, so that
    /// `isinstance(transport, asyncio.WriteTransport)` holds.
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::unix_write_pipe_transport(py)
    }
}

/// The reader and writer the loop runs for this kind (see `Transport::run_ready`).
static READ_PIPE_READY: ReadyFns = ReadyFns {
    read: ("_read_ready", native!(ReadPipeTransport, _read_ready)),
    write: None,
};

/// The reader and writer the loop runs for this kind (see `Transport::run_ready`).
static WRITE_PIPE_READY: ReadyFns = ReadyFns {
    read: ("_read_ready", native!(WritePipeTransport, _read_ready)),
    write: Some(("_write_ready", native!(WritePipeTransport, _write_ready))),
};

/// CPython: `unix_events._UnixReadPipeTransport`.
static READ_PIPE: KindRules = KindRules {
    class_name: "_UnixReadPipeTransport",
    // asyncio does not register pipes in `loop._transports`.
    in_loop_transports: false,
    // `os.read(self._fileno, ...)`: the fd number, not the pipe object's methods.
    owns_fd: true,
    // Not used: a read pipe does not write.
    write_call: WriteCall::Write,
    lost_write_warning: PIPE_LOST_WRITE,
    // `_fatal_error`: only `EIO` (a pty whose other side closed) is quiet.
    quiet_errno: Some(libc::EIO),
    // `_close`: no `_conn_lost` guard, always `_remove_reader`.
    force_close_guarded: false,
    repr_tail: read_pipe_repr_tail,
};

/// CPython: `unix_events._UnixWritePipeTransport`.
static WRITE_PIPE: KindRules = KindRules {
    class_name: "_UnixWritePipeTransport",
    in_loop_transports: false,
    // `os.write(self._fileno, data)`.
    owns_fd: true,
    write_call: WriteCall::Write,
    lost_write_warning: PIPE_LOST_WRITE,
    // `_fatal_error`: `if isinstance(exc, OSError)`, a debug log only.
    quiet_errno: None,
    // `_close`: no `_conn_lost` guard (writes dropped while a closing pipe flushes
    // count there), and always `_remove_reader` (a closing write pipe still
    // watches for its reader's close while it flushes).
    force_close_guarded: false,
    repr_tail: write_pipe_repr_tail,
};

/// `_UnixWritePipeTransport.write`, once `_conn_lost` reaches
/// `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const PIPE_LOST_WRITE: &str = "pipe closed by peer or os.write(pipe, data) raised exception.";

/// CPython: the pipe transports' `__repr__` after `fd=`: the one direction they
/// watch, "open"/"closed" without a selector. True when it asked the loop.
fn pipe_repr_tail(
    this: &Transport,
    py: Python<'_>,
    lp: Option<&Bound<'_, LoopCore>>,
    direction: Direction,
    info: &mut Vec<String>,
) -> bool {
    match lp {
        _ if !this.sock.is_some(py) => info.push("closed".to_owned()),
        None => info.push("open".to_owned()),
        Some(lp) => {
            info.push(this.polling(py, lp, direction).to_owned());
            return true;
        }
    }
    false
}

fn read_pipe_repr_tail(
    this: &Transport,
    py: Python<'_>,
    lp: Option<&Bound<'_, LoopCore>>,
    info: &mut Vec<String>,
) {
    pipe_repr_tail(this, py, lp, Direction::Read, info);
}

/// A write pipe adds its `bufsize` where it shows its watch.
fn write_pipe_repr_tail(
    this: &Transport,
    py: Python<'_>,
    lp: Option<&Bound<'_, LoopCore>>,
    info: &mut Vec<String>,
) {
    if pipe_repr_tail(this, py, lp, Direction::Write, info) {
        info.push(format!("bufsize={}", this.get_write_buffer_size(py)));
    }
}

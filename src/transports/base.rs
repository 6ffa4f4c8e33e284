//! What every selector transport shares: `_SelectorTransport` and
//! `_FlowControlMixin` of CPython 3.11 (`selector_events.py`, `transports.py`).
//!
//! [`Transport`] is a subclassable pyclass holding all the state; the stream,
//! datagram and pipe transports are subclasses that add their hot paths
//! (`write`/`sendto`, `_read_ready`, the writer callback). Close, abort, fatal
//! errors, `connection_lost`, reading pause/resume and the unclosed-transport
//! warning are written once, here, as asyncio writes them once; where asyncio's
//! classes differ, the transport reads its kind's [`KindRules`], a static in the
//! kind's own file. The fd watches are in `watch.rs`, the write buffer and flow
//! control in `flow.rs`, a socket's `extra` in `extra.rs`.
//!
//! States: `closing` is set by `close()`/`abort()`/a fatal error and stops reading;
//! `conn_lost` counts the scheduling of `connection_lost` (and later writes, for
//! asyncio's "socket.send() raised exception." warning). `connection_lost` runs
//! exactly once, after the buffer is flushed (`close`) or dropped (`abort`, error).
//!
//! Invariant: `state` is never borrowed across a call into Python.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::sync::OnceLock;

use pyo3::exceptions::{PyAttributeError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::transport_map::TransportMap;
use crate::event_loop::TransportEvent;
use crate::event_loop::{Direction, LoopCore};
use crate::gil::{GilCell, GilRefCell};

use crate::py;

use super::datagram::DatagramState;
use super::extra::PendingExtra;
use super::flow::{threshold, Chunk, WaterMarks};
use super::lazy_socket::UnmadeSocket;
use super::stream::StreamState;
use super::watch::ReadyFns;

/// CPython: `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(super) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The rules in which asyncio's transport classes differ, one `static` per kind
/// beside its transport (`SOCKET` in stream.rs, `DATAGRAM` in datagram.rs,
/// `READ_PIPE` and `WRITE_PIPE` in pipe.rs), each with its asyncio reference:
/// the common code here and in flow.rs reads these instead of asking the kind.
pub(super) struct KindRules {
    /// The asyncio class the transport stands for (its repr and warnings name it).
    pub class_name: &'static str,
    /// Registered in `loop._transports` by `__init__`.
    pub in_loop_transports: bool,
    /// The transport's own state owns the fd (asyncio reaches it by number);
    /// otherwise the socket object must still hold it (see `owned_fd`).
    pub owns_fd: bool,
    /// The one-shot write and the method name its errors report.
    pub write_call: WriteCall,
    /// asyncio's warning for writes after the connection was lost.
    pub lost_write_warning: &'static str,
    /// The only errno whose `OSError` `_fatal_error` logs in debug mode only
    /// (`None`: every `OSError` is quiet).
    pub quiet_errno: Option<i32>,
    /// `_force_close` returns once `_conn_lost` is set and leaves the reader
    /// alone when already closing (the selector transports' guards).
    pub force_close_guarded: bool,
    /// The repr after `fd=N`; gets the loop unless it is gone or closed.
    pub repr_tail: fn(&Transport, Python<'_>, Option<&Bound<'_, LoopCore>>, &mut Vec<String>),
}

/// A transport's kind: its rules.
pub(super) type Kind = &'static KindRules;

/// The syscall a stream's or write pipe's `write` sends with first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteCall {
    /// `os.write(fd, data)`.
    Write,
    /// `sock.send(data)` (`MSG_NOSIGNAL`: `EPIPE` rather than a `SIGPIPE`).
    Send,
}

impl WriteCall {
    /// The Python method asyncio calls, as its errors name it.
    pub(super) fn method(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Send => "send",
        }
    }
}

pub(super) struct TransportState {
    pub protocol: Option<Py<PyAny>>,
    /// A `BufferedProtocol` (stream reads go through `get_buffer`/`buffer_updated`).
    pub buffered: bool,
    pub protocol_connected: bool,
    pub server: Option<Py<PyAny>>,
    pub closing: bool,
    pub conn_lost: u32,
    /// Reading paused by `pause_reading()`.
    pub paused: bool,
    /// `pause_writing()` was called on the protocol.
    pub protocol_paused: bool,
    /// The water marks as integer thresholds for a size in bytes: `size <=
    /// high_water` is `size <= high` for the number asyncio stores.
    pub high_water: usize,
    pub low_water: usize,
    /// The numbers given to `set_write_buffer_limits` (asyncio keeps whatever
    /// numbers it was given and returns them from `get_write_buffer_limits`);
    /// `None` for the defaults.
    pub marks: Option<Box<WaterMarks>>,
    /// Unsent data; a stream's first chunk is partly sent up to `head_sent`.
    pub buffer: VecDeque<Chunk>,
    pub head_sent: usize,
    pub buffer_size: usize,
    pub kind_state: KindState,
}

/// The state only one kind of transport has; each is defined in its kind's file.
pub(super) enum KindState {
    Stream(StreamState),
    Datagram(DatagramState),
    Pipe,
}

impl KindState {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::Stream(stream) => visit.call(&stream.empty_waiter),
            Self::Datagram(datagram) => visit.call(&datagram.address),
            Self::Pipe => Ok(()),
        }
    }

    /// Takes the Python objects out, to be dropped by the caller outside any borrow.
    fn take_objects(&mut self) -> Option<Py<PyAny>> {
        match self {
            Self::Stream(stream) => stream.empty_waiter.take(),
            Self::Datagram(datagram) => datagram.address.take(),
            Self::Pipe => None,
        }
    }
}

#[pyclass(
    subclass,
    frozen,
    weakref,
    module = "oxloop._oxloop",
    name = "SelectorTransport"
)]
pub struct Transport {
    pub(super) event_loop: GilCell<Option<Py<LoopCore>>>,
    pub(super) sock: GilCell<Option<Py<PyAny>>>,
    /// A connection a server accepted whose `socket.socket` is not made yet: the
    /// transport owns `fd` itself until [`Transport::sock_object`] makes it.
    pub(super) unmade: GilCell<Option<UnmadeSocket>>,
    pub(super) fd: RawFd,
    /// False only in a new object whose fields are not written yet, which the
    /// garbage collector may traverse (3.11 allocates the `__dict__` in between):
    /// zeroed memory reads as false here, and `__traverse__` stops at it.
    pub(super) made: bool,
    /// The `extra` dict; made on first use when everything in it is pending.
    pub(super) extra: GilCell<Option<Py<PyDict>>>,
    /// The entries asyncio's `__init__` puts in `extra` that are made on first use.
    pub(super) pending_extra: GilCell<Option<Box<PendingExtra>>>,
    pub(super) kind: Kind,
    /// The reader's and writer's method names and Rust bodies (`_read_ready`,
    /// ...): the loop runs the body when the fd is ready (`Ready::Transport`),
    /// and the bound method is made only where asyncio's handle must be shown.
    pub(super) ready_fns: OnceLock<&'static ReadyFns>,
    /// Per direction (`Direction::index`): the context the watch runs its body
    /// in, a copy made when the watch is made, as asyncio's `Handle` makes one.
    pub(super) watch_context: [GilCell<Option<Py<PyAny>>>; 2],
    /// Per direction: changed whenever the watch is made, replaced or removed, so
    /// that an event queued for an earlier watch does not run (asyncio cancels
    /// that watch's handle).
    pub(super) watch_generation: [AtomicU32; 2],
    pub(super) state: GilRefCell<TransportState>,
}

pub(super) use crate::errors::is_exit;

pub(super) fn is_retry(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR))
}

impl Transport {
    /// The pipe transports' `__init__` up to the checks their kinds make: the
    /// `extra` dict gets `pipe`, and the pipe object takes the socket's place.
    pub(super) fn new_pipe(
        kind: Kind,
        pipe: &Bound<'_, PyAny>,
        fd: RawFd,
        extra: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let extra = extra.unwrap_or_else(|| PyDict::new(pipe.py()));
        extra.set_item("pipe", pipe)?;
        Ok(Self::from_parts(
            kind,
            fd,
            Some(pipe),
            Some(extra),
            None,
            KindState::Pipe,
        ))
    }

    pub(super) fn from_parts(
        kind: Kind,
        fd: RawFd,
        sock: Option<&Bound<'_, PyAny>>,
        extra: Option<Bound<'_, PyDict>>,
        server: Option<&Bound<'_, PyAny>>,
        kind_state: KindState,
    ) -> Self {
        Self {
            event_loop: GilCell::new(None),
            sock: GilCell::new(sock.map(|s| s.clone().unbind())),
            unmade: GilCell::new(None),
            fd,
            made: true,
            extra: GilCell::new(extra.map(Bound::unbind)),
            pending_extra: GilCell::new(None),
            kind,
            ready_fns: OnceLock::new(),
            watch_context: [GilCell::new(None), GilCell::new(None)],
            watch_generation: [AtomicU32::new(0), AtomicU32::new(0)],
            state: GilRefCell::new(TransportState {
                protocol: None,
                buffered: false,
                protocol_connected: false,
                server: server.map(|s| s.clone().unbind()),
                closing: false,
                conn_lost: 0,
                paused: false,
                protocol_paused: false,
                high_water: 64 * 1024,
                low_water: 16 * 1024,
                marks: None,
                buffer: VecDeque::new(),
                head_sent: 0,
                buffer_size: 0,
                kind_state,
            }),
        }
    }

    /// Makes the transport object of kind `T` over `base` and does the rest of
    /// asyncio's `__init__`: [`Transport::attach`], then
    /// [`Transport::schedule_connection_made`] (starting to read when `read`).
    #[allow(clippy::too_many_arguments)] // asyncio's constructor arguments, once
    pub(super) fn create<'py, T>(
        base: Self,
        kind: T,
        event_loop: &Bound<'py, LoopCore>,
        protocol: &Bound<'py, PyAny>,
        waiter: Option<&Bound<'py, PyAny>>,
        ready_fns: &'static ReadyFns,
        read: bool,
    ) -> PyResult<Bound<'py, T>>
    where
        T: pyo3::PyClass<BaseType = Self>,
    {
        let transport = Bound::new(
            event_loop.py(),
            PyClassInitializer::from(base).add_subclass(kind),
        )?;
        let base = transport.as_super();
        Self::attach(base, event_loop, protocol, ready_fns)?;
        Self::schedule_connection_made(base, protocol, waiter, read)?;
        Ok(transport)
    }

    /// CPython: the rest of `_SelectorTransport.__init__`: set the protocol,
    /// attach to the server, register in `loop._transports` (where the kind's
    /// rules say). `read_ready` and `write_ready` name the
    /// subclass's reader and writer callbacks, with their Rust bodies.
    pub(super) fn attach(
        slf: &Bound<'_, Self>,
        event_loop: &Bound<'_, LoopCore>,
        protocol: &Bound<'_, PyAny>,
        ready_fns: &'static ReadyFns,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Set once, when the object is made (it has no loop before).
        let _ = this.ready_fns.set(ready_fns);
        event_loop.get().count_transport(py, true);
        drop(
            this.event_loop
                .replace(py, Some(event_loop.clone().unbind())),
        );
        slf.call_method1(pyo3::intern!(py, "set_protocol"), (protocol,))?;
        let server = this
            .state
            .borrow_mut(py)
            .server
            .as_ref()
            .map(|s| s.clone_ref(py));
        if let Some(server) = server {
            py::server_attach(server.bind(py), slf)?;
        }
        if this.kind.in_loop_transports {
            let transports = event_loop.getattr(pyo3::intern!(py, "_transports"))?;
            match transports.cast_exact::<TransportMap>() {
                Ok(map) => map.get().insert(i64::from(this.fd), slf.as_any())?,
                Err(_) => transports.set_item(this.fd, slf)?,
            }
        }
        Ok(())
    }

    /// CPython (every transport's `__init__`): `connection_made` first, then start
    /// reading (unless `read` is false), then wake the waiter.
    pub(super) fn schedule_connection_made(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        read: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(lp) = this.event_loop(py) else {
            return Ok(());
        };
        LoopCore::call_soon(
            &lp,
            &protocol.getattr(pyo3::intern!(py, "connection_made"))?,
            PyTuple::new(py, [slf])?,
            None,
        )?;
        if read {
            // asyncio: `call_soon(self._add_reader, fd, self._read_ready)`, queued
            // natively with the context that call would have copied.
            let context = crate::ffi::copy_context(py)?.unbind();
            lp.get().push_transport_event(
                py,
                slf.clone().unbind(),
                TransportEvent::StartReading(context),
            )?;
        }
        if let Some(waiter) = waiter.filter(|w| !w.is_none()) {
            LoopCore::call_soon(
                &lp,
                py::set_result_unless_cancelled(py)?,
                PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?,
                None,
            )?;
        }
        Ok(())
    }

    /// The fd, while this transport still owns it: its socket (or pipe) object is
    /// still held (`_call_connection_lost`, `_pipe = None` and dealloc drop it, so
    /// a closed transport never touches the number again) and, for a socket, that
    /// object still holds this fd (the application may have closed or detached
    /// the socket it passed in: its `sock_fd` is -1 then). Native socket
    /// transports only exist over exact `socket.socket`s (see `StreamTransport::_create`).
    /// Every raw syscall on the fd goes through this, under one GIL hold with no
    /// Python code in between.
    pub(super) fn owned_fd(&self, py: Python<'_>) -> Option<RawFd> {
        if self.unmade.get(py).is_some() {
            return Some(self.fd); // nothing but this transport knows the fd
        }
        if self.kind.owns_fd {
            return self.sock.is_some(py).then_some(self.fd);
        }
        let sock = self.sock.clone_ref(py)?;
        (crate::py::socket_fd_now(sock.bind(py)) == self.fd).then_some(self.fd)
    }

    /// What asyncio gets where it would call `self._sock.<method>(...)` on a
    /// transport that does not own its fd any more: `AttributeError` once
    /// `_call_connection_lost` set `_sock` to `None`, else the socket module's
    /// `EBADF` for a closed socket (always `EBADF` where the transport owns the fd,
    /// which asyncio reaches by its number).
    pub(super) fn fd_gone_error(&self, py: Python<'_>, method: &str) -> PyErr {
        if !self.kind.owns_fd && !self.has_socket(py) {
            return PyAttributeError::new_err(format!(
                "'NoneType' object has no attribute '{method}'"
            ));
        }
        os_error(&std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Clears `_loop` (the transport is done with it), counting the transport out
    /// of the loop's open ones; the loop is returned to be dropped by the caller.
    pub(super) fn let_go_of_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        let lp = self.event_loop.replace(py, None);
        if let Some(lp) = &lp {
            lp.get().count_transport(py, false);
        }
        lp
    }

    /// Bytes read from or written to the fd, counted in the loop's metrics.
    pub(super) fn count_bytes(&self, py: Python<'_>, read: usize, written: usize) {
        if let Some(lp) = self.event_loop(py) {
            lp.get().count_bytes(py, read, written);
        }
    }

    /// Whether the transport still has its socket (or pipe), made or not yet:
    /// false once `_call_connection_lost` let it go.
    pub(super) fn has_socket(&self, py: Python<'_>) -> bool {
        self.sock.is_some(py) || self.unmade.get(py).is_some()
    }

    /// asyncio's `self._sock`: the socket object, made now if it was not yet (it
    /// owns the fd from then on); `None` once the transport let it go.
    pub(super) fn sock_object(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(unmade) = self.unmade.get(py) {
            // SAFETY: an unmade socket's fd is this transport's alone, open until
            // `unmade` is cleared, which this does before anything else can see it.
            let fd = unsafe { OwnedFd::from_raw_fd(self.fd) };
            self.unmade.replace(py, None);
            // On failure `make` closed the fd: the transport has no socket then,
            // as after a close behind its back.
            let sock = unmade.make(py, fd)?.unbind();
            drop(self.sock.replace(py, Some(sock.clone_ref(py))));
            self.socket_made(py, &sock);
            return Ok(Some(sock));
        }
        Ok(self.sock.clone_ref(py))
    }

    pub(super) fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.event_loop.clone_ref(py).map(|l| l.into_bound(py))
    }

    pub(super) fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop(py).is_some_and(|l| l.get().debug())
    }

    pub(super) fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow_mut(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    pub(super) fn logger_debug<'py>(
        py: Python<'py>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        py::asyncio_logger(py)?
            .call_method1("debug", args)
            .map(drop)
    }

    /// asyncio's warning for writes after the connection was lost.
    pub(super) fn count_write_after_lost(&self, py: Python<'_>) -> PyResult<()> {
        let warn = {
            let mut st = self.state.borrow_mut(py);
            let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost += 1;
            warn
        };
        if warn {
            let message = self.kind.lost_write_warning;
            py::asyncio_logger(py)?.call_method1("warning", (message,))?;
        }
        Ok(())
    }

    /// Errors `_fatal_error` only logs in debug mode: `OSError`s, or only those
    /// with the kind's `quiet_errno`.
    fn is_quiet_error(&self, py: Python<'_>, exc: &PyErr) -> PyResult<bool> {
        if !exc.is_instance_of::<PyOSError>(py) {
            return Ok(false);
        }
        let Some(quiet) = self.kind.quiet_errno else {
            return Ok(true);
        };
        let errno = exc.value(py).getattr("errno")?;
        Ok(!errno.is_none() && errno.extract::<i32>()? == quiet)
    }

    /// CPython: `_SelectorTransport._fatal_error` (and the pipe transports').
    pub(super) fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let quiet = this.is_quiet_error(py, &exc)?;
        if this.event_loop(py).is_none() {
            // After `_call_connection_lost` (`_loop` is None), asyncio's
            // `_fatal_error` fails on its first use of the loop.
            let method = if quiet {
                "get_debug"
            } else {
                "call_exception_handler"
            };
            return Err(PyAttributeError::new_err(format!(
                "'NoneType' object has no attribute '{method}'"
            )));
        }
        if quiet {
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
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", exc.clone_ref(py).into_value(py))?;
            context.set_item("transport", slf)?;
            context.set_item("protocol", this.protocol(py))?;
            lp.call_method1("call_exception_handler", (context,))?;
        }
        Self::force_close(slf, Some(exc.into_value(py).into_any()))
    }

    /// CPython: `_SelectorTransport._force_close` (a pipe's `_close`: see
    /// `force_close_guarded`).
    pub(super) fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (had_buffer, was_closing, dropped) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 && this.kind.force_close_guarded {
                return Ok(());
            }
            let dropped = std::mem::take(&mut st.buffer);
            st.head_sent = 0;
            st.buffer_size = 0;
            let was_closing = st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (!dropped.is_empty(), was_closing, dropped)
        };
        drop(dropped);
        if had_buffer {
            this.unwatch(py, Direction::Write)?;
        }
        if !was_closing || !this.kind.force_close_guarded {
            this.unwatch(py, Direction::Read)?;
        }
        this.schedule_connection_lost(slf, exc.unwrap_or_else(|| py.None()))
    }

    pub(super) fn schedule_connection_lost(
        &self,
        slf: &Bound<'_, Self>,
        exc: Py<PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Some(lp) = self.event_loop(py) {
            // asyncio: `call_soon(self._call_connection_lost, exc)`, queued natively
            // with the context that call would have copied.
            let context = crate::ffi::copy_context(py)?.unbind();
            lp.get().push_transport_event(
                py,
                slf.clone().unbind(),
                TransportEvent::ConnectionLost(exc, context),
            )?;
        }
        Ok(())
    }

    /// `obj.<name>` when the instance's `__dict__` replaces the method (a
    /// `mock.patch.object`, a library's wrapper): where asyncio calls
    /// `self.<name>(...)`, that is what must run.
    pub(super) fn instance_override<'py>(
        obj: &Bound<'py, PyAny>,
        name: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let dict = obj.getattr(pyo3::intern!(obj.py(), "__dict__"))?;
        dict.cast_into::<PyDict>()?.get_item(name)
    }

    fn repr(&self, py: Python<'_>) -> String {
        let mut info = vec![self.kind.class_name.to_owned()];
        if !self.has_socket(py) {
            info.push("closed".to_owned());
        } else if self.is_closing(py) {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        let live_loop = self.event_loop(py).filter(|l| !l.get().closed());
        (self.kind.repr_tail)(self, py, live_loop.as_ref(), &mut info);
        format!("<{}>", info.join(" "))
    }

    /// A repr's word for the watch in `direction`.
    pub(super) fn polling(
        &self,
        py: Python<'_>,
        lp: &Bound<'_, LoopCore>,
        direction: Direction,
    ) -> &'static str {
        if lp.get().is_watching(py, self.fd, direction) {
            "polling"
        } else {
            "idle"
        }
    }
}

#[pymethods]
impl Transport {
    pub(super) fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
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
            this.schedule_connection_lost(slf, py.None())?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    /// asyncio's `_force_close(exc)`: the stdlib's TLS layer (`sslproto`) calls it on
    /// the transport under it on a fatal error or a handshake/shutdown timeout.
    #[pyo3(name = "_force_close")]
    fn force_close_method(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let exc = exc.filter(|e| !e.is_none(slf.py()));
        Self::force_close(slf, exc)
    }

    pub(super) fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).closing
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.extra(py)?.get_item(name)? {
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
        self.protocol(py)
    }

    pub(super) fn is_reading(&self, py: Python<'_>) -> bool {
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
        Self::watch(slf, Direction::Read)?;
        if this.debug(py) {
            Self::logger_debug(py, ("%r resumes reading", slf))?;
        }
        Ok(())
    }

    /// CPython: `_FlowControlMixin._set_write_buffer_limits`, with Python's own
    /// arithmetic and comparisons on whatever numbers it is given.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let high = match (high, &low) {
            (Some(high), _) => high,
            (None, None) => (64_i32 * 1024).into_pyobject(py)?.into_any(),
            (None, Some(low)) => 4_i32.into_pyobject(py)?.mul(low)?,
        };
        let low = match low {
            Some(low) => low,
            None => high.floor_div(4)?,
        };
        // `not high >= low >= 0`
        if !(high.ge(&low)? && low.ge(0)?) {
            return Err(PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                high.repr()?,
                low.repr()?
            )));
        }
        let (high_water, low_water) = (threshold(&high), threshold(&low));
        let marks = WaterMarks {
            high: high.unbind(),
            low: low.unbind(),
            exotic: high_water.is_none() || low_water.is_none(),
        };
        let old = {
            let mut st = slf.get().state.borrow_mut(py);
            st.high_water = high_water.unwrap_or(usize::MAX);
            st.low_water = low_water.unwrap_or(0);
            st.marks.replace(Box::new(marks))
        };
        drop(old);
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.state.borrow_mut(py);
        match &st.marks {
            Some(m) => (m.low.clone_ref(py), m.high.clone_ref(py)),
            None => (
                st.low_water
                    .into_pyobject(py)
                    .map_or_else(|_| py.None(), |v| v.into_any().unbind()),
                st.high_water
                    .into_pyobject(py)
                    .map_or_else(|_| py.None(), |v| v.into_any().unbind()),
            ),
        }
    }

    pub(super) fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).buffer_size
    }

    /// CPython: `_SelectorTransport._add_reader` (skipped unless reading).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.is_reading(py) {
            return Ok(());
        }
        if args.is_empty()
            && fd.extract::<RawFd>().ok() == Some(this.fd)
            && this.is_own_reader(slf, callback)?
        {
            // The transport's own reader (a debug-mode or introspected start).
            return Self::watch(slf, Direction::Read);
        }
        if let Some(lp) = this.event_loop(py) {
            let all = PyTuple::new(py, [fd.clone(), callback.clone()])?
                .add(args)?
                .cast_into::<PyTuple>()?;
            lp.call_method1("_add_reader", all)?;
        }
        Ok(())
    }

    /// CPython: `_SelectorTransport._call_connection_lost`.
    #[pyo3(signature = (exc))]
    pub(crate) fn _call_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<Py<PyAny>>,
    ) -> PyResult<()> {
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
            (true, Some(protocol)) => crate::ffi::call_protocol(
                protocol.bind(py),
                pyo3::intern!(py, "connection_lost"),
                &[exc.unwrap_or_else(|| py.None()).bind(py)],
            )
            .map(drop),
            _ => Ok(()),
        };
        // finally: release everything, whatever connection_lost did.
        let sock = this.sock.replace(py, None);
        let closed = match (&sock, this.unmade.replace(py, None)) {
            (Some(s), _) => s
                .bind(py)
                .call_method0(pyo3::intern!(py, "close"))
                .map(drop),
            (None, Some(_)) => UnmadeSocket::close(this.fd),
            (None, None) => Ok(()),
        };
        let (server, old) = {
            let mut st = this.state.borrow_mut(py);
            (st.server.take(), st.protocol.take())
        };
        drop((sock, old));
        this.let_go_of_loop(py);
        let contexts = this.watch_context.each_ref().map(|c| c.replace(py, None));
        drop(contexts);
        let detached = server.map_or(Ok(()), |s| py::server_detach(s.bind(py), slf));
        result.and(closed).and(detached)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).protocol_paused
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.sock_object(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    /// The pipe transports' name for `_sock`.
    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock.clone_ref(py)
    }

    /// Setting `None` detaches the pipe: no warning and no close at collection
    /// (CPython's tests do this to a transport left open on purpose).
    #[setter(_pipe)]
    fn set_pipe(&self, py: Python<'_>, pipe: Option<Py<PyAny>>) {
        drop(self.sock.replace(py, pipe));
    }

    /// The pipe transports' name for `_sock_fd`.
    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
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
    fn _extra(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        Ok(self.extra(py)?.clone().unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.repr(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if !self.made {
            return Ok(()); // not initialised yet (see `made`)
        }
        // SAFETY: called by the GC only.
        unsafe {
            visit.call(self.extra.get_for_gc())?;
            visit.call(self.event_loop.get_for_gc())?;
            visit.call(self.sock.get_for_gc())?;
            if let Some(pending) = self.pending_extra.get_for_gc() {
                visit.call(pending.sock_for_gc())?;
            }
            visit.call(self.watch_context[0].get_for_gc())?;
            visit.call(self.watch_context[1].get_for_gc())?;
        }
        // SAFETY: called by the GC only.
        if let Some(st) = unsafe { self.state.try_get_for_gc() } {
            visit.call(&st.protocol)?;
            visit.call(&st.server)?;
            st.kind_state.traverse(&visit)?;
            if let Some(m) = &st.marks {
                visit.call(&m.high)?;
                visit.call(&m.low)?;
            }
            for chunk in &st.buffer {
                visit.call(&chunk.data)?;
                visit.call(&chunk.addr)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let old = (
            self.pending_extra.replace(py, None),
            self.watch_context.each_ref().map(|c| c.replace(py, None)),
            self.let_go_of_loop(py),
        );
        let state = {
            let mut st = self.state.borrow_mut(py);
            // The server stays for the drop, which detaches from it (3.13): it
            // holds its clients weakly, so it cannot keep a cycle alive.
            (
                st.protocol.take(),
                st.kind_state.take_objects(),
                st.marks.take(),
            )
        };
        drop((old, state));
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // CPython: _SelectorTransport.__del__ warns about an unclosed transport and
        // closes its socket. Dealloc runs with the GIL held.
        Python::attach(|py| {
            drop(self.let_go_of_loop(py));
            let sock = self.sock.replace(py, None);
            let unmade = self.unmade.replace(py, None);
            if sock.is_none() && unmade.is_none() {
                return;
            }
            let message = format!(
                "unclosed transport <{} fd={}>",
                self.kind.class_name, self.fd
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
            let closed = match &sock {
                Some(sock) => py::close_socket(sock.bind(py)),
                None => UnmadeSocket::close(self.fd),
            };
            if let Err(err) = closed {
                err.write_unraisable(py, None);
            }
            let server = self.state.borrow_mut(py).server.take();
            if let Some(server) = server {
                if let Err(err) = py::server_detach_collected(server.bind(py)) {
                    err.write_unraisable(py, None);
                }
            }
        });
    }
}

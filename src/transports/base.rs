//! What every selector transport shares: `_SelectorTransport` and
//! `_FlowControlMixin` of CPython 3.11 (`selector_events.py`, `transports.py`).
//!
//! [`Transport`] is a subclassable pyclass holding all the state; the stream and
//! datagram transports are subclasses that add their hot paths (`write`/`sendto`,
//! `_read_ready`, the writer callback). Close, abort, fatal errors,
//! `connection_lost`, reading pause/resume, flow control, `get_extra_info` and the
//! unclosed-transport warning are written once, here, as asyncio writes them once.
//!
//! States: `closing` is set by `close()`/`abort()`/a fatal error and stops reading;
//! `conn_lost` counts the scheduling of `connection_lost` (and later writes, for
//! asyncio's "socket.send() raised exception." warning). `connection_lost` runs
//! exactly once, after the buffer is flushed (`close`) or dropped (`abort`, error).
//!
//! Invariant: `state` is never borrowed across a call into Python.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use oxloop_core::sys;
use pyo3::exceptions::{PyAttributeError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::transport_map::TransportMap;
use crate::event_loop::TransportEvent;
use crate::event_loop::{Direction, LoopCore};
use crate::gil::{GilCell, GilRefCell};
use crate::handles::{Handle, NativeFn};

/// A reader's or writer's method name and Rust body.
pub(super) type ReadyFn = (&'static str, NativeFn);

/// A transport kind's reader and writer (a static per kind: one pointer per
/// transport).
pub(super) struct ReadyFns {
    pub read: ReadyFn,
    pub write: Option<ReadyFn>,
}
use crate::py;
use crate::sockaddr::{CompactAddr, SockAddr};

/// Chunks handed to one `writev`.
const WRITEV_MAX: usize = 64;

/// CPython: `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(super) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// Which asyncio class a transport stands for (its repr and warnings name it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Socket,
    Datagram,
    ReadPipe,
    WritePipe,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Self::Socket => "_SelectorSocketTransport",
            Self::Datagram => "_SelectorDatagramTransport",
            Self::ReadPipe => "_UnixReadPipeTransport",
            Self::WritePipe => "_UnixWritePipeTransport",
        }
    }

    /// `unix_events`' pipe transports, which differ from the selector transports in
    /// a few rules (noted where they apply).
    pub(super) fn is_pipe(self) -> bool {
        matches!(self, Self::ReadPipe | Self::WritePipe)
    }
}

/// One unsent write: the data (immutable) and, for datagrams, its address.
pub(super) struct Chunk {
    pub data: Py<PyBytes>,
    pub addr: Option<Py<PyAny>>,
}

/// `set_write_buffer_limits`' numbers as given, `(high, low)`; `exotic` when one
/// is neither an int nor a float, so that comparisons go through Python, as
/// asyncio's do.
pub(super) struct WaterMarks {
    pub high: Py<PyAny>,
    pub low: Py<PyAny>,
    pub exotic: bool,
}

/// The integer threshold equivalent to a non-negative int or float water mark
/// (`None`: another kind of number).
fn threshold(mark: &Bound<'_, PyAny>) -> Option<usize> {
    if mark.is_exact_instance_of::<PyInt>() || mark.is_exact_instance_of::<PyBool>() {
        // Validated >= 0: failing to fit means larger than any size.
        return Some(mark.extract::<usize>().unwrap_or(usize::MAX));
    }
    if mark.is_exact_instance_of::<PyFloat>() {
        // Validated >= 0 and not NaN; `as` saturates (inf: no size exceeds it).
        return mark.extract::<f64>().ok().map(|f| f.floor() as usize);
    }
    None
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
    /// Stream: `write_eof()` was called.
    pub eof: bool,
    /// Stream: the future `sendfile` waits on for the buffer to drain.
    pub empty_waiter: Option<Py<PyAny>>,
    /// Datagram: the connected remote address (`remote_addr=`).
    pub address: Option<Py<PyAny>>,
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
    pub(super) fd: RawFd,
    /// False only in a new object whose fields are not written yet, which the
    /// garbage collector may traverse (3.11 allocates the `__dict__` in between):
    /// zeroed memory reads as false here, and `__traverse__` stops at it.
    made: bool,
    /// The `extra` dict; made on first use when everything in it is pending.
    extra: GilCell<Option<Py<PyDict>>>,
    /// The entries asyncio's `__init__` puts in `extra` that are made on first use.
    pending_extra: GilCell<Option<Box<PendingExtra>>>,
    kind: Kind,
    /// The reader's and writer's method names and Rust bodies (`_read_ready`,
    /// ...): the loop runs the body when the fd is ready (`Ready::Transport`),
    /// and the bound method is made only where asyncio's handle must be shown.
    ready_fns: OnceLock<&'static ReadyFns>,
    /// Per direction (`Direction::index`): the context the watch runs its body
    /// in, a copy made when the watch is made, as asyncio's `Handle` makes one.
    watch_context: [GilCell<Option<Py<PyAny>>>; 2],
    /// Per direction: changed whenever the watch is made, replaced or removed, so
    /// that an event queued for an earlier watch does not run (asyncio cancels
    /// that watch's handle).
    watch_generation: [AtomicU32; 2],
    pub(super) state: GilRefCell<TransportState>,
}

pub(super) use crate::errors::is_exit;

pub(super) fn is_retry(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR))
}

/// `sock.getsockname()`/`getpeername()`, or `None` when it raises `OSError`.
fn sock_name<'py>(sock: &Bound<'py, PyAny>, method: &str) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    sock.call_method0(method).or_else(|e| {
        if e.is_instance_of::<PyOSError>(py) {
            Ok(py.None().into_bound(py))
        } else {
            Err(e)
        }
    })
}

/// What asyncio's `__init__` puts in `extra` (`socket`, `sockname` and, unless
/// given, `peername`), kept in Rust until `get_extra_info` or `_extra` asks: the
/// `TransportSocket` is made then, and the addresses are the kernel's answers of
/// when the transport was made (as asyncio reads them in `__init__`), so they read
/// the same after the socket is closed. For an exact `socket.socket` of the
/// families whose addresses oxloop converts as the `socket` module does.
pub(super) struct PendingExtra {
    sock: Py<PyAny>,
    /// The peer's address as `accept()` gave it, which asyncio passes in as
    /// `extra={'peername': addr}` (the dict's first key).
    accepted_peer: Option<CompactAddr>,
    /// `None`: `getsockname()` failed (asyncio stores `None`).
    sockname: Option<CompactAddr>,
    /// `Some` when asyncio calls `getpeername()` (no `peername` was given).
    peername: Option<Option<CompactAddr>>,
}

impl PendingExtra {
    /// For an exact socket whose fd is `fd`: its addresses now, or `None` when
    /// the family is one whose Python form is left to the `socket` module.
    fn read(
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        peer_given: bool,
        accepted_peer: Option<CompactAddr>,
    ) -> Option<Self> {
        // SAFETY: `fd` was read from `sock` (an exact socket.socket) just before,
        // with no Python code run since: it is the socket's own.
        let fd = unsafe { sys::borrow(fd) }.ok()?;
        let local = SockAddr::of_socket(fd, false);
        let family = local.as_ref().map_or(libc::AF_UNSPEC, SockAddr::family);
        if !matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX) {
            return None;
        }
        let peername = (!peer_given && accepted_peer.is_none()).then(|| {
            SockAddr::of_socket(fd, true)
                .ok()
                .map(|addr| addr.compact())
        });
        Some(Self {
            sock: sock.clone().unbind(),
            accepted_peer,
            sockname: local.ok().map(|addr| addr.compact()),
            peername,
        })
    }

    /// Puts the entries in `extra`, in asyncio's order.
    fn fill(self, extra: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = extra.py();
        let address = |addr: Option<CompactAddr>| -> PyResult<Bound<'_, PyAny>> {
            match addr {
                Some(addr) => addr.expand().python_object(py),
                None => Ok(py.None().into_bound(py)),
            }
        };
        if let Some(peer) = self.accepted_peer {
            extra.set_item("peername", address(Some(peer))?)?;
        }
        extra.set_item("socket", py::transport_socket(py)?.call1((self.sock,))?)?;
        extra.set_item("sockname", address(self.sockname)?)?;
        if let Some(peername) = self.peername {
            extra.set_item("peername", address(peername)?)?;
        }
        Ok(())
    }
}

impl Transport {
    /// CPython: the first half of `_SelectorTransport.__init__` (the `extra` dict
    /// and the socket); [`Transport::attach`] does the rest once the object exists.
    ///
    /// `accepted_raw`: the raw address `accept()` gave for a connection a server
    /// accepted (asyncio passes it as `extra={'peername': ...}`).
    pub(super) fn new(
        kind: Kind,
        sock: &Bound<'_, PyAny>,
        extra: Option<Bound<'_, PyDict>>,
        server: Option<&Bound<'_, PyAny>>,
        address: Option<&Bound<'_, PyAny>>,
        accepted_raw: Option<&[u8]>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let exact = py::is_exact_socket(sock)?;
        let fd: RawFd = if exact {
            py::socket_fd_now(sock)
        } else {
            sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?
        };
        let peer_given = match &extra {
            Some(extra) => extra.contains(pyo3::intern!(py, "peername"))?,
            None => false,
        };
        let pending = if exact {
            PendingExtra::read(
                sock,
                fd,
                peer_given,
                accepted_raw.map(CompactAddr::from_bytes),
            )
        } else {
            None
        };
        let lazy = pending.is_some() && extra.is_none();
        let extra = extra.unwrap_or_else(|| PyDict::new(py));
        if pending.is_none() {
            if let Some(raw) = accepted_raw {
                let peer = CompactAddr::from_bytes(raw).expand().python_object(py)?;
                extra.set_item("peername", peer)?;
            }
            extra.set_item("socket", py::transport_socket(py)?.call1((sock,))?)?;
            extra.set_item("sockname", sock_name(sock, "getsockname")?)?;
            if !peer_given && accepted_raw.is_none() {
                extra.set_item("peername", sock_name(sock, "getpeername")?)?;
            }
        }
        let mut this = Self::from_parts(kind, fd, sock, extra, server, address);
        if lazy {
            // Nothing in the dict yet: it is made with its entries on first use.
            drop(this.extra.replace(py, None));
        }
        this.pending_extra = GilCell::new(pending.map(Box::new));
        Ok(this)
    }

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
        Ok(Self::from_parts(kind, fd, pipe, extra, None, None))
    }

    fn from_parts(
        kind: Kind,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
        extra: Bound<'_, PyDict>,
        server: Option<&Bound<'_, PyAny>>,
        address: Option<&Bound<'_, PyAny>>,
    ) -> Self {
        Self {
            event_loop: GilCell::new(None),
            sock: GilCell::new(Some(sock.clone().unbind())),
            fd,
            made: true,
            extra: GilCell::new(Some(extra.unbind())),
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
                eof: false,
                empty_waiter: None,
                address: address.map(|a| a.clone().unbind()),
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
    /// attach to the server, register in `loop._transports` (sockets only: asyncio
    /// does not register pipes there). `read_ready` and `write_ready` name the
    /// subclass's reader and writer callbacks, with their Rust bodies.
    pub(super) fn attach(
        slf: &Bound<'_, Self>,
        event_loop: &Bound<'_, LoopCore>,
        protocol: &Bound<'_, PyAny>,
        ready_fns: &'static ReadyFns,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Set once, when the object is made.
        let _ = this.ready_fns.set(ready_fns);
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
        if !this.kind.is_pipe() {
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
        if self.kind.is_pipe() {
            // asyncio's pipe transports use `os.read`/`os.write` on `_fileno`, not
            // the pipe object's methods: the transport's own state is the owner.
            return self.sock.is_some(py).then_some(self.fd);
        }
        let sock = self.sock.clone_ref(py)?;
        (crate::py::socket_fd_now(sock.bind(py)) == self.fd).then_some(self.fd)
    }

    /// What asyncio gets where it would call `self._sock.<method>(...)` on a
    /// transport that does not own its fd any more: `AttributeError` once
    /// `_call_connection_lost` set `_sock` to `None`, else the socket module's
    /// `EBADF` for a closed socket (always `EBADF` for a pipe, which asyncio
    /// reaches by its fd number).
    pub(super) fn fd_gone_error(&self, py: Python<'_>, method: &str) -> PyErr {
        if !self.kind.is_pipe() && !self.sock.is_some(py) {
            return PyAttributeError::new_err(format!(
                "'NoneType' object has no attribute '{method}'"
            ));
        }
        os_error(&std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The `extra` dict (always there once the object is made), with the entries
    /// made on first use filled in.
    fn extra<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let extra = match self.extra.clone_ref(py) {
            Some(extra) => extra.into_bound(py),
            None => {
                let extra = PyDict::new(py);
                drop(self.extra.replace(py, Some(extra.clone().unbind())));
                extra
            }
        };
        if let Some(pending) = self.pending_extra.replace(py, None) {
            pending.fill(&extra)?;
        }
        Ok(extra)
    }

    pub(super) fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.event_loop.clone_ref(py).map(|l| l.into_bound(py))
    }

    pub(super) fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop(py).is_some_and(|l| l.get().debug())
    }

    pub(super) fn extra_item<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.extra(py)?.get_item(name)
    }

    pub(super) fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow_mut(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    pub(super) fn unwatch(&self, py: Python<'_>, direction: Direction) -> PyResult<()> {
        if let Some(lp) = self.event_loop(py) {
            LoopCore::remove_fd_callback(&lp, self.fd, direction)?;
        }
        Ok(())
    }

    /// Watches the transport's fd in `direction` (asyncio's `_add_reader`/
    /// `_add_writer` of its `_read_ready`/`_write_ready`), in a copy of the
    /// current context.
    pub(super) fn watch(slf: &Bound<'_, Self>, direction: Direction) -> PyResult<()> {
        let context = crate::ffi::copy_context(slf.py())?;
        Self::watch_in(slf, direction, context)
    }

    fn watch_in(
        slf: &Bound<'_, Self>,
        direction: Direction,
        context: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(lp) = this.event_loop(py) else {
            return Ok(());
        };
        if this.ready_fn(direction).is_none() {
            return Ok(());
        }
        if this.owned_fd(py).is_none() {
            // The socket was closed (or detached) behind the transport's back: its
            // number may be another file's now, which must not be armed. asyncio
            // asks epoll, which answers EBADF for a number nobody reused.
            return Err(os_error(&std::io::Error::from_raw_os_error(libc::EBADF)));
        }
        this.end_watch(direction);
        let old = this.watch_context[direction.index()].replace(py, Some(context.unbind()));
        drop(old);
        LoopCore::watch_transport(&lp, this.fd, slf, direction)
    }

    fn ready_fn(&self, direction: Direction) -> Option<&ReadyFn> {
        match direction {
            Direction::Read => self.ready_fns.get().map(|f| &f.read),
            Direction::Write => self.ready_fns.get().and_then(|f| f.write.as_ref()),
        }
    }

    /// Whether `callback` is this transport's own reader method (a bound method
    /// made by `ready_handle` or `start_reading_handle`).
    fn is_own_reader(&self, slf: &Bound<'_, Self>, callback: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let Some((name, _)) = self.ready_fn(Direction::Read) else {
            return Ok(false);
        };
        let Ok(owner) = callback.getattr(pyo3::intern!(py, "__self__")) else {
            return Ok(false);
        };
        Ok(owner.is(slf) && callback.getattr(pyo3::intern!(py, "__name__"))?.eq(*name)?)
    }

    /// The generation of the watch in `direction` (see `watch_generation`).
    pub(crate) fn watch_generation(&self, direction: Direction) -> u32 {
        self.watch_generation[direction.index()].load(Ordering::Relaxed)
    }

    /// The watch in `direction` was removed or replaced: an event queued for it
    /// will not run.
    pub(crate) fn end_watch(&self, direction: Direction) {
        self.watch_generation[direction.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The fd is ready in `direction`: the reader's or writer's body, in the
    /// watch's context (the loop checked the generation).
    pub(crate) fn run_ready(slf: &Bound<'_, Self>, direction: Direction) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some((_, native)) = this.ready_fn(direction) else {
            return Ok(());
        };
        match this.watch_context[direction.index()].clone_ref(py) {
            Some(context) => crate::ffi::run_native(py, context.bind(py), slf.as_any(), *native),
            None => native(slf.as_any()),
        }
    }

    /// The handle asyncio would have for the watch in `direction` (for `_ready`,
    /// `_selector`, debug mode and error reports).
    pub(crate) fn ready_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        let (name, native) = this
            .ready_fn(direction)
            .ok_or_else(|| PyAttributeError::new_err("the transport has no such callback"))?;
        let context = match this.watch_context[direction.index()].clone_ref(py) {
            Some(context) => context.into_bound(py),
            None => crate::ffi::copy_context(py)?,
        };
        let handle = Handle::new(
            slf.getattr(*name)?.unbind(),
            PyTuple::empty(py).unbind(),
            context.unbind(),
            lp.clone().unbind(),
            None,
        );
        handle.set_native(*native);
        Bound::new(py, handle)
    }

    /// The queued start of reading of a new transport (asyncio's
    /// `_SelectorTransport._add_reader` called with its own reader).
    pub(crate) fn start_reading(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
        if !slf.get().is_reading(slf.py()) {
            return Ok(());
        }
        Self::watch_in(slf, Direction::Read, context.clone())
    }

    /// The handle asyncio queues for [`Transport::start_reading`]:
    /// `call_soon(self._add_reader, fd, self._read_ready)`.
    pub(crate) fn start_reading_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        let (name, _) = this
            .ready_fn(Direction::Read)
            .ok_or_else(|| PyAttributeError::new_err("the transport has no reader"))?;
        let context = match context {
            Some(context) => context.clone(),
            None => crate::ffi::copy_context(py)?,
        };
        let args = PyTuple::new(
            py,
            [this.fd.into_pyobject(py)?.into_any(), slf.getattr(*name)?],
        )?;
        Bound::new(
            py,
            Handle::new(
                slf.getattr("_add_reader")?.unbind(),
                args.unbind(),
                context.unbind(),
                lp.clone().unbind(),
                None,
            ),
        )
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
            let message = if self.kind.is_pipe() {
                "pipe closed by peer or os.write(pipe, data) raised exception."
            } else {
                "socket.send() raised exception."
            };
            py::asyncio_logger(py)?.call_method1("warning", (message,))?;
        }
        Ok(())
    }

    /// Errors `_fatal_error` only logs in debug mode: `OSError`s, except for a read
    /// pipe, where only `EIO` (a pty whose other side closed) is quiet.
    fn is_quiet_error(&self, py: Python<'_>, exc: &PyErr) -> PyResult<bool> {
        if !exc.is_instance_of::<PyOSError>(py) {
            return Ok(false);
        }
        if self.kind != Kind::ReadPipe {
            return Ok(true);
        }
        let errno = exc.value(py).getattr("errno")?;
        Ok(!errno.is_none() && errno.extract::<i32>()? == libc::EIO)
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

    /// CPython: `_SelectorTransport._force_close` (a pipe's `_close`, which has no
    /// `_conn_lost` guard: writes dropped while a closing pipe flushes count there).
    pub(super) fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (had_buffer, was_closing, dropped) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 && !this.kind.is_pipe() {
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
        // A pipe's `_close` always removes the reader (a closing write pipe still
        // watches for its reader's close while it flushes).
        if !was_closing || this.kind.is_pipe() {
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

    /// The handle asyncio queues for `_call_connection_lost(exc)`.
    pub(crate) fn connection_lost_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        exc: &Bound<'py, PyAny>,
        context: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        Bound::new(
            py,
            Handle::new(
                slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?
                    .unbind(),
                PyTuple::new(py, [exc])?.unbind(),
                context.clone().unbind(),
                lp.clone().unbind(),
                None,
            ),
        )
    }

    /// Sends from the buffer with `writev`; returns the bytes sent.
    pub(super) fn send_buffer(&self, py: Python<'_>) -> std::io::Result<usize> {
        let Some(fd) = self.owned_fd(py) else {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        };
        let st = self.state.borrow_mut(py);
        // The slices borrow `bytes` objects the buffer keeps alive for the call (we
        // hold the GIL and the borrow).
        let iov: Vec<IoSlice<'_>> = st
            .buffer
            .iter()
            .take(WRITEV_MAX)
            .enumerate()
            .map(|(i, chunk)| {
                let skip = if i == 0 { st.head_sent } else { 0 };
                IoSlice::new(&chunk.data.bind(py).as_bytes()[skip..])
            })
            .collect();
        // SAFETY: `fd` is owned: `owned_fd` just now, and no Python code ran since.
        unsafe { sys::borrow(fd) }.and_then(|fd| sys::writev(fd, &iov))
    }

    /// Drops `n` sent bytes from the front of the buffer, returning the finished
    /// chunks (to be released outside the borrow).
    pub(super) fn consume(&self, py: Python<'_>, mut n: usize) -> Vec<Chunk> {
        let mut st = self.state.borrow_mut(py);
        let mut done = Vec::new();
        st.buffer_size -= n.min(st.buffer_size);
        while n > 0 {
            let Some(head) = st.buffer.front() else {
                break;
            };
            let left = head.data.bind(py).as_bytes().len() - st.head_sent;
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

    /// `data` as an immutable `bytes`: a `bytearray` or `memoryview` is copied (it
    /// could change after `write()` returns; asyncio's buffers copy it too). `None`
    /// for anything else, which each kind refuses with asyncio's own error.
    #[inline(always)]
    pub(super) fn immutable_bytes<'py>(
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Some(bytes.clone()));
        }
        if Self::is_mutable_bytes_like(data) {
            // asyncio's `if not data` comes first: a 0-dim memoryview has no length.
            if data.is_instance_of::<PyMemoryView>() {
                data.is_truthy()?;
            }
            let copy = data.py().get_type::<PyBytes>().call1((data,))?;
            return Ok(Some(copy.cast_into::<PyBytes>()?));
        }
        Ok(None)
    }

    /// A `bytearray` or `memoryview`: what asyncio accepts as data besides `bytes`.
    pub(super) fn is_mutable_bytes_like(data: &Bound<'_, PyAny>) -> bool {
        data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
    }

    /// asyncio's `TypeError` for socket data that is not bytes-like.
    pub(super) fn not_bytes_like(data: &Bound<'_, PyAny>) -> PyErr {
        match data.get_type().name().and_then(|name| name.repr()) {
            Ok(name) => PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {name}"
            )),
            Err(err) => err,
        }
    }

    /// A stream's or write pipe's `write` once its checks passed: with data already
    /// `buffered`, append behind it; otherwise send at once (`send` on a socket,
    /// `write` on a pipe), and buffer only what the kernel did not take, watching
    /// for writability. A failed send is fatal with `message`.
    #[inline(always)]
    pub(super) fn send_or_buffer(
        slf: &Bound<'_, Self>,
        bytes: &Bound<'_, PyBytes>,
        buffered: bool,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let raw = bytes.as_bytes();
        let mut sent = 0;
        if !buffered {
            let method = if this.kind.is_pipe() { "write" } else { "send" };
            let Some(fd) = this.owned_fd(py) else {
                return Self::fatal_error(slf, this.fd_gone_error(py, method), message);
            };
            // SAFETY: `fd` is owned: `owned_fd` just now, and no Python code ran
            // since.
            let n = unsafe { sys::borrow(fd) }.and_then(|fd| {
                if this.kind.is_pipe() {
                    sys::write(fd, raw)
                } else {
                    sys::send(fd, raw, libc::MSG_NOSIGNAL)
                }
            });
            match n {
                Ok(n) if n == raw.len() => return Ok(()),
                Ok(n) => sent = n,
                Err(err) => {
                    if !is_retry(&err) {
                        return Self::fatal_error(slf, os_error(&err), message);
                    }
                }
            }
            Self::watch(slf, Direction::Write)?;
            this.state.borrow_mut(py).head_sent = sent;
        }
        {
            let mut st = this.state.borrow_mut(py);
            st.buffer_size += raw.len() - sent;
            st.buffer.push_back(Chunk {
                data: bytes.clone().unbind(),
                addr: None,
            });
        }
        Self::maybe_pause_protocol(slf)
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

    /// Drops the buffered data (after a write error), returning it to be released
    /// outside the borrow.
    pub(super) fn take_buffer(&self, py: Python<'_>) -> VecDeque<Chunk> {
        let mut st = self.state.borrow_mut(py);
        st.buffer_size = 0;
        st.head_sent = 0;
        std::mem::take(&mut st.buffer)
    }

    /// CPython: `_FlowControlMixin._maybe_pause_protocol`.
    pub(super) fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (size, exotic) = {
            let st = slf.get().state.borrow_mut(py);
            match &st.marks {
                Some(m) if m.exotic => (st.buffer_size, Some(m.high.clone_ref(py))),
                _ => {
                    if st.buffer_size <= st.high_water {
                        return Ok(());
                    }
                    (st.buffer_size, None)
                }
            }
        };
        // `size <= high` in Python for other numbers (outside the borrow).
        if let Some(high) = exotic {
            if size.into_pyobject(py)?.le(high.bind(py))? {
                return Ok(());
            }
        }
        let protocol = {
            let mut st = slf.get().state.borrow_mut(py);
            if st.protocol_paused {
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
    pub(super) fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (size, exotic) = {
            let st = slf.get().state.borrow_mut(py);
            if !st.protocol_paused {
                return Ok(());
            }
            match &st.marks {
                Some(m) if m.exotic => (st.buffer_size, Some(m.low.clone_ref(py))),
                _ => {
                    if st.buffer_size > st.low_water {
                        return Ok(());
                    }
                    (st.buffer_size, None)
                }
            }
        };
        if let Some(low) = exotic {
            if !size.into_pyobject(py)?.le(low.bind(py))? {
                return Ok(());
            }
        }
        let protocol = {
            let mut st = slf.get().state.borrow_mut(py);
            if !st.protocol_paused {
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
        match crate::ffi::call_protocol(
            protocol.bind(py),
            &pyo3::types::PyString::new(py, method),
            &[],
        ) {
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

    fn repr(&self, py: Python<'_>) -> String {
        let mut info = vec![self.kind.class_name().to_owned()];
        if !self.sock.is_some(py) {
            info.push("closed".to_owned());
        } else if self.is_closing(py) {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        let live_loop = self.event_loop(py).filter(|l| !l.get().closed());
        let polling = |direction| match &live_loop {
            Some(lp) if lp.get().is_watching(py, self.fd, direction) => "polling",
            _ => "idle",
        };
        if self.kind.is_pipe() {
            // unix_events: the pipe's direction only, and "open"/"closed" without a
            // selector.
            let direction = match self.kind {
                Kind::ReadPipe => Direction::Read,
                _ => Direction::Write,
            };
            if !self.sock.is_some(py) {
                info.push("closed".to_owned());
            } else if live_loop.is_none() {
                info.push("open".to_owned());
            } else {
                info.push(polling(direction).to_owned());
                if self.kind == Kind::WritePipe {
                    info.push(format!("bufsize={}", self.get_write_buffer_size(py)));
                }
            }
        } else if live_loop.is_some() {
            info.push(format!("read={}", polling(Direction::Read)));
            info.push(format!(
                "write=<{}, bufsize={}>",
                polling(Direction::Write),
                self.get_write_buffer_size(py)
            ));
        }
        format!("<{}>", info.join(" "))
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
        let closed = sock.as_ref().map_or(Ok(()), |s| {
            s.bind(py)
                .call_method0(pyo3::intern!(py, "close"))
                .map(drop)
        });
        let (server, old) = {
            let mut st = this.state.borrow_mut(py);
            (st.server.take(), st.protocol.take())
        };
        drop((sock, old));
        drop(this.event_loop.replace(py, None));
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
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock.clone_ref(py)
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
                visit.call(&pending.sock)?;
            }
            visit.call(self.watch_context[0].get_for_gc())?;
            visit.call(self.watch_context[1].get_for_gc())?;
        }
        // SAFETY: called by the GC only.
        if let Some(st) = unsafe { self.state.try_get_for_gc() } {
            visit.call(&st.protocol)?;
            visit.call(&st.server)?;
            visit.call(&st.empty_waiter)?;
            visit.call(&st.address)?;
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
            self.event_loop.replace(py, None),
        );
        let state = {
            let mut st = self.state.borrow_mut(py);
            // The server stays for the drop, which detaches from it (3.13): it
            // holds its clients weakly, so it cannot keep a cycle alive.
            (
                st.protocol.take(),
                st.empty_waiter.take(),
                st.address.take(),
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
            let Some(sock) = self.sock.replace(py, None) else {
                return;
            };
            let message = format!(
                "unclosed transport <{} fd={}>",
                self.kind.class_name(),
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
            if let Err(err) = py::close_socket(sock.bind(py)) {
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

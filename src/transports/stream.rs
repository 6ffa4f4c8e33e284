//! The native stream transport (TCP and Unix stream sockets).
//!
//! Mirrors `Lib/asyncio/selector_events.py::_SelectorSocketTransport` (CPython
//! 3.11) method by method; what it shares with the other selector transports lives
//! in [`super::base`]. The speed comes from doing the hot paths without Python
//! frames:
//!
//! * reads `recv` straight into a fresh `bytes` (no intermediate copy) and call the
//!   protocol's `data_received` (looked up per call, as asyncio does);
//! * `write` sends at once when nothing is buffered and buffers only the rest,
//!   keeping references to the caller's `bytes` (no copy); the buffer is flushed
//!   with `writev`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use oxloop_core::sys;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView};

use super::base::{is_exit, is_retry, KindRules, KindState, Transport, TransportState, WriteCall};
use super::lazy_socket::UnmadeSocket;
use super::ssl::SslProtocol;
use super::watch::ReadyFns;
use super::MAX_SIZE;
use crate::errors::os_error;
use crate::event_loop::{Direction, LoopCore};
use crate::ffi::ReadCall;
use crate::py;

#[pyclass(extends = Transport, frozen, dict, module = "oxloop._oxloop", name = "SocketTransport")]
pub struct StreamTransport;

/// A stream's own state (`TransportState::kind_state`).
#[derive(Default)]
pub(super) struct StreamState {
    /// `write_eof()` was called.
    pub(super) eof: bool,
    /// The future `sendfile` waits on for the buffer to drain.
    pub(super) empty_waiter: Option<Py<PyAny>>,
    /// The last read was large: the next goes straight into a fresh `bytes`.
    large_reads: bool,
}

/// Reads that return at most this much go through the thread's scratch buffer and
/// are copied into a `bytes` of their size, instead of a fresh `MAX_SIZE` bytes
/// shrunk to size (a malloc at the top of the heap, a shrinking realloc, a free:
/// about 580 instructions). A small `bytes` comes from glibc's per-thread cache
/// (up to about 1 KiB of payload), so small messages save most of that; at 1 KiB
/// it is about even (protocol_1k_c10: 2,399 -> 2,364 instructions per request).
/// Larger reads go straight into a fresh `bytes`, which saves the copy.
const SMALL_READ: usize = 4 * 1024;

/// What a transport of another kind reads as its stream state: none of it set.
static NO_STREAM: StreamState = StreamState {
    eof: false,
    empty_waiter: None,
    large_reads: false,
};

impl TransportState {
    fn stream(&self) -> &StreamState {
        match &self.kind_state {
            KindState::Stream(stream) => stream,
            _ => &NO_STREAM,
        }
    }

    fn stream_mut(&mut self) -> &mut StreamState {
        match &mut self.kind_state {
            KindState::Stream(stream) => stream,
            // Every stream transport is made with its stream state (`_create`,
            // `create_accepted`); only their methods get here.
            _ => unreachable!("a stream transport without its stream state"),
        }
    }
}

impl StreamTransport {
    /// CPython: `base_events._set_nodelay` (TCP only), reading the socket's family,
    /// type and protocol without `socket.socket`'s enum conversions.
    fn set_nodelay(sock: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::set_nodelay_on(py::raw_socket_triple(sock)?, py::socket_fd_now(sock))
    }

    /// [`Self::set_nodelay`] for a socket of `(family, type, proto)` over `fd`,
    /// which the caller owns.
    fn set_nodelay_on((family, kind, proto): (i32, i32, i32), fd: RawFd) -> PyResult<()> {
        if matches!(family, libc::AF_INET | libc::AF_INET6)
            && kind == libc::SOCK_STREAM
            && proto == libc::IPPROTO_TCP
        {
            // `sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)` on an exact socket,
            // as the syscall it makes.
            let one: libc::c_int = 1;
            // SAFETY: the caller owns `fd`; `one` is a readable c_int of the size
            // given.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const one).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(crate::errors::os_error(&std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// CPython: `_read_ready__on_eof`.
    fn on_eof(slf: &Bound<'_, Transport>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().debug(py) {
            Transport::logger_debug(py, ("%r received EOF", slf))?;
        }
        match crate::ffi::call_protocol(protocol, pyo3::intern!(py, "eof_received"), &[]) {
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => {
                Transport::fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed.")
            }
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    // The protocol may still write, but nothing more can be read.
                    slf.get().unwatch(py, Direction::Read)
                } else {
                    Transport::close(slf)
                }
            }
        }
    }

    /// CPython: `_read_ready__get_buffer` (BufferedProtocol).
    fn read_into_buffer(slf: &Bound<'_, Transport>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size_hint = (-1i32).into_pyobject(py)?.into_any();
        let buf = match crate::ffi::call_protocol(
            protocol,
            pyo3::intern!(py, "get_buffer"),
            &[&size_hint],
        )
        .and_then(|buf| {
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
                return Transport::fatal_error(
                    slf,
                    e,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let Some(sock) = this.sock_object(py)? else {
            return Ok(());
        };
        let nbytes: usize = match sock.bind(py).call_method1("recv_into", (buf,)) {
            Ok(n) => n.extract()?,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => return Ok(()),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => return Ok(()),
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => {
                return Transport::fatal_error(slf, e, "Fatal read error on socket transport")
            }
        };
        if nbytes == 0 {
            return Self::on_eof(slf, protocol);
        }
        this.count_bytes(py, nbytes, 0);
        let nbytes_obj = nbytes.into_pyobject(py)?.into_any();
        match crate::ffi::call_protocol(
            protocol,
            pyo3::intern!(py, "buffer_updated"),
            &[&nbytes_obj],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Transport::fatal_error(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
        }
    }

    /// TLS: oxloop's own `SSLProtocol` gets the records without a Python call and
    /// without a `bytes`: `recv` into the loop's scratch buffer, copied into the
    /// incoming BIO (asyncio's SSLProtocol is a BufferedProtocol: its errors are
    /// `buffer_updated`'s). `fd` is owned (checked by the caller, no Python code
    /// since).
    fn read_tls(
        base: &Bound<'_, Transport>,
        tls: &Bound<'_, SslProtocol>,
        fd: RawFd,
    ) -> PyResult<()> {
        let py = base.py();
        let got = super::with_scratch(|buf| {
            // SAFETY: `fd` is owned (the caller's `owned_fd`, no Python code since).
            let fd = unsafe { sys::borrow(fd) }.map_err(Err)?;
            let n = sys::recv(fd, buf, 0).map_err(Err)?;
            if n == 0 {
                return Ok(false);
            }
            base.get().count_bytes(py, n, 0);
            // No Python code runs inside (`bio_write`): the scratch borrow is safe.
            SslProtocol::bio_write(tls, &buf[..n])
                .map(|()| true)
                .map_err(Ok)
        });
        let result = match got {
            Err(Err(e)) if is_retry(&e) => return Ok(()),
            Err(Err(e)) => {
                return Transport::fatal_error(
                    base,
                    os_error(&e),
                    "Fatal read error on socket transport",
                )
            }
            Ok(false) => return Self::on_eof(base, tls.as_any()),
            Err(Ok(e)) => Err(e),
            Ok(true) => SslProtocol::on_incoming(tls),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Transport::fatal_error(
                base,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
        }
    }

    fn shutdown_write(this: &Transport, py: Python<'_>) -> PyResult<()> {
        let Some(fd) = this.owned_fd(py) else {
            return Err(this.fd_gone_error(py, "shutdown"));
        };
        // SAFETY: `fd` is owned (`owned_fd` just now, no Python code since).
        unsafe { sys::borrow(fd) }
            .and_then(sys::shutdown_write)
            .map_err(|e| os_error(&e))
    }
}

impl StreamTransport {
    /// `_create` for a connection a server accepted (`LoopCore._accept_batch`):
    /// over the bare fd, whose `socket.socket` is made on first use.
    pub(crate) fn create_accepted<'py>(
        event_loop: &Bound<'py, LoopCore>,
        fd: OwnedFd,
        unmade: UnmadeSocket,
        protocol: &Bound<'py, PyAny>,
        server: &Bound<'py, PyAny>,
        peer: &[u8],
    ) -> PyResult<Bound<'py, Self>> {
        let py = event_loop.py();
        let raw = fd.as_raw_fd();
        let server = Some(server).filter(|s| !s.is_none());
        let base = Transport::new_accepted(py, fd, unmade, server, peer)?;
        // The fd is the transport's now (or its socket object's): `base` owns it.
        Self::set_nodelay_on(unmade.triple(), raw)?;
        Transport::create(base, Self, event_loop, protocol, None, &STREAM_READY, true)
    }
}

#[pymethods]
impl StreamTransport {
    /// `_SelectorSocketTransport(loop, sock, protocol, waiter, extra, server)`.
    #[staticmethod]
    /// `peer`: the raw address of a connection a server accepted (`_accept_many`),
    /// which asyncio passes as `extra={'peername': addr}`.
    #[pyo3(signature = (event_loop, sock, protocol, waiter=None, extra=None, server=None, peer=None))]
    #[allow(clippy::too_many_arguments)] // asyncio's constructor arguments, and the peer
    pub(crate) fn _create<'py>(
        event_loop: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        waiter: Option<&Bound<'py, PyAny>>,
        extra: Option<Bound<'py, PyDict>>,
        server: Option<&Bound<'py, PyAny>>,
        peer: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        if !crate::py::is_exact_socket(sock)? {
            let extra = match peer {
                Some(raw) => {
                    let extra = extra.unwrap_or_else(|| PyDict::new(py));
                    let addr = crate::sockaddr::CompactAddr::from_bytes(raw).expand();
                    extra.set_item("peername", addr.python_object(py)?)?;
                    Some(extra)
                }
                None => extra,
            };
            // A subclass or duck type: asyncio's own transport, which calls the
            // object's `recv`/`send`/`recv_into`/`sendmsg`/`shutdown` (a TLS
            // wrapper or a test double must see every byte). A native transport
            // over the methods would be a second copy of that class.
            return py::selector_socket_transport(py)?
                .call1((event_loop, sock, protocol, waiter, extra, server));
        }
        let server = server.filter(|s| !s.is_none());
        let base = Transport::new(
            &SOCKET,
            sock,
            extra,
            server,
            KindState::Stream(StreamState::default()),
            peer,
        )?;
        Self::set_nodelay(sock)?;
        Transport::create(
            base,
            Self,
            event_loop,
            protocol,
            waiter,
            &STREAM_READY,
            true,
        )
        .map(Bound::into_any)
    }

    // ----- hot paths ---------------------------------------------------------------

    /// The reader callback: `_read_ready__data_received` / `__get_buffer`.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let (protocol, buffered, large) = {
            let st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let Some(protocol) = st.protocol.as_ref() else {
                return Ok(());
            };
            (protocol.clone_ref(py), st.buffered, st.stream().large_reads)
        };
        let protocol = protocol.into_bound(py);
        if buffered && !protocol.is_exact_instance_of::<SslProtocol>() {
            return Self::read_into_buffer(base, &protocol);
        }
        // Large reads straight into a fresh `bytes`, as socket.recv does: one copy
        // less than a shared buffer, measured 0.5x -> ~1.0x uvloop on 100 KiB echo
        // (benches/net.py); small ones through the scratch buffer (`SMALL_READ`),
        // guessed from the last read's size.
        let Some(fd) = this.owned_fd(py) else {
            if !this.has_socket(py) {
                return Ok(()); // closed: nothing to read from
            }
            // The socket was closed under the transport: what `sock.recv` raises.
            return Transport::fatal_error(
                base,
                this.fd_gone_error(py, "recv"),
                "Fatal read error on socket transport",
            );
        };
        if let Ok(tls) = protocol.cast_exact::<SslProtocol>() {
            return Self::read_tls(base, tls, fd);
        }
        // SAFETY: `fd` is owned: `owned_fd` just now, and no Python code runs
        // before the recv.
        let read = unsafe { sys::borrow(fd) }.and_then(|fd| {
            if large {
                crate::ffi::read_into_new_bytes(py, fd, MAX_SIZE, ReadCall::Recv(0))
            } else {
                super::with_scratch(|buf| {
                    let n = sys::recv(fd, &mut buf[..MAX_SIZE], 0)?;
                    Ok((n > 0).then(|| PyBytes::new(py, &buf[..n]).into_any()))
                })
            }
        });
        if let Ok(Some(data)) = &read {
            let n = data.cast::<PyBytes>().map_or(0, |b| b.as_bytes().len());
            this.count_bytes(py, n, 0);
            let now_large = n > SMALL_READ;
            if now_large != large {
                this.state.borrow_mut(py).stream_mut().large_reads = now_large;
            }
        }
        match read {
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => {
                Transport::fatal_error(base, os_error(&e), "Fatal read error on socket transport")
            }
            Ok(None) => Self::on_eof(base, &protocol),
            // CPython looks the method up on every call (no caching).
            Ok(Some(data)) => {
                match crate::ffi::call_protocol(
                    &protocol,
                    pyo3::intern!(py, "data_received"),
                    &[&data],
                ) {
                    Ok(_) => Ok(()),
                    Err(e) if is_exit(py, &e) => Err(e),
                    Err(e) => Transport::fatal_error(
                        base,
                        e,
                        "Fatal error: protocol.data_received() call failed.",
                    ),
                }
            }
        }
    }

    pub(super) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let Some(bytes) = Transport::immutable_bytes(data)? else {
            return Err(Transport::not_bytes_like(data));
        };
        let buffered = {
            let st = this.state.borrow_mut(py);
            if st.stream().eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.stream().empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if bytes.as_bytes().is_empty() {
                return Ok(());
            }
            if st.conn_lost > 0 {
                drop(st);
                return this.count_write_after_lost(py);
            }
            !st.buffer.is_empty()
        };
        Transport::send_or_buffer(
            base,
            &bytes,
            buffered,
            "Fatal write error on socket transport",
        )
    }

    /// The writer callback: flushes the buffer (CPython `_write_ready`).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
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
                drop(this.take_buffer(py));
                let exc = os_error(&e);
                let waiter = this
                    .state
                    .borrow_mut(py)
                    .stream()
                    .empty_waiter
                    .as_ref()
                    .map(|w| w.clone_ref(py));
                Transport::fatal_error(
                    base,
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
                Transport::maybe_resume_protocol(base)?; // may append to the buffer
                let (empty, waiter, closing, eof) = {
                    let st = this.state.borrow_mut(py);
                    (
                        st.buffer.is_empty(),
                        st.stream().empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                        st.closing,
                        st.stream().eof,
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
                    Transport::_call_connection_lost(base, None)
                } else if eof {
                    Self::shutdown_write(this, py)
                } else {
                    Ok(())
                }
            }
        }
    }

    // ----- the rest of the stream API ---------------------------------------------

    /// CPython 3.11: `WriteTransport.writelines`, one `self.write()` of the joined
    /// data (a `write` replaced on the instance is the one called). CPython 3.12+:
    /// `_SelectorSocketTransport.writelines`, which never calls `self.write`.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if py::own_writelines(py) {
            // Its own checks first, before the items are looked at.
            {
                let st = slf.as_super().get().state.borrow_mut(py);
                if st.stream().eof {
                    return Err(PyRuntimeError::new_err(
                        "Cannot call writelines() after write_eof()",
                    ));
                }
                if st.stream().empty_waiter.is_some() {
                    return Err(PyRuntimeError::new_err(
                        "unable to writelines; sendfile is in progress",
                    ));
                }
            }
            // `if not list_of_data: return` (so `writelines(None)` is a no-op), then
            // `[memoryview(data) for data in list_of_data]`: its TypeError comes
            // before anything is buffered. (Runs user code: no state borrowed.)
            if !list_of_data.is_truthy()? {
                return Ok(());
            }
            let views = PyList::empty(py);
            for item in list_of_data.try_iter()? {
                views.append(PyMemoryView::from(&item?)?)?;
            }
            let joined = PyBytes::new(py, b"").call_method1("join", (views,))?;
            return Self::write(slf, &joined);
        }
        let joined = PyBytes::new(py, b"").call_method1("join", (list_of_data,))?;
        if let Some(write) = Transport::instance_override(slf.as_any(), "write")? {
            return write.call1((joined,)).map(drop);
        }
        Self::write(slf, &joined)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.as_super().get();
        let empty = {
            let mut st = this.state.borrow_mut(slf.py());
            if st.closing || st.stream().eof {
                return Ok(());
            }
            st.stream_mut().eof = true;
            st.buffer.is_empty()
        };
        if empty {
            Self::shutdown_write(this, slf.py())?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.as_super().get();
        if this.state.borrow_mut(py).stream().empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let lp = this
            .event_loop(py)
            .ok_or_else(|| PyRuntimeError::new_err("transport is closed"))?;
        let waiter = lp.call_method0("create_future")?;
        let empty = {
            let mut st = this.state.borrow_mut(py);
            st.stream_mut().empty_waiter = Some(waiter.clone().unbind());
            st.buffer.is_empty()
        };
        if empty {
            waiter.call_method1("set_result", (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(slf: &Bound<'_, Self>) {
        let old = slf
            .as_super()
            .get()
            .state
            .borrow_mut(slf.py())
            .stream_mut()
            .empty_waiter
            .take();
        drop(old);
    }

    #[getter]
    fn _sendfile_compatible<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py::sendfile_try_native(py)?.getattr("TRY_NATIVE")
    }

    #[getter]
    fn _start_tls_compatible(&self) -> bool {
        true
    }

    /// `asyncio.selector_events._SelectorSocketTransport`, so that
    /// `isinstance(transport, asyncio.Transport)` holds (see `Handle.__class__`).
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::selector_socket_transport(py)
    }
}

/// The reader and writer the loop runs for this kind (see `Transport::run_ready`).
static STREAM_READY: ReadyFns = ReadyFns {
    read: ("_read_ready", native!(StreamTransport, _read_ready)),
    write: Some(("_write_ready", native!(StreamTransport, _write_ready))),
};

/// CPython: `selector_events._SelectorSocketTransport` and its base
/// `_SelectorTransport`.
pub(super) static SOCKET: KindRules = KindRules {
    class_name: "_SelectorSocketTransport",
    // `__init__`: `self._loop._transports[self._sock_fd] = self`.
    in_loop_transports: true,
    // `self._sock.send(...)`, `self._sock.recv(...)`: through the socket object.
    owns_fd: false,
    write_call: WriteCall::Send,
    // `write`, once `_conn_lost` reaches `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
    lost_write_warning: "socket.send() raised exception.",
    // `_fatal_error`: `if isinstance(exc, OSError)`, a debug log only.
    quiet_errno: None,
    // `_force_close`: `if self._conn_lost: return`, and `_remove_reader` only
    // `if not self._closing`.
    force_close_guarded: true,
    repr_tail: selector_repr_tail,
};

/// CPython: `_SelectorTransport.__repr__` after `fd=`: both watches and the
/// buffer, while the loop is open.
pub(super) fn selector_repr_tail(
    this: &Transport,
    py: Python<'_>,
    lp: Option<&Bound<'_, LoopCore>>,
    info: &mut Vec<String>,
) {
    if let Some(lp) = lp {
        info.push(format!("read={}", this.polling(py, lp, Direction::Read)));
        info.push(format!(
            "write=<{}, bufsize={}>",
            this.polling(py, lp, Direction::Write),
            this.get_write_buffer_size(py)
        ));
    }
}

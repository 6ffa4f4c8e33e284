//! The native datagram transport (UDP and Unix datagram sockets).
//!
//! Mirrors `Lib/asyncio/selector_events.py::_SelectorDatagramTransport` (CPython
//! 3.11): `error_received` for `OSError`s (ICMP errors included), the same
//! buffering and flow control, and datagrams delivered in asyncio's order (see
//! `_read_ready` for when one event delivers several). The hot path has
//! no Python frame: `recvfrom` into a per-thread scratch buffer, a `bytes` of the
//! datagram, and the peer's address tuple, which is reused while the peer stays
//! the same; `sendto` to that same tuple (an echo) sends to the cached `sockaddr`
//! without parsing it again. Addresses the fast path does not parse (host names,
//! IPv6 and Unix targets) go through the socket's own `sendto`, so every error and
//! resolution rule stays the `socket` module's.

use oxloop_core::sys;
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyNotImplementedError, PyOSError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::base::{is_exit, is_retry, KindRules, KindState, Transport, TransportState, WriteCall};
use super::flow::Chunk;
use super::watch::ReadyFns;
use super::MAX_SIZE;
use crate::errors::os_error;
use crate::event_loop::{Direction, LoopCore};
use crate::py;
use crate::sockaddr::SockAddr;

/// The most datagrams one readiness event delivers (libuv reads 32).
const DATAGRAMS_PER_EVENT: usize = 32;

/// The last peer seen or sent to: its `sockaddr` and the Python tuple for it.
struct Peer {
    addr: Py<PyAny>,
    raw: SockAddr,
}

/// A datagram transport's own state (`TransportState::kind_state`).
pub(super) struct DatagramState {
    /// The connected remote address (`remote_addr=`).
    pub(super) address: Option<Py<PyAny>>,
}

impl TransportState {
    fn datagram_address(&self) -> Option<&Py<PyAny>> {
        match &self.kind_state {
            KindState::Datagram(datagram) => datagram.address.as_ref(),
            _ => None,
        }
    }
}

#[pyclass(extends = Transport, frozen, dict, module = "oxloop._oxloop", name = "DatagramTransport")]
pub struct DatagramTransport {
    /// AF_INET, AF_INET6 and AF_UNIX are read natively; others through `sock`.
    native: bool,
    /// `extra['peername']` was set: `send`, not `sendto` (as asyncio checks).
    connected: bool,
    /// Holds only tuples this module built or exact `(str, int)` tuples, which
    /// cannot reference the transport (so the GC need not see it).
    peer: crate::gil::GilRefCell<Option<Peer>>,
}

/// What one send attempt did.
enum Sent {
    Done,
    Retry,
    /// An `OSError`: reported to `protocol.error_received`.
    Failed(PyErr),
    /// Anything else: a fatal error of the transport.
    Fatal(PyErr),
}

impl DatagramTransport {
    /// `recvfrom` one datagram into a new `bytes` and its address object.
    fn recv<'py>(
        &self,
        py: Python<'py>,
        fd: libc::c_int,
    ) -> std::io::Result<(Bound<'py, PyAny>, SockAddr)> {
        let mut from = SockAddr::empty();
        let (addr_ptr, len_ptr) = from.as_mut_parts();
        // SAFETY: the caller's `owned_fd` just now, with no Python code since.
        let fd = unsafe { sys::borrow(fd)? };
        super::with_scratch(|buf| {
            // SAFETY: `from` has room for any address and its length is in/out.
            let n = unsafe { sys::recvfrom(fd, &mut buf[..MAX_SIZE], 0, addr_ptr, len_ptr)? };
            Ok((PyBytes::new(py, &buf[..n]).into_any(), from))
        })
    }

    /// Makes `addr`/`raw` the cached peer (the old one is dropped outside the borrow).
    fn remember(&self, py: Python<'_>, addr: &Bound<'_, PyAny>, raw: SockAddr) {
        let old = self.peer.borrow_mut(py).replace(Peer {
            addr: addr.clone().unbind(),
            raw,
        });
        drop(old);
    }

    /// The Python address for `raw`, reusing the cached tuple for the same peer.
    fn address_object<'py>(&self, py: Python<'py>, raw: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
        if let Some(peer) = self.peer.borrow_mut(py).as_ref() {
            if peer.raw.same_as(raw) {
                return Ok(peer.addr.bind(py).clone());
            }
        }
        let addr = raw.python_object(py)?;
        self.remember(py, &addr, *raw);
        Ok(addr)
    }

    /// The `sockaddr` for a Python address when the fast path can parse it.
    fn sockaddr_of(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
        if let Some(peer) = self.peer.borrow_mut(py).as_ref() {
            if peer.addr.is(addr) {
                return Some(peer.raw);
            }
        }
        let raw = SockAddr::from_ipv4_tuple(addr)?;
        self.remember(py, addr, raw);
        Some(raw)
    }

    /// `sock.send(data)` when connected, else `sock.sendto(data, addr)`.
    fn send_one(
        &self,
        base: &Bound<'_, Transport>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Sent> {
        let py = base.py();
        let this = base.get();
        if let Ok(bytes) = data.cast::<PyBytes>() {
            let Some(fd) = this.owned_fd(py) else {
                let method = if self.connected { "send" } else { "sendto" };
                return Ok(match this.fd_gone_error(py, method) {
                    e if e.is_instance_of::<PyOSError>(py) => Sent::Failed(e),
                    e => Sent::Fatal(e),
                });
            };
            let raw = bytes.as_bytes();
            let target = if self.connected {
                None
            } else {
                match addr.and_then(|a| self.sockaddr_of(py, a)) {
                    Some(target) => Some(target),
                    None => return self.send_via_socket(base, data, addr),
                }
            };
            // SAFETY: `fd` is owned: `owned_fd` above, and no Python code ran
            // since (`sockaddr_of` only reads exact tuples).
            let n = unsafe { sys::borrow(fd) }.and_then(|fd| match target {
                None => sys::send(fd, raw, 0),
                Some(target) => {
                    let (to, len) = target.as_parts();
                    // SAFETY: `to` is a valid address of `len` bytes.
                    unsafe { sys::sendto(fd, raw, 0, to, len) }
                }
            });
            let err = match n {
                Ok(n) => {
                    base.get().count_bytes(py, 0, n);
                    return Ok(Sent::Done);
                }
                Err(err) => err,
            };
            return Ok(if is_retry(&err) {
                Sent::Retry
            } else {
                Sent::Failed(os_error(&err))
            });
        }
        self.send_via_socket(base, data, addr)
    }

    /// The socket module's own `send`/`sendto` (other buffers, other addresses).
    fn send_via_socket(
        &self,
        base: &Bound<'_, Transport>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Sent> {
        let py = base.py();
        let method = if self.connected { "send" } else { "sendto" };
        let Some(sock) = base.get().sock.clone_ref(py) else {
            // asyncio: `self._sock.send...` on `None`.
            return Ok(Sent::Fatal(base.get().fd_gone_error(py, method)));
        };
        let sock = sock.bind(py);
        // The socket object's own method: it checks its own fd.
        let result = if self.connected {
            sock.call_method1("send", (data,))
        } else {
            sock.call_method1("sendto", (data, addr))
        };
        Ok(match result {
            Ok(_) => Sent::Done,
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py) =>
            {
                Sent::Retry
            }
            Err(e) if e.is_instance_of::<PyOSError>(py) => Sent::Failed(e),
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => Sent::Fatal(e),
        })
    }

    /// One datagram to the protocol (CPython `_read_ready`); false when there
    /// was nothing to read or reading should stop.
    fn read_one(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let me = slf.get();
        let protocol = {
            let st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(false);
            }
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let received = if me.native {
            let Some(fd) = this.owned_fd(py) else {
                if !this.sock.is_some(py) {
                    return Ok(false); // closed: nothing to read from
                }
                // Closed under the transport: what `sock.recvfrom` raises.
                let exc = this.fd_gone_error(py, "recvfrom");
                return Self::error_received(base, protocol, exc).map(|()| false);
            };
            // `fd` is owned: `owned_fd` just now, no Python code before the recvfrom.
            match me.recv(py, fd) {
                Ok((data, raw)) => {
                    let n = data.cast::<PyBytes>().map_or(0, |b| b.as_bytes().len());
                    this.count_bytes(py, n, 0);
                    me.address_object(py, &raw).map(|addr| (data, addr))
                }
                Err(e) if is_retry(&e) => return Ok(false),
                Err(e) => {
                    return Self::error_received(base, protocol, os_error(&e)).map(|()| false)
                }
            }
        } else {
            let Some(sock) = this.sock.clone_ref(py) else {
                return Ok(false);
            };
            sock.bind(py)
                .call_method1("recvfrom", (MAX_SIZE,))
                .and_then(|pair| pair.extract())
        };
        match received {
            Ok((data, addr)) => match protocol {
                Some(protocol) => crate::ffi::call_protocol(
                    protocol.bind(py),
                    pyo3::intern!(py, "datagram_received"),
                    &[&data.into_any(), &addr.into_any()],
                )
                .map(|_| true),
                None => Ok(false),
            },
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py) =>
            {
                Ok(false)
            }
            Err(e) if e.is_instance_of::<PyOSError>(py) => {
                Self::error_received(base, protocol, e).map(|()| false)
            }
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Transport::fatal_error(base, e, "Fatal read error on datagram transport")
                .map(|()| false),
        }
    }

    /// CPython's handling of a failed send: `error_received` for an `OSError`,
    /// a fatal error otherwise.
    fn send_failed(base: &Bound<'_, Transport>, sent: Sent) -> PyResult<()> {
        match sent {
            Sent::Done | Sent::Retry => Ok(()),
            Sent::Failed(exc) => Self::error_received(base, base.get().protocol(base.py()), exc),
            Sent::Fatal(exc) => {
                Transport::fatal_error(base, exc, "Fatal write error on datagram transport")
            }
        }
    }

    fn error_received(
        base: &Bound<'_, Transport>,
        protocol: Option<Py<PyAny>>,
        exc: PyErr,
    ) -> PyResult<()> {
        let py = base.py();
        match protocol {
            Some(protocol) => crate::ffi::call_protocol(
                protocol.bind(py),
                pyo3::intern!(py, "error_received"),
                &[exc.into_value(py).bind(py).as_any()],
            )
            .map(drop),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl DatagramTransport {
    /// `_SelectorDatagramTransport(loop, sock, protocol, address, waiter, extra)`.
    #[staticmethod]
    #[pyo3(signature = (event_loop, sock, protocol, address=None, waiter=None, extra=None))]
    fn _create<'py>(
        event_loop: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        address: Option<&Bound<'py, PyAny>>,
        waiter: Option<&Bound<'py, PyAny>>,
        extra: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        if !crate::py::is_exact_socket(sock)? {
            // A subclass or duck type: asyncio's own transport, which calls its
            // `recvfrom`/`send`/`sendto` (see `StreamTransport::_create`).
            return py::selector_datagram_transport(py)?
                .call1((event_loop, sock, protocol, address, waiter, extra));
        }
        let address = address.filter(|a| !a.is_none());
        let base = Transport::new(
            &DATAGRAM,
            sock,
            extra,
            None,
            KindState::Datagram(DatagramState {
                address: address.map(|a| a.clone().unbind()),
            }),
            None,
        )?;
        let connected = match base.extra_item(py, "peername")? {
            Some(peer) => peer.is_truthy()?,
            None => false,
        };
        let (family, _, _) = py::raw_socket_triple(sock)?;
        let this = Self {
            native: matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX),
            connected,
            peer: crate::gil::GilRefCell::new(None),
        };
        Transport::create(
            base,
            this,
            event_loop,
            protocol,
            waiter,
            &DATAGRAM_READY,
            true,
        )
        .map(Bound::into_any)
    }

    // asyncio's `_SelectorDatagramTransport` is also a `WriteTransport` (through
    // `_FlowControlMixin`): its stream-only methods raise `NotImplementedError`.

    #[allow(clippy::unused_self)] // asyncio's signature
    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = data;
        Err(PyNotImplementedError::new_err(()))
    }

    /// `WriteTransport.writelines`: the join, then `self.write()`.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let joined = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        slf.call_method1("write", (joined,)).map(drop)
    }

    #[allow(clippy::unused_self)]
    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    #[allow(clippy::unused_self)]
    fn can_write_eof(&self) -> PyResult<bool> {
        Err(PyNotImplementedError::new_err(()))
    }

    /// The reader callback (CPython `_read_ready`).
    ///
    /// asyncio reads one datagram per loop iteration. This reads up to
    /// `DATAGRAMS_PER_EVENT` (as libuv does) but only while nothing could tell the
    /// difference: the previous `datagram_received` scheduled no callback, the loop
    /// is not stopping, and the transport is still reading. Otherwise it stops, and
    /// the level-triggered poll brings it back next iteration, exactly as asyncio.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let Some(lp) = this.event_loop(py) else {
            return Ok(());
        };
        for i in 0..DATAGRAMS_PER_EVENT {
            if i > 0 {
                let st = this.state.borrow_mut(py);
                if st.closing || st.paused {
                    break;
                }
            }
            let ready_before = lp.get().ready_len(py);
            if !Self::read_one(slf)? {
                break;
            }
            let core = lp.get();
            if core.ready_len(py) != ready_before || core.is_stopping() || !slf.get().native {
                break;
            }
        }
        Ok(())
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let me = slf.get();
        if !(data.is_instance_of::<PyBytes>() || Transport::is_mutable_bytes_like(data)) {
            return Err(Transport::not_bytes_like(data));
        }
        // asyncio: `if not data: return` (a memoryview's len counts elements of its
        // first dimension; the buffer below is accounted in bytes); 3.13 sends
        // empty datagrams.
        if !data.is_truthy()? && !py::sends_empty_datagrams(py) {
            return Ok(());
        }
        let address = this
            .state
            .borrow_mut(py)
            .datagram_address()
            .map(|a| a.clone_ref(py).into_bound(py));
        let mut addr = addr.filter(|a| !a.is_none());
        if let Some(address) = address.filter(|a| a.is_truthy().unwrap_or(true)) {
            if let Some(given) = &addr {
                if !(given.is(&address) || given.eq(&address)?) {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        address.str()?
                    )));
                }
            }
            addr = Some(address);
            if this.state.borrow_mut(py).conn_lost > 0 {
                return this.count_write_after_lost(py);
            }
        }
        if this.state.borrow_mut(py).buffer.is_empty() {
            // Attempt to send it right away first.
            match me.send_one(base, data, addr.as_ref())? {
                Sent::Done => return Ok(()),
                Sent::Retry => Transport::watch(base, Direction::Write)?,
                failed => return Self::send_failed(base, failed),
            }
        }
        // Ensure that what we buffer is immutable (checked bytes-like above).
        let Some(data) = Transport::immutable_bytes(data)? else {
            return Err(Transport::not_bytes_like(data));
        };
        {
            // In bytes, as `_sendto_ready` takes it off (`len(data)` of a
            // memoryview of ints would count elements: CPython's own accounting
            // then drifts, and a usize would wrap).
            let size = data.as_bytes().len();
            let mut st = this.state.borrow_mut(py);
            st.buffer.push_back(Chunk {
                data: data.unbind(),
                addr: addr.map(Bound::unbind),
            });
            st.buffer_size += size;
        }
        Transport::maybe_pause_protocol(base)
    }

    /// The writer callback (CPython `_sendto_ready`).
    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        let this = base.get();
        let me = slf.get();
        loop {
            let Some(chunk) = ({
                let mut st = this.state.borrow_mut(py);
                let chunk = st.buffer.pop_front();
                if let Some(chunk) = &chunk {
                    // Added in bytes by `sendto`; saturating all the same.
                    let size = chunk.data.bind(py).as_bytes().len();
                    st.buffer_size = st.buffer_size.saturating_sub(size);
                }
                chunk
            }) else {
                break;
            };
            let data = chunk.data.bind(py).clone().into_any();
            let addr = chunk.addr.as_ref().map(|a| a.bind(py).clone());
            match me.send_one(base, &data, addr.as_ref())? {
                Sent::Done => {}
                Sent::Retry => {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer_size += chunk.data.bind(py).as_bytes().len();
                    st.buffer.push_front(chunk);
                    break;
                }
                failed => return Self::send_failed(base, failed),
            }
        }
        Transport::maybe_resume_protocol(base)?; // may append to the buffer
        let (empty, closing) = {
            let st = this.state.borrow_mut(py);
            (st.buffer.is_empty(), st.closing)
        };
        if empty {
            this.unwatch(py, Direction::Write)?;
            if closing {
                Transport::_call_connection_lost(base, None)?;
            }
        }
        Ok(())
    }

    #[getter]
    fn _address(slf: &Bound<'_, Self>) -> Option<Py<PyAny>> {
        let py = slf.py();
        slf.as_super()
            .get()
            .state
            .borrow_mut(py)
            .datagram_address()
            .map(|a| a.clone_ref(py))
    }

    /// `asyncio.selector_events._SelectorDatagramTransport` (see `Handle.__class__`).
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::selector_datagram_transport(py)
    }
}

/// The reader and writer the loop runs for this kind (see `Transport::run_ready`).
static DATAGRAM_READY: ReadyFns = ReadyFns {
    read: ("_read_ready", native!(DatagramTransport, _read_ready)),
    write: Some(("_sendto_ready", native!(DatagramTransport, _sendto_ready))),
};

/// CPython: `selector_events._SelectorDatagramTransport`: `_SelectorTransport`'s
/// rules, as for a stream socket.
static DATAGRAM: KindRules = KindRules {
    class_name: "_SelectorDatagramTransport",
    in_loop_transports: true,
    owns_fd: false,
    // Not used: `sendto` has its own path (`sock.sendto`/`sock.send`).
    write_call: WriteCall::Send,
    // `sendto`, once `_conn_lost` reaches `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
    lost_write_warning: "socket.send() raised exception.",
    quiet_errno: None,
    force_close_guarded: true,
    repr_tail: super::stream::selector_repr_tail,
};

//! A socket transport's `extra` (`get_extra_info`): asyncio fills it in
//! `__init__` (`socket`, `sockname`, `peername`); oxloop reads the addresses from
//! the kernel then and makes the dict and its objects on first use.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use oxloop_core::sys;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::base::KindState;
use super::base::{Kind, Transport};
use super::lazy_socket::UnmadeSocket;
use super::stream::{StreamState, SOCKET};
use crate::gil::GilCell;
use crate::py;
use crate::sockaddr::{CompactAddr, SockAddr};

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
    sock: ExtraSocket,
    /// The peer's address as `accept()` gave it, which asyncio passes in as
    /// `extra={'peername': addr}` (the dict's first key).
    accepted_peer: Option<CompactAddr>,
    /// `None`: `getsockname()` failed (asyncio stores `None`).
    sockname: Option<CompactAddr>,
    /// `Some` when asyncio calls `getpeername()` (no `peername` was given).
    peername: Option<Option<CompactAddr>>,
}

/// The socket `extra['socket']` wraps in a `TransportSocket`.
enum ExtraSocket {
    Made(Py<PyAny>),
    /// The transport's own, whose object is not made yet (`lazy_socket`).
    Unmade(UnmadeSocket),
}

impl PendingExtra {
    /// For an exact socket whose fd is `fd`, or the fd of an accepted connection
    /// whose socket is not made yet: its addresses now, or `None` when the family
    /// is one whose Python form is left to the `socket` module.
    ///
    /// # Safety
    /// `fd` is the socket's own: read from the exact `socket.socket` just before
    /// with no Python code run since, or accepted just now and owned by the caller.
    unsafe fn read(
        sock: ExtraSocket,
        fd: RawFd,
        peer_given: bool,
        accepted_peer: Option<CompactAddr>,
    ) -> Option<Self> {
        // SAFETY: the caller's contract.
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
            sock,
            accepted_peer,
            sockname: local.ok().map(|addr| addr.compact()),
            peername,
        })
    }

    pub(super) fn sock_for_gc(&self) -> Option<&Py<PyAny>> {
        match &self.sock {
            ExtraSocket::Made(sock) => Some(sock),
            ExtraSocket::Unmade(_) => None,
        }
    }

    /// Puts the entries in `extra`, in asyncio's order; `sock` is the socket
    /// object (see [`Transport::extra`]).
    fn fill(self, extra: &Bound<'_, PyDict>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
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
        extra.set_item("socket", py::transport_socket(py)?.call1((sock,))?)?;
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
        kind_state: KindState,
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
            let made = ExtraSocket::Made(sock.clone().unbind());
            let accepted_peer = accepted_raw.map(CompactAddr::from_bytes);
            // SAFETY: `fd` was read from the exact socket above, with no Python
            // code run since.
            unsafe { PendingExtra::read(made, fd, peer_given, accepted_peer) }
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
        // Nothing in the dict yet when lazy: it is made with its entries on first use.
        let extra = (!lazy).then_some(extra);
        let mut this = Self::from_parts(kind, fd, Some(sock), extra, server, kind_state);
        this.pending_extra = GilCell::new(pending.map(Box::new));
        Ok(this)
    }

    /// [`Transport::new`] for a connection a server accepted, over its bare fd:
    /// the socket object is made on first use (`lazy_socket`). `peer` is the raw
    /// address `accept()` gave. A family whose addresses oxloop does not convert
    /// gets its object now, and asyncio's eager `extra`.
    pub(super) fn new_accepted(
        py: Python<'_>,
        fd: OwnedFd,
        unmade: UnmadeSocket,
        server: Option<&Bound<'_, PyAny>>,
        peer: &[u8],
    ) -> PyResult<Self> {
        let raw = fd.as_raw_fd();
        let accepted_peer = Some(CompactAddr::from_bytes(peer));
        let sock = ExtraSocket::Unmade(unmade);
        // SAFETY: `fd` was accepted just now and is owned here.
        let pending = unsafe { PendingExtra::read(sock, raw, false, accepted_peer) };
        let Some(pending) = pending else {
            let sock = unmade.make(py, fd)?;
            let state = KindState::Stream(StreamState::default());
            return Self::new(&SOCKET, &sock, None, server, state, Some(peer));
        };
        let fd = fd.into_raw_fd();
        let mut this = Self::from_parts(
            &SOCKET,
            fd,
            None,
            None,
            server,
            KindState::Stream(StreamState::default()),
        );
        this.unmade = GilCell::new(Some(unmade));
        this.pending_extra = GilCell::new(Some(Box::new(pending)));
        Ok(this)
    }

    /// The socket object was just made ([`Transport::sock_object`]): the `extra`
    /// still to be made wraps it.
    pub(super) fn socket_made(&self, py: Python<'_>, sock: &Py<PyAny>) {
        if let Some(mut pending) = self.pending_extra.replace(py, None) {
            if matches!(pending.sock, ExtraSocket::Unmade(_)) {
                pending.sock = ExtraSocket::Made(sock.clone_ref(py));
            }
            drop(self.pending_extra.replace(py, Some(pending)));
        }
    }

    /// The `extra` dict (always there once the object is made), with the entries
    /// made on first use filled in.
    pub(super) fn extra<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let extra = match self.extra.clone_ref(py) {
            Some(extra) => extra.into_bound(py),
            None => {
                let extra = PyDict::new(py);
                drop(self.extra.replace(py, Some(extra.clone().unbind())));
                extra
            }
        };
        if let Some(pending) = self.pending_extra.replace(py, None) {
            let sock = match &pending.sock {
                ExtraSocket::Made(sock) => sock.bind(py).clone(),
                ExtraSocket::Unmade(unmade) => match self.sock_object(py) {
                    Ok(Some(sock)) => sock.into_bound(py),
                    // Closed: asyncio's TransportSocket wraps the closed socket.
                    Ok(None) => unmade.make_closed(py)?,
                    Err(err) => {
                        drop(self.pending_extra.replace(py, Some(pending)));
                        return Err(err);
                    }
                },
            };
            pending.fill(&extra, &sock)?;
        }
        Ok(extra)
    }

    pub(super) fn extra_item<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.extra(py)?.get_item(name)
    }
}

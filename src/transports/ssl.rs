//! TLS over a stream transport: CPython 3.11's `asyncio/sslproto.py` in Rust.
//!
//! [`SslProtocol`] is the protocol of the underlying transport (asyncio's
//! `SSLProtocol`) and [`SslTransport`] the application's transport
//! (`_SSLProtocolTransport`). The TLS itself is the user's `ssl.SSLContext`'s: an
//! `ssl.SSLObject` over two `ssl.MemoryBIO`s, exactly as asyncio drives it, so every
//! setting of the context (verification, hostname, SNI, ALPN, client certificates,
//! ciphers, versions, sessions, keylog) is OpenSSL's to apply. What this file changes
//! is the cost of driving it:
//!
//! * the methods of the `SSLObject`'s C object and of the BIOs are looked up once and
//!   called by vectorcall (`SslIo`), never through `ssl.py`'s Python wrappers;
//! * over oxloop's own socket transport, received bytes reach [`SslProtocol`] without
//!   a Python call, and records go out through the transport's Rust `write`;
//! * a read stops when the incoming BIO and OpenSSL's plaintext buffer are both empty,
//!   instead of calling once more to be told so by an `SSLWantReadError`;
//! * the plaintext of all the records of one read is decrypted straight into the one
//!   `bytes` that `data_received` gets (asyncio joins one `bytes` per record).
//!
//! The state machine, the order of the protocol calls, the exceptions and the
//! messages are asyncio's (the names below are its method names). Invariant: `st`
//! is never borrowed across a call into Python.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{
    PyAssertionError, PyConnectionAbortedError, PyConnectionResetError, PyException,
    PyNotImplementedError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use super::base::{is_exit, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use super::stream::StreamTransport;
use crate::ffi;
use crate::gil::{GilCell, GilRefCell};
use crate::py;

/// CPython: `SSLProtocol.max_size`, the most one read asks for.
const MAX_SIZE: usize = 256 * 1024;

/// The most plaintext one TLS record carries (RFC 8446, 5.1).
const RECORD_PLAINTEXT_MAX: usize = 16 * 1024;

/// The most one TLS record takes on the wire (a 5-byte header and up to 2^14 + 256
/// bytes of ciphertext, RFC 8446, 5.2).
const RECORD_CIPHERTEXT_MAX: usize = RECORD_PLAINTEXT_MAX + 256 + 5;

/// CPython: `SSLProtocolState`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Unwrapped => "UNWRAPPED",
            Self::DoHandshake => "DO_HANDSHAKE",
            Self::Wrapped => "WRAPPED",
            Self::Flushing => "FLUSHING",
            Self::Shutdown => "SHUTDOWN",
        }
    }
}

/// CPython: `AppProtocolState` (INIT -cm-> CON_MADE [-er-> EOF] -cl-> CON_LOST).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

/// Water marks as asyncio keeps them (the numbers given, returned as given) and as
/// thresholds for a size in bytes.
struct Marks {
    high: Py<PyAny>,
    low: Py<PyAny>,
    high_f: f64,
    low_f: f64,
}

impl Marks {
    /// CPython: `add_flowcontrol_defaults(high, low, kb)`.
    fn new(
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
        kb: &str,
    ) -> PyResult<Self> {
        let kb = py::asyncio_constants_module(py)?.getattr(kb)?;
        let marks = py::add_flowcontrol_defaults(py)?.call1((high, low, kb))?;
        let (high, low): (Bound<'_, PyAny>, Bound<'_, PyAny>) = marks.extract()?;
        Ok(Self {
            high_f: high.extract()?,
            low_f: low.extract()?,
            high: high.unbind(),
            low: low.unbind(),
        })
    }
}

/// The objects the TLS work goes through, fixed for the connection's life: the
/// `SSLObject`'s methods (of its C object when it is an exact `ssl.SSLObject`, see
/// `py::ssl_object_io`) and the two BIOs' methods, as bound methods called by
/// vectorcall.
struct SslIo {
    sslobj: Py<PyAny>,
    /// The methods are the C object's (whose `read(n)` returns a `bytes`).
    c_object: bool,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    read: Py<PyAny>,
    write: Py<PyAny>,
    do_handshake: Py<PyAny>,
    unwrap: Py<PyAny>,
    incoming_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
}

impl SslIo {
    fn new(
        sslobj: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let py = sslobj.py();
        let (io, raw) = py::ssl_object_io(sslobj)?;
        let method = |name: &str| io.getattr(name).map(Bound::unbind);
        Ok(Self {
            sslobj: sslobj.clone().unbind(),
            c_object: raw,
            incoming: incoming.clone().unbind(),
            outgoing: outgoing.clone().unbind(),
            read: method("read")?,
            write: method("write")?,
            do_handshake: method("do_handshake")?,
            // `SSLObject.unwrap()` is `self._sslobj.shutdown()`.
            unwrap: method(if raw { "shutdown" } else { "unwrap" })?,
            incoming_write: incoming.getattr(intern!(py, "write"))?.unbind(),
            outgoing_read: outgoing.getattr(intern!(py, "read"))?.unbind(),
        })
    }

    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for obj in [
            &self.sslobj,
            &self.incoming,
            &self.outgoing,
            &self.read,
            &self.write,
            &self.do_handshake,
            &self.unwrap,
            &self.incoming_write,
            &self.outgoing_read,
        ] {
            visit.call(obj)?;
        }
        Ok(())
    }

    /// `incoming.pending`: ciphertext not yet read by OpenSSL.
    fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    /// `outgoing.pending`: records not yet handed to the transport.
    fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.outgoing
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }
}

/// The objects set at construction (cleared only by the garbage collector).
struct Fixed {
    event_loop: Py<PyAny>,
    sslcontext: Py<PyAny>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    extra: Py<PyDict>,
    io: SslIo,
}

struct State {
    phase: Phase,
    app_state: AppState,
    app_protocol: Option<Py<PyAny>>,
    app_is_buffer: bool,
    app_transport: Option<Py<SslTransport>>,
    app_transport_created: bool,
    transport: Option<Py<PyAny>>,
    waiter: Option<Py<PyAny>>,
    write_backlog: VecDeque<Py<PyAny>>,
    write_buffer_size: usize,
    conn_lost: u32,
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    ssl_reading_paused: bool,
    eof_received: bool,
    app_writing_paused: bool,
    incoming_marks: Marks,
    outgoing_marks: Marks,
    handshake_start_time: Option<f64>,
    handshake_timeout_handle: Option<Py<PyAny>>,
    shutdown_timeout_handle: Option<Py<PyAny>>,
    /// `get_buffer()`'s buffer, for a transport that reads into its protocol's
    /// buffer (a stdlib transport; oxloop's own hands the bytes over directly).
    ssl_buffer: Option<Py<PyByteArray>>,
}

/// asyncio's `SSLAgainErrors`: `(ssl.SSLWantReadError, ssl.SSLSyscallError)`.
fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let value = err.value(py);
    Ok(value.is_instance(py::ssl_want_read_error(py)?)?
        || value.is_instance(py::ssl_syscall_error(py)?)?)
}

fn is_ssl_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    err.value(py).is_instance(py::ssl_error(py)?)
}

/// The `SSLProtocol` of asyncio: the underlying transport's protocol.
#[pyclass(frozen, weakref, module = "oxloop._oxloop", name = "SSLProtocol")]
pub struct SslProtocol {
    fixed: GilCell<Option<Arc<Fixed>>>,
    server_side: bool,
    st: GilRefCell<State>,
}

impl SslProtocol {
    fn fixed(&self, py: Python<'_>) -> PyResult<Arc<Fixed>> {
        // SAFETY of the read: see `GilCell::clone_arc`.
        self.fixed
            .clone_arc(py)
            .ok_or_else(|| PyRuntimeError::new_err("SSLProtocol was cleared"))
    }

    fn phase(&self, py: Python<'_>) -> Phase {
        self.st.borrow_mut(py).phase
    }

    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st
            .borrow_mut(py)
            .transport
            .as_ref()
            .map(|t| t.bind(py).clone())
    }

    fn app_protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st
            .borrow_mut(py)
            .app_protocol
            .as_ref()
            .map(|t| t.bind(py).clone())
    }

    fn app_transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, SslTransport>> {
        self.st
            .borrow_mut(py)
            .app_transport
            .as_ref()
            .map(|t| t.bind(py).clone())
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.fixed(py)?.event_loop.bind(py).clone())
    }

    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.event_loop(py)?
            .call_method0(intern!(py, "get_debug"))?
            .is_truthy()
    }

    fn logger_debug<'py>(py: Python<'py>, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<()> {
        py::asyncio_logger(py)?
            .call_method1(intern!(py, "debug"), args)
            .map(drop)
    }

    /// CPython: `_set_state`.
    fn set_state(&self, py: Python<'_>, new: Phase) -> PyResult<()> {
        let mut st = self.st.borrow_mut(py);
        let allowed = matches!(
            (st.phase, new),
            (_, Phase::Unwrapped)
                | (Phase::Unwrapped, Phase::DoHandshake)
                | (Phase::DoHandshake, Phase::Wrapped)
                | (Phase::Wrapped, Phase::Flushing)
                | (Phase::Flushing, Phase::Shutdown)
        );
        if !allowed {
            return Err(PyRuntimeError::new_err(format!(
                "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
                st.phase.name(),
                new.name()
            )));
        }
        st.phase = new;
        Ok(())
    }

    /// CPython: `_set_app_protocol`.
    fn set_app_protocol(&self, py: Python<'_>, app_protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let is_buffer = app_protocol.hasattr(intern!(py, "get_buffer"))?
            && app_protocol.is_instance(py::buffered_protocol(py)?)?;
        let old = {
            let mut st = self.st.borrow_mut(py);
            st.app_is_buffer = is_buffer;
            st.app_protocol.replace(app_protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    /// CPython: `_wakeup_waiter`.
    fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.st.borrow_mut(py).waiter.take() else {
            return Ok(());
        };
        let waiter = waiter.into_bound(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(exc) => waiter.call_method1(intern!(py, "set_exception"), (exc,))?,
                None => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    /// CPython: `_get_app_transport`.
    fn get_app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, SslTransport>> {
        let py = slf.py();
        let this = slf.get();
        {
            let st = this.st.borrow_mut(py);
            if let Some(t) = &st.app_transport {
                return Ok(t.bind(py).clone());
            }
            if st.app_transport_created {
                return Err(PyRuntimeError::new_err(
                    "Creating _SSLProtocolTransport twice",
                ));
            }
        }
        let transport = Bound::new(
            py,
            SslTransport {
                event_loop: Some(this.event_loop(py)?.unbind()),
                ssl_protocol: GilCell::new(Some(slf.clone().unbind())),
                closed: AtomicBool::new(false),
            },
        )?;
        let mut st = this.st.borrow_mut(py);
        st.app_transport = Some(transport.clone().unbind());
        st.app_transport_created = true;
        Ok(transport)
    }

    /// `self._transport.<name>(*args)`, where asyncio calls it (a transport that is
    /// gone is asyncio's `AttributeError` on `None`).
    fn call_transport(
        &self,
        py: Python<'_>,
        name: &Bound<'_, pyo3::types::PyString>,
        args: &[&Bound<'_, PyAny>],
    ) -> PyResult<()> {
        match self.transport(py) {
            Some(t) => ffi::call_protocol(&t, name, args).map(drop),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "'NoneType' object has no attribute '{}'",
                name.to_str()?
            ))),
        }
    }

    // ----- incoming ---------------------------------------------------------------

    /// CPython: `buffer_updated` after the data went into the incoming BIO.
    pub(super) fn on_incoming(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::DoHandshake => Self::do_handshake(slf),
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            Phase::Unwrapped => Ok(()),
        }
    }

    /// Copies bytes oxloop's socket transport read into the incoming BIO; the
    /// transport then calls [`SslProtocol::on_incoming`] (asyncio's transport calls
    /// `get_buffer` and `buffer_updated`). Runs no Python code: `MemoryBIO.write`
    /// is C and only copies.
    pub(super) fn bio_write(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        let py = slf.py();
        let fixed = slf.get().fixed(py)?;
        // SAFETY: the view lives for this call only and goes to `MemoryBIO.write`,
        // which copies the bytes and keeps no reference.
        let view = unsafe { ffi::borrowed_view(py, data)? };
        ffi::vectorcall(fixed.io.incoming_write.bind(py), &[&view]).map(drop)
    }

    /// `data_received`/`buffer_updated`: the bytes go into the incoming BIO.
    fn received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fixed = slf.get().fixed(py)?;
        ffi::vectorcall(fixed.io.incoming_write.bind(py), &[data])?;
        Self::on_incoming(slf)
    }

    /// CPython: `_do_read`.
    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (paused, is_buffer) = {
            let st = this.st.borrow_mut(py);
            if !matches!(st.phase, Phase::Wrapped | Phase::Flushing) {
                return Ok(());
            }
            (st.app_reading_paused, st.app_is_buffer)
        };
        let result = (|| {
            let mut drained = false;
            if !paused {
                if is_buffer {
                    Self::do_read_buffered(slf)?;
                } else {
                    drained = Self::do_read_copied(slf)?;
                }
                if this.st.borrow_mut(py).write_backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            // A BIO found empty stays empty while the app runs (nothing it does
            // adds ciphertext to it; a nested read only takes).
            Self::control_ssl_reading(slf, drained.then_some(0))
        })();
        match result {
            Err(e) if e.is_instance_of::<PyException>(py) => Self::fatal_error(
                slf,
                e.into_value(py).into_bound(py).into_any(),
                "Fatal error on SSL protocol",
            ),
            other => other,
        }
    }

    /// CPython: `_do_read__copied`, decrypting every record available into one
    /// `bytes`: `SSLObject.read(n, buffer)` writes into a view of a fresh `bytes`
    /// sized by the ciphertext in the BIO (never shorter than its plaintext), grown
    /// if OpenSSL has more and shrunk to what was read. True when it left the
    /// incoming BIO empty.
    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let fixed = slf.get().fixed(py)?;
        let io = &fixed.io;
        let mut data: Option<Bound<'_, PyAny>> = None;
        let mut cap = 0usize;
        let mut len = 0usize;
        let mut eof = false;
        let mut drained = false;
        let mut want = io.incoming_pending(py)?.clamp(1, MAX_SIZE);
        let mut reading = true;
        if io.c_object && want <= RECORD_CIPHERTEXT_MAX {
            // Most events bring one record: `read(n)` returns its `bytes` (no view),
            // which goes to the app as it is when nothing follows it.
            let first =
                match ffi::vectorcall(io.read.bind(py), &[&want.into_pyobject(py)?.into_any()]) {
                    Ok(b) => b.cast_into::<PyBytes>()?,
                    Err(e) if is_again(py, &e)? => return Ok(false),
                    Err(e) => return Err(e),
                };
            len = first.as_bytes().len();
            reading = false;
            if len == 0 {
                eof = true; // close_notify
            } else {
                match next_read(io.incoming_pending(py)?, len, want) {
                    None => {
                        drained = true;
                        cap = len;
                        data = Some(first.into_any());
                    }
                    // More: go on into one buffer that starts with this record.
                    Some(next) => {
                        want = next;
                        cap = len + want;
                        let buf = ffi::new_bytes_to_fill(py, cap)
                            .ok_or_else(|| pyo3::exceptions::PyMemoryError::new_err(()))?;
                        // SAFETY: `buf` is fresh and unshared; `len <= cap`.
                        unsafe { ffi::fill_bytes(&buf, 0, first.as_bytes()) };
                        data = Some(buf);
                        reading = true;
                    }
                }
            }
        }
        while reading {
            let buf = match data.take() {
                None => {
                    cap = want;
                    ffi::new_bytes_to_fill(py, cap)
                        .ok_or_else(|| pyo3::exceptions::PyMemoryError::new_err(()))?
                }
                Some(buf) if len + want > cap => {
                    cap = len + want;
                    ffi::shrink_bytes(buf, cap)
                        .ok_or_else(|| pyo3::exceptions::PyMemoryError::new_err(()))?
                }
                Some(buf) => buf,
            };
            // SAFETY: `buf` is our unshared fresh bytes, `len + want <= cap` is
            // within it, and the view is dropped before `buf` is shared.
            let view = unsafe { ffi::writable_view(&buf, len, want)? };
            let count = ffi::vectorcall(
                io.read.bind(py),
                &[&want.into_pyobject(py)?.into_any(), &view],
            );
            drop(view);
            data = Some(buf);
            let n: usize = match count {
                Ok(n) => n.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                eof = true; // close_notify
                break;
            }
            len += n;
            match next_read(io.incoming_pending(py)?, n, want) {
                None => {
                    drained = true;
                    reading = false;
                }
                Some(next) => want = next,
            }
        }
        if len > 0 {
            let data = data.take().expect("len > 0 after a read into data");
            let data = if len < cap {
                ffi::shrink_bytes(data, len)
                    .ok_or_else(|| pyo3::exceptions::PyMemoryError::new_err(()))?
            } else {
                data
            };
            if let Some(app) = slf.get().app_protocol(py) {
                ffi::call_protocol(&app, intern!(py, "data_received"), &[&data])?;
            }
        }
        if eof {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(drained)
    }

    /// CPython: `_do_read__buffered`.
    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fixed = this.fixed(py)?;
        let io = &fixed.io;
        let Some(app) = this.app_protocol(py) else {
            return Ok(());
        };
        let size = io.incoming_pending(py)?;
        let buf = ffi::call_protocol(
            &app,
            intern!(py, "get_buffer"),
            &[&size.into_pyobject(py)?.into_any()],
        )?;
        let wants = buf.len()?;
        let mut offset = 0usize;
        let mut count = 1usize;
        let first = ffi::vectorcall(
            io.read.bind(py),
            &[&wants.into_pyobject(py)?.into_any(), &buf],
        );
        let result: PyResult<()> = (|| {
            count = first?.extract()?;
            if count > 0 {
                offset = count;
                let view = PyMemoryView::from(&buf)?;
                while offset < wants {
                    let rest = view.get_item(pyo3::types::PySlice::new(
                        py,
                        offset as isize,
                        wants as isize,
                        1,
                    ))?;
                    count = ffi::vectorcall(
                        io.read.bind(py),
                        &[&(wants - offset).into_pyobject(py)?.into_any(), &rest],
                    )?
                    .extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        break;
                    }
                }
                if offset >= wants {
                    // Filled: there may be more (`call_soon(self._do_read)`).
                    this.event_loop(py)?.call_method1(
                        intern!(py, "call_soon"),
                        (slf.getattr(intern!(py, "_do_read"))?,),
                    )?;
                }
            }
            Ok(())
        })();
        match result {
            Err(e) if is_again(py, &e)? => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        if offset > 0 {
            ffi::call_protocol(
                &app,
                intern!(py, "buffer_updated"),
                &[&offset.into_pyobject(py)?.into_any()],
            )?;
        }
        if count == 0 {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    /// CPython: `_call_eof_received`.
    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let app = {
            let mut st = this.st.borrow_mut(py);
            if st.app_state != AppState::ConMade {
                return Ok(());
            }
            st.app_state = AppState::Eof;
            st.app_protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let result = match app {
            Some(app) => ffi::call_protocol(app.bind(py), intern!(py, "eof_received"), &[])
                .and_then(|keep_open| {
                    if keep_open.is_truthy()? {
                        py::asyncio_logger(py)?.call_method1(
                            intern!(py, "warning"),
                            ("returning true from eof_received() has no effect when using ssl",),
                        )?;
                    }
                    Ok(())
                }),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(
                "'NoneType' object has no attribute 'eof_received'",
            )),
        };
        match result {
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => Self::fatal_error(
                slf,
                e.into_value(py).into_bound(py).into_any(),
                "Error calling eof_received()",
            ),
            Ok(()) => Ok(()),
        }
    }

    // ----- handshake --------------------------------------------------------------

    /// CPython: `_start_handshake`.
    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lp = this.event_loop(py)?;
        let start = if this.debug(py)? {
            Self::logger_debug(py, ("%r starts SSL handshake", slf))?;
            Some(lp.call_method0(intern!(py, "time"))?.extract()?)
        } else {
            None
        };
        this.st.borrow_mut(py).handshake_start_time = start;
        this.set_state(py, Phase::DoHandshake)?;
        let timeout = this.fixed(py)?.handshake_timeout.clone_ref(py);
        let handle = lp.call_method1(
            intern!(py, "call_later"),
            (
                timeout,
                slf.getattr(intern!(py, "_check_handshake_timeout"))?,
            ),
        )?;
        let old = this
            .st
            .borrow_mut(py)
            .handshake_timeout_handle
            .replace(handle.unbind());
        drop(old);
        Self::do_handshake(slf)
    }

    /// CPython: `_do_handshake`.
    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fixed = slf.get().fixed(py)?;
        match ffi::vectorcall(fixed.io.do_handshake.bind(py), &[]) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => {
                Self::on_handshake_complete(slf, Some(e.into_value(py).into_bound(py).into_any()))
            }
            Err(e) => Err(e),
        }
    }

    fn cancel_handle(handle: Option<Py<PyAny>>, py: Python<'_>) -> PyResult<()> {
        if let Some(handle) = handle {
            handle.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// CPython: `_on_handshake_complete`.
    fn on_handshake_complete(
        slf: &Bound<'_, Self>,
        handshake_exc: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.st.borrow_mut(py).handshake_timeout_handle.take();
        Self::cancel_handle(handle, py)?;
        let fixed = this.fixed(py)?;
        let sslobj = fixed.io.sslobj.bind(py);
        let checked: PyResult<Bound<'_, PyAny>> = match handshake_exc {
            None => this
                .set_state(py, Phase::Wrapped)
                .and_then(|()| sslobj.call_method0(intern!(py, "getpeercert"))),
            Some(exc) => Err(PyErr::from_value(exc)),
        };
        let peercert = match checked {
            Ok(peercert) => peercert,
            Err(e) if e.is_instance_of::<PyException>(py) => {
                this.set_state(py, Phase::Unwrapped)?;
                let exc = e.into_value(py).into_bound(py).into_any();
                let msg = if exc.is_instance(py::certificate_error(py)?)? {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                Self::fatal_error(slf, exc.clone(), msg)?;
                return this.wakeup_waiter(py, Some(&exc));
            }
            Err(e) => return Err(e),
        };
        if this.debug(py)? {
            let start = this.st.borrow_mut(py).handshake_start_time;
            let now: f64 = this
                .event_loop(py)?
                .call_method0(intern!(py, "time"))?
                .extract()?;
            // asyncio subtracts None when debug was turned on mid-handshake.
            let Some(start) = start else {
                return Err(PyTypeError::new_err(
                    "unsupported operand type(s) for -: 'float' and 'NoneType'",
                ));
            };
            Self::logger_debug(
                py,
                ("%r: SSL handshake took %.1f ms", slf, (now - start) * 1e3),
            )?;
        }
        let extra = fixed.extra.bind(py);
        extra.set_item(intern!(py, "peercert"), peercert)?;
        extra.set_item(
            intern!(py, "cipher"),
            sslobj.call_method0(intern!(py, "cipher"))?,
        )?;
        extra.set_item(
            intern!(py, "compression"),
            sslobj.call_method0(intern!(py, "compression"))?,
        )?;
        extra.set_item(intern!(py, "ssl_object"), sslobj)?;
        let app = {
            let mut st = this.st.borrow_mut(py);
            if st.app_state == AppState::Init {
                st.app_state = AppState::ConMade;
                st.app_protocol.as_ref().map(|p| p.clone_ref(py))
            } else {
                None
            }
        };
        if let Some(app) = app {
            let transport = Self::get_app_transport(slf)?;
            ffi::call_protocol(
                app.bind(py),
                intern!(py, "connection_made"),
                &[transport.as_any()],
            )?;
        }
        this.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // ----- shutdown ---------------------------------------------------------------

    /// CPython: `_start_shutdown`.
    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let phase = this.phase(py);
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            return Ok(());
        }
        if let Some(t) = this.app_transport(py) {
            t.get().closed.store(true, Ordering::Relaxed);
        }
        if phase == Phase::DoHandshake {
            return Self::abort(slf, None);
        }
        this.set_state(py, Phase::Flushing)?;
        let timeout = this.fixed(py)?.shutdown_timeout.clone_ref(py);
        let handle = this.event_loop(py)?.call_method1(
            intern!(py, "call_later"),
            (
                timeout,
                slf.getattr(intern!(py, "_check_shutdown_timeout"))?,
            ),
        )?;
        let old = this
            .st
            .borrow_mut(py)
            .shutdown_timeout_handle
            .replace(handle.unbind());
        drop(old);
        Self::do_flush(slf)
    }

    /// CPython: `_do_flush`.
    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_state(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    /// CPython: `_do_shutdown`.
    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fixed = this.fixed(py)?;
        let unwrapped = if this.st.borrow_mut(py).eof_received {
            Ok(())
        } else {
            ffi::vectorcall(fixed.io.unwrap.bind(py), &[]).map(drop)
        };
        match unwrapped {
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => {
                Self::on_shutdown_complete(slf, Some(e.into_value(py).into_bound(py).into_any()))
            }
            Err(e) => Err(e),
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
        }
    }

    /// CPython: `_on_shutdown_complete`.
    fn on_shutdown_complete(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.st.borrow_mut(py).shutdown_timeout_handle.take();
        Self::cancel_handle(handle, py)?;
        match exc {
            Some(exc) => Self::fatal_error(slf, exc, "Fatal error on transport"),
            None => {
                let close = match this.transport(py) {
                    Some(t) => t.getattr(intern!(py, "close"))?,
                    None => {
                        return Err(pyo3::exceptions::PyAttributeError::new_err(
                            "'NoneType' object has no attribute 'close'",
                        ))
                    }
                };
                this.event_loop(py)?
                    .call_method1(intern!(py, "call_soon"), (close,))
                    .map(drop)
            }
        }
    }

    /// CPython 3.12: `_abort(exc)` (3.11's `_abort()` calls `transport.abort()`,
    /// the same as `_force_close(None)` on a selector transport).
    fn abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_state(py, Phase::Unwrapped)?;
        if let Some(t) = this.transport(py) {
            let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
            t.call_method1(intern!(py, "_force_close"), (exc,))?;
        }
        Ok(())
    }

    // ----- outgoing ---------------------------------------------------------------

    /// CPython: `_write_appdata`.
    fn write_appdata<'py>(
        slf: &Bound<'py, Self>,
        data: impl IntoIterator<Item = PyResult<Bound<'py, PyAny>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let warn = {
            let mut st = this.st.borrow_mut(py);
            if matches!(
                st.phase,
                Phase::Flushing | Phase::Shutdown | Phase::Unwrapped
            ) {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                Some(warn)
            } else {
                None
            }
        };
        if let Some(warn) = warn {
            if warn {
                py::asyncio_logger(py)?
                    .call_method1(intern!(py, "warning"), ("SSL connection is closed",))?;
            }
            return Ok(());
        }
        for item in data {
            let item = item?;
            let n = item.len()?;
            let mut st = this.st.borrow_mut(py);
            st.write_backlog.push_back(item.unbind());
            st.write_buffer_size += n;
        }
        if this.phase(py) == Phase::Wrapped {
            if let Err(e) = Self::do_write(slf) {
                if e.is_instance_of::<PyException>(py) {
                    return Self::fatal_error(
                        slf,
                        e.into_value(py).into_bound(py).into_any(),
                        "Fatal error on SSL protocol",
                    );
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// CPython: `_do_write`.
    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fixed = this.fixed(py)?;
        loop {
            let Some(data) = this
                .st
                .borrow_mut(py)
                .write_backlog
                .front()
                .map(|d| d.clone_ref(py))
            else {
                break;
            };
            let data = data.into_bound(py);
            let count = match ffi::vectorcall(fixed.io.write.bind(py), &[&data]) {
                Ok(count) => count.extract::<usize>()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            let data_len = data.len()?;
            if count < data_len {
                let rest =
                    data.get_item(pyo3::types::PySlice::new(py, count as isize, isize::MAX, 1))?;
                let mut st = this.st.borrow_mut(py);
                let old = st
                    .write_backlog
                    .front_mut()
                    .map(|d| std::mem::replace(d, rest.unbind()));
                st.write_buffer_size = st.write_buffer_size.saturating_sub(count);
                drop(st);
                drop(old);
            } else {
                let mut st = this.st.borrow_mut(py);
                let old = st.write_backlog.pop_front();
                st.write_buffer_size = st.write_buffer_size.saturating_sub(data_len);
                drop(st);
                drop(old);
            }
        }
        Self::process_outgoing(slf)
    }

    /// CPython: `_process_outgoing`: the records OpenSSL made go to the transport.
    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (paused, transport) = {
            let st = this.st.borrow_mut(py);
            (
                st.ssl_writing_paused,
                st.transport.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        let mut drained = false;
        if !paused {
            let fixed = this.fixed(py)?;
            let data = ffi::vectorcall(fixed.io.outgoing_read.bind(py), &[])?;
            drained = true;
            if data.len()? > 0 {
                let Some(transport) = transport else {
                    return Err(pyo3::exceptions::PyAttributeError::new_err(
                        "'NoneType' object has no attribute 'write'",
                    ));
                };
                let transport = transport.into_bound(py);
                match transport.cast::<StreamTransport>() {
                    Ok(native) => StreamTransport::write(native, &data)?,
                    Err(_) => {
                        ffi::call_protocol(&transport, intern!(py, "write"), &[&data]).map(drop)?
                    }
                }
            }
        }
        Self::control_app_writing(slf, drained)
    }

    /// CPython: `_get_write_buffer_size`.
    fn write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        let pending = self.fixed(py)?.io.outgoing_pending(py)?;
        Ok(pending + self.st.borrow_mut(py).write_buffer_size)
    }

    /// CPython: `_control_app_writing`. `drained`: the outgoing BIO was just read
    /// empty (its `pending` is 0, no need to ask).
    fn control_app_writing(slf: &Bound<'_, Self>, drained: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = if drained {
            this.st.borrow_mut(py).write_buffer_size
        } else {
            this.write_buffer_size(py)?
        } as f64;
        let method = {
            let mut st = this.st.borrow_mut(py);
            if size >= st.outgoing_marks.high_f && !st.app_writing_paused {
                st.app_writing_paused = true;
                Some(("pause_writing", "protocol.pause_writing() failed"))
            } else if size <= st.outgoing_marks.low_f && st.app_writing_paused {
                st.app_writing_paused = false;
                Some(("resume_writing", "protocol.resume_writing() failed"))
            } else {
                None
            }
        };
        let Some((method, message)) = method else {
            return Ok(());
        };
        let called = match this.app_protocol(py) {
            Some(app) => {
                ffi::call_protocol(&app, &pyo3::types::PyString::new(py, method), &[]).map(drop)
            }
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "'NoneType' object has no attribute '{method}'"
            ))),
        };
        match called {
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => {
                let context = PyDict::new(py);
                context.set_item("message", message)?;
                context.set_item("exception", e.into_value(py))?;
                context.set_item("transport", this.app_transport(py))?;
                context.set_item("protocol", slf)?;
                this.event_loop(py)?
                    .call_method1(intern!(py, "call_exception_handler"), (context,))
                    .map(drop)
            }
            Ok(()) => Ok(()),
        }
    }

    /// CPython: `_control_ssl_reading`.
    /// `incoming`: the incoming BIO's size when known.
    fn control_ssl_reading(slf: &Bound<'_, Self>, incoming: Option<usize>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = match incoming {
            Some(n) => n,
            None => this.fixed(py)?.io.incoming_pending(py)?,
        } as f64;
        let method = {
            let mut st = this.st.borrow_mut(py);
            if size >= st.incoming_marks.high_f && !st.ssl_reading_paused {
                st.ssl_reading_paused = true;
                Some(intern!(py, "pause_reading"))
            } else if size <= st.incoming_marks.low_f && st.ssl_reading_paused {
                st.ssl_reading_paused = false;
                Some(intern!(py, "resume_reading"))
            } else {
                None
            }
        };
        match method {
            Some(method) => this.call_transport(py, method, &[]),
            None => Ok(()),
        }
    }

    /// CPython: `_fatal_error`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let transport = this.transport(py);
        if let Some(t) = &transport {
            t.call_method1(intern!(py, "_force_close"), (&exc,))?;
        }
        if exc.is_instance_of::<PyOSError>() {
            if this.debug(py)? {
                let kwargs = PyDict::new(py);
                // asyncio's `exc_info=True` in an `except` block: this exception.
                kwargs.set_item("exc_info", &exc)?;
                py::asyncio_logger(py)?.call_method(
                    intern!(py, "debug"),
                    ("%r: %s", slf, message),
                    Some(&kwargs),
                )?;
            }
        } else if !exc.is_instance(py::cancelled_error(py)?)? {
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", &exc)?;
            context.set_item("transport", transport)?;
            context.set_item("protocol", slf)?;
            this.event_loop(py)?
                .call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }
}

/// What the next `SSLObject.read` asks for after one that returned `n` of `want`
/// with `avail` bytes of ciphertext left in the BIO; `None` when nothing is left to
/// decrypt. OpenSSL reads one record per call and, without read-ahead (Python never
/// sets it), takes from the BIO only the record it decrypts: when the BIO is empty
/// and the read did not fill what was asked, asyncio's next read would only raise
/// SSLWantReadError. A filled read may leave plaintext in OpenSSL (`pending()`):
/// ask again, for up to a whole record.
fn next_read(avail: usize, n: usize, want: usize) -> Option<usize> {
    match avail {
        0 if n < want => None,
        0 => Some(RECORD_PLAINTEXT_MAX),
        _ => Some(avail.min(MAX_SIZE)),
    }
}

#[pymethods]
impl SslProtocol {
    #[new]
    #[pyo3(signature = (
        event_loop, app_protocol, sslcontext, waiter, server_side=false, server_hostname=None,
        call_connection_made=true, ssl_handshake_timeout=None, ssl_shutdown_timeout=None
    ))]
    #[allow(clippy::too_many_arguments)] // asyncio's constructor
    fn new(
        event_loop: &Bound<'_, PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        server_side: bool,
        server_hostname: Option<&Bound<'_, PyAny>>,
        call_connection_made: bool,
        ssl_handshake_timeout: Option<&Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = event_loop.py();
        let constants = py::asyncio_constants_module(py)?;
        let timeout =
            |given: Option<&Bound<'_, PyAny>>, default: &str, name: &str| -> PyResult<Py<PyAny>> {
                match given.filter(|t| !t.is_none()) {
                    None => Ok(constants.getattr(default)?.unbind()),
                    Some(t) if t.le(0)? => Err(PyValueError::new_err(format!(
                        "{name} should be a positive number, got {}",
                        t.str()?
                    ))),
                    Some(t) => Ok(t.clone().unbind()),
                }
            };
        let handshake_timeout = timeout(
            ssl_handshake_timeout,
            "SSL_HANDSHAKE_TIMEOUT",
            "ssl_handshake_timeout",
        )?;
        let shutdown_timeout = timeout(
            ssl_shutdown_timeout,
            "SSL_SHUTDOWN_TIMEOUT",
            "ssl_shutdown_timeout",
        )?;
        let server_hostname =
            server_hostname.filter(|h| !server_side && h.is_truthy().unwrap_or(false));
        let sslcontext = if sslcontext.is_truthy()? {
            sslcontext.clone()
        } else {
            // CPython: `_create_transport_context`.
            if server_side {
                return Err(PyValueError::new_err(
                    "Server side SSL needs a valid SSLContext",
                ));
            }
            // Looked up per call, as asyncio does (tests patch it).
            let ctx = py
                .import("ssl")?
                .getattr("create_default_context")?
                .call0()?;
            if server_hostname.is_none() {
                ctx.setattr("check_hostname", false)?;
            }
            ctx
        };
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", &sslcontext)?;
        let incoming = py::memory_bio(py)?.call0()?;
        let outgoing = py::memory_bio(py)?.call0()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("server_side", server_side)?;
        kwargs.set_item("server_hostname", server_hostname)?;
        let sslobj = sslcontext.call_method("wrap_bio", (&incoming, &outgoing), Some(&kwargs))?;
        let io = SslIo::new(&sslobj, &incoming, &outgoing)?;
        let this = Self {
            fixed: GilCell::new(Some(Arc::new(Fixed {
                event_loop: event_loop.clone().unbind(),
                sslcontext: sslcontext.unbind(),
                handshake_timeout,
                shutdown_timeout,
                extra: extra.unbind(),
                io,
            }))),
            server_side,
            st: GilRefCell::new(State {
                phase: Phase::Unwrapped,
                app_state: if call_connection_made {
                    AppState::Init
                } else {
                    AppState::ConMade
                },
                app_protocol: None,
                app_is_buffer: false,
                app_transport: None,
                app_transport_created: false,
                transport: None,
                waiter: (!waiter.is_none()).then(|| waiter.clone().unbind()),
                write_backlog: VecDeque::new(),
                write_buffer_size: 0,
                conn_lost: 0,
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                eof_received: false,
                app_writing_paused: false,
                incoming_marks: Marks::new(py, None, None, "FLOW_CONTROL_HIGH_WATER_SSL_READ")?,
                outgoing_marks: Marks::new(py, None, None, "FLOW_CONTROL_HIGH_WATER_SSL_WRITE")?,
                handshake_start_time: None,
                handshake_timeout_handle: None,
                shutdown_timeout_handle: None,
                ssl_buffer: None,
            }),
        };
        this.set_app_protocol(py, app_protocol)?;
        Ok(this)
    }

    /// The application's transport, made with the protocol (asyncio makes it in
    /// `__init__`); pyo3's `#[new]` cannot see the object yet, so the first access
    /// makes it.
    #[getter]
    fn _app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, SslTransport>>> {
        let py = slf.py();
        let created = slf.get().st.borrow_mut(py).app_transport_created;
        if !created {
            return Self::get_app_transport(slf).map(Some);
        }
        Ok(slf.get().app_transport(py))
    }

    fn _get_app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, SslTransport>> {
        Self::get_app_transport(slf)
    }

    #[getter]
    fn _app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.app_protocol(py).map(Bound::unbind)
    }

    #[getter]
    fn _transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport(py).map(Bound::unbind)
    }

    #[getter]
    fn _sslcontext(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.fixed(py)?.sslcontext.clone_ref(py))
    }

    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.fixed(py)?.io.sslobj.clone_ref(py))
    }

    #[getter]
    fn _server_side(&self) -> bool {
        self.server_side
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        Ok(self.fixed(py)?.extra.clone_ref(py))
    }

    #[getter]
    fn _state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let name = self.phase(py).name();
        py::ssl_protocol_state(py)?.getattr(name)
    }

    #[getter]
    fn _app_reading_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow_mut(py).app_reading_paused
    }

    #[getter]
    fn _ssl_writing_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow_mut(py).ssl_writing_paused
    }

    #[getter]
    fn _app_writing_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow_mut(py).app_writing_paused
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.st.borrow_mut(py).conn_lost
    }

    fn _set_app_protocol(&self, py: Python<'_>, app_protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_app_protocol(py, app_protocol)
    }

    #[pyo3(signature = (exc=None))]
    fn _wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.wakeup_waiter(py, exc)
    }

    // ----- the underlying transport's protocol ---------------------------------

    /// Called when the low-level connection is made: starts the handshake.
    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = slf
            .get()
            .st
            .borrow_mut(slf.py())
            .transport
            .replace(transport.clone().unbind());
        drop(old);
        Self::start_handshake(slf)
    }

    /// Called when the low-level connection is lost or closed.
    fn connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let backlog = std::mem::take(&mut this.st.borrow_mut(py).write_backlog);
        drop(backlog);
        let fixed = this.fixed(py)?;
        ffi::vectorcall(fixed.io.outgoing_read.bind(py), &[])?;
        let (app_transport, call_lost) = {
            let mut st = this.st.borrow_mut(py);
            st.conn_lost += 1;
            let call_lost = st.phase != Phase::DoHandshake
                && matches!(st.app_state, AppState::ConMade | AppState::Eof);
            if call_lost {
                st.app_state = AppState::ConLost;
            }
            (
                st.app_transport.as_ref().map(|t| t.clone_ref(py)),
                call_lost,
            )
        };
        if let Some(t) = app_transport {
            t.get().closed.store(true, Ordering::Relaxed);
        }
        if call_lost {
            if let Some(app) = this.app_protocol(py) {
                this.event_loop(py)?.call_method1(
                    intern!(py, "call_soon"),
                    (app.getattr(intern!(py, "connection_lost"))?, exc),
                )?;
            }
        }
        this.set_state(py, Phase::Unwrapped)?;
        let old = {
            let mut st = this.st.borrow_mut(py);
            (
                st.transport.take(),
                st.app_transport.take(),
                st.app_protocol.take(),
            )
        };
        drop(old);
        this.wakeup_waiter(py, (!exc.is_none()).then_some(exc))?;
        let handles = {
            let mut st = this.st.borrow_mut(py);
            (
                st.shutdown_timeout_handle.take(),
                st.handshake_timeout_handle.take(),
            )
        };
        Self::cancel_handle(handles.0, py)?;
        Self::cancel_handle(handles.1, py)
    }

    /// The transports that read into their protocol's buffer (asyncio's).
    fn get_buffer<'py>(&self, py: Python<'py>, n: isize) -> PyResult<Bound<'py, PyAny>> {
        let want = if n <= 0 || n as usize > MAX_SIZE {
            MAX_SIZE
        } else {
            n as usize
        };
        let current = self
            .st
            .borrow_mut(py)
            .ssl_buffer
            .as_ref()
            .map(|b| b.clone_ref(py));
        let buf = match current {
            Some(b) if b.bind(py).len() >= want => b.into_bound(py),
            _ => {
                let b = PyByteArray::new(py, &vec![0u8; want.max(MAX_SIZE)]);
                let old = self
                    .st
                    .borrow_mut(py)
                    .ssl_buffer
                    .replace(b.clone().unbind());
                drop(old);
                b
            }
        };
        Ok(PyMemoryView::from(buf.as_any())?.into_any())
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let buf = slf
            .get()
            .st
            .borrow_mut(py)
            .ssl_buffer
            .as_ref()
            .map(|b| b.clone_ref(py));
        let Some(buf) = buf else {
            return Err(PyRuntimeError::new_err(
                "buffer_updated() without get_buffer()",
            ));
        };
        let view = PyMemoryView::from(buf.bind(py).as_any())?;
        let data = view.get_item(pyo3::types::PySlice::new(py, 0, nbytes as isize, 1))?;
        Self::received(slf, &data)
    }

    /// For a transport that calls `data_received` (a plain `Protocol`'s way).
    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::received(slf, data)
    }

    /// Called when the other end of the low-level stream is half-closed.
    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.st.borrow_mut(py).eof_received = true;
        let result = (|| -> PyResult<Option<bool>> {
            if this.debug(py)? {
                Self::logger_debug(py, ("%r received EOF", slf))?;
            }
            match this.phase(py) {
                Phase::DoHandshake => {
                    let exc = PyConnectionResetError::new_err(())
                        .into_value(py)
                        .into_bound(py)
                        .into_any();
                    Self::on_handshake_complete(slf, Some(exc))?;
                }
                Phase::Wrapped => {
                    this.set_state(py, Phase::Flushing)?;
                    if this.st.borrow_mut(py).app_reading_paused {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                Phase::Flushing => {
                    Self::do_write(slf)?;
                    this.set_state(py, Phase::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                Phase::Shutdown => Self::do_shutdown(slf)?,
                Phase::Unwrapped => {}
            }
            Ok(None)
        })();
        match result {
            Err(e) if e.is_instance_of::<PyException>(py) => {
                if let Some(t) = this.transport(py) {
                    t.call_method0(intern!(py, "close"))?;
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Called when the low-level transport's buffer goes over the high-water mark.
    fn pause_writing(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = self.st.borrow_mut(py);
        if st.ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        st.ssl_writing_paused = true;
        Ok(())
    }

    /// Called when the low-level transport's buffer drains below the low-water mark.
    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = slf.get().st.borrow_mut(slf.py());
            if !st.ssl_writing_paused {
                return Err(PyAssertionError::new_err(()));
            }
            st.ssl_writing_paused = false;
        }
        Self::process_outgoing(slf)
    }

    // ----- timers and deferred calls ----------------------------------------------

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.phase(py) != Phase::DoHandshake {
            return Ok(());
        }
        let timeout = this.fixed(py)?.handshake_timeout.bind(py).str()?;
        let msg = format!(
            "SSL handshake is taking longer than {timeout} seconds: aborting the connection"
        );
        let exc = PyConnectionAbortedError::new_err(msg)
            .into_value(py)
            .into_bound(py)
            .into_any();
        Self::fatal_error(slf, exc, "Fatal error on transport")
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.phase(py), Phase::Flushing | Phase::Shutdown) {
            return Ok(());
        }
        let exc = py::asyncio_timeout_error(py)?.call1(("SSL shutdown timed out",))?;
        this.call_transport(py, intern!(py, "_force_close"), &[&exc])
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    /// The callback `_resume_reading` schedules.
    fn _resume_app_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py()) {
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    // ----- what the application's transport calls -------------------------------

    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let default = default.unwrap_or_else(|| py.None().into_bound(py));
        if let Some(v) = self.fixed(py)?.extra.bind(py).get_item(name)? {
            return Ok(v);
        }
        match self.transport(py) {
            Some(t) => t.call_method1(intern!(py, "get_extra_info"), (name, default)),
            None => Ok(default),
        }
    }

    fn _start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_shutdown(slf)
    }

    #[pyo3(signature = (exc=None))]
    fn _abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::abort(slf, exc.filter(|e| !e.is_none()))
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_appdata(slf, list_of_data.try_iter()?)
    }

    fn _pause_reading(&self, py: Python<'_>) {
        self.st.borrow_mut(py).app_reading_paused = true;
    }

    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.st.borrow_mut(py);
            if !st.app_reading_paused {
                return Ok(());
            }
            st.app_reading_paused = false;
        }
        this.event_loop(py)?
            .call_method1(
                intern!(py, "call_soon"),
                (slf.getattr(intern!(py, "_resume_app_reading"))?,),
            )
            .map(drop)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let marks = Marks::new(py, high, low, "FLOW_CONTROL_HIGH_WATER_SSL_WRITE")?;
        let old = std::mem::replace(&mut self.st.borrow_mut(py).outgoing_marks, marks);
        drop(old);
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_read_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let marks = Marks::new(py, high, low, "FLOW_CONTROL_HIGH_WATER_SSL_READ")?;
        let old = std::mem::replace(&mut self.st.borrow_mut(py).incoming_marks, marks);
        drop(old);
        Ok(())
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf, false)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf, None)
    }

    fn _get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.write_buffer_size(py)
    }

    fn _get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.fixed(py)?.io.incoming_pending(py)
    }

    #[getter]
    fn _outgoing_high_water(&self, py: Python<'_>) -> Py<PyAny> {
        self.st.borrow_mut(py).outgoing_marks.high.clone_ref(py)
    }

    #[getter]
    fn _outgoing_low_water(&self, py: Python<'_>) -> Py<PyAny> {
        self.st.borrow_mut(py).outgoing_marks.low.clone_ref(py)
    }

    #[getter]
    fn _incoming_high_water(&self, py: Python<'_>) -> Py<PyAny> {
        self.st.borrow_mut(py).incoming_marks.high.clone_ref(py)
    }

    #[getter]
    fn _incoming_low_water(&self, py: Python<'_>) -> Py<PyAny> {
        self.st.borrow_mut(py).incoming_marks.low.clone_ref(py)
    }

    /// For CPython's tests: data in the backlog that `_do_write` has not seen.
    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = data.len()?;
        let mut st = self.st.borrow_mut(py);
        st.write_backlog.push_back(data.clone().unbind());
        st.write_buffer_size += n;
        Ok(())
    }

    /// `asyncio.sslproto.SSLProtocol`: a `BufferedProtocol` to asyncio's checks.
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::ssl_protocol_class(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: called by the GC only.
        let Some(fixed) = (unsafe { self.fixed.get_for_gc() }) else {
            // Not initialised yet (zeroed fields), or cleared: the state's
            // objects left are plain numbers.
            return Ok(());
        };
        visit.call(&fixed.event_loop)?;
        visit.call(&fixed.sslcontext)?;
        visit.call(&fixed.handshake_timeout)?;
        visit.call(&fixed.shutdown_timeout)?;
        visit.call(&fixed.extra)?;
        fixed.io.visit(&visit)?;
        // SAFETY: called by the GC only.
        if let Some(st) = unsafe { self.st.try_get_for_gc() } {
            visit.call(&st.app_protocol)?;
            visit.call(&st.app_transport)?;
            visit.call(&st.transport)?;
            visit.call(&st.waiter)?;
            visit.call(&st.handshake_timeout_handle)?;
            visit.call(&st.shutdown_timeout_handle)?;
            visit.call(&st.ssl_buffer)?;
            for marks in [&st.incoming_marks, &st.outgoing_marks] {
                visit.call(&marks.high)?;
                visit.call(&marks.low)?;
            }
            for data in &st.write_backlog {
                visit.call(data)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let fixed = self.fixed.replace(py, None);
        let old = {
            let mut st = self.st.borrow_mut(py);
            (
                st.app_protocol.take(),
                st.app_transport.take(),
                st.transport.take(),
                st.waiter.take(),
                st.handshake_timeout_handle.take(),
                st.shutdown_timeout_handle.take(),
                std::mem::take(&mut st.write_backlog),
            )
        };
        drop((fixed, old));
    }
}

/// The application's transport (asyncio's `_SSLProtocolTransport`).
#[pyclass(
    frozen,
    weakref,
    dict,
    module = "oxloop._oxloop",
    name = "_SSLProtocolTransport"
)]
pub struct SslTransport {
    /// `None` only before the fields are written (see `Transport::extra`).
    event_loop: Option<Py<PyAny>>,
    ssl_protocol: GilCell<Option<Py<SslProtocol>>>,
    closed: AtomicBool,
}

impl SslTransport {
    fn protocol<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, SslProtocol>> {
        self.ssl_protocol
            .clone_ref(py)
            .map(|p| p.into_bound(py))
            .ok_or_else(|| {
                pyo3::exceptions::PyAttributeError::new_err(
                    "'NoneType' object has no attribute '_ssl_protocol'",
                )
            })
    }
}

#[pymethods]
impl SslTransport {
    #[getter]
    fn _ssl_protocol(&self, py: Python<'_>) -> Option<Py<SslProtocol>> {
        self.ssl_protocol.clone_ref(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.event_loop.as_ref().map(|l| l.clone_ref(py))
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[setter(_closed)]
    fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Relaxed);
    }

    #[getter]
    fn _start_tls_compatible(&self) -> bool {
        true
    }

    #[getter]
    fn _sendfile_compatible<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py::sendfile_mode(py)?.getattr("FALLBACK")
    }

    /// Get optional transport information.
    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.protocol(py)?.get()._get_extra_info(py, name, default)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.protocol(py)?.get().set_app_protocol(py, protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.protocol(py)?.get()._app_protocol(py))
    }

    fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Close the transport: buffered data is flushed, then close_notify.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if !self.closed.swap(true, Ordering::Relaxed) {
            SslProtocol::start_shutdown(&self.protocol(py)?)
        } else {
            drop(self.ssl_protocol.replace(py, None));
            Ok(())
        }
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(!self
            .protocol(py)?
            .get()
            .st
            .borrow_mut(py)
            .app_reading_paused)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.protocol(py)?.get()._pause_reading(py);
        Ok(())
    }

    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        SslProtocol::_resume_reading(&self.protocol(py)?)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let protocol = self.protocol(py)?;
        protocol.get()._set_write_buffer_limits(py, high, low)?;
        SslProtocol::control_app_writing(&protocol, false)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let protocol = self.protocol(py)?;
        let st = protocol.get().st.borrow_mut(py);
        Ok((
            st.outgoing_marks.low.clone_ref(py),
            st.outgoing_marks.high.clone_ref(py),
        ))
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.protocol(py)?.get().write_buffer_size(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let protocol = self.protocol(py)?;
        protocol.get()._set_read_buffer_limits(py, high, low)?;
        SslProtocol::control_ssl_reading(&protocol, None)
    }

    fn get_read_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let protocol = self.protocol(py)?;
        let st = protocol.get().st.borrow_mut(py);
        Ok((
            st.incoming_marks.low.clone_ref(py),
            st.incoming_marks.high.clone_ref(py),
        ))
    }

    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.protocol(py)?.get()._get_read_buffer_size(py)
    }

    /// Required for the sendfile fallback's pause_writing/resume_writing logic.
    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self
            .protocol(py)?
            .get()
            .st
            .borrow_mut(py)
            .app_writing_paused)
    }

    /// Write some data bytes to the transport.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        SslProtocol::write_appdata(&self.protocol(py)?, std::iter::once(Ok(data.clone())))
    }

    /// Write a list (or any iterable) of data bytes to the transport.
    fn writelines(&self, py: Python<'_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        SslProtocol::_write_appdata(&self.protocol(py)?, list_of_data)
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    /// Close the transport immediately (no close_notify).
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self._force_close(py, None)
    }

    fn _force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.closed.store(true, Ordering::Relaxed);
        match self.ssl_protocol.clone_ref(py) {
            Some(p) => SslProtocol::abort(p.bind(py), exc.filter(|e| !e.is_none())),
            None => Ok(()),
        }
    }

    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.protocol(py)?.get().test_append_write_backlog(py, data)
    }

    /// `asyncio.sslproto._SSLProtocolTransport`, so that
    /// `isinstance(transport, asyncio.Transport)` holds.
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::ssl_protocol_transport(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if self.event_loop.is_none() {
            return Ok(()); // not initialised yet
        }
        visit.call(&self.event_loop)?;
        // SAFETY: called by the GC only.
        visit.call(unsafe { self.ssl_protocol.get_for_gc() })
    }

    fn __clear__(&self, py: Python<'_>) {
        drop(self.ssl_protocol.replace(py, None));
    }
}

impl Drop for SslTransport {
    fn drop(&mut self) {
        // CPython: `_SSLProtocolTransport.__del__`.
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        Python::attach(|py| {
            let warned = py::warn(py).and_then(|warn| {
                warn.call1((
                    "unclosed transport <asyncio._SSLProtocolTransport object>",
                    py.get_type::<pyo3::exceptions::PyResourceWarning>(),
                ))
                .map(drop)
            });
            if let Err(err) = warned {
                err.write_unraisable(py, None);
            }
        });
    }
}

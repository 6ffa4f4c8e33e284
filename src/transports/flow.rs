//! The write buffer and flow control every stream, pipe and datagram transport
//! shares: `_SelectorTransport`'s buffer and `_FlowControlMixin` of CPython 3.11
//! (`transports.py`). A write the kernel takes whole costs no buffer; the rest is
//! kept as the caller's `bytes` and flushed with `writev`; the protocol's
//! `pause_writing`/`resume_writing` are called at the water marks.

use std::collections::VecDeque;
use std::io::IoSlice;

use oxloop_core::sys;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyMemoryView};

use super::base::{is_exit, is_retry, Transport, WriteCall};
use crate::errors::os_error;
use crate::event_loop::Direction;

/// Chunks handed to one `writev`.
const WRITEV_MAX: usize = 64;

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
pub(super) fn threshold(mark: &Bound<'_, PyAny>) -> Option<usize> {
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

impl Transport {
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
        self.count_bytes(py, 0, n);
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
    /// `buffered`, append behind it; otherwise send at once (the kind's
    /// `write_call`), and buffer only what the kernel did not take, watching
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
            let call = this.kind.write_call;
            let Some(fd) = this.owned_fd(py) else {
                return Self::fatal_error(slf, this.fd_gone_error(py, call.method()), message);
            };
            // SAFETY: `fd` is owned: `owned_fd` just now, and no Python code ran
            // since.
            let n = unsafe { sys::borrow(fd) }.and_then(|fd| match call {
                WriteCall::Write => sys::write(fd, raw),
                WriteCall::Send => sys::send(fd, raw, libc::MSG_NOSIGNAL),
            });
            if let Ok(n) = n {
                this.count_bytes(py, 0, n);
            }
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
}

//! Native transports, one file per transport kind (uvloop's `handles/` layout),
//! over one shared base (`base.rs`, asyncio's `_SelectorTransport`).
//!
//! They plug into the loop through the same fd registry as `add_reader`: a
//! transport's reader and writer callbacks are its bound methods, so ordering,
//! `_ensure_fd_no_transport` and the `_selector` view behave exactly as for
//! asyncio's selector transports.

/// The `NativeFn` (`crate::handles`) of a transport method `fn(&Bound<T>) ->
/// PyResult<()>`: the loop calls it on the transport without a method call.
macro_rules! native {
    ($ty:ty, $method:ident) => {{
        fn call(obj: &pyo3::Bound<'_, pyo3::PyAny>) -> pyo3::PyResult<()> {
            <$ty>::$method(obj.cast::<$ty>()?)
        }
        call as crate::handles::NativeFn
    }};
}

pub mod base;
pub mod datagram;
pub mod pipe;
pub mod stream;

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use oxloop_core::buffers::PageBuf;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// CPython: `_SelectorTransport.max_size`, the most one read returns.
pub(crate) const MAX_SIZE: usize = 256 * 1024;

thread_local! {
    /// Where datagrams land before they are copied into their `bytes` (a datagram
    /// is small; a fresh `MAX_SIZE` bytes per read would cost a large malloc and
    /// a shrinking realloc). Page-aligned: see `oxloop_core::buffers`.
    static SCRATCH: RefCell<Option<PageBuf>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's `MAX_SIZE` scratch buffer. `f` must not call into
/// Python code (the buffer is borrowed for its duration).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with_borrow_mut(|buf| {
        let buf = buf.get_or_insert_with(|| PageBuf::new(MAX_SIZE));
        f(buf)
    })
}

/// `socket.socket`, the one type whose raw fd the fast paths may use.
fn socket_class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("socket")?.getattr("socket")?.unbind())
    })
    .map(|c| c.bind(py))
}

/// `type(obj) is socket.socket`: the stdlib loop calls the object's own methods
/// (`recv`, `send`, ...), so a subclass or a duck type (a pyOpenSSL `Connection`,
/// a test double) must get its methods called; only the exact type may be
/// bypassed with a syscall on its fd.
pub(crate) fn is_exact_socket(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.get_type().is(socket_class(obj.py())?))
}

/// Whether `PySocketSockObject.sock_fd` sits right after the object header, as in
/// every CPython's `socketmodule.h`: checked once against `fileno()`, then a plain
/// load (0 unknown, 1 yes, 2 no) on the hot paths.
static SOCK_FD_FIELD: AtomicU8 = AtomicU8::new(0);

fn sock_fd_field_ok(py: Python<'_>) -> bool {
    match SOCK_FD_FIELD.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let probe = || -> PyResult<bool> {
        let sock = socket_class(py)?.call1((libc::AF_UNIX, libc::SOCK_DGRAM))?;
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        // SAFETY: `sock` is an exact `socket.socket`.
        let field = unsafe { read_sock_fd_field(&sock) };
        sock.call_method0("close")?;
        Ok(field == Some(fd))
    };
    let ok = probe().unwrap_or(false);
    SOCK_FD_FIELD.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    ok
}

/// The int after the object header of `sock`, if the type's basic size has room.
///
/// # Safety
/// `sock` must be a `_socket.socket` instance (an exact `socket.socket`).
unsafe fn read_sock_fd_field(sock: &Bound<'_, PyAny>) -> Option<RawFd> {
    let offset = std::mem::size_of::<pyo3::ffi::PyObject>();
    // SAFETY: a live object's type.
    let basic = unsafe { (*pyo3::ffi::Py_TYPE(sock.as_ptr())).tp_basicsize };
    if usize::try_from(basic).ok()? < offset + std::mem::size_of::<RawFd>() {
        return None;
    }
    // SAFETY: within the object's basic size (checked); an int read, no Python.
    Some(unsafe {
        sock.as_ptr()
            .cast::<u8>()
            .add(offset)
            .cast::<RawFd>()
            .read_unaligned()
    })
}

/// The fd an exact `socket.socket` holds right now: -1 once it was closed or
/// detached (`socket.close()` sets it to -1 before it closes the number). Read from
/// the C struct (no Python code runs, so nothing can close it between this check
/// and a syscall made under the same GIL hold); `fileno()` if the layout check
/// failed. The caller checks that `sock` is an exact `socket.socket`.
pub(crate) fn socket_fd_now(sock: &Bound<'_, PyAny>) -> RawFd {
    if sock_fd_field_ok(sock.py()) {
        // SAFETY: the caller passes an exact socket.socket; layout checked above.
        if let Some(fd) = unsafe { read_sock_fd_field(sock) } {
            return fd;
        }
    }
    // `_socket.socket.fileno`, C code only for the exact type.
    sock.call_method0("fileno")
        .and_then(|fd| fd.extract())
        .unwrap_or(-1)
}

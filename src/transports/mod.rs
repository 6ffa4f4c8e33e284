//! Native transports, one file per transport kind (uvloop's `handles/` layout),
//! over one shared base (`base.rs`, asyncio's `_SelectorTransport`).
//!
//! They plug into the loop through the same fd registry and ready queue as
//! `add_reader`, as native entries (`Watcher::Transport`, `Ready::Transport`): the
//! order of callbacks, `_ensure_fd_no_transport` and the `_selector` view behave
//! as for asyncio's selector transports, with no Python object per event.

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
mod extra;
mod flow;
pub(crate) mod lazy_socket;
pub mod pipe;
pub mod ssl;
pub mod stream;
mod watch;

use std::cell::RefCell;

use oxloop_core::buffers::PageBuf;

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

//! `oxloop._oxloop`: the PyO3 layer of oxloop.
//!
//! Thin glue over `oxloop-core`: the loop's hot half ([`event_loop::LoopCore`]),
//! [`handles`], and the single places for GIL-guarded state ([`gil`]), raw FFI
//! ([`ffi`]), OS-error mapping ([`errors`]) and cached Python objects ([`py`]).

mod errors;
mod event_loop;
mod fastcall;
mod ffi;
mod gil;
mod handles;
mod py;
mod sockaddr;
mod transports;

use pyo3::prelude::*;

/// `gil_used = true`: the loop's state is guarded by the GIL (`gil.rs`), so a
/// free-threaded CPython re-enables the GIL when it imports this module.
#[pymodule(gil_used = true)]
fn _oxloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    // Resolved now: an unclosed transport freed while the interpreter shuts down
    // warns from its destructor, when `warnings` can no longer be imported.
    py::warn(m.py())?;
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transports::base::Transport>()?;
    m.add_class::<transports::stream::StreamTransport>()?;
    m.add_class::<transports::datagram::DatagramTransport>()?;
    m.add_class::<transports::pipe::ReadPipeTransport>()?;
    m.add_class::<transports::pipe::WritePipeTransport>()?;
    m.add_class::<transports::ssl::SslProtocol>()?;
    m.add_class::<transports::ssl::SslTransport>()?;
    m.add_class::<event_loop::sock::SockWaiter>()?;
    m.add_class::<event_loop::transport_map::TransportMap>()?;
    m.add_function(wrap_pyfunction!(py::_compat_names, m)?)?;
    fastcall::install(m.py())?;
    Ok(())
}

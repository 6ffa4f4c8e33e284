//! A server's accepted connections, made without Python in between.
//!
//! `Loop._accept_connection` (python/oxloop/_loop.py) accepts a batch with
//! `_accept_many` and gives each fd to a `socket.socket`; outside debug mode, with
//! the loop's own `_make_socket_transport`, the rest of asyncio's
//! `_accept_connection2` is done here for the whole batch: in a copy of the context
//! (the task asyncio would make has one), the protocol factory, then the native
//! transport with the raw peer address. Errors are asyncio's: `SystemExit` and
//! `KeyboardInterrupt` propagate (the rest of the batch is made on the next
//! iteration, as asyncio's remaining tasks would be), anything else is reported
//! only in debug mode, which takes the Python path.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::LoopCore;
use crate::errors::is_exit;
use crate::transports::stream::StreamTransport;

impl LoopCore {
    pub(super) fn accept_batch(
        slf: &Bound<'_, Self>,
        protocol_factory: &Bound<'_, PyAny>,
        conns: &Bound<'_, PyList>,
        server: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let count = conns.len();
        for i in 0..count {
            let (conn, addr): (Bound<'_, PyAny>, Bound<'_, PyBytes>) =
                conns.get_item(i)?.extract()?;
            let context = crate::ffi::copy_context(py)?;
            let made = crate::ffi::with_context(py, &context, || {
                let protocol = protocol_factory.call0()?;
                StreamTransport::_create(
                    slf,
                    &conn,
                    &protocol,
                    None,
                    None,
                    Some(server),
                    Some(addr.as_bytes()),
                )
                .map(drop)
            });
            match made {
                Ok(()) => {}
                Err(err) if is_exit(py, &err) => {
                    if i + 1 < count {
                        let rest = conns.get_slice(i + 1, count);
                        let again = slf.getattr(pyo3::intern!(py, "_new_connections"))?;
                        slf.call_method1(
                            pyo3::intern!(py, "call_soon"),
                            (again, protocol_factory, rest, server, true),
                        )?;
                    }
                    return Err(err);
                }
                // asyncio's `_accept_connection2` reports these in debug mode only.
                Err(_) => {}
            }
        }
        Ok(())
    }
}

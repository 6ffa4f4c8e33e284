//! A server's accepted connections, made without Python in between.
//!
//! `Loop._accept_connection` (python/oxloop/_loop.py) accepts a batch with
//! `_accept_many`; outside debug mode, with the loop's own
//! `_make_socket_transport`, the rest of asyncio's `_accept_connection2` is done
//! here for the whole batch: in a copy of the context (the task asyncio would make
//! has one), the protocol factory, then the native transport over the bare fd,
//! with the raw peer address (the `socket.socket` is made on first use:
//! `transports::lazy_socket`). Errors are asyncio's: `SystemExit` and
//! `KeyboardInterrupt` propagate (the rest of the batch is made on the next
//! iteration, as asyncio's remaining tasks would be), anything else is reported
//! only in debug mode, which takes the Python path.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::LoopCore;
use crate::errors::is_exit;
use crate::transports::lazy_socket::UnmadeSocket;
use crate::transports::stream::StreamTransport;

impl LoopCore {
    /// `accepted`: `_accept_many`'s `[(fd, raw_address), ...]`, given up by the
    /// caller: each fd is owned here until its transport (or socket object) owns
    /// it, and closed if anything fails first. `report`, when given, is called
    /// first (a failed `accept()`'s report, which asyncio makes before the
    /// protocol factories run).
    pub(super) fn accept_batch(
        slf: &Bound<'_, Self>,
        protocol_factory: &Bound<'_, PyAny>,
        accepted: &Bound<'_, PyList>,
        server: &Bound<'_, PyAny>,
        listener: &Bound<'_, PyAny>,
        report: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let mut conns: Vec<(OwnedFd, Bound<'_, PyBytes>)> = Vec::with_capacity(accepted.len());
        for item in accepted.iter() {
            let (fd, addr): (RawFd, Bound<'_, PyBytes>) = item.extract()?;
            if fd < 0 {
                return Err(pyo3::exceptions::PyValueError::new_err("negative fd"));
            }
            // SAFETY: `_accept_many` gave these fds up to this call (the private
            // protocol between the two); nothing else owns them.
            conns.push((unsafe { OwnedFd::from_raw_fd(fd) }, addr));
        }
        if let Some(report) = report {
            report.call0()?;
        }
        let unmade = UnmadeSocket::accepted_from(listener)?;
        let mut conns = conns.into_iter();
        while let Some((fd, addr)) = conns.next() {
            let context = crate::ffi::copy_context(py)?;
            let made = crate::ffi::with_context(py, &context, || {
                let protocol = match protocol_factory.call0() {
                    Ok(protocol) => protocol,
                    Err(err) => {
                        // asyncio's socket object is dropped unclosed then (a
                        // ResourceWarning): made and dropped alike.
                        drop(unmade.make(py, fd));
                        return Err(err);
                    }
                };
                StreamTransport::create_accepted(
                    slf,
                    fd,
                    unmade,
                    &protocol,
                    server,
                    addr.as_bytes(),
                )
                .map(drop)
            });
            match made {
                Ok(()) => {}
                Err(err) if is_exit(py, &err) => {
                    let rest: Vec<(RawFd, Bound<'_, PyBytes>)> =
                        conns.map(|(fd, addr)| (fd.into_raw_fd(), addr)).collect();
                    if !rest.is_empty() {
                        // Given to socket objects now, made on the next iteration
                        // by the Python path.
                        let rest =
                            slf.call_method1(pyo3::intern!(py, "_adopt"), (listener, rest))?;
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

//! Python objects looked up once per interpreter (uvloop's `includes/stdlib.pxi`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

fn cached<'py>(
    cell: &'static PyOnceLock<Py<PyAny>>,
    py: Python<'py>,
    module: &str,
    attr: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import(module)?.getattr(attr)?.unbind())
    })
    .map(|obj| obj.bind(py))
}

macro_rules! import_cache {
    ($($(#[$doc:meta])* $name:ident => $module:literal . $attr:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
                static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                cached(&CELL, py, $module, $attr)
            }
        )*
    };
}

import_cache! {
    /// `asyncio.format_helpers._format_callback_source(callback, args)`.
    format_callback_source => "asyncio.format_helpers" . "_format_callback_source";
    /// `asyncio.format_helpers.extract_stack(frame)`.
    extract_stack => "asyncio.format_helpers" . "extract_stack";
    /// `asyncio.base_events._format_handle(handle)`, used by the slow-callback warning.
    format_handle => "asyncio.base_events" . "_format_handle";
    /// The `asyncio` logger.
    asyncio_logger => "asyncio.log" . "logger";
    /// `sys._getframe`.
    getframe => "sys" . "_getframe";
    /// `asyncio.futures.Future` (the C `_asyncio.Future`).
    future_type => "asyncio.futures" . "Future";
    /// `asyncio.tasks.Task` (the C `_asyncio.Task`).
    task_type => "asyncio.tasks" . "Task";
    /// `asyncio.events.Handle`.
    asyncio_handle => "asyncio.events" . "Handle";
    /// `asyncio.events.TimerHandle`.
    asyncio_timer_handle => "asyncio.events" . "TimerHandle";
    /// `asyncio.trsock.TransportSocket`.
    transport_socket => "asyncio.trsock" . "TransportSocket";
    /// `_socket.socket`, the C socket type under `socket.socket`.
    raw_socket_type => "_socket" . "socket";
    /// `asyncio.futures._set_result_unless_cancelled`.
    set_result_unless_cancelled => "asyncio.futures" . "_set_result_unless_cancelled";
    /// `asyncio.protocols.BufferedProtocol`.
    buffered_protocol => "asyncio.protocols" . "BufferedProtocol";
    /// `asyncio.selector_events._SelectorSocketTransport`: what native stream
    /// transports report as `__class__`, so `isinstance(t, asyncio.Transport)` holds.
    selector_socket_transport => "asyncio.selector_events" . "_SelectorSocketTransport";
    /// `asyncio.constants._SendfileMode.TRY_NATIVE`.
    sendfile_try_native => "asyncio.constants" . "_SendfileMode";
    /// `asyncio.selector_events._SelectorDatagramTransport` (native datagram
    /// transports' `__class__`).
    selector_datagram_transport => "asyncio.selector_events" . "_SelectorDatagramTransport";
    /// `asyncio.unix_events._UnixReadPipeTransport` (native read pipes' `__class__`).
    unix_read_pipe_transport => "asyncio.unix_events" . "_UnixReadPipeTransport";
    /// `asyncio.unix_events._UnixWritePipeTransport` (native write pipes' `__class__`).
    unix_write_pipe_transport => "asyncio.unix_events" . "_UnixWritePipeTransport";
    /// `ssl.SSLSocket` (the sock_* methods refuse it, as asyncio does).
    ssl_socket => "ssl" . "SSLSocket";
    /// `os.fsdecode`.
    fsdecode => "os" . "fsdecode";
    /// `warnings.warn`.
    warn => "warnings" . "warn";
    /// `asyncio.tasks._set_task_name`.
    set_task_name => "asyncio.tasks" . "_set_task_name";
}

/// A socket's `family`, `type` and `proto` as the C `_socket.socket` stores them:
/// `socket.socket`'s own `family`/`type` properties convert to enums on every read
/// (~6,000 instructions each), which showed up as a third of accepting a connection.
pub fn raw_socket_triple(sock: &Bound<'_, PyAny>) -> PyResult<(i32, i32, i32)> {
    static DESCRIPTORS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();
    let py = sock.py();
    let descriptors = DESCRIPTORS.get_or_try_init(py, || {
        let ty = raw_socket_type(py)?;
        Ok::<_, PyErr>([
            ty.getattr("family")?.unbind(),
            ty.getattr("type")?.unbind(),
            ty.getattr("proto")?.unbind(),
        ])
    })?;
    let get = |i: usize| -> PyResult<i32> {
        descriptors[i]
            .bind(py)
            .call_method1(pyo3::intern!(py, "__get__"), (sock,))?
            .extract()
    };
    Ok((get(0)?, get(1)?, get(2)?))
}

//! The Rust half of oxloop's compat seam: every stdlib object and private name the
//! extension uses is reached from here (Python code goes through
//! `python/oxloop/_compat.py`), and where the stdlib's private API differs between
//! CPython versions, the version is chosen here and nowhere else.
//!
//! Objects are looked up once per interpreter (uvloop's `includes/stdlib.pxi`).
//! `_compat_names()` (exported by the extension) resolves every one of them, and
//! tests/test_compat.py checks them on the running interpreter.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

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

        /// Every cached object, as `("module.attr", getter)`.
        const CACHED: &[(&str, for<'py> fn(Python<'py>) -> PyResult<&'py Bound<'py, PyAny>>)] =
            &[$((concat!($module, ".", $attr), $name),)*];
    };
}

import_cache! {
    /// `asyncio.format_helpers._format_callback_source(callback, args)`.
    format_callback_source => "asyncio.format_helpers" . "_format_callback_source";
    /// `asyncio.format_helpers.extract_stack(frame)`.
    extract_stack => "asyncio.format_helpers" . "extract_stack";
    /// `asyncio.base_events._format_handle(handle)`, used by the slow-callback warning.
    format_handle => "asyncio.base_events" . "_format_handle";
    /// `asyncio.base_events.Server`, whose client bookkeeping is done here.
    base_server => "asyncio.base_events" . "Server";
    /// `weakref.WeakSet` (3.13's `Server._clients`).
    weak_set => "weakref" . "WeakSet";
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
    /// `socket.socket`, the one type whose raw fd the fast paths may use.
    socket_class => "socket" . "socket";
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
    /// `ssl.SSLObject`: an exact one is driven through its C object (see [`ssl_object_io`]).
    ssl_object => "ssl" . "SSLObject";
    /// `ssl.MemoryBIO`, the TLS layer's two buffers.
    memory_bio => "ssl" . "MemoryBIO";
    /// `ssl.SSLError`, `ssl.SSLWantReadError`, `ssl.SSLSyscallError` (asyncio's
    /// `SSLAgainErrors` are the last two) and `ssl.CertificateError`.
    ssl_error => "ssl" . "SSLError";
    ssl_want_read_error => "ssl" . "SSLWantReadError";
    ssl_syscall_error => "ssl" . "SSLSyscallError";
    certificate_error => "ssl" . "CertificateError";
    /// `asyncio.sslproto.SSLProtocol` and `_SSLProtocolTransport`: what the native TLS
    /// layer's objects report as `__class__` (asyncio's isinstance checks hold).
    ssl_protocol_class => "asyncio.sslproto" . "SSLProtocol";
    ssl_protocol_transport => "asyncio.sslproto" . "_SSLProtocolTransport";
    /// `asyncio.sslproto.SSLProtocolState` (the TLS layer's `_state`).
    ssl_protocol_state => "asyncio.sslproto" . "SSLProtocolState";
    /// `asyncio.sslproto.add_flowcontrol_defaults(high, low, kb)`.
    add_flowcontrol_defaults => "asyncio.sslproto" . "add_flowcontrol_defaults";
    /// `asyncio.constants`: the TLS timeouts and water marks.
    asyncio_constants_module => "asyncio" . "constants";
    /// `asyncio.exceptions.TimeoutError` (the shutdown timeout's error) and
    /// `CancelledError` (not reported by `_fatal_error`).
    asyncio_timeout_error => "asyncio.exceptions" . "TimeoutError";
    cancelled_error => "asyncio.exceptions" . "CancelledError";
    /// `asyncio.constants._SendfileMode` (the TLS transport's `FALLBACK`).
    sendfile_mode => "asyncio.constants" . "_SendfileMode";
}

/// The TLS layer's handle on an `ssl.SSLObject`: the object whose methods it calls.
/// An exact `ssl.SSLObject` is a thin Python wrapper whose `read`, `write`,
/// `do_handshake` and `unwrap` (`shutdown`) forward to the C object in
/// its private `_sslobj`; calling that one directly skips a Python frame per call
/// with the same result. A subclass (`SSLContext.sslobject_class`) keeps its own
/// methods. Returns `(object, is_c_object)`.
pub fn ssl_object_io<'py>(sslobj: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let py = sslobj.py();
    if sslobj.get_type().is(ssl_object(py)?) {
        if let Ok(raw) = sslobj.getattr(pyo3::intern!(py, "_sslobj")) {
            return Ok((raw, true));
        }
    }
    Ok((sslobj.clone(), false))
}

/// The interpreter's `(major, minor)`, read once: PyO3's `version_info()` parses
/// `Py_GetVersion()`, which formats the whole version string on every call (it cost
/// a tenth of the instructions of a connection's life when asked per connection).
fn version() -> (u8, u8) {
    static VERSION: std::sync::OnceLock<(u8, u8)> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        // SAFETY: a read of the running interpreter's `Py_Version` constant.
        let hex = unsafe { pyo3::ffi::Py_Version };
        (((hex >> 24) & 0xff) as u8, ((hex >> 16) & 0xff) as u8)
    })
}

/// CPython 3.13 or later (`Server` tracks its transports; task factories' tasks are
/// named unconditionally).
fn py313(_py: Python<'_>) -> bool {
    version() >= (3, 13)
}

/// `format_helpers._format_callback_source(callback, args)` as `Handle` calls it:
/// CPython 3.13 shows the arguments only in debug mode (they may hold secrets) and
/// takes the loop's debug flag.
pub fn callback_source<'py>(
    py: Python<'py>,
    callback: Py<PyAny>,
    args: Py<PyAny>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // Python code (reprs) on the loop's thread: a call the interpreter's exit may
    // unwind (`ffi::call_kw`).
    let format = format_callback_source(py)?;
    let positional = pyo3::types::PyTuple::new(py, [callback, args])?;
    if py313(py) {
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "debug"), debug)?;
        crate::ffi::call_kw(format, &positional, Some(&kwargs))
    } else {
        crate::ffi::call(format, &positional)
    }
}

/// CPython 3.13+: `select.epoll` warns when it is handed a bool as an fd (selectors
/// passes `True`/`False` through as the ints they are); `add`/`remove` call this
/// where the stdlib's selector would reach the kernel with `fileobj`.
pub fn warn_bool_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = fileobj.py();
    if py313(py) && fileobj.is_instance_of::<pyo3::types::PyBool>() {
        let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
        PyErr::warn(py, &category, c"bool is used as a file descriptor", 1)?;
    }
    Ok(())
}

/// CPython 3.13+: `sendto(b'')` sends an empty datagram (earlier versions drop it).
pub fn sends_empty_datagrams(py: Python<'_>) -> bool {
    py313(py)
}

/// CPython 3.12+: `_SelectorSocketTransport.writelines` is its own method, with its
/// own checks and messages (3.11 inherits `WriteTransport.writelines`, a `write` of
/// the joined items).
pub fn own_writelines(_py: Python<'_>) -> bool {
    version() >= (3, 12)
}

/// Private methods and attributes of the stdlib's loop classes that oxloop's `Loop`
/// inherits and the extension calls on itself, with the class that defines them.
pub mod names {
    /// `BaseEventLoop._check_callback(callback, method)`.
    pub const CHECK_CALLBACK: &str = "_check_callback";
    /// `BaseSelectorEventLoop._ensure_fd_no_transport(fd)`.
    pub const ENSURE_FD_NO_TRANSPORT: &str = "_ensure_fd_no_transport";
    /// `events.Handle._cancelled` and `events.Handle._run()` (the stdlib's signal
    /// code hands its own handles to `_add_callback`).
    pub const HANDLE_CANCELLED: &str = "_cancelled";
    pub const HANDLE_RUN: &str = "_run";

    /// `(owner, name)` for the checks of `_compat_names()`.
    pub(super) const ALL: &[(&str, &str)] = &[
        ("asyncio.base_events.BaseEventLoop", CHECK_CALLBACK),
        (
            "asyncio.selector_events.BaseSelectorEventLoop",
            ENSURE_FD_NO_TRANSPORT,
        ),
        ("asyncio.events.Handle", HANDLE_CANCELLED),
        ("asyncio.events.Handle", HANDLE_RUN),
        ("asyncio.base_events.Server", "_attach"),
        ("asyncio.base_events.Server", "_detach"),
    ];
}

/// `Server._attach()` for a transport the server accepted: CPython 3.13 passes the
/// transport (`Server._clients`, for `close_clients()`), earlier versions count.
pub fn server_attach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    server_count(server, true, transport)
}

/// `Server._detach()`, the counterpart of [`server_attach`].
pub fn server_detach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    server_count(server, false, transport)
}

fn server_count(
    server: &Bound<'_, PyAny>,
    attach: bool,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = server.py();
    if server.get_type().is(base_server(py)?) {
        // asyncio's own `Server`: its `_attach`/`_detach` bodies, done here (two
        // Python frames per connection, a tenth of its instructions). The
        // `assert`s on the server's state are not repeated.
        if py313(py) {
            let clients = server.getattr(pyo3::intern!(py, "_clients"))?;
            if clients.get_type().is(weak_set(py)?) {
                if attach {
                    weak_set_add(&clients, transport)?;
                    return Ok(());
                }
                let left = weak_set_discard(&clients, transport)?;
                return wake_if_last(server, left == 0);
            }
        } else {
            let count = pyo3::intern!(py, "_active_count");
            let delta = if attach { 1 } else { -1 };
            let now = server.getattr(count)?.add(delta)?;
            server.setattr(count, &now)?;
            if !attach {
                return wake_if_last(server, now.extract::<i64>()? == 0);
            }
            return Ok(());
        }
    }
    let method = match attach {
        true => pyo3::intern!(py, "_attach"),
        false => pyo3::intern!(py, "_detach"),
    };
    if py313(py) {
        server.call_method1(method, (transport,))?;
    } else {
        server.call_method0(method)?;
    }
    Ok(())
}

/// `Server._detach`'s end: `_wakeup()` once the last client left a closed server.
fn wake_if_last(server: &Bound<'_, PyAny>, none_left: bool) -> PyResult<()> {
    let py = server.py();
    if none_left && server.getattr(pyo3::intern!(py, "_sockets"))?.is_none() {
        server.call_method0(pyo3::intern!(py, "_wakeup"))?;
    }
    Ok(())
}

/// The fields of a `weakref.WeakSet` its `add`/`discard`/`__len__` use:
/// `(data, _pending_removals)`, with the pending removals committed first, as
/// those methods do.
fn weak_set_parts<'py>(
    set: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, pyo3::types::PySet>, Bound<'py, PyAny>)> {
    let py = set.py();
    let pending = set.getattr(pyo3::intern!(py, "_pending_removals"))?;
    if pending.is_truthy()? {
        set.call_method0(pyo3::intern!(py, "_commit_removals"))?;
    }
    let data = set.getattr(pyo3::intern!(py, "data"))?.cast_into()?;
    Ok((data, pending))
}

/// `WeakSet.add(item)`: `data.add(ref(item, self._remove))`.
fn weak_set_add(set: &Bound<'_, PyAny>, item: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = set.py();
    let (data, _) = weak_set_parts(set)?;
    let remove = set.getattr(pyo3::intern!(py, "_remove"))?;
    data.add(pyo3::types::PyWeakrefReference::new_with(item, remove)?)
}

/// `WeakSet.discard(item)`, then `len(set)`: `data.discard(ref(item))`.
fn weak_set_discard(set: &Bound<'_, PyAny>, item: &Bound<'_, PyAny>) -> PyResult<usize> {
    let (data, pending) = weak_set_parts(set)?;
    data.discard(pyo3::types::PyWeakrefReference::new(item)?)?;
    Ok(data.len().saturating_sub(pending.len()?))
}

/// What 3.13's `_SelectorTransport.__del__` does for an unclosed transport that is
/// collected: `server._detach(self)`. A native transport being freed cannot be
/// passed to Python, and the server's `_clients` `WeakSet` has dropped it already
/// (weak references are cleared first), so this does the rest of `_detach`: wake
/// `wait_closed()` when it was the last client of a closed server. Earlier
/// versions do not detach a collected transport.
pub fn server_detach_collected(server: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    if !py313(py) {
        return Ok(());
    }
    // A server collected in the same cycle may be cleared already (no attributes
    // left): then nothing can be waiting on it.
    let (Ok(clients), Ok(sockets)) = (
        server.getattr(pyo3::intern!(py, "_clients")),
        server.getattr(pyo3::intern!(py, "_sockets")),
    ) else {
        return Ok(());
    };
    // Counted by iterating: the transport being freed may still be in the WeakSet
    // (PyO3 drops a pyclass's Rust value before clearing its weak references, so a
    // transport freed by reference count is seen here with its entry, where the
    // collector clears the entry first); iteration yields only live referents.
    let mut live = 0usize;
    for item in clients.try_iter()? {
        item?;
        live += 1;
    }
    if live == 0 && sockets.is_none() {
        server.call_method0(pyo3::intern!(py, "_wakeup"))?;
    }
    Ok(())
}

/// Names a task made by a task factory, as that version's `create_task` does:
/// CPython 3.13 calls `task.set_name(name)` whatever the name (even `None`);
/// 3.11 and 3.12 (`tasks._set_task_name`) only when a name is given, and warn
/// instead of failing when the task has no `set_name`.
pub fn set_task_name(task: &Bound<'_, PyAny>, name: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let py = task.py();
    let set_name = pyo3::intern!(py, "set_name");
    if py313(py) {
        task.call_method1(set_name, (name,))?;
        return Ok(());
    }
    let Some(name) = name else {
        return Ok(());
    };
    match task.getattr(set_name) {
        Ok(method) => method.call1((name,)).map(drop),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => warn(py)?
            .call1((
                "Task.set_name() was added in Python 3.8, the method support will be \
                 mandatory for third-party task implementations since 3.13.",
                py.get_type::<pyo3::exceptions::PyDeprecationWarning>(),
                3,
            ))
            .map(drop),
        Err(err) => Err(err),
    }
}

/// `sock.close()` from a transport's dealloc. When the transport is collected in a
/// reference cycle with its socket, the GC has already cleared the `socket.socket`'s
/// `__slots__` (`_io_refs`, `_closed`: `close()` raises `AttributeError`); the
/// stdlib's transport closes it in `__del__`, before that. Close the C socket then.
pub fn close_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    match sock.call_method0(pyo3::intern!(py, "close")) {
        Ok(_) => Ok(()),
        Err(err)
            if err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                && sock.is_instance(raw_socket_type(py)?)? =>
        {
            raw_socket_type(py)?
                .getattr(pyo3::intern!(py, "close"))?
                .call1((sock,))
                .map(drop)
        }
        Err(err) => Err(err),
    }
}

/// `_oxloop._compat_names()`: resolves every object and private name above on the
/// running interpreter and returns `[(name, object), ...]` (tests/test_compat.py
/// checks their shapes). Raises if one is missing.
#[pyfunction]
pub fn _compat_names(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for (name, get) in CACHED {
        out.append((*name, get(py)?))?;
    }
    for (owner, name) in names::ALL {
        let (module, class) = owner.rsplit_once('.').expect("owner is module.Class");
        let obj = py.import(module)?.getattr(class)?.getattr(*name)?;
        out.append((format!("{owner}.{name}"), obj))?;
    }
    Ok(out)
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
        let descr = descriptors[i].as_ptr();
        // SAFETY: `descr` is one of `_socket.socket`'s member descriptors, alive
        // in the static; its type's `tp_descr_get` is called as `descr.__get__(sock)`
        // would call it (a new reference or NULL with an exception set), without
        // making the method-wrapper object `__get__` lookups make.
        let value = unsafe {
            let get = (*pyo3::ffi::Py_TYPE(descr)).tp_descr_get;
            match get {
                Some(get) => Bound::from_owned_ptr_or_err(
                    py,
                    get(
                        descr,
                        sock.as_ptr(),
                        pyo3::ffi::Py_TYPE(sock.as_ptr()).cast(),
                    ),
                )?,
                None => descriptors[i]
                    .bind(py)
                    .call_method1(pyo3::intern!(py, "__get__"), (sock,))?,
            }
        };
        value.extract()
    };
    Ok((get(0)?, get(1)?, get(2)?))
}

// ----- socket internals ---------------------------------------------------------

/// `type(obj) is socket.socket`: the stdlib loop calls the object's own methods
/// (`recv`, `send`, ...), so a subclass or a duck type (a pyOpenSSL `Connection`,
/// a test double) must get its methods called; only the exact type may be
/// bypassed with a syscall on its fd.
pub fn is_exact_socket(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
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
pub fn socket_fd_now(sock: &Bound<'_, PyAny>) -> RawFd {
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

/// The dict of weak references under a `weakref.WeakValueDictionary` (its `data`
/// attribute), read without the `KeyError` a missing key raises through the
/// mapping API; `None` if this version's class has no such dict.
pub fn weak_value_dict_data<'py>(
    dict: &Bound<'py, PyAny>,
) -> Option<Bound<'py, pyo3::types::PyDict>> {
    let data = dict.getattr(pyo3::intern!(dict.py(), "data")).ok()?;
    data.cast_into::<pyo3::types::PyDict>().ok()
}

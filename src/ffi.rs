//! The crate's raw `pyo3::ffi` calls: running a callback inside a
//! `contextvars.Context` without going through `Context.run`, calls into Python
//! that a forced unwind may leave, signals, and reading straight into a fresh
//! `bytes`.

use std::cell::Cell;

use oxloop_core::buffers::is_slow_copy_start;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `contextvars.copy_context()`.
pub fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: attached to the interpreter (token); returns a new reference or NULL
    // with an exception set, which `from_owned_ptr_or_err` turns into `Err`.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// Runs `body` inside `context`, as `Context.run` does: entering fails as it does
/// (`RuntimeError` when the context is already entered, `TypeError` when it is not
/// a `Context`), and the context is left whatever `body` returns.
#[inline(always)]
pub(crate) fn with_context<T>(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    body: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    let ctx = context.as_ptr();
    // SAFETY: `ctx` is a live object for the whole call (borrowed from `context`);
    // PyContext_Enter type-checks it and sets an exception on failure.
    if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = body();
    // SAFETY: we entered `ctx` above on this thread, so exiting it is valid.
    if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
        return Err(PyErr::fetch(py));
    }
    result
}

/// Hangs the thread when dropped by an unwind that is not a Rust panic.
///
/// At interpreter exit CPython (up to 3.13) ends a daemon thread that re-takes the
/// GIL with `pthread_exit`, a forced unwind of the thread's stack. Through Rust
/// frames that unwind would drop Python objects without the GIL (a crash while
/// the main thread finalises) and reach a `catch_unwind` (ours, or PyO3's method
/// trampolines), which cannot stop it: the process aborts with "FATAL: exception
/// not rethrown". Parking the thread for good where the unwind first meets Rust is
/// what CPython 3.14 does itself (gh-87135) and PyO3 does around
/// `PyEval_RestoreThread`. A Rust panic passes through (`panicking()` is true).
struct HangOnForcedUnwind;

impl Drop for HangOnForcedUnwind {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            loop {
                std::thread::park();
            }
        }
    }
}

/// Runs `body`; a forced unwind out of it parks the thread instead of going on
/// (see [`HangOnForcedUnwind`]). For entry points that hold a `catch_unwind`.
pub fn hang_on_forced_unwind<T>(body: impl FnOnce() -> T) -> T {
    let guard = HangOnForcedUnwind;
    let out = body();
    std::mem::forget(guard);
    out
}

/// `PyObject_CallNoArgs` and `PyObject_Call` as `C-unwind` function pointers. A
/// daemon thread's forced unwind starts inside them, and only a call the compiler
/// knows may unwind gets an unwind-table entry, so runs the guard's drop (at a
/// `C` call the unwinder finds none and aborts). Declaring the symbols again as
/// `C-unwind` is not enough: under LTO the one declaration keeps pyo3-ffi's
/// `nounwind`. `black_box` hides the callee, so the call stays one that may unwind.
type CallNoArgs = unsafe extern "C-unwind" fn(*mut ffi::PyObject) -> *mut ffi::PyObject;
type CallArgs = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

type CCallNoArgs = unsafe extern "C" fn(*mut ffi::PyObject) -> *mut ffi::PyObject;
type CCallArgs = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

fn unwinding_calls() -> (CallNoArgs, CallArgs) {
    let no_args: CCallNoArgs = ffi::PyObject_CallNoArgs;
    let args: CCallArgs = ffi::PyObject_Call;
    // SAFETY: the same functions with the same arguments; only the unwind ABI
    // differs, and the C functions do unwind (pthread_exit) at interpreter exit.
    unsafe {
        std::hint::black_box((
            std::mem::transmute::<CCallNoArgs, CallNoArgs>(no_args),
            std::mem::transmute::<CCallArgs, CallArgs>(args),
        ))
    }
}

/// `callable(*args)`, where the interpreter's exit may end the thread (see
/// [`HangOnForcedUnwind`]): use it for every call into Python code that runs on the
/// loop's thread.
pub fn call<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    call_kw(callable, args, None)
}

/// `callable(*args, **kwargs)` as [`call`].
pub fn call_kw<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let guard = HangOnForcedUnwind;
    // SAFETY: attached (token); the objects are live for the call; returns a new
    // reference or NULL with an exception set.
    let out = unsafe {
        let (no_args, with_args) = unwinding_calls();
        match kwargs {
            None if args.is_empty() => no_args(callable.as_ptr()),
            None => with_args(callable.as_ptr(), args.as_ptr(), std::ptr::null_mut()),
            Some(kwargs) => with_args(callable.as_ptr(), args.as_ptr(), kwargs.as_ptr()),
        }
    };
    std::mem::forget(guard);
    // SAFETY: as above.
    unsafe { Bound::from_owned_ptr_or_err(py, out) }
}

/// `obj.name(*args)` as [`call`].
pub fn call_method<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    call(&obj.getattr(name)?, args)
}

type VectorcallMethod = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
type CVectorcallMethod = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// `obj.name(*args)` (at most three arguments) through `PyObject_VectorcallMethod`
/// (no bound method, no tuple), where the interpreter's exit may end the thread
/// (see [`call`]): for the protocol methods a transport calls, which run the
/// application's code on the loop's thread.
pub fn call_protocol<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let mut argv = [std::ptr::null_mut(); 4];
    argv[0] = obj.as_ptr();
    for (slot, arg) in argv[1..].iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    let nargs = 1 + args.len().min(3);
    let guard = HangOnForcedUnwind;
    let plain: CVectorcallMethod = ffi::PyObject_VectorcallMethod;
    // SAFETY: the same function with the same arguments; only the unwind ABI
    // differs (see `unwinding_calls`). `argv[..nargs]` holds live borrowed
    // references (self first, as the method call convention wants) for the call.
    let out = unsafe {
        let vectorcall_method = std::hint::black_box(std::mem::transmute::<
            CVectorcallMethod,
            VectorcallMethod,
        >(plain));
        vectorcall_method(name.as_ptr(), argv.as_ptr(), nargs, std::ptr::null_mut())
    };
    std::mem::forget(guard);
    // SAFETY: a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, out) }
}

/// `context.run(callback, *args)`, discarding the result. Inlined into the run
/// iteration, with the call made here: the hottest path of the loop.
#[inline(always)]
pub fn run_in_context(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    with_context(py, context, || {
        let guard = HangOnForcedUnwind;
        // SAFETY: attached (token); the objects are live for the call; returns a
        // new reference or NULL with an exception set (see `call_kw`).
        let out = unsafe {
            let (no_args, with_args) = unwinding_calls();
            if args.is_empty() {
                no_args(callback.as_ptr())
            } else {
                with_args(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut())
            }
        };
        std::mem::forget(guard);
        if out.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: the call's new reference, released at once (a Bound drop).
        drop(unsafe { Bound::from_owned_ptr(py, out) });
        Ok(())
    })
}

/// `context.run(method)` for a native transport's bound method: calls `native` on
/// the method's `__self__` directly. A Rust panic becomes a `PanicException`, as it
/// would through PyO3's method trampoline.
pub fn run_native_in_context(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    method: &Bound<'_, PyAny>,
    native: crate::handles::NativeFn,
) -> PyResult<()> {
    // SAFETY: type checks and a borrowed read of a builtin method's `__self__`;
    // `method` outlives this call.
    let target = unsafe {
        if ffi::PyCFunction_Check(method.as_ptr()) == 0 {
            std::ptr::null_mut()
        } else {
            ffi::PyCFunction_GetSelf(method.as_ptr())
        }
    };
    if target.is_null() {
        return run_in_context(py, context, method, &PyTuple::empty(py));
    }
    // SAFETY: as above, a live borrowed reference.
    let target = unsafe { Bound::from_borrowed_ptr(py, target) };
    run_native(py, context, &target, native)
}

/// Runs a native transport's reader or writer body on `target` inside `context`
/// (what `context.run(target._read_ready)` does, without the method object).
pub fn run_native(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    native: crate::handles::NativeFn,
) -> PyResult<()> {
    with_context(py, context, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hang_on_forced_unwind(|| native(target))
        }))
        .unwrap_or_else(|payload| {
            Err(pyo3::panic::PanicException::new_err(
                crate::fastcall::panic_message(&*payload),
            ))
        })
    })
}

/// Runs pending Python signal handlers (`KeyboardInterrupt` from the default
/// SIGINT handler comes out of here). Cheap when no signal is pending.
pub fn check_signals(py: Python<'_>) -> PyResult<()> {
    // SAFETY: attached to the interpreter (token).
    if unsafe { ffi::PyErr_CheckSignals() } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// `threading.get_ident()` of the calling thread.
#[allow(clippy::useless_conversion)] // c_ulong is 32 bits on some targets
pub fn thread_ident() -> u64 {
    // SAFETY: no preconditions.
    u64::from(unsafe { ffi::PyThread_get_thread_ident() })
}

extern "C" {
    // Exported by every CPython 3.x; pyo3-ffi keeps its declaration private.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

/// A new, uninitialised `bytes` of `size`, or NULL (the exception cleared).
/// `size` fits a `Py_ssize_t` (checked by the caller).
fn new_uninit_bytes(size: usize) -> *mut ffi::PyObject {
    let size = ffi::Py_ssize_t::try_from(size).unwrap_or(ffi::Py_ssize_t::MAX);
    // SAFETY: a NULL source asks CPython for an uninitialised bytes of `size`.
    let obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
    if obj.is_null() {
        // SAFETY: an exception (MemoryError) is set.
        unsafe { ffi::PyErr_Clear() };
    }
    obj
}

/// Reads of this size or more check where their buffer starts.
const ALIGN_CHECK_MIN: usize = 16 * 1024;

thread_local! {
    /// A sliver of a `bytes` whose data started in a slow spot, kept allocated so the
    /// allocator hands out other addresses (see [`new_read_bytes`]).
    static PLUG: Cell<*mut ffi::PyObject> = const { Cell::new(std::ptr::null_mut()) };
}

fn data_start(obj: *mut ffi::PyObject) -> usize {
    // SAFETY: `obj` is a live bytes object.
    unsafe { ffi::PyBytes_AsString(obj) as usize }
}

/// A fresh `bytes` of `size` to read into, whose data does not start in a spot the
/// kernel copies into slowly (`oxloop_core::buffers`). When the allocator offers
/// one, take another while holding it, and keep a sliver of the slow one allocated
/// (shrunk in place) so that later reads land elsewhere too. NULL on failure.
fn new_read_bytes(size: usize) -> *mut ffi::PyObject {
    let obj = new_uninit_bytes(size);
    if obj.is_null() || size < ALIGN_CHECK_MIN || !is_slow_copy_start(data_start(obj)) {
        return obj;
    }
    let other = new_uninit_bytes(size);
    if other.is_null() {
        return obj;
    }
    if is_slow_copy_start(data_start(other)) {
        // SAFETY: we own the only reference.
        unsafe { ffi::Py_DECREF(other) };
        return obj;
    }
    let mut plug = obj;
    // SAFETY: shrinking our own unshared bytes; on failure CPython frees it and
    // sets `plug` to NULL.
    if unsafe { _PyBytes_Resize(&raw mut plug, 1) } < 0 {
        // SAFETY: an exception (MemoryError) is set.
        unsafe { ffi::PyErr_Clear() };
    }
    let old = PLUG.replace(plug);
    if !old.is_null() {
        // SAFETY: the previous plug, owned by PLUG alone; we hold the GIL.
        unsafe { ffi::Py_DECREF(old) };
    }
    other
}

/// How [`read_into_new_bytes`] reads: `recv` with flags (sockets) or `read`
/// (pipes, ttys: `recv` fails on anything but a socket).
#[derive(Clone, Copy)]
pub enum ReadCall {
    Recv(libc::c_int),
    Read,
}

/// Reads at most `max` bytes from `fd` straight into a new `bytes` (allocate,
/// read, shrink), as `socket.recv` and `os.read` do. `Ok(None)` is end of file
/// (or `max == 0`).
pub fn read_into_new_bytes<'py>(
    py: Python<'py>,
    fd: std::os::fd::BorrowedFd<'_>,
    max: usize,
    how: ReadCall,
) -> std::io::Result<Option<Bound<'py, PyAny>>> {
    // As socket.recv(n) and os.read(fd, n): a size over PY_SSIZE_T_MAX is an
    // OverflowError, a failed allocation a MemoryError (never an OSError).
    if ffi::Py_ssize_t::try_from(max).is_err() {
        return Err(crate::errors::AllocError::TooLarge.into_io());
    }
    let obj = new_read_bytes(max);
    if obj.is_null() {
        return Err(crate::errors::AllocError::NoMemory.into_io());
    }
    // SAFETY: `obj` is a fresh bytes of `max` bytes that nobody else references.
    let n = unsafe {
        let buf = ffi::PyBytes_AsString(obj).cast::<u8>();
        match how {
            ReadCall::Recv(flags) => oxloop_core::sys::recv_raw(fd, buf, max, flags),
            ReadCall::Read => oxloop_core::sys::read_raw(fd, buf, max),
        }
    };
    let n = match n {
        Ok(n) if n > 0 => n,
        other => {
            // SAFETY: we own the only reference.
            unsafe { ffi::Py_DECREF(obj) };
            return other.map(|_| None);
        }
    };
    // SAFETY: `obj` is a valid new reference, still ours alone.
    let obj = unsafe { Bound::from_owned_ptr(py, obj) };
    shrink_bytes(obj, n)
        .map(Some)
        .ok_or_else(|| crate::errors::AllocError::NoMemory.into_io())
}

type Vectorcall = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
type CVectorcall = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// `callable(*args)` (at most three arguments) through `PyObject_Vectorcall` (no
/// tuple), as [`call`]: for callables the crate keeps, such as the TLS layer's
/// bound C methods of `SSLObject` and `MemoryBIO` (an SNI callback or a message
/// callback may run Python code inside them).
pub fn vectorcall<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let mut argv = [std::ptr::null_mut(); 3];
    for (slot, arg) in argv.iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    let nargs = args.len().min(3);
    let guard = HangOnForcedUnwind;
    let plain: CVectorcall = ffi::PyObject_Vectorcall;
    // SAFETY: the same function with the same arguments; only the unwind ABI
    // differs (see `unwinding_calls`). `argv[..nargs]` holds live borrowed
    // references for the call.
    let out = unsafe {
        let vectorcall =
            std::hint::black_box(std::mem::transmute::<CVectorcall, Vectorcall>(plain));
        vectorcall(
            callable.as_ptr(),
            argv.as_ptr(),
            nargs,
            std::ptr::null_mut(),
        )
    };
    std::mem::forget(guard);
    // SAFETY: a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, out) }
}

/// A new, uninitialised `bytes` of `size` for the caller to fill (through
/// [`writable_view`]) and then [`shrink_bytes`]; `None` when out of memory.
pub fn new_bytes_to_fill(py: Python<'_>, size: usize) -> Option<Bound<'_, PyAny>> {
    let obj = new_uninit_bytes(size);
    // SAFETY: a new reference, or NULL.
    unsafe { Bound::from_owned_ptr_or_opt(py, obj) }
}

/// A writable `memoryview` over `bytes[offset..offset + len]` of a `bytes` made by
/// [`new_bytes_to_fill`] that nobody else has seen yet.
///
/// # Safety
/// `bytes` must be unshared (refcount 1, never handed to Python code that could keep
/// it: `bytes` are immutable once shared), `offset + len` within its size, and the
/// view must not outlive it (it holds no reference to it).
pub unsafe fn writable_view<'py>(
    bytes: &Bound<'py, PyAny>,
    offset: usize,
    len: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let py = bytes.py();
    // SAFETY: per the contract, the range lies in the object's storage.
    unsafe {
        let start = ffi::PyBytes_AsString(bytes.as_ptr()).add(offset);
        let len = ffi::Py_ssize_t::try_from(len).unwrap_or(ffi::Py_ssize_t::MAX);
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(start, len, ffi::PyBUF_WRITE),
        )
    }
}

/// Shrinks (or grows) a fresh `bytes` nobody else has seen (made by
/// [`new_bytes_to_fill`] or for [`read_into_new_bytes`]) to `size`; `None` when out
/// of memory (the object is freed then).
pub fn shrink_bytes(bytes: Bound<'_, PyAny>, size: usize) -> Option<Bound<'_, PyAny>> {
    let py = bytes.py();
    let mut obj = bytes.into_ptr();
    let size = ffi::Py_ssize_t::try_from(size).unwrap_or(ffi::Py_ssize_t::MAX);
    // SAFETY: resizing our own unshared bytes (the caller's contract with
    // `new_bytes_to_fill`); on failure CPython frees it and sets `obj` to NULL.
    if unsafe { _PyBytes_Resize(&raw mut obj, size) } < 0 {
        // SAFETY: an exception (MemoryError) is set.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    // SAFETY: `obj` is a valid new reference.
    Some(unsafe { Bound::from_owned_ptr(py, obj) })
}

/// A read-only `memoryview` over `data`, for a C function that copies what it is
/// given and keeps no reference (`MemoryBIO.write`).
///
/// # Safety
/// The view must not outlive `data`: it holds no reference to it. Drop it right
/// after the call it was made for, and never hand it to Python code.
pub unsafe fn borrowed_view<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let len = ffi::Py_ssize_t::try_from(data.len()).unwrap_or(ffi::Py_ssize_t::MAX);
    // SAFETY: `data` is valid for `len` bytes for the view's life (the caller's
    // contract); PyBUF_READ makes the view read-only.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(data.as_ptr().cast_mut().cast(), len, ffi::PyBUF_READ),
        )
    }
}

/// Copies `src` into `bytes[offset..]`, a `bytes` made by [`new_bytes_to_fill`].
///
/// # Safety
/// As [`writable_view`]: `bytes` unshared and `offset + src.len()` within its size.
pub unsafe fn fill_bytes(bytes: &Bound<'_, PyAny>, offset: usize, src: &[u8]) {
    // SAFETY: per the contract, the destination range lies in the object's storage
    // and cannot overlap `src` (another object's).
    unsafe {
        let dst = ffi::PyBytes_AsString(bytes.as_ptr())
            .add(offset)
            .cast::<u8>();
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
    }
}

//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `call_at` return.
//!
//! Mirrors `Lib/asyncio/events.py::Handle` / `TimerHandle`: `cancel()`,
//! `cancelled()`, `get_context()`, `when()`, the same reprs, and the private
//! attributes the stdlib and its tests read (`_callback`, `_args`, `_cancelled`,
//! `_loop`, `_context`, `_source_traceback`, `_scheduled`, `_when`).
//!
//! Handles are frozen pyclasses: the flags are atomics and the clearable fields
//! are [`GilCell`]s, so the loop reads them without a borrow flag.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use pyo3::basic::CompareOp;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::LoopCore;
use crate::gil::GilCell;
use crate::py;

/// A native transport's own reader or writer method, called on the transport
/// without Python's call machinery (see [`Handle::set_native`]).
pub type NativeFn = for<'py> fn(&Bound<'py, PyAny>) -> PyResult<()>;

/// What a handle runs, cloned out of it for one call (the callback may cancel its
/// own handle, which drops the handle's references). Bound, not `Py`: dropping a
/// `Bound` skips PyO3's thread-local GIL check.
pub struct Callback<'py> {
    pub callback: Bound<'py, PyAny>,
    pub args: Bound<'py, PyTuple>,
}

/// A handle field written only when the handle is built, recycled or dropped,
/// that is while nothing else holds the handle; read freely with the GIL.
struct Reusable<T>(UnsafeCell<T>);

// SAFETY: read with the GIL held; written only under the conditions of `replace`.
unsafe impl<T: Send> Sync for Reusable<T> {}

impl<T> Reusable<T> {
    const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    fn get(&self) -> &T {
        // SAFETY: writes happen only while no one else holds the handle (see
        // `replace`), so no reference handed out here is alive then.
        unsafe { &*self.0.get() }
    }

    /// # Safety
    /// GIL held, and nothing but the caller holds the handle (no reference from
    /// `get` can be alive).
    unsafe fn replace(&self, value: T) -> T {
        // SAFETY: exclusive by the caller's contract.
        unsafe { std::mem::replace(&mut *self.0.get(), value) }
    }
}

/// Handles the loop ran and nothing else could reach (refcount 1, no weak
/// reference, exact type), emptied, for `call_soon` to fill again: an allocation
/// and a deallocation through PyO3 cost more than the rest of `call_soon`. They
/// hold no reference (the `None` object aside), are untracked by the collector, and
/// live until the process ends.
struct FreeList(UnsafeCell<Vec<Py<Handle>>>);

// SAFETY: used with the GIL held only, and never across a call into Python.
unsafe impl Sync for FreeList {}

impl FreeList {
    fn pop(&self, _py: Python<'_>) -> Option<Py<Handle>> {
        // SAFETY: GIL held (token); a Vec operation runs no Python code.
        unsafe { (*self.0.get()).pop() }
    }

    /// Keeps `handle` (the caller checked `is_full` first).
    fn push(&self, _py: Python<'_>, handle: Py<Handle>) {
        // SAFETY: GIL held (token); a Vec operation runs no Python code.
        unsafe { (*self.0.get()).push(handle) }
    }

    fn is_full(&self, _py: Python<'_>) -> bool {
        // SAFETY: GIL held (token); a plain read.
        unsafe { (*self.0.get()).len() >= FREE_HANDLES_MAX }
    }
}

static FREE_HANDLES: FreeList = FreeList(UnsafeCell::new(Vec::new()));

/// At most this many emptied handles are kept (about 100 bytes each).
const FREE_HANDLES_MAX: usize = 1024;

#[pyclass(frozen, subclass, weakref, module = "oxloop._oxloop", name = "Handle")]
pub struct Handle {
    callback: GilCell<Option<Py<PyAny>>>,
    args: GilCell<Option<Py<PyTuple>>>,
    /// `None` (the object) while the handle waits in the free list.
    context: Reusable<Py<PyAny>>,
    /// `None` only while the handle waits in the free list.
    event_loop: Reusable<Option<Py<LoopCore>>>,
    cancelled: AtomicBool,
    /// In the timer heap (asyncio's `TimerHandle._scheduled`).
    scheduled: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
    /// The repr kept at `cancel()` time in debug mode.
    cached_repr: GilCell<Option<Py<PyAny>>>,
    /// Set when `callback` is a native transport's bound method: run this on its
    /// `__self__` instead of calling the method object.
    native: OnceLock<NativeFn>,
}

#[pyclass(frozen, extends = Handle, module = "oxloop._oxloop", name = "TimerHandle")]
pub struct TimerHandle {
    /// The deadline as a float (NaN kept: the heap orders it, not this).
    when: f64,
    /// The deadline object as given when it is not an exact float (an int, a bool,
    /// a `Fraction`, ...): asyncio stores and returns it as is, and compares and
    /// hashes handles by it.
    when_obj: Option<Py<PyAny>>,
}

impl Handle {
    pub fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        event_loop: Py<LoopCore>,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            callback: GilCell::new(Some(callback)),
            args: GilCell::new(Some(args)),
            context: Reusable::new(context),
            event_loop: Reusable::new(Some(event_loop)),
            cancelled: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            source_traceback,
            cached_repr: GilCell::new(None),
            native: OnceLock::new(),
        }
    }

    /// The handle as a Python object: an emptied one from the free list when there
    /// is one, filled with `value`'s fields, else a new object.
    #[inline(always)]
    pub fn into_object(py: Python<'_>, value: Self) -> PyResult<Bound<'_, Self>> {
        if value.source_traceback.is_none() {
            if let Some(free) = FREE_HANDLES.pop(py) {
                let free = free.into_bound(py);
                let this = free.get();
                // SAFETY: the free list's handle is reachable from nothing else
                // (checked when it was put there), and `value` is owned here.
                unsafe {
                    drop(this.context.replace(value.context.replace(py.None())));
                    drop(this.event_loop.replace(value.event_loop.replace(None)));
                }
                drop(this.callback.replace(py, value.callback.replace(py, None)));
                drop(this.args.replace(py, value.args.replace(py, None)));
                // The emptied `value` drops `None`s.
                return Ok(free);
            }
        }
        Bound::new(py, value)
    }

    /// The loop lets go of a handle it took from the ready queue (run or
    /// cancelled): kept in the free list when nothing else can reach it, else
    /// released as [`Handle::leave_queue`] says.
    #[inline(always)]
    pub fn release_ran(slf: Bound<'_, Self>) {
        let py = slf.py();
        let ptr = slf.as_ptr();
        // SAFETY: a live object; reads of its refcount, type, GC flag and weak
        // reference list (at the offset its type declares).
        let reusable = unsafe {
            pyo3::ffi::Py_REFCNT(ptr) == 1
                && std::ptr::eq(
                    pyo3::ffi::Py_TYPE(ptr),
                    <Self as pyo3::PyTypeInfo>::type_object_raw(py),
                )
                && pyo3::ffi::PyObject_GC_IsTracked(ptr) == 0
                && no_weakrefs(ptr)
        };
        let this = slf.get();
        if !reusable
            || this.source_traceback.is_some()
            || this.native.get().is_some()
            || FREE_HANDLES.is_full(py)
        {
            Self::leave_queue(&slf);
            return;
        }
        // SAFETY: nothing but `slf` holds the handle (refcount 1, no weak
        // reference, untracked so the collector cannot hand it out).
        let held = unsafe { this.take_refs(py) };
        this.cancelled.store(false, Ordering::Relaxed);
        this.scheduled.store(false, Ordering::Relaxed);
        // Nothing ran since `is_full` said no (no Python code, no drop).
        FREE_HANDLES.push(py, slf.unbind());
        // Released last: this may run Python code (`__del__`), which may take the
        // handle back out of the list.
        held.release(py);
    }

    /// Takes every reference the handle holds but its traceback out of it.
    ///
    /// # Safety
    /// GIL held, and nothing but the caller holds the handle (see `Reusable`).
    unsafe fn take_refs(&self, py: Python<'_>) -> HeldRefs {
        // SAFETY: the caller's contract.
        let (context, event_loop) = unsafe {
            (
                self.context.replace(py.None()),
                self.event_loop.replace(None),
            )
        };
        HeldRefs {
            callback: self.callback.replace(py, None),
            args: self.args.replace(py, None),
            context,
            event_loop,
            repr: self.cached_repr.replace(py, None),
        }
    }

    /// Declares that `callback` is a bound method of a native transport whose Rust
    /// body is `native`; running the handle then calls `native` directly, in the
    /// handle's context, as the method call would. Set once, before it first runs.
    pub fn set_native(&self, native: NativeFn) {
        // Already set means set to the same function: nothing to do.
        let _ = self.native.set(native);
    }

    /// Takes a handle the loop just queued out of the garbage collector's lists.
    ///
    /// The collector walks every tracked object of a generation on each
    /// collection, and `call_soon` makes a handle per call: a thousand queued
    /// handles were walked again and again (a seventh of `call_soon`'s cost).
    /// While queued, the loop owns the handle: the loop's `__traverse__` visits
    /// what the handle holds when the queue's reference is its only one, and
    /// [`Handle::leave_queue`] tracks it again if anything else still holds it
    /// once the loop lets it go, so that a cycle through it stays collectable.
    pub fn enter_queue(slf: &Bound<'_, Self>) {
        // SAFETY: a live GC object (the class has `__traverse__`), GIL held;
        // untracking a tracked object only removes it from the collector's list.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(slf.as_ptr().cast()) };
    }

    /// The loop lets go of a queued handle (run, purged or dropped): tracked again
    /// when something besides the caller's reference still holds it.
    pub fn leave_queue(slf: &Bound<'_, Self>) {
        let ptr = slf.as_ptr();
        // SAFETY: a live GC object, GIL held; `PyObject_GC_Track` is only called
        // on an untracked object, as it requires.
        unsafe {
            if pyo3::ffi::Py_REFCNT(ptr) > 1 && pyo3::ffi::PyObject_GC_IsTracked(ptr) == 0 {
                pyo3::ffi::PyObject_GC_Track(ptr.cast());
            }
        }
    }

    /// For the loop's `__traverse__`: a queued handle's references, visited as the
    /// loop's own while the queue holds the only reference to it (untracked, it is
    /// not visited by the collector itself); nothing otherwise, which keeps what it
    /// holds alive, as references from outside the collected set do.
    pub fn traverse_queued(slf: &Py<Self>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let ptr = slf.as_ptr();
        // SAFETY: a live object the queue holds; reading its refcount and GC flag.
        let owned =
            unsafe { pyo3::ffi::Py_REFCNT(ptr) == 1 && pyo3::ffi::PyObject_GC_IsTracked(ptr) == 0 };
        if owned {
            slf.get().traverse_fields(visit)
        } else {
            visit.call(slf)
        }
    }

    fn traverse_fields(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: called from a `__traverse__` only (see GilCell::get_for_gc).
        unsafe {
            visit.call(self.callback.get_for_gc())?;
            visit.call(self.args.get_for_gc())?;
            visit.call(self.cached_repr.get_for_gc())?;
        }
        visit.call(self.context.get())?;
        visit.call(self.event_loop.get())?;
        visit.call(&self.source_traceback)?;
        Ok(())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn is_scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    pub fn set_scheduled(&self, scheduled: bool) {
        self.scheduled.store(scheduled, Ordering::Relaxed);
    }

    pub fn context<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.context.get().bind(py)
    }

    pub fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.source_traceback.as_ref()
    }

    /// The callback and its arguments, unless cancelled.
    pub fn callback<'py>(&self, py: Python<'py>) -> Option<Callback<'py>> {
        if self.is_cancelled() {
            return None;
        }
        Some(Callback {
            callback: self.callback.clone_ref(py)?.into_bound(py),
            args: self.args.clone_ref(py)?.into_bound(py),
        })
    }

    /// `Handle.cancel()`.
    pub fn cancel_impl(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let Some(event_loop) = this.event_loop.get() else {
            return Ok(()); // in the free list: unreachable from Python
        };
        let event_loop = event_loop.get();
        if this.scheduled.load(Ordering::Relaxed) {
            event_loop.timer_handle_cancelled();
        }
        if event_loop.debug() {
            // Keep the repr that still shows callback and arguments (flagged
            // "cancelled"), for the "Executing <Handle...> took 2.5 seconds" warning.
            let text = slf.repr()?;
            drop(this.cached_repr.replace(py, Some(text.into_any().unbind())));
        }
        // Drop outside the cells: this may run arbitrary `__del__` code.
        let callback = this.callback.replace(py, None);
        let args = this.args.replace(py, None);
        drop((callback, args));
        Ok(())
    }

    /// asyncio's `Handle._repr_info()`.
    fn repr_info<'py>(slf: &Bound<'py, Self>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let mut info = vec![slf.get_type().name()?.into_any()];
        if this.is_cancelled() {
            info.push(PyString::new(py, "cancelled").into_any());
        }
        if let Some(callback) = this.callback.clone_ref(py) {
            let args = this
                .args
                .clone_ref(py)
                .map_or_else(|| py.None(), Py::into_any);
            let debug = this
                .event_loop
                .get()
                .as_ref()
                .is_some_and(|l| l.get().debug());
            info.push(py::callback_source(py, callback, args, debug)?);
        }
        if let Some(tb) = &this.source_traceback {
            let tb = tb.bind(py);
            if tb.is_truthy()? {
                let frame = tb.get_item(-1)?;
                let text = format!("created at {}:{}", frame.get_item(0)?, frame.get_item(1)?);
                info.push(PyString::new(py, &text).into_any());
            }
        }
        Ok(info)
    }

    fn join_repr(info: &[Bound<'_, PyAny>]) -> PyResult<String> {
        let parts = info
            .iter()
            .map(|p| p.str().map(|s| s.to_string()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(format!("<{}>", parts.join(" ")))
    }

    /// Runs the callback like `Handle._run()`; the error is returned, not reported.
    #[inline(always)]
    pub fn run_callback(&self, py: Python<'_>) -> PyResult<()> {
        let Some(cb) = self.callback(py) else {
            return Ok(());
        };
        let context = self.context.get().bind(py);
        // SAFETY: a type check of a live object.
        if unsafe { pyo3::ffi::PyContext_CheckExact(context.as_ptr()) } == 0 {
            return Self::run_in_other_context(context, cb);
        }
        if let Some(native) = self.native.get() {
            return crate::ffi::run_native_in_context(py, context, &cb.callback, *native);
        }
        crate::ffi::run_in_context(py, context, &cb.callback, &cb.args)
    }

    /// asyncio calls `self._context.run(callback, *args)` on whatever it was
    /// given: a duck-typed context runs it, anything else raises its own error.
    #[cold]
    #[inline(never)]
    fn run_in_other_context(context: &Bound<'_, PyAny>, cb: Callback<'_>) -> PyResult<()> {
        let py = context.py();
        let mut call_args = vec![cb.callback];
        call_args.extend(cb.args.iter());
        context
            .call_method1(pyo3::intern!(py, "run"), PyTuple::new(py, call_args)?)
            .map(drop)
    }
}

/// Released as `Bound`s: a `Py` drop asks PyO3's thread-local GIL count first, a
/// cost paid for every handle the loop runs.
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a `Handle` is dropped with the GIL held: by its Python object's
        // deallocation, or by the loop code that built it when it could not be
        // wrapped in one (PyO3 never drops a pyclass value without the GIL; a `Py`
        // released elsewhere is deferred until the GIL is held).
        let py = unsafe { Python::assume_attached() };
        // SAFETY: `&mut self`: no other reference to the handle exists, and the
        // fields are not used after this.
        let held = unsafe { self.take_refs(py) };
        let tb = self.source_traceback.take();
        held.release(py);
        if let Some(tb) = tb {
            tb.drop_ref(py);
        }
    }
}

/// What a handle held, taken out of it to be released outside any borrow.
struct HeldRefs {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    context: Py<PyAny>,
    event_loop: Option<Py<LoopCore>>,
    repr: Option<Py<PyAny>>,
}

impl HeldRefs {
    /// Releases them as `Bound`s (a `Py` drop asks PyO3's thread-local GIL count
    /// first), in the order of the handle's fields; may run Python code.
    fn release(self, py: Python<'_>) {
        drop((
            self.callback.map(|o| o.into_bound(py)),
            self.args.map(|o| o.into_bound(py)),
            self.context.into_bound(py),
            self.event_loop.map(|o| o.into_bound(py)),
            self.repr.map(|o| o.into_bound(py)),
        ));
    }
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::cancel_impl(slf)
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.get().clone_ref(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if let Some(text) = slf.get().cached_repr.clone_ref(py) {
            return Ok(text);
        }
        let info = Self::repr_info(slf)?;
        Ok(PyString::new(py, &Self::join_repr(&info)?)
            .into_any()
            .unbind())
    }

    /// Runs the callback and reports an exception to the loop's handler, as
    /// asyncio's `Handle._run()` does.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let Some(event_loop) = slf.get().event_loop.get() else {
            return Ok(()); // in the free list: unreachable from Python
        };
        let event_loop = event_loop.bind(slf.py()).clone();
        LoopCore::run_handle(&event_loop, slf)
    }

    /// `asyncio.Handle`, so that `isinstance(handle, asyncio.Handle)` holds as it
    /// does for the stdlib's handles (CPython's `isinstance` consults `__class__`
    /// when the type itself does not match); `type(handle)` stays this class.
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::asyncio_handle(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.args.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop
            .get()
            .as_ref()
            .map_or_else(|| py.None(), |l| l.clone_ref(py).into_any())
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.get().clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.cached_repr.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse_fields(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        let callback = self.callback.replace(py, None);
        let args = self.args.replace(py, None);
        drop((callback, args));
    }
}

impl TimerHandle {
    pub fn new(when: f64, when_obj: Option<Py<PyAny>>) -> Self {
        Self { when, when_obj }
    }

    /// The deadline when it is a plain float (compared in Rust).
    fn plain_float(&self) -> Option<f64> {
        self.when_obj.is_none().then_some(self.when)
    }

    /// The deadline as asyncio's `_when` holds it.
    fn when_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.when_obj {
            Some(obj) => Ok(obj.bind(py).clone()),
            None => Ok(self.when.into_pyobject(py)?.into_any()),
        }
    }
}

#[pymethods]
impl TimerHandle {
    fn when<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.when_object(py)
    }

    #[getter]
    fn _when<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.when_object(py)
    }

    /// `asyncio.TimerHandle` (see `Handle.__class__`).
    #[getter(__class__)]
    fn class_attr<'py>(&self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
        py::asyncio_timer_handle(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let base = slf.as_super();
        if let Some(text) = base.get().cached_repr.clone_ref(py) {
            return Ok(text);
        }
        let mut info = Handle::repr_info(base)?;
        // CPython: TimerHandle._repr_info puts `when=` right after the class name
        // (and after "cancelled").
        let pos = if base.get().is_cancelled() { 2 } else { 1 };
        let when = PyString::new(py, &format!("when={}", slf.get().when_object(py)?.repr()?));
        info.insert(pos, when.into_any());
        Ok(PyString::new(py, &Handle::join_repr(&info)?)
            .into_any()
            .unbind())
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        // CPython: TimerHandle.__hash__ is hash(self._when).
        self.when_object(py)?.hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        // CPython: __le__/__ge__ are `<`/`>` or __eq__, and __eq__ compares the
        // deadline, callback, arguments and cancelled flag.
        let result = match op {
            CompareOp::Lt => Self::when_cmp(slf, other, CompareOp::Lt)?,
            CompareOp::Gt => Self::when_cmp(slf, other, CompareOp::Gt)?,
            CompareOp::Le => Self::when_cmp(slf, other, CompareOp::Lt)? || Self::same(slf, other)?,
            CompareOp::Ge => Self::when_cmp(slf, other, CompareOp::Gt)? || Self::same(slf, other)?,
            CompareOp::Eq => Self::same(slf, other)?,
            CompareOp::Ne => !Self::same(slf, other)?,
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

impl TimerHandle {
    /// `self._when <op> other._when`: floats compare in Rust (NaN compares false
    /// both ways, as in Python); deadline objects as Python compares them.
    fn when_cmp(a: &Bound<'_, Self>, b: &Bound<'_, Self>, op: CompareOp) -> PyResult<bool> {
        let py = a.py();
        let (x, y) = (a.get(), b.get());
        if let (Some(p), Some(q)) = (x.plain_float(), y.plain_float()) {
            return Ok(match op {
                CompareOp::Lt => p < q,
                CompareOp::Gt => p > q,
                _ => p == q,
            });
        }
        x.when_object(py)?
            .rich_compare(y.when_object(py)?, op)?
            .is_truthy()
    }

    fn same(a: &Bound<'_, Self>, b: &Bound<'_, Self>) -> PyResult<bool> {
        let py = a.py();
        let (ha, hb) = (a.as_super().get(), b.as_super().get());
        if !Self::when_cmp(a, b, CompareOp::Eq)? || ha.is_cancelled() != hb.is_cancelled() {
            return Ok(false);
        }
        let eq = |x: Option<Py<PyAny>>, y: Option<Py<PyAny>>| -> PyResult<bool> {
            x.unwrap_or_else(|| py.None())
                .bind(py)
                .eq(y.unwrap_or_else(|| py.None()))
        };
        Ok(eq(ha.callback.clone_ref(py), hb.callback.clone_ref(py))?
            && eq(
                ha.args.clone_ref(py).map(Py::into_any),
                hb.args.clone_ref(py).map(Py::into_any),
            )?)
    }
}

/// No weak reference to `ptr` exists.
///
/// # Safety
/// `ptr` is a live object.
unsafe fn no_weakrefs(ptr: *mut pyo3::ffi::PyObject) -> bool {
    // SAFETY: the type's weak reference list offset points into the object.
    unsafe {
        let offset = (*pyo3::ffi::Py_TYPE(ptr)).tp_weaklistoffset;
        offset <= 0
            || (*ptr
                .cast::<u8>()
                .offset(offset)
                .cast::<*mut pyo3::ffi::PyObject>())
            .is_null()
    }
}

/// Builds the `_source_traceback` list of a handle created in debug mode: the
/// stack of the Python code that called into the loop.
pub fn capture_source_traceback(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // No Python frame exists for the Rust method itself, so frame 0 is the caller.
    let frame = py::getframe(py)?.call1((0,))?;
    let stack = py::extract_stack(py)?.call1((frame,))?;
    Ok(stack
        .cast_into::<PyList>()
        .map_or_else(|e| e.into_inner().unbind(), |l| l.into_any().unbind()))
}

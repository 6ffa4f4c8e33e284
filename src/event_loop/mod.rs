//! `LoopCore`: the hot half of `oxloop.Loop`.
//!
//! `python/oxloop/_loop.py` defines `class Loop(LoopCore, asyncio.BaseEventLoop)`:
//! everything called per callback or per event lives here (the ready queue, the
//! timer heap, the poller, `call_soon`/`call_later`/`call_at`, fd callbacks, the run
//! iteration), and the cold orchestration (`run_until_complete`, executors,
//! async-generator hooks, the exception handler, tasks and futures) is the stdlib's
//! own `BaseEventLoop` code, which reads the state through the `_closed`,
//! `_stopping`, `_debug` and `_thread_id` properties defined here.
//!
//! Mirrors `Lib/asyncio/base_events.py::BaseEventLoop` (scheduling, `_run_once`)
//! and `selector_events.py::BaseSelectorEventLoop` (`add_reader` & co).
//!
//! Invariant: `state` is never borrowed across a call into Python (see `gil.rs`).

mod accept;
pub(crate) mod metrics;
pub(crate) mod readers;
mod run;
pub(crate) mod sock;
mod tasks;
pub(crate) mod transport_map;

use std::collections::VecDeque;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use oxloop_core::clock;
use oxloop_core::poller::{Events, Interest, Poller};
use oxloop_core::registry::Registry;
use oxloop_core::sys;
use oxloop_core::timers::{TimerEntry, TimerHeap};
use oxloop_core::waker::Waker;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::gil::GilRefCell;
use crate::handles::{capture_source_traceback, Handle, TimerHandle};
use crate::py;
use crate::sockaddr::SockAddr;
use crate::transports::base::Transport;

/// The poller token of the waker's eventfd (never a registry token: those carry a
/// generation >= 1 in the high half and an fd < 2^31 in the low half).
const WAKER_TOKEN: u64 = u64::MAX;
/// Events read per poll.
const EVENTS_CAPACITY: usize = 1024;

/// A timer heap entry.
pub(crate) struct Timer(Py<Handle>);

impl TimerEntry for Timer {
    fn is_cancelled(&self) -> bool {
        self.0.get().is_cancelled()
    }
    fn unscheduled(&self) {
        self.0.get().set_scheduled(false);
    }
}

/// What watches one direction of an fd.
pub(crate) enum Watcher {
    /// `add_reader`/`add_writer` and the `sock_*` waiters: asyncio's `Handle`.
    Handle(Py<Handle>),
    /// A native transport's own reader or writer: its readiness is queued as a
    /// [`Ready::Transport`] entry, with no Python object made per event or per watch.
    Transport(Py<Transport>),
}

impl Watcher {
    /// What asyncio's `handle.cancel()` does to a replaced or removed watcher: it
    /// will not run, even if its event is already queued.
    pub(crate) fn cancel(self, py: Python<'_>, direction: Direction) -> PyResult<()> {
        match self {
            Self::Handle(handle) => Handle::cancel_impl(handle.bind(py)),
            Self::Transport(transport) => {
                transport.get().end_watch(direction);
                Ok(())
            }
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Self::Handle(handle) => Self::Handle(handle.clone_ref(py)),
            Self::Transport(transport) => Self::Transport(transport.clone_ref(py)),
        }
    }

    /// The handle asyncio would hold for this watcher (introspection only).
    fn as_handle<'py>(
        &self,
        lp: &Bound<'py, LoopCore>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = lp.py();
        match self {
            Self::Handle(handle) => Ok(handle.bind(py).clone()),
            Self::Transport(transport) => {
                Transport::ready_handle(transport.bind(py), lp, direction)
            }
        }
    }
}

/// An entry of the ready queue.
pub(crate) enum Ready {
    /// A callback (`call_soon`, a due timer, a fired `add_reader` watch).
    Handle(Py<Handle>),
    /// A native transport's work, run in Rust (transports/base.rs).
    Transport(Py<Transport>, TransportEvent),
}

impl Ready {
    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Self::Handle(h) => Self::Handle(h.clone_ref(py)),
            Self::Transport(t, TransportEvent::Ready(direction, generation)) => Self::Transport(
                t.clone_ref(py),
                TransportEvent::Ready(*direction, *generation),
            ),
            Self::Transport(t, TransportEvent::StartReading(context)) => Self::Transport(
                t.clone_ref(py),
                TransportEvent::StartReading(context.clone_ref(py)),
            ),
            Self::Transport(t, TransportEvent::ConnectionLost(exc, context)) => Self::Transport(
                t.clone_ref(py),
                TransportEvent::ConnectionLost(exc.clone_ref(py), context.clone_ref(py)),
            ),
        }
    }
}

/// What a [`Ready::Transport`] entry runs.
pub(crate) enum TransportEvent {
    /// Its fd is ready in this direction; skipped when the watch it came from was
    /// removed or replaced since (the generation then differs).
    Ready(Direction, u32),
    /// asyncio's `call_soon(self._add_reader, fd, self._read_ready)` of a new
    /// transport, with the context of that call.
    StartReading(Py<PyAny>),
    /// asyncio's `call_soon(self._call_connection_lost, exc)`: the exception (or
    /// `None`) and the context of that call.
    ConnectionLost(Py<PyAny>, Py<PyAny>),
}

/// The callbacks watching one fd. Holds Python objects: a value taken out of the
/// registry is dropped after the state borrow ends.
#[derive(Default)]
pub(crate) struct FdWatch {
    reader: Option<Watcher>,
    writer: Option<Watcher>,
    /// The file object registered, when it was not an int (asyncio's
    /// `SelectorKey.fileobj`): found by identity once its `fileno()` is gone.
    fileobj: Option<Py<PyAny>>,
}

impl FdWatch {
    fn interest(&self) -> Interest {
        Interest {
            read: self.reader.is_some(),
            write: self.writer.is_some(),
        }
    }
}

pub(crate) struct State {
    ready: VecDeque<Ready>,
    timers: TimerHeap<Timer>,
    fds: Registry<FdWatch>,
    /// Lent to the poll (taken out while the GIL is released).
    events: Events,
}

/// What `_accept_many` returns: the accepted `(fd, address)` pairs and the
/// `OSError` that ended the batch, if any.
type AcceptBatch<'py> = (Vec<(RawFd, Bound<'py, PyAny>)>, Option<Bound<'py, PyAny>>);

#[pyclass(frozen, subclass, module = "oxloop._oxloop", name = "LoopCore")]
pub struct LoopCore {
    state: GilRefCell<State>,
    poller: Poller,
    waker: Waker,
    stopping: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop; 0 when not running.
    thread_id: AtomicU64,
    /// asyncio's `_timer_cancelled_count`. Outside `state` because `cancel()` may be
    /// called while the state is borrowed (from a `__del__` run by a drop).
    timer_cancelled_count: AtomicUsize,
    clock_resolution: f64,
    /// `loop.time` was assigned on the instance (`mock.patch.object(loop, 'time')`).
    time_on_instance: AtomicBool,
    /// `type(loop).time` is not `LoopCore.time` (a subclass or a patched class).
    time_on_type: AtomicBool,
    /// `oxloop.metrics(loop)`'s counters and lag window.
    metrics: GilRefCell<metrics::Metrics>,
    /// Each callback is timed for the slow-callback buckets (off until asked for).
    time_callbacks: AtomicBool,
}

/// `(fileobj, fd, events, reader, writer)` as a `selectors.SelectorKey` holds them.
type FdKey<'py> = (
    Py<PyAny>,
    RawFd,
    u8,
    Option<Bound<'py, Handle>>,
    Option<Bound<'py, Handle>>,
);

/// Which callback of an fd.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    /// 0 for reading, 1 for writing (per-direction arrays).
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Read => 0,
            Self::Write => 1,
        }
    }
}

impl LoopCore {
    pub fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    pub fn timer_handle_cancelled(&self) {
        self.timer_cancelled_count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The callbacks waiting in the ready queue. A transport that reads several
    /// datagrams in one event stops when a callback it ran scheduled another one,
    /// which asyncio would run before the next datagram.
    pub(crate) fn ready_len(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).ready.len()
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// asyncio's `_check_thread` (debug mode only).
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != crate::ffi::thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Builds a handle the way `call_soon`/`call_at` do, with their checks.
    ///
    /// DIVERGENCE: a non-callable is refused with asyncio's debug-mode `TypeError`
    /// even when debug mode is off (asyncio then accepts it and fails later, inside
    /// the loop). Coroutine *functions* are only refused in debug mode, as asyncio does.
    // Inlined: call_soon's chain of small calls cost more in prologues than work.
    #[inline(always)]
    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: &'static str,
        thread_check: bool,
    ) -> PyResult<Handle> {
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug();
        if debug {
            if thread_check {
                this.check_thread()?;
            }
            slf.call_method1(py::names::CHECK_CALLBACK, (callback, method))?;
        } else if !callback.is_callable() {
            slf.call_method1(py::names::CHECK_CALLBACK, (callback, method))?;
        }
        Self::handle_for(slf, callback, args, context)
    }

    /// A handle with no checks (asyncio's `events.Handle(callback, args, loop, context)`).
    #[inline(always)]
    fn handle_for(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        let py = slf.py();
        let context = match context {
            Some(ctx) if !ctx.is_none() => ctx.clone().unbind(),
            _ => crate::ffi::copy_context(py)?.unbind(),
        };
        let source_traceback = if slf.get().debug() {
            Some(capture_source_traceback(py)?)
        } else {
            None
        };
        Ok(Handle::new(
            callback.clone().unbind(),
            args.unbind(),
            context,
            slf.clone().unbind(),
            source_traceback,
        ))
    }

    /// `object.__setattr__` (`value` set) or `object.__delattr__` (null), then the
    /// `time_on_instance` flag: set while an instance attribute `time` exists.
    fn generic_setattr(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        value: *mut pyo3::ffi::PyObject,
    ) -> PyResult<()> {
        let py = slf.py();
        // SAFETY: live objects (or null for deletion) for the call; the generic
        // implementation type-checks `name` itself.
        if unsafe { pyo3::ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value) } < 0 {
            return Err(PyErr::fetch(py));
        }
        if name.cast::<PyString>().is_ok_and(|n| n == "time") {
            slf.get()
                .time_on_instance
                .store(!value.is_null(), Ordering::Relaxed);
        }
        Ok(())
    }

    #[inline(always)]
    fn push_ready(&self, py: Python<'_>, handle: Py<Handle>) {
        self.state
            .borrow_mut(py)
            .ready
            .push_back(Ready::Handle(handle));
    }

    /// A native transport bound to this loop (`opened`) or let go of it, for
    /// `metrics()`'s open transports.
    pub(crate) fn count_transport(&self, py: Python<'_>, opened: bool) {
        let mut m = self.metrics.borrow_mut(py);
        m.transports_open = if opened {
            m.transports_open + 1
        } else {
            m.transports_open.saturating_sub(1)
        };
    }

    /// Bytes a native transport read from or wrote to its fd, for `metrics()`.
    pub(crate) fn count_bytes(&self, py: Python<'_>, read: usize, written: usize) {
        let mut m = self.metrics.borrow_mut(py);
        m.bytes_read += read as u64;
        m.bytes_written += written as u64;
    }

    /// Queues a native transport's work (as `call_soon` would queue its callback).
    pub(crate) fn push_transport_event(
        &self,
        py: Python<'_>,
        transport: Py<Transport>,
        event: TransportEvent,
    ) -> PyResult<()> {
        self.check_closed()?;
        self.state
            .borrow_mut(py)
            .ready
            .push_back(Ready::Transport(transport, event));
        Ok(())
    }

    /// `call_soon` and `call_soon_threadsafe`: a checked handle, queued (and the
    /// loop woken for `call_soon_threadsafe`, which skips the debug thread check).
    #[inline(always)]
    pub(crate) fn queue_new_handle<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
        method: &'static str,
        threadsafe: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let handle = Handle::into_object(
            py,
            Self::new_handle(slf, callback, args, context, method, !threadsafe)?,
        )?;
        Handle::enter_queue(&handle);
        let this = slf.get();
        this.push_ready(py, handle.clone().unbind());
        if threadsafe {
            this.waker.wake_if_sleeping();
        }
        Ok(handle)
    }

    fn schedule_timer<'py>(
        slf: &Bound<'py, Self>,
        when: When<'py>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
        method: &'static str,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let py = slf.py();
        let handle = Self::new_handle(slf, callback, args, context.as_ref(), method, true)?;
        // After asyncio's checks (closed loop, callback), as its heappush would fail.
        let (when, when_obj) = match when {
            When::Float(when) => (when, None),
            When::Object(obj) => deadline(&obj)?,
        };
        let timer = Bound::new(
            py,
            PyClassInitializer::from(handle).add_subclass(TimerHandle::new(when, when_obj)),
        )?;
        let base = timer.as_super();
        base.get().set_scheduled(true);
        Handle::enter_queue(base);
        slf.get()
            .state
            .borrow_mut(py)
            .timers
            .push(when, Timer(base.clone().unbind()));
        Ok(timer)
    }
}

/// Lets go of handles taken out of the ready queue and the timer heap (see
/// [`Handle::leave_queue`]); called with no state borrowed (dropping a handle can
/// run Python code).
fn release_queued(
    py: Python<'_>,
    ready: impl IntoIterator<Item = Ready>,
    timers: impl IntoIterator<Item = Timer>,
) {
    let handles = ready.into_iter().filter_map(|entry| match entry {
        Ready::Handle(handle) => Some(handle),
        Ready::Transport(..) => None,
    });
    for handle in handles.chain(timers.into_iter().map(|t| t.0)) {
        Handle::leave_queue(&handle.into_bound(py));
    }
}

/// A deadline for `schedule_timer`: a float computed in Rust, or a Python object
/// (what `call_at` was given, or what `self.time() + delay` returned).
enum When<'py> {
    Float(f64),
    Object(Bound<'py, PyAny>),
}

/// A deadline object as a float, and the object itself when `when()` must return
/// it (anything but an exact float). asyncio stores any object and compares it
/// with floats in `heapq` and `_run_once`; here:
/// * floats and ints (bools included) are taken as they are, an int too large for
///   a float as `±inf` (Python compares them exactly; they are never due or always);
/// * other `numbers.Real` (`Fraction`, numpy scalars) by `float()`;
/// * anything else is refused with the `TypeError` that asyncio's `_run_once`
///   raises on it (`when - self.time()`, `when >= end_time`), instead of accepting
///   a timer that breaks every later iteration (docs/divergences.md).
fn deadline(obj: &Bound<'_, PyAny>) -> PyResult<(f64, Option<Py<PyAny>>)> {
    let py = obj.py();
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        // An equal float serves `when()`: no reference kept on the hot path.
        return Ok((f.value(), None));
    }
    let keep = Some(obj.clone().unbind());
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok((f.value(), keep));
    }
    let real = obj.is_instance_of::<PyInt>() || obj.is_instance(numbers_real(py)?)?;
    if !real {
        // Raise what asyncio's iteration would raise; a type that survives both is
        // taken if float() takes it.
        obj.sub(0.0)?;
        obj.ge(0.0)?;
    }
    let value = if obj.is_instance_of::<PyInt>() {
        // SAFETY: `obj` is a live int; PyLong_AsDouble reads its value only (no
        // `__float__` of a subclass, as Python's float-int comparison).
        let v = unsafe { pyo3::ffi::PyLong_AsDouble(obj.as_ptr()) };
        if v == -1.0 {
            PyErr::take(py).map_or(Ok(v), Err)
        } else {
            Ok(v)
        }
    } else {
        obj.extract::<f64>()
    };
    match value {
        Ok(v) => Ok((v, keep)),
        Err(err) if err.is_instance_of::<PyOverflowError>(py) => {
            let v = if obj.gt(0)? {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            Ok((v, keep))
        }
        Err(err) => Err(err),
    }
}

/// `numbers.Real`.
fn numbers_real(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("numbers")?.getattr("Real")?.unbind())
    })
    .map(|obj| obj.bind(py))
}

/// `LoopCore.time` as the type defines it, to tell whether a class overrides it.
fn own_time(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.get_type::<LoopCore>().getattr("time")?.unbind())
    })
    .map(|obj| obj.bind(py))
}

impl LoopCore {
    /// True when `time` is not `LoopCore.time`: set on the instance (tracked by
    /// `__setattr__`, so free to ask) or overridden by the class (looked up once
    /// per run, and on every call while the loop is not running).
    pub(crate) fn custom_time(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let this = slf.get();
        if this.time_on_instance.load(Ordering::Relaxed) {
            return Ok(true);
        }
        if this.thread_id.load(Ordering::Relaxed) != 0 {
            return Ok(this.time_on_type.load(Ordering::Relaxed));
        }
        Self::check_time_type(slf)
    }

    /// Looks up `type(self).time` and records whether it is not ours.
    fn check_time_type(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let custom = !slf
            .get_type()
            .getattr(pyo3::intern!(py, "time"))?
            .is(own_time(py)?);
        slf.get().time_on_type.store(custom, Ordering::Relaxed);
        Ok(custom)
    }

    /// `self.time()` as a float: the clock, or a replaced `time` called from Python.
    pub(crate) fn now(slf: &Bound<'_, Self>, custom: bool) -> PyResult<f64> {
        if !custom {
            return Ok(clock::monotonic());
        }
        let now = slf.call_method0(pyo3::intern!(slf.py(), "time"))?;
        Ok(deadline(&now)?.0)
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let poller = Poller::new().map_err(|e| os_error(&e))?;
        let waker = Waker::new().map_err(|e| os_error(&e))?;
        poller
            .add(
                std::os::fd::AsRawFd::as_raw_fd(&waker),
                WAKER_TOKEN,
                Interest::READ,
            )
            .map_err(|e| os_error(&e))?;
        Ok(Self {
            state: GilRefCell::new(State {
                ready: VecDeque::new(),
                timers: TimerHeap::new(),
                fds: Registry::new(),
                events: Events::with_capacity(EVENTS_CAPACITY),
            }),
            poller,
            waker,
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            timer_cancelled_count: AtomicUsize::new(0),
            clock_resolution: clock::resolution(),
            time_on_instance: AtomicBool::new(false),
            time_on_type: AtomicBool::new(false),
            metrics: GilRefCell::new(metrics::Metrics::default()),
            time_callbacks: AtomicBool::new(false),
        })
    }

    // ----- scheduling -----------------------------------------------------------

    #[pyo3(signature = (callback, *args, context=None))]
    pub(crate) fn call_soon<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::queue_new_handle(slf, callback, args, context.as_ref(), "call_soon", false)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    pub(crate) fn call_soon_threadsafe<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::queue_new_handle(
            slf,
            callback,
            args,
            context.as_ref(),
            "call_soon_threadsafe",
            true,
        )
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    pub(crate) fn call_later<'py>(
        slf: &Bound<'py, Self>,
        delay: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let py = slf.py();
        let when = if Self::custom_time(slf)? {
            When::Object(slf.call_method0(pyo3::intern!(py, "time"))?.add(delay)?)
        } else {
            let now = clock::monotonic();
            if let Ok(delay) = delay.cast_exact::<PyFloat>() {
                When::Float(now + delay.value())
            } else if delay.cast_exact::<PyInt>().is_ok() || delay.cast_exact::<PyBool>().is_ok() {
                // float + int: OverflowError "int too large to convert to float", as Python.
                When::Float(now + delay.extract::<f64>()?)
            } else {
                // Anything else: exactly what `self.time() + delay` gives or raises.
                When::Object(PyFloat::new(py, now).add(delay)?)
            }
        };
        Self::schedule_timer(slf, when, callback, args, context, "call_at")
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    pub(crate) fn call_at<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        Self::schedule_timer(
            slf,
            When::Object(when.clone()),
            callback,
            args,
            context,
            "call_at",
        )
    }

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    /// Tracks an assignment to `loop.time` (test frameworks patch it), so that the
    /// scheduler knows without a lookup per call whether to ask `self.time()`.
    fn __setattr__(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::generic_setattr(slf, name, value.as_ptr())
    }

    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::generic_setattr(slf, name, std::ptr::null_mut())
    }

    // ----- futures and tasks (hot enough to skip a Python frame) -------------------

    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::new_future(slf)
    }

    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::new_task(slf, coro, name, context)
    }

    /// asyncio's `_add_callback`: queue an existing handle. The stdlib's signal
    /// code hands us `asyncio.events.Handle` objects: those are run through their
    /// own `_run()`, which reports errors as asyncio does.
    fn _add_callback(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Ok(ours) = handle.cast::<Handle>() {
            if !ours.get().is_cancelled() {
                slf.get().push_ready(py, ours.clone().unbind());
            }
            return Ok(());
        }
        if handle.getattr(py::names::HANDLE_CANCELLED)?.is_truthy()? {
            return Ok(());
        }
        let run = handle.getattr(py::names::HANDLE_RUN)?;
        let wrapper = Bound::new(py, Self::handle_for(slf, &run, PyTuple::empty(py), None)?)?;
        slf.get().push_ready(py, wrapper.unbind());
        Ok(())
    }

    /// asyncio's `_add_callback_signalsafe`.
    fn _add_callback_signalsafe(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::_add_callback(slf, handle)?;
        slf.get().waker.wake();
        Ok(())
    }

    /// Wakes the loop from its poll (asyncio's self-pipe write).
    fn _write_to_self(&self) {
        self.waker.wake();
    }

    fn _timer_handle_cancelled(&self, handle: &Bound<'_, Handle>) {
        if handle.get().is_scheduled() {
            self.timer_handle_cancelled();
        }
    }

    /// Accepts up to `backlog` connections on the listening socket `fd`, as
    /// `_accept_connection` does with `sock.accept()`: returns the accepted
    /// `(fd, address)` pairs (non-blocking, close-on-exec) and the `OSError` that
    /// ended the batch, if any. The end of the queue (`EAGAIN`), `EINTR` and
    /// `ECONNABORTED` end it quietly, with no exception raised and caught. A
    /// `backlog` of 0 or less accepts nothing, as asyncio's `range(backlog)`.
    fn _accept_many<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        backlog: i64,
    ) -> PyResult<AcceptBatch<'py>> {
        // SAFETY: `fd` is the listener's: `Loop._accept_connection` read it from
        // the listening socket it holds for this call, and no Python code runs
        // until the batch is done.
        let listener = match unsafe { sys::borrow(fd) } {
            Ok(fd) => fd,
            Err(err) => {
                return Ok((
                    Vec::new(),
                    Some(os_error(&err).into_value(py).into_bound(py).into_any()),
                ))
            }
        };
        // Owned until they go to Python: an error drops (closes) them all.
        let mut accepted: Vec<(OwnedFd, Bound<'py, PyAny>)> = Vec::new();
        let into_raw = |accepted: Vec<(OwnedFd, Bound<'py, PyAny>)>| {
            accepted
                .into_iter()
                .map(|(conn, addr)| (conn.into_raw_fd(), addr))
                .collect::<Vec<_>>()
        };
        for _ in 0..backlog.max(0) {
            let mut addr = SockAddr::empty();
            let (ptr, len) = addr.as_mut_parts();
            // SAFETY: `ptr`/`len` describe `addr`'s storage, valid for the call.
            let conn = match unsafe { sys::accept_nonblocking(listener, ptr, len) } {
                Ok(conn) => conn,
                Err(err) => {
                    let error = match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => None,
                        _ => Some(os_error(&err).into_value(py).into_bound(py).into_any()),
                    };
                    return Ok((into_raw(accepted), error));
                }
            };
            // The raw address: the transport makes `peername` from it when asked.
            accepted.push((conn, PyBytes::new(py, addr.bytes()).into_any()));
        }
        Ok((into_raw(accepted), None))
    }

    /// asyncio's `_accept_connection2` for each connection of an accepted batch
    /// (`_accept_many`'s `[(fd, raw_address), ...]`, whose fds it takes over),
    /// without a task and outside debug mode: the protocol factory and the
    /// transport, in a copy of the context. `report` is called first.
    #[pyo3(signature = (protocol_factory, accepted, server, listener, report=None))]
    fn _accept_batch(
        slf: &Bound<'_, Self>,
        protocol_factory: &Bound<'_, PyAny>,
        accepted: &Bound<'_, PyList>,
        server: &Bound<'_, PyAny>,
        listener: &Bound<'_, PyAny>,
        report: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::accept_batch(slf, protocol_factory, accepted, server, listener, report)
    }

    /// The Python form (`socket` module's) of a raw address from `_accept_many`.
    #[staticmethod]
    fn _sockaddr<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        crate::sockaddr::CompactAddr::from_bytes(raw)
            .expand()
            .python_object(py)
    }

    /// `(done, result_or_future)` for `sock_recv`/`sock_recv_into`/`sock_sendall`.
    fn _sock_start<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        kind: &str,
        arg: &Bound<'py, PyAny>,
    ) -> PyResult<(bool, Bound<'py, PyAny>)> {
        Self::sock_start(slf, sock, sock::SockKind::parse(kind)?, arg)
    }

    // ----- running --------------------------------------------------------------

    /// Runs iterations until `stop()`; `run_forever` (Python) sets up around it.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        // Once per run: does the class override time()? (An instance attribute is
        // tracked by __setattr__.)
        Self::check_time_type(slf)?;
        this.metrics.borrow_mut(py).run_started();
        let ran = loop {
            if let Err(err) = Self::run_once(slf) {
                break Err(err);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.metrics.borrow_mut(py).run_ended();
        ran
    }

    /// `oxloop.metrics(loop)`'s raw snapshot, as a dict (see python/oxloop/_metrics.py).
    fn _metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let (fds, timers) = {
            let st = self.state.borrow_mut(py);
            (st.fds.len(), st.timers.len())
        };
        let cancelled = self.timer_cancelled_count.load(Ordering::Relaxed);
        let m = self.metrics.borrow_mut(py);
        let (samples, max, p50, p90, p99) = m.lag_summary();
        let out = pyo3::types::PyDict::new(py);
        out.set_item("iterations", m.iterations)?;
        out.set_item("callbacks", m.callbacks)?;
        out.set_item("poll_seconds", m.poll_seconds)?;
        out.set_item("run_seconds", m.run_seconds())?;
        out.set_item("lag", (samples, max, p50, p90, p99))?;
        out.set_item("slow_callbacks", m.slow.to_vec())?;
        out.set_item("slow_buckets", metrics::SLOW_BUCKETS.to_vec())?;
        out.set_item(
            "callback_timing",
            self.time_callbacks.load(Ordering::Relaxed),
        )?;
        out.set_item("fds_watched", fds)?;
        out.set_item("timers_pending", timers.saturating_sub(cancelled))?;
        out.set_item("transports_open", m.transports_open)?;
        out.set_item("bytes_read", m.bytes_read)?;
        out.set_item("bytes_written", m.bytes_written)?;
        Ok(out)
    }

    /// Times every callback for the slow-callback buckets (a clock read before
    /// and after each), or stops.
    fn _set_callback_timing(&self, on: bool) {
        self.time_callbacks.store(on, Ordering::Relaxed);
    }

    /// One iteration, as asyncio's `_run_once` (called from Python when a
    /// replaced `_run_once` delegates to it, or by tests).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::check_time_type(slf)?;
        Self::run_once(slf)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed()
    }

    fn get_debug(&self) -> bool {
        self.debug()
    }

    /// Drops every queued callback, timer and fd registration and closes the
    /// poller; the Python `close()` calls it after asyncio's own checks.
    fn _close_core(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Relaxed);
        let (ready, timers, fds) = {
            let mut st = self.state.borrow_mut(py);
            let ready = std::mem::take(&mut st.ready);
            let mut timers = Vec::new();
            st.timers.clear_into(&mut timers);
            (ready, timers, st.fds.drain())
        };
        self.timer_cancelled_count.store(0, Ordering::Relaxed);
        self.poller.close();
        self.waker.close();
        // Dropped here, outside the borrow: releasing them may run Python code.
        release_queued(py, ready, timers);
        drop(fds);
    }

    // ----- fd callbacks (selector_events.py) ------------------------------------

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::add_fileobj_callback(slf, fd, callback, args, Direction::Read)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fileobj_callback(slf, fd, Direction::Read)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::add_fileobj_callback(slf, fd, callback, args, Direction::Write)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fileobj_callback(slf, fd, Direction::Write)
    }

    // ----- state read by BaseEventLoop's own methods ------------------------------

    #[getter(_closed)]
    fn closed_attr(&self) -> bool {
        self.closed()
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, value: bool) {
        self.closed.store(value, Ordering::Relaxed);
    }

    #[getter(_stopping)]
    fn stopping_attr(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: bool) {
        self.stopping.store(value, Ordering::Relaxed);
    }

    #[getter(_debug)]
    fn debug_attr(&self) -> bool {
        self.debug()
    }

    /// asyncio stores whatever `set_debug()` was given and tests its truth; the
    /// flag is read per callback, so oxloop keeps only the truth value.
    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    #[getter(_thread_id)]
    fn thread_id_attr(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    #[setter(_thread_id)]
    fn set_thread_id_attr(&self, value: Option<u64>) {
        self.thread_id.store(value.unwrap_or(0), Ordering::Relaxed);
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.timer_cancelled_count.load(Ordering::Relaxed)
    }

    /// A snapshot of the ready queue (asyncio's `_ready` deque, read-only here);
    /// a native transport's entry shows as the handle asyncio would have queued.
    #[getter]
    fn _ready<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let py = slf.py();
        let entries: Vec<Ready> = slf
            .get()
            .state
            .borrow_mut(py)
            .ready
            .iter()
            .map(|entry| entry.clone_ref(py))
            .collect();
        let items = entries
            .into_iter()
            .map(|entry| match entry {
                Ready::Handle(h) => Ok(h.into_bound(py)),
                Ready::Transport(t, TransportEvent::Ready(direction, _)) => {
                    Transport::ready_handle(t.bind(py), slf, direction)
                }
                Ready::Transport(t, TransportEvent::StartReading(context)) => {
                    Transport::start_reading_handle(t.bind(py), slf, Some(context.bind(py)))
                }
                Ready::Transport(t, TransportEvent::ConnectionLost(exc, context)) => {
                    Transport::connection_lost_handle(
                        t.bind(py),
                        slf,
                        exc.bind(py),
                        context.bind(py),
                    )
                }
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// A snapshot of the timer heap (asyncio's `_scheduled` list, read-only here).
    #[getter]
    fn _scheduled<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut items: Vec<Py<Handle>> = Vec::new();
        self.state
            .borrow_mut(py)
            .timers
            .for_each(|t| items.push(t.0.clone_ref(py)));
        PyList::new(py, items)
    }

    /// `(fileobj, fd, events, reader, writer)` of a watched fd, as a
    /// `selectors.SelectorKey` holds them (`EVENT_READ` = 1, `EVENT_WRITE` = 2), found
    /// as `selectors` finds it (a closed file object by identity); `KeyError` when
    /// unwatched. Backs the read-only `loop._selector` view.
    fn _fd_key<'py>(slf: &Bound<'py, Self>, fileobj: &Bound<'py, PyAny>) -> PyResult<FdKey<'py>> {
        let py = slf.py();
        let this = slf.get();
        let found = match this.lookup_fd(fileobj)? {
            readers::FdArg::Fd(fd) => {
                let st = this.state.try_borrow_mut(py)?;
                st.fds.get(fd).map(|watch| {
                    let interest = watch.interest();
                    (
                        fd,
                        watch.fileobj.as_ref().map(|o| o.clone_ref(py)),
                        u8::from(interest.read) | (u8::from(interest.write) << 1),
                        watch.reader.as_ref().map(|w| w.clone_ref(py)),
                        watch.writer.as_ref().map(|w| w.clone_ref(py)),
                    )
                })
            }
            readers::FdArg::TooBig => None,
        };
        // Python code (repr, int creation) only once the borrow has ended.
        let Some((fd, registered, events, reader, writer)) = found else {
            return Err(pyo3::exceptions::PyKeyError::new_err(format!(
                "{} is not registered",
                fileobj.repr()?
            )));
        };
        let registered = match registered {
            Some(obj) => obj,
            None => fd.into_pyobject(py)?.into_any().unbind(),
        };
        let reader = reader
            .map(|w| w.as_handle(slf, Direction::Read))
            .transpose()?;
        let writer = writer
            .map(|w| w.as_handle(slf, Direction::Write))
            .transpose()?;
        Ok((registered, fd, events, reader, writer))
    }

    /// The fds being watched (for the selector view's `get_map()`).
    fn _watched_fds(&self, py: Python<'_>) -> PyResult<Vec<i32>> {
        let mut fds = Vec::new();
        self.state
            .try_borrow_mut(py)?
            .fds
            .for_each(|fd, _| fds.push(fd));
        Ok(fds)
    }

    /// After `fork()`, in the child: a fresh epoll instance and eventfd, with every
    /// watched fd registered again, so parent and child no longer share them. Only
    /// registrations the kernel still holds for the same file are made again: one
    /// whose fd was closed (and its number perhaps reused) stays unarmed, as it was
    /// before the fork, instead of handing its callback another file's events.
    fn _after_fork(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed() {
            return Ok(());
        }
        // Asked of the old instance (shared with the parent) before it is replaced.
        // Without /proc, every registration is made again, as before.
        let kernel: Option<std::collections::HashMap<RawFd, (u64, u64)>> =
            self.poller.registrations().ok().map(|regs| {
                regs.into_iter()
                    .map(|r| (r.fd, (r.token, r.inode)))
                    .collect()
            });
        self.poller.reopen().map_err(|e| os_error(&e))?;
        self.waker.reopen().map_err(|e| os_error(&e))?;
        self.poller
            .add(
                std::os::fd::AsRawFd::as_raw_fd(&self.waker),
                WAKER_TOKEN,
                Interest::READ,
            )
            .map_err(|e| os_error(&e))?;
        let mut watched = Vec::new();
        {
            let st = self.state.try_borrow_mut(py)?;
            st.fds.for_each(|fd, watch| {
                if let Some(token) = st.fds.token(fd) {
                    watched.push((fd, token, watch.interest()));
                }
            });
        }
        for (fd, token, interest) in watched {
            let same_file = kernel.as_ref().is_none_or(|regs| {
                regs.get(&fd).is_some_and(|&(t, inode)| {
                    t == token && oxloop_core::poller::inode_of(fd).is_ok_and(|i| i == inode)
                })
            });
            if same_file {
                self.poller
                    .add(fd, token, interest)
                    .map_err(|e| os_error(&e))?;
            }
        }
        Ok(())
    }

    /// The number of fds with a reader or writer (introspection for tests).
    fn _fd_watch_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.state.try_borrow_mut(py)?.fds.len())
    }

    // ----- garbage collection -----------------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: called by the GC only.
        let Some(st) = (unsafe { self.state.try_get_for_gc() }) else {
            return Ok(());
        };
        for entry in &st.ready {
            match entry {
                Ready::Handle(h) => Handle::traverse_queued(h, &visit)?,
                Ready::Transport(t, event) => {
                    visit.call(t)?;
                    match event {
                        TransportEvent::Ready(..) => {}
                        TransportEvent::StartReading(context) => visit.call(context)?,
                        TransportEvent::ConnectionLost(exc, context) => {
                            visit.call(exc)?;
                            visit.call(context)?;
                        }
                    }
                }
            }
        }
        let mut result = Ok(());
        st.timers.for_each(|t| {
            if result.is_ok() {
                result = Handle::traverse_queued(&t.0, &visit);
            }
        });
        result?;
        let mut result = Ok(());
        st.fds.for_each(|_, w| {
            for watcher in [&w.reader, &w.writer].into_iter().flatten() {
                if result.is_ok() {
                    result = match watcher {
                        Watcher::Handle(h) => visit.call(h),
                        Watcher::Transport(t) => visit.call(t),
                    };
                }
            }
            if result.is_ok() {
                result = visit.call(&w.fileobj);
            }
        });
        result
    }

    fn __clear__(&self, py: Python<'_>) {
        let (ready, timers, fds) = {
            let mut st = self.state.borrow_mut(py);
            let mut timers = Vec::new();
            st.timers.clear_into(&mut timers);
            (std::mem::take(&mut st.ready), timers, st.fds.drain())
        };
        release_queued(py, ready, timers);
        drop(fds);
    }
}

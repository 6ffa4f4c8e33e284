//! One loop iteration: asyncio's `BaseEventLoop._run_once`, in the same order.
//!
//! 1. drop cancelled timers (all of them when they are the majority);
//! 2. poll: zero timeout when callbacks are ready or the loop is stopping, else
//!    until the next timer (the GIL is released only here, and only to block:
//!    after an iteration with I/O a zero-timeout poll looks first); the waker's sleeping
//!    flag is set before anything that can run Python, so that a
//!    `call_soon_threadsafe` made meanwhile is never lost;
//! 3. run pending Python signal handlers (Ctrl-C raises `KeyboardInterrupt` here);
//! 4. queue the callbacks of ready fds, then the due timers;
//!
//! `self.time()` is asked where asyncio asks it, but only when `time` was replaced
//! (see `LoopCore::custom_time`); otherwise the clock is read in Rust.
//! 5. run exactly the callbacks queued so far; those they schedule wait for the
//!    next iteration.

use std::sync::atomic::Ordering;
use std::time::Duration;

use oxloop_core::clock;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::{Direction, LoopCore, Ready, TransportEvent, Watcher, WAKER_TOKEN};
use crate::errors::{is_exit, os_error};
use crate::handles::Handle;
use crate::py;
use crate::transports::base::Transport;

/// CPython: `base_events.MAXIMUM_SELECT_TIMEOUT`.
const MAXIMUM_SELECT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl LoopCore {
    pub(super) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();

        let mut purged = Vec::new();
        {
            let mut st = this.state.borrow_mut(py);
            let mut cancelled = this.timer_cancelled_count.load(Ordering::Relaxed);
            st.timers.purge_cancelled(&mut cancelled, &mut purged);
            this.timer_cancelled_count
                .store(cancelled, Ordering::Relaxed);
        }
        // Dropping a handle can run Python code (`__del__` of what its context
        // holds) that releases the GIL and lets a thread call call_soon_threadsafe:
        // before the timeout is computed, so that such a callback is seen.
        if !purged.is_empty() {
            super::release_queued(py, [], purged);
        }
        let custom_time = Self::custom_time(slf)?;

        // The sleeping flag is set before anything below can run Python (a replaced
        // time()): from then on call_soon_threadsafe writes the eventfd, so no
        // wake-up is lost, and the ready queue is looked at again afterwards.
        let (sleepy, next_when) = {
            let st = this.state.borrow_mut(py);
            (
                st.ready.is_empty() && !this.stopping.load(Ordering::Relaxed),
                st.timers.peek_when(),
            )
        };
        let mut timeout = Some(Duration::ZERO);
        if sleepy {
            this.waker.set_sleeping(true);
            timeout = match next_when {
                None => None,
                Some(when) => match Self::now(slf, custom_time) {
                    Ok(now) => Some(clock::poll_timeout(when - now, MAXIMUM_SELECT_TIMEOUT)),
                    Err(err) => {
                        this.waker.set_sleeping(false);
                        return Err(err);
                    }
                },
            };
        }
        let (mut events, no_fds) = {
            let mut st = this.state.borrow_mut(py);
            if !st.ready.is_empty() || this.stopping.load(Ordering::Relaxed) {
                timeout = Some(Duration::ZERO);
            }
            (std::mem::take(&mut st.events), st.fds.is_empty())
        };

        // Whether the iteration's work was waiting before it began (for the lag
        // metric): callbacks already queued, or I/O found ready without blocking.
        let mut waited = !sleepy;
        let polled = if timeout == Some(Duration::ZERO) {
            // A wake-up sent meanwhile stays pending in the eventfd: the next
            // blocking poll returns at once and drains it.
            this.waker.set_sleeping(false);
            if no_fds {
                // Nothing but the waker is registered, and a wake-up is moot when we
                // are not going to block: skip the syscall. With no fd watched
                // asyncio's zero-timeout select() cannot report anything either.
                events.clear();
                Ok(0)
            } else {
                this.poller.wait(&mut events, timeout)
            }
        } else {
            // After an iteration with I/O, look first with the GIL held, and let it
            // go only to block. A loop busy with I/O that gave up the GIL for every
            // poll starved the other threads: a thread waiting for the GIL is woken
            // by each release, so its timed wait never expires to ask for a switch,
            // and it loses the race to re-take the GIL nearly every time (a daemon
            // echo loop kept the main thread out for over 60 s). Held, the GIL is
            // handed over at the switch interval, as for any Python code.
            // (A wake-up alone is no I/O: an idle loop woken by other threads
            // blocks at once.)
            let polled = if events.iter().any(|ev| ev.token != WAKER_TOKEN) {
                this.poller.wait(&mut events, Some(Duration::ZERO))
            } else {
                Ok(0)
            };
            let polled = match polled {
                Ok(0) => {
                    let blocked = std::time::Instant::now();
                    let polled = py.detach(|| this.poller.wait(&mut events, timeout));
                    this.metrics.borrow_mut(py).poll_seconds += blocked.elapsed().as_secs_f64();
                    polled
                }
                other => {
                    waited = true; // found at the look, without blocking
                    other
                }
            };
            this.waker.set_sleeping(false);
            polled
        };
        let polled = match polled {
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => Err(os_error(&e)),
            _ => crate::ffi::check_signals(py),
        };
        // asyncio: `end_time = self.time() + self._clock_resolution`, every iteration.
        let end_time = polled.and_then(|()| Self::now(slf, custom_time));
        let end_time = match end_time {
            Ok(now) => now + this.clock_resolution,
            Err(err) => {
                this.state.borrow_mut(py).events = events;
                return Err(err);
            }
        };

        let mut cancelled_watchers = Vec::new();
        // Released after the borrow ends: dropping a handle can run Python code.
        let mut removed = Vec::new();
        let ntodo = {
            let mut st = this.state.borrow_mut(py);
            let st = &mut *st;
            for ev in events.iter() {
                if ev.token == WAKER_TOKEN {
                    this.waker.drain();
                    continue;
                }
                // A stale token (the fd was unregistered since) is ignored.
                let Some((fd, watch)) = st.fds.by_token(ev.token) else {
                    continue;
                };
                for (fired, direction) in [
                    (ev.readable, Direction::Read),
                    (ev.writable, Direction::Write),
                ] {
                    let slot = match direction {
                        Direction::Read => &watch.reader,
                        Direction::Write => &watch.writer,
                    };
                    let Some(watcher) = slot.as_ref().filter(|_| fired) else {
                        continue;
                    };
                    match watcher {
                        Watcher::Handle(handle) if handle.get().is_cancelled() => {
                            cancelled_watchers.push((fd, direction));
                        }
                        Watcher::Handle(handle) => {
                            st.ready.push_back(Ready::Handle(handle.clone_ref(py)));
                        }
                        Watcher::Transport(transport) => {
                            let generation = transport.get().watch_generation(direction);
                            st.ready.push_back(Ready::Transport(
                                transport.clone_ref(py),
                                TransportEvent::Ready(direction, generation),
                            ));
                        }
                    }
                }
            }
            st.events = events;
            for (fd, direction) in cancelled_watchers {
                // CPython: a cancelled reader/writer found ready is unregistered.
                removed.push(this.unwatch(st, fd, direction));
            }
            let first_due = st.timers.peek_when().filter(|when| *when < end_time);
            while let Some(timer) = st.timers.pop_due(end_time) {
                st.ready.push_back(Ready::Handle(timer.0));
            }
            let now = end_time - this.clock_resolution;
            let ntodo = st.ready.len();
            this.metrics
                .borrow_mut(py)
                .iteration(now, waited, first_due, ntodo);
            ntodo
        };
        drop(removed);

        // `ntodo` callbacks were counted as run: those that are not are taken back.
        let timing = this.time_callbacks.load(Ordering::Relaxed);
        for done in 0..ntodo {
            let Some(entry) = this.state.borrow_mut(py).ready.pop_front() else {
                this.not_run(py, ntodo - done);
                break;
            };
            let started = timing.then(std::time::Instant::now);
            let handle = match entry {
                Ready::Handle(handle) => handle.into_bound(py),
                Ready::Transport(transport, event) => {
                    let result = Self::run_transport_event(slf, transport.bind(py), event);
                    if let Some(started) = started {
                        this.timed(py, started);
                    }
                    if result.is_err() {
                        this.not_run(py, ntodo - done - 1);
                    }
                    result?;
                    continue;
                }
            };
            let result = if handle.get().is_cancelled() {
                this.not_run(py, 1);
                Ok(())
            } else if this.debug() {
                Self::run_handle_debug(slf, &handle)
            } else {
                Self::run_handle(slf, &handle)
            };
            Handle::release_ran(handle);
            if let Some(started) = started {
                this.timed(py, started);
            }
            if result.is_err() {
                this.not_run(py, ntodo - done - 1);
            }
            result?;
        }
        Ok(())
    }

    /// `count` callbacks counted as run in `metrics` were not (cancelled, or left
    /// for the next iteration by an exception).
    #[cold]
    #[inline(never)]
    fn not_run(&self, py: Python<'_>, count: usize) {
        let mut m = self.metrics.borrow_mut(py);
        m.callbacks = m.callbacks.saturating_sub(count as u64);
    }

    /// A callback timed from `started` (callback timing is on).
    #[cold]
    #[inline(never)]
    fn timed(&self, py: Python<'_>, started: std::time::Instant) {
        self.metrics
            .borrow_mut(py)
            .timed(started.elapsed().as_secs_f64());
    }

    /// A native transport's queued work, as the handle asyncio would have queued
    /// runs: errors other than `SystemExit`/`KeyboardInterrupt` go to the
    /// exception handler, with that handle; in debug mode the handle is made and
    /// run (`_current_handle`, the slow-callback warning).
    fn run_transport_event(
        slf: &Bound<'_, Self>,
        transport: &Bound<'_, Transport>,
        event: TransportEvent,
    ) -> PyResult<()> {
        let handle = match event {
            TransportEvent::Ready(direction, generation) => {
                if transport.get().watch_generation(direction) != generation {
                    return Ok(()); // the watch was removed or replaced since
                }
                if !slf.get().debug() {
                    let Err(err) = Transport::run_ready(transport, direction) else {
                        return Ok(());
                    };
                    return Self::report_callback_error(slf, err, || {
                        Transport::ready_handle(transport, slf, direction)
                    });
                }
                Transport::ready_handle(transport, slf, direction)?
            }
            TransportEvent::StartReading(context) => {
                if !slf.get().debug() {
                    let context = context.bind(slf.py());
                    let Err(err) = Transport::start_reading(transport, context) else {
                        return Ok(());
                    };
                    return Self::report_callback_error(slf, err, || {
                        Transport::start_reading_handle(transport, slf, Some(context))
                    });
                }
                Transport::start_reading_handle(transport, slf, Some(context.bind(slf.py())))?
            }
            TransportEvent::ConnectionLost(exc, context) => {
                let py = slf.py();
                let (exc, context) = (exc.bind(py), context.bind(py));
                if !slf.get().debug() {
                    let result = crate::ffi::with_context(py, context, || {
                        Transport::_call_connection_lost(transport, Some(exc.clone().unbind()))
                    });
                    let Err(err) = result else {
                        return Ok(());
                    };
                    return Self::report_callback_error(slf, err, || {
                        Transport::connection_lost_handle(transport, slf, exc, context)
                    });
                }
                Transport::connection_lost_handle(transport, slf, exc, context)?
            }
        };
        Self::run_handle_debug(slf, &handle)
    }

    /// `err` raised by the callback of `handle`: `SystemExit` and
    /// `KeyboardInterrupt` stop the loop, anything else goes to the handler.
    fn report_callback_error<'py>(
        slf: &Bound<'py, Self>,
        err: PyErr,
        handle: impl FnOnce() -> PyResult<Bound<'py, Handle>>,
    ) -> PyResult<()> {
        if is_exit(slf.py(), &err) {
            return Err(err);
        }
        Self::call_handler_for(slf, &handle()?, err)
    }

    /// asyncio's `Handle._run()`: run, and report anything but `SystemExit` and
    /// `KeyboardInterrupt` (which stop the loop) to the exception handler.
    #[inline(always)]
    pub fn run_handle(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        #[cold]
        #[inline(never)]
        fn report(
            slf: &Bound<'_, LoopCore>,
            handle: &Bound<'_, Handle>,
            err: PyErr,
        ) -> PyResult<()> {
            if is_exit(slf.py(), &err) {
                return Err(err);
            }
            LoopCore::call_handler_for(slf, handle, err)
        }
        match handle.get().run_callback(slf.py()) {
            Ok(()) => Ok(()),
            Err(err) => report(slf, handle, err),
        }
    }

    /// `Handle._run()`'s report: "Exception in callback ..." to the handler.
    fn call_handler_for(
        slf: &Bound<'_, Self>,
        handle: &Bound<'_, Handle>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        let h = handle.get();
        let (callback, args) = h.callback(py).map_or_else(
            || (py.None(), py.None()),
            |cb| (cb.callback.unbind(), cb.args.into_any().unbind()),
        );
        let source = py::callback_source(py, callback, args, slf.get().debug())?;
        let context = PyDict::new(py);
        context.set_item("message", format!("Exception in callback {source}"))?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("handle", handle)?;
        if let Some(tb) = h.source_traceback() {
            if tb.bind(py).is_truthy()? {
                context.set_item("source_traceback", tb)?;
            }
        }
        // Through ffi::call_method: the handler runs Python code on the loop's thread.
        crate::ffi::call_method(
            slf.as_any(),
            pyo3::intern!(py, "call_exception_handler"),
            &PyTuple::new(py, [context])?,
        )?;
        Ok(())
    }

    /// The debug-mode branch of `_run_once`: `_current_handle` and the
    /// slow-callback warning.
    fn run_handle_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        slf.setattr(pyo3::intern!(py, "_current_handle"), handle)?;
        let custom_time = Self::custom_time(slf)?;
        let t0 = Self::now(slf, custom_time)?;
        let result = Self::run_handle(slf, handle).and_then(|()| {
            let dt = Self::now(slf, custom_time)? - t0;
            let slow: f64 = slf
                .getattr(pyo3::intern!(py, "slow_callback_duration"))?
                .extract()?;
            if dt >= slow {
                let what = py::format_handle(py)?.call1((handle,))?;
                py::asyncio_logger(py)?.call_method1(
                    pyo3::intern!(py, "warning"),
                    ("Executing %s took %.3f seconds", what, dt),
                )?;
            }
            Ok(())
        });
        slf.setattr(pyo3::intern!(py, "_current_handle"), py.None())?;
        result
    }
}

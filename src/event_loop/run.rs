//! One loop iteration: asyncio's `BaseEventLoop._run_once`, in the same order.
//!
//! 1. drop cancelled timers (all of them when they are the majority);
//! 2. poll: zero timeout when callbacks are ready or the loop is stopping, else
//!    until the next timer (the GIL is released only here);
//! 3. run pending Python signal handlers (Ctrl-C raises `KeyboardInterrupt` here);
//! 4. queue the callbacks of ready fds, then the due timers;
//! 5. run exactly the callbacks queued so far; those they schedule wait for the
//!    next iteration.

use std::sync::atomic::Ordering;
use std::time::Duration;

use oxloop_core::clock;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{Direction, LoopCore, WAKER_TOKEN};
use crate::errors::os_error;
use crate::handles::Handle;
use crate::py;

/// CPython: `base_events.MAXIMUM_SELECT_TIMEOUT`.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

impl LoopCore {
    pub(super) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();

        let mut purged = Vec::new();
        let (timeout, mut events, no_fds) = {
            let mut st = this.state.borrow_mut(py);
            let mut cancelled = this.timer_cancelled_count.load(Ordering::Relaxed);
            st.timers.purge_cancelled(&mut cancelled, &mut purged);
            this.timer_cancelled_count
                .store(cancelled, Ordering::Relaxed);
            let timeout = if !st.ready.is_empty() || this.stopping.load(Ordering::Relaxed) {
                Some(Duration::ZERO)
            } else {
                st.timers.peek_when().map(|when| {
                    let secs = (when - clock::monotonic()).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
                    Duration::from_secs_f64(secs)
                })
            };
            (timeout, std::mem::take(&mut st.events), st.fds.is_empty())
        };
        drop(purged);

        let polled = if timeout == Some(Duration::ZERO) {
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
            // A thread that calls call_soon_threadsafe needs the GIL to queue its
            // callback, so it sees this flag only once we are about to block.
            this.waker.set_sleeping(true);
            let polled = py.detach(|| this.poller.wait(&mut events, timeout));
            this.waker.set_sleeping(false);
            polled
        };
        let polled = match polled {
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => Err(os_error(&e)),
            _ => crate::ffi::check_signals(py),
        };
        if let Err(err) = polled {
            this.state.borrow_mut(py).events = events;
            return Err(err);
        }

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
                    let Some(handle) = slot.as_ref().filter(|_| fired) else {
                        continue;
                    };
                    if handle.get().is_cancelled() {
                        cancelled_watchers.push((fd, direction));
                    } else {
                        st.ready.push_back(handle.clone_ref(py));
                    }
                }
            }
            st.events = events;
            for (fd, direction) in cancelled_watchers {
                // CPython: a cancelled reader/writer found ready is unregistered.
                if let Some(handle) = this.unwatch(st, fd, direction) {
                    removed.push(handle);
                }
            }
            let end_time = clock::monotonic() + this.clock_resolution;
            while let Some(timer) = st.timers.pop_due(end_time) {
                st.ready.push_back(timer.0);
            }
            st.ready.len()
        };
        drop(removed);

        for _ in 0..ntodo {
            let Some(handle) = this.state.borrow_mut(py).ready.pop_front() else {
                break;
            };
            let handle = handle.into_bound(py);
            if handle.get().is_cancelled() {
                continue;
            }
            if this.debug() {
                Self::run_handle_debug(slf, &handle)?;
            } else {
                Self::run_handle(slf, &handle)?;
            }
        }
        Ok(())
    }

    /// asyncio's `Handle._run()`: run, and report anything but `SystemExit` and
    /// `KeyboardInterrupt` (which stop the loop) to the exception handler.
    pub fn run_handle(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let Err(err) = handle.get().run_callback(py) else {
            return Ok(());
        };
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        let h = handle.get();
        let (callback, args) = h.callback(py).map_or_else(
            || (py.None(), py.None()),
            |cb| (cb.callback, cb.args.into_any()),
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
        slf.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }

    /// The debug-mode branch of `_run_once`: `_current_handle` and the
    /// slow-callback warning.
    fn run_handle_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        slf.setattr(pyo3::intern!(py, "_current_handle"), handle)?;
        let t0 = clock::monotonic();
        let result = Self::run_handle(slf, handle).and_then(|()| {
            let dt = clock::monotonic() - t0;
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

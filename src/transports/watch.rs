//! A transport's fd watches: the seam between the native transports and the loop.
//!
//! A transport watches its own fd through the loop's registry as a
//! `Watcher::Transport`, and its readiness is queued as a `Ready::Transport` entry
//! (src/event_loop/mod.rs): no Python object per watch or per event. Each kind
//! names its reader and writer bodies in a static [`ReadyFns`]; the per-direction
//! watch generation keeps an event queued for a removed or replaced watch from
//! running (asyncio's cancelled handle), and the watch's context is a copy made
//! when the watch is made (asyncio's `Handle` holds one). asyncio's handles for
//! these are made only on demand (`ready_handle`, `start_reading_handle`,
//! `connection_lost_handle`): for `loop._ready`, the selector view, debug mode and
//! error reports.

use std::sync::atomic::Ordering;

use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::base::Transport;
use crate::errors::os_error;
use crate::event_loop::{Direction, LoopCore};
use crate::handles::{Handle, NativeFn};

/// A reader's or writer's method name and Rust body.
pub(super) type ReadyFn = (&'static str, NativeFn);

/// A transport kind's reader and writer (a static per kind: one pointer per
/// transport).
pub(super) struct ReadyFns {
    pub read: ReadyFn,
    pub write: Option<ReadyFn>,
}

impl Transport {
    pub(super) fn unwatch(&self, py: Python<'_>, direction: Direction) -> PyResult<()> {
        if let Some(lp) = self.event_loop(py) {
            LoopCore::remove_fd_callback(&lp, self.fd, direction)?;
        }
        Ok(())
    }

    /// Watches the transport's fd in `direction` (asyncio's `_add_reader`/
    /// `_add_writer` of its `_read_ready`/`_write_ready`), in a copy of the
    /// current context.
    pub(super) fn watch(slf: &Bound<'_, Self>, direction: Direction) -> PyResult<()> {
        let context = crate::ffi::copy_context(slf.py())?;
        Self::watch_in(slf, direction, context)
    }

    fn watch_in(
        slf: &Bound<'_, Self>,
        direction: Direction,
        context: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(lp) = this.event_loop(py) else {
            return Ok(());
        };
        if this.ready_fn(direction).is_none() {
            return Ok(());
        }
        if this.owned_fd(py).is_none() {
            // The socket was closed (or detached) behind the transport's back: its
            // number may be another file's now, which must not be armed. asyncio
            // asks epoll, which answers EBADF for a number nobody reused.
            return Err(os_error(&std::io::Error::from_raw_os_error(libc::EBADF)));
        }
        this.end_watch(direction);
        let old = this.watch_context[direction.index()].replace(py, Some(context.unbind()));
        drop(old);
        LoopCore::watch_transport(&lp, this.fd, slf, direction)
    }

    fn ready_fn(&self, direction: Direction) -> Option<&ReadyFn> {
        match direction {
            Direction::Read => self.ready_fns.get().map(|f| &f.read),
            Direction::Write => self.ready_fns.get().and_then(|f| f.write.as_ref()),
        }
    }

    /// Whether `callback` is this transport's own reader method (a bound method
    /// made by `ready_handle` or `start_reading_handle`).
    pub(super) fn is_own_reader(
        &self,
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let Some((name, _)) = self.ready_fn(Direction::Read) else {
            return Ok(false);
        };
        let Ok(owner) = callback.getattr(pyo3::intern!(py, "__self__")) else {
            return Ok(false);
        };
        Ok(owner.is(slf) && callback.getattr(pyo3::intern!(py, "__name__"))?.eq(*name)?)
    }

    /// The generation of the watch in `direction` (see `watch_generation`).
    pub(crate) fn watch_generation(&self, direction: Direction) -> u32 {
        self.watch_generation[direction.index()].load(Ordering::Relaxed)
    }

    /// The watch in `direction` was removed or replaced: an event queued for it
    /// will not run.
    pub(crate) fn end_watch(&self, direction: Direction) {
        self.watch_generation[direction.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The fd is ready in `direction`: the reader's or writer's body, in the
    /// watch's context (the loop checked the generation).
    pub(crate) fn run_ready(slf: &Bound<'_, Self>, direction: Direction) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some((_, native)) = this.ready_fn(direction) else {
            return Ok(());
        };
        match this.watch_context[direction.index()].clone_ref(py) {
            Some(context) => crate::ffi::run_native(py, context.bind(py), slf.as_any(), *native),
            None => native(slf.as_any()),
        }
    }

    /// The handle asyncio would have for the watch in `direction` (for `_ready`,
    /// `_selector`, debug mode and error reports).
    pub(crate) fn ready_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        let (name, native) = this
            .ready_fn(direction)
            .ok_or_else(|| PyAttributeError::new_err("the transport has no such callback"))?;
        let context = match this.watch_context[direction.index()].clone_ref(py) {
            Some(context) => context.into_bound(py),
            None => crate::ffi::copy_context(py)?,
        };
        let handle = Handle::new(
            slf.getattr(*name)?.unbind(),
            PyTuple::empty(py).unbind(),
            context.unbind(),
            lp.clone().unbind(),
            None,
        );
        handle.set_native(*native);
        Bound::new(py, handle)
    }

    /// The queued start of reading of a new transport (asyncio's
    /// `_SelectorTransport._add_reader` called with its own reader).
    pub(crate) fn start_reading(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
        if !slf.get().is_reading(slf.py()) {
            return Ok(());
        }
        Self::watch_in(slf, Direction::Read, context.clone())
    }

    /// The handle asyncio queues for [`Transport::start_reading`]:
    /// `call_soon(self._add_reader, fd, self._read_ready)`.
    pub(crate) fn start_reading_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        let (name, _) = this
            .ready_fn(Direction::Read)
            .ok_or_else(|| PyAttributeError::new_err("the transport has no reader"))?;
        let context = match context {
            Some(context) => context.clone(),
            None => crate::ffi::copy_context(py)?,
        };
        let args = PyTuple::new(
            py,
            [this.fd.into_pyobject(py)?.into_any(), slf.getattr(*name)?],
        )?;
        Bound::new(
            py,
            Handle::new(
                slf.getattr("_add_reader")?.unbind(),
                args.unbind(),
                context.unbind(),
                lp.clone().unbind(),
                None,
            ),
        )
    }

    /// The handle asyncio queues for `_call_connection_lost(exc)`.
    pub(crate) fn connection_lost_handle<'py>(
        slf: &Bound<'py, Self>,
        lp: &Bound<'py, LoopCore>,
        exc: &Bound<'py, PyAny>,
        context: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        Bound::new(
            py,
            Handle::new(
                slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?
                    .unbind(),
                PyTuple::new(py, [exc])?.unbind(),
                context.clone().unbind(),
                lp.clone().unbind(),
                None,
            ),
        )
    }
}

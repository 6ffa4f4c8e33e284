//! `create_future` and `create_task`, with the stdlib's C `Future`/`Task`.
//!
//! Mirrors `BaseEventLoop.create_future`/`create_task` (`base_events.py` of the
//! running CPython; how a factory's task is named differs by version, see
//! `py::set_task_name`); done in Rust only to skip a Python frame on these hot calls.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::LoopCore;
use crate::py;

impl LoopCore {
    pub(super) fn new_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        py::future_type(py)?.call((), Some(&kwargs))
    }

    pub(super) fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().check_closed()?;
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        let factory = slf.getattr(pyo3::intern!(py, "_task_factory"))?;
        if factory.is_none() {
            let kwargs = PyDict::new(py);
            kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
            if let Some(name) = name {
                kwargs.set_item(pyo3::intern!(py, "name"), name)?;
            }
            if let Some(context) = context {
                kwargs.set_item(pyo3::intern!(py, "context"), context)?;
            }
            // asyncio's create_task drops its own frame from a debug-mode task's
            // traceback; this one has no Python frame, so the traceback already ends
            // at the caller.
            return py::task_type(py)?.call((coro,), Some(&kwargs));
        }
        let task = match context {
            // CPython: the legacy factory signature when no context is given.
            None => factory.call1((slf, coro))?,
            Some(context) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(pyo3::intern!(py, "context"), context)?;
                factory.call((slf, coro), Some(&kwargs))?
            }
        };
        py::set_task_name(&task, name)?;
        Ok(task)
    }
}

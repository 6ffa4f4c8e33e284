//! `add_reader`/`add_writer` and their removal: level-triggered fd callbacks.
//!
//! Mirrors `Lib/asyncio/selector_events.py` (`_add_reader`, `_remove_reader`, …)
//! and `selectors._fileobj_to_fd` for the accepted fd forms and their errors.

use std::os::fd::RawFd;

use oxloop_core::poller::Interest;
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::{Direction, FdWatch, LoopCore, State};
use crate::errors::os_error;
use crate::handles::Handle;

/// `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
pub(crate) fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = fileobj.py();
    let fd: i64 = if fileobj.is_instance_of::<PyInt>() {
        fileobj.extract()?
    } else {
        let fd = fileobj
            .call_method0(pyo3::intern!(py, "fileno"))
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
            .and_then(|n| n.extract::<i64>());
        match fd {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    fileobj.repr()?
                )));
            }
            Err(e) => return Err(e),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("fd is greater than maximum"))
}

impl LoopCore {
    /// Applies `watch`'s interest to the poller. A registration that vanished
    /// because the fd was closed (epoll forgets closed fds) is made again.
    fn apply_interest(&self, fd: RawFd, token: u64, interest: Interest) -> std::io::Result<()> {
        match self.poller.modify(fd, token, interest) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.poller.add(fd, token, interest)
            }
            other => other,
        }
    }

    /// Removes one callback of `fd`; unregisters the fd when none is left.
    /// Returns the removed handle, to be cancelled/dropped outside the borrow.
    pub(super) fn unwatch(
        &self,
        st: &mut State,
        fd: RawFd,
        direction: Direction,
    ) -> Option<Py<Handle>> {
        let watch = st.fds.get_mut(fd)?;
        let old = match direction {
            Direction::Read => watch.reader.take(),
            Direction::Write => watch.writer.take(),
        };
        let interest = watch.interest();
        if interest.is_empty() {
            st.fds.remove(fd);
            // CPython: EpollSelector.unregister ignores OSError (the fd may be closed).
            let _ = self.poller.delete(fd);
        } else if let Some(token) = st.fds.token(fd) {
            // Same as above: a failure here only means epoll already forgot the fd.
            let _ = self.apply_interest(fd, token, interest);
        }
        old
    }

    /// Watches `fd` (asyncio's `_add_reader`/`_add_writer` once the file object is
    /// an fd number); native transports and waiters call this directly.
    pub(crate) fn add_fd_callback<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let handle = Bound::new(py, Self::handle_for(slf, callback, args, None)?)?;
        let new = Some(handle.clone().unbind());
        let (old, failed) = {
            let mut st = this.state.borrow_mut(py);
            if let Some(watch) = st.fds.get_mut(fd) {
                let old = match direction {
                    Direction::Read => std::mem::replace(&mut watch.reader, new),
                    Direction::Write => std::mem::replace(&mut watch.writer, new),
                };
                let interest = watch.interest();
                let token = st.fds.token(fd).unwrap_or_default();
                (
                    old,
                    this.apply_interest(fd, token, interest)
                        .err()
                        .map(|e| (e, None)),
                )
            } else {
                let mut watch = FdWatch::default();
                match direction {
                    Direction::Read => watch.reader = new,
                    Direction::Write => watch.writer = new,
                }
                let interest = watch.interest();
                match st.fds.insert(fd, watch) {
                    Ok(token) => match this.poller.add(fd, token, interest) {
                        Ok(()) => (None, None),
                        Err(e) => (None, Some((e, st.fds.remove(fd)))),
                    },
                    Err(_) => (None, None),
                }
            }
        };
        if let Some((err, watch)) = failed {
            drop(watch);
            return Err(os_error(&err));
        }
        if let Some(old) = old {
            Handle::cancel_impl(old.bind(py))?;
        }
        Ok(handle)
    }

    /// Stops watching `fd` in one direction (asyncio's `_remove_reader`/
    /// `_remove_writer`); `false` when nothing was watching or the loop is closed.
    pub(crate) fn remove_fd_callback(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        direction: Direction,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed() {
            return Ok(false);
        }
        let old = {
            let mut st = this.state.borrow_mut(py);
            this.unwatch(&mut st, fd, direction)
        };
        match old {
            Some(handle) => {
                Handle::cancel_impl(handle.bind(py))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl LoopCore {
    pub(crate) fn is_watching(&self, py: Python<'_>, fd: RawFd, direction: Direction) -> bool {
        let st = self.state.borrow_mut(py);
        st.fds.get(fd).is_some_and(|w| match direction {
            Direction::Read => w.reader.is_some(),
            Direction::Write => w.writer.is_some(),
        })
    }
}

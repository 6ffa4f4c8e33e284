//! `add_reader`/`add_writer` and their removal: level-triggered fd callbacks.
//!
//! Mirrors `Lib/asyncio/selector_events.py` (`_add_reader`, `_remove_reader`, …)
//! over `selectors.EpollSelector`: `_fileobj_to_fd` and `_fileobj_lookup` for the
//! accepted file objects and their errors, `register`/`modify`/`unregister` for
//! what reaches the kernel. The kernel is asked before anything is stored, and an
//! error from it (`ENOENT`/`EBADF` for a closed or reused fd) is reported and drops
//! the registration, never answered by registering the number again: that would
//! hand a stale callback the data of the file that now has the number.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString, PyTuple};

use super::{Direction, FdWatch, LoopCore, State, Watcher};
use crate::errors::os_error;
use crate::handles::Handle;
use crate::transports::base::Transport;

/// A file object resolved to an fd, as `selectors` resolves it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdArg {
    /// A valid fd number.
    Fd(RawFd),
    /// A non-negative int beyond a C int: never registered, and `epoll_ctl`
    /// refuses it with `OverflowError`.
    TooBig,
}

impl FdArg {
    /// The fd for `epoll_ctl`: `OverflowError` as `select.epoll.register` raises it.
    fn for_kernel(self) -> PyResult<RawFd> {
        match self {
            Self::Fd(fd) => Ok(fd),
            Self::TooBig => Err(PyOverflowError::new_err(
                "Python int too large to convert to C int",
            )),
        }
    }
}

/// `selectors._fileobj_to_fd`: an int, or an object with `fileno()`. Runs Python
/// code (`fileno()`, `int()`, `repr()`): never call it with loop state borrowed.
pub(crate) fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<FdArg> {
    let py = fileobj.py();
    let fd = if fileobj.is_instance_of::<PyInt>() {
        fileobj.clone()
    } else {
        match fileobj
            .call_method0(pyo3::intern!(py, "fileno"))
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
        {
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
    let negative = match fd.extract::<i64>() {
        Ok(n) => n < 0,
        // Beyond 64 bits: only the sign matters.
        Err(_) => fd.lt(0)?,
    };
    if negative {
        let text = PyString::new(py, "{}").call_method1(pyo3::intern!(py, "format"), (&fd,))?;
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {text}"
        )));
    }
    Ok(fd
        .extract::<i64>()
        .ok()
        .and_then(|n| RawFd::try_from(n).ok())
        .map_or(FdArg::TooBig, FdArg::Fd))
}

/// What [`LoopCore::unwatch`] took out of the registry. Everything in it is
/// released by the caller after the state borrow ends (dropping a `Py` may run
/// Python code).
#[derive(Default)]
pub(crate) struct Unwatched {
    /// The callback removed.
    pub(crate) handle: Option<Watcher>,
    /// The whole registration, when it went away.
    pub(crate) rest: Option<FdWatch>,
    /// The kernel refused to change the registration (which is dropped then).
    pub(crate) error: Option<std::io::Error>,
}

/// What `watch` leaves to release or raise once the state borrow ends.
#[derive(Default)]
struct Watched {
    /// The callback replaced (cancelled on success, as asyncio does).
    old: Option<Watcher>,
    /// A registration dropped because the kernel refused it, or a value not stored.
    dropped: Option<FdWatch>,
    error: Option<std::io::Error>,
}

impl LoopCore {
    /// `selectors._BaseSelectorImpl._fileobj_lookup`: the fd of `fileobj`, or,
    /// when it has none any more (a closed socket's `fileno()` is -1), the fd this
    /// very object was registered with. Runs Python code before borrowing.
    pub(crate) fn lookup_fd(&self, fileobj: &Bound<'_, PyAny>) -> PyResult<FdArg> {
        let py = fileobj.py();
        match fileobj_to_fd(fileobj) {
            Err(e) if e.is_instance_of::<PyValueError>(py) => {
                let target = fileobj.as_ptr();
                let found = self.state.try_borrow_mut(py)?.fds.find(|w| {
                    w.fileobj
                        .as_ref()
                        .is_some_and(|o| std::ptr::eq(o.as_ptr(), target))
                });
                found.map(FdArg::Fd).ok_or(e)
            }
            other => other,
        }
    }

    /// Removes one callback of `fd`; unregisters the fd when none is left.
    pub(super) fn unwatch(&self, st: &mut State, fd: RawFd, direction: Direction) -> Unwatched {
        let token = st.fds.token(fd);
        let Some(watch) = st.fds.get_mut(fd) else {
            return Unwatched::default();
        };
        let handle = match direction {
            Direction::Read => watch.reader.take(),
            Direction::Write => watch.writer.take(),
        };
        let interest = watch.interest();
        if interest.is_empty() {
            let rest = st.fds.remove(fd);
            // CPython: EpollSelector.unregister ignores OSError (the fd may be closed).
            let _ = self.poller.delete(fd);
            return Unwatched {
                handle,
                rest,
                error: None,
            };
        }
        match self.poller.modify(fd, token.unwrap_or_default(), interest) {
            Ok(()) => Unwatched {
                handle,
                rest: None,
                error: None,
            },
            // CPython: EpollSelector.modify drops the key and raises.
            Err(e) => Unwatched {
                handle,
                rest: st.fds.remove(fd),
                error: Some(e),
            },
        }
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
        Self::watch(slf, fd, None, callback, args, direction)
    }

    /// `add_fd_callback` that remembers the file object (not an int) it was given,
    /// to be found by identity once it is closed (asyncio's `SelectorKey.fileobj`).
    pub(super) fn watch<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        fileobj: Option<&Bound<'py, PyAny>>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        slf.get().check_closed()?;
        let handle = Bound::new(py, Self::handle_for(slf, callback, args, None)?)?;
        let watcher = Watcher::Handle(handle.clone().unbind());
        Self::install(slf, fd, fileobj, watcher, direction)?;
        Ok(handle)
    }

    /// Watches a native transport's own fd: its readiness is queued as the
    /// transport's event, with no handle (see `Transport::watch`).
    pub(crate) fn watch_transport(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        transport: &Bound<'_, Transport>,
        direction: Direction,
    ) -> PyResult<()> {
        slf.get().check_closed()?;
        let watcher = Watcher::Transport(transport.clone().unbind());
        Self::install(slf, fd, None, watcher, direction)
    }

    /// Puts `watcher` in the registry for `fd` and `direction`, telling the kernel.
    fn install(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        fileobj: Option<&Bound<'_, PyAny>>,
        watcher: Watcher,
        direction: Direction,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let new = Some(watcher);
        let outcome = {
            let mut st = this.state.try_borrow_mut(py)?;
            let st = &mut *st;
            let token = st.fds.token(fd);
            if let Some(watch) = st.fds.get_mut(fd) {
                let before = watch.interest();
                let old = match direction {
                    Direction::Read => std::mem::replace(&mut watch.reader, new),
                    Direction::Write => std::mem::replace(&mut watch.writer, new),
                };
                let interest = watch.interest();
                // CPython: EpollSelector.modify calls epoll only when the events
                // change, and on failure drops the key (the callbacks it had are
                // not cancelled) and raises.
                let changed = if interest == before {
                    Ok(())
                } else {
                    this.poller.modify(fd, token.unwrap_or_default(), interest)
                };
                match changed {
                    Ok(()) => Watched {
                        old,
                        ..Watched::default()
                    },
                    Err(e) => Watched {
                        old,
                        dropped: st.fds.remove(fd),
                        error: Some(e),
                    },
                }
            } else {
                let mut watch = FdWatch {
                    fileobj: fileobj.map(|o| o.clone().unbind()),
                    ..FdWatch::default()
                };
                match direction {
                    Direction::Read => watch.reader = new,
                    Direction::Write => watch.writer = new,
                }
                // Ask the kernel first: an fd it refuses (closed, 2**31 - 1) costs
                // nothing in the registry.
                let added = match st.fds.vacant_token(fd) {
                    Some(token) => this.poller.add(fd, token, watch.interest()).map(|()| token),
                    None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
                };
                match added {
                    Ok(token) => match st.fds.insert(fd, watch) {
                        Ok(stored) => {
                            debug_assert_eq!(stored, token);
                            Watched::default()
                        }
                        Err(watch) => Watched {
                            dropped: Some(watch),
                            ..Watched::default()
                        },
                    },
                    Err(e) => Watched {
                        old: None,
                        dropped: Some(watch),
                        error: Some(e),
                    },
                }
            }
        };
        drop(outcome.dropped);
        if let Some(err) = outcome.error {
            drop(outcome.old);
            return Err(os_error(&err));
        }
        if let Some(old) = outcome.old {
            old.cancel(py, direction)?;
        }
        Ok(())
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
        let unwatched = {
            let mut st = this.state.try_borrow_mut(py)?;
            this.unwatch(&mut st, fd, direction)
        };
        let Unwatched {
            handle,
            rest,
            error,
        } = unwatched;
        drop(rest);
        if let Some(err) = error {
            // CPython raises before cancelling the callback.
            drop(handle);
            return Err(os_error(&err));
        }
        match handle {
            Some(handle) => {
                handle.cancel(py, direction)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// asyncio's `_add_reader`/`_add_writer` with the file object as given.
    pub(super) fn add_fileobj_callback<'py>(
        slf: &Bound<'py, Self>,
        fileobj: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        direction: Direction,
    ) -> PyResult<Bound<'py, Handle>> {
        let this = slf.get();
        // CPython: _check_closed() comes before the file object is looked at.
        this.check_closed()?;
        let fd = this.lookup_fd(fileobj)?.for_kernel()?;
        // The selector reaches the kernel unless the callback only replaces another.
        if !this.is_watching(slf.py(), fd, direction) {
            crate::py::warn_bool_fd(fileobj)?;
        }
        let keep = (!fileobj.is_instance_of::<PyInt>()).then_some(fileobj);
        Self::watch(slf, fd, keep, callback, args, direction)
    }

    /// asyncio's `_remove_reader`/`_remove_writer` with the file object as given.
    pub(super) fn remove_fileobj_callback(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        direction: Direction,
    ) -> PyResult<bool> {
        let this = slf.get();
        // CPython: a closed loop answers False before the file object is looked at.
        if this.closed() {
            return Ok(false);
        }
        match this.lookup_fd(fileobj)? {
            FdArg::Fd(fd) => {
                // The selector reaches the kernel when the interest changes.
                if this.is_watching(slf.py(), fd, direction) {
                    crate::py::warn_bool_fd(fileobj)?;
                }
                Self::remove_fd_callback(slf, fd, direction)
            }
            FdArg::TooBig => Ok(false),
        }
    }

    pub(crate) fn is_watching(&self, py: Python<'_>, fd: RawFd, direction: Direction) -> bool {
        let st = self.state.borrow_mut(py);
        st.fds.get(fd).is_some_and(|w| match direction {
            Direction::Read => w.reader.is_some(),
            Direction::Write => w.writer.is_some(),
        })
    }
}

//! `loop._transports`: which transport uses which fd, holding each weakly.
//!
//! asyncio keeps a `weakref.WeakValueDictionary` that every socket transport's
//! `__init__` writes to (`loop._transports[fd] = self`) and that
//! `_ensure_fd_no_transport` and `_sendfile_native` read and edit. Its
//! `__setitem__` and the callback that removes a dead entry are Python code, run
//! for every connection (about 3,000 instructions of a connection's life on
//! oxloop). This is the same mapping in Rust: a plain weak reference per entry, no
//! callback; an entry whose transport is gone reads as absent and is dropped when
//! it is next looked at or its number is reused (fds are small integers, so the
//! table is bounded by the highest fd used).

use std::collections::HashMap;

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil::GilRefCell;

#[pyclass(frozen, module = "oxloop._oxloop", name = "TransportMap")]
pub struct TransportMap {
    /// fd -> a weak reference to the transport.
    entries: GilRefCell<HashMap<i64, Py<PyAny>>>,
}

impl TransportMap {
    /// The live transport registered for `fd`; a dead entry is dropped.
    pub(crate) fn lookup<'py>(&self, py: Python<'py>, fd: i64) -> Option<Bound<'py, PyAny>> {
        let weak = self.entries.borrow_mut(py).get(&fd)?.clone_ref(py);
        match upgrade(weak.bind(py)) {
            Some(transport) => Some(transport),
            None => {
                let dead = self.entries.borrow_mut(py).remove(&fd);
                drop(dead); // outside the borrow: dropping may run Python code
                None
            }
        }
    }

    /// `map[fd] = transport`.
    pub(crate) fn insert(&self, fd: i64, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = transport.py();
        // A type that takes no weak references: TypeError, as asyncio's dict raises.
        let weak = PyWeakrefReference::new(transport)?.into_any();
        let old = self.entries.borrow_mut(py).insert(fd, weak.unbind());
        drop(old);
        Ok(())
    }

    /// Live entries, dead ones dropped.
    fn live<'py>(&self, py: Python<'py>) -> Vec<(i64, Bound<'py, PyAny>)> {
        let entries: Vec<(i64, Py<PyAny>)> = self
            .entries
            .borrow_mut(py)
            .iter()
            .map(|(fd, weak)| (*fd, weak.clone_ref(py)))
            .collect();
        let mut live = Vec::with_capacity(entries.len());
        for (fd, weak) in entries {
            match upgrade(weak.bind(py)) {
                Some(transport) => live.push((fd, transport)),
                None => drop(self.entries.borrow_mut(py).remove(&fd)),
            }
        }
        live.sort_by_key(|(fd, _)| *fd);
        live
    }
}

/// The referent of a weak reference, if alive.
fn upgrade<'py>(weak: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    weak.cast::<PyWeakrefReference>().ok()?.upgrade()
}

/// The key as asyncio's dict would take it: fds are ints.
fn key(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    obj.extract::<i64>()
        .map_err(|_| PyKeyError::new_err(obj.clone().unbind()))
}

#[pymethods]
impl TransportMap {
    #[new]
    fn new() -> Self {
        Self {
            entries: GilRefCell::new(HashMap::new()),
        }
    }

    fn __getitem__<'py>(&self, fd: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = fd.py();
        self.lookup(py, key(fd)?)
            .ok_or_else(|| PyKeyError::new_err(fd.clone().unbind()))
    }

    fn __setitem__(&self, fd: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        self.insert(key(fd)?, transport)
    }

    fn __delitem__(&self, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = fd.py();
        let fd_key = key(fd)?;
        if self.lookup(py, fd_key).is_none() {
            return Err(PyKeyError::new_err(fd.clone().unbind()));
        }
        let old = self.entries.borrow_mut(py).remove(&fd_key);
        drop(old);
        Ok(())
    }

    fn __contains__(&self, fd: &Bound<'_, PyAny>) -> bool {
        key(fd).is_ok_and(|k| self.lookup(fd.py(), k).is_some())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.live(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.into_any().try_iter().map(Bound::into_any)
    }

    #[pyo3(signature = (fd, default=None))]
    fn get<'py>(
        &self,
        fd: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> Bound<'py, PyAny> {
        let py = fd.py();
        key(fd)
            .ok()
            .and_then(|k| self.lookup(py, k))
            .or(default)
            .unwrap_or_else(|| py.None().into_bound(py))
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py).into_iter().map(|(fd, _)| fd))
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py).into_iter().map(|(_, t)| t))
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.live(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: called by the GC only.
        if let Some(entries) = unsafe { self.entries.try_get_for_gc() } {
            for weak in entries.values() {
                visit.call(weak)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let entries = std::mem::take(&mut *self.entries.borrow_mut(py));
        drop(entries);
    }
}

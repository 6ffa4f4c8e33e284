//! Interior mutability guarded by the GIL.
//!
//! The loop's state is touched from the loop thread and, for
//! `call_soon_threadsafe`, from other threads — always with the GIL held. These
//! cells make that rule the type's contract: every accessor takes a `Python<'_>`
//! token. The module declares `gil_used = true` (`lib.rs`), so a free-threaded
//! build turns the GIL back on when it imports us and the rule still holds;
//! `python/oxloop/__init__.py` refuses to import when `PYTHON_GIL=0` keeps it off.
//!
//! Ownership rule for the whole crate: **never hold a borrow across a call into
//! Python** (including dropping a `Py`, which can run `__del__`): user code may
//! re-enter the loop. `GilRefCell` checks it at run time; `GilCell` never hands out
//! a reference at all.

use std::cell::{RefCell, RefMut, UnsafeCell};

use pyo3::prelude::*;

/// A cell whose value is only swapped or cloned, never borrowed, under the GIL.
pub struct GilCell<T>(UnsafeCell<T>);

// SAFETY: every method that reads or writes the value takes a `Python` token, so
// accesses are serialised by the GIL; none of them runs Python code or lets a
// reference escape, so no access can interleave with another.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Stores `value` and returns the old one (to be dropped by the caller, outside
    /// any borrow).
    pub fn replace(&self, _py: Python<'_>, value: T) -> T {
        // SAFETY: GIL held (token), no outstanding reference (see type docs).
        unsafe { std::mem::replace(&mut *self.0.get(), value) }
    }

    /// Reads the value for the garbage collector's traversal.
    ///
    /// # Safety
    /// Only from `__traverse__`: the GC runs with the GIL held and cannot interrupt
    /// an accessor of this cell, as none of them allocates Python objects.
    pub unsafe fn get_for_gc(&self) -> &T {
        // SAFETY: the caller upholds the contract above.
        unsafe { &*self.0.get() }
    }
}

impl<T: Copy> GilCell<T> {
    /// A copy of the value.
    pub fn get(&self, _py: Python<'_>) -> T {
        // SAFETY: GIL held; a plain read of a `Copy` value.
        unsafe { *self.0.get() }
    }
}

impl<T> GilCell<Option<Py<T>>> {
    /// A new reference to the stored object, if any.
    pub fn clone_ref(&self, py: Python<'_>) -> Option<Py<T>> {
        // SAFETY: GIL held; `clone_ref` is an incref and runs no Python code.
        unsafe { (*self.0.get()).as_ref().map(|o| o.clone_ref(py)) }
    }

    /// True when the cell holds an object.
    pub fn is_some(&self, _py: Python<'_>) -> bool {
        // SAFETY: GIL held; a plain read.
        unsafe { (*self.0.get()).is_some() }
    }
}

impl<T> GilCell<Option<std::sync::Arc<T>>> {
    /// A new handle on the stored value, if any.
    pub fn clone_arc(&self, _py: Python<'_>) -> Option<std::sync::Arc<T>> {
        // SAFETY: GIL held; cloning an `Arc` runs no Python code.
        unsafe { (*self.0.get()).clone() }
    }
}

/// A `RefCell` that may live in a `Sync` pyclass because the GIL guards it.
pub struct GilRefCell<T>(RefCell<T>);

// SAFETY: all borrows go through methods that take a `Python` token, so they are
// serialised by the GIL; the RefCell's own flag catches re-entrant borrows.
unsafe impl<T: Send> Sync for GilRefCell<T> {}

impl<T> GilRefCell<T> {
    pub fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    /// Borrows mutably. Panics (as a `PanicException`, never an abort) when
    /// already borrowed, which would be a bug in this crate.
    pub fn borrow_mut<'a>(&'a self, _py: Python<'a>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }

    /// Borrows mutably, or raises `RuntimeError` when already borrowed (Python code
    /// that re-entered the loop while it held its state): for entry points that
    /// return `PyResult`, so such a bug is an exception and not a `PanicException`.
    pub fn try_borrow_mut<'a>(&'a self, _py: Python<'a>) -> PyResult<RefMut<'a, T>> {
        self.0.try_borrow_mut().map_err(|_| {
            pyo3::exceptions::PyRuntimeError::new_err(
                "oxloop: loop state re-entered while in use (a bug in oxloop)",
            )
        })
    }

    /// Reads the value for the garbage collector, unless it is borrowed right now.
    ///
    /// # Safety
    /// Only from `__traverse__` (the GC runs with the GIL held).
    pub unsafe fn try_get_for_gc(&self) -> Option<&T> {
        // SAFETY: the caller upholds the contract; `try_borrow_unguarded` fails
        // when a mutable borrow is live.
        unsafe { self.0.try_borrow_unguarded().ok() }
    }
}

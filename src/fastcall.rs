//! Raw `METH_FASTCALL | METH_KEYWORDS` entry points for the scheduling methods.
//!
//! `call_soon` is the hottest call of any asyncio program: the C `Task` calls
//! `loop.call_soon(step, context=ctx)` for every step. PyO3's generic argument
//! extraction costs about 250 instructions per call with a keyword (callgrind,
//! `sleep(0)` ping-pong); this parser, specialised to the shape `(fixed..., *args,
//! context=None)`, costs a fraction of that. The methods are installed on
//! `LoopCore` at module init, replacing the `#[pymethods]` versions, which remain
//! as the reference implementation of the same logic (both call the same Rust).

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::Borrowed;

use crate::event_loop::LoopCore;

/// Positional-or-keyword parameters, then `*args`, then keyword-only `context`.
/// The arguments stay borrowed from the call's vector (no reference counting): a
/// handle takes its own references when it is built.
struct Parsed<'a, 'py> {
    fixed: [Option<Borrowed<'a, 'py, PyAny>>; 2],
    args: Bound<'py, PyTuple>,
    context: Option<Borrowed<'a, 'py, PyAny>>,
}

/// Parses a vectorcall argument vector.
///
/// # Safety
/// `args` holds `nargs` positional arguments followed by `len(kwnames)` keyword
/// values, all borrowed references valid for the call (CPython's contract).
/// Inlined: the parameter names are constants at each call site.
#[inline(always)]
unsafe fn parse<'a, 'py>(
    py: Python<'py>,
    method: &str,
    names: &[&str],
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Parsed<'a, 'py>> {
    let nargs = usize::try_from(nargs).unwrap_or(0);
    let at = |i: usize| -> Borrowed<'a, 'py, PyAny> {
        // SAFETY: i < nargs + len(kwnames), per the caller's contract: a live,
        // non-null reference borrowed for the call, which outlives 'a.
        unsafe { Borrowed::from_ptr(py, *args.add(i)) }
    };
    let mut fixed: [Option<Borrowed<'a, 'py, PyAny>>; 2] = [None, None];
    for (i, slot) in fixed.iter_mut().enumerate().take(names.len().min(nargs)) {
        *slot = Some(at(i));
    }
    let extra = if nargs > names.len() {
        PyTuple::new(py, (names.len()..nargs).map(at))?
    } else {
        PyTuple::empty(py)
    };
    let mut context = None;
    if !kwnames.is_null() && std::ptr::eq(kwnames, CONTEXT_KWNAMES.load(Ordering::Relaxed)) {
        // The C Task's `("context",)`, seen before: no name to compare.
        context = Some(at(nargs));
    } else if !kwnames.is_null() {
        // SAFETY: kwnames is a tuple of str, borrowed for the call.
        let count = unsafe { ffi::PyTuple_GET_SIZE(kwnames) };
        let interned = pyo3::intern!(py, "context").as_ptr();
        for k in 0..count {
            // SAFETY: k < len(kwnames); a borrowed str.
            let name = unsafe { ffi::PyTuple_GET_ITEM(kwnames, k) };
            let value = at(nargs + usize::try_from(k).unwrap_or(0));
            // `context=` (the C Task passes it on every step, in a tuple of its
            // own that is not interned): an identity check with the interned name,
            // else the str's UTF-8 view (its own data for an ASCII str), before the
            // general path.
            if std::ptr::eq(name, interned) || is_context_name(name) {
                context = Some(value);
                continue;
            }
            // SAFETY: as above, borrowed for the call.
            let name = unsafe { Bound::from_borrowed_ptr(py, name) }.cast_into::<PyString>()?;
            let text = name.to_str()?;
            if let Some(i) = names.iter().position(|n| *n == text) {
                if fixed[i].is_some() || nargs > i {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got multiple values for argument '{text}'"
                    )));
                }
                fixed[i] = Some(value);
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{text}'"
                )));
            }
        }
        if count == 1 && context.is_some() {
            // SAFETY: kwnames is a live tuple, exactly `("context",)`.
            unsafe { remember_context_kwnames(kwnames) };
        }
    }
    if let Some(i) = fixed.iter().take(names.len()).position(Option::is_none) {
        return Err(PyTypeError::new_err(format!(
            "{method}() missing required positional argument: '{}'",
            names[i]
        )));
    }
    Ok(Parsed {
        fixed,
        args: extra,
        context,
    })
}

/// The last `kwnames` tuple seen that is exactly `("context",)`: the C Task passes
/// the same one (its own, not interned) on every step. Held by a strong reference,
/// so that no other tuple can be allocated at its address; tuples are immutable.
static CONTEXT_KWNAMES: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Makes `kwnames` the remembered `("context",)` tuple.
///
/// # Safety
/// GIL held; `kwnames` is a live tuple equal to `("context",)`.
unsafe fn remember_context_kwnames(kwnames: *mut ffi::PyObject) {
    // SAFETY: GIL held (it also serialises the swap); the old tuple's reference is
    // ours, and freeing a tuple of str runs no Python code.
    unsafe {
        ffi::Py_INCREF(kwnames);
        let old = CONTEXT_KWNAMES.swap(kwnames, Ordering::Relaxed);
        if !old.is_null() {
            ffi::Py_DECREF(old);
        }
    }
}

/// `name == "context"` for a keyword name.
fn is_context_name(name: *mut ffi::PyObject) -> bool {
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: `name` is a live str (CPython's contract for kwnames); the UTF-8
    // view lives as long as the str, and is read at once. A failure (a lone
    // surrogate) is cleared and answered by the general path.
    unsafe {
        let data = ffi::PyUnicode_AsUTF8AndSize(name, &mut len);
        if data.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        len == 7 && std::slice::from_raw_parts(data.cast::<u8>(), 7) == b"context"
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in oxloop".to_owned())
}

/// Runs `body` with the GIL token, turning errors and panics into a NULL return
/// with the exception set.
///
/// # Safety
/// Called by CPython with the GIL held, `slf` a live `LoopCore` instance (the
/// method descriptor guarantees the type).
unsafe fn trampoline(
    slf: *mut ffi::PyObject,
    body: impl for<'py> FnOnce(&Bound<'py, LoopCore>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the thread attached (GIL held).
    let py = unsafe { Python::assume_attached() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `slf` is a live, borrowed instance of LoopCore (see above).
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>() };
        crate::ffi::hang_on_forced_unwind(|| body(&slf))
    }));
    match result {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            pyo3::panic::PanicException::new_err(panic_message(&*payload)).restore(py);
            std::ptr::null_mut()
        }
    }
}

macro_rules! fastcall_method {
    ($fn_name:ident, $method:literal, [$($param:literal),*], |$slf:ident, $p:ident| $body:expr) => {
        unsafe extern "C" fn $fn_name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython's METH_FASTCALL|METH_KEYWORDS contract (see `parse`).
            unsafe {
                trampoline(slf, |$slf| {
                    let $p = parse($slf.py(), $method, &[$($param),*], args, nargs, kwnames)?;
                    $body
                })
            }
        }
    };
}

fn fixed<'a, 'py>(p: &Parsed<'a, 'py>, i: usize) -> PyResult<Borrowed<'a, 'py, PyAny>> {
    p.fixed[i].ok_or_else(|| PyValueError::new_err("missing argument"))
}

fastcall_method!(call_soon, "call_soon", ["callback"], |slf, p| {
    LoopCore::queue_new_handle(
        slf,
        &*fixed(&p, 0)?,
        p.args,
        p.context.as_deref(),
        "call_soon",
        false,
    )
    .map(Bound::into_any)
});

fastcall_method!(
    call_soon_threadsafe,
    "call_soon_threadsafe",
    ["callback"],
    |slf, p| {
        LoopCore::queue_new_handle(
            slf,
            &*fixed(&p, 0)?,
            p.args,
            p.context.as_deref(),
            "call_soon_threadsafe",
            true,
        )
        .map(Bound::into_any)
    }
);

fastcall_method!(call_later, "call_later", ["delay", "callback"], |slf, p| {
    LoopCore::call_later(
        slf,
        &*fixed(&p, 0)?,
        &*fixed(&p, 1)?,
        p.args,
        p.context.map(|c| c.to_owned()),
    )
    .map(Bound::into_any)
});

fastcall_method!(call_at, "call_at", ["when", "callback"], |slf, p| {
    LoopCore::call_at(
        slf,
        &*fixed(&p, 0)?,
        &*fixed(&p, 1)?,
        p.args,
        p.context.map(|c| c.to_owned()),
    )
    .map(Bound::into_any)
});

type FastFn = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

const METHODS: [(&CStr, &str, FastFn); 4] = [
    (c"call_soon", "call_soon", call_soon),
    (
        c"call_soon_threadsafe",
        "call_soon_threadsafe",
        call_soon_threadsafe,
    ),
    (c"call_later", "call_later", call_later),
    (c"call_at", "call_at", call_at),
];

/// Installs the fast entry points on `LoopCore`, keeping each method's docstring.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let ty = py.get_type::<LoopCore>();
    for (cname, name, func) in METHODS {
        // Rebuild "name(signature)\n--\n\ndoc" so that CPython derives
        // `__text_signature__` (and `inspect.signature`) as for the PyO3 method.
        let original = ty.getattr(name)?;
        let signature: Option<String> = original.getattr("__text_signature__")?.extract()?;
        let doc: Option<String> = original.getattr("__doc__")?.extract()?;
        let text = match signature {
            Some(sig) => format!("{name}{sig}\n--\n\n{}", doc.unwrap_or_default()),
            None => doc.unwrap_or_default(),
        };
        // Leaked once per method at import: the method table must be 'static.
        let doc: *const c_char = std::ffi::CString::new(text).map_or(std::ptr::null(), |c| {
            Box::leak(c.into_boxed_c_str()).as_ptr()
        });
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: cname.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: func,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc,
        }));
        // SAFETY: `def` is 'static; the type object is alive (we hold `ty`).
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
        };
        ty.setattr(name, descr)?;
    }
    Ok(())
}

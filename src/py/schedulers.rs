//! `PermissiveScheduler` and `SafetyScheduler`, and what all the built-in
//! schedulers share (fast-path detection, attribute patching, pickling).
//!
//! Instances of the exact classes take a native fast path; a Python subclass
//! (or an instance whose attributes were patched) goes through normal
//! attribute dispatch, so overriding `allocate` or `_check_resources` works
//! exactly as with the reference.

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};
use pyo3::PyTraverseError;
use pyo3::PyTypeInfo;
use std::sync::atomic::{AtomicBool, Ordering};

use super::errors::describe;
use super::inputs::safety_check;

/// A scheduler that remembers whether anything was ever set on its
/// instance `__dict__` (e.g. `mock.patch.object(scheduler, "allocate")`).
pub trait Patchable {
    fn patched(&self) -> &AtomicBool;
}

/// True when `slf` is an instance of exactly `T` and nothing was ever set on
/// its instance: then calling the Rust implementation directly is what
/// attribute lookup would do. Anything else (a Python subclass, a patched
/// instance) goes through normal dispatch, as with the reference.
pub fn is_pristine<
    T: PyTypeInfo + pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Patchable + Sync,
>(
    slf: &Bound<'_, T>,
) -> PyResult<bool> {
    Ok(slf.as_any().get_type().is(T::type_object(slf.py()))
        && !slf.get().patched().load(Ordering::Relaxed))
}

/// `object.__setattr__` / `object.__delattr__` after flagging the instance.
pub fn set_instance_attr(
    slf: &Bound<'_, PyAny>,
    patched: &AtomicBool,
    name: &Bound<'_, PyAny>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    patched.store(true, Ordering::Relaxed);
    let value_ptr = value.map_or(std::ptr::null_mut(), |v| v.as_ptr());
    // SAFETY: `slf` and `name` are live objects borrowed for the whole call
    // (we hold the GIL), and `value_ptr` is either a live object borrowed the
    // same way or NULL, which `PyObject_GenericSetAttr` documents as
    // "delete the attribute". It does not steal references. It is the
    // generic instance-dict setter that `object.__setattr__` would run; we
    // call it directly because `object.__setattr__` refuses (the "Carlo
    // Verre" check) to act on a type that overrides `__setattr__`.
    let status =
        unsafe { pyo3::ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value_ptr) };
    if status != 0 {
        return Err(PyErr::fetch(slf.py()));
    }
    Ok(())
}

pub fn require_callable(field: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if value.is_callable() {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{field} must be callable (returning a stats mapping), got {}",
            describe(value)
        )))
    }
}

/// Pickle support: `(type(self), args, self.__dict__ or None)`; a Python
/// subclass's attributes travel in the state.
pub fn reduce<'py>(
    slf: &Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let state = match slf.getattr(intern!(py, "__dict__")) {
        Ok(state) => state,
        Err(_) => py.None().into_bound(py),
    };
    Ok((slf.get_type(), args, state).into_pyobject(py)?.into_any())
}

/// What the reference's default `allocate_async` does once it has the stats:
/// `self.allocate(plugin_meta, lambda: stats)`.
fn allocate_with_stats<'py>(
    slf: &Bound<'py, PyAny>,
    plugin_meta: &Bound<'py, PyAny>,
    stats: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let fixed = Bound::new(
        py,
        FixedStats {
            stats: stats.unbind(),
        },
    )?;
    slf.call_method1(intern!(py, "allocate"), (plugin_meta, fixed))
}

/// `lambda: stats` for a subclass's `allocate` called from `allocate_async`.
#[pyclass(module = "plugin_scheduling", frozen, name = "FixedStats")]
pub struct FixedStats {
    stats: Py<PyAny>,
}

#[pymethods]
impl FixedStats {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.stats)
    }

    #[new]
    fn new(stats: Py<PyAny>) -> Self {
        Self { stats }
    }

    fn __call__(&self, py: Python<'_>) -> Py<PyAny> {
        self.stats.clone_ref(py)
    }
}

/// Attribute setting and deleting for a built-in scheduler class `$ty` (which
/// has a `patched: AtomicBool` field) that flag the instance as patched (see
/// [`is_pristine`]). A separate `#[pymethods]` block (pyo3's
/// `multiple-pymethods`), so each class keeps its own methods in plain code.
macro_rules! patchable {
    ($ty:ident) => {
        impl $crate::py::schedulers::Patchable for $ty {
            fn patched(&self) -> &::std::sync::atomic::AtomicBool {
                &self.patched
            }
        }

        #[::pyo3::pymethods]
        impl $ty {
            fn __setattr__(
                slf: &::pyo3::Bound<'_, Self>,
                name: &::pyo3::Bound<'_, ::pyo3::PyAny>,
                value: &::pyo3::Bound<'_, ::pyo3::PyAny>,
            ) -> ::pyo3::PyResult<()> {
                $crate::py::schedulers::set_instance_attr(
                    slf.as_any(),
                    &slf.get().patched,
                    name,
                    Some(value),
                )
            }

            fn __delattr__(
                slf: &::pyo3::Bound<'_, Self>,
                name: &::pyo3::Bound<'_, ::pyo3::PyAny>,
            ) -> ::pyo3::PyResult<()> {
                $crate::py::schedulers::set_instance_attr(
                    slf.as_any(),
                    &slf.get().patched,
                    name,
                    None,
                )
            }
        }
    };
}
pub(crate) use patchable;

/// What a scheduler with no state of its own (the seed's Permissive and
/// Safety) shares: constructor, no-op lifecycle hooks, pickling, and
/// `_allocate_with_stats` deciding natively with `$decide(plugin_meta, stats)`.
macro_rules! stateless_scheduler {
    ($ty:ident, decide = $decide:expr) => {
        patchable!($ty);

        #[pymethods]
        impl $ty {
            // Accepts anything so a Python subclass's own `__init__` arguments
            // pass through `__new__`, as with a plain Python class; `__init__`
            // checks them.
            #[new]
            #[pyo3(signature = (*_args, **_kwargs), text_signature = "()")]
            fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
                Self {
                    patched: AtomicBool::new(false),
                }
            }

            fn __init__(&self) {}

            fn _allocate_with_stats<'py>(
                slf: &Bound<'py, Self>,
                plugin_meta: &Bound<'py, PyAny>,
                stats: Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                if is_pristine::<Self>(slf)? {
                    let allowed: bool = ($decide)(plugin_meta, &stats)?;
                    return Ok(PyBool::new(slf.py(), allowed).to_owned().into_any());
                }
                allocate_with_stats(slf.as_any(), plugin_meta, stats)
            }

            fn on_execution_start(&self, plugin_name: &Bound<'_, PyAny>) {
                let _ = plugin_name;
            }

            fn on_execution_finish(&self, plugin_name: &Bound<'_, PyAny>) {
                let _ = plugin_name;
            }

            fn __repr__(&self) -> &'static str {
                concat!(stringify!($ty), "()")
            }

            fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                reduce(slf.as_any(), PyTuple::empty(slf.py()))
            }
        }
    };
}

/// Allows every execution (development / default mode), as the
/// reference's `PermissiveScheduler`: `allocate` is always `True` and never
/// calls the stats provider. No options.
#[pyclass(module = "plugin_scheduling", subclass, frozen, dict, weakref)]
pub struct PermissiveScheduler {
    patched: AtomicBool,
}

stateless_scheduler!(PermissiveScheduler, decide = always_allowed);

fn always_allowed(_plugin_meta: &Bound<'_, PyAny>, _stats: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(true)
}

#[pymethods]
impl PermissiveScheduler {
    /// Always `True`; the stats provider is not called.
    fn allocate(&self, plugin_meta: &Bound<'_, PyAny>, stats_provider: &Bound<'_, PyAny>) -> bool {
        let _ = (plugin_meta, stats_provider);
        true
    }
}

/// Blocks a plugin whose declared VRAM / RAM exceeds what the stats show,
/// as the reference's `SafetyScheduler`: one check, no waiting, no state.
/// No options. It prints the reference's lines (a warning when the stats
/// have no GPU figures — then it allows; what was needed and free when it
/// blocks). Declared needs are `manifest["resources"]["min_gpu_vram_mb"]`
/// and `["min_system_ram_mb"]`.
#[pyclass(module = "plugin_scheduling", subclass, frozen, dict, weakref)]
pub struct SafetyScheduler {
    patched: AtomicBool,
}

stateless_scheduler!(SafetyScheduler, decide = safety_check);

#[pymethods]
impl SafetyScheduler {
    /// Checks requirements, printing the seed's lines (no GPU stats: warns
    /// and allows; blocked: says what was needed and what was free).
    fn _check_resources(
        &self,
        plugin_meta: &Bound<'_, PyAny>,
        stats: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        safety_check(plugin_meta, stats)
    }

    fn allocate<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        require_callable("stats_provider", stats_provider)?;
        let stats = stats_provider.call0()?;
        if is_pristine::<Self>(slf)? {
            let allowed = safety_check(plugin_meta, &stats)?;
            return Ok(PyBool::new(py, allowed).to_owned().into_any());
        }
        slf.call_method1(intern!(py, "_check_resources"), (plugin_meta, stats))
    }
}

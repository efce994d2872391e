//! The thin Python half of the async paths (`plugin_scheduling/_drivers.py`).
//!
//! Awaiting the caller's coroutine is cheapest in a Python `async def` (no
//! exception-as-control-flow, no thread hop), so `allocate_async` hands the
//! awaiting to a small coroutine there and keeps every decision in Rust.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static DRIVERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn drivers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    DRIVERS
        .get_or_try_init(py, || {
            py.import("plugin_scheduling._drivers").map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// Calls `_drivers.<name>(*args)`; for a coroutine function this creates the
/// coroutine the caller awaits.
pub fn call<'py>(
    py: Python<'py>,
    name: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    drivers(py)?.getattr(name)?.call1(args)
}

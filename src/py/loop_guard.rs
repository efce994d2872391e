//! A blocking wait called from inside a running event loop freezes that
//! loop (every other task, every request) for the whole wait. Warn once per
//! scheduler, pointing to the async method that does not.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyRuntimeWarning;
use pyo3::intern;
use pyo3::prelude::*;

/// Before a blocking `allocate` first sleeps: when this thread runs an
/// asyncio event loop, issue a `RuntimeWarning` (once per `warned` flag)
/// naming the scheduler, the plugin and the bound of the wait. Raises only
/// when the warning filter turns warnings into errors.
pub fn warn_if_blocking_a_loop(
    py: Python<'_>,
    warned: &AtomicBool,
    scheduler: &str,
    plugin: &str,
    timeout: f64,
) -> PyResult<()> {
    if warned.load(Ordering::Relaxed) {
        return Ok(());
    }
    let running = py
        .import(intern!(py, "asyncio"))?
        .getattr(intern!(py, "_get_running_loop"))?
        .call0()?;
    if running.is_none() || warned.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    let message = format!(
        "{scheduler}.allocate() is waiting for resources for plugin {plugin} inside a running \
         event loop: the loop is blocked for the whole wait (up to timeout={timeout} s). \
         Use `await scheduler.allocate_async(plugin_meta, monitor.snapshot_async)` instead."
    );
    let message = std::ffi::CString::new(message.replace('\0', "\\0"))
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1)
}

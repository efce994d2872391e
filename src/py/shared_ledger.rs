//! Views of a shared ledger (`plugin_scheduling_core::reserve::shared`):
//! every process's grants and waiters, for `python -m plugin_scheduling
//! ledger`. Reading only: the file is neither created nor changed.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::errors::shared_error;
use plugin_scheduling_core::reserve::shared::{ledger_path, view_file};

/// The shared ledger `name` (a name under the per-user directory, or a path)
/// as a dict: `path`, `exists`, `policy` (the line's order, once written),
/// `grants` and `waiters` of live processes,
/// each with `pid` and `process` (its name).
#[pyfunction]
pub fn _shared_ledger_view<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    if name.is_empty() || name.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "name must be a ledger name or a path, got {name:?}"
        )));
    }
    let path = ledger_path(name).map_err(shared_error)?;
    let state = py.detach(|| view_file(&path)).map_err(shared_error)?;
    let out = PyDict::new(py);
    out.set_item("path", path.to_string_lossy().into_owned())?;
    out.set_item("exists", state.is_some())?;
    let grants = PyList::empty(py);
    let waiters = PyList::empty(py);
    out.set_item("policy", state.as_ref().and_then(|s| s.policy.clone()))?;
    if let Some(state) = state {
        for h in &state.grants {
            let g = PyDict::new(py);
            g.set_item("pid", h.owner.pid)?;
            g.set_item("process", h.owner.name())?;
            g.set_item("id", h.grant.id.0)?;
            g.set_item("plugin", &h.grant.plugin)?;
            g.set_item("devices", h.grant.devices.clone())?;
            g.set_item("vram_mb", h.grant.vram_mb)?;
            g.set_item("ram_mb", h.grant.ram_mb())?;
            g.set_item("started", h.grant.started)?;
            g.set_item("granted_at", h.grant.granted_at)?;
            grants.append(g)?;
        }
        for w in &state.waiters {
            let d = PyDict::new(py);
            d.set_item("pid", w.waker.owner.pid)?;
            d.set_item("process", w.waker.owner.name())?;
            d.set_item("id", w.id.0)?;
            d.set_item("plugin", &w.plugin)?;
            d.set_item("gpu_count", w.need.gpu_count)?;
            d.set_item("vram_mb", w.need.vram_mb)?;
            d.set_item("ram_mb", w.need.ram_mb())?;
            d.set_item("priority", w.job.priority)?;
            d.set_item("submitted", w.job.submitted)?;
            d.set_item("granted", w.granted.is_some())?;
            waiters.append(d)?;
        }
    }
    out.set_item("grants", grants)?;
    out.set_item("waiters", waiters)?;
    Ok(out)
}

//! plugin-scheduling: wiring only. The logic is in [`core`] (plain Rust);
//! [`py`] is the thin PyO3 layer that exposes it as `plugin_scheduling._core`.

pub mod core;
mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}

//! plugin-scheduling's Python binding: wiring only. The logic is in the
//! `plugin-scheduling-core` crate (plain Rust, no PyO3); [`py`] is the thin
//! PyO3 layer that exposes it as `plugin_scheduling._core`.

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}

//! PyO3 bindings: Python classes over [`plugin_scheduling_core`] and error mapping. The
//! async methods are thin Python coroutines (`_drivers.py`) over these.

mod control_plane;
mod errors;
mod inputs;
mod loop_guard;
mod policies;
mod queue;
mod quotas;
mod reservation;
mod reservation_inputs;
mod schedulers;
mod shared_ledger;
mod stats;
mod waiting;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<schedulers::PermissiveScheduler>()?;
    m.add_class::<schedulers::SafetyScheduler>()?;
    m.add_class::<queue::QueueScheduler>()?;
    m.add_class::<queue::QueueWaitState>()?;
    m.add_class::<schedulers::FixedStats>()?;
    m.add(
        "InvalidRequirement",
        py.get_type::<errors::InvalidRequirement>(),
    )?;
    m.add("InvalidManifest", py.get_type::<errors::InvalidManifest>())?;
    m.add("InvalidStats", py.get_type::<errors::InvalidStats>())?;
    m.add_class::<reservation::ReservationScheduler>()?;
    m.add_class::<reservation::ReservationWait>()?;
    m.add_class::<reservation::PyGrant>()?;
    m.add_class::<reservation::PyManualClock>()?;
    m.add_class::<reservation::PendingJob>()?;
    m.add_class::<policies::CorePolicy>()?;
    m.add_class::<stats::SystemMonitor>()?;
    m.add_class::<stats::SimulatedSystem>()?;
    m.add(
        "ReservationTimeout",
        py.get_type::<errors::ReservationTimeout>(),
    )?;
    m.add(
        "SimulatedOutOfMemory",
        py.get_type::<errors::SimulatedOutOfMemory>(),
    )?;
    m.add_class::<control_plane::SchedulingDecision>()?;
    m.add_function(wrap_pyfunction!(control_plane::_schedule_batch, m)?)?;
    m.add_function(wrap_pyfunction!(control_plane::_prioritize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(control_plane::_check_item, m)?)?;
    m.add_class::<quotas::PyQuotaBackend>()?;
    m.add("InvalidQuota", py.get_type::<errors::InvalidQuota>())?;
    m.add(
        "QuotaBackendError",
        py.get_type::<errors::QuotaBackendError>(),
    )?;
    m.add_function(wrap_pyfunction!(shared_ledger::_shared_ledger_view, m)?)?;
    m.add(
        "SharedLedgerError",
        py.get_type::<errors::SharedLedgerError>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

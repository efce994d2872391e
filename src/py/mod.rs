//! PyO3 bindings: Python classes over [`plugin_scheduling_core`] and error mapping. The
//! async methods are thin Python coroutines (`_drivers.py`) over these.

mod control_plane;
mod errors;
mod history;
mod inputs;
mod jobs;
mod loop_guard;
mod policies;
mod queue;
mod quotas;
mod reservation;
mod reservation_backend;
mod reservation_inputs;
mod schedulers;
mod shared_ledger;
mod sim;
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
    m.add_class::<jobs::JobTable>()?;
    m.add_class::<jobs::LoadedPlugins>()?;
    m.add_class::<history::MonitorHistory>()?;
    m.add(
        "METRICS_NAMES",
        plugin_scheduling_core::stats::history::METRICS.to_vec(),
    )?;
    m.add(
        "InvalidTransition",
        py.get_type::<errors::InvalidTransition>(),
    )?;
    m.add("UnknownJob", py.get_type::<errors::UnknownJob>())?;
    m.add("JournalError", py.get_type::<errors::JournalError>())?;
    m.add_class::<sim::SimTrace>()?;
    m.add_class::<sim::SimRun>()?;
    m.add_function(wrap_pyfunction!(sim::_load_trace, m)?)?;
    m.add_function(wrap_pyfunction!(sim::_generate_trace, m)?)?;
    m.add_function(wrap_pyfunction!(sim::_simulate, m)?)?;
    m.add_function(wrap_pyfunction!(sim::_metric_names, m)?)?;
    m.add_function(wrap_pyfunction!(shared_ledger::_shared_ledger_view, m)?)?;
    m.add(
        "SharedLedgerError",
        py.get_type::<errors::SharedLedgerError>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

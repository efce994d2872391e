//! `SystemMonitor` (live stats) and `SimulatedSystem` (scripted stats): both
//! callables returning the cjm `SystemStats` dict, so either is a
//! `stats_provider` for every scheduler.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;

use super::errors::{seconds, SimulatedOutOfMemory};
use plugin_scheduling_core::stats::monitor::{Monitor, DEFAULT_MIN_REFRESH};
use plugin_scheduling_core::stats::simulated::{ScriptedChange, SimError, SimulatedMachine};
use plugin_scheduling_core::stats::snapshot::Snapshot;

fn to_dict<'py>(py: Python<'py>, snapshot: &Snapshot) -> PyResult<Bound<'py, PyAny>> {
    Ok(pythonize::pythonize(py, &snapshot.system_stats())?)
}

/// Live stats of this machine: CPU and RAM from sysinfo, NVIDIA GPUs from
/// NVML (loaded at run time; no GPU or no driver gives `gpu_type == 'None'`
/// and `None` GPU figures). Calling it returns the cjm `SystemStats` dict.
#[pyclass(module = "plugin_scheduling", frozen, weakref)]
pub struct SystemMonitor {
    monitor: Arc<Monitor>,
}

#[pymethods]
impl SystemMonitor {
    #[new]
    #[pyo3(signature = (min_refresh = None))]
    fn new(min_refresh: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let min_refresh = match min_refresh {
            Some(value) => {
                let secs = seconds("min_refresh", value, false)?;
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    PyValueError::new_err(format!("min_refresh is too large: {secs} seconds"))
                })?
            }
            None => DEFAULT_MIN_REFRESH,
        };
        let monitor = Monitor::new(min_refresh).map_err(PyOSError::new_err)?;
        Ok(Self {
            monitor: Arc::new(monitor),
        })
    }

    /// Seconds a reading is reused before the machine is read again.
    #[getter]
    fn min_refresh(&self) -> f64 {
        self.monitor.min_refresh().as_secs_f64()
    }

    /// The stats dict; reads the machine (GIL released) unless the cached
    /// reading is younger than `min_refresh`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let monitor = Arc::clone(&self.monitor);
        let snapshot = py.detach(move || monitor.snapshot());
        to_dict(py, &snapshot)
    }

    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.snapshot(py)
    }

    /// The cached stats dict if still fresh, else `None` (never blocks on
    /// the machine; used by `snapshot_async` to skip the thread hop).
    fn _fresh<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.monitor
            .fresh()
            .map(|snapshot| to_dict(py, &snapshot))
            .transpose()
    }

    /// Forget the cached reading, so the next call reads the machine.
    fn invalidate(&self) {
        self.monitor.invalidate();
    }

    fn __repr__(&self) -> String {
        format!("SystemMonitor(min_refresh={})", self.min_refresh())
    }
}

fn sim_error(error: SimError) -> PyErr {
    let message = error.to_string();
    match error {
        SimError::UnknownDevice { .. } => PyIndexError::new_err(message),
        SimError::OutOfMemory { .. } => SimulatedOutOfMemory::new_err(message),
        SimError::InvalidAmount { .. } | SimError::FreeMoreThanUsed { .. } => {
            PyValueError::new_err(message)
        }
    }
}

fn device_index(device: i64) -> PyResult<usize> {
    usize::try_from(device)
        .map_err(|_| PyIndexError::new_err(format!("device must be >= 0, got {device}")))
}

/// A scripted machine: `gpus` lists each simulated GPU's total MB. RAM and
/// CPU are simulated too (`ram_total_mb`, `cpu_percent`), or taken live from
/// `host` (a `SystemMonitor`) less what was occupied here. Plugins occupy
/// and free memory as loading a model would; `at()` scripts changes in time.
#[pyclass(module = "plugin_scheduling", frozen, weakref)]
pub struct SimulatedSystem {
    machine: Mutex<SimulatedMachine>,
    host: Option<Arc<Monitor>>,
}

impl SimulatedSystem {
    // Every method leaves the machine consistent (it validates before it
    // changes anything), so recovering from poisoning is sound.
    fn machine(&self) -> MutexGuard<'_, SimulatedMachine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl SimulatedSystem {
    #[new]
    #[pyo3(signature = (gpus = vec![24_576.0], ram_total_mb = 65_536.0, cpu_percent = 0.0, host = None))]
    fn new(
        gpus: Vec<f64>,
        ram_total_mb: f64,
        cpu_percent: f64,
        host: Option<PyRef<'_, SystemMonitor>>,
    ) -> PyResult<Self> {
        let mut machine = SimulatedMachine::new(ram_total_mb, &gpus).map_err(sim_error)?;
        machine.set_cpu_percent(cpu_percent).map_err(sim_error)?;
        Ok(Self {
            machine: Mutex::new(machine),
            host: host.map(|h| Arc::clone(&h.monitor)),
        })
    }

    /// Occupy `mb` on GPU `device` (raises `SimulatedOutOfMemory` when it
    /// does not fit, as a real allocation would fail).
    #[pyo3(signature = (mb, device = 0))]
    fn occupy(&self, mb: f64, device: i64) -> PyResult<()> {
        self.machine()
            .occupy(Some(device_index(device)?), mb)
            .map_err(sim_error)
    }

    /// Free `mb` on GPU `device`.
    #[pyo3(signature = (mb, device = 0))]
    fn free(&self, mb: f64, device: i64) -> PyResult<()> {
        self.machine()
            .free(Some(device_index(device)?), mb)
            .map_err(sim_error)
    }

    /// Occupy `mb` of RAM; with a `host`, what fits is the real available
    /// RAM less what was already occupied here.
    fn occupy_ram(&self, py: Python<'_>, mb: f64) -> PyResult<()> {
        let real_available = match &self.host {
            Some(monitor) => {
                let monitor = Arc::clone(monitor);
                Some(
                    py.detach(move || monitor.host_reading())
                        .memory_available_mb,
                )
            }
            None => None,
        };
        self.machine()
            .occupy_ram(mb, real_available)
            .map_err(sim_error)
    }

    fn free_ram(&self, mb: f64) -> PyResult<()> {
        self.machine().free(None, mb).map_err(sim_error)
    }

    /// GPU utilisation shown for `device` (0–100).
    fn set_load(&self, device: i64, percent: f64) -> PyResult<()> {
        self.machine()
            .set_load(device_index(device)?, percent)
            .map_err(sim_error)
    }

    /// Script a change: `seconds` after creation, the memory in use on GPU
    /// `device` (or RAM when `device` is `None`) becomes `used_mb`.
    #[pyo3(signature = (seconds, used_mb, device = None))]
    fn at(&self, seconds: f64, used_mb: f64, device: Option<i64>) -> PyResult<()> {
        let device = device.map(device_index).transpose()?;
        self.machine()
            .script(ScriptedChange {
                at_s: seconds,
                device,
                used_mb,
            })
            .map_err(sim_error)
    }

    #[getter]
    fn gpu_count(&self) -> usize {
        self.machine().device_count()
    }

    /// The stats dict, same keys as `SystemMonitor`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let host = match &self.host {
            Some(monitor) => {
                let monitor = Arc::clone(monitor);
                Some(py.detach(move || monitor.snapshot()).host)
            }
            None => None,
        };
        let snapshot = self.machine().snapshot(host);
        to_dict(py, &snapshot)
    }

    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.snapshot(py)
    }

    /// The stats dict when it can be made without reading the machine (no
    /// `host`, or its reading is fresh), else `None`.
    fn _fresh<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let host = match &self.host {
            None => None,
            Some(monitor) => match monitor.fresh() {
                Some(snapshot) => Some(snapshot.host),
                None => return Ok(None),
            },
        };
        let snapshot = self.machine().snapshot(host);
        to_dict(py, &snapshot).map(Some)
    }

    fn __repr__(&self) -> String {
        format!("SimulatedSystem(gpus={})", self.machine().device_count())
    }
}

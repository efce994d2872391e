//! `SystemMonitor` (live stats) and `SimulatedSystem` (scripted stats): both
//! callables returning the cjm `SystemStats` dict, so either is a
//! `stats_provider` for every scheduler.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::{PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;

use super::errors::{describe, duration, integer, number, SimulatedOutOfMemory};
use plugin_scheduling_core::stats::monitor::{Monitor, DEFAULT_MIN_REFRESH};
use plugin_scheduling_core::stats::simulated::{ScriptedChange, SimError, SimulatedMachine};
use plugin_scheduling_core::stats::snapshot::Snapshot;

fn to_dict<'py>(py: Python<'py>, snapshot: &Snapshot) -> PyResult<Bound<'py, PyAny>> {
    Ok(pythonize::pythonize(py, &snapshot.system_stats())?)
}

/// Live stats of this machine: CPU and RAM from sysinfo, NVIDIA GPUs from
/// NVML (loaded at run time; no GPU or no driver gives `gpu_type == 'None'`
/// and `None` GPU figures). Calling it returns the cjm `SystemStats` dict;
/// `await monitor.snapshot_async()` is the provider for `allocate_async`.
///
/// Options:
///
/// - `min_refresh` (seconds, default 0.1): a reading younger than this is
///   served from the cache, so many concurrent callers share one reading
///   of NVML and /proc. `invalidate()` forgets it.
///
/// Safe to share between threads, and to use in a child after `fork()`
/// (the child reads the machine afresh).
#[pyclass(module = "plugin_scheduling", frozen, weakref)]
pub struct SystemMonitor {
    monitor: Arc<Monitor>,
}

#[pymethods]
impl SystemMonitor {
    #[new]
    #[pyo3(signature = (min_refresh = None), text_signature = "(min_refresh=0.1)")]
    fn new(min_refresh: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let min_refresh = match min_refresh {
            Some(value) => duration("min_refresh", value)?,
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
        let snapshot = py
            .detach(move || monitor.snapshot())
            .map_err(PyOSError::new_err)?;
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

/// `SimulatedSystem()`'s machine: one 24 GB GPU and 64 GB of RAM.
const DEFAULT_GPU_MB: f64 = 24_576.0;
const DEFAULT_RAM_MB: f64 = 65_536.0;

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

/// A GPU index: an `IndexError` naming the value when negative or beyond
/// any machine (a device the machine lacks is refused by the machine, with
/// its count).
fn device_index(device: &Bound<'_, PyAny>) -> PyResult<usize> {
    integer("device", device)?
        .and_then(|d| usize::try_from(d).ok())
        .ok_or_else(|| {
            PyIndexError::new_err(format!(
                "device must be a GPU index (0, 1, …), got {}",
                describe(device)
            ))
        })
}

/// A scripted machine with the same stats dict as `SystemMonitor`: for
/// tests, demos and simulations. Plugins occupy and free memory as loading
/// a model would (`occupy`, `free`, `occupy_ram`, `free_ram`); `at()`
/// scripts changes in time; `set_load` sets a GPU's utilisation.
///
/// Options:
///
/// - `gpus` (default `[24576.0]`): each simulated GPU's total MB (`[]`: no GPU).
/// - `ram_total_mb` (default 65536.0): simulated RAM.
/// - `cpu_percent` (default 0.0): the CPU load shown.
/// - `host` (default `None`): a `SystemMonitor`; then RAM and CPU are the
///   real machine's, less the RAM occupied here, and `ram_total_mb` /
///   `cpu_percent` are not used.
///
/// Memory is counted in whole bytes, so occupying and freeing the same
/// amounts always returns exactly to where it started.
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
    #[pyo3(
        signature = (gpus = None, ram_total_mb = None, cpu_percent = None, host = None),
        text_signature = "(gpus=[24576.0], ram_total_mb=65536.0, cpu_percent=0.0, host=None)"
    )]
    fn new(
        gpus: Option<&Bound<'_, PyAny>>,
        ram_total_mb: Option<&Bound<'_, PyAny>>,
        cpu_percent: Option<&Bound<'_, PyAny>>,
        host: Option<PyRef<'_, SystemMonitor>>,
    ) -> PyResult<Self> {
        let gpus = match gpus {
            None => vec![DEFAULT_GPU_MB],
            Some(list) => {
                let not_a_list = || {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "gpus must be a list of each GPU's total MB, got {}",
                        describe(list)
                    ))
                };
                if list.is_instance_of::<pyo3::types::PyString>() {
                    return Err(not_a_list());
                }
                list.try_iter()
                    .map_err(|_| not_a_list())?
                    .enumerate()
                    .map(|(i, total)| number(&format!("gpus[{i}]"), &total?))
                    .collect::<PyResult<Vec<f64>>>()?
            }
        };
        let ram_total_mb =
            ram_total_mb.map_or(Ok(DEFAULT_RAM_MB), |v| number("ram_total_mb", v))?;
        let cpu_percent = cpu_percent.map_or(Ok(0.0), |v| number("cpu_percent", v))?;
        let mut machine = SimulatedMachine::new(ram_total_mb, &gpus).map_err(sim_error)?;
        machine.set_cpu_percent(cpu_percent).map_err(sim_error)?;
        Ok(Self {
            machine: Mutex::new(machine),
            host: host.map(|h| Arc::clone(&h.monitor)),
        })
    }

    /// Occupy `mb` on GPU `device` (raises `SimulatedOutOfMemory` when it
    /// does not fit, as a real allocation would fail).
    #[pyo3(signature = (mb, device = None), text_signature = "($self, mb, device=0)")]
    fn occupy(&self, mb: &Bound<'_, PyAny>, device: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let mb = number("mb", mb)?;
        let device = device.map_or(Ok(0), device_index)?;
        self.machine().occupy(Some(device), mb).map_err(sim_error)
    }

    /// Free `mb` on GPU `device`.
    #[pyo3(signature = (mb, device = None), text_signature = "($self, mb, device=0)")]
    fn free(&self, mb: &Bound<'_, PyAny>, device: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let mb = number("mb", mb)?;
        let device = device.map_or(Ok(0), device_index)?;
        self.machine().free(Some(device), mb).map_err(sim_error)
    }

    /// Occupy `mb` of RAM; with a `host`, what fits is the real available
    /// RAM less what was already occupied here.
    fn occupy_ram(&self, py: Python<'_>, mb: &Bound<'_, PyAny>) -> PyResult<()> {
        let mb = number("mb", mb)?;
        let real_available = match &self.host {
            Some(monitor) => {
                let monitor = Arc::clone(monitor);
                Some(
                    py.detach(move || monitor.host_reading())
                        .map_err(PyOSError::new_err)?
                        .memory_available_mb,
                )
            }
            None => None,
        };
        self.machine()
            .occupy_ram(mb, real_available)
            .map_err(sim_error)
    }

    fn free_ram(&self, mb: &Bound<'_, PyAny>) -> PyResult<()> {
        let mb = number("mb", mb)?;
        self.machine().free(None, mb).map_err(sim_error)
    }

    /// GPU utilisation shown for `device` (0–100).
    fn set_load(&self, device: &Bound<'_, PyAny>, percent: &Bound<'_, PyAny>) -> PyResult<()> {
        let device = device_index(device)?;
        let percent = number("percent", percent)?;
        self.machine().set_load(device, percent).map_err(sim_error)
    }

    /// Script a change: once `seconds` have passed since this
    /// `SimulatedSystem` was created (not since this call), the memory in
    /// use on GPU `device` (or RAM when `device` is `None`) becomes
    /// `used_mb`; it applies at the first reading or change after that.
    #[pyo3(signature = (seconds, used_mb, device = None))]
    fn at(
        &self,
        seconds: &Bound<'_, PyAny>,
        used_mb: &Bound<'_, PyAny>,
        device: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let at_s = number("seconds", seconds)?;
        let used_mb = number("used_mb", used_mb)?;
        let device = device.map(device_index).transpose()?;
        self.machine()
            .script(ScriptedChange {
                at_s,
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
                Some(
                    py.detach(move || monitor.snapshot())
                        .map_err(PyOSError::new_err)?
                        .host,
                )
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

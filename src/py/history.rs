//! `MonitorHistory`: a bounded ring buffer of machine samples (CPU, RAM,
//! GPU memory from a stats dict; disk and network I/O rates from sysinfo)
//! with a least-squares trend and prediction per metric (core
//! `stats::history`).

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::errors::describe;
use super::jobs::clock_now;
use plugin_scheduling_core::stats::history::{History, IoProbe, IoRates, Sample, METRICS};

#[pyclass(module = "plugin_scheduling", name = "MonitorHistory")]
pub struct MonitorHistory {
    inner: Mutex<(History, IoProbe)>,
    clock: Option<Py<PyAny>>,
}

fn metric(name: &str) -> PyResult<usize> {
    History::metric(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "metric must be one of {}, got {name:?}",
            METRICS.join(", ")
        ))
    })
}

fn window(window_s: Option<f64>) -> PyResult<Option<f64>> {
    match window_s {
        Some(w) if !(w.is_finite() && w > 0.0) => Err(PyValueError::new_err(format!(
            "window_s must be a finite number of seconds > 0, got {w}"
        ))),
        other => Ok(other),
    }
}

/// `stats[key]` as a number, NaN when absent or None.
fn figure(stats: &Bound<'_, PyAny>, key: &str) -> PyResult<f64> {
    match stats.get_item(key) {
        Ok(v) if v.is_none() => Ok(f64::NAN),
        Ok(v) => v.extract::<f64>().map_err(|_| {
            PyTypeError::new_err(format!(
                "stats[{key:?}] must be a number, got {}",
                describe(&v)
            ))
        }),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(stats.py()) => Ok(f64::NAN),
        Err(e) => Err(e),
    }
}

fn sample_dict<'py>(py: Python<'py>, s: &Sample) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("t", s.t)?;
    for (name, v) in METRICS.iter().zip(s.values) {
        d.set_item(*name, if v.is_nan() { None } else { Some(v) })?;
    }
    Ok(d)
}

fn rates_dict<'py>(py: Python<'py>, r: &IoRates) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in [
        ("disk_read_bps", r.disk_read_bps),
        ("disk_write_bps", r.disk_write_bps),
        ("net_rx_bps", r.net_rx_bps),
        ("net_tx_bps", r.net_tx_bps),
    ] {
        d.set_item(k, if v.is_nan() { None } else { Some(v) })?;
    }
    Ok(d)
}

impl MonitorHistory {
    fn lock(&self) -> MutexGuard<'_, (History, IoProbe)> {
        // Pushes and reads are whole operations: a poisoned lock is still sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl MonitorHistory {
    /// Keeps the last `capacity` samples; `clock`: a callable returning
    /// seconds (default monotonic).
    #[new]
    #[pyo3(signature = (capacity = 600, clock = None))]
    fn new(capacity: usize, clock: Option<Py<PyAny>>) -> PyResult<Self> {
        if capacity < 2 {
            return Err(PyValueError::new_err(format!(
                "capacity must be at least 2 samples, got {capacity}"
            )));
        }
        Ok(Self {
            inner: Mutex::new((History::new(capacity), IoProbe::new())),
            clock,
        })
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.lock().0.capacity()
    }

    fn __len__(&self) -> usize {
        self.lock().0.len()
    }

    /// Records one sample: CPU, RAM and GPU memory from `stats` (a
    /// `SystemStats` dict), disk and network rates since the last sample
    /// (read here, GIL released). The sample as a dict.
    fn record<'py>(
        &self,
        py: Python<'py>,
        stats: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = clock_now(self.clock.as_ref(), py)?;
        let cpu = figure(stats, "cpu_percent")?;
        let mem = figure(stats, "memory_used_mb")?;
        let gpu = figure(stats, "gpu_used_memory_mb")?;
        let sample = py.detach(|| {
            let mut g = self.lock();
            let r = g.1.rates(t);
            let sample = Sample {
                t,
                values: [
                    cpu,
                    mem,
                    gpu,
                    r.disk_read_bps,
                    r.disk_write_bps,
                    r.net_rx_bps,
                    r.net_tx_bps,
                ],
            };
            g.0.push(sample).then_some(sample)
        });
        match sample {
            Some(s) => sample_dict(py, &s),
            None => Err(PyValueError::new_err(format!(
                "clock went backwards: sample at {t} is older than the newest"
            ))),
        }
    }

    /// Disk and network rates since the last reading (bytes/s; None where
    /// the platform has no counter).
    fn io_rates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = clock_now(self.clock.as_ref(), py)?;
        let r = py.detach(|| self.lock().1.rates(t));
        rates_dict(py, &r)
    }

    /// Samples (within the last `window_s` seconds, or all), oldest first.
    #[pyo3(signature = (window_s = None))]
    fn history<'py>(&self, py: Python<'py>, window_s: Option<f64>) -> PyResult<Bound<'py, PyList>> {
        let window_s = window(window_s)?;
        let g = self.lock();
        let newest = g.0.iter().last().map_or(0.0, |s| s.t);
        let out = PyList::empty(py);
        for s in
            g.0.iter()
                .filter(|s| window_s.is_none_or(|w| newest - s.t <= w))
        {
            out.append(sample_dict(py, s)?)?;
        }
        Ok(out)
    }

    /// Slope of `metric` per second (least squares over the window); None
    /// with fewer than 2 figures.
    #[pyo3(signature = (metric_name, window_s = None))]
    fn trend(&self, metric_name: &str, window_s: Option<f64>) -> PyResult<Option<f64>> {
        let m = metric(metric_name)?;
        let w = window(window_s)?;
        Ok(self.lock().0.trend(m, w).map(|t| t.0))
    }

    /// `metric` `seconds_ahead` after the newest sample, by the
    /// least-squares line over the window (never below 0).
    #[pyo3(signature = (metric_name, seconds_ahead, window_s = None))]
    fn predict(
        &self,
        metric_name: &str,
        seconds_ahead: f64,
        window_s: Option<f64>,
    ) -> PyResult<Option<f64>> {
        let m = metric(metric_name)?;
        let w = window(window_s)?;
        if !(seconds_ahead.is_finite() && seconds_ahead >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "seconds_ahead must be a finite number >= 0, got {seconds_ahead}"
            )));
        }
        Ok(self.lock().0.predict(m, seconds_ahead, w))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(c) = &self.clock {
            visit.call(c)?;
        }
        Ok(())
    }
}

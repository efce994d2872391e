//! The simulator's binding: load a trace, run it under a policy (a core
//! policy by name or a Python object), hand back metrics and tables as
//! plain Python values. Everything else is in `plugin_scheduling_core::sim`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString};

use super::errors::{core_error, describe, int_in, number};
use plugin_scheduling_core::policy::{by_name, Admission, Ctx, JobInfo, Las, Policy};
use plugin_scheduling_core::sim::cluster::MAX_NODES;
use plugin_scheduling_core::sim::trace::{self, Cell, TraceBuilder, MAX_LINE_BYTES};
use plugin_scheduling_core::sim::workload::{self, WorkloadSpec, MAX_JOBS, MAX_USERS};
use plugin_scheduling_core::sim::{
    self as core_sim, ClusterSpec, Columns, SimOptions, TraceJob, METRIC_NAMES,
};

/// A parsed trace (jobs in submission order), reusable across runs.
#[pyclass(module = "plugin_scheduling._core", frozen)]
pub struct SimTrace {
    jobs: Arc<Vec<TraceJob>>,
}

#[pymethods]
impl SimTrace {
    fn __len__(&self) -> usize {
        self.jobs.len()
    }

    fn __repr__(&self) -> String {
        format!("SimTrace({} jobs)", self.jobs.len())
    }

    /// The trace as CSV text.
    fn to_csv(&self) -> String {
        workload::to_csv(&self.jobs)
    }
}

fn columns(mapping: Option<HashMap<String, String>>) -> PyResult<Columns> {
    Columns::new(&mapping.unwrap_or_default()).map_err(core_error)
}

/// A row's value as a cell; text longer than [`MAX_LINE_BYTES`] or not
/// valid Unicode (a lone surrogate) is refused naming the row and column.
fn cell(value: Option<Bound<'_, PyAny>>, origin: &str, column: &str) -> PyResult<Cell> {
    let Some(v) = value else {
        return Ok(Cell::Missing);
    };
    if v.is_none() {
        return Ok(Cell::Missing);
    }
    let text = if let Ok(s) = v.cast::<PyString>() {
        s.clone()
    } else if let Ok(x) = v.extract::<f64>() {
        return Ok(Cell::Num(x));
    } else {
        v.str()?
    };
    let bad =
        |why: String| PyValueError::new_err(format!("trace {origin}, column {column:?}: {why}"));
    let s = text.to_str().map_err(|_| {
        bad(format!(
            "is not valid Unicode text (a lone surrogate), got {}",
            describe(&text)
        ))
    })?;
    if s.len() > MAX_LINE_BYTES {
        return Err(bad(format!(
            "is longer than {MAX_LINE_BYTES} bytes (the most a trace cell may hold), got {} bytes",
            s.len()
        )));
    }
    Ok(Cell::Text(s.to_owned()))
}

/// The metrics' names, in report order (the keys of `SimRun.metrics()`).
#[pyfunction]
pub fn _metric_names() -> Vec<&'static str> {
    METRIC_NAMES.to_vec()
}

/// Reads a trace: a path (CSV or JSON lines), or rows (mappings).
#[pyfunction]
#[pyo3(signature = (trace, columns=None))]
pub fn _load_trace(
    py: Python<'_>,
    trace: &Bound<'_, PyAny>,
    columns: Option<HashMap<String, String>>,
) -> PyResult<SimTrace> {
    let cols = self::columns(columns)?;
    if let Ok(path) = trace.extract::<PathBuf>() {
        if !trace.is_instance_of::<PyList>() {
            let jobs = py
                .detach(move || trace::read_path(&path, cols))
                .map_err(core_error)?;
            return Ok(SimTrace {
                jobs: Arc::new(jobs),
            });
        }
    }
    let iter = trace.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "trace must be a path, a list of row mappings or a DataFrame, got {}",
            describe(trace)
        ))
    })?;
    let mut b = TraceBuilder::new(cols);
    for (i, row) in iter.enumerate() {
        let row = row?;
        let origin = format!("row {i}");
        let Ok(map) = row.cast::<PyMapping>() else {
            return Err(PyTypeError::new_err(format!(
                "trace {origin} must be a mapping of column to value, got {}",
                describe(&row)
            )));
        };
        let mut cells: [Cell; 11] = std::array::from_fn(|_| Cell::Missing);
        for (k, c) in cells.iter_mut().enumerate() {
            let name = b.columns().name(k).to_owned();
            let value = if map.contains(&name)? {
                Some(map.get_item(&name)?)
            } else {
                None
            };
            *c = cell(value, &origin, &name)?;
        }
        b.push(&origin, &cells).map_err(core_error)?;
    }
    Ok(SimTrace {
        jobs: Arc::new(b.finish()),
    })
}

/// A synthetic (Gavel-like) trace. Every number is checked here, so a bad
/// one is a `ValueError`/`TypeError` naming it (never an `OverflowError`).
#[pyfunction]
#[pyo3(signature = (jobs, *, seed=None, jobs_per_hour=None, gpus=None, durations=None, users=None, deadline_slack=None))]
#[allow(clippy::too_many_arguments)]
pub fn _generate_trace(
    jobs: &Bound<'_, PyAny>,
    seed: Option<&Bound<'_, PyAny>>,
    jobs_per_hour: Option<&Bound<'_, PyAny>>,
    gpus: Option<&Bound<'_, PyAny>>,
    durations: Option<&Bound<'_, PyAny>>,
    users: Option<&Bound<'_, PyAny>>,
    deadline_slack: Option<&Bound<'_, PyAny>>,
) -> PyResult<SimTrace> {
    let d = WorkloadSpec::default();
    let spec = WorkloadSpec {
        jobs: int_in("jobs", jobs, 0, MAX_JOBS)?,
        seed: seed.map_or(Ok(d.seed), |s| int_in("seed", s, 0, u64::MAX))?,
        jobs_per_hour: jobs_per_hour.map_or(Ok(d.jobs_per_hour), |v| number("jobs_per_hour", v))?,
        gpus: match gpus {
            None => d.gpus,
            Some(g) => weighted_gpus(g)?,
        },
        durations: match durations {
            None => d.durations,
            Some(v) => duration_ranges(v)?,
        },
        users: users.map_or(Ok(d.users), |u| int_in("users", u, 1, MAX_USERS))?,
        deadline_slack: deadline_slack
            .filter(|v| !v.is_none())
            .map(|v| number("deadline_slack", v))
            .transpose()?,
    };
    Ok(SimTrace {
        jobs: Arc::new(spec.generate().map_err(core_error)?),
    })
}

/// The items of a list (or any iterable but a string) argument.
fn listed<'py>(field: &str, value: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let not_a_list =
        || PyTypeError::new_err(format!("{field} must be a list, got {}", describe(value)));
    if value.is_instance_of::<PyString>() {
        return Err(not_a_list());
    }
    value.try_iter().map_err(|_| not_a_list())?.collect()
}

/// A list of `N`-tuples (`what` names one), each with its field (`gpus[3]`).
fn tuples<'py, const N: usize>(
    field: &str,
    value: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Vec<(String, [Bound<'py, PyAny>; N])>> {
    listed(field, value)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{field}[{i}]");
            let items: [Bound<'py, PyAny>; N] = listed(&field, item)?.try_into().map_err(|_| {
                PyTypeError::new_err(format!("{field} must be {what}, got {}", describe(item)))
            })?;
            Ok((field, items))
        })
        .collect()
}

/// `[(gpus, weight), ...]`.
fn weighted_gpus(value: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f64)>> {
    tuples::<2>("gpus", value, "a (gpus, weight) pair")?
        .into_iter()
        .map(|(field, [count, weight])| {
            Ok((
                int_in(&format!("{field} GPU count"), &count, 1, u32::MAX)?,
                number(&format!("{field} weight"), &weight)?,
            ))
        })
        .collect()
}

/// `[(low, high, weight), ...]` (log10 minutes).
fn duration_ranges(value: &Bound<'_, PyAny>) -> PyResult<Vec<(f64, f64, f64)>> {
    tuples::<3>("durations", value, "a (low, high, weight) triple")?
        .into_iter()
        .map(|(field, [lo, hi, w])| {
            Ok((
                number(&format!("{field} low"), &lo)?,
                number(&format!("{field} high"), &hi)?,
                number(&format!("{field} weight"), &w)?,
            ))
        })
        .collect()
}

/// A policy written in Python: `key(job, now) -> float` (lower first),
/// optional `admission` ("strict", "best_effort", "backfill"),
/// `time_varying` (bool), `on_start(job, now)`, `on_finish(job, ran_s, now)`.
#[derive(Debug)]
struct PyPolicy {
    obj: Py<PyAny>,
    name: String,
    admission: Admission,
    time_varying: bool,
    on_start: bool,
    on_finish: bool,
    trace: Arc<Vec<TraceJob>>,
    error: Arc<Mutex<Option<PyErr>>>,
}

impl PyPolicy {
    fn new(obj: &Bound<'_, PyAny>, trace: Arc<Vec<TraceJob>>) -> PyResult<Self> {
        if !obj.hasattr("key")? {
            return Err(PyTypeError::new_err(format!(
                "policy must be a policy name or an object with a key(job, now) method, got {}",
                describe(obj)
            )));
        }
        let admission = match obj.getattr_opt("admission")? {
            None => Admission::Strict,
            Some(a) if a.is_none() => Admission::Strict,
            Some(a) => match a.extract::<String>().as_deref() {
                Ok("strict") => Admission::Strict,
                Ok("best_effort") => Admission::BestEffort,
                Ok("backfill") => Admission::Backfill,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "policy.admission must be 'strict', 'best_effort' or 'backfill', got {}",
                        describe(&a)
                    )))
                }
            },
        };
        let time_varying = match obj.getattr_opt("time_varying")? {
            Some(v) => v.is_truthy()?,
            None => false,
        };
        let name = match obj.getattr_opt("name")? {
            Some(n) if n.is_instance_of::<PyString>() => n.extract::<String>()?,
            _ => obj.get_type().name()?.to_string(),
        };
        Ok(Self {
            obj: obj.clone().unbind(),
            name,
            admission,
            time_varying,
            on_start: obj.hasattr("on_start")?,
            on_finish: obj.hasattr("on_finish")?,
            trace,
            error: Arc::new(Mutex::new(None)),
        })
    }

    fn job<'py>(&self, py: Python<'py>, job: &JobInfo) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let Some(t) = self.trace.get(job.id as usize) {
            d.set_item("job_id", &*t.job_id)?;
            d.set_item("submit_time", t.submit_time)?;
            d.set_item("num_gpu", t.num_gpu)?;
            d.set_item("user", t.user.as_deref())?;
            d.set_item("project", t.project.as_deref())?;
            d.set_item("priority", t.priority)?;
            d.set_item("deadline", t.deadline)?;
        }
        d.set_item("estimated_duration", job.estimated_duration)?;
        Ok(d)
    }

    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn call(&self, f: impl FnOnce(Python<'_>) -> PyResult<f64>) -> f64 {
        if self.failed() {
            return f64::INFINITY;
        }
        Python::attach(|py| match f(py) {
            Ok(v) => v,
            Err(e) => {
                let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert(e);
                f64::INFINITY
            }
        })
    }
}

impl Policy for PyPolicy {
    fn name(&self) -> &str {
        &self.name
    }
    fn admission(&self) -> Admission {
        self.admission
    }
    fn time_varying(&self) -> bool {
        self.time_varying
    }
    fn key(&self, job: &JobInfo, ctx: &Ctx) -> f64 {
        self.call(|py| {
            let v = self
                .obj
                .bind(py)
                .call_method1("key", (self.job(py, job)?, ctx.now))?;
            let k: f64 = v.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "policy {}.key must return a number, got {}",
                    self.name,
                    describe(&v)
                ))
            })?;
            if k.is_nan() {
                return Err(PyValueError::new_err(format!(
                    "policy {}.key returned NaN",
                    self.name
                )));
            }
            Ok(k)
        })
    }
    fn on_start(&mut self, job: &JobInfo, now: f64) {
        if self.on_start {
            self.call(|py| {
                self.obj
                    .bind(py)
                    .call_method1("on_start", (self.job(py, job)?, now))?;
                Ok(0.0)
            });
        }
    }
    fn on_finish(&mut self, job: &JobInfo, ran_s: f64, now: f64) {
        if self.on_finish {
            self.call(|py| {
                self.obj
                    .bind(py)
                    .call_method1("on_finish", (self.job(py, job)?, ran_s, now))?;
                Ok(0.0)
            });
        }
    }
}

/// One policy's run: metrics, per-job table, timeline.
#[pyclass(module = "plugin_scheduling._core", frozen)]
pub struct SimRun {
    trace: Arc<Vec<TraceJob>>,
    result: core_sim::SimResult,
}

fn opt(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

/// A metric as Python sees it: finite, or `None` (the core's limits keep
/// every metric finite; this keeps `json.dumps(..., allow_nan=False)` safe
/// even if one were not).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[pymethods]
impl SimRun {
    #[getter]
    fn policy(&self) -> &str {
        &self.result.policy
    }

    /// Every metric by name (`slo_attainment`/`cost` are None when the
    /// trace has no deadlines / the cluster no costs).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.result.metrics;
        let values: [Bound<'py, PyAny>; 13] = [
            m.jobs.into_pyobject(py)?.into_any(),
            finite(m.avg_jct_s).into_pyobject(py)?.into_any(),
            finite(m.p50_jct_s).into_pyobject(py)?.into_any(),
            finite(m.p95_jct_s).into_pyobject(py)?.into_any(),
            finite(m.avg_wait_s).into_pyobject(py)?.into_any(),
            finite(m.p95_wait_s).into_pyobject(py)?.into_any(),
            finite(m.avg_slowdown).into_pyobject(py)?.into_any(),
            finite(m.makespan_s).into_pyobject(py)?.into_any(),
            finite(m.gpu_utilization).into_pyobject(py)?.into_any(),
            finite(m.jain_fairness).into_pyobject(py)?.into_any(),
            m.slo_attainment
                .and_then(finite)
                .into_pyobject(py)?
                .into_any(),
            m.preemptions.into_pyobject(py)?.into_any(),
            m.cost.and_then(finite).into_pyobject(py)?.into_any(),
        ];
        let d = PyDict::new(py);
        for (name, value) in METRIC_NAMES.iter().zip(values) {
            d.set_item(*name, value)?;
        }
        Ok(d)
    }

    /// The per-job table as columns (lists of equal length).
    fn job_columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = &self.trace;
        let o = &self.result.jobs;
        let d = PyDict::new(py);
        d.set_item("job_id", t.iter().map(|j| &*j.job_id).collect::<Vec<_>>())?;
        d.set_item(
            "user",
            t.iter().map(|j| j.user.as_deref()).collect::<Vec<_>>(),
        )?;
        d.set_item("num_gpu", t.iter().map(|j| j.num_gpu).collect::<Vec<_>>())?;
        d.set_item(
            "submit_time",
            t.iter().map(|j| j.submit_time).collect::<Vec<_>>(),
        )?;
        d.set_item(
            "start_time",
            o.iter().map(|j| opt(j.start)).collect::<Vec<_>>(),
        )?;
        d.set_item("end_time", o.iter().map(|j| opt(j.end)).collect::<Vec<_>>())?;
        d.set_item("wait_s", o.iter().map(|j| j.wait).collect::<Vec<_>>())?;
        d.set_item(
            "jct_s",
            t.iter().zip(o).map(|(t, j)| j.jct(t)).collect::<Vec<_>>(),
        )?;
        d.set_item("duration", t.iter().map(|j| j.duration).collect::<Vec<_>>())?;
        d.set_item(
            "slowdown",
            t.iter()
                .zip(o)
                .map(|(t, j)| j.slowdown(t))
                .collect::<Vec<_>>(),
        )?;
        d.set_item(
            "preemptions",
            o.iter().map(|j| j.preemptions).collect::<Vec<_>>(),
        )?;
        d.set_item(
            "deadline_met",
            t.iter()
                .zip(o)
                .map(|(t, j)| j.deadline_met(t))
                .collect::<Vec<_>>(),
        )?;
        d.set_item("cost", o.iter().map(|j| j.cost).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// Queue length and busy GPUs from each time on, as columns.
    fn timeline_columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let tl = &self.result.timeline;
        let d = PyDict::new(py);
        d.set_item("time", tl.iter().map(|p| p.time).collect::<Vec<_>>())?;
        d.set_item(
            "queue_length",
            tl.iter().map(|p| p.queue_length).collect::<Vec<_>>(),
        )?;
        d.set_item(
            "busy_gpus",
            tl.iter().map(|p| p.busy_gpus).collect::<Vec<_>>(),
        )?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "SimRun(policy={:?}, jobs={})",
            self.result.policy, self.result.metrics.jobs
        )
    }
}

fn cluster(
    gpus: Option<&Bound<'_, PyAny>>,
    nodes: Option<&Bound<'_, PyAny>>,
    gpus_per_node: Option<&Bound<'_, PyAny>>,
) -> PyResult<ClusterSpec> {
    let count = |field: &str, v: Option<&Bound<'_, PyAny>>, max: u32| {
        v.filter(|v| !v.is_none())
            .map(|v| int_in(field, v, 1, max))
            .transpose()
    };
    let gpus = count("gpus", gpus, u32::MAX)?;
    let nodes = count("nodes", nodes, MAX_NODES)?;
    let gpus_per_node = count("gpus_per_node", gpus_per_node, u32::MAX)?;
    match (gpus, nodes, gpus_per_node) {
        (Some(g), None, None) => ClusterSpec::pool(g).map_err(core_error),
        (None, Some(n), Some(g)) => ClusterSpec::nodes(n, g).map_err(core_error),
        (Some(g), Some(n), Some(per)) if u64::from(n) * u64::from(per) == u64::from(g) => {
            ClusterSpec::nodes(n, per).map_err(core_error)
        }
        _ => Err(PyValueError::new_err(format!(
            "give gpus=N (one pool) or nodes=K with gpus_per_node=G, got gpus={gpus:?}, nodes={nodes:?}, gpus_per_node={gpus_per_node:?}"
        ))),
    }
}

/// Runs `trace` under `policy`; see `plugin_scheduling.simulate`.
#[pyfunction]
#[pyo3(signature = (trace, *, policy, gpus=None, nodes=None, gpus_per_node=None, vram_per_gpu_mb=None, ram_per_node_mb=None, node_cost_per_hour=None, preempt=None, oracle_estimates=true, las_thresholds=None, las_promote_knob=None, timeline=true, reference=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn _simulate(
    py: Python<'_>,
    trace: &SimTrace,
    policy: &Bound<'_, PyAny>,
    gpus: Option<&Bound<'_, PyAny>>,
    nodes: Option<&Bound<'_, PyAny>>,
    gpus_per_node: Option<&Bound<'_, PyAny>>,
    vram_per_gpu_mb: Option<&Bound<'_, PyAny>>,
    ram_per_node_mb: Option<&Bound<'_, PyAny>>,
    node_cost_per_hour: Option<&Bound<'_, PyAny>>,
    preempt: Option<bool>,
    oracle_estimates: bool,
    las_thresholds: Option<&Bound<'_, PyAny>>,
    las_promote_knob: Option<&Bound<'_, PyAny>>,
    timeline: bool,
    reference: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<SimRun> {
    let mut spec = cluster(gpus, nodes, gpus_per_node)?;
    let optional = |field: &str, v: Option<&Bound<'_, PyAny>>| {
        v.filter(|v| !v.is_none())
            .map(|v| number(field, v))
            .transpose()
    };
    let numbers = |field: &str, v: Option<&Bound<'_, PyAny>>| -> PyResult<Option<Vec<f64>>> {
        v.filter(|v| !v.is_none())
            .map(|v| {
                listed(field, v)?
                    .iter()
                    .enumerate()
                    .map(|(i, x)| number(&format!("{field}[{i}]"), x))
                    .collect()
            })
            .transpose()
    };
    spec.vram_per_gpu_mb = optional("vram_per_gpu_mb", vram_per_gpu_mb)?;
    spec.ram_per_node_mb = optional("ram_per_node_mb", ram_per_node_mb)?;
    spec.node_cost_per_hour =
        numbers("node_cost_per_hour", node_cost_per_hour)?.unwrap_or_default();
    let las_thresholds = numbers("las_thresholds", las_thresholds)?;
    let las_promote_knob = optional("las_promote_knob", las_promote_knob)?;
    spec.validate().map_err(core_error)?;
    let jobs = trace.jobs.clone();
    let mut py_error: Option<Arc<Mutex<Option<PyErr>>>> = None;
    let mut p: Box<dyn Policy> = if let Ok(name) = policy.extract::<String>() {
        if name == "las" && (las_thresholds.is_some() || las_promote_knob.is_some()) {
            let las = match las_thresholds {
                Some(t) => Las::new(t),
                None => Ok(Las::default()),
            };
            Box::new(
                las.and_then(|l| l.with_promote_knob(las_promote_knob.unwrap_or(0.0)))
                    .map_err(core_error)?,
            )
        } else {
            by_name(&name, None).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "policy must be one of {} or an object with a key(job, now) method, got {name:?}",
                    plugin_scheduling_core::policy::NAMES.join(", ")
                ))
            })?
        }
    } else {
        let pp = PyPolicy::new(policy, jobs.clone())?;
        py_error = Some(pp.error.clone());
        Box::new(pp)
    };
    let options = SimOptions {
        preempt,
        oracle_estimates,
        timeline,
        reference,
    };
    let stored: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let mut report = |done: usize, total: usize| -> bool {
            Python::attach(|py| {
                let r = py.check_signals().and_then(|()| match &progress {
                    Some(cb) => cb.bind(py).call1((done, total)).map(|_| ()),
                    None => Ok(()),
                });
                let policy_failed = py_error
                    .as_ref()
                    .is_some_and(|e| e.lock().unwrap_or_else(PoisonError::into_inner).is_some());
                match r {
                    Ok(()) => !policy_failed,
                    Err(e) => {
                        *stored.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                        false
                    }
                }
            })
        };
        core_sim::simulate(&jobs, &spec, p.as_mut(), &options, &mut report)
    });
    if let Some(e) = py_error
        .as_ref()
        .and_then(|e| e.lock().unwrap_or_else(PoisonError::into_inner).take())
    {
        return Err(e);
    }
    if let Some(e) = stored.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(e);
    }
    let result = result.map_err(core_error)?;
    Ok(SimRun {
        trace: jobs,
        result,
    })
}

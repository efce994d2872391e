//! `CorePolicy`: a core policy (by name and settings) usable on plain
//! Python job objects — what `plugin_scheduling.policies` classes call for
//! seed 004's `select_next_job` / `should_preempt`. Stateful policies (fair
//! share usage, round-robin turns, SJF history) keep their state here.
//! Standalone policies use wall-clock seconds (jobs' `submit_time` are
//! timestamps or datetimes).

use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use super::errors::{core, describe};
use super::reservation_inputs::priority;
use plugin_scheduling_core::policy::{self, Ctx, JobInfo, Policy, PolicySpec, RunningJob};

#[pyclass(module = "plugin_scheduling", frozen)]
pub struct CorePolicy {
    inner: Mutex<Box<dyn Policy>>,
}

fn lock(m: &Mutex<Box<dyn Policy>>) -> MutexGuard<'_, Box<dyn Policy>> {
    // Policy hooks update whole fields: recovering from poisoning is sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn attr<'py>(obj: &Bound<'py, PyAny>, names: &[&str]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = obj.py();
    for name in names {
        let found = if let Ok(map) = obj.cast::<PyDict>() {
            map.get_item(name)?
        } else {
            match obj.getattr(pyo3::types::PyString::new(py, name)) {
                Ok(v) => Some(v),
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => None,
                Err(e) => return Err(e),
            }
        };
        if let Some(v) = found.filter(|v| !v.is_none()) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn seconds_field(field: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    // datetimes are read as POSIX timestamps.
    let py = v.py();
    let value = if v.hasattr(intern!(py, "timestamp"))? {
        v.call_method0(intern!(py, "timestamp"))?
    } else {
        v.clone()
    };
    let f: f64 = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a number of seconds or a datetime, got {}",
            describe(v)
        ))
    })?;
    if !f.is_finite() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{field} must be finite, got {}",
            describe(v)
        )));
    }
    Ok(f)
}

fn text(v: Option<Bound<'_, PyAny>>) -> PyResult<Option<std::sync::Arc<str>>> {
    v.map(|v| Ok(std::sync::Arc::from(v.str()?.to_string().as_str())))
        .transpose()
}

/// Reads a job object (attributes or dict keys): `name` (or `plugin`,
/// `module`), `priority` (0–100 or a name), `user`, `project`,
/// `submit_time` (or `submitted`, `arrival_time`), `deadline` (absolute),
/// `estimated_duration`, `requirements` (`gpu_count`) or `gpu_count`.
pub fn job_from(obj: &Bound<'_, PyAny>, index: usize, position: &str) -> PyResult<JobInfo> {
    let name = match attr(obj, &["name", "plugin", "module", "job_id", "id"])? {
        Some(n) => n.str()?.to_string(),
        None => format!("job{index}"),
    };
    let submitted = match attr(obj, &["submit_time", "submitted", "arrival_time"])? {
        Some(v) => seconds_field(&format!("{position}.submit_time"), &v)?,
        None => index as f64,
    };
    let mut job = JobInfo::new(index as u64, &name, submitted);
    if let Some(p) = attr(obj, &["priority"])? {
        job.priority = priority(&format!("{position}.priority"), &p)?;
    }
    job.user = text(attr(obj, &["user", "user_id"])?)?;
    job.project = text(attr(obj, &["project", "project_id"])?)?;
    if let Some(d) = attr(obj, &["deadline"])? {
        job.deadline = Some(seconds_field(&format!("{position}.deadline"), &d)?);
    }
    if let Some(d) = attr(obj, &["estimated_duration", "estimated_duration_s"])? {
        job.estimated_duration = Some(seconds_field(
            &format!("{position}.estimated_duration"),
            &d,
        )?);
    }
    let gpus = match attr(obj, &["requirements"])? {
        Some(r) if r.cast::<PyMapping>().is_ok() || r.hasattr("gpu_count")? => {
            attr(&r, &["gpu_count"])?
        }
        _ => attr(obj, &["gpu_count", "num_gpu"])?,
    };
    if let Some(g) = gpus {
        let n: f64 = g.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{position}.requirements.gpu_count must be a number, got {}",
                describe(&g)
            ))
        })?;
        job.size = n.max(1.0);
    }
    Ok(job)
}

fn jobs_from(jobs: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<JobInfo>> {
    let mut out = Vec::new();
    for (i, j) in jobs.try_iter()?.enumerate() {
        out.push(job_from(&j?, i, &format!("{what}[{i}]"))?);
    }
    Ok(out)
}

#[pymethods]
impl CorePolicy {
    /// `spec`: `{"name": ..., <settings>}` as `policies._core_spec` makes it.
    #[new]
    fn new(spec: &Bound<'_, PyDict>) -> PyResult<Self> {
        let spec = spec_from(spec)?;
        Ok(Self {
            inner: Mutex::new(core(spec.build(wall_now()))?),
        })
    }

    /// Checks `spec`'s name and settings without building the policy
    /// (`ValueError`/`TypeError` naming the field).
    #[staticmethod]
    fn check(spec: &Bound<'_, PyDict>) -> PyResult<()> {
        core(spec_from(spec)?.validate())
    }

    /// The built-in policy `name` stands for, ignoring case; an unknown
    /// name raises `ValueError` listing the names, with a suggestion.
    #[staticmethod]
    fn canonical_name(name: &str) -> PyResult<&'static str> {
        core(policy::canonical_name(name))
    }

    #[getter]
    fn name(&self) -> String {
        lock(&self.inner).name().to_owned()
    }

    /// Index of the job that goes next, or `None` for an empty list.
    #[pyo3(signature = (jobs, now = None))]
    fn select(&self, jobs: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<Option<usize>> {
        let jobs = jobs_from(jobs, "pending_jobs")?;
        let ctx = Ctx {
            now: now.unwrap_or_else(wall_now),
        };
        Ok(policy::select_next(lock(&self.inner).as_ref(), &jobs, &ctx))
    }

    /// Indices of `jobs` in the policy's order.
    #[pyo3(signature = (jobs, now = None))]
    fn order(&self, jobs: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<Vec<usize>> {
        let jobs = jobs_from(jobs, "jobs")?;
        let ctx = Ctx {
            now: now.unwrap_or_else(wall_now),
        };
        Ok(policy::order(lock(&self.inner).as_ref(), &jobs, &ctx))
    }

    /// Why `job` is where it is, in the policy's terms.
    #[pyo3(signature = (job, now = None))]
    fn describe(&self, job: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<String> {
        let job = job_from(job, 0, "job")?;
        let ctx = Ctx {
            now: now.unwrap_or_else(wall_now),
        };
        Ok(lock(&self.inner).describe(&job, &ctx))
    }

    /// Indices of the running jobs to stop so that `new_job` (needing
    /// `needed` more units, default its GPU count) could start.
    #[pyo3(signature = (running_jobs, new_job, needed = None))]
    fn preempt(
        &self,
        running_jobs: &Bound<'_, PyAny>,
        new_job: &Bound<'_, PyAny>,
        needed: Option<f64>,
    ) -> PyResult<Vec<usize>> {
        let mut running = Vec::new();
        for (i, r) in running_jobs.try_iter()?.enumerate() {
            let r = r?;
            let job = job_from(&r, i, &format!("running_jobs[{i}]"))?;
            let started = match attr(&r, &["start_time", "started_at", "started"])? {
                Some(v) => seconds_field(&format!("running_jobs[{i}].start_time"), &v)?,
                None => job.submitted,
            };
            running.push(RunningJob {
                holds: job.size,
                started,
                job,
            });
        }
        let mut new = job_from(new_job, usize::MAX, "new_job")?;
        new.submitted = running
            .iter()
            .map(|r| r.started)
            .fold(new.submitted, f64::max);
        let needed = needed.unwrap_or(new.size);
        Ok(lock(&self.inner)
            .should_preempt(&running, &new, needed)
            .into_iter()
            .map(|i| i as usize)
            .collect())
    }

    /// Tells a stateful policy a job started (round robin).
    #[pyo3(signature = (job, now = None))]
    fn record_start(&self, job: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<()> {
        let job = job_from(job, 0, "job")?;
        lock(&self.inner).on_start(&job, now.unwrap_or_else(wall_now));
        Ok(())
    }

    /// Tells a stateful policy a job ended after `ran_s` (fair-share usage,
    /// SJF history).
    #[pyo3(signature = (job, ran_s, now = None))]
    fn record_finish(&self, job: &Bound<'_, PyAny>, ran_s: f64, now: Option<f64>) -> PyResult<()> {
        let job = job_from(job, 0, "job")?;
        lock(&self.inner).on_finish(&job, ran_s, now.unwrap_or_else(wall_now));
        Ok(())
    }
}

fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The settings dict → a core spec (shared with `ReservationScheduler`).
pub fn spec_from(spec: &Bound<'_, PyDict>) -> PyResult<PolicySpec> {
    super::reservation::spec_from_dict(spec)
}

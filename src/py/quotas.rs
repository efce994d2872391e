//! `_QuotaBackend`: the thin binding of [`plugin_scheduling_core::quota`]
//! under `plugin_scheduling.quotas` (which holds the public classes).
//! Every backend call runs with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::{describe, quota_error, InvalidQuota};
use plugin_scheduling_core::quota::postgres::{PostgresStore, DEFAULT_LOCK_TIMEOUT};
use plugin_scheduling_core::quota::slurm::SlurmStore;
use plugin_scheduling_core::quota::sqlite::SqliteStore;
use plugin_scheduling_core::quota::{
    Decision, JobType, Patch, QuotaBackend, QuotaPatch, Resources,
};

/// One quota backend (SQLite file, PostgreSQL server or Slurm cluster).
#[pyclass(module = "plugin_scheduling._core", name = "_QuotaBackend", frozen)]
pub struct PyQuotaBackend {
    inner: Arc<dyn QuotaBackend>,
}

fn patch_f64(fields: &Bound<'_, PyDict>, key: &str) -> PyResult<Patch<f64>> {
    Ok(match fields.get_item(key)? {
        None => Patch::Keep,
        Some(v) if v.is_none() => Patch::Clear,
        Some(v) => Patch::Set(v.extract().map_err(|_| {
            InvalidQuota::new_err(format!(
                "{key} must be a number or None, got {}",
                describe(&v)
            ))
        })?),
    })
}

/// `(cpu, memory, gpu, vram_mb)` as `Resources` holds them.
type Request = (f64, f64, i64, f64);

fn parse_request(
    job_type: &str,
    (cpu, memory, gpu, vram_mb): Request,
) -> PyResult<(JobType, Resources)> {
    let job_type = JobType::parse(job_type).map_err(quota_error)?;
    Ok((
        job_type,
        Resources {
            cpu,
            memory,
            gpu,
            vram_mb,
        },
    ))
}

impl PyQuotaBackend {
    fn call<'py, T: Send, F>(&self, py: Python<'py>, f: F) -> PyResult<T>
    where
        F: FnOnce(&dyn QuotaBackend) -> plugin_scheduling_core::quota::Result<T> + Send,
    {
        let inner = Arc::clone(&self.inner);
        py.detach(move || f(inner.as_ref())).map_err(quota_error)
    }

    fn decision<'py>(py: Python<'py>, d: Decision) -> PyResult<Option<Bound<'py, PyAny>>> {
        match d {
            Decision::Allowed => Ok(None),
            Decision::Denied(why) => {
                let dict = pythonize::pythonize(py, &why)?;
                dict.set_item("reason", why.to_string())?;
                Ok(Some(dict))
            }
        }
    }
}

#[pymethods]
impl PyQuotaBackend {
    #[staticmethod]
    #[pyo3(signature = (path=None))]
    fn sqlite(py: Python<'_>, path: Option<PathBuf>) -> PyResult<Self> {
        let store = py
            .detach(move || SqliteStore::open(path.as_deref()))
            .map_err(quota_error)?;
        Ok(Self {
            inner: Arc::new(store),
        })
    }

    /// `lock_timeout`: seconds a write waits for a project's row held by
    /// another transaction (`None`: 10 s).
    #[staticmethod]
    #[pyo3(signature = (dsn, lock_timeout=None))]
    fn postgres(py: Python<'_>, dsn: String, lock_timeout: Option<f64>) -> PyResult<Self> {
        let timeout = match lock_timeout {
            None => DEFAULT_LOCK_TIMEOUT,
            Some(s) => Duration::try_from_secs_f64(s).map_err(|_| {
                InvalidQuota::new_err(format!(
                    "lock_timeout must be a number of seconds between 0.001 and 3600, got {s}"
                ))
            })?,
        };
        let store = py
            .detach(move || PostgresStore::connect_with(&dsn, timeout))
            .map_err(quota_error)?;
        Ok(Self {
            inner: Arc::new(store),
        })
    }

    #[staticmethod]
    #[pyo3(signature = (prefix, user=None, bin_dir=None, ledger=None))]
    fn slurm(
        py: Python<'_>,
        prefix: String,
        user: Option<String>,
        bin_dir: Option<PathBuf>,
        ledger: Option<PathBuf>,
    ) -> PyResult<Self> {
        let store = py
            .detach(move || {
                SlurmStore::new(
                    &prefix,
                    user.as_deref(),
                    bin_dir.as_deref(),
                    ledger.as_deref(),
                )
            })
            .map_err(quota_error)?;
        Ok(Self {
            inner: Arc::new(store),
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get<'py>(&self, py: Python<'py>, project: String) -> PyResult<Option<Bound<'py, PyAny>>> {
        let info = self.call(py, move |b| b.get(&project))?;
        Ok(info.map(|i| pythonize::pythonize(py, &i)).transpose()?)
    }

    fn set<'py>(
        &self,
        py: Python<'py>,
        project: String,
        fields: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let gpu_quota = match fields.get_item("gpu_quota")? {
            None => Patch::Keep,
            Some(v) if v.is_none() => Patch::Clear,
            Some(v) => Patch::Set(v.extract().map_err(|_| {
                InvalidQuota::new_err(format!(
                    "gpu_quota must be a whole number or None, got {}",
                    describe(&v)
                ))
            })?),
        };
        let enforce_quota = match fields.get_item("enforce_quota")? {
            None => None,
            Some(v) => Some(v.extract::<bool>().map_err(|_| {
                InvalidQuota::new_err(format!(
                    "enforce_quota must be a bool, got {}",
                    describe(&v)
                ))
            })?),
        };
        let patch = QuotaPatch {
            cpu_quota: patch_f64(fields, "cpu_quota")?,
            memory_quota: patch_f64(fields, "memory_quota")?,
            gpu_quota,
            vram_quota_mb: patch_f64(fields, "vram_quota_mb")?,
            enforce_quota,
        };
        let info = self.call(py, move |b| b.set(&project, &patch))?;
        Ok(pythonize::pythonize(py, &info)?)
    }

    /// `None` when the request fits, else why not (a dict naming the
    /// resource); `allocate`: also record it when it fits (atomically).
    fn decide<'py>(
        &self,
        py: Python<'py>,
        project: String,
        job_type: &str,
        request: Request,
        allocate: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (job_type, request) = parse_request(job_type, request)?;
        let d = self.call(py, move |b| {
            if allocate {
                b.allocate(&project, job_type, &request)
            } else {
                b.check(&project, job_type, &request)
            }
        })?;
        Self::decision(py, d)
    }

    fn release(
        &self,
        py: Python<'_>,
        project: String,
        job_type: &str,
        request: Request,
    ) -> PyResult<()> {
        let (job_type, request) = parse_request(job_type, request)?;
        self.call(py, move |b| b.release(&project, job_type, &request))
    }

    /// `decide(..., allocate=True)` recorded under `holder` in the same
    /// transaction (a holder already holding is allowed, not charged again).
    fn allocate_held<'py>(
        &self,
        py: Python<'py>,
        holder: String,
        project: String,
        job_type: &str,
        request: Request,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (job_type, request) = parse_request(job_type, request)?;
        let d = self.call(py, move |b| {
            b.allocate_held(&holder, &project, job_type, &request)
        })?;
        Self::decision(py, d)
    }

    /// Releases what `holder` holds (True), or nothing (False): at most once.
    fn release_held(&self, py: Python<'_>, holder: String) -> PyResult<bool> {
        self.call(py, move |b| b.release_held(&holder))
    }

    /// `[(holder, project_id, job_type)]` of the holders starting with `prefix`.
    fn holds(&self, py: Python<'_>, prefix: String) -> PyResult<Vec<(String, String, String)>> {
        let holds = self.call(py, move |b| b.holds(&prefix))?;
        Ok(holds
            .into_iter()
            .map(|h| (h.holder, h.project, h.job_type.as_str().to_owned()))
            .collect())
    }

    fn usage<'py>(&self, py: Python<'py>, project: String) -> PyResult<Bound<'py, PyAny>> {
        let report = self.call(py, move |b| b.usage(&project))?;
        Ok(pythonize::pythonize(py, &report)?)
    }

    fn __repr__(&self) -> String {
        format!("<_QuotaBackend {}>", self.inner.describe())
    }
}

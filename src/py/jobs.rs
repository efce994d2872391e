//! `JobTable`: the core's job table ([`JobQueue`]) for `plugin_scheduling.jobs`.
//! Thin: argument conversion, one error mapping (`errors::job_error`) and
//! dicts out. What a job runs lives in `jobs.py`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::collections::BTreeSet;

use super::errors::{describe, job_error};
use plugin_scheduling_core::clock::{Clock, SystemClock};
use plugin_scheduling_core::jobs::evict::{Memory, Plugins};
use plugin_scheduling_core::jobs::journal::Journal;
use plugin_scheduling_core::jobs::plan::{self, Totals};
use plugin_scheduling_core::jobs::queue::{Capacity, JobQueue, Recovery, Requeue};
use plugin_scheduling_core::jobs::recovery::{self as procs, Mode, Verdict};
use plugin_scheduling_core::jobs::{
    Durability, Job, JobSpec, JobState, Machine, Resources, Retention,
};
use plugin_scheduling_core::policy;

/// The job table: records, validated transitions, the pending set in the
/// policy's order, the admission pass and the journal.
///
/// Not re-entrant: the callbacks of `dispatch` must not call the table
/// (they get what they need as arguments); a call from another thread
/// while one runs raises instead of waiting.
#[pyclass(module = "plugin_scheduling", name = "JobTable")]
pub struct JobTable {
    inner: Mutex<JobQueue>,
    /// The thread token of the call holding `inner` (0: none).
    owner: AtomicU64,
    clock: Option<Py<PyAny>>,
}

/// A small unique number per thread (never 0).
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// The locked table, remembering which thread holds it.
struct TableGuard<'a> {
    guard: std::sync::MutexGuard<'a, JobQueue>,
    owner: &'a AtomicU64,
}

impl<'a> TableGuard<'a> {
    fn new(guard: std::sync::MutexGuard<'a, JobQueue>, owner: &'a AtomicU64, me: u64) -> Self {
        owner.store(me, AtomicOrdering::Release);
        Self { guard, owner }
    }
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        self.owner.store(0, AtomicOrdering::Release);
    }
}

impl std::ops::Deref for TableGuard<'_> {
    type Target = JobQueue;
    fn deref(&self) -> &JobQueue {
        &self.guard
    }
}

impl std::ops::DerefMut for TableGuard<'_> {
    fn deref_mut(&mut self) -> &mut JobQueue {
        &mut self.guard
    }
}

fn state_arg(field: &str, s: &str) -> PyResult<JobState> {
    JobState::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{field} must be one of QUEUED, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED, got {s:?}"
        ))
    })
}

fn job_dict<'py>(py: Python<'py>, job: &Job, to_unix: f64) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let i = &job.info;
    d.set_item("job_id", i.id)?;
    d.set_item("module", i.name.as_ref())?;
    d.set_item("state", job.state.name())?;
    d.set_item("priority", i.priority)?;
    d.set_item("user", i.user.as_deref())?;
    d.set_item("project", i.project.as_deref())?;
    d.set_item("queue", job.queue.as_ref())?;
    d.set_item("submitted", i.submitted)?;
    d.set_item("submitted_unix", i.submitted + to_unix)?;
    d.set_item("deadline", i.deadline)?;
    d.set_item("estimated_duration", i.estimated_duration)?;
    d.set_item("cost_per_second", job.cost_per_second)?;
    let r = PyDict::new(py);
    r.set_item("cpu_cores", job.resources.cpu_cores)?;
    r.set_item("memory_mb", job.resources.memory_mb)?;
    r.set_item("gpu_count", job.resources.gpu_count)?;
    r.set_item("vram_mb", job.resources.vram_mb)?;
    d.set_item("requirements", r)?;
    d.set_item("kind", job.kind.as_ref())?;
    d.set_item("payload", job.payload.as_ref())?;
    d.set_item("max_retries", job.max_retries)?;
    d.set_item("attempts", job.attempts)?;
    d.set_item("preemptions", job.preemptions)?;
    d.set_item("retries", job.retries)?;
    d.set_item("error", job.error.as_deref())?;
    d.set_item("progress", job.progress)?;
    d.set_item("progress_message", job.progress_message.as_deref())?;
    d.set_item("started", job.started)?;
    d.set_item("ended", job.ended)?;
    d.set_item("submitted_at", i.submitted + to_unix)?;
    d.set_item("started_at", job.started.map(|t| t + to_unix))?;
    d.set_item("ended_at", job.ended.map(|t| t + to_unix))?;
    d.set_item("ran_s", job.ran_s)?;
    Ok(d)
}

/// Seconds from `clock` (a Python callable) or the monotonic clock.
pub(crate) fn clock_now(clock: Option<&Py<PyAny>>, py: Python<'_>) -> PyResult<f64> {
    match clock {
        None => Ok(SystemClock.now()),
        Some(c) => {
            let v = c.bind(py).call0()?;
            let t: f64 = v.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "clock() must return a number of seconds, got {}",
                    describe(&v)
                ))
            })?;
            if t.is_finite() {
                Ok(t)
            } else {
                Err(PyValueError::new_err(format!(
                    "clock() must return a finite number of seconds, got {t}"
                )))
            }
        }
    }
}

fn recovery_dict(py: Python<'_>, r: Recovery) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("queued", r.queued)?;
    d.set_item("requeued", r.requeued)?;
    d.set_item("failed", r.failed)?;
    d.set_item("adopted", r.adopted)?;
    Ok(d)
}

impl JobTable {
    /// The table. A call from inside a call (a dispatch callback calling
    /// back, on the same thread) is refused rather than deadlocked; another
    /// thread waits for the table with the GIL released.
    fn table(&self) -> PyResult<TableGuard<'_>> {
        let me = thread_token();
        loop {
            match self.inner.try_lock() {
                Ok(guard) => return Ok(TableGuard::new(guard, &self.owner, me)),
                // Every mutation of the table completes or leaves it unchanged
                // before anything can panic, so a poisoned lock is still sound.
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    return Ok(TableGuard::new(p.into_inner(), &self.owner, me))
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    if self.owner.load(AtomicOrdering::Acquire) == me {
                        return Err(PyRuntimeError::new_err(
                            "JobTable is busy: a dispatch callback called it back during the pass",
                        ));
                    }
                    Python::attach(|py| {
                        py.detach(|| std::thread::sleep(std::time::Duration::from_micros(20)))
                    });
                }
            }
        }
    }
}

#[pymethods]
impl JobTable {
    /// `policy`: a core policy name; `journal`: an SQLite path, or None (in
    /// memory); `clock`: a callable returning seconds (default monotonic);
    /// `batch`: journal writes per commit at most; `own`: take the journal
    /// as its one owner (refused while a live scheduler owns it; viewers
    /// pass False); `durability`: `"sync"` (every write committed before
    /// the call returns) or `"batched"` (the caller flushes);
    /// `retention_jobs`/`retention_age_s`: finished jobs kept (None: no bound).
    #[new]
    #[pyo3(signature = (policy = "fifo", journal = None, clock = None, batch = 1024, own = false,
                        durability = "batched", retention_jobs = Some(10_000),
                        retention_age_s = Some(604_800.0)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        policy: &str,
        journal: Option<PathBuf>,
        clock: Option<Py<PyAny>>,
        batch: usize,
        own: bool,
        durability: &str,
        retention_jobs: Option<usize>,
        retention_age_s: Option<f64>,
    ) -> PyResult<Self> {
        let Some(durability) = Durability::parse(durability) else {
            return Err(PyValueError::new_err(format!(
                "durability must be 'sync' or 'batched', got {durability:?}"
            )));
        };
        let Some(p) = policy::by_name(policy, None) else {
            return Err(PyValueError::new_err(format!(
                "policy must be one of {}, got {policy:?}",
                policy::NAMES.join(", ")
            )));
        };
        if let Some(c) = &clock {
            if !c.bind(py).is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "clock must be a callable returning seconds, got {}",
                    describe(c.bind(py))
                )));
            }
        }
        let now = clock_now(clock.as_ref(), py)?;
        let retention = Retention {
            max_jobs: retention_jobs,
            max_age_s: retention_age_s,
        }
        .checked()
        .map_err(job_error)?;
        let journal = match journal {
            Some(path) if own => Some(Journal::open_owned(&path, batch).map_err(job_error)?),
            Some(path) => Some(Journal::open(&path, batch).map_err(job_error)?),
            None => None,
        };
        let mut table = JobQueue::new(p, journal);
        table.set_clock(now);
        table.set_durability(durability);
        table.set_retention(retention, now).map_err(job_error)?;
        Ok(Self {
            inner: Mutex::new(table),
            owner: AtomicU64::new(0),
            clock,
        })
    }

    /// The table's clock, in seconds.
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        clock_now(self.clock.as_ref(), py)
    }

    /// `"sync"` or `"batched"`.
    #[getter]
    fn durability(&self) -> PyResult<&'static str> {
        Ok(match self.table()?.durability() {
            Durability::Sync => "sync",
            Durability::Batched => "batched",
        })
    }

    /// The dead owner whose journal was taken over at open:
    /// `{"pid", "start_ticks", "since"}`, or None.
    #[getter]
    fn took_over<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let t = self.table()?;
        let Some(o) = t.took_over() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("pid", o.pid)?;
        d.set_item("start_ticks", o.start)?;
        d.set_item("since", o.since)?;
        Ok(Some(d))
    }

    /// What the machine has (None: not known): later submissions that can
    /// never fit are refused. `gpu_vram_mb`: each GPU's total VRAM.
    #[pyo3(signature = (cpu_cores = None, memory_mb = None, gpu_vram_mb = None))]
    fn set_machine(
        &self,
        cpu_cores: Option<f64>,
        memory_mb: Option<f64>,
        gpu_vram_mb: Option<Vec<f64>>,
    ) -> PyResult<()> {
        self.table()?.set_machine(Machine {
            cpu_cores,
            memory_mb,
            gpu_vram_mb,
        });
        Ok(())
    }

    /// Fails the queued jobs that can never fit the machine: `[(job_id, why)]`.
    fn refuse_never_fit(&self, py: Python<'_>) -> PyResult<Vec<(u64, String)>> {
        let now = self.now(py)?;
        self.table()?.refuse_never_fit(now).map_err(job_error)
    }

    /// Applies the retention now; ids dropped (this call's and earlier ones'
    /// not yet taken).
    fn prune(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        let now = self.now(py)?;
        let mut t = self.table()?;
        t.prune(now).map_err(job_error)?;
        Ok(t.take_pruned())
    }

    /// Ids dropped by retention since the last call.
    fn take_pruned(&self) -> PyResult<Vec<u64>> {
        Ok(self.table()?.take_pruned())
    }

    /// Commits and gives the journal (and its ownership) up.
    fn close(&self) -> PyResult<()> {
        self.table()?.close().map_err(job_error)
    }

    #[getter]
    fn policy(&self) -> PyResult<String> {
        Ok(self.table()?.policy().name().to_owned())
    }

    #[getter]
    fn journal_path(&self) -> PyResult<Option<String>> {
        Ok(self.table()?.journal_path())
    }

    /// Restores jobs from the journal: `{"queued", "requeued", "failed"}` ids.
    fn recover<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = self.now(py)?;
        let r = self.table()?.recover(now).map_err(job_error)?;
        recovery_dict(py, r)
    }

    /// Loads the journal's jobs as recorded, writing nothing (viewers).
    fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = self.now(py)?;
        let r = self.table()?.view(now).map_err(job_error)?;
        recovery_dict(py, r)
    }

    #[pyo3(signature = (name, priority = 0, max_concurrent_jobs = None))]
    fn add_queue(
        &self,
        name: &str,
        priority: i64,
        max_concurrent_jobs: Option<u32>,
    ) -> PyResult<()> {
        self.table()?
            .add_queue(name, priority, max_concurrent_jobs)
            .map_err(job_error)
    }

    /// Submits a job; its id. `priority` is on the core's 0–100 scale;
    /// `deadline` is seconds from now.
    #[pyo3(signature = (module, priority, deadline, estimated_duration, cost_per_second, user,
                        project, queue, cpu_cores, memory_mb, gpu_count, vram_mb, kind, payload,
                        max_retries))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        module: &str,
        priority: f64,
        deadline: Option<f64>,
        estimated_duration: Option<f64>,
        cost_per_second: Option<f64>,
        user: Option<&str>,
        project: Option<&str>,
        queue: Option<&str>,
        cpu_cores: f64,
        memory_mb: f64,
        gpu_count: u32,
        vram_mb: f64,
        kind: &str,
        payload: &str,
        max_retries: u32,
    ) -> PyResult<u64> {
        let now = self.now(py)?;
        let spec = JobSpec {
            name: module.to_owned(),
            priority,
            deadline_in: deadline,
            estimated_duration,
            cost_per_second,
            user: user.map(str::to_owned),
            project: project.map(str::to_owned),
            queue: queue.map(str::to_owned),
            resources: Resources {
                cpu_cores,
                memory_mb,
                gpu_count,
                vram_mb,
            },
            kind: kind.to_owned(),
            payload: payload.to_owned(),
            max_retries,
        };
        self.table()?.submit(spec, now).map_err(job_error)
    }

    /// The job's record as a dict (`KeyError` subclass `UnknownJob` if none).
    fn job<'py>(&self, py: Python<'py>, job_id: u64) -> PyResult<Bound<'py, PyDict>> {
        let t = self.table()?;
        let job = t.get(job_id).ok_or_else(|| {
            job_error(plugin_scheduling_core::jobs::JobError::Unknown { id: job_id })
        })?;
        job_dict(py, job, t.to_unix(0.0))
    }

    /// The job's state name.
    fn state(&self, job_id: u64) -> PyResult<&'static str> {
        self.table()?
            .get(job_id)
            .map(|j| j.state.name())
            .ok_or_else(|| {
                job_error(plugin_scheduling_core::jobs::JobError::Unknown { id: job_id })
            })
    }

    /// Raises `InvalidTransition` unless `call` may move the job to `to`.
    fn check(&self, job_id: u64, to: &str, call: &str) -> PyResult<()> {
        let to = state_arg("to", to)?;
        self.table()?
            .check(job_id, to, call)
            .map(|_| ())
            .map_err(job_error)
    }

    /// Moves the job to `to` (validated); the state before.
    #[pyo3(signature = (job_id, to, call, reason = None))]
    fn transition(
        &self,
        py: Python<'_>,
        job_id: u64,
        to: &str,
        call: &str,
        reason: Option<&str>,
    ) -> PyResult<&'static str> {
        let to = state_arg("to", to)?;
        let now = self.now(py)?;
        self.table()?
            .transition(job_id, to, call, reason, now)
            .map(JobState::name)
            .map_err(job_error)
    }

    /// Back to the queue: `why` is `"preempted"`, `"retried"` or `"interrupted"`.
    fn requeue(
        &self,
        py: Python<'_>,
        job_id: u64,
        why: &str,
        reason: &str,
    ) -> PyResult<&'static str> {
        let why = match why {
            "preempted" => Requeue::Preempted,
            "retried" => Requeue::Retried,
            "interrupted" => Requeue::Interrupted,
            other => {
                return Err(PyValueError::new_err(format!(
                    "why must be 'preempted', 'retried' or 'interrupted', got {other:?}"
                )))
            }
        };
        let now = self.now(py)?;
        self.table()?
            .requeue(job_id, why, reason, now)
            .map(JobState::name)
            .map_err(job_error)
    }

    fn set_priority(&self, py: Python<'_>, job_id: u64, priority: f64) -> PyResult<()> {
        let now = self.now(py)?;
        self.table()?
            .set_priority(job_id, priority, now)
            .map_err(job_error)
    }

    /// Raises the job's memory needs; `(memory_mb, vram_mb)` after.
    fn grow(&self, job_id: u64, memory_mb: f64, vram_mb: f64) -> PyResult<(f64, f64)> {
        self.table()?
            .grow(job_id, memory_mb, vram_mb)
            .map(|r| (r.memory_mb, r.vram_mb))
            .map_err(job_error)
    }

    #[pyo3(signature = (job_id, fraction, message = None))]
    fn progress(&self, job_id: u64, fraction: f64, message: Option<&str>) -> PyResult<f64> {
        self.table()?
            .set_progress(job_id, fraction, message)
            .map_err(job_error)
    }

    /// One admission pass. `take(job_id, module, gpu_count, vram_mb,
    /// memory_mb)` returns a hold when the job fits now, else None;
    /// `eligible(job_id, project, cpu_cores, memory_mb, gpu_count, vram_mb)`
    /// (optional) returns None or why the job is passed over. Returns
    /// `(started [(job_id, hold)], blocked_id, skipped [(job_id, why)],
    /// head_start, error)`: an exception raised by a callback is returned
    /// (after the jobs taken before it are recorded), not raised.
    #[pyo3(signature = (cpu_cores, gpus, memory_mb, take, eligible = None))]
    fn dispatch<'py>(
        &self,
        py: Python<'py>,
        cpu_cores: f64,
        gpus: u32,
        memory_mb: f64,
        take: Bound<'py, PyAny>,
        eligible: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let now = self.now(py)?;
        let capacity = Capacity {
            cpu_cores,
            gpus,
            memory_mb,
        };
        let (outcome, committed) = self.table()?.dispatch_durable(
            now,
            capacity,
            |job| -> PyResult<Option<String>> {
                let Some(check) = &eligible else {
                    return Ok(None);
                };
                let r = &job.resources;
                let v = check.call1((
                    job.id(),
                    job.info.project.as_deref(),
                    r.cpu_cores,
                    r.memory_mb,
                    r.gpu_count,
                    r.vram_mb,
                ))?;
                if v.is_none() {
                    Ok(None)
                } else {
                    Ok(Some(v.str()?.to_string()))
                }
            },
            |job| -> PyResult<Option<Py<PyAny>>> {
                let r = &job.resources;
                let v = take.call1((
                    job.id(),
                    job.info.name.as_ref(),
                    r.gpu_count,
                    r.vram_mb,
                    r.memory_mb,
                ))?;
                Ok((!v.is_none()).then(|| v.unbind()))
            },
        );
        let started = PyList::empty(py);
        for (id, hold) in outcome.started {
            started.append((id, hold))?;
        }
        let skipped = PyList::empty(py);
        for (id, why) in outcome.skipped {
            skipped.append((id, why))?;
        }
        let error: Option<Bound<'py, PyAny>> = outcome
            .error
            .or_else(|| committed.err().map(job_error))
            .map(|e| e.into_value(py).into_bound(py).into_any());
        PyTuple::new(
            py,
            [
                started.into_any(),
                outcome.blocked.into_pyobject(py)?.into_any(),
                skipped.into_any(),
                outcome.head_start.into_pyobject(py)?.into_any(),
                error.into_pyobject(py)?.into_any(),
            ],
        )
    }

    /// The policy's victims for the blocked job `head` (ids, may be empty).
    fn preemption_advice(
        &self,
        head: u64,
        cpu_cores: f64,
        gpus: u32,
        memory_mb: f64,
    ) -> PyResult<Vec<u64>> {
        self.table()?
            .preemption_advice(
                head,
                Capacity {
                    cpu_cores,
                    gpus,
                    memory_mb,
                },
            )
            .map_err(job_error)
    }

    /// Pending ids in the order they would be considered now.
    #[pyo3(signature = (limit = usize::MAX))]
    fn pending(&self, py: Python<'_>, limit: usize) -> PyResult<Vec<u64>> {
        let now = self.now(py)?;
        Ok(self.table()?.pending_order(now, limit))
    }

    /// Why the policy puts the job where it is.
    fn describe(&self, py: Python<'_>, job_id: u64) -> PyResult<String> {
        let now = self.now(py)?;
        self.table()?.describe(job_id, now).map_err(job_error)
    }

    /// Jobs per state name.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.table()?;
        let d = PyDict::new(py);
        for s in JobState::ALL {
            d.set_item(s.name(), t.count(s))?;
        }
        Ok(d)
    }

    /// Counters since the table was opened.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.table()?.counters();
        let d = PyDict::new(py);
        d.set_item("submitted", c.submitted)?;
        d.set_item("started", c.started)?;
        d.set_item("preempted", c.preempted)?;
        d.set_item("retried", c.retried)?;
        d.set_item("interrupted", c.interrupted)?;
        Ok(d)
    }

    /// `(cpu_cores, gpus, memory_mb)` held by running and paused jobs.
    fn active(&self) -> PyResult<(f64, u32, f64)> {
        Ok(self.table()?.active())
    }

    fn queue_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let t = self.table()?;
        let out = PyList::empty(py);
        for q in t.queues() {
            let d = PyDict::new(py);
            d.set_item("name", q.name.as_ref())?;
            d.set_item("priority", q.priority)?;
            d.set_item("max_concurrent_jobs", q.max_concurrent_jobs)?;
            d.set_item("running_jobs", q.running_jobs)?;
            d.set_item("pending_jobs", q.pending_jobs)?;
            d.set_item("total_jobs", q.total_jobs)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Job records (optionally of one state), by id.
    #[pyo3(signature = (state = None))]
    fn records<'py>(&self, py: Python<'py>, state: Option<&str>) -> PyResult<Bound<'py, PyList>> {
        let state = state.map(|s| state_arg("state", s)).transpose()?;
        let t = self.table()?;
        let offset = t.to_unix(0.0);
        let out = PyList::empty(py);
        for job in t.list(state) {
            out.append(job_dict(py, job, offset)?)?;
        }
        Ok(out)
    }

    /// Journal history rows (of one job, or all), oldest first.
    #[pyo3(signature = (job_id = None, limit = 1000))]
    fn history<'py>(
        &self,
        py: Python<'py>,
        job_id: Option<u64>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = {
            let mut t = self.table()?;
            t.flush().map_err(job_error)?;
            t.history(job_id, limit).map_err(job_error)?
        };
        let out = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            d.set_item("seq", r.seq)?;
            d.set_item("job_id", r.job_id)?;
            d.set_item("at", r.at)?;
            d.set_item("from", r.from)?;
            d.set_item("to", r.to)?;
            d.set_item("call", r.call)?;
            d.set_item("reason", r.reason)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Commits the journal's buffered writes.
    fn flush(&self) -> PyResult<()> {
        self.table()?.flush().map_err(job_error)
    }

    /// Journal writes not yet committed.
    #[getter]
    fn unflushed(&self) -> PyResult<usize> {
        Ok(self.table()?.unflushed())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.table()?.len())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(c) = &self.clock {
            visit.call(c)?;
        }
        Ok(())
    }
}

fn no_journal() -> PyErr {
    PyValueError::new_err("this JobTable has no journal (journal=None): no process records")
}

fn mode_arg(mode: &str) -> PyResult<Mode> {
    Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "recovery_mode must be 'kill' or 'adopt', got {mode:?}"
        ))
    })
}

/// Process records and crash recovery (core `jobs::recovery`).
#[pymethods]
impl JobTable {
    /// The journal's identity (names job markers and quota holders); None without a journal.
    fn journal_id(&self) -> PyResult<Option<String>> {
        let t = self.table()?;
        t.journal_ref()
            .map(|j| j.journal_id())
            .transpose()
            .map_err(job_error)
    }

    /// Records (committed at once, whatever the durability) that job
    /// `job_id` is about to be spawned, with its marker `token`.
    fn process_intent(&self, job_id: u64, token: &str) -> PyResult<()> {
        let t = self.table()?;
        let j = t.journal_ref().ok_or_else(no_journal)?;
        j.process_intent(job_id, token).map_err(job_error)
    }

    /// Records (committed at once) job `job_id`'s spawned process; its
    /// start time (0 when it is already gone).
    fn process_spawned(&self, job_id: u64, pid: u32, pgid: u32) -> PyResult<u64> {
        // A zombie child still shows its start time.
        let start = procs::read_stat(pid).map_or(0, |s| s.start_time);
        let t = self.table()?;
        let j = t.journal_ref().ok_or_else(no_journal)?;
        j.process_spawned(job_id, pid, start, pgid)
            .map_err(job_error)?;
        Ok(start)
    }

    /// Forgets job `job_id`'s process record, at once.
    fn process_ended(&self, job_id: u64) -> PyResult<()> {
        let t = self.table()?;
        match t.journal_ref() {
            Some(j) => j.process_ended(job_id).map_err(job_error),
            None => Ok(()),
        }
    }

    /// `[{"job_id", "token", "pid", "start_time", "pgid"}]`.
    fn processes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = {
            let t = self.table()?;
            match t.journal_ref() {
                Some(j) => j.processes().map_err(job_error)?,
                None => Vec::new(),
            }
        };
        let out = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            d.set_item("job_id", r.job_id)?;
            d.set_item("token", r.token)?;
            d.set_item("pid", r.pid)?;
            d.set_item("start_time", r.start_time)?;
            d.set_item("pgid", r.pgid)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// What to do, per job, with the previous incarnation's processes
    /// (`mode`: "kill" or "adopt"), from the journal's records and `/proc`
    /// now: `[{"job_id", "verdict": "gone"|"adopt"|"kill", "pid",
    /// "start_time", "pgid", "survivors": [(pid, start_time)]}]`. Only a
    /// decision: the journal's owner (`own=True`, which a live owner
    /// refuses) acts on it, before it spawns anything.
    fn recovery_plan<'py>(&self, py: Python<'py>, mode: &str) -> PyResult<Bound<'py, PyList>> {
        let mode = mode_arg(mode)?;
        let (records, journal_id) = {
            let t = self.table()?;
            let j = t.journal_ref().ok_or_else(no_journal)?;
            (
                j.processes().map_err(job_error)?,
                j.journal_id().map_err(job_error)?,
            )
        };
        if records.is_empty() {
            // Every spawn writes its record first: no record, no process
            // (and no need to read /proc).
            return Ok(PyList::empty(py));
        }
        let decisions = py.detach(|| {
            let snapshot = procs::scan();
            let marked = procs::scan_markers(&snapshot, &journal_id);
            procs::plan(&records, &snapshot, &marked, mode)
        });
        let out = PyList::empty(py);
        for dec in decisions {
            let d = PyDict::new(py);
            d.set_item("job_id", dec.job_id)?;
            let (verdict, pid, start, pgid, survivors) = match dec.verdict {
                Verdict::Gone => ("gone", None, None, None, Vec::new()),
                Verdict::Adopt {
                    pid,
                    start_time,
                    pgid,
                } => ("adopt", Some(pid), Some(start_time), Some(pgid), Vec::new()),
                Verdict::Kill { pgid, survivors } => (
                    "kill",
                    None,
                    None,
                    pgid,
                    survivors
                        .into_iter()
                        .map(|s| (s.pid, s.start_time))
                        .collect(),
                ),
            };
            d.set_item("verdict", verdict)?;
            d.set_item("pid", pid)?;
            d.set_item("start_time", start)?;
            d.set_item("pgid", pgid)?;
            d.set_item("survivors", survivors)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// `recover()`, keeping the running or paused jobs in `adopt` as they
    /// are (their process survived and is reattached).
    fn recover_adopting<'py>(
        &self,
        py: Python<'py>,
        adopt: Vec<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let now = self.now(py)?;
        let adopt: BTreeSet<u64> = adopt.into_iter().collect();
        let r = self
            .table()?
            .recover_adopting(now, &adopt)
            .map_err(job_error)?;
        recovery_dict(py, r)
    }

    /// The start time (clock ticks after boot) of the live process `pid`, if any.
    #[staticmethod]
    fn proc_start_time(pid: u32) -> Option<u64> {
        procs::start_time(pid)
    }

    /// The journal's quota holders to release at recovery: all but the adopted jobs'.
    #[staticmethod]
    fn holders_to_release(
        holders: Vec<String>,
        journal_id: &str,
        adopted: Vec<u64>,
    ) -> Vec<String> {
        let adopted: BTreeSet<u64> = adopted.into_iter().collect();
        procs::holders_to_release(&holders, journal_id, &adopted)
    }

    /// The marker token (and quota holder) of job `job_id` of the journal `journal_id`.
    #[staticmethod]
    fn marker_token(journal_id: &str, job_id: u64) -> String {
        procs::marker_token(journal_id, job_id)
    }
}

/// Loaded plugins of a host and which idle ones to unload (core `jobs::evict`).
#[pyclass(module = "plugin_scheduling", name = "LoadedPlugins")]
pub struct LoadedPlugins {
    inner: Mutex<Plugins>,
}

impl LoadedPlugins {
    fn pool(&self) -> std::sync::MutexGuard<'_, Plugins> {
        // Every method changes the pool in whole inserts/updates: a panic
        // cannot leave it half-changed, so a poisoned lock is still sound.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[pymethods]
impl LoadedPlugins {
    #[new]
    fn new() -> Self {
        Self {
            inner: Mutex::new(Plugins::default()),
        }
    }

    #[pyo3(signature = (name, vram_mb, ram_mb, device, pinned, now))]
    fn loaded(
        &self,
        name: &str,
        vram_mb: f64,
        ram_mb: f64,
        device: Option<u32>,
        pinned: bool,
        now: f64,
    ) {
        self.pool()
            .loaded(name, vram_mb, ram_mb, device, pinned, now);
    }

    fn unloaded(&self, name: &str) -> bool {
        self.pool().unloaded(name)
    }

    fn begin(&self, name: &str, now: f64) {
        self.pool().begin(name, now);
    }

    fn end(&self, name: &str, now: f64) {
        self.pool().end(name, now);
    }

    /// Names to unload (least recently used idle first) to free `needed_mb`
    /// of `memory` (`"vram"` with `device`, or `"ram"`).
    #[pyo3(signature = (memory, needed_mb, device = None))]
    fn choose(&self, memory: &str, needed_mb: f64, device: Option<u32>) -> PyResult<Vec<String>> {
        let memory = match memory {
            "vram" => Memory::Vram(device),
            "ram" => Memory::Ram,
            other => {
                return Err(PyValueError::new_err(format!(
                    "memory must be 'vram' or 'ram', got {other:?}"
                )))
            }
        };
        Ok(self.pool().choose(memory, needed_mb))
    }

    fn expired(&self, keep_alive_s: f64, now: f64) -> Vec<String> {
        self.pool().expired(keep_alive_s, now)
    }

    /// `{name: {"vram_mb", "ram_mb", "device", "pinned", "active", "last_used"}}`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for p in self.pool().iter() {
            let d = PyDict::new(py);
            d.set_item("vram_mb", p.vram_mb)?;
            d.set_item("ram_mb", p.ram_mb)?;
            d.set_item("device", p.device)?;
            d.set_item("pinned", p.pinned)?;
            d.set_item("active", p.active)?;
            d.set_item("last_used", p.last_used)?;
            out.set_item(&p.name, d)?;
        }
        Ok(out)
    }
}

/// Start planning (core `jobs::plan`).
#[pymethods]
impl JobTable {
    /// The first `limit` pending jobs in the policy's order, each as
    /// `(job_id, position, estimated_start)`: the start in Unix seconds,
    /// None when unknown. A total given as None is not known (it never
    /// delays a start).
    #[pyo3(signature = (cpu_cores, gpus, memory_mb = None, vram_mb = None, limit = 500))]
    fn plan(
        &self,
        py: Python<'_>,
        cpu_cores: f64,
        gpus: i64,
        memory_mb: Option<f64>,
        vram_mb: Option<f64>,
        limit: usize,
    ) -> PyResult<Vec<(u64, usize, Option<f64>)>> {
        let gpus = u32::try_from(gpus).map_err(|_| {
            PyValueError::new_err(format!("gpus must be an int in 0..=4294967295, got {gpus}"))
        })?;
        let now = self.now(py)?;
        let mut t = self.table()?;
        let totals = Totals {
            cpu_cores,
            gpus,
            memory_mb: memory_mb.unwrap_or(f64::INFINITY),
            vram_mb: vram_mb.unwrap_or(f64::INFINITY),
        };
        let planned = plan::explain(&mut t, now, totals, limit).map_err(job_error)?;
        Ok(planned
            .into_iter()
            .map(|p| {
                (
                    p.job_id,
                    p.position,
                    p.estimated_start.map(|s| t.to_unix(s)),
                )
            })
            .collect())
    }
}

//! `ReservationScheduler`: the Python face of the core's reservation queue
//! (`plugin_scheduling_core::reserve::queue`). This layer reads manifests
//! and stats, waits (GIL released, Ctrl-C honoured; async waits through
//! `_drivers`), logs, and calls wakers after unlocking. Every decision —
//! who is next, what fits, where it goes — is the core's.
//!
//! Lock rule: no Python code runs while the queue's lock is held (stats,
//! manifests and policies are read before, wakers and logs run after), so a
//! thread holding the GIL and waiting for the lock can never deadlock with
//! the holder.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet, PyTuple};
use pyo3::PyTraverseError;

use super::errors::{core, describe, int_in, seconds, ReservationTimeout};
use super::inputs::PluginName;
use super::loop_guard::warn_if_blocking_a_loop;
use super::reservation_backend::{
    listen, lock, next_token_id, Backend, Queue, Reclaims, Registry, Signal,
};
use super::reservation_inputs::{
    declared_need, gpu_processes, job_info, mb, reading, JobOverrides,
};
use super::schedulers::{patchable, require_callable};
use super::waiting::{async_step, sleep_or_wake, AsyncWaker, Constructed, LoggerCell, WakeSlot};
use plugin_scheduling_core::clock::{Clock, ManualClock, SystemClock, WallClock};
use plugin_scheduling_core::error::finite_in;
use plugin_scheduling_core::policy::{External, JobInfo, MultifactorWeights, PolicySpec};
use plugin_scheduling_core::queue_wait::{QueueWait, Step};
use plugin_scheduling_core::reserve::ledger::{Caller, Finished, Others};
use plugin_scheduling_core::reserve::ledger::{Grant, GrantId, Limits, Need, RAM_MB};
use plugin_scheduling_core::reserve::peaks::Peaks;
use plugin_scheduling_core::reserve::per_process::PerProcess;
use plugin_scheduling_core::reserve::queue::{
    refusal_text, Collect, Event, MissingStats, Offer, ReservationQueue, Settings, WaiterId,
};
use plugin_scheduling_core::reserve::shared::{
    finish_owned, ledger_path, start_owned, Owners, SharedQueue, Token,
};
use plugin_scheduling_core::wake::WakeSignal;

/// A clock that moves only when told, for tests and notebooks:
/// `ReservationScheduler(clock=ManualClock())` stamps arrivals, ages,
/// deadlines, settle windows and expiries with it. (Waits still sleep in
/// real time, bounded by `poll_interval`.)
#[pyclass(
    module = "plugin_scheduling",
    frozen,
    name = "ManualClock",
    from_py_object
)]
#[derive(Clone)]
pub struct PyManualClock(pub ManualClock);

#[pymethods]
impl PyManualClock {
    #[new]
    #[pyo3(signature = (start = 0.0))]
    fn new(start: f64) -> PyResult<Self> {
        core(finite_in("start", start, 0.0, 1e15))?;
        Ok(Self(ManualClock::new(start)))
    }

    /// Seconds now.
    fn now(&self) -> f64 {
        self.0.now()
    }

    /// Moves time forward; returns the new time.
    fn advance(&self, seconds: f64) -> PyResult<f64> {
        core(finite_in("seconds", seconds, 0.0, 1e15))?;
        Ok(self.0.advance(seconds))
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(now={})", self.0.now())
    }
}

struct Waits {
    timeout: f64,
    poll_interval: f64,
}

/// Reserves what a plugin declares (per GPU device, and RAM, CPU cores and
/// declared pools) atomically: concurrent callers never double-book.
/// Waiters are served in the policy's order; a release wakes the one whose
/// turn it is at once.
#[pyclass(module = "plugin_scheduling", subclass, frozen, dict, weakref)]
pub struct ReservationScheduler {
    constructed: Constructed,
    patched: AtomicBool,
    waits: Mutex<Waits>,
    logger: LoggerCell,
    /// The queue: in this process, or a shared ledger's (replaced whole by
    /// `__init__`).
    backend: Mutex<Arc<Backend>>,
    /// This scheduler's waiters in this process, by token id (a forked
    /// child starts with none).
    registry: PerProcess<Arc<Registry>>,
    /// Whether some grant had a pid attached at the last look (peaks are
    /// read from stats only then).
    has_pids: AtomicBool,
    /// Operations on the queue so far (a waiter's remembered turn holds only
    /// while no other operation came between).
    ops: AtomicU64,
    clock: Mutex<Arc<dyn Clock>>,
    /// A Python policy object whose `select_next_job` decides (None: the
    /// core policy decides alone).
    outside_policy: Mutex<Option<Py<PyAny>>>,
    warned_blocking: AtomicBool,
}

patchable!(ReservationScheduler);

/// A reservation, as Python sees it.
#[pyclass(module = "plugin_scheduling", frozen, name = "Grant")]
pub struct PyGrant {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    plugin: String,
    #[pyo3(get)]
    devices: Vec<u32>,
    #[pyo3(get)]
    vram_mb: f64,
    #[pyo3(get)]
    ram_mb: f64,
    /// Scalar pools reserved (`ram_mb`, `cpu_cores`, declared pools).
    #[pyo3(get)]
    pools: Vec<(String, f64)>,
    /// Admitted without GPU figures in the stats (no device reserved).
    #[pyo3(get)]
    without_gpu_figures: bool,
}

impl From<&Grant> for PyGrant {
    fn from(g: &Grant) -> Self {
        Self {
            id: g.id.0,
            plugin: g.plugin.clone(),
            devices: g.devices.clone(),
            vram_mb: g.vram_mb,
            ram_mb: g.ram_mb(),
            pools: g.pools.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            without_gpu_figures: g.without_gpu_figures,
        }
    }
}

#[pymethods]
impl PyGrant {
    /// `CUDA_VISIBLE_DEVICES` for the process that runs the plugin.
    #[getter]
    fn cuda_visible_devices(&self) -> String {
        let ids: Vec<String> = self.devices.iter().map(u32::to_string).collect();
        ids.join(",")
    }

    fn __repr__(&self) -> String {
        format!(
            "Grant(id={}, plugin={:?}, devices={:?}, vram_mb={:.0}, ram_mb={:.0})",
            self.id, self.plugin, self.devices, self.vram_mb, self.ram_mb
        )
    }
}

/// Wakes queued by wakes in progress on this thread (see `wake`).
type QueuedWake = (Arc<Backend>, Arc<Registry>, Vec<Token>);

thread_local! {
    static WAKES: RefCell<Option<Vec<QueuedWake>>> = const { RefCell::new(None) };
    /// Schedulers whose stats provider this thread is running (re-entrancy).
    static IN_PROVIDER: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (a provider call) marked as inside `owner`'s provider.
fn in_provider<T>(owner: usize, f: impl FnOnce() -> T) -> T {
    IN_PROVIDER.with(|s| s.borrow_mut().push(owner));
    let out = f();
    IN_PROVIDER.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(i) = s.iter().rposition(|&o| o == owner) {
            s.remove(i);
        }
    });
    out
}

fn reentrant(owner: usize) -> bool {
    IN_PROVIDER.with(|s| s.borrow().contains(&owner))
}

/// The calling thread, as name-based start/finish pair executions with
/// their grants (Python's thread ident: `threading.get_ident()`).
fn caller(py: Python<'_>) -> PyResult<Caller> {
    static GET_IDENT: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let f = GET_IDENT.get_or_try_init(py, || {
        py.import(intern!(py, "_thread"))?
            .getattr(intern!(py, "get_ident"))
            .map(Bound::unbind)
    })?;
    f.bind(py).call0()?.extract()
}

/// The idents of this process's running Python threads (what
/// `threading.enumerate()` lists): a caller not among them has ended.
fn live_callers(py: Python<'_>) -> PyResult<std::collections::HashSet<Caller>> {
    let threads = py
        .import(intern!(py, "threading"))?
        .getattr(intern!(py, "enumerate"))?
        .call0()?;
    let mut out = std::collections::HashSet::new();
    for t in threads.try_iter()? {
        if let Ok(ident) = t?.getattr(intern!(py, "ident"))?.extract::<Caller>() {
            out.insert(ident);
        }
    }
    Ok(out)
}

impl ReservationScheduler {
    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&lock(&self.backend))
    }

    /// This process's registry (a forked child's own, empty at first).
    fn registry(&self) -> Arc<Registry> {
        let fresh = |_: &Arc<Registry>| Ok::<_, std::convert::Infallible>(Arc::default());
        match self.registry.get(fresh) {
            Ok(r) => Arc::clone(r),
            Err(never) => match never {},
        }
    }

    /// Runs `op` on the queue, atomically (on a shared ledger, as every
    /// process sees it). What dead processes held is logged and the line
    /// moves on.
    fn op<R: Send>(
        slf: &Bound<'_, Self>,
        op: impl FnOnce(&mut Queue, &Owners) -> R + Send,
    ) -> PyResult<R> {
        let backend = slf.get().backend();
        let (value, reclaims) = backend.with(slf.py(), op)?;
        slf.get().ops.fetch_add(1, Ordering::AcqRel);
        if !reclaims.is_empty() {
            Self::reclaimed(slf, &backend, reclaims)?;
        }
        Ok(value)
    }

    /// Wakes the waiters of `tokens` (after unlocking). A wake that finds
    /// a waiter dead makes it leave, which wakes the next one: such wakes
    /// are queued and run by the outermost call, so a line of dead waiters
    /// is walked in a loop, not by recursion.
    fn wake(&self, tokens: Vec<Token>) {
        if tokens.is_empty() {
            return;
        }
        let work = (self.backend(), self.registry(), tokens);
        let queued = WAKES.with(|w| match &mut *w.borrow_mut() {
            Some(pending) => {
                pending.push(work);
                None
            }
            slot @ None => {
                *slot = Some(Vec::new());
                Some(work)
            }
        });
        let Some(mut next) = queued else {
            return;
        };
        // Whatever happens (a panic too), this thread's queue is closed after.
        struct Drained;
        impl Drop for Drained {
            fn drop(&mut self) {
                WAKES.with(|w| *w.borrow_mut() = None);
            }
        }
        let _drained = Drained;
        loop {
            let (backend, registry, tokens) = next;
            backend.wake(&registry, tokens);
            match WAKES.with(|w| {
                let mut w = w.borrow_mut();
                let more = w.as_mut().and_then(Vec::pop);
                if more.is_none() {
                    *w = None;
                }
                more
            }) {
                Some(more) => next = more,
                None => return,
            }
        }
    }

    /// Logs grants and waiters of processes that are gone, and wakes
    /// whoever's turn it is now.
    fn reclaimed(slf: &Bound<'_, Self>, backend: &Backend, r: Reclaims) -> PyResult<()> {
        let this = slf.get();
        let path = backend
            .shared()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        for (plugin, pid) in &r.grants {
            Self::log(
                slf,
                "warning",
                format!("reclaimed the grant of {plugin} on shared ledger {path}: its process {pid} is gone"),
            )?;
        }
        for (plugin, pid) in &r.waiters {
            Self::log(
                slf,
                "info",
                format!(
                    "{plugin} left the line of shared ledger {path}: its process {pid} is gone"
                ),
            )?;
        }
        let now = this.now();
        let (wake, _) = backend.with(slf.py(), |q, _| q.wake_head(now))?;
        this.wake(wake);
        Ok(())
    }

    fn now(&self) -> f64 {
        lock(&self.clock).now()
    }

    fn cached_logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().logger.get(slf.as_any())
    }

    fn log(slf: &Bound<'_, Self>, level: &str, line: String) -> PyResult<()> {
        Self::cached_logger(slf)?.call_method1(level, (line,))?;
        Ok(())
    }

    /// Whether the logger would emit a DEBUG record (checked before
    /// formatting one: grants and releases are on the hot path).
    fn debug_enabled(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        Self::cached_logger(slf)?
            .call_method1(intern!(py, "isEnabledFor"), (10,))?
            .is_truthy()
    }

    /// Logs what a decision produced (after unlocking) and saves peaks.
    fn report(slf: &Bound<'_, Self>, events: &[Event]) -> PyResult<()> {
        let mut debug = None;
        for e in events {
            match e {
                Event::Granted { grant } => {
                    if !*debug.get_or_insert(Self::debug_enabled(slf)?) {
                        continue;
                    }
                    Self::log(
                    slf,
                    "debug",
                    format!(
                        "granted {} (grant {}): devices {:?}, {:.0} MB VRAM each, {:.0} MB RAM",
                        grant.plugin,
                        grant.id.0,
                        grant.devices,
                        grant.vram_mb,
                        grant.ram_mb()
                    ),
                )?
                }
                Event::Expired { grant } => Self::log(
                    slf,
                    "warning",
                    format!(
                        "reservation for {} (grant {}) expired: not started within start_timeout",
                        grant.plugin, grant.id.0
                    ),
                )?,
                Event::Reclaimed {
                    waiter,
                    plugin,
                    waited_s,
                } => {
                    if Self::left_if_gone(slf, *waiter)? {
                        Self::log(
                            slf,
                            "warning",
                            format!(
                                "{plugin} left the line: it did not collect its reservation within {waited_s:.1} s and its event loop is closed"
                            ),
                        )?;
                    } else {
                        Self::log(
                            slf,
                            "warning",
                            format!(
                                "{plugin} did not collect its reservation within {waited_s:.1} s (its event loop not running?): passed over, it keeps its place"
                            ),
                        )?;
                    }
                }
                Event::AdmittedWithoutGpuFigures { plugin } => Self::log(
                    slf,
                    "warning",
                    format!(
                        "{plugin} requires a GPU but the stats have no GPU figures: admitted without a GPU reservation (on_missing_stats='allow'; use 'block' to wait)"
                    ),
                )?,
            }
        }
        Self::flush_peaks(slf, false)
    }

    /// Whether waiter `id` (passed over) is an async waiter of this process
    /// whose event loop is closed: then it can never run again and leaves
    /// the line now (the core's `gone`), and whoever is next is woken.
    fn left_if_gone(slf: &Bound<'_, Self>, id: WaiterId) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let registry = this.registry();
        let Some(event_loop) = registry.loop_of(py, id) else {
            return Ok(false);
        };
        if !event_loop
            .bind(py)
            .call_method0(intern!(py, "is_closed"))?
            .is_truthy()?
        {
            return Ok(false);
        }
        registry.forget_loop(id);
        Self::gone(slf, id)?;
        Ok(true)
    }

    /// Waiter `id` is gone: it leaves the line, the next one is woken.
    fn gone(slf: &Bound<'_, Self>, id: WaiterId) -> PyResult<()> {
        let this = slf.get();
        let now = this.now();
        let wake = Self::op(slf, |q, _| q.gone(id, now))?;
        this.wake(wake);
        Ok(())
    }

    fn log_release(slf: &Bound<'_, Self>, released: Option<&Grant>) -> PyResult<()> {
        if let Some(g) = released {
            if Self::debug_enabled(slf)? {
                Self::log(
                    slf,
                    "debug",
                    format!("released {} (grant {})", g.plugin, g.id.0),
                )?;
            }
        }
        Self::flush_peaks(slf, false)
    }

    fn flush_peaks(slf: &Bound<'_, Self>, force: bool) -> PyResult<()> {
        let now = slf.get().now();
        let problem = slf
            .get()
            .backend()
            .peaks(slf.py(), |p| p.flush(now, force))?;
        if let Some(problem) = problem {
            Self::log(
                slf,
                "warning",
                format!("{problem} (peaks are kept in memory; the save is retried)"),
            )?;
        }
        Ok(())
    }

    /// The GPU processes of `stats` when some grant has a pid attached
    /// (as last seen), else none: what [`Queue::observe`] takes.
    fn processes_of(&self, stats: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f64)>> {
        if !self.has_pids.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        gpu_processes(stats)
    }

    /// Records peaks from `stats` for plugins whose grants have processes.
    fn observe_peaks(slf: &Bound<'_, Self>, stats: &Bound<'_, PyAny>) -> PyResult<usize> {
        let this = slf.get();
        let processes = gpu_processes(stats)?;
        let (n, has) = Self::op(slf, |q, _| (q.observe(&processes), q.ledger().has_pids()))?;
        this.has_pids.store(has, Ordering::Release);
        Ok(n)
    }

    /// Asks the outside (Python) policy, if any, who goes next; outside the
    /// lock. Its exception reaches the caller.
    fn consult_outside_policy(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(policy) = lock(&slf.get().outside_policy)
            .as_ref()
            .map(|p| p.clone_ref(py))
        else {
            return Ok(());
        };
        let pending = Self::op(slf, |q, _| q.pending_jobs())?;
        if pending.is_empty() {
            return Ok(());
        }
        let jobs = PyList::empty(py);
        for (id, job, need) in &pending {
            jobs.append(PendingJob::from_parts(*id, job, need))?;
        }
        let chosen = policy
            .bind(py)
            .call_method1(intern!(py, "select_next_job"), (slf, &jobs))?;
        let head =
            if chosen.is_none() {
                None
            } else {
                let chosen: PyRef<'_, PendingJob> =
                    chosen.extract().map_err(|_| {
                        PyTypeError::new_err(format!(
                    "{}.select_next_job must return one of the pending jobs or None, got {}",
                    policy.bind(py).get_type().name().map(|n| n.to_string()).unwrap_or_default(),
                    describe(&chosen)
                ))
                    })?;
                Some(WaiterId(chosen.id))
            };
        Self::op(slf, |q, _| q.set_external_head(head))
    }
}

/// A waiting job as a Python policy sees it (seed 004's job fields).
#[pyclass(module = "plugin_scheduling", frozen)]
pub struct PendingJob {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    priority: f64,
    #[pyo3(get)]
    user: Option<String>,
    #[pyo3(get)]
    project: Option<String>,
    #[pyo3(get)]
    submit_time: f64,
    #[pyo3(get)]
    deadline: Option<f64>,
    #[pyo3(get)]
    estimated_duration: Option<f64>,
    gpu_count: u32,
    vram_mb: f64,
    ram_mb: f64,
}

impl PendingJob {
    fn from_parts(id: WaiterId, job: &JobInfo, need: &Need) -> Self {
        Self {
            id: id.0,
            name: job.name.to_string(),
            priority: job.priority,
            user: job.user.as_ref().map(|u| u.to_string()),
            project: job.project.as_ref().map(|p| p.to_string()),
            submit_time: job.submitted,
            deadline: job.deadline,
            estimated_duration: job.estimated_duration,
            gpu_count: need.gpu_count,
            vram_mb: need.vram_mb,
            ram_mb: need.ram_mb(),
        }
    }
}

#[pymethods]
impl PendingJob {
    /// `{"gpu_count", "vram_mb", "ram_mb"}` (what the job asks for).
    #[getter]
    fn requirements<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("gpu_count", self.gpu_count)?;
        d.set_item("vram_mb", self.vram_mb)?;
        d.set_item("ram_mb", self.ram_mb)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "PendingJob(id={}, name={:?}, priority={}, user={:?}, submit_time={:.3})",
            self.id, self.name, self.priority, self.user, self.submit_time
        )
    }
}

/// What one admission pass for a waiter produced (computed under the lock).
struct Offered {
    offer: Offer<Token>,
    never: bool,
    why: Option<String>,
    change: Option<f64>,
    has_pids: bool,
}

/// Waiter `id` brings `reading` (and the GPU processes of it) to the queue:
/// one admission pass.
fn offer_in(
    q: &mut Queue,
    id: WaiterId,
    need: &Need,
    reading: &plugin_scheduling_core::reserve::ledger::Reading,
    processes: &[(u32, f64)],
    now: f64,
    collect: Collect,
) -> Offered {
    if !processes.is_empty() {
        q.observe(processes);
    }
    let never = q.never_fits(need, reading);
    let offer: Offer<Token> = q.offer_as(Some(id), reading, now, collect);
    let why = offer.mine.is_none().then(|| q.why(id, now));
    Offered {
        offer,
        never,
        why,
        change: q.next_change(now),
        has_pids: q.ledger().has_pids(),
    }
}

/// A reading taken before joining the line (a shared ledger's first look:
/// joining and offering are then one operation on the file).
type FirstLook = (
    plugin_scheduling_core::reserve::ledger::Reading,
    Vec<(u32, f64)>,
);

/// One wait for a reservation (blocking or async).
#[pyclass(module = "plugin_scheduling", frozen, name = "ReservationWait")]
pub struct ReservationWait {
    scheduler: Py<ReservationScheduler>,
    id: WaiterId,
    plugin: String,
    need: Need,
    wait: QueueWait,
    started: Instant,
    /// Set once the need is known never to fit (the wait ends at once).
    never_fits: Mutex<Option<String>>,
    last_reason: Mutex<Option<String>>,
    /// How the queue reaches this waiter, and where its signal is found.
    token: Token,
    registry: Arc<Registry>,
    /// This waiter's own wake signal.
    signal: Signal,
    slot: WakeSlot,
    left: AtomicBool,
    /// Whether it may offer, as the last look at the queue found, and the
    /// scheduler's operation count after it (taken by the next `my_turn`
    /// when nothing came between, saving a look).
    turn: Mutex<Option<(bool, u64)>>,
    /// When the ledger changes by itself next, as last seen.
    next_change: Mutex<Option<f64>>,
    /// Whose execution the grant becomes (this thread's, or a lease's).
    collect: Collect,
}

impl ReservationWait {
    /// Joins the line; with `first`, offers it at once when it is this
    /// waiter's turn (in the same operation). An async waiter names its
    /// event loop (`event_loop`): found closed, the waiter leaves the line.
    fn begin_with(
        slf: &Bound<'_, ReservationScheduler>,
        plugin_meta: &Bound<'_, PyAny>,
        overrides: &JobOverrides<'_>,
        first: Option<FirstLook>,
        lease: bool,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<(Self, Option<Offered>)> {
        let this = slf.get();
        let collect = Collect {
            caller: Some(caller(slf.py())?),
            lease,
        };
        let registry = this.registry();
        let (plugin, declared) = declared_need(plugin_meta)?;
        let now = this.now();
        let job = job_info(plugin_meta, &plugin, &declared, now, overrides)?;
        let signal: Signal = Arc::new(WakeSignal::new());
        let backend = this.backend();
        let token = Token {
            owner: backend.me(),
            id: next_token_id(),
        };
        if let Some(shared) = backend.shared() {
            // Wake-ups from other processes reach this one (a forked child
            // starts its own listener). Without one, waits poll.
            if let Err(e) = listen(shared, token.owner, &registry) {
                ReservationScheduler::log(
                    slf,
                    "warning",
                    format!(
                        "{plugin}: no wake socket beside shared ledger {} ({e}); it re-checks every poll_interval",
                        shared.display()
                    ),
                )?;
            }
        }
        registry.insert(token.id, Arc::clone(&signal));
        let patience = lock(&this.waits).poll_interval;
        let joined = ReservationScheduler::op(slf, |q, _| {
            let need = q.effective_need(&plugin, &declared);
            let id = q.join(&plugin, need.clone(), job, token);
            let patience = patience + q.settings.claim_s;
            let turn = q.may_offer(id, now, patience);
            let offered = match (&first, turn) {
                (Some((reading, processes)), true) => {
                    Some(offer_in(q, id, &need, reading, processes, now, collect))
                }
                _ => None,
            };
            (id, need, turn, q.next_change(now), offered)
        });
        let (id, need, turn, change, offered) = match joined {
            Ok(j) => j,
            Err(e) => {
                registry.remove(token.id);
                return Err(e);
            }
        };
        if let Some(event_loop) = event_loop {
            registry.watch_loop(id, event_loop);
        }
        let started = Instant::now();
        let wait = Self {
            scheduler: slf.clone().unbind(),
            id,
            plugin,
            need,
            wait: QueueWait::start_at(started),
            started,
            never_fits: Mutex::new(None),
            last_reason: Mutex::new(None),
            token,
            registry,
            slot: WakeSlot::new(signal.generation()),
            signal,
            left: AtomicBool::new(false),
            turn: Mutex::new(Some((turn, this.ops.load(Ordering::Acquire)))),
            next_change: Mutex::new(change),
            collect,
        };
        Ok((wait, offered))
    }

    fn scheduler<'py>(&self, py: Python<'py>) -> &Bound<'py, ReservationScheduler> {
        self.scheduler.bind(py)
    }

    /// The grant a pass made for this waiter, if any (it leaves the line);
    /// else whether it may offer is noted for [`Self::is_my_turn`].
    fn claim(&self, py: Python<'_>) -> PyResult<Option<PyGrant>> {
        let slf = self.scheduler(py);
        let s = slf.get();
        let now = s.now();
        let poll = lock(&s.waits).poll_interval;
        let (id, collect) = (self.id, self.collect);
        let (grant, turn, change) =
            ReservationScheduler::op(slf, |q, _| match q.claim_as(id, now, collect) {
                Some(g) => (Some(g), false, None),
                None => {
                    let patience = poll + q.settings.claim_s;
                    (None, q.may_offer(id, now, patience), q.next_change(now))
                }
            })?;
        if let Some(g) = grant {
            self.done();
            return Ok(Some(PyGrant::from(&g)));
        }
        *lock(&self.turn) = Some((turn, s.ops.load(Ordering::Acquire)));
        *lock(&self.next_change) = change;
        Ok(None)
    }

    fn is_my_turn(&self, py: Python<'_>) -> PyResult<bool> {
        let slf = self.scheduler(py);
        let s = slf.get();
        if let Some((turn, at)) = lock(&self.turn).take() {
            if at == s.ops.load(Ordering::Acquire) {
                return Ok(turn);
            }
        }
        let poll = lock(&s.waits).poll_interval;
        let now = s.now();
        let id = self.id;
        ReservationScheduler::op(slf, |q, _| {
            let patience = poll + q.settings.claim_s;
            q.may_offer(id, now, patience)
        })
    }

    /// Brings `stats` to the queue: one admission pass. This waiter's grant,
    /// or `None` (then it stays in line).
    fn offer(&self, py: Python<'_>, stats: &Bound<'_, PyAny>) -> PyResult<Option<PyGrant>> {
        let slf = self.scheduler(py);
        let this = slf.get();
        let reading = reading(stats)?;
        let processes = this.processes_of(stats)?;
        ReservationScheduler::consult_outside_policy(slf)?;
        let now = this.now();
        let (id, need, collect) = (self.id, &self.need, self.collect);
        let offered = ReservationScheduler::op(slf, |q, _| {
            offer_in(q, id, need, &reading, &processes, now, collect)
        })?;
        self.offered(py, offered)
    }

    /// What an offer (here or in [`Self::begin`]) produced, as the wait
    /// sees it: its grant, or `None` with the reason logged when it changed.
    fn offered(&self, py: Python<'_>, offered: Offered) -> PyResult<Option<PyGrant>> {
        let slf = self.scheduler(py);
        let this = slf.get();
        let Offered {
            offer,
            never,
            why,
            change,
            has_pids,
        } = offered;
        this.has_pids.store(has_pids, Ordering::Release);
        *lock(&self.next_change) = change;
        this.wake(offer.wake);
        if offer.mine.is_some() {
            self.done();
        }
        ReservationScheduler::report(slf, &offer.events)?;
        if let Some(grant) = offer.mine {
            return Ok(Some(PyGrant::from(&grant)));
        }
        let why = why.unwrap_or_default();
        if never {
            let reason = offer
                .refusal
                .as_ref()
                .map_or_else(|| why.clone(), refusal_text);
            *lock(&self.never_fits) = Some(reason);
        }
        let changed = lock(&self.last_reason).as_deref() != Some(why.as_str());
        if changed {
            let poll = lock(&this.waits).poll_interval;
            ReservationScheduler::log(
                slf,
                "info",
                format!(
                    "{} waits: {why} (re-checks on release, else every {poll} s)",
                    self.plugin
                ),
            )?;
            *lock(&self.last_reason) = Some(why);
        }
        Ok(None)
    }

    /// The wait got its grant: it has left the line.
    fn done(&self) {
        self.left.store(true, Ordering::Release);
        self.registry.remove(self.token.id);
        self.registry.forget_loop(self.id);
    }

    /// Gives up the place in line (idempotent) and lets the next one try.
    fn leave_line(&self, py: Python<'_>) -> PyResult<()> {
        if self.left.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let slf = self.scheduler(py);
        let s = slf.get();
        self.registry.remove(self.token.id);
        self.registry.forget_loop(self.id);
        let now = s.now();
        let id = self.id;
        let wake = ReservationScheduler::op(slf, |q, _| q.leave(id, now))?;
        s.wake(wake);
        Ok(())
    }

    /// Why the wait ended without a grant.
    fn failure(&self, py: Python<'_>) -> String {
        let s = self.scheduler(py).get();
        if let Some(reason) = lock(&self.never_fits).clone() {
            return format!("{} can never fit on this machine: {reason}", self.plugin);
        }
        let timeout = lock(&s.waits).timeout;
        let why = lock(&self.last_reason)
            .clone()
            .unwrap_or_else(|| "waiting in line".into());
        let name = pyo3::types::PyString::new(py, &self.plugin)
            .repr()
            .map_or_else(|_| self.plugin.clone(), |r| r.to_string());
        format!(
            "{}: no reservation for {name} within timeout={timeout}s ({why})",
            plugin_scheduling_core::messages::timed_out(&self.plugin)
        )
    }

    /// After a turn without a grant: `None` to give up (never fits, or
    /// `timeout` passed: logged), else the seconds to sleep.
    fn refused(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let slf = self.scheduler(py);
        let this = slf.get();
        let (timeout, poll) = {
            let w = lock(&this.waits);
            (w.timeout, w.poll_interval)
        };
        if lock(&self.never_fits).is_some() {
            self.leave_line(py)?;
            ReservationScheduler::log(slf, "error", self.failure(py))?;
            return Ok(None);
        }
        let now = Instant::now();
        match self.wait.step(false, timeout, now) {
            Step::GiveUp => {
                self.leave_line(py)?;
                ReservationScheduler::log(slf, "error", self.failure(py))?;
                Ok(None)
            }
            Step::Admit | Step::Sleep => {
                // Never past the deadline, nor past the moment the ledger
                // changes by itself (a grant settles, expires or is taken
                // back), which no release would announce.
                let left = timeout - now.saturating_duration_since(self.started).as_secs_f64();
                let clock_now = this.now();
                let change =
                    lock(&self.next_change).map_or(f64::INFINITY, |t| (t - clock_now).max(0.0));
                Ok(Some(poll.min(left.max(0.0) + 0.001).min(change + 0.001)))
            }
        }
    }
}

impl Drop for ReservationWait {
    fn drop(&mut self) {
        self.registry.remove(self.token.id);
        self.registry.forget_loop(self.id);
    }
}

#[pymethods]
impl ReservationWait {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.scheduler)
    }

    /// Whether this waiter should read stats and offer now.
    fn my_turn(&self, py: Python<'_>) -> PyResult<bool> {
        self.is_my_turn(py)
    }

    #[pyo3(name = "claim")]
    fn py_claim(&self, py: Python<'_>) -> PyResult<Option<PyGrant>> {
        self.claim(py)
    }

    #[pyo3(name = "offer")]
    fn py_offer(&self, py: Python<'_>, stats: &Bound<'_, PyAny>) -> PyResult<Option<PyGrant>> {
        self.offer(py, stats)
    }

    /// `False` (gave up) or the seconds to sleep.
    fn after_refusal<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(async_step(py, self.refused(py)?))
    }

    /// The `ReservationTimeout` to raise for a wait that ended without a grant.
    fn failure_error(&self, py: Python<'_>) -> PyErr {
        ReservationTimeout::new_err(self.failure(py))
    }

    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        self.leave_line(py)
    }

    fn subscribe(
        slf: &Bound<'_, Self>,
        wake: Py<PyAny>,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
    ) -> PyResult<Option<u64>> {
        let this = slf.get();
        let on_closed = slf.getattr(intern!(slf.py(), "_loop_closed"))?.unbind();
        Ok(this
            .slot
            .subscribe(&this.signal, wake, event_loop, future, Some(on_closed)))
    }

    /// A wake found this waiter's event loop closed: it can never run
    /// again, so it leaves the line now (and whoever is next is woken).
    fn _loop_closed(&self, py: Python<'_>) -> PyResult<()> {
        if self.left.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.registry.remove(self.token.id);
        self.registry.forget_loop(self.id);
        let slf = self.scheduler(py);
        ReservationScheduler::gone(slf, self.id)?;
        ReservationScheduler::log(
            slf,
            "warning",
            format!("{} left the line: its event loop is closed", self.plugin),
        )
    }

    #[pyo3(signature = (token))]
    fn unsubscribe(&self, token: Option<u64>) {
        self.slot.unsubscribe(&self.signal, token);
    }
}

const DEFAULT_TIMEOUT: f64 = 300.0;
const DEFAULT_POLL_INTERVAL: f64 = 2.0;

fn float_arg(field: &str, value: &Bound<'_, PyAny>, min: f64, max: f64) -> PyResult<f64> {
    let v = super::errors::number(field, value)?;
    if v.is_nan() || v < min || v > max {
        return Err(PyValueError::new_err(format!(
            "{field} must be between {min} and {max}, got {}",
            describe(value)
        )));
    }
    Ok(v)
}

fn path_arg(field: &str, value: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let path: PathBuf = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a path (str or os.PathLike), got {}",
            describe(value)
        ))
    })?;
    if path.as_os_str().as_encoded_bytes().contains(&0) || path.as_os_str().is_empty() {
        return Err(PyValueError::new_err(format!(
            "{field} must be a non-empty path without NUL bytes, got {}",
            describe(value)
        )));
    }
    Ok(path)
}

/// A policy argument as a core spec, or a Python object that decides.
enum PolicyArg {
    Core(PolicySpec),
    Outside(Py<PyAny>, String),
}

fn policy_arg(value: &Bound<'_, PyAny>) -> PyResult<PolicyArg> {
    let py = value.py();
    if let Ok(name) = value.extract::<String>() {
        return Ok(PolicyArg::Core(PolicySpec::named(&name)));
    }
    // `plugin_scheduling.policies` says whether the object is a built-in
    // policy (and with which settings) or decides in Python.
    let spec = py
        .import(intern!(py, "plugin_scheduling.policies"))?
        .getattr(intern!(py, "_core_spec"))?
        .call1((value,))?;
    if spec.is_none() {
        if !value.hasattr(intern!(py, "select_next_job"))? {
            return Err(PyTypeError::new_err(format!(
                "policy must be a policy name, a plugin_scheduling.policies policy, or an object with select_next_job(queue, pending_jobs), got {}",
                describe(value)
            )));
        }
        let name = value
            .getattr(intern!(py, "name"))
            .and_then(|n| n.extract::<String>())
            .unwrap_or_else(|_| {
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "python".into())
            });
        return Ok(PolicyArg::Outside(value.clone().unbind(), name));
    }
    let spec: Bound<'_, PyDict> = spec.extract()?;
    Ok(PolicyArg::Core(spec_from_dict(&spec)?))
}

/// A policy's settings dict (`{"name": ..., ...}`) as a core spec; each
/// bad setting raises an error naming it.
pub fn spec_from_dict(spec: &Bound<'_, PyDict>) -> PyResult<PolicySpec> {
    let mut out = PolicySpec::named(
        &spec
            .get_item("name")?
            .ok_or_else(|| PyValueError::new_err("policy spec without a name"))?
            .extract::<String>()?,
    );
    let num = |key: &str| -> PyResult<Option<f64>> {
        match spec.get_item(key)? {
            Some(v) if !v.is_none() => Ok(Some(float_arg(key, &v, f64::MIN, f64::MAX)?)),
            _ => Ok(None),
        }
    };
    out.aging_per_s = num("aging_per_s")?;
    out.half_life_s = num("half_life_s")?;
    out.window_s = num("window_s")?;
    out.boost = num("boost")?;
    if let Some(by) = spec.get_item("by")?.filter(|v| !v.is_none()) {
        out.by = Some(by.extract()?);
    }
    if let Some(path) = spec.get_item("usage_path")?.filter(|v| !v.is_none()) {
        out.usage_path = Some(path_arg("usage_path", &path)?);
    }
    if let Some(shares) = spec.get_item("shares")?.filter(|v| !v.is_none()) {
        let shares: Bound<'_, PyDict> = shares.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "shares must be a dict of account to shares, got {}",
                describe(&shares)
            ))
        })?;
        for (k, v) in shares.iter() {
            let account: String = k.extract()?;
            let field = format!("shares[{account:?}]");
            out.shares
                .push((account, float_arg(&field, &v, 0.0, f64::MAX)?));
        }
    }
    if let Some(w) = spec.get_item("weights")?.filter(|v| !v.is_none()) {
        let w: Bound<'_, PyDict> = w.extract()?;
        let mut weights = MultifactorWeights::default();
        for (k, v) in w.iter() {
            let key: String = k.extract()?;
            let field = format!("weights[{key:?}]");
            let v = float_arg(&field, &v, 0.0, 1e12)?;
            match key.as_str() {
                "age" => weights.age = v,
                "fair_share" => weights.fair_share = v,
                "priority" => weights.priority = v,
                "size" => weights.size = v,
                "max_age_s" => weights.max_age_s = v,
                "size_norm" => weights.size_norm = v,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "weights has no factor {other:?} (age, fair_share, priority, size, max_age_s, size_norm)"
                    )))
                }
            }
        }
        out.weights = Some(weights);
    }
    Ok(out)
}

#[pymethods]
impl ReservationScheduler {
    #[new]
    #[pyo3(
        signature = (*_args, **_kwargs),
        text_signature = "(timeout=300.0, poll_interval=2.0, *, headroom=0.9, settle_s=2.0, start_timeout=60.0, on_missing_stats='allow', peaks_path=None, persist_peaks=False, peak_margin=1.1, policy='fifo', clock=None, claim_timeout=1.0, shared=False, mode=0o600)"
    )]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            constructed: Constructed::new(),
            patched: AtomicBool::new(false),
            logger: LoggerCell::default(),
            waits: Mutex::new(Waits {
                timeout: DEFAULT_TIMEOUT,
                poll_interval: DEFAULT_POLL_INTERVAL,
            }),
            backend: Mutex::new(Arc::new(Backend::local(
                default_queue(),
                Box::new(default_queue),
            ))),
            registry: PerProcess::new(Arc::new(Registry::default())),
            has_pids: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            clock: Mutex::new(Arc::new(SystemClock)),
            outside_policy: Mutex::new(None),
            warned_blocking: AtomicBool::new(false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (timeout = None, poll_interval = None, *, headroom = None, settle_s = None,
        start_timeout = None, on_missing_stats = "allow", peaks_path = None, persist_peaks = false,
        peak_margin = None, policy = None, clock = None, claim_timeout = None, shared = None,
        mode = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        timeout: Option<&Bound<'_, PyAny>>,
        poll_interval: Option<&Bound<'_, PyAny>>,
        headroom: Option<&Bound<'_, PyAny>>,
        settle_s: Option<&Bound<'_, PyAny>>,
        start_timeout: Option<&Bound<'_, PyAny>>,
        on_missing_stats: &str,
        peaks_path: Option<&Bound<'_, PyAny>>,
        persist_peaks: bool,
        peak_margin: Option<&Bound<'_, PyAny>>,
        policy: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        claim_timeout: Option<&Bound<'_, PyAny>>,
        shared: Option<&Bound<'_, PyAny>>,
        mode: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let shared = shared.map(shared_arg).transpose()?.flatten();
        let mode = match mode {
            None => 0o600,
            Some(m) => {
                let m: u32 = int_in("mode", m, 0, 0o777)?;
                if m & 0o600 != 0o600 {
                    return Err(PyValueError::new_err(format!(
                        "mode must let the owner read and write the ledger (0o600 or more, e.g. 0o660 for a group), got {m:#o}"
                    )));
                }
                if shared.is_none() && m != 0o600 {
                    return Err(PyValueError::new_err(format!(
                        "mode={m:#o} applies to a shared ledger: pass shared=True or shared='NAME-or-PATH' too"
                    )));
                }
                m
            }
        };
        let opt = |v: Option<&Bound<'_, PyAny>>, field: &str, default: f64, min: f64, max: f64| {
            v.map_or(Ok(default), |v| float_arg(field, v, min, max))
        };
        let timeout = match timeout {
            Some(t) => seconds("timeout", t, true)?,
            None => DEFAULT_TIMEOUT,
        };
        let poll_interval = match poll_interval {
            Some(p) => seconds("poll_interval", p, false)?,
            None => DEFAULT_POLL_INTERVAL,
        };
        let defaults = Settings::default();
        let settings = Settings {
            limits: Limits {
                headroom: opt(headroom, "headroom", defaults.limits.headroom, 0.0, 1.0)?,
                settle_s: opt(
                    settle_s,
                    "settle_s",
                    defaults.limits.settle_s,
                    0.0,
                    86_400.0,
                )?,
            },
            start_timeout_s: opt(
                start_timeout,
                "start_timeout",
                defaults.start_timeout_s,
                0.0,
                31_536_000.0,
            )?,
            missing: match on_missing_stats {
                "allow" => MissingStats::Allow,
                "block" => MissingStats::Block,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "on_missing_stats must be 'allow' or 'block', got {other:?}"
                    )))
                }
            },
            peak_margin: opt(peak_margin, "peak_margin", defaults.peak_margin, 1.0, 100.0)?,
            claim_s: opt(
                claim_timeout,
                "claim_timeout",
                defaults.claim_s,
                0.0,
                3600.0,
            )?,
        };
        // Processes on one ledger stamp times with the clock they share.
        let system: Arc<dyn Clock> = if shared.is_some() {
            Arc::new(WallClock)
        } else {
            Arc::new(SystemClock)
        };
        let clock: Arc<dyn Clock> = match clock {
            None => system,
            Some(c) if c.is_none() => system,
            Some(c) => match c.extract::<PyManualClock>() {
                Ok(m) => Arc::new(m.0),
                Err(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "clock must be a plugin_scheduling.ManualClock or None, got {}",
                        describe(c)
                    )))
                }
            },
        };
        let now = clock.now();
        let spec = match policy.map(policy_arg).transpose()? {
            None => PolicyArg::Core(PolicySpec::named("fifo")),
            Some(p) => p,
        };
        if let (Some(_), PolicyArg::Outside(_, name)) = (&shared, &spec) {
            return Err(PyValueError::new_err(format!(
                "policy {name:?} decides in Python, in one process; a shared ledger orders its line with a built-in policy: one of {:?}",
                plugin_scheduling_core::reserve::shared::SHARED_POLICIES
            )));
        }
        let (core_policy, outside, spec): (Box<dyn plugin_scheduling_core::policy::Policy>, _, _) =
            match spec {
                PolicyArg::Core(spec) => (core(spec.build(now))?, None, Some(spec)),
                PolicyArg::Outside(obj, name) => (Box::new(External::new(&name)), Some(obj), None),
            };
        let path = match (peaks_path, persist_peaks) {
            (Some(p), _) if !p.is_none() => Some(path_arg("peaks_path", p)?),
            (_, true) => plugin_scheduling_core::paths::state_path("peaks.json"),
            _ => None,
        };
        let (peaks, problem) = match &path {
            Some(path) => Peaks::at(path.clone()),
            None => (Peaks::in_memory(), None),
        };
        let this = slf.get();
        *lock(&this.waits) = Waits {
            timeout,
            poll_interval,
        };
        *lock(&this.clock) = clock;
        *lock(&this.outside_policy) = outside;
        // What a forked child needs to build its own queue or handle.
        let peaks_of = move |path: &Option<PathBuf>| match path {
            Some(path) => Peaks::at(path.clone()).0,
            None => Peaks::in_memory(),
        };
        let backend = match (shared, spec) {
            (Some(ledger), Some(spec)) => {
                let q = py_shared_open(slf.py(), &ledger, mode, &spec, settings)?;
                // A lock held past `timeout` (a stopped holder) fails the
                // operation naming the holder.
                let lock_wait = std::time::Duration::try_from_secs_f64(timeout)
                    .unwrap_or(std::time::Duration::MAX);
                q.set_lock_wait(lock_wait);
                core(q.with_peaks(|p| *p = peaks).map_err(Into::into))?;
                let reopen = move || {
                    let q = SharedQueue::open(&ledger, mode, &spec, settings)?;
                    q.set_lock_wait(lock_wait);
                    q.with_peaks(|p| *p = peaks_of(&path))?;
                    Ok(q)
                };
                Backend::shared_at(q, Box::new(reopen))
            }
            (_, spec) => {
                let outside_name = core_policy.name().to_owned();
                let rebuild = move || {
                    let policy: Box<dyn plugin_scheduling_core::policy::Policy> =
                        match spec.as_ref().and_then(|s| s.build(0.0).ok()) {
                            Some(p) => p,
                            None => Box::new(External::new(&outside_name)),
                        };
                    ReservationQueue::new(policy, settings, peaks_of(&path))
                };
                Backend::local(
                    ReservationQueue::new(core_policy, settings, peaks),
                    Box::new(rebuild),
                )
            }
        };
        *lock(&this.backend) = Arc::new(backend);
        if let Some(problem) = problem {
            Self::log(slf, "warning", problem)?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if !self.constructed.get() {
            return Ok(());
        }
        self.logger.visit(&visit)?;
        if let Ok(p) = self.outside_policy.try_lock() {
            visit.call(&*p)?;
        }
        if let Some(registry) = self.registry.here() {
            for signal in registry.try_signals() {
                AsyncWaker::visit_all(&signal, &visit)?;
            }
            registry.try_visit_loops(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        if !self.constructed.get() {
            return;
        }
        let registry = self.registry();
        for signal in registry.signals() {
            drop(signal.take_wakers());
        }
        registry.clear_loops();
        self.logger.set(None);
        *lock(&self.outside_policy) = None;
    }

    #[getter]
    fn timeout(&self) -> f64 {
        lock(&self.waits).timeout
    }

    #[getter]
    fn poll_interval(&self) -> f64 {
        lock(&self.waits).poll_interval
    }

    #[getter]
    fn logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached_logger(slf)
    }

    /// The policy's name.
    #[getter]
    fn policy(slf: &Bound<'_, Self>) -> PyResult<String> {
        Self::op(slf, |q, _| q.policy().name().to_owned())
    }

    /// The shared ledger's file (`None`: this scheduler's queue is its own).
    #[getter]
    fn shared(&self) -> Option<PathBuf> {
        self.backend().shared().map(Path::to_owned)
    }

    /// Starts a wait (used by the async methods in `_drivers`).
    #[pyo3(signature = (plugin_meta, event_loop=None, *, priority=None, user=None, project=None, deadline_s=None, estimated_duration_s=None, lease=false))]
    #[allow(clippy::too_many_arguments)]
    fn _begin_wait<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        event_loop: Option<Py<PyAny>>,
        priority: Option<Bound<'py, PyAny>>,
        user: Option<Bound<'py, PyAny>>,
        project: Option<Bound<'py, PyAny>>,
        deadline_s: Option<Bound<'py, PyAny>>,
        estimated_duration_s: Option<Bound<'py, PyAny>>,
        lease: bool,
    ) -> PyResult<ReservationWait> {
        let overrides = JobOverrides {
            priority,
            user,
            project,
            deadline_s,
            estimated_duration_s,
        };
        let event_loop = event_loop.filter(|l| !l.is_none(slf.py()));
        ReservationWait::begin_with(slf, plugin_meta, &overrides, None, lease, event_loop)
            .map(|(w, _)| w)
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the plugin's need is
    /// reserved; raises `ReservationTimeout` after `timeout` or when it can
    /// never fit.
    #[pyo3(signature = (plugin_meta, stats_provider, *, priority=None, user=None, project=None, deadline_s=None, estimated_duration_s=None, lease=false))]
    #[allow(clippy::too_many_arguments)]
    fn _reserve<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
        priority: Option<Bound<'py, PyAny>>,
        user: Option<Bound<'py, PyAny>>,
        project: Option<Bound<'py, PyAny>>,
        deadline_s: Option<Bound<'py, PyAny>>,
        estimated_duration_s: Option<Bound<'py, PyAny>>,
        lease: bool,
    ) -> PyResult<PyGrant> {
        let py = slf.py();
        require_callable("stats_provider", stats_provider)?;
        let owner = slf.as_ptr() as usize;
        if reentrant(owner) {
            return Err(PyRuntimeError::new_err(
                "ReservationScheduler.allocate was called from inside this scheduler's own stats provider: it would wait behind its own outer call; read the stats without allocating",
            ));
        }
        let overrides = JobOverrides {
            priority,
            user,
            project,
            deadline_s,
            estimated_duration_s,
        };
        // On a shared ledger every look at the queue is a locked read and
        // write of the file: the stats are read first, so that joining and
        // the first offer are one operation.
        let first = match slf.get().backend().shared() {
            Some(_) => {
                let stats = in_provider(owner, || stats_provider.call0())?;
                Some((reading(&stats)?, slf.get().processes_of(&stats)?))
            }
            None => None,
        };
        let (wait, mut offered) =
            ReservationWait::begin_with(slf, plugin_meta, &overrides, first, lease, None)?;
        let signal = Arc::clone(&wait.signal);
        let result = (|| loop {
            if let Some(offered) = offered.take() {
                if let Some(grant) = wait.offered(py, offered)? {
                    return Ok(grant);
                }
                match wait.refused(py)? {
                    None => return Err(wait.failure_error(py)),
                    Some(secs) => sleep_or_wake(py, &signal, 0, secs)?,
                }
            }
            let seen = signal.generation();
            if let Some(grant) = wait.claim(py)? {
                return Ok(grant);
            }
            if wait.is_my_turn(py)? {
                let stats = in_provider(owner, || stats_provider.call0())?;
                if let Some(grant) = wait.offer(py, &stats)? {
                    return Ok(grant);
                }
            }
            match wait.refused(py)? {
                None => return Err(wait.failure_error(py)),
                Some(secs) => {
                    let timeout = lock(&slf.get().waits).timeout;
                    warn_if_blocking_a_loop(
                        py,
                        &slf.get().warned_blocking,
                        "ReservationScheduler",
                        &wait.plugin,
                        timeout,
                    )?;
                    sleep_or_wake(py, &signal, seen, secs)?
                }
            }
        })();
        // On success the place was given up; on error (provider raised,
        // Ctrl-C, timeout) give it up now so nobody waits behind a ghost.
        // The wait's own error comes first.
        let left = wait.leave_line(py);
        let grant = result?;
        left?;
        Ok(grant)
    }

    /// Reserves what the plugin declares (waiting if needed); `False` after
    /// `timeout` or when it can never fit. Pair with `on_execution_start` /
    /// `on_execution_finish`. Keywords override `manifest["scheduling"]`.
    #[pyo3(signature = (plugin_meta, stats_provider, *, priority=None, user=None, project=None, deadline_s=None, estimated_duration_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn allocate<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
        priority: Option<Bound<'py, PyAny>>,
        user: Option<Bound<'py, PyAny>>,
        project: Option<Bound<'py, PyAny>>,
        deadline_s: Option<Bound<'py, PyAny>>,
        estimated_duration_s: Option<Bound<'py, PyAny>>,
    ) -> PyResult<bool> {
        match Self::_reserve(
            slf,
            plugin_meta,
            stats_provider,
            priority,
            user,
            project,
            deadline_s,
            estimated_duration_s,
            false,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_instance_of::<ReservationTimeout>(slf.py()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks started the oldest unstarted reservation of `plugin_name` this
    /// thread allocated, else one whose thread has ended (see the core's
    /// `Ledger::start_by`).
    fn on_execution_start(slf: &Bound<'_, Self>, plugin_name: PluginName) -> PyResult<()> {
        let backend = slf.get().backend();
        // Who this process is matters on a shared ledger only.
        let me = backend.shared().map(|_| backend.me());
        let by = Some(caller(slf.py())?);
        let start = |q: &mut Queue, owners: &Owners, others: &Others<'_>| match me {
            None => q.start_by(&plugin_name, by, others, &|_| true),
            Some(me) => start_owned(q, owners, me, &plugin_name),
        };
        let mut started = Self::op(slf, |q, owners| start(q, owners, &Others::Unknown))?;
        if started.is_none() && backend.shared().is_none() {
            // None of this thread's own: an orphan of an ended thread?
            let live = live_callers(slf.py())?;
            let ended = |c: Caller| live.contains(&c);
            started = Self::op(slf, |q, owners| start(q, owners, &Others::Ended(&ended)))?;
        }
        if started.is_none() {
            Self::log(
                slf,
                "warning",
                format!(
                    "on_execution_start({plugin_name:?}): no unstarted reservation of this thread (or of one that has ended) for it (never allocated, already started, expired after start_timeout, or another running thread's)"
                ),
            )?;
        }
        Ok(())
    }

    /// Releases this thread's oldest started execution of `plugin_name`,
    /// else its unstarted one, else one of a thread that has ended; never
    /// another running thread's (see the core's `Ledger::finish_by`). Wakes
    /// the waiter whose turn it is.
    fn on_execution_finish(slf: &Bound<'_, Self>, plugin_name: PluginName) -> PyResult<()> {
        let this = slf.get();
        let now = this.now();
        let backend = this.backend();
        let me = backend.shared().map(|_| backend.me());
        let by = Some(caller(slf.py())?);
        let finish = |q: &mut Queue, owners: &Owners, others: &Others<'_>| match me {
            None => q.finish_by(&plugin_name, by, others, &|_| true, now),
            Some(me) => match finish_owned(q, owners, me, &plugin_name, now) {
                (Some(g), wake) => (Finished::Released(Box::new(g)), wake),
                (None, wake) => (Finished::NoneHeld, wake),
            },
        };
        let (mut done, mut wake) = Self::op(slf, |q, owners| finish(q, owners, &Others::Unknown))?;
        if done == Finished::NotYours {
            // None of this thread's own: an orphan of an ended thread?
            let live = live_callers(slf.py())?;
            let ended = |c: Caller| live.contains(&c);
            (done, wake) = Self::op(slf, |q, owners| finish(q, owners, &Others::Ended(&ended)))?;
        }
        this.wake(wake);
        match done {
            Finished::Released(g) => Self::log_release(slf, Some(&g)),
            Finished::NotYours => Self::log(
                slf,
                "warning",
                format!(
                    "on_execution_finish({plugin_name:?}): this thread holds no execution of it; the reservations of {plugin_name:?} held belong to other running threads (or wait to be collected): nothing released (finish in the thread that started it, or use lease())"
                ),
            ),
            Finished::NoneHeld => Self::log(
                slf,
                "info",
                format!(
                    "on_execution_finish({plugin_name:?}): no reservation of it is held (never allocated, already finished, or expired): nothing released"
                ),
            ),
        }
    }

    fn _start_grant(slf: &Bound<'_, Self>, grant_id: u64) -> PyResult<bool> {
        Self::op(slf, |q, _| q.start_lease(GrantId(grant_id)))
    }

    fn _release_grant(slf: &Bound<'_, Self>, grant_id: u64) -> PyResult<bool> {
        let this = slf.get();
        let now = this.now();
        let (released, wake) = Self::op(slf, |q, _| q.release(GrantId(grant_id), now))?;
        this.wake(wake);
        Self::log_release(slf, released.as_ref())?;
        Ok(released.is_some())
    }

    /// Records that process `pid` runs the plugin of grant `grant_id`, so
    /// its GPU memory (from a `SystemMonitor` reading passed to `observe`,
    /// or read while someone waits) is recorded as the plugin's peak.
    fn attach_pid(
        slf: &Bound<'_, Self>,
        grant_id: &Bound<'_, PyAny>,
        pid: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let id: u64 = int_in("grant_id", grant_id, 0, u64::MAX)?;
        let pid: u32 = int_in("pid", pid, 1, u32::MAX)?;
        let attached = Self::op(slf, |q, _| q.attach_pid(GrantId(id), pid))?;
        slf.get().has_pids.store(true, Ordering::Release);
        Ok(attached)
    }

    /// Records peaks from a stats reading (see `attach_pid`); returns how many
    /// processes were attributed to a grant.
    fn observe(slf: &Bound<'_, Self>, stats: &Bound<'_, PyAny>) -> PyResult<usize> {
        if !stats.hasattr(intern!(slf.py(), "get"))? {
            return Err(super::errors::InvalidStats::new_err(format!(
                "stats must be a mapping (e.g. a SystemStats dict), got {}",
                describe(stats)
            )));
        }
        // The whole reading is validated as a decision would read it.
        reading(stats)?;
        let n = Self::observe_peaks(slf, stats)?;
        Self::flush_peaks(slf, false)?;
        Ok(n)
    }

    /// Names of plugins with a started reservation (a new set).
    fn get_active_plugins<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PySet>> {
        let names: Vec<String> = Self::op(slf, |q, _| {
            q.ledger()
                .grants()
                .filter(|g| g.started)
                .map(|g| g.plugin.clone())
                .collect()
        })?;
        PySet::new(slf.py(), names)
    }

    /// Records a measured peak; later grants for the plugin reserve at
    /// least `peak × peak_margin`. Saved (batched) when the scheduler has a
    /// path; a failing save is logged, never raised.
    #[pyo3(signature = (plugin_name, vram_mb = None, ram_mb = None))]
    fn record_peak<'py>(
        slf: &Bound<'py, Self>,
        plugin_name: PluginName,
        vram_mb: Option<&Bound<'py, PyAny>>,
        ram_mb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let vram_mb = vram_mb.map(|v| mb("vram_mb", v)).transpose()?;
        let ram_mb = ram_mb.map(|v| mb("ram_mb", v)).transpose()?;
        let peak = slf
            .get()
            .backend()
            .peaks(py, |p| p.record(&plugin_name, vram_mb, ram_mb))?
            .map_err(PyValueError::new_err)?;
        Self::flush_peaks(slf, true)?;
        let out = PyDict::new(py);
        out.set_item("vram_mb", peak.vram_mb)?;
        out.set_item("ram_mb", peak.ram_mb)?;
        Ok(out)
    }

    /// Recorded peaks per plugin.
    fn peaks<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(slf.py());
        let all = slf.get().backend().peaks(slf.py(), |p| {
            p.all()
                .iter()
                .map(|(p, peak)| (p.clone(), *peak))
                .collect::<Vec<_>>()
        })?;
        for (plugin, peak) in all {
            let d = PyDict::new(slf.py());
            d.set_item("vram_mb", peak.vram_mb)?;
            d.set_item("ram_mb", peak.ram_mb)?;
            out.set_item(plugin, d)?;
        }
        Ok(out)
    }

    /// Why the plugin would wait (or where it would go), without reserving,
    /// in the policy's terms.
    #[pyo3(signature = (plugin_meta, stats_provider, *, priority=None, user=None, project=None, deadline_s=None, estimated_duration_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn explain<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
        priority: Option<Bound<'py, PyAny>>,
        user: Option<Bound<'py, PyAny>>,
        project: Option<Bound<'py, PyAny>>,
        deadline_s: Option<Bound<'py, PyAny>>,
        estimated_duration_s: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let this = slf.get();
        require_callable("stats_provider", stats_provider)?;
        let (plugin, declared) = declared_need(plugin_meta)?;
        let now = this.now();
        let overrides = JobOverrides {
            priority,
            user,
            project,
            deadline_s,
            estimated_duration_s,
        };
        let job = job_info(plugin_meta, &plugin, &declared, now, &overrides)?;
        let stats = stats_provider.call0()?;
        let reading = reading(&stats)?;
        let out = PyDict::new(py);
        // A hypothetical waiter: joined, judged, removed (nothing kept).
        let token = Token {
            owner: this.backend().me(),
            id: next_token_id(),
        };
        let (need, places, never, fits, policy_name) = Self::op(slf, |q, _| {
            let need = q.effective_need(&plugin, &declared);
            let never = q.never_fits(&need, &reading);
            let fits = q
                .adjusted(&need, &reading)
                .map(|(n, _)| q.ledger().place(&n, &reading, q.settings.limits, now));
            let id = q.join(&plugin, need.clone(), job.clone(), token);
            let places = q.places(now);
            q.leave(id, now);
            (
                need,
                places
                    .into_iter()
                    .map(|p| (p.id == id, p))
                    .collect::<Vec<_>>(),
                never,
                fits,
                q.policy().name().to_owned(),
            )
        })?;
        out.set_item("plugin", &plugin)?;
        out.set_item("policy", policy_name)?;
        out.set_item("gpu_count", need.gpu_count)?;
        out.set_item("vram_mb", need.vram_mb)?;
        out.set_item("ram_mb", need.ram_mb())?;
        out.set_item("priority", job.priority)?;
        let mine = places.iter().find(|(m, _)| *m).map(|(_, p)| p.clone());
        let ahead = mine.as_ref().map_or(0, |p| p.position);
        out.set_item("waiting_ahead", ahead)?;
        out.set_item("waiting", places.len().saturating_sub(1))?;
        if this.backend().shared().is_some() {
            // Who holds and who waits, in every process (pid, process).
            let snap = Self::snapshot(slf)?;
            out.set_item("grants", snap.get_item("grants")?)?;
            out.set_item("waiters", snap.get_item("waiters")?)?;
        }
        let policy_view = mine.map(|p| p.reason).unwrap_or_default();
        let fits = match fits {
            Ok(fits) => fits,
            Err(blocked) => {
                out.set_item("would_wait", true)?;
                out.set_item("reason", blocked)?;
                return Ok(out);
            }
        };
        match fits {
            Ok(devices) => {
                out.set_item("would_wait", ahead > 0)?;
                out.set_item("devices", devices)?;
                let reason = if ahead > 0 {
                    format!("fits now, but {policy_view}")
                } else {
                    "fits now".to_owned()
                };
                out.set_item("reason", reason)?;
            }
            Err(refusal) => {
                out.set_item("would_wait", true)?;
                out.set_item("never_fits", never)?;
                let mut reason = refusal_text(&refusal);
                if ahead > 0 {
                    reason = format!("{reason}; {policy_view}");
                }
                out.set_item("reason", reason)?;
                match refusal {
                    plugin_scheduling_core::reserve::ledger::Refusal::Vram {
                        device,
                        needed_mb,
                        available_mb,
                        settling_mb,
                        holders,
                    } => {
                        out.set_item("resource", "vram")?;
                        out.set_item("device", device)?;
                        out.set_item("needed_mb", needed_mb)?;
                        out.set_item("available_mb", available_mb)?;
                        out.set_item("settling_mb", settling_mb)?;
                        out.set_item("holders", holders)?;
                    }
                    plugin_scheduling_core::reserve::ledger::Refusal::Pool {
                        pool,
                        needed,
                        available,
                        settling,
                        holders,
                    } => {
                        let resource = if pool.as_ref() == RAM_MB {
                            "ram"
                        } else {
                            pool.as_ref()
                        };
                        out.set_item("resource", resource)?;
                        out.set_item("needed_mb", needed)?;
                        out.set_item("available_mb", available)?;
                        out.set_item("settling_mb", settling)?;
                        out.set_item("holders", holders)?;
                    }
                    plugin_scheduling_core::reserve::ledger::Refusal::NotEnoughDevices {
                        ..
                    } => {
                        out.set_item("resource", "gpu_count")?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Preemption advice: the running grants the policy would stop so that
    /// the plugin could start now (empty: none, or the policy never
    /// preempts). Nothing is stopped.
    #[pyo3(signature = (plugin_meta, stats_provider, *, priority=None, user=None, project=None))]
    fn preemption_candidates<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
        priority: Option<Bound<'py, PyAny>>,
        user: Option<Bound<'py, PyAny>>,
        project: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<PyGrant>> {
        let this = slf.get();
        require_callable("stats_provider", stats_provider)?;
        let (plugin, declared) = declared_need(plugin_meta)?;
        let now = this.now();
        let overrides = JobOverrides {
            priority,
            user,
            project,
            ..JobOverrides::default()
        };
        let job = job_info(plugin_meta, &plugin, &declared, now, &overrides)?;
        let reading = reading(&stats_provider.call0()?)?;
        let victims = Self::op(slf, |q, _| {
            let need = q.effective_need(&plugin, &declared);
            q.preemption_candidates(&job, &need, &reading, now)
        })?;
        Ok(victims.iter().map(PyGrant::from).collect())
    }

    /// Grants and waiters now (waiters in the policy's order, with why).
    fn snapshot<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let this = slf.get();
        let now = this.now();
        let backend = this.backend();
        let shared = backend.shared().is_some();
        type Seen = (
            Vec<(Grant, Option<u32>)>,
            Vec<(plugin_scheduling_core::reserve::queue::Place, Option<u32>)>,
            Vec<(u32, f64)>,
            f64,
            Vec<(String, f64)>,
            String,
        );
        // A view: on a shared ledger read without its lock.
        let (grants_now, places, by_device, ram, by_pool, policy): Seen =
            backend.read(py, |q, owners| {
                let tokens: std::collections::HashMap<WaiterId, u32> = q
                    .export()
                    .0
                    .into_iter()
                    .map(|w| (w.id, w.waker.owner.pid))
                    .collect();
                (
                    q.ledger()
                        .grants()
                        .map(|g| (g.clone(), owners.get(&g.id).map(|o| o.pid)))
                        .collect(),
                    q.places(now)
                        .into_iter()
                        .map(|p| {
                            let pid = tokens.get(&p.id).copied();
                            (p, pid)
                        })
                        .collect(),
                    q.ledger().reserved_by_device().into_iter().collect(),
                    q.ledger().reserved_pool(RAM_MB),
                    q.ledger()
                        .reserved_by_pool()
                        .into_iter()
                        .map(|(n, v)| (n.as_ref().to_owned(), v))
                        .collect(),
                    q.policy().name().to_owned(),
                )
            })?;
        let me = backend.me();
        let process = |pid: Option<u32>, d: &Bound<'py, PyDict>| -> PyResult<()> {
            if shared {
                let pid = pid.unwrap_or(me.pid);
                let name = plugin_scheduling_core::reserve::shared::Owner { pid, start: 0 }.name();
                d.set_item("pid", pid)?;
                d.set_item("process", name)?;
            }
            Ok(())
        };
        let grants = PyList::empty(py);
        for (g, pid) in &grants_now {
            let d = PyDict::new(py);
            d.set_item("id", g.id.0)?;
            d.set_item("plugin", &g.plugin)?;
            d.set_item("devices", &g.devices)?;
            d.set_item("vram_mb", g.vram_mb)?;
            d.set_item("ram_mb", g.ram_mb())?;
            d.set_item("started", g.started)?;
            d.set_item("age_s", (now - g.granted_at).max(0.0))?;
            d.set_item("without_gpu_figures", g.without_gpu_figures)?;
            if let Some(job) = &g.job {
                d.set_item("priority", job.priority)?;
                d.set_item("user", job.user.as_deref())?;
                d.set_item("project", job.project.as_deref())?;
            }
            process(*pid, &d)?;
            grants.append(d)?;
        }
        let waiters = PyList::empty(py);
        for (p, pid) in &places {
            let d = PyDict::new(py);
            d.set_item("plugin", &p.plugin)?;
            d.set_item("position", p.position)?;
            d.set_item("gpu_count", p.need.gpu_count)?;
            d.set_item("vram_mb", p.need.vram_mb)?;
            d.set_item("ram_mb", p.need.ram_mb())?;
            d.set_item("priority", p.job.priority)?;
            d.set_item("user", p.job.user.as_deref())?;
            d.set_item("project", p.job.project.as_deref())?;
            d.set_item("waiting_s", (now - p.job.submitted).max(0.0))?;
            d.set_item("reason", &p.reason)?;
            d.set_item("passed_over", p.stalled)?;
            process(*pid, &d)?;
            waiters.append(d)?;
        }
        let out = PyDict::new(py);
        out.set_item("grants", grants)?;
        out.set_item("waiters", waiters)?;
        let reserved = PyDict::new(py);
        for (device, mb) in by_device {
            reserved.set_item(device, mb)?;
        }
        out.set_item("reserved_vram_mb", reserved)?;
        out.set_item("reserved_ram_mb", ram)?;
        let pools = PyDict::new(py);
        for (name, v) in by_pool {
            pools.set_item(name, v)?;
        }
        out.set_item("reserved_pools", pools)?;
        out.set_item("policy", policy)?;
        if let Some(s) = backend.shared() {
            out.set_item("shared", s)?;
        }
        Ok(out)
    }

    fn _pending_wakers(&self) -> usize {
        self.registry()
            .signals()
            .iter()
            .map(|s| s.pending_wakers())
            .sum()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let (timeout, poll) = {
            let w = lock(&this.waits);
            (w.timeout, w.poll_interval)
        };
        let (headroom, policy, grants, waiting) = Self::op(slf, |q, _| {
            (
                q.settings.limits.headroom,
                q.policy().name().to_owned(),
                q.ledger().len(),
                q.waiting(),
            )
        })?;
        let shared = this
            .backend()
            .shared()
            .map(|s| format!(", shared={:?}", s.display().to_string()))
            .unwrap_or_default();
        Ok(format!(
            "ReservationScheduler(timeout={timeout}, poll_interval={poll}, headroom={headroom}, policy={policy:?}, grants={grants}, waiting={waiting}{shared})"
        ))
    }
}

/// The queue of a scheduler before `__init__` (and its rebuild).
fn default_queue() -> Queue {
    ReservationQueue::new(
        Box::new(plugin_scheduling_core::policy::Fifo),
        Settings::default(),
        Peaks::in_memory(),
    )
}

/// `shared=` as a path: `None`/`False` → none, `True` → the per-user
/// default ledger, a name or a path → that ledger.
fn shared_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PathBuf>> {
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(b) = value.cast::<pyo3::types::PyBool>() {
        return match b.is_true() {
            false => Ok(None),
            true => ledger_path("default")
                .map(Some)
                .map_err(super::errors::shared_error),
        };
    }
    let path = path_arg("shared", value).map_err(|_| {
        PyTypeError::new_err(format!(
            "shared must be True, False, a ledger name or a path (str or os.PathLike), got {}",
            describe(value)
        ))
    })?;
    let text = path.to_string_lossy().into_owned();
    ledger_path(&text)
        .map(Some)
        .map_err(super::errors::shared_error)
}

/// Opens a shared ledger with the GIL released (another process may hold
/// its lock), Ctrl-C honoured meanwhile.
fn py_shared_open(
    py: Python<'_>,
    path: &std::path::Path,
    mode: u32,
    spec: &PolicySpec,
    settings: Settings,
) -> PyResult<SharedQueue> {
    super::reservation_backend::interruptible(py, |interrupted| {
        SharedQueue::open_or(path, mode, spec, settings, interrupted)
    })
}

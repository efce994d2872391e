//! `ReservationScheduler`: atomic per-GPU admission that never double-books.
//!
//! Same interface as the seed's schedulers (`allocate`, `allocate_async`,
//! `on_execution_start`, `on_execution_finish`, `get_active_plugins`), so it
//! drops into the reference `PluginManager`, plus leases that cannot leak,
//! `explain`, `snapshot` and measured peaks. The decisions are in
//! `core::reserve`; this layer reads manifests and stats and waits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet, PyTuple};
use pyo3::PyTraverseError;

use super::errors::seconds;
use super::reservation_inputs::{declared_need, gpu_processes, mb, reading, refusal_text};
use super::schedulers::{patchable, require_callable};
use super::waiting::{async_step, sleep_or_wake, AsyncWaker, Constructed, LoggerCell, WakeSlot};
use plugin_scheduling_core::messages::{self, WaitKind};
use plugin_scheduling_core::queue_wait::{QueueWait, Step};
use plugin_scheduling_core::reserve::ledger::{
    Grant, GrantId, Ledger, Limits, Need, Reading, Refusal,
};
use plugin_scheduling_core::reserve::peaks::{effective, Peaks};
use plugin_scheduling_core::reserve::waiters::{Fifo, Policy, WaitQueue, WaiterId};
use plugin_scheduling_core::wake::WakeSignal;

/// What to do when the stats have no GPU figures for a GPU plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissingStats {
    /// Admit (reserving RAM only), as the seed's schedulers do.
    Allow,
    /// Wait until GPU figures are available.
    Block,
}

struct Settings {
    timeout: f64,
    poll_interval: f64,
    limits: Limits,
    start_timeout: Duration,
    missing: MissingStats,
    peak_margin: f64,
}

struct State {
    ledger: Ledger,
    queue: WaitQueue,
    peaks: Peaks,
    /// Each waiter in line has its own wake signal, so a release wakes only
    /// the one whose turn it is (FIFO: the others could not take it anyway).
    signals: HashMap<WaiterId, Arc<WakeSignal<AsyncWaker>>>,
}

impl State {
    fn join(
        &mut self,
        plugin: &str,
        need: Need,
        arrived: Instant,
        signal: &Arc<WakeSignal<AsyncWaker>>,
    ) -> WaiterId {
        let id = self.queue.join(plugin, need, arrived);
        self.signals.insert(id, Arc::clone(signal));
        id
    }

    fn leave(&mut self, id: WaiterId) -> bool {
        self.signals.remove(&id);
        self.queue.leave(id)
    }
}

/// Reserves what a plugin declares (per GPU device, and RAM) atomically:
/// concurrent callers never double-book. Waiters are served in policy order
/// (FIFO); a release wakes the one whose turn it is at once.
#[pyclass(module = "plugin_scheduling", subclass, frozen, dict, weakref)]
pub struct ReservationScheduler {
    constructed: Constructed,
    patched: AtomicBool,
    settings: Mutex<Settings>,
    logger: LoggerCell,
    state: Mutex<State>,
    policy: Box<dyn Policy>,
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
}

impl From<&Grant> for PyGrant {
    fn from(g: &Grant) -> Self {
        Self {
            id: g.id.0,
            plugin: g.plugin.clone(),
            devices: g.devices.clone(),
            vram_mb: g.vram_mb,
            ram_mb: g.ram_mb,
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
            "Grant(id={}, plugin={:?}, devices={:?}, vram_mb={}, ram_mb={})",
            self.id, self.plugin, self.devices, self.vram_mb, self.ram_mb
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the ledger, queue and settings
    // consistent (they change in single assignments or whole inserts and
    // removals), so recovering from poisoning is sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReservationScheduler {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        lock(&self.settings)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn cached_logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().logger.get(slf.as_any())
    }

    /// The declared need raised to the measured peak × margin.
    fn effective_need(&self, plugin: &str, declared: Need) -> Need {
        let margin = self.settings().peak_margin;
        let peak = self.state().peaks.get(plugin);
        Need {
            gpu_count: declared.gpu_count,
            vram_mb: if declared.gpu_count > 0 {
                effective(declared.vram_mb, peak.vram_mb, margin)
            } else {
                0.0
            },
            ram_mb: effective(declared.ram_mb, peak.ram_mb, margin),
        }
    }

    /// Where `need` would go now, or why not (no reservation made).
    fn place(&self, need: &Need, reading: &Reading, now: Instant) -> Result<Vec<u32>, Refusal> {
        let (limits, start_timeout) = {
            let s = self.settings();
            (s.limits, s.start_timeout)
        };
        let mut state = self.state();
        state.ledger.expire(now, start_timeout);
        state.ledger.place(need, reading, limits, now)
    }

    /// Records peaks for plugins whose grants have processes attached, from
    /// the per-process GPU memory in `stats` (the largest use on one device).
    fn observe_peaks(&self, stats: &Bound<'_, PyAny>) -> PyResult<usize> {
        let processes = gpu_processes(stats)?;
        if processes.is_empty() {
            return Ok(0);
        }
        let mut state = self.state();
        let observed: Vec<(String, f64)> = processes
            .iter()
            .filter_map(|&(pid, used)| {
                state
                    .ledger
                    .plugin_of_pid(pid)
                    .map(|p| (p.to_owned(), used))
            })
            .collect();
        for (plugin, used) in &observed {
            state
                .peaks
                .record(plugin, Some(*used), None)
                .map_err(PyValueError::new_err)?;
        }
        Ok(observed.len())
    }

    /// Wakes the waiter whose turn it is now (if any). The signal is
    /// notified outside the state lock: an async waker runs Python code.
    fn notify_head(&self) {
        let head = {
            let state = self.state();
            self.policy
                .pick(state.queue.waiters(), Instant::now())
                .and_then(|id| state.signals.get(&id).cloned())
        };
        if let Some(signal) = head {
            signal.notify();
        }
    }

    /// `need` adjusted for stats without GPU figures (`on_missing_stats`).
    fn need_for(&self, need: Need, reading: &Reading) -> Option<Need> {
        if need.gpu_count == 0 || !reading.devices.is_empty() {
            return Some(need);
        }
        match self.settings().missing {
            MissingStats::Allow => Some(Need {
                gpu_count: 0,
                vram_mb: 0.0,
                ..need
            }),
            MissingStats::Block => None,
        }
    }
}

/// One wait for a reservation (blocking or async).
#[pyclass(module = "plugin_scheduling", frozen, name = "ReservationWait")]
pub struct ReservationWait {
    scheduler: Py<ReservationScheduler>,
    plugin: String,
    need: Need,
    /// When `allocate` was called: the place in line is by call time, even
    /// when the first stats are slow.
    arrived: Instant,
    /// The need exceeds what the machine could ever grant: give up at once.
    never_fits: AtomicBool,
    wait: QueueWait,
    place_in_line: Mutex<Option<WaiterId>>,
    last_refusal: Mutex<Option<String>>,
    /// This waiter's own wake signal (see `State::signals`).
    signal: Arc<WakeSignal<AsyncWaker>>,
    slot: WakeSlot,
}

impl ReservationWait {
    fn begin(
        slf: &Bound<'_, ReservationScheduler>,
        plugin_meta: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let this = slf.get();
        let (plugin, declared) = declared_need(plugin_meta)?;
        let need = this.effective_need(&plugin, declared);
        let now = Instant::now();
        let signal = Arc::new(WakeSignal::new());
        // FIFO fairness: a newcomer does not overtake waiters already in line.
        let place = {
            let mut state = this.state();
            (!state.queue.is_empty()).then(|| state.join(&plugin, need, now, &signal))
        };
        Ok(Self {
            scheduler: slf.clone().unbind(),
            plugin,
            need,
            arrived: now,
            never_fits: AtomicBool::new(false),
            wait: QueueWait::start_at(now),
            place_in_line: Mutex::new(place),
            last_refusal: Mutex::new(None),
            slot: WakeSlot::new(signal.generation()),
            signal,
        })
    }

    fn is_my_turn(&self) -> bool {
        let Some(id) = *lock(&self.place_in_line) else {
            return true;
        };
        let scheduler = self.scheduler.get();
        let state = scheduler.state();
        state
            .queue
            .is_turn_of(id, scheduler.policy.as_ref(), Instant::now())
    }

    /// Reads `stats` and reserves if the need fits; `None` (and a place in
    /// line) if not.
    fn try_grant(&self, stats: &Bound<'_, PyAny>) -> PyResult<Option<PyGrant>> {
        let scheduler = self.scheduler.get();
        let reading = reading(stats)?;
        scheduler.observe_peaks(stats)?;
        let now = Instant::now();
        let Some(need) = scheduler.need_for(self.need, &reading) else {
            *lock(&self.last_refusal) =
                Some("no GPU figures in the stats (on_missing_stats='block')".into());
            self.join_line();
            return Ok(None);
        };
        let (limits, start_timeout) = {
            let s = scheduler.settings();
            (s.limits, s.start_timeout)
        };
        let granted = {
            let mut state = scheduler.state();
            let expired = !state.ledger.expire(now, start_timeout).is_empty();
            let result = state
                .ledger
                .grant(&self.plugin, &need, &reading, limits, now);
            if result.is_ok() {
                if let Some(id) = lock(&self.place_in_line).take() {
                    state.leave(id);
                }
            }
            (result, expired)
        };
        match granted {
            (Ok(grant), _) => {
                // The next in line may now try.
                scheduler.notify_head();
                Ok(Some(PyGrant::from(&grant)))
            }
            (Err(refusal), expired) => {
                if !Ledger::can_ever_fit(&need, &reading, limits) {
                    self.never_fits
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                *lock(&self.last_refusal) = Some(refusal_text(&refusal));
                self.join_line();
                if expired {
                    scheduler.notify_head();
                }
                Ok(None)
            }
        }
    }

    /// Takes a place in line (if not in it yet), by the time of the call.
    fn join_line(&self) {
        let mut place = lock(&self.place_in_line);
        if place.is_none() {
            *place = Some(self.scheduler.get().state().join(
                &self.plugin,
                self.need,
                self.arrived,
                &self.signal,
            ));
        }
    }

    /// Gives up the place in line (idempotent) and lets the next one try.
    fn leave_line(&self) {
        if let Some(id) = lock(&self.place_in_line).take() {
            let scheduler = self.scheduler.get();
            let left = scheduler.state().leave(id);
            if left {
                scheduler.notify_head();
            }
        }
    }

    /// After a turn without a grant: give up after `timeout` (logged, leaves
    /// the line) or log and return the seconds to sleep.
    fn refused(&self, py: Python<'_>, kind: WaitKind) -> PyResult<Option<f64>> {
        let slf = self.scheduler.bind(py);
        let (timeout, poll) = {
            let s = slf.get().settings();
            (s.timeout, s.poll_interval)
        };
        let why = || {
            lock(&self.last_refusal)
                .clone()
                .unwrap_or_else(|| "waiting in line".into())
        };
        if self.never_fits.load(std::sync::atomic::Ordering::Acquire) {
            self.leave_line();
            let line = format!("{} can never fit on this machine ({})", self.plugin, why());
            ReservationScheduler::cached_logger(slf)?
                .call_method1(intern!(py, "error"), (line,))?;
            return Ok(None);
        }
        let now = Instant::now();
        match self.wait.step(false, timeout, now) {
            Step::GiveUp => {
                self.leave_line();
                let line = format!("{} ({})", messages::timed_out(&self.plugin), why());
                ReservationScheduler::cached_logger(slf)?
                    .call_method1(intern!(py, "error"), (line,))?;
                Ok(None)
            }
            Step::Admit | Step::Sleep => {
                let line = messages::busy(kind, &poll.to_string());
                ReservationScheduler::cached_logger(slf)?
                    .call_method1(intern!(py, "info"), (line,))?;
                // Never sleep past the deadline (unlike the seed's queue,
                // which overshoots by up to a poll_interval), nor past the
                // moment the ledger changes by itself (a grant settles or
                // expires), which no release would announce.
                let left = timeout - now.saturating_duration_since(self.arrived).as_secs_f64();
                let (settle, start_timeout) = {
                    let s = slf.get().settings();
                    (s.limits.settle, s.start_timeout)
                };
                let change = slf
                    .get()
                    .state()
                    .ledger
                    .next_change(now, settle, start_timeout)
                    .map_or(f64::INFINITY, |t| {
                        t.saturating_duration_since(now).as_secs_f64()
                    });
                Ok(Some(poll.min(left.max(0.0) + 0.001).min(change + 0.001)))
            }
        }
    }
}

#[pymethods]
impl ReservationWait {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.scheduler)
    }

    /// Whether this waiter may read stats and try now.
    fn my_turn(&self) -> bool {
        self.is_my_turn()
    }

    #[pyo3(name = "try_grant")]
    fn py_try_grant(&self, stats: &Bound<'_, PyAny>) -> PyResult<Option<PyGrant>> {
        self.try_grant(stats)
    }

    /// `False` (gave up) or the seconds to sleep.
    fn after_refusal<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(async_step(py, self.refused(py, WaitKind::Async)?))
    }

    fn leave(&self) {
        self.leave_line();
    }

    fn subscribe(&self, wake: Py<PyAny>, event_loop: Py<PyAny>, future: Py<PyAny>) -> Option<u64> {
        self.slot.subscribe(&self.signal, wake, event_loop, future)
    }

    #[pyo3(signature = (token))]
    fn unsubscribe(&self, token: Option<u64>) {
        self.slot.unsubscribe(&self.signal, token);
    }
}

const DEFAULT_TIMEOUT: f64 = 300.0;
const DEFAULT_POLL_INTERVAL: f64 = 2.0;

fn float_arg(field: &str, value: f64, min: f64, max: f64) -> PyResult<f64> {
    if value.is_nan() || value < min || value > max {
        return Err(PyValueError::new_err(format!(
            "{field} must be between {min} and {max}, got {value}"
        )));
    }
    Ok(value)
}

/// `$XDG_STATE_HOME/plugin-scheduling/peaks.json`, or
/// `~/.local/state/plugin-scheduling/peaks.json`.
fn default_peaks_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
        })?;
    Some(base.join("plugin-scheduling").join("peaks.json"))
}

#[pymethods]
impl ReservationScheduler {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            constructed: Constructed::new(),
            patched: AtomicBool::new(false),
            logger: LoggerCell::default(),
            settings: Mutex::new(Settings {
                timeout: DEFAULT_TIMEOUT,
                poll_interval: DEFAULT_POLL_INTERVAL,
                limits: Limits {
                    headroom: 0.9,
                    settle: Duration::from_secs(2),
                },
                start_timeout: Duration::from_secs(60),
                missing: MissingStats::Allow,
                peak_margin: 1.1,
            }),
            state: Mutex::new(State {
                ledger: Ledger::new(),
                queue: WaitQueue::default(),
                peaks: Peaks::in_memory(),
                signals: HashMap::new(),
            }),
            policy: Box::new(Fifo),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (timeout = None, poll_interval = None, *, headroom = 0.9, settle_s = 2.0,
        start_timeout = 60.0, on_missing_stats = "allow", peaks_path = None, persist_peaks = false,
        peak_margin = 1.1, policy = "fifo"))]
    fn __init__(
        slf: &Bound<'_, Self>,
        timeout: Option<&Bound<'_, PyAny>>,
        poll_interval: Option<&Bound<'_, PyAny>>,
        headroom: f64,
        settle_s: f64,
        start_timeout: f64,
        on_missing_stats: &str,
        peaks_path: Option<PathBuf>,
        persist_peaks: bool,
        peak_margin: f64,
        policy: &str,
    ) -> PyResult<()> {
        let timeout = match timeout {
            Some(t) => seconds("timeout", t, true)?,
            None => DEFAULT_TIMEOUT,
        };
        let poll_interval = match poll_interval {
            Some(p) => seconds("poll_interval", p, false)?,
            None => DEFAULT_POLL_INTERVAL,
        };
        let headroom = float_arg("headroom", headroom, 0.0, 1.0)?;
        let settle = Duration::from_secs_f64(float_arg("settle_s", settle_s, 0.0, 86_400.0)?);
        let start_timeout = Duration::from_secs_f64(float_arg(
            "start_timeout",
            start_timeout,
            0.0,
            31_536_000.0,
        )?);
        let peak_margin = float_arg("peak_margin", peak_margin, 1.0, 100.0)?;
        let missing = match on_missing_stats {
            "allow" => MissingStats::Allow,
            "block" => MissingStats::Block,
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_missing_stats must be 'allow' or 'block', got {other:?}"
                )))
            }
        };
        if policy != "fifo" {
            return Err(PyValueError::new_err(format!(
                "policy must be 'fifo' (the only one so far), got {policy:?}"
            )));
        }
        let path = match (peaks_path, persist_peaks) {
            (Some(path), _) => Some(path),
            (None, true) => default_peaks_path(),
            (None, false) => None,
        };
        let (peaks, problem) = match path {
            Some(path) => Peaks::at(path),
            None => (Peaks::in_memory(), None),
        };
        let this = slf.get();
        *this.settings() = Settings {
            timeout,
            poll_interval,
            limits: Limits { headroom, settle },
            start_timeout,
            missing,
            peak_margin,
        };
        this.state().peaks = peaks;
        if let Some(problem) = problem {
            Self::cached_logger(slf)?.call_method1(intern!(slf.py(), "warning"), (problem,))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if !self.constructed.get() {
            return Ok(());
        }
        self.logger.visit(&visit)?;
        if let Ok(state) = self.state.try_lock() {
            for signal in state.signals.values() {
                AsyncWaker::visit_all(signal, &visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if !self.constructed.get() {
            return;
        }
        let signals: Vec<_> = self.state().signals.values().cloned().collect();
        for signal in signals {
            drop(signal.take_wakers());
        }
        self.logger.set(None);
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.settings().timeout
    }

    #[getter]
    fn poll_interval(&self) -> f64 {
        self.settings().poll_interval
    }

    #[getter]
    fn logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached_logger(slf)
    }

    /// Starts a wait (used by the async methods in `_drivers`).
    fn _begin_wait(
        slf: &Bound<'_, Self>,
        plugin_meta: &Bound<'_, PyAny>,
    ) -> PyResult<ReservationWait> {
        ReservationWait::begin(slf, plugin_meta)
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the plugin's need is
    /// reserved, or `timeout` passes (`None`).
    fn _reserve(
        slf: &Bound<'_, Self>,
        plugin_meta: &Bound<'_, PyAny>,
        stats_provider: &Bound<'_, PyAny>,
    ) -> PyResult<Option<PyGrant>> {
        let py = slf.py();
        require_callable("stats_provider", stats_provider)?;
        let wait = ReservationWait::begin(slf, plugin_meta)?;
        let signal = Arc::clone(&wait.signal);
        let result = (|| loop {
            let seen = signal.generation();
            if wait.is_my_turn() {
                let stats = stats_provider.call0()?;
                if let Some(grant) = wait.try_grant(&stats)? {
                    return Ok(Some(grant));
                }
            }
            match wait.refused(py, WaitKind::Blocking)? {
                None => return Ok(None),
                Some(secs) => sleep_or_wake(py, &signal, seen, secs)?,
            }
        })();
        // On success the place was already given up; on error (provider
        // raised, Ctrl-C) give it up now so nobody waits behind a ghost.
        wait.leave_line();
        result
    }

    /// Reserves what the plugin declares (waiting if needed); `False` after
    /// `timeout`. Pair with `on_execution_start` / `on_execution_finish`.
    fn allocate(
        slf: &Bound<'_, Self>,
        plugin_meta: &Bound<'_, PyAny>,
        stats_provider: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        Ok(Self::_reserve(slf, plugin_meta, stats_provider)?.is_some())
    }

    /// Marks the oldest unstarted reservation of `plugin_name` started.
    fn on_execution_start(&self, plugin_name: &str) {
        self.state().ledger.start(plugin_name);
    }

    /// Releases the oldest started reservation of `plugin_name` and wakes
    /// the waiter whose turn it is.
    fn on_execution_finish(&self, plugin_name: &str) {
        let released = self.state().ledger.finish(plugin_name).is_some();
        if released {
            self.notify_head();
        }
    }

    fn _start_grant(&self, grant_id: u64) -> bool {
        let mut state = self.state();
        let found = state.ledger.get(GrantId(grant_id)).is_some();
        if found {
            state.ledger.start_lease(GrantId(grant_id));
        }
        found
    }

    fn _release_grant(&self, grant_id: u64) -> bool {
        let released = self.state().ledger.release(GrantId(grant_id)).is_some();
        if released {
            self.notify_head();
        }
        released
    }

    /// Records that process `pid` runs the plugin of grant `grant_id`, so
    /// its GPU memory (from a `SystemMonitor` reading passed to `observe`,
    /// or read while someone waits) is recorded as the plugin's peak.
    fn attach_pid(&self, grant_id: u64, pid: u32) -> bool {
        self.state().ledger.attach_pid(GrantId(grant_id), pid)
    }

    /// Records peaks from a stats reading (see `attach_pid`); returns how many
    /// processes were attributed to a grant.
    fn observe(&self, stats: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.observe_peaks(stats)
    }

    /// Names of plugins with a started reservation (a new set).
    fn get_active_plugins<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let state = self.state();
        let names: Vec<&str> = state
            .ledger
            .grants()
            .filter(|g| g.started)
            .map(|g| g.plugin.as_str())
            .collect();
        PySet::new(py, names)
    }

    /// Records a measured peak; later grants for the plugin reserve at
    /// least `peak × peak_margin`. Persisted when the scheduler has a path.
    #[pyo3(signature = (plugin_name, vram_mb = None, ram_mb = None))]
    fn record_peak<'py>(
        &self,
        py: Python<'py>,
        plugin_name: &str,
        vram_mb: Option<&Bound<'py, PyAny>>,
        ram_mb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let vram_mb = vram_mb.map(|v| mb("vram_mb", v)).transpose()?;
        let ram_mb = ram_mb.map(|v| mb("ram_mb", v)).transpose()?;
        let peak = self
            .state()
            .peaks
            .record(plugin_name, vram_mb, ram_mb)
            .map_err(PyValueError::new_err)?;
        let out = PyDict::new(py);
        out.set_item("vram_mb", peak.vram_mb)?;
        out.set_item("ram_mb", peak.ram_mb)?;
        Ok(out)
    }

    /// Recorded peaks per plugin.
    fn peaks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (plugin, peak) in self.state().peaks.all() {
            let d = PyDict::new(py);
            d.set_item("vram_mb", peak.vram_mb)?;
            d.set_item("ram_mb", peak.ram_mb)?;
            out.set_item(plugin, d)?;
        }
        Ok(out)
    }

    /// Why the plugin would wait (or where it would go), without reserving.
    fn explain<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats_provider: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let this = slf.get();
        require_callable("stats_provider", stats_provider)?;
        let (plugin, declared) = declared_need(plugin_meta)?;
        let need = this.effective_need(&plugin, declared);
        let reading = reading(&stats_provider.call0()?)?;
        let out = PyDict::new(py);
        out.set_item("plugin", &plugin)?;
        out.set_item("gpu_count", need.gpu_count)?;
        out.set_item("vram_mb", need.vram_mb)?;
        out.set_item("ram_mb", need.ram_mb)?;
        out.set_item("waiting_ahead", this.state().queue.len())?;
        let Some(adjusted) = this.need_for(need, &reading) else {
            out.set_item("would_wait", true)?;
            out.set_item(
                "reason",
                "no GPU figures in the stats (on_missing_stats='block')",
            )?;
            return Ok(out);
        };
        match this.place(&adjusted, &reading, Instant::now()) {
            Ok(devices) => {
                out.set_item("would_wait", !this.state().queue.is_empty())?;
                out.set_item("devices", devices)?;
                out.set_item("reason", "fits now")?;
            }
            Err(refusal) => {
                out.set_item("would_wait", true)?;
                out.set_item("reason", refusal_text(&refusal))?;
                match refusal {
                    Refusal::Vram {
                        device,
                        needed_mb,
                        available_mb,
                        holders,
                    } => {
                        out.set_item("resource", "vram")?;
                        out.set_item("device", device)?;
                        out.set_item("needed_mb", needed_mb)?;
                        out.set_item("available_mb", available_mb)?;
                        out.set_item("holders", holders)?;
                    }
                    Refusal::Ram {
                        needed_mb,
                        available_mb,
                        holders,
                    } => {
                        out.set_item("resource", "ram")?;
                        out.set_item("needed_mb", needed_mb)?;
                        out.set_item("available_mb", available_mb)?;
                        out.set_item("holders", holders)?;
                    }
                    Refusal::NotEnoughDevices { .. } => {
                        out.set_item("resource", "gpu_count")?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Grants and waiters now.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = Instant::now();
        let state = self.state();
        let grants = PyList::empty(py);
        for g in state.ledger.grants() {
            let d = PyDict::new(py);
            d.set_item("id", g.id.0)?;
            d.set_item("plugin", &g.plugin)?;
            d.set_item("devices", &g.devices)?;
            d.set_item("vram_mb", g.vram_mb)?;
            d.set_item("ram_mb", g.ram_mb)?;
            d.set_item("started", g.started)?;
            d.set_item(
                "age_s",
                now.saturating_duration_since(g.granted_at).as_secs_f64(),
            )?;
            grants.append(d)?;
        }
        let waiters = PyList::empty(py);
        for w in state.queue.waiters() {
            let d = PyDict::new(py);
            d.set_item("plugin", &w.plugin)?;
            d.set_item("position", state.queue.position(w.id))?;
            d.set_item("gpu_count", w.need.gpu_count)?;
            d.set_item("vram_mb", w.need.vram_mb)?;
            d.set_item("ram_mb", w.need.ram_mb)?;
            d.set_item(
                "waiting_s",
                now.saturating_duration_since(w.arrived).as_secs_f64(),
            )?;
            waiters.append(d)?;
        }
        let out = PyDict::new(py);
        out.set_item("grants", grants)?;
        out.set_item("waiters", waiters)?;
        let reserved = PyDict::new(py);
        for (device, mb) in state.ledger.reserved_by_device() {
            reserved.set_item(device, mb)?;
        }
        out.set_item("reserved_vram_mb", reserved)?;
        out.set_item("reserved_ram_mb", state.ledger.reserved_ram_mb())?;
        out.set_item("policy", self.policy.name())?;
        Ok(out)
    }

    fn _pending_wakers(&self) -> usize {
        self.state()
            .signals
            .values()
            .map(|s| s.pending_wakers())
            .sum()
    }

    fn __repr__(&self) -> String {
        let s = self.settings();
        let state = self.state();
        format!(
            "ReservationScheduler(timeout={}, poll_interval={}, headroom={}, grants={}, waiting={})",
            s.timeout,
            s.poll_interval,
            s.limits.headroom,
            state.ledger.grants().count(),
            state.queue.len()
        )
    }
}

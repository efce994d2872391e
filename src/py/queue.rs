//! `QueueScheduler`: waits until a plugin fits, woken at once by a release.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet, PyTuple};
use pyo3::PyTraverseError;

use super::errors::seconds;
use super::inputs::{py_line, queue_check};
use super::loop_guard::warn_if_blocking_a_loop;
use super::schedulers::{is_pristine, patchable, reduce, require_callable};
use super::waiting::{async_step, sleep_or_wake, AsyncWaker, Constructed, LoggerCell, WakeSlot};
use plugin_scheduling_core::messages::{self, WaitKind};
use plugin_scheduling_core::queue_wait::{QueueWait, Step};
use plugin_scheduling_core::wake::WakeSignal;

/// `timeout` / `poll_interval` as given (for `str()` in log lines and for
/// reading back) and as seconds.
struct Setting {
    value: Py<PyAny>,
    seconds: f64,
}

struct QueueSettings {
    timeout: Setting,
    poll_interval: Setting,
}

/// Waits until a plugin's declared VRAM / RAM fits, as the reference's
/// `QueueScheduler` does, or gives up after `timeout`.
///
/// Options (both settable later as attributes):
///
/// - `timeout` (seconds, default 300.0; `inf`: no limit): how long
///   `allocate` waits before it logs the reference's timeout line and
///   returns `False`.
/// - `poll_interval` (seconds, default 2.0): how long it sleeps between
///   checks when nothing wakes it; `on_execution_finish` wakes every waiter
///   at once.
///
/// `allocate` blocks the calling thread; in an event loop use
/// `await scheduler.allocate_async(plugin_meta, monitor.snapshot_async)`.
/// Logs go to `logging.getLogger("plugin_scheduling.QueueScheduler")`
/// unless `logger` is replaced.
#[pyclass(module = "plugin_scheduling", subclass, frozen, dict, weakref)]
pub struct QueueScheduler {
    constructed: Constructed,
    patched: AtomicBool,
    /// Set once `allocate` warned about blocking a running event loop.
    warned_in_loop: AtomicBool,
    settings: Mutex<QueueSettings>,
    logger: LoggerCell,
    active: Py<PySet>,
    wake: WakeSignal<AsyncWaker>,
}

const DEFAULT_TIMEOUT: f64 = 300.0;
const DEFAULT_POLL_INTERVAL: f64 = 2.0;

impl QueueScheduler {
    // The settings are plain values that every critical section leaves
    // consistent, so recovering from a poisoned lock is sound.
    fn settings(&self) -> MutexGuard<'_, QueueSettings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().logger.get(slf.as_any())
    }

    /// The check, through `self._check_resources` unless `pristine`.
    fn admits(
        slf: &Bound<'_, Self>,
        plugin_meta: &Bound<'_, PyAny>,
        stats: &Bound<'_, PyAny>,
        pristine: bool,
    ) -> PyResult<bool> {
        if pristine {
            return queue_check(plugin_meta, stats);
        }
        slf.call_method1(intern!(slf.py(), "_check_resources"), (plugin_meta, stats))?
            .is_truthy()
    }

    /// After a failed check: give up if `timeout` has passed (logged as the
    /// reference logs it, returns `None`), else log and return the seconds
    /// to sleep before the next check.
    fn after_refusal(
        slf: &Bound<'_, Self>,
        wait: &QueueWait,
        plugin_meta: &Bound<'_, PyAny>,
        kind: WaitKind,
    ) -> PyResult<Option<f64>> {
        let py = slf.py();
        let (timeout, poll_seconds, poll_value) = {
            let s = slf.get().settings();
            (
                s.timeout.seconds,
                s.poll_interval.seconds,
                s.poll_interval.value.clone_ref(py),
            )
        };
        match wait.step(false, timeout, Instant::now()) {
            Step::Admit => Ok(Some(0.0)),
            Step::GiveUp => {
                // Formatted by Python, so any name logs as the reference's does.
                let line = py_line(
                    py,
                    &messages::timed_out("{0}"),
                    (plugin_meta.getattr(intern!(py, "name"))?,),
                )?;
                Self::logger(slf)?.call_method1(intern!(py, "error"), (line,))?;
                Ok(None)
            }
            Step::Sleep => {
                let line = py_line(py, &messages::busy(kind, "{0}"), (poll_value.bind(py),))?;
                Self::logger(slf)?.call_method1(intern!(py, "info"), (line,))?;
                Ok(Some(poll_seconds))
            }
        }
    }
}

impl QueueScheduler {
    fn warn_if_in_loop(slf: &Bound<'_, Self>, plugin_meta: &Bound<'_, PyAny>) -> PyResult<()> {
        let this = slf.get();
        if this
            .warned_in_loop
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let py = slf.py();
        let name = match plugin_meta.getattr(intern!(py, "name")) {
            Ok(name) => name.repr()?.to_string(),
            Err(_) => "?".to_owned(),
        };
        let timeout = this.settings().timeout.seconds;
        warn_if_blocking_a_loop(py, &this.warned_in_loop, "QueueScheduler", &name, timeout)
    }
}

patchable!(QueueScheduler);

#[pymethods]
impl QueueScheduler {
    // Garbage-collector support: a waiter's future (via its task and
    // coroutine) refers back to this scheduler, and the active set may hold
    // anything, so cycles through here must be visible and breakable.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if !self.constructed.get() {
            return Ok(());
        }
        visit.call(&self.active)?;
        if let Ok(settings) = self.settings.try_lock() {
            visit.call(&settings.timeout.value)?;
            visit.call(&settings.poll_interval.value)?;
        }
        self.logger.visit(&visit)?;
        AsyncWaker::visit_all(&self.wake, &visit)
    }

    fn __clear__(&self) {
        if !self.constructed.get() {
            return;
        }
        // Dropping the wakers breaks the cycle; their futures are not resolved.
        drop(self.wake.take_wakers());
        self.logger.set(None);
    }

    #[new]
    #[pyo3(
        signature = (*_args, **_kwargs),
        text_signature = "(timeout=300.0, poll_interval=2.0)"
    )]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let setting = |secs: f64| -> PyResult<Setting> {
            Ok(Setting {
                value: pyo3::types::PyFloat::new(py, secs).into_any().unbind(),
                seconds: secs,
            })
        };
        Ok(Self {
            constructed: Constructed::new(),
            logger: LoggerCell::default(),
            settings: Mutex::new(QueueSettings {
                timeout: setting(DEFAULT_TIMEOUT)?,
                poll_interval: setting(DEFAULT_POLL_INTERVAL)?,
            }),
            patched: AtomicBool::new(false),
            warned_in_loop: AtomicBool::new(false),
            active: PySet::empty(py)?.unbind(),
            wake: WakeSignal::new(),
        })
    }

    #[pyo3(signature = (timeout = None, poll_interval = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        timeout: Option<&Bound<'_, PyAny>>,
        poll_interval: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let default_timeout = pyo3::types::PyFloat::new(py, DEFAULT_TIMEOUT).into_any();
        let default_poll = pyo3::types::PyFloat::new(py, DEFAULT_POLL_INTERVAL).into_any();
        Self::set_timeout(slf, timeout.unwrap_or(&default_timeout))?;
        Self::set_poll_interval(slf, poll_interval.unwrap_or(&default_poll))?;
        slf.get().logger.set(None);
        slf.get().active.bind(py).clear();
        Ok(())
    }

    /// Maximum seconds to wait for resources (`inf`: no limit).
    #[getter]
    fn timeout(&self, py: Python<'_>) -> Py<PyAny> {
        self.settings().timeout.value.clone_ref(py)
    }

    #[setter]
    fn set_timeout(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let secs = seconds("timeout", value, true)?;
        slf.get().settings().timeout = Setting {
            value: value.clone().unbind(),
            seconds: secs,
        };
        Ok(())
    }

    /// Seconds between re-checks when nothing wakes the waiter earlier.
    #[getter]
    fn poll_interval(&self, py: Python<'_>) -> Py<PyAny> {
        self.settings().poll_interval.value.clone_ref(py)
    }

    #[setter]
    fn set_poll_interval(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let secs = seconds("poll_interval", value, false)?;
        slf.get().settings().poll_interval = Setting {
            value: value.clone().unbind(),
            seconds: secs,
        };
        Ok(())
    }

    /// `logging.getLogger("plugin_scheduling.<class name>")` unless replaced.
    #[getter(logger)]
    fn get_logger<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::logger(slf)
    }

    #[setter(logger)]
    fn set_logger(&self, value: Py<PyAny>) {
        self.logger.set(Some(value));
    }

    /// The live set behind `get_active_plugins()` (the reference's attribute).
    #[getter]
    fn _active_plugins(&self, py: Python<'_>) -> Py<PySet> {
        self.active.clone_ref(py)
    }

    fn _check_resources(
        &self,
        plugin_meta: &Bound<'_, PyAny>,
        stats: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        queue_check(plugin_meta, stats)
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the plugin fits or
    /// `timeout` passes.
    fn allocate(
        slf: &Bound<'_, Self>,
        plugin_meta: &Bound<'_, PyAny>,
        stats_provider: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        require_callable("stats_provider", stats_provider)?;
        let pristine = is_pristine::<Self>(slf)?;
        let this = slf.get();
        let wait = QueueWait::start();
        loop {
            // Read before the stats: a release after this point ends the sleep.
            let seen = this.wake.generation();
            let stats = stats_provider.call0()?;
            if Self::admits(slf, plugin_meta, &stats, pristine)? {
                return Ok(true);
            }
            match Self::after_refusal(slf, &wait, plugin_meta, WaitKind::Blocking)? {
                None => return Ok(false),
                Some(secs) => {
                    Self::warn_if_in_loop(slf, plugin_meta)?;
                    sleep_or_wake(py, &this.wake, seen, secs)?
                }
            }
        }
    }

    /// The first turn of an async wait (used by `_drivers.queue_allocate_async`),
    /// after the first stats: `True` when admitted, else the state of the
    /// wait, which has logged as the reference does and says how to go on.
    /// `started` is `time.monotonic()` read before the first stats; a
    /// release since then is not lost (the first sleep ends at once).
    fn _first_turn<'py>(
        slf: &Bound<'py, Self>,
        plugin_meta: &Bound<'py, PyAny>,
        stats: &Bound<'py, PyAny>,
        started: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let pristine = is_pristine::<Self>(slf)?;
        if Self::admits(slf, plugin_meta, stats, pristine)? {
            return Ok(pyo3::types::PyBool::new(py, true).to_owned().into_any());
        }
        // Only on the slow path: map the caller's monotonic start to an Instant.
        let py_now: f64 = py
            .import(intern!(py, "time"))?
            .getattr(intern!(py, "monotonic"))?
            .call0()?
            .extract()?;
        let now = Instant::now();
        let started = Duration::try_from_secs_f64((py_now - started).max(0.0))
            .ok()
            .and_then(|elapsed| now.checked_sub(elapsed))
            .unwrap_or(now);
        let this = slf.get();
        let generation = this.wake.generation();
        let seen = if this.wake.notified_since(started) {
            generation.wrapping_sub(1) // a release during the first stats: do not sleep
        } else {
            generation
        };
        let state = QueueWaitState {
            scheduler: slf.clone().unbind(),
            wait: QueueWait::start_at(started),
            slot: WakeSlot::new(seen),
            pristine,
        };
        let next = Self::after_refusal(slf, &state.wait, plugin_meta, WaitKind::Async)?;
        let out = (Bound::new(py, state)?, async_step(py, next));
        Ok(out.into_pyobject(py)?.into_any())
    }

    fn on_execution_start(&self, py: Python<'_>, plugin_name: &Bound<'_, PyAny>) -> PyResult<()> {
        self.active.bind(py).add(plugin_name)
    }

    /// Marks the plugin finished and wakes every waiter to re-check at once.
    fn on_execution_finish(&self, py: Python<'_>, plugin_name: &Bound<'_, PyAny>) -> PyResult<()> {
        self.active.bind(py).discard(plugin_name)?;
        self.wake.notify();
        Ok(())
    }

    /// A new set of the plugins currently executing.
    fn get_active_plugins<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        PySet::new(py, self.active.bind(py).iter())
    }

    /// Number of async waiters currently registered for a wake-up.
    fn _pending_wakers(&self) -> usize {
        self.wake.pending_wakers()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let s = self.settings();
        Ok(format!(
            "QueueScheduler(timeout={}, poll_interval={})",
            s.timeout.value.bind(py).repr()?,
            s.poll_interval.value.bind(py).repr()?
        ))
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (timeout, poll) = {
            let s = slf.get().settings();
            (
                s.timeout.value.clone_ref(py),
                s.poll_interval.value.clone_ref(py),
            )
        };
        reduce(slf.as_any(), PyTuple::new(py, [timeout, poll])?)
    }
}

/// One async wait on a `QueueScheduler`; driven by `_drivers.queue_allocate_async`.
#[pyclass(module = "plugin_scheduling", frozen, name = "QueueWaitState")]
pub struct QueueWaitState {
    scheduler: Py<QueueScheduler>,
    wait: QueueWait,
    slot: WakeSlot,
    pristine: bool,
}

#[pymethods]
impl QueueWaitState {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.scheduler)
    }

    /// After the stats of a later turn: `True` (admitted), `False` (gave up)
    /// or the seconds to sleep before the next turn.
    fn after_stats<'py>(
        &self,
        py: Python<'py>,
        plugin_meta: &Bound<'py, PyAny>,
        stats: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let slf = self.scheduler.bind(py);
        if QueueScheduler::admits(slf, plugin_meta, stats, self.pristine)? {
            return Ok(pyo3::types::PyBool::new(py, true).to_owned().into_any());
        }
        let next = QueueScheduler::after_refusal(slf, &self.wait, plugin_meta, WaitKind::Async)?;
        Ok(async_step(py, next))
    }

    /// Registers `wake(loop, future)` to run on the next release; if one
    /// already happened since the stats were read, returns `None` and the
    /// caller must not sleep.
    fn subscribe(&self, wake: Py<PyAny>, event_loop: Py<PyAny>, future: Py<PyAny>) -> Option<u64> {
        self.slot
            .subscribe(&self.scheduler.get().wake, wake, event_loop, future, None)
    }

    /// Removes the waker (after a wake, a timer or a cancellation) and reads
    /// the generation for the next turn.
    #[pyo3(signature = (token))]
    fn unsubscribe(&self, token: Option<u64>) {
        self.slot.unsubscribe(&self.scheduler.get().wake, token);
    }
}

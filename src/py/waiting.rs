//! What the waiting schedulers share: async wakers the garbage collector
//! can see, the blocking sleep that ends on a release or Ctrl-C, and the
//! per-wait generation slot that makes async waits lose no release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use plugin_scheduling_core::wake::{WakeSignal, Waker, WakerId};

/// Longest stretch a blocking wait stays in Rust without checking for
/// signals: Ctrl-C is honoured within this.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// A registered async waiter: on a release, `wake(event_loop, future)` runs
/// (`_drivers.wake`, which resolves the future on its loop's thread). Kept
/// as data, not a closure, so the garbage collector can see what it holds.
pub struct AsyncWaker {
    pub wake: Py<PyAny>,
    pub event_loop: Py<PyAny>,
    pub future: Py<PyAny>,
    /// Called (no arguments) when `wake` finds the event loop closed: the
    /// waiter can never run again.
    pub on_closed: Option<Py<PyAny>>,
}

impl AsyncWaker {
    /// Shows the garbage collector every object the registered wakers hold.
    pub fn visit_all(
        signal: &WakeSignal<AsyncWaker>,
        visit: &PyVisit<'_>,
    ) -> Result<(), PyTraverseError> {
        signal.try_visit_wakers(|waker| {
            visit.call(&waker.wake)?;
            visit.call(&waker.event_loop)?;
            visit.call(&waker.future)?;
            visit.call(&waker.on_closed)
        })
    }
}

impl Waker for AsyncWaker {
    fn wake(self) {
        Python::attach(|py| {
            // `_drivers.wake` answers False when the loop is closed.
            let closed = match self.wake.call1(py, (self.event_loop, self.future)) {
                Ok(r) => r.bind(py).is(pyo3::types::PyBool::new(py, false)),
                Err(err) => {
                    err.write_unraisable(py, None);
                    false
                }
            };
            if let Some(on_closed) = self.on_closed.filter(|_| closed) {
                if let Err(err) = on_closed.call0(py) {
                    err.write_unraisable(py, None);
                }
            }
        })
    }
}

/// Sleeps up to `seconds` with the GIL released, ending early when the
/// scheduler's generation moves past `seen`; checks for signals (Ctrl-C)
/// at least every [`SIGNAL_CHECK`].
pub fn sleep_or_wake<W: Waker>(
    py: Python<'_>,
    wake: &WakeSignal<W>,
    seen: u64,
    seconds: f64,
) -> PyResult<()> {
    // A too-large finite delay has no deadline: it sleeps until woken.
    let deadline = Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| Instant::now().checked_add(d));
    loop {
        let slice = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(SIGNAL_CHECK)
            }
            None => SIGNAL_CHECK,
        };
        if py.detach(|| wake.wait_changed(seen, slice)) {
            return Ok(());
        }
        py.check_signals()?;
    }
}

/// The generation an async wait last read (before its stats), so a release
/// between "check failed" and "go to sleep" ends the sleep at once.
pub struct WakeSlot {
    seen: AtomicU64,
}

impl WakeSlot {
    pub fn new(seen: u64) -> Self {
        Self {
            seen: AtomicU64::new(seen),
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    pub fn mark(&self, generation: u64) {
        self.seen.store(generation, Ordering::Release);
    }

    /// Registers `wake(event_loop, future)` for the next release; `None` when
    /// one already happened since [`WakeSlot::seen`] (then: do not sleep).
    pub fn subscribe(
        &self,
        signal: &WakeSignal<AsyncWaker>,
        wake: Py<PyAny>,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
        on_closed: Option<Py<PyAny>>,
    ) -> Option<u64> {
        let waker = AsyncWaker {
            wake,
            event_loop,
            future,
            on_closed,
        };
        // On `Err` the waker is handed back and dropped here, not run.
        signal.subscribe(self.seen(), waker).ok().map(u64::from)
    }

    /// Removes the waker if still registered and reads the generation for
    /// the next turn.
    pub fn unsubscribe(&self, signal: &WakeSignal<AsyncWaker>, token: Option<u64>) {
        if let Some(token) = token {
            signal.unsubscribe(WakerId::from(token));
        }
        self.mark(signal.generation());
    }
}

/// A scheduler's `logger`: `logging.getLogger("plugin_scheduling.<class
/// name>")` on first use (the reference names it after `type(self).__name__`),
/// or whatever the user assigned.
#[derive(Default)]
pub struct LoggerCell(std::sync::Mutex<Option<Py<PyAny>>>);

impl LoggerCell {
    // A single Option replaced whole: recovering from poisoning is sound.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAny>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get<'py>(&self, owner: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = owner.py();
        if let Some(logger) = &*self.slot() {
            return Ok(logger.bind(py).clone());
        }
        let name = format!("plugin_scheduling.{}", owner.get_type().name()?);
        let logger = py
            .import(intern!(py, "logging"))?
            .getattr(intern!(py, "getLogger"))?
            .call1((name,))?;
        *self.slot() = Some(logger.clone().unbind());
        Ok(logger)
    }

    pub fn set(&self, logger: Option<Py<PyAny>>) {
        *self.slot() = logger;
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.0.try_lock() {
            Ok(slot) => visit.call(&*slot),
            Err(_) => Ok(()),
        }
    }
}

/// Marks a pyclass value as written. A Python subclass instance is tracked by
/// the garbage collector before pyo3 writes the Rust value into it (CPython's
/// `object_new` allocates the instance dict first, which can trigger a
/// collection), and allocation zeroes memory: so a `false` here means "not
/// constructed yet" and `__traverse__` must visit nothing.
pub struct Constructed(std::sync::atomic::AtomicBool);

impl Constructed {
    pub fn new() -> Self {
        Self(std::sync::atomic::AtomicBool::new(true))
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for Constructed {
    fn default() -> Self {
        Self::new()
    }
}

/// An async wait's next step as the driver reads it: the seconds to sleep,
/// or `False` when it gave up.
pub fn async_step(py: Python<'_>, next: Option<f64>) -> Bound<'_, PyAny> {
    match next {
        Some(secs) => pyo3::types::PyFloat::new(py, secs).into_any(),
        None => pyo3::types::PyBool::new(py, false).to_owned().into_any(),
    }
}

//! Wake-ups for waiters when a scheduler releases resources.
//!
//! A waiter reads the [`WakeSignal::generation`] *before* it reads stats; if a
//! release happens after that, the generation has moved and the waiter's
//! sleep ends at once, so no release between "check failed" and "go to sleep"
//! is lost. Blocking waiters use the condition variable; async waiters
//! register a one-shot waker (which, in the binding, resolves a future on its
//! event loop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A one-shot wake-up run (outside the lock) when the generation moves.
/// Any `FnOnce() + Send` closure is one; the binding uses a plain struct so
/// the objects it holds can be shown to Python's garbage collector.
pub trait Waker: Send {
    fn wake(self);
}

impl<F: FnOnce() + Send> Waker for F {
    fn wake(self) {
        self()
    }
}

/// Identifies a registered waker so its owner can remove it (cancellation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakerId(u64);

impl From<WakerId> for u64 {
    fn from(id: WakerId) -> u64 {
        id.0
    }
}

impl From<u64> for WakerId {
    fn from(raw: u64) -> WakerId {
        WakerId(raw)
    }
}

struct State<W> {
    next_id: u64,
    wakers: Vec<(WakerId, W)>,
}

/// Generation counter + condition variable + registered wakers.
pub struct WakeSignal<W = Box<dyn FnOnce() + Send>> {
    /// Reference point for `last_notify_ns`.
    epoch: Instant,
    /// When the last notify happened, in ns since `epoch` (0: never), so a
    /// waiter that did not read the generation up front can still tell
    /// whether a release happened since it started.
    last_notify_ns: AtomicU64,
    /// Written only with `state` locked (so condvar predicates and
    /// `subscribe` see it consistently); read lock-free on the hot path.
    generation: AtomicU64,
    state: Mutex<State<W>>,
    changed: Condvar,
}

impl<W: Waker> Default for WakeSignal<W> {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_notify_ns: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                next_id: 0,
                wakers: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

impl<W: Waker> WakeSignal<W> {
    pub fn new() -> Self {
        Self::default()
    }

    // The state is a counter and a list that every critical section leaves
    // consistent, so a panic elsewhere while holding the lock cannot corrupt
    // it: recovering from poisoning is sound.
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current generation; take it before reading stats.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Something was released: wake every waiter.
    pub fn notify(&self) {
        let wakers = {
            let mut state = self.lock();
            let since_epoch = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_notify_ns
                .store(since_epoch.max(1), Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut state.wakers)
        };
        self.changed.notify_all();
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Whether a notify happened at or after `since`.
    pub fn notified_since(&self, since: Instant) -> bool {
        let last = self.last_notify_ns.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let since_ns = u64::try_from(since.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX);
        last >= since_ns
    }

    /// Blocks up to `timeout` until the generation differs from `seen`.
    /// Returns whether it did.
    pub fn wait_changed(&self, seen: u64, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |_| self.generation() == seen)
            .unwrap_or_else(PoisonError::into_inner);
        drop(state);
        self.generation() != seen
    }

    /// Registers `waker` to run on the next notify, unless the generation has
    /// already moved past `seen`: then the waker is handed back to run now.
    pub fn subscribe(&self, seen: u64, waker: W) -> Result<WakerId, W> {
        let mut state = self.lock();
        if self.generation() != seen {
            return Err(waker);
        }
        let id = WakerId(state.next_id);
        state.next_id = state.next_id.wrapping_add(1);
        state.wakers.push((id, waker));
        Ok(id)
    }

    /// Removes a waker that has not run; no-op if it already ran.
    pub fn unsubscribe(&self, id: WakerId) {
        let removed = {
            let mut state = self.lock();
            state
                .wakers
                .iter()
                .position(|(w, _)| *w == id)
                .map(|pos| state.wakers.swap_remove(pos))
        };
        // Dropped outside the lock: a waker may own objects whose drop is not trivial.
        drop(removed);
    }

    /// Calls `visit` on each registered waker, unless another thread holds
    /// the lock right now (then visits none: for a garbage collector, seeing
    /// fewer references only keeps objects alive longer, never frees early).
    pub fn try_visit_wakers<E>(&self, mut visit: impl FnMut(&W) -> Result<(), E>) -> Result<(), E> {
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        state.wakers.iter().try_for_each(|(_, waker)| visit(waker))
    }

    /// Removes every registered waker without running it (to break
    /// reference cycles); returns them so the caller decides where they drop.
    pub fn take_wakers(&self) -> Vec<W> {
        std::mem::take(&mut self.lock().wakers)
            .into_iter()
            .map(|(_, waker)| waker)
            .collect()
    }

    /// Number of registered wakers (for tests and introspection).
    pub fn pending_wakers(&self) -> usize {
        self.lock().wakers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn notify_wakes_a_blocked_waiter_promptly() {
        let signal: Arc<WakeSignal> = Arc::new(WakeSignal::new());
        let seen = signal.generation();
        let s2 = Arc::clone(&signal);
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let woke = s2.wait_changed(seen, Duration::from_secs(10));
            (woke, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        signal.notify();
        let (woke, waited) = t.join().unwrap_or((false, Duration::MAX));
        assert!(woke);
        assert!(waited < Duration::from_secs(5));
    }

    #[test]
    fn a_release_before_the_wait_is_not_lost() {
        let signal: WakeSignal = WakeSignal::new();
        let seen = signal.generation();
        signal.notify();
        assert!(signal.wait_changed(seen, Duration::from_secs(0)));
        assert!(signal.subscribe(seen, Box::new(|| {})).is_err());
    }

    #[test]
    fn notified_since_tells_releases_after_a_start() {
        let signal: WakeSignal = WakeSignal::new();
        let start = Instant::now();
        assert!(!signal.notified_since(start));
        signal.notify();
        assert!(signal.notified_since(start));
        assert!(!signal.notified_since(Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn wait_times_out_without_notify() {
        let signal: WakeSignal = WakeSignal::new();
        assert!(!signal.wait_changed(signal.generation(), Duration::from_millis(5)));
    }

    #[test]
    fn wakers_run_once_and_unsubscribe_removes() {
        let signal: WakeSignal = WakeSignal::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let seen = signal.generation();
        let kept = signal.subscribe(
            seen,
            Box::new(move || {
                h.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let h = Arc::clone(&hits);
        let removed = signal.subscribe(
            seen,
            Box::new(move || {
                h.fetch_add(100, Ordering::SeqCst);
            }),
        );
        assert!(kept.is_ok());
        if let Ok(id) = removed {
            signal.unsubscribe(id);
        }
        assert_eq!(signal.pending_wakers(), 1);
        signal.notify();
        signal.notify();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(signal.pending_wakers(), 0);
        if let Ok(id) = kept {
            signal.unsubscribe(id); // already ran: harmless
        }
    }
}

#[cfg(test)]
mod visit_tests {
    use super::*;

    #[test]
    fn visit_and_take_see_registered_wakers_only() {
        let signal: WakeSignal = WakeSignal::new();
        let seen = signal.generation();
        assert!(signal.subscribe(seen, Box::new(|| {})).is_ok());
        assert!(signal.subscribe(seen, Box::new(|| {})).is_ok());
        let mut count = 0;
        let visited: Result<(), ()> = signal.try_visit_wakers(|_| {
            count += 1;
            Ok(())
        });
        assert_eq!((visited, count), (Ok(()), 2));
        assert_eq!(signal.take_wakers().len(), 2);
        assert_eq!(signal.pending_wakers(), 0);
    }
}

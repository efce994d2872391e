//! The live machine: host (sysinfo) + GPUs (NVML), cached for `min_refresh`.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::gpu::GpuProbe;
use super::host::HostProbe;
use super::snapshot::{HostReading, Snapshot};

/// Default `min_refresh`: readings younger than this are served from the
/// cache, so many concurrent callers do not hammer NVML and /proc. Short
/// enough that a waiter woken by a release sees fresh memory figures.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_millis(100);

pub struct Monitor {
    min_refresh: Duration,
    /// This process's state; replaced (never freed while borrowed) in a
    /// child after `fork()`. Always a pointer from `Box::into_raw`.
    current: AtomicPtr<State>,
}

/// Everything a `Monitor` mutates, owned by one process. After `fork()`
/// the child must not touch its parent's copy: a thread of the parent may
/// have held either lock (or been half-way through a sysinfo refresh) at
/// the moment of the fork, and that thread does not exist in the child, so
/// the lock would never be released. The child builds a fresh `State`.
struct State {
    pid: u32,
    /// Held while the machine is read (slow), so concurrent callers share
    /// one reading.
    probes: Mutex<Probes>,
    /// Held only to copy an `Arc` in or out (fast): checking for a fresh
    /// reading never waits for a reading in progress.
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

// `AtomicPtr<State>` is `Send + Sync` whatever `State` is: keep the
// compiler checking that sharing a `Monitor` across threads shares a
// `State` soundly.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<State>();
};

struct Probes {
    host: HostProbe,
    gpu: GpuProbe,
}

impl State {
    fn new() -> Result<Self, String> {
        Ok(Self {
            pid: std::process::id(),
            probes: Mutex::new(Probes {
                host: HostProbe::new()?,
                gpu: GpuProbe::new(),
            }),
            cached: Mutex::new(None),
        })
    }

    // Both locks guard values that are replaced whole (a cache entry) or
    // left usable by every reading, so recovering from poisoning is sound.
    fn cache(&self) -> MutexGuard<'_, Option<(Instant, Arc<Snapshot>)>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, min_refresh: Duration) -> Option<Arc<Snapshot>> {
        match &*self.cache() {
            Some((at, snap)) if at.elapsed() < min_refresh => Some(Arc::clone(snap)),
            _ => None,
        }
    }
}

impl Monitor {
    pub fn new(min_refresh: Duration) -> Result<Self, String> {
        Ok(Self {
            min_refresh,
            current: AtomicPtr::new(Box::into_raw(Box::new(State::new()?))),
        })
    }

    pub fn min_refresh(&self) -> Duration {
        self.min_refresh
    }

    /// This process's state, made fresh on first use in a forked child.
    ///
    /// Takes no lock, so it cannot block on a lock inherited held. A state
    /// replaced after a fork is leaked on purpose (once per fork): it may be
    /// locked or inconsistent, and other threads of the child may still hold
    /// a reference to it.
    fn state(&self) -> Result<&State, String> {
        let pid = std::process::id();
        let mut seen = self.current.load(Ordering::Acquire);
        loop {
            // SAFETY: `current` only ever holds pointers from `Box::into_raw`
            // (in `new` and below). A state is freed only in `drop`, which
            // has `&mut self`, so no `&State` borrowed from `&self` is alive
            // then; a state swapped out below is never freed. So `seen` is
            // valid for the lifetime of `&self`.
            let state = unsafe { &*seen };
            if state.pid == pid {
                return Ok(state);
            }
            let fresh = Box::into_raw(Box::new(State::new()?));
            match self
                .current
                .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // The parent's state (`seen`) is leaked: see above.
                // SAFETY: `fresh` came from `Box::into_raw` just above and
                // is now owned by `current` (freed only in `drop`).
                Ok(_) => return Ok(unsafe { &*fresh }),
                Err(actual) => {
                    // Another thread of this child installed its own first.
                    // SAFETY: `fresh` came from `Box::into_raw` above and was
                    // never published, so this is its only owner.
                    drop(unsafe { Box::from_raw(fresh) });
                    seen = actual;
                }
            }
        }
    }

    /// The cached reading if it is younger than `min_refresh`; never waits
    /// for a reading in progress.
    pub fn fresh(&self) -> Option<Arc<Snapshot>> {
        self.state().ok()?.fresh(self.min_refresh)
    }

    /// A reading no older than `min_refresh`; refreshes (blocking: NVML and
    /// /proc) when needed. Concurrent callers wait for one refresh and share it.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, String> {
        let state = self.state()?;
        if let Some(snap) = state.fresh(self.min_refresh) {
            return Ok(snap);
        }
        let mut probes = state.probes.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have refreshed while we waited for the probes.
        if let Some(snap) = state.fresh(self.min_refresh) {
            return Ok(snap);
        }
        let snap = Arc::new(probes.read());
        *state.cache() = Some((Instant::now(), Arc::clone(&snap)));
        Ok(snap)
    }

    /// The host figures only (for a simulated machine over the real host).
    pub fn host_reading(&self) -> Result<HostReading, String> {
        Ok(self.snapshot()?.host)
    }

    /// Forget the cached reading (e.g. right after a plugin freed memory).
    pub fn invalidate(&self) {
        if let Ok(state) = self.state() {
            *state.cache() = None;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let ptr = *self.current.get_mut();
        // SAFETY: `ptr` came from `Box::into_raw` and `&mut self` proves no
        // borrow of it is alive; it is taken out exactly once, here.
        let state = unsafe { Box::from_raw(ptr) };
        if state.pid != std::process::id() {
            // The parent's state, never replaced in this child: it may be
            // locked or half-updated, so it is not dropped (see `state`).
            std::mem::forget(state);
        }
    }
}

impl Probes {
    fn read(&mut self) -> Snapshot {
        let host = self.host.read();
        let (mut gpus, gpu_unavailable) = match self.gpu.read() {
            Ok(gpus) => (gpus, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        // A process on several GPUs is listed once: sysinfo drops a process
        // whose pid it is asked to refresh twice.
        let mut pids: Vec<u32> = gpus
            .iter()
            .flat_map(|g| g.processes.iter().map(|p| p.pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        if !pids.is_empty() {
            let described = self.host.describe_processes(&pids);
            for process in gpus.iter_mut().flat_map(|g| g.processes.iter_mut()) {
                if let Some((_, name, command)) =
                    described.iter().find(|(pid, ..)| *pid == process.pid)
                {
                    process.name.clone_from(name);
                    process.command.clone_from(command);
                }
            }
        }
        Snapshot {
            host,
            gpus,
            gpu_unavailable,
            gpu_source: "nvml",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_cache_within_min_refresh_and_refreshes_after() {
        let Ok(monitor) = Monitor::new(Duration::from_secs(3600)) else {
            return;
        };
        let (Ok(first), Ok(second)) = (monitor.snapshot(), monitor.snapshot()) else {
            return;
        };
        assert!(Arc::ptr_eq(&first, &second));
        assert!(monitor.fresh().is_some());
        monitor.invalidate();
        assert!(monitor.fresh().is_none());
        let Ok(third) = monitor.snapshot() else {
            return;
        };
        assert!(!Arc::ptr_eq(&first, &third));
    }

    #[test]
    fn a_state_inherited_locked_from_another_process_is_replaced_not_waited_for() {
        let Ok(monitor) = Monitor::new(Duration::from_secs(3600)) else {
            return;
        };
        // What a forked child sees: a state owned by another pid, both locks
        // held by a thread that no longer exists (the guards are leaked).
        let inherited = monitor.current.load(Ordering::Acquire);
        // SAFETY: `inherited` is the live state of `monitor`; `&mut` is
        // unique here (no other borrow of the state exists yet).
        let state = unsafe { &mut *inherited };
        state.pid = state.pid.wrapping_add(1);
        std::mem::forget(state.probes.lock());
        std::mem::forget(state.cached.lock());
        assert!(monitor.fresh().is_none());
        let Ok(snap) = monitor.snapshot() else {
            return;
        };
        assert!(snap.host.memory_total_mb > 0.0);
        assert_ne!(monitor.current.load(Ordering::Acquire), inherited);
        assert!(monitor.fresh().is_some());
        // The inherited state is leaked on purpose (its locks are held);
        // the test process leaks it too rather than free a locked mutex.
    }
}

//! The live machine: host (sysinfo) + GPUs (NVML), cached for `min_refresh`.

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
    /// Held while the machine is read (slow), so concurrent callers share
    /// one reading.
    probes: Mutex<Probes>,
    /// Held only to copy an `Arc` in or out (fast): checking for a fresh
    /// reading never waits for a reading in progress.
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

struct Probes {
    host: HostProbe,
    gpu: GpuProbe,
}

impl Monitor {
    pub fn new(min_refresh: Duration) -> Result<Self, String> {
        Ok(Self {
            min_refresh,
            probes: Mutex::new(Probes {
                host: HostProbe::new()?,
                gpu: GpuProbe::new(),
            }),
            cached: Mutex::new(None),
        })
    }

    pub fn min_refresh(&self) -> Duration {
        self.min_refresh
    }

    // Both locks guard values that are replaced whole (a cache entry) or
    // left usable by every reading, so recovering from poisoning is sound.
    fn cache(&self) -> MutexGuard<'_, Option<(Instant, Arc<Snapshot>)>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached reading if it is younger than `min_refresh`; never waits
    /// for a reading in progress.
    pub fn fresh(&self) -> Option<Arc<Snapshot>> {
        match &*self.cache() {
            Some((at, snap)) if at.elapsed() < self.min_refresh => Some(Arc::clone(snap)),
            _ => None,
        }
    }

    /// A reading no older than `min_refresh`; refreshes (blocking: NVML and
    /// /proc) when needed. Concurrent callers wait for one refresh and share it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        if let Some(snap) = self.fresh() {
            return snap;
        }
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have refreshed while we waited for the probes.
        if let Some(snap) = self.fresh() {
            return snap;
        }
        let snap = Arc::new(probes.read());
        *self.cache() = Some((Instant::now(), Arc::clone(&snap)));
        snap
    }

    /// The host figures only (for a simulated machine over the real host).
    pub fn host_reading(&self) -> HostReading {
        self.snapshot().host
    }

    /// Forget the cached reading (e.g. right after a plugin freed memory).
    pub fn invalidate(&self) {
        *self.cache() = None;
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
        let first = monitor.snapshot();
        let second = monitor.snapshot();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(monitor.fresh().is_some());
        monitor.invalidate();
        assert!(monitor.fresh().is_none());
        let third = monitor.snapshot();
        assert!(!Arc::ptr_eq(&first, &third));
    }
}

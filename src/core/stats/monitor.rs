//! The live machine: host (sysinfo) + GPUs (NVML), cached for `min_refresh`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::gpu::GpuProbe;
use super::host::HostProbe;
use super::snapshot::Snapshot;

/// Default `min_refresh`: readings younger than this are served from the
/// cache, so many concurrent callers do not hammer NVML and /proc. Short
/// enough that a waiter woken by a release sees fresh memory figures.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_millis(100);

pub struct Monitor {
    min_refresh: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    host: HostProbe,
    gpu: GpuProbe,
    cached: Option<(Instant, Arc<Snapshot>)>,
}

impl Monitor {
    pub fn new(min_refresh: Duration) -> Result<Self, String> {
        Ok(Self {
            min_refresh,
            inner: Mutex::new(Inner {
                host: HostProbe::new()?,
                gpu: GpuProbe::new(),
                cached: None,
            }),
        })
    }

    pub fn min_refresh(&self) -> Duration {
        self.min_refresh
    }

    // Every critical section leaves `Inner` usable (a cache entry is replaced
    // whole), so recovering from poisoning is sound.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached reading if it is younger than `min_refresh`.
    pub fn fresh(&self) -> Option<Arc<Snapshot>> {
        let inner = self.lock();
        match &inner.cached {
            Some((at, snap)) if at.elapsed() < self.min_refresh => Some(Arc::clone(snap)),
            _ => None,
        }
    }

    /// A reading no older than `min_refresh`; refreshes (blocking: NVML and
    /// /proc) when needed. Concurrent callers wait for one refresh and share it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut inner = self.lock();
        if let Some((at, snap)) = &inner.cached {
            if at.elapsed() < self.min_refresh {
                return Arc::clone(snap);
            }
        }
        let snap = Arc::new(inner.read());
        inner.cached = Some((Instant::now(), Arc::clone(&snap)));
        snap
    }

    /// Forget the cached reading (e.g. right after a plugin freed memory).
    pub fn invalidate(&self) {
        self.lock().cached = None;
    }
}

impl Inner {
    fn read(&mut self) -> Snapshot {
        let host = self.host.read();
        let (mut gpus, gpu_unavailable) = match self.gpu.read() {
            Ok(gpus) => (gpus, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        let pids: Vec<u32> = gpus
            .iter()
            .flat_map(|g| g.processes.iter().map(|p| p.pid))
            .collect();
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

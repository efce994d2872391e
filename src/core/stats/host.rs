//! CPU and RAM from `sysinfo`.

use std::time::{Duration, Instant};

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::snapshot::{HostReading, MB};

/// Reads host figures. CPU percent is measured between readings, like
/// `psutil.cpu_percent(interval=None)`, except that the first reading is
/// never the meaningless `0.0`: it waits until sysinfo's minimum interval
/// (200 ms on Linux) has passed since the probe was created.
pub struct HostProbe {
    system: System,
    cpu_measured_at: Instant,
    cpu_percent: Option<f64>,
}

impl HostProbe {
    pub fn new() -> Result<Self, String> {
        let mut system = System::new().map_err(|e| format!("sysinfo: {e:?}"))?;
        system.refresh_cpu_usage();
        Ok(Self {
            system,
            cpu_measured_at: Instant::now(),
            cpu_percent: None,
        })
    }

    pub fn read(&mut self) -> HostReading {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let since = self.cpu_measured_at.elapsed();
        let min = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
        if self.cpu_percent.is_none() && since < min {
            std::thread::sleep(min.saturating_sub(since));
        }
        if self.cpu_percent.is_none() || since >= min {
            self.system.refresh_cpu_usage();
            self.cpu_measured_at = Instant::now();
            self.cpu_percent = Some(f64::from(self.system.global_cpu_usage()));
        }
        HostReading {
            cpu_percent: self.cpu_percent.unwrap_or(0.0),
            memory_used_mb: self.system.used_memory() as f64 / MB,
            memory_total_mb: self.system.total_memory() as f64 / MB,
            memory_available_mb: self.system.available_memory() as f64 / MB,
        }
    }

    /// Name and command line of the given processes (those visible to us).
    pub fn describe_processes(
        &mut self,
        pids: &[u32],
    ) -> Vec<(u32, Option<String>, Option<String>)> {
        let pids: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_cmd(UpdateKind::OnlyIfNotSet),
        );
        pids.iter()
            .map(|pid| {
                let process = self.system.process(*pid);
                let name = process.map(|p| p.name().to_string_lossy().into_owned());
                let command = process.and_then(|p| {
                    let parts: Vec<String> = p
                        .cmd()
                        .iter()
                        .map(|s| s.to_string_lossy().into_owned())
                        .collect();
                    (!parts.is_empty()).then(|| parts.join(" "))
                });
                (pid.as_u32(), name, command)
            })
            .collect()
    }

    /// How long after the previous CPU measurement a new one is meaningful.
    pub fn cpu_interval() -> Duration {
        sysinfo::MINIMUM_CPU_UPDATE_INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_ram_and_a_real_first_cpu_figure() {
        let Ok(mut probe) = HostProbe::new() else {
            return; // no /proc in this sandbox: nothing to check
        };
        let started = Instant::now();
        let r = probe.read();
        assert!(started.elapsed() >= HostProbe::cpu_interval() / 2);
        assert!(r.memory_total_mb > 0.0);
        assert!(r.memory_available_mb <= r.memory_total_mb);
        assert!((0.0..=100.0).contains(&r.cpu_percent));
        let again = probe.read();
        assert!((0.0..=100.0).contains(&again.cpu_percent));
    }

    #[test]
    fn describes_our_own_process() {
        let Ok(mut probe) = HostProbe::new() else {
            return;
        };
        let me = std::process::id();
        let described = probe.describe_processes(&[me]);
        assert_eq!(described.len(), 1);
        assert_eq!(described[0].0, me);
        assert!(described[0].1.is_some());
    }
}

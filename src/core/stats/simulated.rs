//! A scripted machine with the same reading as the live one: for tests,
//! demos and simulations. Plugins occupy and free memory per device, as
//! loading and unloading a model would; changes can also be scripted in time.

use std::time::Instant;

use super::snapshot::{GpuDevice, HostReading, Snapshot};

/// What a simulated operation refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SimError {
    /// A negative, NaN or infinite amount.
    InvalidAmount {
        field: &'static str,
        value: f64,
    },
    UnknownDevice {
        index: usize,
        count: usize,
    },
    /// Occupying more than is free, as a real allocation would fail.
    OutOfMemory {
        device: Option<usize>,
        requested_mb: f64,
        free_mb: f64,
    },
    /// Freeing more than is occupied.
    FreeMoreThanUsed {
        device: Option<usize>,
        requested_mb: f64,
        used_mb: f64,
    },
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = |d: &Option<usize>| d.map_or("RAM".to_owned(), |i| format!("GPU {i}"));
        match self {
            SimError::InvalidAmount { field, value } => {
                write!(f, "{field} must be a finite number >= 0, got {value}")
            }
            SimError::UnknownDevice { index, count } => {
                write!(f, "device {index} does not exist (the simulated machine has {count} GPUs)")
            }
            SimError::OutOfMemory { device, requested_mb, free_mb } => write!(
                f,
                "simulated out of memory on {}: tried to occupy {requested_mb} MB with {free_mb} MB free",
                place(device)
            ),
            SimError::FreeMoreThanUsed { device, requested_mb, used_mb } => write!(
                f,
                "cannot free {requested_mb} MB on {}: only {used_mb} MB is occupied",
                place(device)
            ),
        }
    }
}

fn amount(field: &'static str, value: f64) -> Result<f64, SimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(SimError::InvalidAmount { field, value })
    }
}

#[derive(Debug, Clone)]
struct Device {
    name: String,
    total_mb: f64,
    used_mb: f64,
    load_percent: f64,
}

/// A scripted change: at `at_s` seconds after creation, the memory in use
/// on `device` (`None`: RAM) becomes `used_mb`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedChange {
    pub at_s: f64,
    pub device: Option<usize>,
    pub used_mb: f64,
}

#[derive(Debug, Clone)]
pub struct SimulatedMachine {
    ram_total_mb: f64,
    ram_used_mb: f64,
    cpu_percent: f64,
    devices: Vec<Device>,
    script: Vec<ScriptedChange>,
    started: Instant,
}

impl SimulatedMachine {
    /// `gpus_total_mb`: one entry per device.
    pub fn new(ram_total_mb: f64, gpus_total_mb: &[f64]) -> Result<Self, SimError> {
        let ram_total_mb = amount("ram_total_mb", ram_total_mb)?;
        let devices = gpus_total_mb
            .iter()
            .map(|&total| {
                Ok(Device {
                    name: "Simulated GPU".into(),
                    total_mb: amount("gpu total_mb", total)?,
                    used_mb: 0.0,
                    load_percent: 0.0,
                })
            })
            .collect::<Result<_, SimError>>()?;
        Ok(Self {
            ram_total_mb,
            ram_used_mb: 0.0,
            cpu_percent: 0.0,
            devices,
            script: Vec::new(),
            started: Instant::now(),
        })
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn device(&mut self, index: usize) -> Result<&mut Device, SimError> {
        let count = self.devices.len();
        self.devices
            .get_mut(index)
            .ok_or(SimError::UnknownDevice { index, count })
    }

    /// (used, total) of a device or of RAM (`None`).
    fn slot(&mut self, device: Option<usize>) -> Result<(&mut f64, f64), SimError> {
        match device {
            Some(index) => {
                let d = self.device(index)?;
                Ok((&mut d.used_mb, d.total_mb))
            }
            None => Ok((&mut self.ram_used_mb, self.ram_total_mb)),
        }
    }

    pub fn occupy(&mut self, device: Option<usize>, mb: f64) -> Result<(), SimError> {
        let mb = amount("mb", mb)?;
        self.apply_script();
        let (used, total) = self.slot(device)?;
        let free = total - *used;
        if mb > free {
            return Err(SimError::OutOfMemory {
                device,
                requested_mb: mb,
                free_mb: free,
            });
        }
        *used += mb;
        Ok(())
    }

    /// Occupy RAM; with a real host, what fits is `real_available_mb` (its
    /// reading, which does not see simulated use) less what is occupied here.
    pub fn occupy_ram(&mut self, mb: f64, real_available_mb: Option<f64>) -> Result<(), SimError> {
        let Some(real) = real_available_mb else {
            return self.occupy(None, mb);
        };
        let mb = amount("mb", mb)?;
        self.apply_script();
        let free = (real - self.ram_used_mb).max(0.0);
        if mb > free {
            return Err(SimError::OutOfMemory {
                device: None,
                requested_mb: mb,
                free_mb: free,
            });
        }
        self.ram_used_mb += mb;
        Ok(())
    }

    pub fn free(&mut self, device: Option<usize>, mb: f64) -> Result<(), SimError> {
        let mb = amount("mb", mb)?;
        self.apply_script();
        let (used, _) = self.slot(device)?;
        if mb > *used {
            return Err(SimError::FreeMoreThanUsed {
                device,
                requested_mb: mb,
                used_mb: *used,
            });
        }
        *used -= mb;
        Ok(())
    }

    pub fn set_load(&mut self, device: usize, percent: f64) -> Result<(), SimError> {
        let percent = amount("load_percent", percent)?;
        self.device(device)?.load_percent = percent.min(100.0);
        Ok(())
    }

    pub fn set_cpu_percent(&mut self, percent: f64) -> Result<(), SimError> {
        self.cpu_percent = amount("cpu_percent", percent)?.min(100.0);
        Ok(())
    }

    /// Adds a scripted change (see [`ScriptedChange`]); validated now.
    pub fn script(&mut self, change: ScriptedChange) -> Result<(), SimError> {
        amount("at_s", change.at_s)?;
        amount("used_mb", change.used_mb)?;
        if let Some(index) = change.device {
            self.device(index)?;
        }
        self.script.push(change);
        self.script.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Ok(())
    }

    fn apply_script(&mut self) {
        let now = self.started.elapsed().as_secs_f64();
        let due = self.script.iter().take_while(|c| c.at_s <= now).count();
        for change in self.script.drain(..due).collect::<Vec<_>>() {
            if let Ok((used, total)) = self.slot(change.device) {
                *used = change.used_mb.min(total);
            }
        }
    }

    /// A reading; `host` replaces the simulated RAM/CPU with real figures
    /// (then only what was occupied here is subtracted from them).
    pub fn snapshot(&mut self, host: Option<HostReading>) -> Snapshot {
        self.apply_script();
        let host = match host {
            Some(real) => HostReading {
                cpu_percent: real.cpu_percent,
                memory_used_mb: real.memory_used_mb + self.ram_used_mb,
                memory_total_mb: real.memory_total_mb,
                memory_available_mb: (real.memory_available_mb - self.ram_used_mb).max(0.0),
            },
            None => HostReading {
                cpu_percent: self.cpu_percent,
                memory_used_mb: self.ram_used_mb,
                memory_total_mb: self.ram_total_mb,
                memory_available_mb: self.ram_total_mb - self.ram_used_mb,
            },
        };
        let gpus = self
            .devices
            .iter()
            .enumerate()
            .map(|(index, d)| GpuDevice {
                index: index as u32,
                uuid: format!("SIM-GPU-{index}"),
                name: d.name.clone(),
                memory_total_mb: d.total_mb,
                memory_free_mb: d.total_mb - d.used_mb,
                memory_used_mb: d.used_mb,
                utilization_gpu_percent: Some(d.load_percent),
                utilization_memory_percent: None,
                temperature_c: None,
                power_w: None,
                processes: Vec::new(),
            })
            .collect();
        Snapshot {
            host,
            gpus,
            gpu_unavailable: None,
            gpu_source: "simulated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> SimulatedMachine {
        match SimulatedMachine::new(64_000.0, &[24_000.0, 8_000.0]) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn occupy_and_free_move_the_figures() {
        let mut m = machine();
        assert_eq!(m.occupy(Some(0), 10_000.0), Ok(()));
        assert_eq!(m.occupy(None, 1_000.0), Ok(()));
        let s = m.snapshot(None);
        assert_eq!(s.gpus[0].memory_free_mb, 14_000.0);
        assert_eq!(s.host.memory_available_mb, 63_000.0);
        assert_eq!(s.system_stats().gpu_free_memory_mb, Some(22_000.0));
        assert_eq!(m.free(Some(0), 10_000.0), Ok(()));
        assert_eq!(m.snapshot(None).gpus[0].memory_used_mb, 0.0);
    }

    #[test]
    fn refuses_what_a_real_machine_would() {
        let mut m = machine();
        assert!(matches!(
            m.occupy(Some(1), 9_000.0),
            Err(SimError::OutOfMemory { .. })
        ));
        assert!(matches!(
            m.free(Some(0), 1.0),
            Err(SimError::FreeMoreThanUsed { .. })
        ));
        assert!(matches!(
            m.occupy(Some(5), 1.0),
            Err(SimError::UnknownDevice { index: 5, count: 2 })
        ));
        assert!(matches!(
            m.occupy(None, -1.0),
            Err(SimError::InvalidAmount { .. })
        ));
        assert!(matches!(
            m.occupy(None, f64::NAN),
            Err(SimError::InvalidAmount { .. })
        ));
        assert!(SimulatedMachine::new(-5.0, &[]).is_err());
    }

    #[test]
    fn scripted_changes_apply_when_due() {
        let mut m = machine();
        let now = ScriptedChange {
            at_s: 0.0,
            device: Some(0),
            used_mb: 5_000.0,
        };
        let later = ScriptedChange {
            at_s: 3600.0,
            device: Some(0),
            used_mb: 0.0,
        };
        assert_eq!(m.script(later), Ok(()));
        assert_eq!(m.script(now), Ok(()));
        assert_eq!(m.snapshot(None).gpus[0].memory_used_mb, 5_000.0);
    }

    #[test]
    fn real_host_figures_less_what_was_occupied() {
        let mut m = machine();
        assert_eq!(m.occupy(None, 500.0), Ok(()));
        let real = HostReading {
            cpu_percent: 5.0,
            memory_used_mb: 1_000.0,
            memory_total_mb: 16_000.0,
            memory_available_mb: 10_000.0,
        };
        let s = m.snapshot(Some(real));
        assert_eq!(s.host.memory_available_mb, 9_500.0);
        assert_eq!(s.host.cpu_percent, 5.0);
    }
}

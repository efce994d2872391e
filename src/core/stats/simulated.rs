//! A scripted machine with the same reading as the live one: for tests,
//! demos and simulations. Plugins occupy and free memory per device, as
//! loading and unloading a model would; changes can also be scripted in time.

use std::time::Instant;

use super::snapshot::{GpuDevice, HostReading, Snapshot, MB};

/// The largest amount accepted, in MB (10^30 MB: far beyond any machine,
/// and small enough that byte counts never overflow).
pub const MAX_MB: f64 = 1e30;

/// Memory is counted in whole bytes (`mb * 2^20`, rounded), so occupying and
/// then freeing the same amounts in any order returns exactly to where it
/// started: float sums would drift (`3300.0000000000005 + 796 - 796` is not
/// `3300.0000000000005`), and a later `free` would be refused.
type Bytes = u128;

fn to_bytes(mb: f64) -> Bytes {
    // `mb` is validated finite, >= 0 and <= MAX_MB, so the product is far
    // inside u128 (the cast saturates in any case).
    (mb * MB).round() as Bytes
}

fn to_mb(bytes: Bytes) -> f64 {
    bytes as f64 / MB
}

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
                write!(f, "{field} must be a finite number >= 0 and <= {MAX_MB:e} MB, got {value:?}")
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
    if value.is_finite() && (0.0..=MAX_MB).contains(&value) {
        Ok(value)
    } else {
        Err(SimError::InvalidAmount { field, value })
    }
}

#[derive(Debug, Clone)]
struct Device {
    name: String,
    total: Bytes,
    used: Bytes,
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
    ram_total: Bytes,
    ram_used: Bytes,
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
                    total: to_bytes(amount("gpu total_mb", total)?),
                    used: 0,
                    load_percent: 0.0,
                })
            })
            .collect::<Result<_, SimError>>()?;
        Ok(Self {
            ram_total: to_bytes(ram_total_mb),
            ram_used: 0,
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
    fn slot(&mut self, device: Option<usize>) -> Result<(&mut Bytes, Bytes), SimError> {
        match device {
            Some(index) => {
                let d = self.device(index)?;
                Ok((&mut d.used, d.total))
            }
            None => Ok((&mut self.ram_used, self.ram_total)),
        }
    }

    pub fn occupy(&mut self, device: Option<usize>, mb: f64) -> Result<(), SimError> {
        let mb = amount("mb", mb)?;
        self.apply_script();
        let (used, total) = self.slot(device)?;
        let free = total.saturating_sub(*used);
        if to_bytes(mb) > free {
            return Err(SimError::OutOfMemory {
                device,
                requested_mb: mb,
                free_mb: to_mb(free),
            });
        }
        *used += to_bytes(mb);
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
        let real = if real.is_finite() {
            to_bytes(real.clamp(0.0, MAX_MB))
        } else {
            0
        };
        let free = real.saturating_sub(self.ram_used);
        if to_bytes(mb) > free {
            return Err(SimError::OutOfMemory {
                device: None,
                requested_mb: mb,
                free_mb: to_mb(free),
            });
        }
        self.ram_used += to_bytes(mb);
        Ok(())
    }

    pub fn free(&mut self, device: Option<usize>, mb: f64) -> Result<(), SimError> {
        let mb = amount("mb", mb)?;
        self.apply_script();
        let (used, _) = self.slot(device)?;
        if to_bytes(mb) > *used {
            return Err(SimError::FreeMoreThanUsed {
                device,
                requested_mb: mb,
                used_mb: to_mb(*used),
            });
        }
        *used -= to_bytes(mb);
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
                *used = to_bytes(change.used_mb).min(total);
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
                memory_used_mb: real.memory_used_mb + to_mb(self.ram_used),
                memory_total_mb: real.memory_total_mb,
                memory_available_mb: (real.memory_available_mb - to_mb(self.ram_used)).max(0.0),
            },
            None => HostReading {
                cpu_percent: self.cpu_percent,
                memory_used_mb: to_mb(self.ram_used),
                memory_total_mb: to_mb(self.ram_total),
                memory_available_mb: to_mb(self.ram_total - self.ram_used),
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
                memory_total_mb: to_mb(d.total),
                memory_free_mb: to_mb(d.total - d.used),
                memory_used_mb: to_mb(d.used),
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
    fn occupy_then_free_in_any_order_returns_exactly_to_the_start() {
        // Float sums drift: 3300.0000000000005 + 796 - 796 != 3300.0000000000005.
        let mut m = machine();
        for (device, ram) in [(Some(0), false), (None, true)] {
            assert_eq!(m.occupy(device, 3_300.000_000_000_000_5), Ok(()));
            assert_eq!(m.occupy(device, 796.0), Ok(()));
            assert_eq!(m.free(device, 796.0), Ok(()));
            assert_eq!(m.free(device, 3_300.000_000_000_000_5), Ok(()));
            let s = m.snapshot(None);
            let used = if ram {
                s.host.memory_used_mb
            } else {
                s.gpus[0].memory_used_mb
            };
            assert_eq!(used, 0.0);
        }
        for _ in 0..1000 {
            assert_eq!(m.occupy(Some(1), 0.1), Ok(()));
        }
        for _ in 0..1000 {
            assert_eq!(m.free(Some(1), 0.1), Ok(()));
        }
        assert_eq!(m.snapshot(None).gpus[1].memory_free_mb, 8_000.0);
        // What is exactly free fits exactly.
        assert_eq!(m.occupy(Some(1), 7_999.9), Ok(()));
        assert_eq!(m.occupy(Some(1), 0.1), Ok(()));
        assert!(matches!(
            m.occupy(Some(1), 1e-3),
            Err(SimError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn amounts_beyond_max_mb_are_refused() {
        let mut m = machine();
        assert!(matches!(
            m.occupy(Some(0), 1e300),
            Err(SimError::InvalidAmount { field: "mb", .. })
        ));
        assert!(SimulatedMachine::new(1e300, &[]).is_err());
        assert!(SimulatedMachine::new(1.0, &[MAX_MB]).is_ok());
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

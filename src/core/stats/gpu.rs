//! NVIDIA GPUs through NVML, loaded at run time.
//!
//! No library, no driver or no device is a normal state ("no GPU"), never an
//! error for the caller. NVML is initialised once per process, lazily, and
//! again in a child after `fork()` (a handle inherited across fork is not
//! valid to use).

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::{Device, Nvml};

use super::snapshot::{GpuDevice, GpuProcess, MB};

/// Environment variable naming the NVML library to load instead of the
/// system's `libnvidia-ml.so.1` (tests use it to exercise the failure path).
pub const NVML_LIBRARY_ENV: &str = "PLUGIN_SCHEDULING_NVML_LIBRARY";

/// What a GPU reading returned: devices, or why there are none.
pub type GpuReading = Result<Vec<GpuDevice>, String>;

pub struct GpuProbe {
    state: State,
}

enum State {
    NotYetTried,
    Ready { nvml: Box<Nvml>, pid: u32 },
    Unavailable { reason: String, pid: u32 },
}

impl Default for GpuProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuProbe {
    pub fn new() -> Self {
        Self {
            state: State::NotYetTried,
        }
    }

    fn ensure_initialised(&mut self) {
        let pid = std::process::id();
        let stale = match &self.state {
            State::NotYetTried => true,
            State::Ready { pid: p, .. } | State::Unavailable { pid: p, .. } => *p != pid,
        };
        if !stale {
            return;
        }
        if let State::Ready { nvml, .. } = std::mem::replace(&mut self.state, State::NotYetTried) {
            // Inherited from the parent across fork: calling nvmlShutdown here
            // would act on the parent's driver state. Leak it instead.
            std::mem::forget(nvml);
        }
        self.state = match init() {
            Ok(nvml) => State::Ready {
                nvml: Box::new(nvml),
                pid,
            },
            Err(reason) => State::Unavailable { reason, pid },
        };
    }

    /// Reads every device. Per-device figures a driver does not support
    /// (temperature, power, …) are `None`, not errors.
    pub fn read(&mut self) -> GpuReading {
        self.ensure_initialised();
        match &self.state {
            State::Ready { nvml, .. } => read_devices(nvml),
            State::Unavailable { reason, .. } => Err(reason.clone()),
            State::NotYetTried => Err("NVML not initialised".into()),
        }
    }
}

impl Drop for GpuProbe {
    fn drop(&mut self) {
        if let State::Ready { nvml, pid } = std::mem::replace(&mut self.state, State::NotYetTried) {
            if pid != std::process::id() {
                // Inherited across fork and never re-initialised here: an
                // nvmlShutdown from this process would act on the parent's
                // driver state. Leak it instead.
                std::mem::forget(nvml);
            }
        }
    }
}

fn init() -> Result<Nvml, String> {
    let result = match std::env::var_os(NVML_LIBRARY_ENV) {
        Some(path) => Nvml::builder().lib_path(&path).init(),
        None => Nvml::init(),
    };
    result.map_err(|e| format!("NVML unavailable: {e}"))
}

fn read_devices(nvml: &Nvml) -> GpuReading {
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    let mut devices = Vec::new();
    for index in 0..count {
        // A device that cannot be opened (lost, no permission) is skipped, not fatal.
        if let Ok(device) = nvml.device_by_index(index) {
            if let Some(read) = read_device(index, &device) {
                devices.push(read);
            }
        }
    }
    Ok(devices)
}

fn read_device(index: u32, device: &Device<'_>) -> Option<GpuDevice> {
    let memory = device.memory_info().ok()?;
    let utilization = device.utilization_rates().ok();
    let processes = device
        .running_compute_processes()
        .map(|list| {
            list.into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_gpu_mb: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes as f64 / MB),
                        UsedGpuMemory::Unavailable => None,
                    },
                    name: None,
                    command: None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(GpuDevice {
        index,
        uuid: device.uuid().unwrap_or_default(),
        name: device.name().unwrap_or_default(),
        memory_total_mb: memory.total as f64 / MB,
        memory_free_mb: memory.free as f64 / MB,
        memory_used_mb: memory.used as f64 / MB,
        utilization_gpu_percent: utilization.as_ref().map(|u| f64::from(u.gpu)),
        utilization_memory_percent: utilization.as_ref().map(|u| f64::from(u.memory)),
        temperature_c: device
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .map(f64::from),
        power_w: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_no_gpu_not_an_error() {
        // Set for this process only; no other test reads it.
        std::env::set_var(NVML_LIBRARY_ENV, "/nonexistent/libnvidia-ml.so.1");
        let mut probe = GpuProbe::new();
        let reading = probe.read();
        std::env::remove_var(NVML_LIBRARY_ENV);
        match reading {
            Err(reason) => assert!(reason.contains("NVML unavailable"), "{reason}"),
            Ok(devices) => panic!("expected no GPU, got {devices:?}"),
        }
        // Stays unavailable (no retry per reading) in the same process.
        assert!(probe.read().is_err());
    }
}

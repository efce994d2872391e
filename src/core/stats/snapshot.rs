//! One reading of the machine, and its cjm `SystemStats` view.

use serde::Serialize;

/// Bytes in the MB the cjm monitors report (MiB, `1024**2`).
pub const MB: f64 = 1024.0 * 1024.0;

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` when the driver cannot attribute memory (e.g. under WDDM).
    pub used_gpu_mb: Option<f64>,
    /// Process name from the OS, when it is visible to us.
    pub name: Option<String>,
    /// Command line, when visible.
    pub command: Option<String>,
}

/// One GPU device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mb: f64,
    pub memory_free_mb: f64,
    pub memory_used_mb: f64,
    pub utilization_gpu_percent: Option<f64>,
    pub utilization_memory_percent: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub processes: Vec<GpuProcess>,
}

/// Host figures (CPU and RAM).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HostReading {
    /// Since the previous reading (like `psutil.cpu_percent(interval=None)`).
    pub cpu_percent: f64,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
    pub memory_available_mb: f64,
}

/// A full reading: host, GPUs, and why there are no GPUs if there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub host: HostReading,
    pub gpus: Vec<GpuDevice>,
    /// Why the GPU list is empty, when it is for a reason (no driver, …).
    pub gpu_unavailable: Option<String>,
    /// Where the GPU figures come from: `"nvml"` or `"simulated"`.
    pub gpu_source: &'static str,
}

/// The cjm `SystemStats` keys, GPU totals summed over devices and load the
/// maximum, as the cjm system-monitor plugins compute them; GPU figures are
/// `None` without a GPU (the contract of this package, see README).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemStats<'a> {
    pub cpu_percent: f64,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
    pub memory_available_mb: f64,
    pub gpu_type: &'static str,
    pub gpu_free_memory_mb: Option<f64>,
    pub gpu_total_memory_mb: Option<f64>,
    pub gpu_used_memory_mb: Option<f64>,
    pub gpu_load_percent: Option<f64>,
    pub details: Details<'a>,
}

/// `details`: the per-device breakdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Details<'a> {
    pub gpus: &'a [GpuDevice],
    pub gpu_source: &'static str,
    pub gpu_unavailable: Option<&'a str>,
}

impl Snapshot {
    pub fn system_stats(&self) -> SystemStats<'_> {
        let has_gpu = !self.gpus.is_empty();
        let sum = |f: fn(&GpuDevice) -> f64| has_gpu.then(|| self.gpus.iter().map(f).sum());
        let load = has_gpu.then(|| {
            self.gpus
                .iter()
                .filter_map(|g| g.utilization_gpu_percent)
                .fold(0.0, f64::max)
        });
        SystemStats {
            cpu_percent: self.host.cpu_percent,
            memory_used_mb: self.host.memory_used_mb,
            memory_total_mb: self.host.memory_total_mb,
            memory_available_mb: self.host.memory_available_mb,
            gpu_type: if has_gpu { "NVIDIA" } else { "None" },
            gpu_free_memory_mb: sum(|g| g.memory_free_mb),
            gpu_total_memory_mb: sum(|g| g.memory_total_mb),
            gpu_used_memory_mb: sum(|g| g.memory_used_mb),
            gpu_load_percent: load,
            details: Details {
                gpus: &self.gpus,
                gpu_source: self.gpu_source,
                gpu_unavailable: self.gpu_unavailable.as_deref(),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn device(index: u32, total: f64, used: f64, load: Option<f64>) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: "Test GPU".into(),
            memory_total_mb: total,
            memory_free_mb: total - used,
            memory_used_mb: used,
            utilization_gpu_percent: load,
            utilization_memory_percent: None,
            temperature_c: None,
            power_w: None,
            processes: Vec::new(),
        }
    }

    fn host() -> HostReading {
        HostReading {
            cpu_percent: 12.5,
            memory_used_mb: 1000.0,
            memory_total_mb: 4000.0,
            memory_available_mb: 3000.0,
        }
    }

    #[test]
    fn totals_are_summed_and_load_is_the_max() {
        let snap = Snapshot {
            host: host(),
            gpus: vec![
                device(0, 8000.0, 1000.0, Some(30.0)),
                device(1, 16000.0, 0.0, Some(70.0)),
            ],
            gpu_unavailable: None,
            gpu_source: "nvml",
        };
        let stats = snap.system_stats();
        assert_eq!(stats.gpu_type, "NVIDIA");
        assert_eq!(stats.gpu_total_memory_mb, Some(24000.0));
        assert_eq!(stats.gpu_free_memory_mb, Some(23000.0));
        assert_eq!(stats.gpu_used_memory_mb, Some(1000.0));
        assert_eq!(stats.gpu_load_percent, Some(70.0));
    }

    #[test]
    fn no_gpu_means_none_figures() {
        let snap = Snapshot {
            host: host(),
            gpus: vec![],
            gpu_unavailable: Some("no driver".into()),
            gpu_source: "nvml",
        };
        let stats = snap.system_stats();
        assert_eq!(stats.gpu_type, "None");
        assert_eq!(stats.gpu_free_memory_mb, None);
        assert_eq!(stats.gpu_load_percent, None);
        assert_eq!(stats.details.gpu_unavailable, Some("no driver"));
    }
}

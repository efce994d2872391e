//! Machine stats: live (sysinfo + NVML) and simulated, in one reading type.

pub mod gpu;
pub mod history;
pub mod host;
pub mod monitor;
pub mod simulated;
pub mod snapshot;

//! The reference's printed and logged lines, word for word, in one place.
//!
//! Values are passed in already formatted (by Python's `format()`), so a float
//! shows as `4096.0` exactly as the reference's f-strings show it.

use super::check::Resource;

/// `SafetyScheduler`, GPU plugin, no GPU figure in the stats.
pub const NO_GPU_STATS: &str = "[Scheduler] Warning: No GPU stats available.";

/// `SafetyScheduler` blocked line.
pub fn blocked(plugin: &str, resource: Resource, needed: &str, available: &str) -> String {
    format!(
        "[Scheduler] Blocked {plugin}: Needs {needed}MB {}, has {available}MB",
        resource.label()
    )
}

/// How a `QueueScheduler` wait sleeps, which words its log line uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// `allocate`: "Waiting".
    Blocking,
    /// `allocate_async`: "Yielding".
    Async,
}

/// `QueueScheduler` info line before each sleep.
pub fn busy(kind: WaitKind, poll_interval: &str) -> String {
    let verb = match kind {
        WaitKind::Blocking => "Waiting",
        WaitKind::Async => "Yielding",
    };
    format!("Resources busy. {verb} {poll_interval}s...")
}

/// `QueueScheduler` error line when the wait gives up.
pub fn timed_out(plugin: &str) -> String {
    format!("Timeout waiting for resources for {plugin}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_the_reference() {
        assert_eq!(
            blocked("whisper", Resource::GpuVram, "4096", "2048.0"),
            "[Scheduler] Blocked whisper: Needs 4096MB VRAM, has 2048.0MB"
        );
        assert_eq!(
            blocked("w", Resource::SystemRam, "1", "0"),
            "[Scheduler] Blocked w: Needs 1MB RAM, has 0MB"
        );
        assert_eq!(
            busy(WaitKind::Blocking, "2.0"),
            "Resources busy. Waiting 2.0s..."
        );
        assert_eq!(busy(WaitKind::Async, "5"), "Resources busy. Yielding 5s...");
        assert_eq!(timed_out("w"), "Timeout waiting for resources for w");
    }
}

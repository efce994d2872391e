//! Time for the scheduling core: seconds as `f64` from an injectable clock,
//! so tests (Rust and Python) and the simulator drive time instead of
//! sleeping. Live schedulers use [`SystemClock`] (monotonic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A monotonic source of seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> f64;
}

/// Monotonic seconds since the first use in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        epoch().elapsed().as_secs_f64()
    }
}

/// Seconds since the Unix epoch that the processes of a host agree on (a
/// shared ledger stamps grants and waiters with it): the wall clock read
/// once per process, then advanced by the monotonic clock, so it never runs
/// backwards within a process.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

fn wall_anchor() -> (Instant, f64) {
    static ANCHOR: OnceLock<(Instant, f64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (Instant::now(), wall)
    })
}

impl Clock for WallClock {
    fn now(&self) -> f64 {
        let (at, wall) = wall_anchor();
        wall + at.elapsed().as_secs_f64()
    }
}

/// A clock that moves only when told: tests and simulations.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    bits: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start: f64) -> Self {
        Self {
            bits: Arc::new(AtomicU64::new(start.to_bits())),
        }
    }

    /// Moves the clock forward by `seconds` (negative or NaN steps are ignored:
    /// time never runs backwards).
    pub fn advance(&self, seconds: f64) -> f64 {
        let mut current = self.bits.load(Ordering::Acquire);
        loop {
            let now = f64::from_bits(current);
            let next = if seconds > 0.0 { now + seconds } else { now };
            match self.bits.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// Sets the time; earlier than now is refused (returns `false`).
    pub fn set(&self, t: f64) -> bool {
        let now = self.now();
        if t.is_nan() || t < now {
            return false;
        }
        self.advance(t - now);
        true
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new(10.0);
        assert_eq!(c.now(), 10.0);
        assert_eq!(c.advance(2.5), 12.5);
        assert_eq!(c.advance(-1.0), 12.5);
        assert!(!c.set(3.0));
        assert!(c.set(20.0));
        assert_eq!(c.clone().now(), 20.0);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
    }
}

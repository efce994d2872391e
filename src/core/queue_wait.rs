//! The `QueueScheduler` wait loop as a state machine, shared by the blocking
//! driver (Rust, GIL released) and the async driver (a thin Python coroutine).
//!
//! Mirrors the reference: check; if it fails and more than `timeout` seconds
//! have passed since the start, give up; otherwise sleep `poll_interval` (here:
//! or until a release wakes us) and check again. The clock is monotonic.

use std::time::Instant;

/// What to do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Admit,
    GiveUp,
    Sleep,
}

/// One wait, from its first check.
#[derive(Debug, Clone, Copy)]
pub struct QueueWait {
    started: Instant,
}

impl QueueWait {
    pub fn start() -> Self {
        Self::start_at(Instant::now())
    }

    pub fn start_at(started: Instant) -> Self {
        Self { started }
    }

    /// `timeout` is read on every step, as the reference reads `self.timeout`.
    pub fn step(&self, admitted: bool, timeout_s: f64, now: Instant) -> Step {
        if admitted {
            return Step::Admit;
        }
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        if elapsed > timeout_s {
            Step::GiveUp
        } else {
            Step::Sleep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_gives_up_or_sleeps() {
        let t0 = Instant::now();
        let w = QueueWait::start_at(t0);
        assert_eq!(w.step(true, 0.0, t0 + Duration::from_secs(99)), Step::Admit);
        assert_eq!(
            w.step(false, 1.0, t0 + Duration::from_millis(500)),
            Step::Sleep
        );
        assert_eq!(
            w.step(false, 1.0, t0 + Duration::from_millis(1001)),
            Step::GiveUp
        );
        assert_eq!(
            w.step(false, f64::INFINITY, t0 + Duration::from_secs(1 << 20)),
            Step::Sleep
        );
    }

    #[test]
    fn exactly_at_timeout_still_sleeps_like_the_reference() {
        let t0 = Instant::now();
        let w = QueueWait::start_at(t0);
        assert_eq!(w.step(false, 1.0, t0 + Duration::from_secs(1)), Step::Sleep);
        assert_eq!(w.step(false, 0.0, t0), Step::Sleep);
    }
}

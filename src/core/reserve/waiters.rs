//! Who waits for a reservation, and in what order they may try.
//!
//! Only the waiter the [`Policy`] picks reads stats and tries to reserve;
//! the others sleep until the pick changes. FIFO (the default) cannot
//! starve anyone: a waiter's turn comes once everyone ahead has been served
//! or has left. Priority, fair-share and backfill policies plug in here.

use std::time::Instant;

use super::ledger::Need;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

#[derive(Debug, Clone, PartialEq)]
pub struct Waiter {
    pub id: WaiterId,
    pub plugin: String,
    pub need: Need,
    pub arrived: Instant,
}

/// Orders the waiters: which one may try to reserve now.
pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    fn pick(&self, waiters: &[Waiter], now: Instant) -> Option<WaiterId>;
}

/// First come, first served.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fifo;

impl Policy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn pick(&self, waiters: &[Waiter], _now: Instant) -> Option<WaiterId> {
        waiters
            .iter()
            .min_by_key(|w| (w.arrived, w.id))
            .map(|w| w.id)
    }
}

#[derive(Debug, Default)]
pub struct WaitQueue {
    waiters: Vec<Waiter>,
    next_id: u64,
}

impl WaitQueue {
    /// Adds a waiter who first asked at `arrived`.
    pub fn join(&mut self, plugin: &str, need: Need, now: Instant) -> WaiterId {
        let id = WaiterId(self.next_id);
        self.next_id += 1;
        // Kept in arrival order (a waiter may join late, stamped with the
        // time it first asked), so listing order is FIFO order.
        let at = self
            .waiters
            .partition_point(|w| (w.arrived, w.id) <= (now, id));
        self.waiters.insert(
            at,
            Waiter {
                id,
                plugin: plugin.to_owned(),
                need,
                arrived: now,
            },
        );
        id
    }

    /// Removes a waiter; `false` if it was not there (already left).
    pub fn leave(&mut self, id: WaiterId) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| w.id != id);
        self.waiters.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn waiters(&self) -> &[Waiter] {
        &self.waiters
    }

    pub fn is_turn_of(&self, id: WaiterId, policy: &dyn Policy, now: Instant) -> bool {
        policy.pick(&self.waiters, now) == Some(id)
    }

    /// 0-based place of `id` in the policy's order (FIFO: arrival order).
    pub fn position(&self, id: WaiterId) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NEED: Need = Need {
        gpu_count: 1,
        vram_mb: 1.0,
        ram_mb: 0.0,
    };

    #[test]
    fn fifo_serves_in_arrival_order_and_skips_leavers() {
        let mut q = WaitQueue::default();
        let t0 = Instant::now();
        let a = q.join("a", NEED, t0);
        let b = q.join("b", NEED, t0 + Duration::from_millis(1));
        let c = q.join("c", NEED, t0 + Duration::from_millis(2));
        assert!(q.is_turn_of(a, &Fifo, t0));
        assert!(!q.is_turn_of(b, &Fifo, t0));
        assert!(q.leave(a));
        assert!(!q.leave(a));
        assert!(q.is_turn_of(b, &Fifo, t0));
        assert_eq!(q.position(c), Some(1));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_late_joiner_keeps_its_arrival_place() {
        let mut q = WaitQueue::default();
        let t0 = Instant::now();
        let late = q.join("b", NEED, t0 + Duration::from_millis(5));
        let early = q.join("a", NEED, t0);
        assert_eq!(q.position(early), Some(0));
        assert_eq!(q.position(late), Some(1));
        assert_eq!(q.waiters()[0].plugin, "a");
        assert!(q.is_turn_of(early, &Fifo, t0));
    }
}

//! Reservations: per-device and per-pool admission that never double-books,
//! and the queue that owns the ledger, the waiters and the policy.

pub mod ledger;
pub mod peaks;
pub mod per_process;
pub mod queue;
pub mod shared;
pub use shared::wake as shared_wake;

//! Reservations: per-device admission that never double-books.

pub mod ledger;
pub mod peaks;
pub mod waiters;

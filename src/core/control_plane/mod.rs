//! Seed 002's batch API (an LLM serving control plane's strategies): place a
//! batch of pending requests on serving instances with one of five
//! strategies — FIFO, Priority, SLO-aware, cost-optimised, adaptive.
//!
//! [`types`] holds the plain data read from Python once per call;
//! [`strategies`] the ordering and placement rules.

pub mod strategies;
pub mod types;

pub use strategies::{
    adaptive_choice, prioritize, schedule, AdaptiveConfig, CostConfig, Order, Outcome, SloConfig,
    Strategy,
};
pub use types::{
    check_count, check_number, AdaptiveCause, Decision, FieldError, Instance, Kind, ModelMatch,
    Parallelism, Priority, Reason, Request,
};

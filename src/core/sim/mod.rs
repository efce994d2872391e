//! Trace-driven simulation: replay a workload on a simulated cluster in
//! virtual time under any [`crate::policy::Policy`], through the same
//! admission pass ([`crate::policy::admit::admit`]) and policy code that
//! live scheduling runs, and judge it by the usual metrics.
//!
//! * [`trace`]: CSV / JSON-lines traces, column mapping, row errors.
//! * [`cluster`]: a flat GPU pool or nodes of GPUs (VRAM, RAM, cost) as a
//!   `Placement` and `Plan`.
//! * [`queue`]: pending jobs in policy order with skip summaries.
//! * [`engine`]: the event loop ([`simulate`]).
//! * [`metrics`]: JCT, wait, slowdown, utilization, fairness, SLOs.
//! * [`workload`]: synthetic (Gavel-like) workloads.

pub mod cluster;
pub mod engine;
pub mod metrics;
pub mod queue;
pub mod trace;
pub mod workload;

pub use cluster::ClusterSpec;
pub use engine::{simulate, SimOptions, SimResult};
pub use metrics::{JobOutcome, Metrics, TimelinePoint, METRIC_NAMES};
pub use trace::{Columns, TraceJob};

#[cfg(test)]
mod tests;

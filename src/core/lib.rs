//! Plain-Rust scheduling core: no pyo3 here, so it is tested with `cargo test`
//! and reusable from any front end.

pub mod amount;
pub mod check;
pub mod clock;
pub mod control_plane;
pub mod error;
pub mod jobs;
pub mod messages;
pub mod paths;
pub mod policy;
pub mod queue_wait;
pub mod quota;
pub mod reserve;
pub mod sim;
pub mod stats;
pub mod wake;

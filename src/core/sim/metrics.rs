//! What a simulation is judged by (the numbers papers and operators use).
//!
//! * JCT (job completion time) = end − submit; wait = time spent waiting
//!   (before the first start and after each preemption).
//! * Slowdown = JCT / max(duration, 1 s), at least 1 (bounded slowdown,
//!   τ = 1 s, so zero-length jobs do not divide by zero).
//! * Percentiles interpolate linearly between order statistics (numpy's
//!   default).
//! * Makespan = last end − first submission; GPU utilization = ∫ busy GPUs
//!   dt / (total GPUs × makespan), a busy GPU being one a job asked for.
//! * Jain's fairness index over users of their mean slowdown:
//!   (Σx)² / (n·Σx²), 1 when every user is slowed down alike.
//! * SLO attainment = share of jobs with a deadline that ended by it.

use super::cluster::ClusterSpec;
use super::trace::TraceJob;

/// How one job went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobOutcome {
    /// First start.
    pub start: f64,
    pub end: f64,
    pub wait: f64,
    /// Seconds run (= duration once done).
    pub ran: f64,
    pub preemptions: u32,
    /// Node cost (0 without costs).
    pub cost: f64,
}

impl JobOutcome {
    pub fn jct(&self, job: &TraceJob) -> f64 {
        self.end - job.submit_time
    }

    pub fn slowdown(&self, job: &TraceJob) -> f64 {
        (self.jct(job) / job.duration.max(1.0)).max(1.0)
    }

    /// Whether the job ended by its deadline (`None` without one).
    pub fn deadline_met(&self, job: &TraceJob) -> Option<bool> {
        job.deadline.map(|d| self.end <= job.submit_time + d)
    }
}

/// Queue length and busy GPUs from `time` until the next point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelinePoint {
    pub time: f64,
    pub queue_length: u32,
    pub busy_gpus: u32,
}

/// One policy's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub jobs: usize,
    pub avg_jct_s: f64,
    pub p50_jct_s: f64,
    pub p95_jct_s: f64,
    pub avg_wait_s: f64,
    pub p95_wait_s: f64,
    pub avg_slowdown: f64,
    pub makespan_s: f64,
    pub gpu_utilization: f64,
    pub jain_fairness: f64,
    /// `None` when no job has a deadline.
    pub slo_attainment: Option<f64>,
    pub preemptions: u64,
    /// `None` without node costs.
    pub cost: Option<f64>,
}

/// Metric names in report order (the CLI's columns, the JSON keys).
pub const METRIC_NAMES: [&str; 13] = [
    "jobs",
    "avg_jct_s",
    "p50_jct_s",
    "p95_jct_s",
    "avg_wait_s",
    "p95_wait_s",
    "avg_slowdown",
    "makespan_s",
    "gpu_utilization",
    "jain_fairness",
    "slo_attainment",
    "preemptions",
    "cost",
];

/// The `q` quantile (0–1) of `v`, interpolating linearly (sorts `v`).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    let rank = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Jain's index of `x` (1 for no or one value, or all zero).
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || sq == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * sq)
    }
}

pub fn compute(
    trace: &[TraceJob],
    outcomes: &[JobOutcome],
    spec: &ClusterSpec,
    busy_area: f64,
    preemptions: u64,
) -> Metrics {
    let mut jct: Vec<f64> = trace.iter().zip(outcomes).map(|(t, o)| o.jct(t)).collect();
    let mut wait: Vec<f64> = outcomes.iter().map(|o| o.wait).collect();
    let slow: Vec<f64> = trace
        .iter()
        .zip(outcomes)
        .map(|(t, o)| o.slowdown(t))
        .collect();
    let first = trace
        .iter()
        .map(|t| t.submit_time)
        .fold(f64::INFINITY, f64::min);
    let last = outcomes
        .iter()
        .map(|o| o.end)
        .fold(f64::NEG_INFINITY, f64::max);
    let makespan = if trace.is_empty() {
        0.0
    } else {
        (last - first).max(0.0)
    };
    let total = f64::from(spec.total_gpus());
    let gpu_utilization = if makespan > 0.0 {
        busy_area / (total * makespan)
    } else {
        0.0
    };
    // Ordered, so the sum (and the index) does not depend on hash order.
    let mut per_user: std::collections::BTreeMap<&str, (f64, u32)> =
        std::collections::BTreeMap::new();
    for (t, s) in trace.iter().zip(&slow) {
        let e = per_user.entry(t.user.as_deref().unwrap_or("")).or_default();
        e.0 += s;
        e.1 += 1;
    }
    let user_means: Vec<f64> = per_user.values().map(|(s, n)| s / f64::from(*n)).collect();
    let met: Vec<bool> = trace
        .iter()
        .zip(outcomes)
        .filter_map(|(t, o)| o.deadline_met(t))
        .collect();
    let slo_attainment =
        (!met.is_empty()).then(|| met.iter().filter(|m| **m).count() as f64 / met.len() as f64);
    Metrics {
        jobs: trace.len(),
        avg_jct_s: mean(&jct),
        p50_jct_s: percentile(&mut jct, 0.5),
        p95_jct_s: percentile(&mut jct, 0.95),
        avg_wait_s: mean(&wait),
        p95_wait_s: percentile(&mut wait, 0.95),
        avg_slowdown: mean(&slow),
        makespan_s: makespan,
        gpu_utilization,
        jain_fairness: jain(&user_means),
        slo_attainment,
        preemptions,
        cost: spec
            .has_cost()
            .then(|| outcomes.iter().map(|o| o.cost).sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 0.5), 2.5);
        // rank 0.95 × 3 = 2.85: 3 + 0.85 × (4 − 3)
        assert!((percentile(&mut v, 0.95) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn jain_index() {
        assert_eq!(jain(&[2.0, 2.0, 2.0]), 1.0);
        // (1 + 3)² / (2 × (1 + 9)) = 0.8
        assert!((jain(&[1.0, 3.0]) - 0.8).abs() < 1e-12);
        assert_eq!(jain(&[]), 1.0);
    }
}

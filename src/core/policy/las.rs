//! Discretized two-dimensional least-attained-service (Tiresias, NSDI'19).
//!
//! A job's attained service is GPUs × seconds it has run (both dimensions
//! of "2D"). Queues are bands of attained service cut at `thresholds`
//! (GPU-seconds, ascending): queue 0 holds jobs below the first threshold,
//! queue 1 those between the first and second, and so on. A lower queue
//! goes first; within a queue, arrival order (the paper's FIFO). The policy
//! is duration-agnostic (estimates are never read) and preemptive: a
//! waiting job may stop running jobs of a strictly higher queue
//! ([`Policy::should_preempt`]); a preempted job resumes where it stopped.
//!
//! The executor tells the policy how much service each job has attained
//! ([`Policy::on_service`]) when it is preempted and whenever a running job
//! crosses a threshold ([`Policy::service_thresholds`]). A waiting job's
//! service does not change while it waits, so keys change only for jobs
//! not waiting and the order is kept sorted (no epoch, not time varying).

use std::collections::HashMap;

use super::preempt::victims;
use super::{Admission, Ctx, JobInfo, Policy, RunningJob};
use crate::error::{Error, Result};

/// Tiresias' discretized 2D-LAS.
#[derive(Debug, Clone)]
pub struct Las {
    thresholds: Vec<f64>,
    /// job id → attained GPU-seconds (absent: none yet).
    attained: HashMap<u64, f64>,
}

impl Default for Las {
    /// Two queues split at one GPU-hour (3,600 GPU-seconds).
    fn default() -> Self {
        Self {
            thresholds: vec![3600.0],
            attained: HashMap::new(),
        }
    }
}

impl Las {
    /// LAS with the given queue thresholds (GPU-seconds, finite, positive,
    /// strictly ascending; empty = one queue, i.e. FIFO).
    pub fn new(thresholds: Vec<f64>) -> Result<Self> {
        for (i, t) in thresholds.iter().enumerate() {
            if !(t.is_finite() && *t > 0.0) {
                return Err(Error::value(
                    "las_thresholds",
                    format!("must be finite positive GPU-seconds, got {t} at position {i}"),
                ));
            }
            if i > 0 && thresholds[i - 1] >= *t {
                return Err(Error::value(
                    "las_thresholds",
                    format!("must be strictly ascending, got {thresholds:?}"),
                ));
            }
        }
        Ok(Self {
            thresholds,
            attained: HashMap::new(),
        })
    }

    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    /// GPU-seconds `job` has attained (as last reported).
    pub fn attained(&self, id: u64) -> f64 {
        self.attained.get(&id).copied().unwrap_or(0.0)
    }

    /// The queue (0 = highest priority) for `gpu_s` of attained service.
    pub fn queue_of(&self, gpu_s: f64) -> usize {
        self.thresholds.partition_point(|&t| t <= gpu_s)
    }
}

impl Policy for Las {
    fn name(&self) -> &str {
        "las"
    }
    fn admission(&self) -> Admission {
        // Work conserving: whoever fits goes, in queue order.
        Admission::BestEffort
    }
    fn key(&self, job: &JobInfo, _ctx: &Ctx) -> f64 {
        self.queue_of(self.attained(job.id)) as f64
    }
    fn service_thresholds(&self) -> &[f64] {
        &self.thresholds
    }
    fn on_service(&mut self, job: &JobInfo, gpu_s: f64, _now: f64) {
        if gpu_s.is_finite() && gpu_s >= 0.0 {
            self.attained.insert(job.id, gpu_s);
        }
    }
    fn on_finish(&mut self, job: &JobInfo, _ran_s: f64, _now: f64) {
        self.attained.remove(&job.id);
    }
    fn describe(&self, job: &JobInfo, _ctx: &Ctx) -> String {
        let a = self.attained(job.id);
        format!(
            "queue {} of {} ({a:.0} GPU-s attained)",
            self.queue_of(a),
            self.thresholds.len() + 1
        )
    }
    fn should_preempt(&self, running: &[RunningJob], new: &JobInfo, needed: f64) -> Vec<u64> {
        let mine = self.queue_of(self.attained(new.id));
        victims(running, needed, |r| {
            let theirs = self.queue_of(self.attained(r.job.id));
            // The highest queue (least important) is stopped first.
            (theirs > mine).then_some(-(theirs as f64))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_by_attained_service_and_preempts_only_lower_queues() {
        let mut las = Las::new(vec![100.0, 1000.0]).expect("thresholds");
        assert_eq!(las.queue_of(0.0), 0);
        assert_eq!(las.queue_of(99.9), 0);
        assert_eq!(las.queue_of(100.0), 1);
        assert_eq!(las.queue_of(5000.0), 2);
        let old = JobInfo::new(1, "a", 0.0);
        let new = JobInfo::new(2, "b", 10.0);
        las.on_service(&old, 400.0, 10.0);
        let ctx = Ctx { now: 10.0 };
        assert!(las.key(&new, &ctx) < las.key(&old, &ctx));
        let running = [RunningJob {
            job: old.clone(),
            started: 0.0,
            holds: 4.0,
        }];
        assert_eq!(las.should_preempt(&running, &new, 2.0), vec![1]);
        // Same queue: no preemption.
        las.on_service(&new, 150.0, 10.0);
        assert!(las.should_preempt(&running, &new, 2.0).is_empty());
        las.on_finish(&old, 1.0, 11.0);
        assert_eq!(las.attained(1), 0.0);
        assert!(Las::new(vec![10.0, 5.0]).is_err());
        assert!(Las::new(vec![f64::NAN]).is_err());
        assert!(las.describe(&new, &ctx).contains("queue 1 of 3"));
    }
}

//! Discretized two-dimensional least-attained-service (Tiresias, NSDI'19).
//!
//! A job's attained service is GPUs × seconds it has run (both dimensions
//! of "2D"). Queues are bands of attained service cut at `thresholds`
//! (GPU-seconds, ascending): queue 0 holds jobs below the first threshold,
//! queue 1 those between the first and second, and so on. The policy is
//! duration-agnostic (estimates are never read) and preemptive.
//!
//! In the simulator the policy re-packs the cluster at every event, as the
//! Tiresias simulator's `dlas-gpu` does (`SymbioticLab/Tiresias`,
//! `simulator/run_sim.py`, `dlas_sim_jobs`), through [`Repack`]:
//!
//! * every queue is an ordered list: a job enters queue 0 at the end when it
//!   arrives, enters the end of the next queue when its attained service
//!   reaches the queue's threshold (demotion), and the end of queue 0 when
//!   the starvation guard promotes it;
//! * at every event all active jobs (running or waiting) are visited queue by
//!   queue, each queue in its order, and each takes its GPUs if that many are
//!   still free (fit-first: a job that does not fit is skipped, and a running
//!   job that no longer fits is preempted); jobs that are to wait then move,
//!   in order, behind the running ones of their queue;
//! * starvation guard (`promote_knob`, Tiresias' PROMOTEKNOB; 0 = off, as in
//!   `dlas-gpu`): a waiting job outside queue 0 that has run since its last
//!   promotion and has waited, since then, at least `promote_knob` × the
//!   seconds it ran since then goes back to queue 0 with its queue service
//!   reset (its remaining work is unchanged).
//!
//! Outside the simulator (key order and [`Policy::should_preempt`]) a
//! waiting job may stop running jobs of a strictly higher queue; a
//! preempted job resumes where it stopped. The executor tells the policy
//! how much service each job has attained ([`Policy::on_service`]).

use std::collections::{BTreeMap, HashMap};

use super::preempt::victims;
use super::{Admission, Ctx, JobInfo, Policy, Repack, RepackPlan, RunningJob};
use crate::error::{Error, Result};

/// Tiresias' discretized 2D-LAS.
#[derive(Debug, Clone)]
pub struct Las {
    thresholds: Vec<f64>,
    /// job id → attained GPU-seconds (absent: none yet).
    attained: HashMap<u64, f64>,
    /// Starvation guard: 0 = off.
    promote_knob: f64,
    /// Re-packing state: active jobs by id (= arrival order).
    slots: BTreeMap<u64, Slot>,
    /// Next entry number (a queue's order is by entry).
    seq: u64,
}

/// An active job as the re-packing step tracks it.
#[derive(Debug, Clone)]
struct Slot {
    gpus: u32,
    queue: usize,
    /// When it entered its queue (entry number).
    seq: u64,
    running: bool,
    /// Seconds run since its last promotion (its queue service / GPUs).
    executed: f64,
    /// Seconds waited since its last promotion, counted once it has run.
    waited: f64,
    last_check: f64,
}

/// Tiresias' simulator's thresholds (`jobs.py`: 3 queues, limits 3,250 and
/// 7,200 GPU-seconds).
pub const TIRESIAS_THRESHOLDS: [f64; 2] = [3250.0, 7200.0];

impl Default for Las {
    /// Three queues split at 3,250 and 7,200 GPU-seconds (the Tiresias
    /// simulator's), no starvation guard (its `dlas-gpu`).
    fn default() -> Self {
        Self {
            thresholds: TIRESIAS_THRESHOLDS.to_vec(),
            attained: HashMap::new(),
            promote_knob: 0.0,
            slots: BTreeMap::new(),
            seq: 0,
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
            ..Self::default()
        })
    }

    /// Sets the starvation guard (Tiresias' PROMOTEKNOB): finite, ≥ 0;
    /// 0 turns it off.
    pub fn with_promote_knob(mut self, knob: f64) -> Result<Self> {
        if !(knob.is_finite() && knob >= 0.0) {
            return Err(Error::value(
                "las_promote_knob",
                format!("must be a finite number >= 0, got {knob}"),
            ));
        }
        self.promote_knob = knob;
        Ok(self)
    }

    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    pub fn promote_knob(&self) -> f64 {
        self.promote_knob
    }

    /// The queue of an active job as re-packing placed it (`None`: not
    /// re-packed, e.g. outside the simulator).
    pub fn queue(&self, id: u64) -> Option<usize> {
        self.slots.get(&id).map(|s| s.queue)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
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
        self.slots.remove(&job.id);
    }
    fn as_repack(&mut self) -> Option<&mut dyn Repack> {
        Some(self)
    }
    fn describe(&self, job: &JobInfo, _ctx: &Ctx) -> String {
        let a = self.attained(job.id);
        let queue = self.queue(job.id).unwrap_or_else(|| self.queue_of(a));
        format!(
            "queue {queue} of {} ({a:.0} GPU-s attained)",
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

impl Repack for Las {
    fn arrive(&mut self, id: u64, gpus: u32, now: f64) {
        let seq = self.next_seq();
        self.slots.insert(
            id,
            Slot {
                gpus,
                queue: 0,
                seq,
                running: false,
                executed: 0.0,
                waited: 0.0,
                last_check: now,
            },
        );
    }

    fn unplaced(&mut self, id: u64) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.running = false;
        }
    }

    fn repack(&mut self, now: f64, capacity: u32) -> RepackPlan {
        let last = self.thresholds.len();
        let knob = self.promote_knob;
        // Service and waiting since the last event; demotions and
        // promotions (in arrival order, each to the end of its new queue).
        let ids: Vec<u64> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(s) = self.slots.get_mut(&id) else {
                continue;
            };
            let dt = (now - s.last_check).max(0.0);
            s.last_check = now;
            let mut moved = false;
            if s.running {
                s.executed += dt;
                while s.queue < last
                    && s.executed * f64::from(s.gpus) >= self.thresholds[s.queue] * (1.0 - 1e-12)
                {
                    s.queue += 1;
                    moved = true;
                }
            } else {
                if s.executed > 0.0 {
                    s.waited += dt;
                }
                if knob > 0.0
                    && s.queue > 0
                    && s.executed > 0.0
                    && s.waited >= s.executed * knob * (1.0 - 1e-12)
                {
                    s.executed = 0.0;
                    s.waited = 0.0;
                    s.queue = 0;
                    moved = true;
                }
            }
            if moved {
                self.seq += 1;
                if let Some(s) = self.slots.get_mut(&id) {
                    s.seq = self.seq;
                }
            }
        }
        // Pack queue by queue, each in entry order; fit-first.
        let mut order: Vec<(usize, u64, u64)> = self
            .slots
            .iter()
            .map(|(&id, s)| (s.queue, s.seq, id))
            .collect();
        order.sort_unstable();
        let mut free = capacity;
        let mut plan = RepackPlan::default();
        let mut waiting: Vec<u64> = Vec::new();
        for &(_, _, id) in &order {
            let Some(s) = self.slots.get_mut(&id) else {
                continue;
            };
            if free >= s.gpus {
                free -= s.gpus;
                if !s.running {
                    s.running = true;
                    plan.start.push(id);
                }
            } else {
                if s.running {
                    s.running = false;
                    plan.stop.push(id);
                }
                waiting.push(id);
            }
        }
        // Waiting jobs move, in order, behind the running ones of their queue.
        for id in waiting {
            self.seq += 1;
            if let Some(s) = self.slots.get_mut(&id) {
                s.seq = self.seq;
            }
        }
        // The next demotion or promotion.
        plan.next = self
            .slots
            .values()
            .filter_map(|s| {
                if s.running {
                    (s.queue < last && s.gpus > 0)
                        .then(|| now + (self.thresholds[s.queue] / f64::from(s.gpus) - s.executed))
                } else if knob > 0.0 && s.queue > 0 && s.executed > 0.0 {
                    Some(now + (s.executed * knob - s.waited).max(0.0))
                } else {
                    None
                }
            })
            .filter(|&t| t > now)
            .min_by(f64::total_cmp);
        plan
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

    #[test]
    fn repack_is_fit_first_with_running_jobs_ahead_in_their_queue() {
        let mut las = Las::new(vec![1e9]).expect("thresholds");
        las.arrive(1, 3, 0.0);
        las.arrive(2, 2, 0.0);
        las.arrive(3, 1, 0.0);
        let p = las.repack(0.0, 4);
        // 1 takes 3 GPUs, 2 does not fit and is skipped, 3 fits.
        assert_eq!((p.stop, p.start), (vec![], vec![1, 3]));
        las.arrive(4, 1, 1.0);
        // Queue 0 is now 1, 3 (running), 2, 4: nothing changes.
        let p = las.repack(1.0, 4);
        assert!(p.stop.is_empty() && p.start.is_empty());
        // 1 ends: 2 (waiting longer, ahead of 4) goes, and 4 fits too.
        las.on_finish(&JobInfo::new(1, "a", 0.0), 2.0, 2.0);
        let p = las.repack(2.0, 4);
        assert_eq!(p.start, vec![2, 4]);
    }

    #[test]
    fn demotion_goes_to_the_end_of_the_next_queue_and_is_woken_for() {
        let mut las = Las::new(vec![10.0]).expect("thresholds");
        las.arrive(1, 1, 0.0);
        let p = las.repack(0.0, 1);
        assert_eq!((p.start.clone(), p.next), (vec![1], Some(10.0)));
        las.arrive(2, 1, 5.0);
        // Same queue: the running job keeps its GPU.
        let p = las.repack(5.0, 1);
        assert!(p.start.is_empty() && p.stop.is_empty());
        let p = las.repack(10.0, 1);
        assert_eq!((p.stop, p.start), (vec![1], vec![2]));
        assert_eq!(las.queue(1), Some(1));
        // 2 runs on 1 GPU: demoted at 20.
        assert_eq!(p.next, Some(20.0));
        assert!(las
            .describe(&JobInfo::new(1, "a", 0.0), &Ctx { now: 10.0 })
            .contains("queue 1 of 2"));
    }

    #[test]
    fn starvation_guard_promotes_after_knob_times_its_run() {
        for (knob, queue_at_15, next_at_10) in [(0.5, 0, 15.0), (0.0, 1, 20.0)] {
            let mut las = Las::new(vec![10.0])
                .and_then(|l| l.with_promote_knob(knob))
                .expect("las");
            las.arrive(1, 1, 0.0);
            las.repack(0.0, 1);
            las.arrive(2, 1, 5.0);
            las.repack(5.0, 1);
            // 1 ran 10 s and waits from 10: promoted at 10 + 0.5 × 10.
            let p = las.repack(10.0, 1);
            assert_eq!(p.next, Some(next_at_10), "knob {knob}");
            let p = las.repack(15.0, 1);
            assert_eq!(las.queue(1), Some(queue_at_15), "knob {knob}");
            // Promoted to the end of queue 0, behind the running 2.
            assert!(p.start.is_empty() && p.stop.is_empty());
        }
        assert!(Las::default().with_promote_knob(-1.0).is_err());
        assert!(Las::default().with_promote_knob(f64::NAN).is_err());
        assert_eq!(Las::default().thresholds(), &TIRESIAS_THRESHOLDS);
    }
}

//! When will a pending job start, and who is ahead of it: the answer to
//! "why is my job pending" that the service and `JobScheduler` give.
//!
//! The pending jobs are taken in the table's policy order (queue tier, the
//! policy's key, submission): a job starts at the first moment at or after
//! the previous job's planned start at which enough of every resource is
//! free — CPU cores, memory (MB), GPU count and VRAM (MB) — counting a
//! running job as ending at its `estimated_duration` (a paused job, or one
//! with no estimate, holds what it has until further notice). The plan is
//! unknown (`None`) from the first job that cannot start on what is known:
//! it needs more than the machine has, or room that only a job with no
//! estimate would free. It assumes no job arrives ahead (a later,
//! higher-priority arrival can only delay it) and no backfill (which can
//! only bring the backfilled jobs earlier).

use super::queue::JobQueue;
use super::{JobError, JobState, Resources};

/// Slack for sums of floating-point needs.
const EPS: f64 = 1e-9;

/// What the machine has; `f64::INFINITY` for what is not known (memory or
/// VRAM before the first reading): such a resource never delays a start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub cpu_cores: f64,
    pub memory_mb: f64,
    pub gpus: u32,
    pub vram_mb: f64,
}

impl Totals {
    /// Checked: every amount a number >= 0 (infinity allowed: unknown).
    pub fn checked(self) -> Result<Self, JobError> {
        for (field, v) in [
            ("cpu_cores", self.cpu_cores),
            ("memory_mb", self.memory_mb),
            ("vram_mb", self.vram_mb),
        ] {
            if v.is_nan() || v < 0.0 {
                return Err(JobError::Invalid {
                    field: field.into(),
                    message: format!("must be a number >= 0 (inf: unknown), got {v}"),
                });
            }
        }
        Ok(self)
    }

    fn holds(&self, r: &Resources) -> bool {
        r.cpu_cores <= self.cpu_cores + EPS
            && r.memory_mb <= self.memory_mb + EPS
            && r.gpu_count <= self.gpus
            && r.vram_mb <= self.vram_mb + EPS
    }
}

/// One pending job's place and planned start (same clock as `now`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    pub job_id: u64,
    /// 1 for the next job in line.
    pub position: usize,
    /// Jobs ahead of it in the policy's order (`position - 1`).
    pub ahead: usize,
    pub estimated_start: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    r: Resources,
    /// None: not known to end.
    end: Option<f64>,
}

fn busy_at(held: &[Held], t: f64) -> Resources {
    let mut sum = Resources {
        cpu_cores: 0.0,
        memory_mb: 0.0,
        gpu_count: 0,
        vram_mb: 0.0,
    };
    for h in held.iter().filter(|h| h.end.is_none_or(|e| e > t)) {
        sum.cpu_cores += h.r.cpu_cores;
        sum.memory_mb += h.r.memory_mb;
        sum.gpu_count = sum.gpu_count.saturating_add(h.r.gpu_count);
        sum.vram_mb += h.r.vram_mb;
    }
    sum
}

fn fits(totals: &Totals, busy: &Resources, need: &Resources) -> bool {
    totals.holds(&Resources {
        cpu_cores: busy.cpu_cores + need.cpu_cores,
        memory_mb: busy.memory_mb + need.memory_mb,
        gpu_count: busy.gpu_count.saturating_add(need.gpu_count),
        vram_mb: busy.vram_mb + need.vram_mb,
    })
}

/// Planned starts of `pending` (in order: id, needs, estimated duration),
/// given what `running` holds and when it ends. Returns one entry per job
/// up to and including the first unknown one; the jobs after it are not
/// read (`pending` may be lazy) and are unknown too.
pub fn plan_starts(
    now: f64,
    totals: Totals,
    running: impl IntoIterator<Item = (Resources, Option<f64>)>,
    pending: impl IntoIterator<Item = (u64, Resources, Option<f64>)>,
) -> Vec<(u64, Option<f64>)> {
    let mut held: Vec<Held> = running
        .into_iter()
        .map(|(r, end)| Held { r, end })
        .collect();
    let mut out = Vec::new();
    let mut t_prev = now;
    for (id, need, est) in pending {
        if !totals.holds(&need) {
            out.push((id, None));
            break;
        }
        let mut candidates: Vec<f64> = held
            .iter()
            .filter_map(|h| h.end)
            .filter(|&e| e > t_prev)
            .collect();
        candidates.push(t_prev);
        candidates.sort_by(f64::total_cmp);
        candidates.dedup();
        let start = candidates
            .into_iter()
            .find(|&t| fits(&totals, &busy_at(&held, t), &need));
        out.push((id, start));
        let Some(start) = start else { break };
        t_prev = start;
        held.retain(|h| h.end.is_none_or(|e| e > start));
        held.push(Held {
            r: need,
            end: est.map(|d| start + d),
        });
    }
    out
}

/// The first `limit` pending jobs of `table` in its policy order, with
/// their planned starts against `totals` (see the module's docs).
pub fn explain(
    table: &mut JobQueue,
    now: f64,
    totals: Totals,
    limit: usize,
) -> Result<Vec<Planned>, JobError> {
    let totals = totals.checked()?;
    let order = table.pending_order(now, limit);
    let running: Vec<(Resources, Option<f64>)> = table
        .active_jobs()
        .map(|j| {
            let end = match (j.state, j.started, j.info.estimated_duration) {
                (JobState::Running, Some(s), Some(d)) => Some(now + (d - (now - s)).max(0.0)),
                _ => None,
            };
            (j.resources, end)
        })
        .collect();
    let pending = order.iter().filter_map(|id| {
        table
            .get(*id)
            .map(|j| (*id, j.resources, j.info.estimated_duration))
    });
    let plan: std::collections::HashMap<u64, Option<f64>> =
        plan_starts(now, totals, running, pending)
            .into_iter()
            .collect();
    Ok(order
        .iter()
        .enumerate()
        .map(|(i, id)| Planned {
            job_id: *id,
            position: i + 1,
            ahead: i,
            estimated_start: plan.get(id).copied().flatten(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobSpec;
    use crate::policy::by_name;

    fn res(cpu: f64, mem: f64, gpus: u32, vram: f64) -> Resources {
        Resources {
            cpu_cores: cpu,
            memory_mb: mem,
            gpu_count: gpus,
            vram_mb: vram,
        }
    }

    const INF: f64 = f64::INFINITY;

    fn totals(cpu: f64, mem: f64, gpus: u32, vram: f64) -> Totals {
        Totals {
            cpu_cores: cpu,
            memory_mb: mem,
            gpus,
            vram_mb: vram,
        }
    }

    #[test]
    fn a_job_starts_when_the_running_one_ends_and_the_next_after_it() {
        // 2 cores; one running job holds both until t=40.
        let plan = plan_starts(
            0.0,
            totals(2.0, INF, 0, INF),
            [(res(2.0, 0.0, 0, 0.0), Some(40.0))],
            [
                (1, res(1.0, 0.0, 0, 0.0), Some(10.0)),
                (2, res(2.0, 0.0, 0, 0.0), Some(5.0)),
                (3, res(2.0, 0.0, 0, 0.0), None),
                (4, res(1.0, 0.0, 0, 0.0), Some(5.0)),
                (5, res(1.0, 0.0, 0, 0.0), Some(5.0)),
            ],
        );
        // 2 needs both cores: after 1 ends (50); 3 after 2 (55); 4 needs
        // room only 3 (no estimate) would free: unknown, and 5 is not read.
        assert_eq!(
            plan,
            vec![(1, Some(40.0)), (2, Some(50.0)), (3, Some(55.0)), (4, None)]
        );
    }

    #[test]
    fn every_resource_counts_memory_gpus_and_vram() {
        let t = totals(64.0, 1000.0, 2, 16000.0);
        let running = [(res(1.0, 800.0, 1, 8000.0), Some(30.0))];
        // memory: 800 of 1000 held until 30.
        let p = plan_starts(0.0, t, running, [(1, res(1.0, 300.0, 0, 0.0), None)]);
        assert_eq!(p, vec![(1, Some(30.0))]);
        // GPUs: one of two free now.
        let p = plan_starts(0.0, t, running, [(1, res(1.0, 100.0, 1, 0.0), None)]);
        assert_eq!(p, vec![(1, Some(0.0))]);
        let p = plan_starts(0.0, t, running, [(1, res(1.0, 100.0, 2, 0.0), None)]);
        assert_eq!(p, vec![(1, Some(30.0))]);
        // VRAM: 8000 of 16000 held.
        let p = plan_starts(0.0, t, running, [(1, res(1.0, 100.0, 1, 9000.0), None)]);
        assert_eq!(p, vec![(1, Some(30.0))]);
    }

    #[test]
    fn what_can_never_fit_or_is_unknown_stops_the_plan() {
        let t = totals(2.0, INF, 1, INF);
        let p = plan_starts(
            0.0,
            t,
            [],
            [
                (1, res(1.0, 0.0, 2, 0.0), Some(1.0)),
                (2, res(1.0, 0.0, 0, 0.0), Some(1.0)),
            ],
        );
        assert_eq!(p, vec![(1, None)]);
        // a running job with no estimate holds its room for good
        let p = plan_starts(
            0.0,
            t,
            [(res(2.0, 0.0, 0, 0.0), None)],
            [(1, res(1.0, 0.0, 0, 0.0), Some(1.0))],
        );
        assert_eq!(p, vec![(1, None)]);
        // unknown memory total: never delays
        let p = plan_starts(0.0, t, [], [(1, res(1.0, 1e12, 0, 0.0), Some(1.0))]);
        assert_eq!(p, vec![(1, Some(0.0))]);
    }

    #[test]
    fn bad_totals_are_refused_naming_the_field() {
        let e = totals(f64::NAN, INF, 0, INF).checked().unwrap_err();
        assert!(e.to_string().starts_with("cpu_cores:"), "{e}");
        let e = totals(1.0, -1.0, 0, INF).checked().unwrap_err();
        assert!(e.to_string().starts_with("memory_mb:"), "{e}");
    }

    #[test]
    fn explain_uses_the_table_policy_order_and_running_jobs_estimates() {
        let Some(policy) = by_name("priority", None) else {
            panic!("no priority policy")
        };
        let mut q = JobQueue::new(policy, None);
        let spec = |name: &str, prio: f64, cpu: f64, est: Option<f64>| {
            let mut s = JobSpec::new(name);
            s.priority = prio;
            s.resources = res(cpu, 0.0, 0, 0.0);
            s.estimated_duration = est;
            s
        };
        let run = q.submit(spec("run", 100.0, 2.0, Some(40.0)), 0.0).unwrap();
        q.transition(run, JobState::Running, "start", None, 0.0)
            .unwrap();
        let low = q.submit(spec("low", 10.0, 1.0, Some(5.0)), 1.0).unwrap();
        let high = q.submit(spec("high", 90.0, 2.0, Some(10.0)), 2.0).unwrap();
        let t = totals(2.0, INF, 0, INF);
        let plan = explain(&mut q, 10.0, t, 100).unwrap();
        // "high" is first by priority although submitted later; "run" ends
        // at 0 + 40 (30 s left at t=10).
        assert_eq!(
            plan,
            vec![
                Planned {
                    job_id: high,
                    position: 1,
                    ahead: 0,
                    estimated_start: Some(40.0)
                },
                Planned {
                    job_id: low,
                    position: 2,
                    ahead: 1,
                    estimated_start: Some(50.0)
                },
            ]
        );
        // a paused job holds its room with no end: unknown
        q.transition(run, JobState::Paused, "pause", None, 10.0)
            .unwrap();
        let plan = explain(&mut q, 10.0, t, 100).unwrap();
        assert_eq!(plan[0].estimated_start, None);
        assert_eq!(plan[1].estimated_start, None);
        // the limit bounds the answer
        assert_eq!(explain(&mut q, 10.0, t, 1).unwrap().len(), 1);
        assert!(explain(&mut q, 10.0, totals(-1.0, INF, 0, INF), 1).is_err());
    }
}

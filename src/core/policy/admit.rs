//! The one pass that applies a policy's order to resources: the live
//! reservation queue, the job scheduler and the simulator all call
//! [`admit`], each with its own [`Placement`] (a host's GPUs and pools, a
//! simulated cluster).

use super::Admission;

/// Where jobs are placed now.
pub trait Placement {
    type Job;
    type Hold;
    type Plan: Plan<Job = Self::Job>;
    /// Takes what `job` needs if it fits now.
    fn try_take(&mut self, job: &Self::Job) -> Option<Self::Hold>;
    /// A capacity view of what is held now and when each hold is expected
    /// to end, for planning the head's start (backfill).
    fn plan(&self) -> Self::Plan;
    /// Whether no job not yet offered could fit now, however it is drawn
    /// (lets a pass stop early; what was refused stays refused until
    /// something is released). The default never says so.
    fn exhausted(&self) -> bool {
        false
    }
}

/// A capacity plan: what is held, and until when (expected).
pub trait Plan: Clone {
    type Job;
    /// Whether `job` fits in the plan as it stands.
    fn fits(&self, job: &Self::Job) -> bool;
    /// Holds `job`'s need from now on (until released).
    fn hold(&mut self, job: &Self::Job);
    /// The earliest finite expected end among the holds.
    fn next_end(&self) -> Option<f64>;
    /// Releases every hold expected to end at or before `t`.
    fn release_until(&mut self, t: f64);
}

/// The head's earliest start in `plan` (`now` if it fits now), with the
/// plan as it would be then; `None` if no expected end lets it fit.
pub fn shadow<P: Plan>(mut plan: P, head: &P::Job, now: f64) -> Option<(f64, P)> {
    let mut t = now;
    loop {
        if plan.fits(head) {
            return Some((t, plan));
        }
        let end = plan.next_end()?;
        t = t.max(end);
        plan.release_until(end);
    }
}

/// What one pass did.
#[derive(Debug)]
pub struct Pass<H, T = usize> {
    /// `(job, hold)` in the order they were started (an index into the
    /// jobs for [`admit`]).
    pub started: Vec<(T, H)>,
    /// The first job in order that could not start (the head now).
    pub blocked_head: Option<T>,
    /// Backfill: the head's planned start (None: unknown, nothing backfilled).
    pub head_start: Option<f64>,
}

/// Applies `order` (indices into `jobs`) to `placement` under `mode`.
/// `estimate` gives a job's expected run time (backfill only); `now` is the
/// clock time of the pass.
pub fn admit<P: Placement>(
    mode: Admission,
    order: &[usize],
    jobs: &[P::Job],
    placement: &mut P,
    estimate: impl Fn(&P::Job) -> Option<f64>,
    now: f64,
) -> Pass<P::Hold> {
    admit_each(
        mode,
        order.iter().map(|&i| (i, &jobs[i])),
        placement,
        estimate,
        now,
    )
}

/// [`admit`] over jobs drawn one at a time from `order` (`(item, job)`:
/// the item is what [`Pass`] reports), so that a pass over a long queue looks only at what it
/// needs: under [`Admission::Strict`] it stops at the head, and once the
/// head is blocked it stops as soon as [`Placement::exhausted`] says no job
/// left can fit (the next item is not drawn).
pub fn admit_each<'j, P: Placement<Job: 'j>, T: Copy>(
    mode: Admission,
    order: impl Iterator<Item = (T, &'j P::Job)>,
    placement: &mut P,
    estimate: impl Fn(&P::Job) -> Option<f64>,
    now: f64,
) -> Pass<P::Hold, T> {
    let mut pass = Pass {
        started: Vec::new(),
        blocked_head: None,
        head_start: None,
    };
    let mut rest = order;
    // Everyone in order until the first that does not fit.
    let mut head = None;
    for (i, j) in rest.by_ref() {
        match placement.try_take(j) {
            Some(hold) => pass.started.push((i, hold)),
            None => {
                head = Some(j);
                pass.blocked_head = Some(i);
                break;
            }
        }
    }
    let Some(head) = head else {
        return pass;
    };
    // Later jobs, while any may still fit (checked before each is drawn).
    match mode {
        Admission::Strict => {}
        Admission::BestEffort => {
            while !placement.exhausted() {
                let Some((i, j)) = rest.next() else { break };
                if let Some(hold) = placement.try_take(j) {
                    pass.started.push((i, hold));
                }
            }
        }
        Admission::Backfill => {
            let Some((start, mut at_start)) = shadow(placement.plan(), head, now) else {
                return pass;
            };
            pass.head_start = Some(start);
            while !placement.exhausted() {
                let Some((i, j)) = rest.next() else { break };
                let ends_in_time = estimate(j).is_some_and(|d| now + d <= start);
                let leaves_room = || {
                    let mut p = at_start.clone();
                    p.fits(j) && {
                        p.hold(j);
                        p.fits(head)
                    }
                };
                if !(ends_in_time || leaves_room()) {
                    continue;
                }
                if let Some(hold) = placement.try_take(j) {
                    if !ends_in_time {
                        at_start.hold(j);
                    }
                    pass.started.push((i, hold));
                }
            }
        }
    }
    pass
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A pool of identical GPUs; jobs are (gpus, estimated duration).
    #[derive(Debug, Clone)]
    pub struct Gpus {
        pub total: u32,
        /// (gpus, expected end)
        pub held: Vec<(u32, f64)>,
        pub now: f64,
    }

    #[derive(Debug, Clone, Copy)]
    pub struct J {
        pub gpus: u32,
        pub dur: f64,
    }

    impl Gpus {
        fn free(&self) -> u32 {
            self.total - self.held.iter().map(|h| h.0).sum::<u32>()
        }
    }

    impl Placement for Gpus {
        type Job = J;
        type Hold = ();
        type Plan = Gpus;
        fn try_take(&mut self, job: &J) -> Option<()> {
            (job.gpus <= self.free()).then(|| self.held.push((job.gpus, self.now + job.dur)))
        }
        fn plan(&self) -> Gpus {
            self.clone()
        }
    }

    impl Plan for Gpus {
        type Job = J;
        fn fits(&self, job: &J) -> bool {
            job.gpus <= self.free()
        }
        fn hold(&mut self, job: &J) {
            self.held.push((job.gpus, f64::INFINITY));
        }
        fn next_end(&self) -> Option<f64> {
            self.held
                .iter()
                .map(|h| h.1)
                .filter(|t| t.is_finite())
                .min_by(f64::total_cmp)
        }
        fn release_until(&mut self, t: f64) {
            self.held.retain(|h| h.1 > t);
        }
    }

    fn run(mode: Admission, total: u32, held: &[(u32, f64)], jobs: &[J]) -> (Vec<usize>, Gpus) {
        let mut g = Gpus {
            total,
            held: held.to_vec(),
            now: 0.0,
        };
        let order: Vec<usize> = (0..jobs.len()).collect();
        let pass = admit(mode, &order, jobs, &mut g, |j| Some(j.dur), 0.0);
        (pass.started.into_iter().map(|s| s.0).collect(), g)
    }

    #[test]
    fn strict_stops_at_the_head_best_effort_goes_on() {
        let jobs = [
            J { gpus: 2, dur: 1.0 },
            J { gpus: 8, dur: 1.0 },
            J { gpus: 1, dur: 1.0 },
        ];
        assert_eq!(run(Admission::Strict, 4, &[], &jobs).0, vec![0]);
        assert_eq!(run(Admission::BestEffort, 4, &[], &jobs).0, vec![0, 2]);
    }

    #[test]
    fn backfill_admits_only_what_cannot_delay_the_head() {
        // 4 GPUs, 3 held until t=10. Head needs 4 (starts at 10).
        let held = [(3, 10.0)];
        let jobs = [
            J { gpus: 4, dur: 5.0 },  // head
            J { gpus: 1, dur: 20.0 }, // would still run at 10: delays the head
            J { gpus: 1, dur: 5.0 },  // ends at 5 <= 10: backfilled
        ];
        assert_eq!(run(Admission::Backfill, 4, &held, &jobs).0, vec![2]);
        // With 5 GPUs, 1 is spare at t=10: the long job fits beside the
        // head, and the short one still ends in time.
        assert_eq!(run(Admission::Backfill, 5, &held, &jobs).0, vec![1, 2]);
    }

    #[test]
    fn backfill_without_known_ends_backfills_nothing() {
        let held = [(3, f64::INFINITY)];
        let jobs = [J { gpus: 4, dur: 5.0 }, J { gpus: 1, dur: 1.0 }];
        assert!(run(Admission::Backfill, 4, &held, &jobs).0.is_empty());
    }

    proptest! {
        /// Backfill never delays the head: its planned start after the pass
        /// is no later than before it.
        #[test]
        fn backfill_never_delays_the_head(
            total in 1u32..16,
            held in proptest::collection::vec((1u32..8, 1.0f64..50.0), 0..6),
            jobs in proptest::collection::vec((1u32..16, 0.5f64..60.0), 1..12),
        ) {
            let mut used = 0;
            let held: Vec<(u32, f64)> = held.into_iter().filter(|h| {
                used += h.0;
                used <= total
            }).collect();
            let jobs: Vec<J> = jobs.into_iter().map(|(g, d)| J { gpus: g.min(total), dur: d }).collect();
            // The head's start as the strict pass leaves it (those ahead of
            // it in order start either way), against after backfilling.
            let (_, before) = run(Admission::Strict, total, &held, &jobs);
            let (started, after) = run(Admission::Backfill, total, &held, &jobs);
            let head = (0..jobs.len()).find(|i| !started.contains(i));
            if let Some(h) = head {
                let t0 = shadow(before, &jobs[h], 0.0).map(|s| s.0);
                let t1 = shadow(after, &jobs[h], 0.0).map(|s| s.0);
                if let Some(t0) = t0 {
                    prop_assert!(t1.is_some_and(|t1| t1 <= t0 + 1e-9), "head start {t0} -> {t1:?}");
                }
            }
        }
    }
}

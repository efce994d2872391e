//! The discrete-event engine: virtual time, one policy, one cluster.
//!
//! Events: arrivals (the trace, in submission order), completions,
//! service-threshold crossings (preemptive policies such as `las`) and
//! deadline checks (time-varying policies). At one instant every completion
//! (and threshold crossing) is processed first, then every arrival, then
//! one admission pass: [`admit`] with the policy's [`Admission`] mode over
//! the pending jobs in policy order, fed in chunks that skip jobs which
//! cannot start now (see [`Pending`]); with preemption enabled the policy's
//! [`Policy::should_preempt`] advice is followed for a blocked head first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use std::cell::RefCell;
use std::rc::Rc;

use super::cluster::{Alloc, Cluster, ClusterPlan, ClusterSpec, Holdings, Live, Need, Ord64, View};
use super::metrics::{self, JobOutcome, Metrics, TimelinePoint};
use super::queue::{Entry, Filter, Pending};
use super::trace::TraceJob;
use crate::error::{Error, Result};
use crate::policy::admit::{admit, shadow, Pass, Plan};
use crate::policy::{Admission, Ctx, JobInfo, Policy, RunningJob};

/// Simulation settings besides the cluster and the policy.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Follow the policy's preemption advice. `None`: only for policies
    /// with service thresholds (`las`).
    pub preempt: Option<bool>,
    /// When a job declares no `estimated_duration`, tell the scheduler its
    /// true duration (an oracle); otherwise it has no estimate.
    pub oracle_estimates: bool,
    /// Keep the queue-length / busy-GPU timeline.
    pub timeline: bool,
    /// Reference mode, for checking: every pass orders all pending jobs
    /// afresh ([`crate::policy::order`]) and makes one [`admit`] call over
    /// the whole order (no chunks, no skipping, no preemption). Slow.
    pub reference: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            preempt: None,
            oracle_estimates: true,
            timeline: true,
            reference: false,
        }
    }
}

/// What one simulation produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    pub policy: String,
    pub metrics: Metrics,
    /// One per trace job, in the trace's (submission) order.
    pub jobs: Vec<JobOutcome>,
    pub timeline: Vec<TimelinePoint>,
}

/// The simulated clock's limit, 2^42 s (about 139,000 years): below it a
/// double counts time in steps under a millisecond, so no duration is lost
/// to rounding. A run whose jobs would end later is refused (a trace's own
/// times are at most [`super::trace::MAX_SECONDS`]; only a long queue gets
/// here).
pub const MAX_CLOCK_S: f64 = 4_398_046_511_104.0;

/// How many jobs one call of [`admit`] sees at most.
const CHUNK: usize = 64;
/// Instants between progress reports.
const PROGRESS_EVERY: u64 = 4096;

const COMPLETION: u8 = 0;
const THRESHOLD: u8 = 1;
const DEADLINE: u8 = 2;
/// A re-packing policy's own next change (job field: `u32::MAX`, gen: the
/// wake number; only the latest counts).
const WAKE: u8 = 3;

#[derive(Debug)]
struct JobState {
    info: JobInfo,
    gpus: u32,
    ram_mb: f64,
    duration: f64,
    /// Remaining expected run time (the scheduler's view).
    estimate: Option<f64>,
    pending_since: f64,
    first_start: f64,
    end: f64,
    wait: f64,
    ran: f64,
    seg_start: f64,
    /// GPU-seconds attained up to `seg_start`.
    attained: f64,
    preemptions: u32,
    gen: u32,
    alloc: Option<Alloc>,
    expected_end: f64,
    entry: Option<Entry>,
    running_pos: usize,
    cost: f64,
}

struct Jobs(Vec<JobState>);

impl Holdings for Jobs {
    fn holding(&self, job: u32) -> Option<(&Alloc, f64)> {
        let j = self.0.get(job as usize)?;
        j.alloc.as_ref().map(|a| (a, j.ram_mb))
    }
}

/// The skip test of a pass after its head blocked: a job needs at most
/// `cap` GPUs to fit now; under backfill it must also either end before
/// the head's start or be no larger than the largest size that leaves
/// room for the head then (`room`).
struct Fit {
    cap: u32,
    backfill: Option<(f64, f64, u32)>,
}

impl Filter for Fit {
    fn maybe(&self, gpus: u32, estimate: f64) -> bool {
        gpus <= self.cap
            && self
                .backfill
                .is_none_or(|(now, start, room)| gpus <= room || now + estimate <= start)
    }
}

struct Engine<'p> {
    policy: &'p mut dyn Policy,
    cluster: Cluster,
    jobs: Jobs,
    pending: Pending,
    running: Vec<u32>,
    /// The running jobs as preemption advice sees them (same positions as
    /// `running`; kept only when preempting).
    running_info: Vec<RunningJob>,
    events: BinaryHeap<Reverse<(Ord64, u8, u32, u32)>>,
    preempt: bool,
    /// The policy re-packs at every event ([`Policy::as_repack`]).
    repack: bool,
    wake: u32,
    thresholds: Vec<f64>,
    epoch: u64,
    /// When the pending keys were computed: a policy whose keys do not vary
    /// with time alone keys newcomers at this time too, so float drift in
    /// a key that is constant in theory (fair share's decay) cannot order
    /// newcomers inconsistently with those already waiting.
    key_now: f64,
    busy_area: f64,
    last_t: f64,
    done: usize,
    preemptions: u64,
    buf: Vec<Entry>,
    reference: bool,
    /// Backfill: (head, planned start) of every pass, when recorded.
    heads: Option<Vec<(u32, f64)>>,
    /// The first job started that would end past [`MAX_CLOCK_S`], and when.
    past_clock: Option<(u32, f64)>,
}

/// Runs `trace` (in submission order, as [`super::trace`] returns it) on a
/// cluster of `spec` under `policy`. `progress(done, total)` is called now
/// and then; returning `false` stops the run (an error).
pub fn simulate(
    trace: &[TraceJob],
    spec: &ClusterSpec,
    policy: &mut dyn Policy,
    options: &SimOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<SimResult> {
    run(trace, spec, policy, options, progress, false).map(|r| r.0)
}

/// [`simulate`], also returning each backfill pass's (head, planned start)
/// when `record_heads`.
pub(crate) fn run(
    trace: &[TraceJob],
    spec: &ClusterSpec,
    policy: &mut dyn Policy,
    options: &SimOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    record_heads: bool,
) -> Result<(SimResult, Vec<(u32, f64)>)> {
    let cluster = Cluster::new(spec.clone())?;
    if trace.len() > u32::MAX as usize {
        return Err(Error::value("trace", "has more than 2^32 jobs"));
    }
    for w in trace.windows(2) {
        if w[1].submit_time < w[0].submit_time {
            return Err(Error::value(
                "trace",
                "jobs must be in submission order (as the trace readers return them)",
            ));
        }
    }
    let name: std::sync::Arc<str> = std::sync::Arc::from("job");
    let mut jobs = Vec::with_capacity(trace.len());
    for (i, t) in trace.iter().enumerate() {
        check_times(t)?;
        if let Some(why) = spec.never_fits(t.num_gpu, t.vram_mb, t.ram_mb) {
            return Err(Error::value(
                format!("trace {}, job {:?}", t.origin, &*t.job_id),
                format!("can never run on this cluster: {why}"),
            ));
        }
        let estimate = t
            .estimated_duration
            .or(options.oracle_estimates.then_some(t.duration));
        let info = JobInfo {
            id: i as u64,
            name: name.clone(),
            priority: t.priority,
            user: t.user.clone(),
            project: t.project.clone(),
            submitted: t.submit_time,
            deadline: t.deadline.map(|d| t.submit_time + d),
            estimated_duration: estimate,
            size: f64::from(t.num_gpu.max(1)),
        };
        jobs.push(JobState {
            info,
            gpus: t.num_gpu,
            ram_mb: if spec.ram_per_node_mb.is_some() {
                t.ram_mb.unwrap_or(0.0)
            } else {
                0.0
            },
            duration: t.duration,
            estimate,
            pending_since: t.submit_time,
            first_start: f64::NAN,
            end: f64::NAN,
            wait: 0.0,
            ran: 0.0,
            seg_start: 0.0,
            attained: 0.0,
            preemptions: 0,
            gen: 0,
            alloc: None,
            expected_end: f64::INFINITY,
            entry: None,
            running_pos: 0,
            cost: 0.0,
        });
    }
    let thresholds = policy.service_thresholds().to_vec();
    // A re-packing policy (las) preempts by re-packing, unless told not to.
    let repack =
        policy.as_repack().is_some() && options.preempt.unwrap_or(true) && !options.reference;
    let preempt =
        options.preempt.unwrap_or(!thresholds.is_empty()) && !options.reference && !repack;
    let mut e = Engine {
        epoch: policy.epoch(),
        key_now: trace.first().map_or(0.0, |t| t.submit_time),
        policy,
        cluster,
        jobs: Jobs(jobs),
        pending: Pending::default(),
        running: Vec::new(),
        running_info: Vec::new(),
        events: BinaryHeap::new(),
        preempt,
        repack,
        wake: 0,
        thresholds,
        busy_area: 0.0,
        last_t: trace.first().map_or(0.0, |t| t.submit_time),
        done: 0,
        preemptions: 0,
        buf: Vec::with_capacity(CHUNK),
        reference: options.reference,
        heads: record_heads.then(Vec::new),
        past_clock: None,
    };
    let mut timeline: Vec<TimelinePoint> = Vec::new();
    let mut next = 0usize;
    let mut instants = 0u64;
    let total = trace.len();
    if !progress(0, total) {
        return Err(stopped(e.policy.name()));
    }
    loop {
        // Superseded wakes are dropped first, so they add no instants.
        while let Some(&Reverse((_, WAKE, _, gen))) = e.events.peek() {
            if gen == e.wake {
                break;
            }
            e.events.pop();
        }
        let t_event = e.events.peek().map(|r| r.0 .0 .0);
        let t_arrival = trace.get(next).map(|t| t.submit_time);
        let now = match (t_event, t_arrival) {
            (None, None) => break,
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0.0),
        };
        e.busy_area += e.cluster.busy_gpus as f64 * (now - e.last_t);
        e.last_t = now;
        while let Some(&Reverse((t, kind, job, gen))) = e.events.peek() {
            if t.0 > now {
                break;
            }
            e.events.pop();
            if kind == WAKE || e.jobs.0.get(job as usize).is_none_or(|j| j.gen != gen) {
                continue;
            }
            match kind {
                COMPLETION => e.complete(job, now),
                THRESHOLD => e.crossed(job, now),
                _ => {}
            }
        }
        while next < total && trace[next].submit_time <= now {
            e.arrive(next as u32, now);
            next += 1;
        }
        if e.repack {
            e.repack(now);
        } else {
            e.pass(now);
        }
        if let Some((job, end)) = e.past_clock {
            let t = &trace[job as usize];
            return Err(Error::value(
                format!("trace {}, job {:?}", t.origin, &*t.job_id),
                format!(
                    "would end at {end} s of simulated time, past the simulator's limit of 2^42 s (about 139,000 years; beyond it a double cannot count milliseconds): the trace queues too long for this cluster"
                ),
            ));
        }
        if options.timeline {
            let point = TimelinePoint {
                time: now,
                queue_length: e.pending.len() as u32,
                busy_gpus: e.cluster.busy_gpus as u32,
            };
            match timeline.last_mut() {
                Some(last) if last.time == now => *last = point,
                Some(last)
                    if last.queue_length == point.queue_length
                        && last.busy_gpus == point.busy_gpus => {}
                _ => timeline.push(point),
            }
        }
        instants += 1;
        if instants.is_multiple_of(PROGRESS_EVERY) && !progress(e.done, total) {
            return Err(stopped(e.policy.name()));
        }
    }
    if e.done != total {
        return Err(Error::Policy {
            policy: e.policy.name().to_owned(),
            message: format!(
                "{} of {total} jobs never started (the policy held them back with nothing running)",
                total - e.done
            ),
        });
    }
    progress(total, total);
    let outcomes: Vec<JobOutcome> = e
        .jobs
        .0
        .iter()
        .map(|j| JobOutcome {
            start: j.first_start,
            end: j.end,
            wait: j.wait,
            ran: j.ran,
            preemptions: j.preemptions,
            cost: j.cost,
        })
        .collect();
    let metrics = metrics::compute(trace, &outcomes, spec, e.busy_area, e.preemptions);
    let heads = e.heads.take().unwrap_or_default();
    Ok((
        SimResult {
            policy: e.policy.name().to_owned(),
            metrics,
            jobs: outcomes,
            timeline,
        },
        heads,
    ))
}

/// A job's times checked as the trace readers check them (for traces built
/// in code).
fn check_times(t: &TraceJob) -> Result<()> {
    let max = super::trace::MAX_SECONDS;
    for (name, v) in [
        ("submit_time", Some(t.submit_time)),
        ("duration", Some(t.duration)),
        ("deadline", t.deadline),
        ("estimated_duration", t.estimated_duration),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(Error::value(
                    format!("trace {}, job {:?}, {name}", t.origin, &*t.job_id),
                    format!(
                        "must be a finite number of seconds from 0 to {max:e}, got {}",
                        super::trace::show(v)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn stopped(policy: &str) -> Error {
    Error::Policy {
        policy: policy.to_owned(),
        message: "simulation stopped".into(),
    }
}

impl Engine<'_> {
    fn entry(&self, job: u32, now: f64) -> Entry {
        let j = &self.jobs.0[job as usize];
        let now = if self.policy.time_varying() || self.reference {
            now
        } else {
            self.key_now
        };
        Entry {
            key: self.policy.key(&j.info, &Ctx { now }),
            submitted: j.info.submitted,
            job,
            gpus: j.gpus,
            estimate: j.estimate.unwrap_or(f64::INFINITY),
        }
    }

    fn need(&self, job: u32) -> Need {
        let j = &self.jobs.0[job as usize];
        Need {
            job,
            gpus: j.gpus,
            ram_mb: j.ram_mb,
            estimate: j.estimate,
        }
    }

    fn enqueue(&mut self, job: u32, now: f64) {
        let e = self.entry(job, now);
        self.jobs.0[job as usize].entry = Some(e);
        self.jobs.0[job as usize].pending_since = now;
        self.pending.insert(e);
    }

    fn arrive(&mut self, job: u32, now: f64) {
        self.enqueue(job, now);
        if self.repack {
            let gpus = self.jobs.0[job as usize].gpus;
            if let Some(r) = self.policy.as_repack() {
                r.arrive(u64::from(job), gpus, now);
            }
        }
        let j = &self.jobs.0[job as usize];
        if self.policy.time_varying() {
            if let Some(d) = j.info.deadline.filter(|d| *d > now) {
                let gen = j.gen;
                self.events.push(Reverse((Ord64(d), DEADLINE, job, gen)));
            }
        }
    }

    /// Ends the running segment of `job` at `now` (usage, cost, capacity).
    fn stop(&mut self, job: u32, now: f64) {
        let spec = &self.cluster.spec;
        let j = &mut self.jobs.0[job as usize];
        let seg = now - j.seg_start;
        j.ran += seg;
        j.attained += f64::from(j.gpus) * seg;
        j.gen = j.gen.wrapping_add(1);
        if let Some(alloc) = j.alloc.take() {
            if spec.has_cost() {
                let per_node = f64::from(spec.gpus_per_node);
                j.cost += alloc
                    .parts(spec.gpus_per_node)
                    .map(|(n, g)| spec.cost(n) * f64::from(g) / per_node)
                    .sum::<f64>()
                    * seg
                    / 3600.0;
            }
            self.cluster.free.apply(spec, &alloc, j.ram_mb, false);
        }
        self.cluster.ends.remove(&(Ord64(j.expected_end), job));
        self.cluster.busy_gpus -= u64::from(j.gpus);
        let pos = j.running_pos;
        self.running.swap_remove(pos);
        if self.preempt {
            self.running_info.swap_remove(pos);
        }
        if let Some(&moved) = self.running.get(pos) {
            self.jobs.0[moved as usize].running_pos = pos;
        }
    }

    fn complete(&mut self, job: u32, now: f64) {
        self.stop(job, now);
        let j = &mut self.jobs.0[job as usize];
        j.end = now;
        self.done += 1;
        let ran = j.ran;
        self.policy
            .on_finish(&self.jobs.0[job as usize].info, ran, now);
    }

    fn preempt_job(&mut self, job: u32, now: f64) {
        self.stop(job, now);
        let j = &mut self.jobs.0[job as usize];
        j.preemptions += 1;
        self.preemptions += 1;
        let ran = j.ran;
        j.estimate = j.info.estimated_duration.map(|e| (e - ran).max(0.0));
        let attained = j.attained;
        self.policy
            .on_service(&self.jobs.0[job as usize].info, attained, now);
        self.enqueue(job, now);
    }

    /// GPU-seconds `job` has attained by `now` (snapped onto a threshold
    /// within rounding, so a crossing reports the threshold itself).
    fn attained(&self, job: u32, now: f64) -> f64 {
        let j = &self.jobs.0[job as usize];
        let a = j.attained + f64::from(j.gpus) * (now - j.seg_start);
        self.thresholds
            .iter()
            .copied()
            .find(|t| (t - a).abs() <= 1e-9 * t.max(1.0))
            .unwrap_or(a)
    }

    /// A running job crossed a service threshold.
    fn crossed(&mut self, job: u32, now: f64) {
        let attained = self.attained(job, now);
        self.policy
            .on_service(&self.jobs.0[job as usize].info, attained, now);
        self.schedule_threshold(job, now);
    }

    /// The next threshold crossing of running `job`, if before its end.
    fn schedule_threshold(&mut self, job: u32, now: f64) {
        if !self.preempt {
            return;
        }
        let attained = self.attained(job, now);
        let j = &self.jobs.0[job as usize];
        let g = f64::from(j.gpus.max(1));
        let ends = now + (j.duration - j.ran - (now - j.seg_start));
        let next = self
            .thresholds
            .iter()
            .map(|&t| now + (t - attained) / g)
            .find(|&at| at > now);
        if let Some(at) = next.filter(|&at| at < ends) {
            self.events
                .push(Reverse((Ord64(at), THRESHOLD, job, j.gen)));
        }
    }

    fn start(&mut self, job: u32, alloc: Alloc, now: f64) {
        let j = &mut self.jobs.0[job as usize];
        if let Some(e) = j.entry.take() {
            self.pending.remove(&e);
        }
        j.alloc = Some(alloc);
        j.seg_start = now;
        j.wait += now - j.pending_since;
        if j.first_start.is_nan() {
            j.first_start = now;
        }
        j.gen = j.gen.wrapping_add(1);
        let remaining = (j.duration - j.ran).max(0.0);
        if now + remaining > MAX_CLOCK_S && self.past_clock.is_none() {
            self.past_clock = Some((job, now + remaining));
        }
        self.events
            .push(Reverse((Ord64(now + remaining), COMPLETION, job, j.gen)));
        j.expected_end = j.estimate.map_or(f64::INFINITY, |d| now + d);
        self.cluster.ends.insert((Ord64(j.expected_end), job));
        self.cluster.busy_gpus += u64::from(j.gpus);
        j.running_pos = self.running.len();
        self.running.push(job);
        if self.preempt {
            self.running_info.push(RunningJob {
                job: j.info.clone(),
                started: now,
                holds: f64::from(j.gpus),
            });
        }
        self.policy.on_start(&self.jobs.0[job as usize].info, now);
        self.schedule_threshold(job, now);
    }

    /// One call of the shared admission pass on `needs` (in order).
    fn admit_chunk(&mut self, mode: Admission, needs: &[Need], now: f64) -> Pass<Alloc> {
        let order: Vec<usize> = (0..needs.len()).collect();
        let live = (!self.cluster.spec.flat).then(|| {
            Rc::new(RefCell::new(Live {
                free: self.cluster.free.clone(),
                ..Live::default()
            }))
        });
        let (pass, started) = {
            let mut view = View {
                spec: &self.cluster.spec,
                free: &mut self.cluster.free,
                ends: &self.cluster.ends,
                holdings: &self.jobs,
                now,
                started: Vec::new(),
                live,
            };
            let pass = admit(mode, &order, needs, &mut view, |n| n.estimate, now);
            (pass, view.started.len())
        };
        debug_assert_eq!(started, pass.started.len());
        for (i, alloc) in &pass.started {
            self.start(needs[*i].job, alloc.clone(), now);
        }
        pass
    }

    /// The plan the backfill pass would see now.
    fn plan_now(&self) -> ClusterPlan<'_, Jobs> {
        ClusterPlan::new(
            &self.cluster.spec,
            self.cluster.free.clone(),
            &self.cluster.ends,
            &self.jobs,
            Vec::new(),
        )
    }

    /// The skip test for the jobs after a blocked `head`; `None` when
    /// nothing more can start in this pass.
    fn filter(&self, mode: Admission, head: &Need, now: f64) -> Option<Fit> {
        let spec = &self.cluster.spec;
        let cap = self.cluster.free.capacity(spec);
        if cap == 0 {
            return None;
        }
        if mode != Admission::Backfill {
            return Some(Fit {
                cap,
                backfill: None,
            });
        }
        let (start, at_start) = shadow(self.plan_now(), head, now)?;
        let room = |g: u32| {
            let n = Need {
                job: u32::MAX,
                gpus: g,
                ram_mb: 0.0,
                estimate: None,
            };
            let mut p = at_start.clone();
            p.fits(&n) && {
                p.hold(&n);
                p.fits(head)
            }
        };
        let largest = if !spec.flat {
            // On nodes, room depends on where a job lands now, which
            // changes as the pass places jobs; but any job holds its GPUs
            // somewhere, so it leaves room only if the GPUs free at the
            // head's start, less its own, still cover what the head takes.
            let free_then: u64 = at_start.free.gpus.iter().map(|&g| u64::from(g)).sum();
            let per = spec.gpus_per_node;
            let head_takes = if head.gpus <= per {
                head.gpus
            } else {
                head.gpus.div_ceil(per) * per
            };
            u32::try_from(free_then.saturating_sub(u64::from(head_takes))).unwrap_or(u32::MAX)
        } else {
            // Monotone in the size: bisect.
            let (mut lo, mut hi) = (0u32, cap);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if room(mid) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            lo
        };
        Some(Fit {
            cap,
            backfill: Some((now, start, largest)),
        })
    }

    /// Follows the policy's preemption advice for `head`, if stopping its
    /// victims lets it fit. True when something was preempted.
    fn try_preempt(&mut self, head: u32, now: f64) -> bool {
        let spec = &self.cluster.spec;
        let need = self.need(head);
        let cap = self.cluster.free.capacity(spec);
        let needed = f64::from(need.gpus.saturating_sub(cap).max(1));
        let victims = self.policy.should_preempt(
            &self.running_info,
            &self.jobs.0[head as usize].info,
            needed,
        );
        if victims.is_empty() {
            return false;
        }
        let mut free = self.cluster.free.clone();
        let mut chosen = Vec::with_capacity(victims.len());
        for v in victims {
            let Ok(v) = u32::try_from(v) else { continue };
            if let Some(j) = self.jobs.0.get(v as usize) {
                if let Some(a) = &j.alloc {
                    free.apply(spec, a, j.ram_mb, false);
                    chosen.push(v);
                }
            }
        }
        if chosen.is_empty() || free.choose(spec, &need).is_none() {
            return false;
        }
        for v in chosen {
            self.preempt_job(v, now);
        }
        true
    }

    fn rekey(&mut self, now: f64) {
        let ids: Vec<u32> = self.pending.iter().map(|e| e.job).collect();
        let entries: Vec<Entry> = ids
            .into_iter()
            .map(|j| {
                let e = self.entry(j, now);
                self.jobs.0[j as usize].entry = Some(e);
                e
            })
            .collect();
        self.pending.rebuild(entries);
    }

    fn chunk(&mut self, after: Option<Entry>, filter: Option<&Fit>) -> Vec<Need> {
        let mut buf = std::mem::take(&mut self.buf);
        self.pending.next_matching(
            after.as_ref(),
            CHUNK,
            filter.map(|f| f as &dyn Filter),
            &mut buf,
        );
        let needs = buf.iter().map(|e| self.need(e.job)).collect();
        self.buf = buf;
        needs
    }

    /// A re-packing policy's step at `now`: stops and starts what its plan
    /// says (a job it starts that cannot be placed on the nodes waits) and
    /// wakes up for its next change.
    fn repack(&mut self, now: f64) {
        let capacity = self.cluster.spec.total_gpus();
        let Some(plan) = self.policy.as_repack().map(|r| r.repack(now, capacity)) else {
            return;
        };
        for id in plan.stop {
            let running = u32::try_from(id).ok().filter(|&j| {
                self.jobs
                    .0
                    .get(j as usize)
                    .is_some_and(|s| s.alloc.is_some())
            });
            if let Some(j) = running {
                self.preempt_job(j, now);
            }
        }
        for id in plan.start {
            let waiting = u32::try_from(id).ok().filter(|&j| {
                self.jobs
                    .0
                    .get(j as usize)
                    .is_some_and(|s| s.alloc.is_none() && s.end.is_nan())
            });
            let Some(j) = waiting else { continue };
            let need = self.need(j);
            let spec = &self.cluster.spec;
            match self.cluster.free.choose(spec, &need) {
                Some(alloc) => {
                    let ram = self.jobs.0[j as usize].ram_mb;
                    self.cluster.free.apply(spec, &alloc, ram, true);
                    self.start(j, alloc, now);
                }
                None => {
                    if let Some(r) = self.policy.as_repack() {
                        r.unplaced(id);
                    }
                }
            }
        }
        self.wake = self.wake.wrapping_add(1);
        if let Some(at) = plan.next.filter(|t| t.is_finite() && *t > now) {
            self.events
                .push(Reverse((Ord64(at), WAKE, u32::MAX, self.wake)));
        }
    }

    /// The admission pass at `now`.
    fn pass(&mut self, now: f64) {
        let epoch = self.policy.epoch();
        if self.policy.time_varying() || epoch != self.epoch {
            self.epoch = epoch;
            self.key_now = now;
            self.rekey(now);
        }
        let mode = self.policy.admission();
        if self.reference {
            let ids: Vec<u32> = self.pending.iter().map(|e| e.job).collect();
            let infos: Vec<JobInfo> = ids
                .iter()
                .map(|&j| self.jobs.0[j as usize].info.clone())
                .collect();
            let order = crate::policy::order(&*self.policy, &infos, &Ctx { now });
            let needs: Vec<Need> = order.into_iter().map(|i| self.need(ids[i])).collect();
            let pass = self.admit_chunk(mode, &needs, now);
            self.note_head(&needs, &pass);
            return;
        }
        let first = if self.preempt {
            Admission::Strict
        } else {
            mode
        };
        let mut preempted_for: Option<u32> = None;
        // In order from the front until the head blocks.
        let (head, mut cursor) = loop {
            let needs = self.chunk(None, None);
            let Some(last) = self.buf.last().copied() else {
                return;
            };
            let pass = self.admit_chunk(first, &needs, now);
            self.note_head(&needs, &pass);
            let Some(h) = pass.blocked_head else {
                continue;
            };
            let head = needs[h];
            let head_entry = self.jobs.0[head.job as usize].entry;
            if self.preempt && preempted_for != Some(head.job) && self.try_preempt(head.job, now) {
                preempted_for = Some(head.job);
                continue;
            }
            if mode == Admission::Strict {
                return;
            }
            if first != mode {
                break (head, head_entry);
            }
            if mode == Admission::Backfill && pass.head_start.is_none() {
                return;
            }
            break (head, Some(last));
        };
        // After the head: only jobs that may start now.
        loop {
            let Some(filter) = self.filter(mode, &head, now) else {
                return;
            };
            let mut needs = vec![head];
            needs.extend(self.chunk(cursor, Some(&filter)));
            let Some(last) = self.buf.last().copied() else {
                return;
            };
            cursor = Some(last);
            let pass = self.admit_chunk(mode, &needs, now);
            self.note_head(&needs, &pass);
            if mode == Admission::Backfill && pass.head_start.is_none() {
                return;
            }
        }
    }

    fn note_head(&mut self, needs: &[Need], pass: &Pass<Alloc>) {
        if let (Some(heads), Some(h), Some(start)) =
            (self.heads.as_mut(), pass.blocked_head, pass.head_start)
        {
            heads.push((needs[h].job, start));
        }
    }
}

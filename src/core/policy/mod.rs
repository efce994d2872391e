//! Scheduling policies: who goes next among waiting jobs.
//!
//! One policy model serves every place that orders work: the waiters of the
//! reservation queue, the job scheduler, the batch API and the simulator.
//! A policy gives each pending job a sort key (lower goes first; ties by
//! submission time, then id, so every order is deterministic) and says how
//! the order is applied ([`Admission`]): strictly (nobody passes the head),
//! best effort (anyone who fits may go, in order) or EASY backfill (a later
//! job may go only if it cannot delay the head). The pass that applies the
//! order to resources is [`admit::admit`], generic over [`admit::Placement`].

pub mod admit;
mod builtin;
pub mod fair_share;
mod las;
pub mod preempt;
mod spec;

use std::fmt;
use std::sync::Arc;

pub use builtin::{
    Backfill, BestEffortFifo, Deadline, Fifo, Multifactor, MultifactorWeights, Priority,
    RoundRobin, ShortestJobFirst,
};
pub use fair_share::{FairShare, ShareKey, UsageBook};
pub use las::Las;
pub use spec::{canonical_name, suggest, PolicySpec};

/// A job as a policy sees it (a waiter of the reservation queue, a job of
/// the job scheduler, a row of a simulated trace).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobInfo {
    pub id: u64,
    /// The plugin's (or job's) name; SJF history is kept per name.
    pub name: Arc<str>,
    /// 0–100, higher is more important (50 = NORMAL).
    pub priority: f64,
    pub user: Option<Arc<str>>,
    pub project: Option<Arc<str>>,
    /// Clock seconds when the job was submitted (its place in FIFO order).
    pub submitted: f64,
    /// Absolute clock seconds by which the job should have started... and
    /// finished (the deadline policy boosts as it nears).
    pub deadline: Option<f64>,
    /// Seconds the job is expected to run (declared).
    pub estimated_duration: Option<f64>,
    /// Size for the size factor and SJF ties: GPUs asked for (at least 1).
    pub size: f64,
}

impl JobInfo {
    /// A job with only a name and a submission time (the rest default).
    pub fn new(id: u64, name: &str, submitted: f64) -> Self {
        Self {
            id,
            name: Arc::from(name),
            priority: DEFAULT_PRIORITY,
            user: None,
            project: None,
            submitted,
            deadline: None,
            estimated_duration: None,
            size: 1.0,
        }
    }
}

/// The default priority (NORMAL).
pub const DEFAULT_PRIORITY: f64 = 50.0;

/// Named priorities and their numbers on the 0–100 scale.
pub const PRIORITY_NAMES: [(&str, f64); 5] = [
    ("CRITICAL", 100.0),
    ("HIGH", 75.0),
    ("NORMAL", 50.0),
    ("LOW", 25.0),
    ("BACKGROUND", 0.0),
];

/// Parses a priority name (case-insensitive) to its number.
pub fn priority_from_name(name: &str) -> Option<f64> {
    PRIORITY_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, v)| v)
}

/// How an order is applied to the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nobody passes the first job in order: it starts or everyone waits.
    Strict,
    /// In order, every job that fits now starts (Kueue's BestEffortFIFO).
    BestEffort,
    /// EASY backfill: the head gets the earliest start the running jobs'
    /// expected ends allow; a later job starts now only if that cannot
    /// delay the head.
    Backfill,
}

/// What a policy may consult besides the jobs.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: f64,
}

/// A running job, for preemption advice.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub job: JobInfo,
    pub started: f64,
    /// What it holds, in the units the caller compares (e.g. GPUs).
    pub holds: f64,
}

/// Orders pending jobs. Implementations document their rule.
pub trait Policy: Send + Sync + fmt::Debug {
    /// The policy's name (`"fifo"`, `"priority"`, ...).
    fn name(&self) -> &str;

    fn admission(&self) -> Admission {
        Admission::Strict
    }

    /// Sort key: lower goes first. Ties are broken by (submitted, id).
    fn key(&self, job: &JobInfo, ctx: &Ctx) -> f64;

    /// Whether keys change with `ctx.now` alone (then every decision
    /// recomputes them; otherwise they change only when [`Policy::epoch`] does).
    fn time_varying(&self) -> bool {
        false
    }

    /// Bumped whenever the policy's own state changes the keys of jobs
    /// already waiting (usage charged, a user served, history learned).
    fn epoch(&self) -> u64 {
        0
    }

    /// What `job`'s key depends on besides the job, for a policy whose
    /// state changes keys ([`Policy::epoch`]), so that the job table
    /// re-keys only what a change can move (see [`KeyScope`]). The default,
    /// [`KeyScope::Anything`], re-keys every waiting job at each change.
    fn key_scope(&self, _job: &JobInfo) -> KeyScope {
        KeyScope::Anything
    }

    /// For a time-varying policy, asked at `now`: `(floor, until)`, a value
    /// `job`'s key does not go below at any time up to `until` (inclusive;
    /// `f64::INFINITY`: ever), in any state of the policy (compared as keys
    /// are, with `f64::total_cmp`); asked again once a pass is later than
    /// `until`. The job table keeps waiting jobs sorted by it and computes
    /// exact keys only for those whose floor is below the keys it has
    /// already found, so the tighter the floor, the less a pass looks at.
    /// `None` (the default): no bound (every job is looked at).
    fn key_floor(&self, _job: &JobInfo, _now: f64) -> Option<(f64, f64)> {
        None
    }

    /// A job was started (round robin remembers whom it served).
    fn on_start(&mut self, _job: &JobInfo, _now: f64) {}

    /// A job ended after `ran_s` seconds holding `size` (usage, history).
    fn on_finish(&mut self, _job: &JobInfo, _ran_s: f64, _now: f64) {}

    /// Service thresholds (GPU-seconds attained) at which a job's key
    /// changes while it runs (least-attained-service queues). A preemptive
    /// executor (the simulator) reports each crossing through
    /// [`Policy::on_service`] and re-evaluates then. Empty: keys do not
    /// depend on service.
    fn service_thresholds(&self) -> &[f64] {
        &[]
    }

    /// `job` has attained `gpu_s` GPU-seconds of service so far (reported
    /// when it is preempted or crosses a [`Policy::service_thresholds`]).
    fn on_service(&mut self, _job: &JobInfo, _gpu_s: f64, _now: f64) {}

    /// Why a job is where it is, in the policy's terms.
    fn describe(&self, job: &JobInfo, ctx: &Ctx) -> String {
        let _ = (job, ctx);
        format!("{} order", self.name())
    }

    /// Preemption advice: the running jobs to stop (smallest set first) so
    /// that `new` can start, given it needs `needed` more units than are
    /// free. Empty: no preemption. Policies without a notion of importance
    /// never preempt.
    fn should_preempt(&self, _running: &[RunningJob], _new: &JobInfo, _needed: f64) -> Vec<u64> {
        Vec::new()
    }

    /// For a policy decided outside the core ([`External`]): the job the
    /// outside chose to go next. Other policies ignore it.
    fn set_head(&mut self, _id: Option<u64>) {}

    /// A policy that re-packs the whole cluster at every event (Tiresias'
    /// LAS) gives the simulator its [`Repack`] side; `None` (the default):
    /// the simulator runs admission passes over the pending order.
    fn as_repack(&mut self) -> Option<&mut dyn Repack> {
        None
    }
}

/// What a job's key depends on besides the job itself ([`Policy::key_scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// Anything of the policy's state: every state change may move it.
    Anything,
    /// Only the job (and the policy's fixed settings): never re-keyed.
    Fixed,
    /// The same key as every other job of the named group (an account, a
    /// module), which only the policy's state for groups changes: waiting
    /// jobs of a group keep their relative order (arrival), and a state
    /// change re-keys one entry per group, not every job.
    Shared(Arc<str>),
}

/// What a re-pack decided: jobs to stop, jobs to start (in packing order)
/// and when the policy next changes its mind on its own (a demotion or a
/// promotion), if ever.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepackPlan {
    pub stop: Vec<u64>,
    pub start: Vec<u64>,
    pub next: Option<f64>,
}

/// A policy that decides, at every event, which of all active jobs (running
/// or waiting) hold the GPUs. The executor reports arrivals and ends
/// ([`Policy::on_finish`]), calls [`Repack::repack`] once per event after
/// them, carries the plan out, and calls it again at `next`.
pub trait Repack {
    /// Job `id` asking for `gpus` GPUs arrived at `now`.
    fn arrive(&mut self, id: u64, gpus: u32, now: f64);
    /// Re-packs at `now` on `capacity` GPUs (the cluster's total).
    fn repack(&mut self, now: f64, capacity: u32) -> RepackPlan;
    /// A job the plan started could not be placed (fragmented nodes): it
    /// waits instead.
    fn unplaced(&mut self, id: u64);
}

/// A policy whose choice is made outside the core (a Python object's
/// `select_next_job`): the chosen job goes first, the rest in arrival
/// order, strictly.
#[derive(Debug, Clone)]
pub struct External {
    pub name: String,
    head: Option<u64>,
}

impl External {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            head: None,
        }
    }
}

impl Policy for External {
    fn name(&self) -> &str {
        &self.name
    }
    fn key(&self, job: &JobInfo, _ctx: &Ctx) -> f64 {
        if Some(job.id) == self.head {
            f64::NEG_INFINITY
        } else {
            job.submitted
        }
    }
    fn time_varying(&self) -> bool {
        true
    }
    fn set_head(&mut self, id: Option<u64>) {
        self.head = id;
    }
    fn describe(&self, job: &JobInfo, _ctx: &Ctx) -> String {
        if Some(job.id) == self.head {
            format!("chosen next by {}", self.name)
        } else {
            format!(
                "not chosen by {} (arrival order after its choice)",
                self.name
            )
        }
    }
}

/// Total order of two jobs under `policy` at `ctx`.
pub fn compare(policy: &dyn Policy, a: &JobInfo, b: &JobInfo, ctx: &Ctx) -> std::cmp::Ordering {
    policy
        .key(a, ctx)
        .total_cmp(&policy.key(b, ctx))
        .then(a.submitted.total_cmp(&b.submitted))
        .then(a.id.cmp(&b.id))
}

/// Indices of `jobs` in policy order.
pub fn order(policy: &dyn Policy, jobs: &[JobInfo], ctx: &Ctx) -> Vec<usize> {
    let mut keyed: Vec<(f64, f64, u64, usize)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (policy.key(j, ctx), j.submitted, j.id, i))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    keyed.into_iter().map(|k| k.3).collect()
}

/// The index of the job that goes next (one pass, no sort).
pub fn select_next(policy: &dyn Policy, jobs: &[JobInfo], ctx: &Ctx) -> Option<usize> {
    first_of(policy, jobs.iter().enumerate(), ctx)
}

/// The key of the item whose job goes first under `policy` (one pass, no
/// sort; ties by submission time, then id).
pub fn first_of<'a, K: Copy>(
    policy: &dyn Policy,
    items: impl IntoIterator<Item = (K, &'a JobInfo)>,
    ctx: &Ctx,
) -> Option<K> {
    let mut best: Option<(f64, f64, u64, K)> = None;
    for (k, j) in items {
        let cand = (policy.key(j, ctx), j.submitted, j.id, k);
        let better = best.as_ref().is_none_or(|b| {
            cand.0
                .total_cmp(&b.0)
                .then(cand.1.total_cmp(&b.1))
                .then(cand.2.cmp(&b.2))
                .is_lt()
        });
        if better {
            best = Some(cand);
        }
    }
    best.map(|b| b.3)
}

/// A policy by name, with default settings. `usage` backs `fair_share`
/// and `multifactor` (a fresh in-memory book when `None`).
pub fn by_name(name: &str, usage: Option<UsageBook>) -> Option<Box<dyn Policy>> {
    match (name, usage) {
        ("fair_share", Some(u)) => Some(Box::new(FairShare::new(u, ShareKey::User))),
        ("multifactor", Some(u)) => {
            Some(Box::new(Multifactor::new(u, MultifactorWeights::default())))
        }
        (name, _) => PolicySpec::named(name).build(0.0).ok(),
    }
}

/// Every built-in policy name, in documentation order.
pub const NAMES: [&str; 10] = [
    "fifo",
    "best_effort_fifo",
    "priority",
    "fair_share",
    "deadline",
    "sjf",
    "round_robin",
    "backfill",
    "multifactor",
    "las",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_report_themselves() {
        for name in NAMES {
            let p = by_name(name, None).expect(name);
            assert_eq!(p.name(), name);
        }
        assert!(by_name("lottery", None).is_none());
    }

    #[test]
    fn priority_names_map_to_the_documented_numbers() {
        assert_eq!(priority_from_name("critical"), Some(100.0));
        assert_eq!(priority_from_name("NORMAL"), Some(50.0));
        assert_eq!(priority_from_name("BACKGROUND"), Some(0.0));
        assert_eq!(priority_from_name("urgent"), None);
    }

    #[test]
    fn select_next_agrees_with_order() {
        let jobs: Vec<JobInfo> = (0..50)
            .map(|i| {
                let mut j = JobInfo::new(i, "p", (i % 7) as f64);
                j.priority = ((i * 37) % 101) as f64;
                j
            })
            .collect();
        let ctx = Ctx { now: 100.0 };
        for name in NAMES {
            let p = by_name(name, None).expect(name);
            assert_eq!(
                select_next(p.as_ref(), &jobs, &ctx),
                order(p.as_ref(), &jobs, &ctx).first().copied(),
                "{name}"
            );
        }
    }
}

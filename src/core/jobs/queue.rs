//! The job table: records, validated transitions, per-queue counters and
//! the pending set kept in the policy's order.
//!
//! Order: queues' priorities first (a tier, as Slurm's partition
//! `PriorityTier`), then the policy's [`Policy::key`] with the same
//! tie-break as [`crate::policy::compare`] (submitted, then id). A pass
//! reads the pending set lazily in that order and stops early, so what it
//! costs must not grow with the queue. Three layouts keep it so:
//!
//! - keys that do not move with time ([`KeyScope::Fixed`], or any key of a
//!   policy whose [`Policy::epoch`] never changes): a sorted index (submit
//!   and dispatch are O(log n));
//! - keys shared by a group ([`KeyScope::Shared`]: an account's turn or
//!   fair-share factor, a module's measured mean): each (tier, group) is a
//!   sub-queue in arrival order, and the groups are ordered by their key and
//!   head; a state change ([`Policy::epoch`]) re-keys one entry per group,
//!   and the pass merges the sub-queues lazily;
//! - keys that move with time ([`Policy::time_varying`]): sorted by the
//!   policy's [`Policy::key_floor`] (asked again only once it no longer
//!   holds: a deadline job's window opening); the pass computes
//!   exact keys in floor order and yields a job once no job not yet looked
//!   at can have a lower key (its floor is above), so the order is exactly
//!   the full re-sort's.
//!
//! Keys of a policy whose state changes them in any other way
//! ([`KeyScope::Anything`]) are recomputed for every waiting job at each
//! change, as before.

use std::cmp::Ordering;
use std::cmp::Reverse;
use std::collections::{btree_set, BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::journal::{unix_now, HistoryRow, Journal, JournalOwner, Row, ID_BLOCK};
use super::{
    allowed, checked_name, checked_number, limits, rerunnable, Durability, Job, JobError, JobSpec,
    JobState, Machine, Resources, Retention,
};
use crate::policy::admit::{admit_each, Placement, Plan};
use crate::policy::{Ctx, JobInfo, KeyScope, Policy, RunningJob};

/// The default queue's name.
pub const DEFAULT_QUEUE: &str = "default";

/// A pending job's place: (−queue priority, policy key, submitted, id).
#[derive(Debug, Clone, Copy)]
struct Key {
    tier: f64,
    key: f64,
    submitted: f64,
    id: u64,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        self.tier
            .total_cmp(&o.tier)
            .then(self.key.total_cmp(&o.key))
            .then(self.submitted.total_cmp(&o.submitted))
            .then(self.id.cmp(&o.id))
    }
}

/// Where a pending job is kept.
#[derive(Debug, Clone)]
enum Slot {
    /// In `pending` under this key (exact, or its floor when time-varying);
    /// whether any state change may move it (counted in `unscoped`); until
    /// when the floor holds (in `expiring` when finite).
    Sorted(Key, bool, f64),
    /// In the group's sub-queue, under this key (the group's key unused).
    Grouped(Key, Arc<str>),
}

/// A (tier, group) sub-queue: jobs that share one key, in arrival order.
#[derive(Debug)]
struct Group {
    key: f64,
    /// `Key`s with `key` 0 (they order by submitted, then id).
    members: BTreeSet<Key>,
}

type GroupId = (u64, Arc<str>);

fn group_id(tier: f64, name: &Arc<str>) -> GroupId {
    ((tier + 0.0).to_bits(), name.clone())
}

impl Group {
    /// The group's first job's place in the whole order.
    fn head(&self) -> Option<Key> {
        self.members.first().map(|m| Key {
            key: self.key,
            ..*m
        })
    }
}

/// An entry of the pass's merge: a job's exact place, and for a group's
/// job the rest of its sub-queue (with the group's key).
struct Next<'a> {
    key: Key,
    rest: Option<(btree_set::Iter<'a, Key>, f64)>,
}

impl PartialEq for Next<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Next<'_> {}
impl PartialOrd for Next<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Next<'_> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.cmp(&o.key)
    }
}

/// The pending set in exact order, read lazily: a merge of the sorted
/// index (exact keys, or floors whose exact keys are computed as they are
/// reached) and the groups' sub-queues (a group is opened when its head is
/// reached). An entry is yielded once nothing not yet opened can come
/// before it: every unopened entry's place is at or above its bound (a
/// floor, a group's head), and the bound shares the tie-break fields.
struct Ordered<'a> {
    policy: &'a dyn Policy,
    jobs: &'a HashMap<u64, Job>,
    ctx: Ctx,
    floored: bool,
    sorted: std::iter::Peekable<btree_set::Iter<'a, Key>>,
    heads: std::iter::Peekable<btree_set::Iter<'a, (Key, Arc<str>)>>,
    groups: &'a HashMap<GroupId, Group>,
    heap: BinaryHeap<Reverse<Next<'a>>>,
}

impl Iterator for Ordered<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let sorted = self.sorted.peek().copied().copied();
            let head = self.heads.peek().map(|h| h.0);
            let bound = match (sorted, head) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ready = match (self.heap.peek(), bound) {
                (Some(Reverse(top)), Some(b)) => top.key < b,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if ready {
                let Reverse(mut top) = self.heap.pop()?;
                let id = top.key.id;
                if let Some((mut rest, key)) = top.rest.take() {
                    if let Some(m) = rest.next() {
                        self.heap.push(Reverse(Next {
                            key: Key { key, ..*m },
                            rest: Some((rest, key)),
                        }));
                    }
                }
                return Some(id);
            }
            let b = bound?;
            if sorted == Some(b) {
                self.sorted.next();
                let key = if self.floored {
                    match self.jobs.get(&b.id) {
                        Some(job) => Key {
                            key: self.policy.key(&job.info, &self.ctx),
                            ..b
                        },
                        None => continue,
                    }
                } else {
                    b
                };
                self.heap.push(Reverse(Next { key, rest: None }));
            } else {
                let Some((h, name)) = self.heads.next() else {
                    continue;
                };
                let Some(g) = self.groups.get(&group_id(h.tier, name)) else {
                    continue;
                };
                let mut rest = g.members.iter();
                if rest.next().is_some() {
                    self.heap.push(Reverse(Next {
                        key: *h,
                        rest: Some((rest, g.key)),
                    }));
                }
            }
        }
    }
}

/// A named queue's settings and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub name: Arc<str>,
    /// Higher goes first (every job of a higher queue before any lower one).
    pub priority: i64,
    pub max_concurrent_jobs: Option<u32>,
    /// Running or paused (holding resources).
    pub running_jobs: u32,
    pub pending_jobs: u32,
    /// Jobs ever submitted to it (in this journal).
    pub total_jobs: u64,
}

/// What the machine has, for the pass (CPU cores are accounted here; GPUs
/// and memory by the front end's reservation, and here only for planning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu_cores: f64,
    pub gpus: u32,
    pub memory_mb: f64,
}

/// What one dispatch pass did.
#[derive(Debug)]
pub struct PassOutcome<H, E> {
    /// Jobs started (now RUNNING), with what the front end's `take` gave.
    pub started: Vec<(u64, H)>,
    /// The first job in order that could not start.
    pub blocked: Option<u64>,
    /// Jobs passed over (queue at its limit, refused by quota), with why.
    pub skipped: Vec<(u64, String)>,
    /// Backfill: when the blocked head is planned to start.
    pub head_start: Option<f64>,
    /// `take` or `eligible` failed: the pass stopped there (what was
    /// taken before is in `started`).
    pub error: Option<E>,
}

/// How a job went back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    Preempted,
    Retried,
    Interrupted,
}

/// Counters since the table was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub submitted: u64,
    pub started: u64,
    pub preempted: u64,
    pub retried: u64,
    pub interrupted: u64,
}

/// What recovery from a journal did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Waiting again, in their order.
    pub queued: Vec<u64>,
    /// Were running when the process ended; queued again.
    pub requeued: Vec<u64>,
    /// Were running and cannot be rerun: failed, with the reason.
    pub failed: Vec<u64>,
    /// Were running and their process still runs: kept RUNNING (or
    /// PAUSED), reattached (`recovery` adopt mode).
    pub adopted: Vec<u64>,
}

/// Jobs of one scheduler.
#[derive(Debug)]
pub struct JobQueue {
    policy: Box<dyn Policy>,
    jobs: HashMap<u64, Job>,
    keys: HashMap<u64, Slot>,
    pending: BTreeSet<Key>,
    /// Jobs with a shared key, by (tier, group).
    groups: HashMap<GroupId, Group>,
    /// Each group's head (its place in the order) and name.
    heads: BTreeSet<(Key, Arc<str>)>,
    /// Pending jobs whose key any state change may move.
    unscoped: usize,
    /// Whether `pending` holds floors (a time-varying policy), not keys.
    floored: bool,
    /// Floors that hold only until a time (in `tier`), soonest first.
    expiring: BTreeSet<Key>,
    /// Clock time the keys of a state-keyed policy were computed at.
    keyed_at: f64,
    /// CPU cores asked for by pending jobs (bits of the non-negative
    /// figure, which order as the numbers do) → how many: a pass stops
    /// once the free cores are fewer than the smallest need.
    pending_cpu: BTreeMap<u64, u32>,
    keyed_epoch: u64,
    queues: BTreeMap<Arc<str>, QueueStats>,
    names: HashSet<Arc<str>>,
    counts: [u64; 6],
    next_id: u64,
    journal: Option<Journal>,
    /// Unix seconds minus clock seconds (times are journaled in Unix seconds).
    offset: f64,
    counters: Counters,
    active_cpu: f64,
    active_gpus: u32,
    active_mem: f64,
    /// Running and paused jobs (a pass looks at these, not at every job).
    active_ids: BTreeSet<u64>,
    durability: Durability,
    retention: Retention,
    /// Finished jobs, oldest end first (retention drops from the front).
    finished: VecDeque<u64>,
    /// Finished jobs dropped by retention, not yet told to the front end.
    pruned: Vec<u64>,
    /// What the machine has (never-fit refusals at submit).
    machine: Machine,
    /// Ids below this are durably reserved (0: no block yet).
    id_reserved: u64,
    /// Inside [`JobQueue::dispatch_durable`]: commits wait for its end.
    in_pass: bool,
}

fn state_index(s: JobState) -> usize {
    s as usize
}

fn finite_opt(field: &str, v: Option<f64>, max: f64) -> Result<Option<f64>, JobError> {
    v.map(|x| checked_number(field, x, max)).transpose()
}

impl JobQueue {
    /// A table ordered by `policy`, journaled when `journal` is given.
    pub fn new(policy: Box<dyn Policy>, journal: Option<Journal>) -> Self {
        let keyed_epoch = policy.epoch();
        let floored = policy.time_varying();
        let mut queues = BTreeMap::new();
        let default: Arc<str> = Arc::from(DEFAULT_QUEUE);
        queues.insert(
            default.clone(),
            QueueStats {
                name: default,
                priority: 0,
                max_concurrent_jobs: None,
                running_jobs: 0,
                pending_jobs: 0,
                total_jobs: 0,
            },
        );
        Self {
            policy,
            jobs: HashMap::new(),
            keys: HashMap::new(),
            pending: BTreeSet::new(),
            groups: HashMap::new(),
            heads: BTreeSet::new(),
            unscoped: 0,
            floored,
            expiring: BTreeSet::new(),
            keyed_at: 0.0,
            pending_cpu: BTreeMap::new(),
            keyed_epoch,
            queues,
            names: HashSet::new(),
            counts: [0; 6],
            next_id: 1,
            journal,
            offset: 0.0,
            counters: Counters::default(),
            active_cpu: 0.0,
            active_gpus: 0,
            active_mem: 0.0,
            active_ids: BTreeSet::new(),
            durability: Durability::default(),
            retention: Retention::DEFAULT,
            finished: VecDeque::new(),
            pruned: Vec::new(),
            machine: Machine::default(),
            id_reserved: 0,
            in_pass: false,
        }
    }

    /// When writes are committed (see [`Durability`]).
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many finished jobs are kept (applied at once).
    pub fn set_retention(&mut self, retention: Retention, now: f64) -> Result<(), JobError> {
        self.retention = retention.checked()?;
        self.prune(now)?;
        Ok(())
    }

    /// What the machine has: later submissions that can never fit it are
    /// refused (see [`JobQueue::refuse_never_fit`] for those already queued).
    pub fn set_machine(&mut self, machine: Machine) {
        self.machine = machine;
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Fails the queued jobs that can never fit the machine (it became
    /// known after they were submitted), each with the reason.
    pub fn refuse_never_fit(&mut self, now: f64) -> Result<Vec<(u64, String)>, JobError> {
        let doomed: Vec<(u64, String)> = self
            .keys
            .keys()
            .filter_map(|id| {
                let job = self.jobs.get(id)?;
                job.resources
                    .never_fits(&self.machine)
                    .map(|e| (*id, e.to_string()))
            })
            .collect();
        let mut out = Vec::new();
        for (id, why) in doomed {
            self.transition(id, JobState::Failed, "never_fits", Some(&why), now)?;
            out.push((id, why));
        }
        Ok(out)
    }

    /// Commits now under [`Durability::Sync`] (outside a pass).
    fn durable(&mut self) -> Result<(), JobError> {
        if self.durability == Durability::Sync && !self.in_pass {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// [`JobQueue::dispatch`], its transitions committed together at the end
    /// under [`Durability::Sync`] (the second value: that commit's outcome).
    pub fn dispatch_durable<H, E>(
        &mut self,
        now: f64,
        capacity: Capacity,
        eligible: impl FnMut(&Job) -> Result<Option<String>, E>,
        take: impl FnMut(&Job) -> Result<Option<H>, E>,
    ) -> (PassOutcome<H, E>, Result<(), JobError>) {
        self.in_pass = true;
        let outcome = self.dispatch(now, capacity, eligible, take);
        self.in_pass = false;
        let committed = self.durable();
        (outcome, committed)
    }

    /// Drops finished jobs beyond the retention (count, then age at `now`),
    /// from memory and the journal; their ids.
    pub fn prune(&mut self, now: f64) -> Result<Vec<u64>, JobError> {
        let mut dropped = Vec::new();
        while let Some(&id) = self.finished.front() {
            let Some(job) = self.jobs.get(&id) else {
                self.finished.pop_front();
                continue;
            };
            if !job.state.is_terminal() {
                self.finished.pop_front();
                continue;
            }
            let over = self
                .retention
                .max_jobs
                .is_some_and(|m| self.finished.len() > m);
            let old = self
                .retention
                .max_age_s
                .is_some_and(|a| job.ended.is_some_and(|e| now - e > a));
            if !(over || old) {
                break;
            }
            self.finished.pop_front();
            let state = job.state;
            self.jobs.remove(&id);
            self.counts[state_index(state)] = self.counts[state_index(state)].saturating_sub(1);
            if let Some(j) = self.journal.as_mut() {
                j.delete(id)?;
            }
            dropped.push(id);
        }
        self.pruned.extend_from_slice(&dropped);
        Ok(dropped)
    }

    /// Ids dropped by retention since the last call.
    pub fn take_pruned(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.pruned)
    }

    /// Commits what is buffered and gives the journal up (its ownership
    /// with it); journaled writes after this are refused.
    pub fn close(&mut self) -> Result<(), JobError> {
        self.give_back_ids();
        match self.journal.as_mut() {
            Some(j) => j.close(),
            None => Ok(()),
        }
    }

    fn give_back_ids(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            if self.id_reserved > 0 && j.owned() && j.give_back_ids(self.next_id).is_ok() {
                self.id_reserved = 0;
            }
        }
    }

    /// The dead owner whose journal this table took over at open.
    pub fn took_over(&self) -> Option<&JournalOwner> {
        self.journal.as_ref().and_then(Journal::took_over)
    }

    /// Sets how clock seconds map to Unix seconds (`unix − clock now`),
    /// before any submission or recovery.
    pub fn set_clock(&mut self, now: f64) {
        self.offset = unix_now() - now;
    }

    pub fn policy(&self) -> &dyn Policy {
        self.policy.as_ref()
    }

    pub fn journal_path(&self) -> Option<String> {
        self.journal
            .as_ref()
            .map(|j| j.path().display().to_string())
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    /// Adds (or changes) a named queue.
    pub fn add_queue(
        &mut self,
        name: &str,
        priority: i64,
        max_concurrent_jobs: Option<u32>,
    ) -> Result<(), JobError> {
        self.add_queue_in_memory(name, priority, max_concurrent_jobs)?;
        if let Some(j) = self.journal.as_mut() {
            j.queue(name, priority, max_concurrent_jobs)?;
        }
        self.durable()
    }

    fn add_queue_in_memory(
        &mut self,
        name: &str,
        priority: i64,
        max_concurrent_jobs: Option<u32>,
    ) -> Result<(), JobError> {
        if name.is_empty() {
            return Err(JobError::Invalid {
                field: "name".into(),
                message: "a queue needs a non-empty name".into(),
            });
        }
        checked_name("name", name)?;
        let key = self.intern(name);
        let q = self.queues.entry(key.clone()).or_insert(QueueStats {
            name: key,
            priority,
            max_concurrent_jobs,
            running_jobs: 0,
            pending_jobs: 0,
            total_jobs: 0,
        });
        let retier = q.priority != priority;
        q.priority = priority;
        q.max_concurrent_jobs = max_concurrent_jobs;
        if retier {
            self.rekey_all(0.0);
        }
        Ok(())
    }

    pub fn queues(&self) -> impl Iterator<Item = &QueueStats> {
        self.queues.values()
    }

    fn tier_of(&self, job: &Job) -> f64 {
        self.queues
            .get(&job.queue)
            .map_or(0.0, |q| -(q.priority as f64))
    }

    fn key_of(&self, job: &Job, now: f64) -> Key {
        Key {
            tier: self.tier_of(job),
            key: self.policy.key(&job.info, &Ctx { now }),
            submitted: job.info.submitted,
            id: job.id(),
        }
    }

    /// Every pending job placed afresh (a tier changed, the policy's kind of
    /// keys changed, or a state change may move any key).
    fn rekey_all(&mut self, now: f64) {
        let ids: Vec<u64> = self.keys.keys().copied().collect();
        self.keys.clear();
        self.pending.clear();
        self.groups.clear();
        self.heads.clear();
        self.expiring.clear();
        self.unscoped = 0;
        self.floored = self.policy.time_varying();
        self.keyed_at = now;
        self.keyed_epoch = self.policy.epoch();
        for id in ids {
            self.place(id);
        }
    }

    /// After a state change that moves only shared keys: each group's key
    /// recomputed from its first job, the heads re-sorted (one entry per
    /// group, however many jobs wait).
    fn regroup(&mut self, now: f64) {
        self.keyed_at = now;
        self.keyed_epoch = self.policy.epoch();
        self.heads.clear();
        let ctx = Ctx { now };
        for ((_, name), g) in self.groups.iter_mut() {
            let Some(first) = g.members.first().and_then(|m| self.jobs.get(&m.id)) else {
                continue;
            };
            g.key = self.policy.key(&first.info, &ctx);
            if let Some(h) = g.head() {
                self.heads.insert((h, name.clone()));
            }
        }
    }

    /// Puts pending job `id` where its policy's kind of key keeps it.
    fn place(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let tier = self.tier_of(job);
        let at = |key: f64| Key {
            tier,
            key,
            submitted: job.info.submitted,
            id,
        };
        if self.floored {
            let (floor, until) = self
                .policy
                .key_floor(&job.info, self.keyed_at)
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            let k = at(floor);
            self.pending.insert(k);
            if until < f64::INFINITY {
                self.expiring.insert(Self::expiry(until, id));
            }
            self.keys.insert(id, Slot::Sorted(k, false, until));
            return;
        }
        match self.policy.key_scope(&job.info) {
            KeyScope::Shared(name) => {
                let member = at(0.0);
                let gid = group_id(tier, &name);
                let g = match self.groups.entry(gid) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(Group {
                        key: self.policy.key(&job.info, &Ctx { now: self.keyed_at }),
                        members: BTreeSet::new(),
                    }),
                };
                if let Some(h) = g.head() {
                    self.heads.remove(&(h, name.clone()));
                }
                g.members.insert(member);
                if let Some(h) = g.head() {
                    self.heads.insert((h, name.clone()));
                }
                self.keys.insert(id, Slot::Grouped(member, name));
            }
            scope => {
                let anything = scope == KeyScope::Anything;
                self.unscoped += usize::from(anything);
                let k = self.key_of(job, self.keyed_at);
                self.pending.insert(k);
                self.keys
                    .insert(id, Slot::Sorted(k, anything, f64::INFINITY));
            }
        }
    }

    /// `expiring`'s entry for a floor of job `id` that holds until `until`.
    fn expiry(until: f64, id: u64) -> Key {
        Key {
            tier: until,
            key: 0.0,
            submitted: 0.0,
            id,
        }
    }

    /// Takes pending job `id` out of the order.
    fn unplace(&mut self, id: u64) -> bool {
        match self.keys.remove(&id) {
            None => false,
            Some(Slot::Sorted(k, anything, until)) => {
                self.pending.remove(&k);
                if until < f64::INFINITY {
                    self.expiring.remove(&Self::expiry(until, id));
                }
                self.unscoped -= usize::from(anything);
                true
            }
            Some(Slot::Grouped(member, name)) => {
                let gid = group_id(member.tier, &name);
                if let Some(g) = self.groups.get_mut(&gid) {
                    if let Some(h) = g.head() {
                        self.heads.remove(&(h, name.clone()));
                    }
                    g.members.remove(&member);
                    match g.head() {
                        Some(h) => {
                            self.heads.insert((h, name));
                        }
                        None => {
                            self.groups.remove(&gid);
                        }
                    }
                }
                true
            }
        }
    }

    /// `cpu_cores` as a key of `pending_cpu` (−0 counted as 0).
    fn cpu_bits(cpu_cores: f64) -> u64 {
        (cpu_cores + 0.0).max(0.0).to_bits()
    }

    fn enqueue(&mut self, id: u64, _now: f64) {
        if let Some(job) = self.jobs.get(&id) {
            if let Some(q) = self.queues.get_mut(&job.queue) {
                q.pending_jobs += 1;
            }
            *self
                .pending_cpu
                .entry(Self::cpu_bits(job.resources.cpu_cores))
                .or_insert(0) += 1;
            self.place(id);
        }
    }

    fn dequeue(&mut self, id: u64) {
        if self.unplace(id) {
            if let Some(job) = self.jobs.get(&id) {
                let bits = Self::cpu_bits(job.resources.cpu_cores);
                if let Some(n) = self.pending_cpu.get_mut(&bits) {
                    *n -= 1;
                    if *n == 0 {
                        self.pending_cpu.remove(&bits);
                    }
                }
                if let Some(q) = self.queues.get_mut(&job.queue) {
                    q.pending_jobs = q.pending_jobs.saturating_sub(1);
                }
            }
        }
    }

    /// The fewest CPU cores a pending job asks for (∞ with none pending).
    fn min_pending_cpu(&self) -> f64 {
        self.pending_cpu
            .keys()
            .next()
            .map_or(f64::INFINITY, |&b| f64::from_bits(b))
    }

    fn journal_job(&mut self, id: u64) -> Result<(), JobError> {
        if let (Some(journal), Some(job)) = (self.journal.as_mut(), self.jobs.get(&id)) {
            journal.upsert(Row::of(job, self.offset))?;
        }
        Ok(())
    }

    fn journal_history(
        &mut self,
        id: u64,
        from: Option<JobState>,
        to: JobState,
        call: &str,
        reason: Option<&str>,
    ) -> Result<(), JobError> {
        if let Some(journal) = self.journal.as_mut() {
            journal.history(id, from, to, call, reason)?;
        }
        Ok(())
    }

    /// Submits a job at clock time `now`; its id. Refused, naming the
    /// field: a malformed figure or name, a figure beyond [`limits`], a need
    /// the machine can never meet ([`Resources::never_fits`]), a queue that
    /// does not exist or can never run a job. Its id is never handed out
    /// again, even after a crash (ids are reserved in durable blocks); under
    /// [`Durability::Sync`] the job is committed before this returns (and
    /// not kept if the commit fails).
    pub fn submit(&mut self, spec: JobSpec, now: f64) -> Result<u64, JobError> {
        if spec.name.is_empty() {
            return Err(JobError::Invalid {
                field: "module".into(),
                message: "a job needs a non-empty module name".into(),
            });
        }
        checked_name("module", &spec.name)?;
        for (field, v) in [
            ("user", spec.user.as_deref()),
            ("project", spec.project.as_deref()),
            ("queue", spec.queue.as_deref()),
            ("kind", Some(spec.kind.as_str())),
        ] {
            if let Some(v) = v {
                checked_name(field, v)?;
            }
        }
        if !(spec.priority.is_finite() && (0.0..=100.0).contains(&spec.priority)) {
            return Err(JobError::Invalid {
                field: "priority".into(),
                message: format!("must be between 0 and 100, got {}", spec.priority),
            });
        }
        let deadline_in = finite_opt("deadline", spec.deadline_in, limits::MAX_SECONDS)?;
        let estimated = finite_opt(
            "estimated_duration",
            spec.estimated_duration,
            limits::MAX_SECONDS,
        )?;
        let cost = finite_opt(
            "cost_per_second",
            spec.cost_per_second,
            limits::MAX_COST_PER_SECOND,
        )?;
        if spec.max_retries > limits::MAX_RETRIES {
            return Err(JobError::Invalid {
                field: "max_retries".into(),
                message: format!(
                    "must be at most {}, got {}",
                    limits::MAX_RETRIES,
                    spec.max_retries
                ),
            });
        }
        let resources = spec.resources.checked()?;
        if let Some(e) = resources.never_fits(&self.machine) {
            return Err(e);
        }
        let queue_name = spec.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
        let Some(queue) = self.queues.get(queue_name).map(|q| q.name.clone()) else {
            return Err(JobError::Invalid {
                field: "queue".into(),
                message: format!(
                    "no queue named {queue_name:?} (add it with add_queue first; queues: {})",
                    self.queues
                        .keys()
                        .map(|k| k.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        if self
            .queues
            .get(&queue)
            .is_some_and(|q| q.max_concurrent_jobs == Some(0))
        {
            return Err(JobError::Invalid {
                field: "queue".into(),
                message: format!(
                    "queue {queue_name:?} has max_concurrent_jobs=0: a job in it can never run"
                ),
            });
        }
        self.reserve_id()?;
        let mark = self.journal.as_ref().map_or(0, Journal::unflushed);
        let id = self.next_id;
        self.next_id += 1;
        let name = self.intern(&spec.name);
        let user = spec.user.as_deref().map(|u| self.intern(u));
        let project = spec.project.as_deref().map(|p| self.intern(p));
        let kind = self.intern(&spec.kind);
        let payload: Arc<str> = Arc::from(spec.payload.as_str());
        let info = JobInfo {
            id,
            name,
            priority: spec.priority,
            user,
            project,
            submitted: now,
            deadline: deadline_in.map(|d| now + d),
            estimated_duration: estimated,
            size: f64::from(resources.gpu_count.max(1)),
        };
        let job = Job {
            info,
            queue: queue.clone(),
            cost_per_second: cost,
            resources,
            kind,
            payload,
            max_retries: spec.max_retries,
            state: JobState::Queued,
            attempts: 0,
            preemptions: 0,
            retries: 0,
            error: None,
            progress: 0.0,
            progress_message: None,
            started: None,
            ended: None,
            ran_s: 0.0,
        };
        self.jobs.insert(id, job);
        if let Some(q) = self.queues.get_mut(&queue) {
            q.total_jobs += 1;
        }
        self.counts[state_index(JobState::Queued)] += 1;
        self.counters.submitted += 1;
        self.enqueue(id, now);
        let journaled = self
            .journal_job(id)
            .and_then(|()| self.journal_history(id, None, JobState::Queued, "submit_job", None))
            .and_then(|()| self.durable());
        if let Err(e) = journaled {
            // Not acknowledged: not kept either (its id stays burnt).
            self.dequeue(id);
            self.jobs.remove(&id);
            if let Some(q) = self.queues.get_mut(&queue) {
                q.total_jobs = q.total_jobs.saturating_sub(1);
            }
            self.counts[state_index(JobState::Queued)] -= 1;
            self.counters.submitted -= 1;
            if let Some(j) = self.journal.as_mut() {
                j.discard_from(mark);
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Makes sure `next_id` lies in a durably reserved block.
    fn reserve_id(&mut self) -> Result<(), JobError> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        if self.next_id < self.id_reserved {
            return Ok(());
        }
        if self.id_reserved == 0 {
            self.next_id = self.next_id.max(journal.next_free_id()?);
        }
        let upto = self.next_id.saturating_add(ID_BLOCK);
        journal.reserve_ids(upto)?;
        self.id_reserved = upto;
        Ok(())
    }

    pub fn get(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    fn job(&self, id: u64) -> Result<&Job, JobError> {
        self.jobs.get(&id).ok_or(JobError::Unknown { id })
    }

    fn refuse(&self, job: &Job, call: &str) -> JobError {
        JobError::Transition {
            id: job.id(),
            name: job.info.name.to_string(),
            state: job.state,
            call: call.to_owned(),
        }
    }

    /// Checks that `call` may move job `id` to `to`, without moving it.
    pub fn check(&self, id: u64, to: JobState, call: &str) -> Result<JobState, JobError> {
        let job = self.job(id)?;
        if allowed(job.state, to) {
            Ok(job.state)
        } else {
            Err(self.refuse(job, call))
        }
    }

    /// Moves job `id` to `to` (validated); `reason` is kept as the error
    /// of a failed or cancelled job and in the history. The state before.
    pub fn transition(
        &mut self,
        id: u64,
        to: JobState,
        call: &str,
        reason: Option<&str>,
        now: f64,
    ) -> Result<JobState, JobError> {
        let from = self.check(id, to, call)?;
        let active = |s: JobState| matches!(s, JobState::Running | JobState::Paused);
        if from == JobState::Queued {
            self.dequeue(id);
        }
        let mut finished: Option<(JobInfo, f64)> = None;
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(JobError::Unknown { id });
        };
        job.state = to;
        if from == JobState::Queued && to == JobState::Running {
            job.attempts += 1;
            job.started = Some(now);
            job.ended = None;
            job.error = None;
            job.progress = 0.0;
            job.progress_message = None;
            self.active_cpu += job.resources.cpu_cores;
            self.active_gpus += job.resources.gpu_count;
            self.active_mem += job.resources.memory_mb;
            if let Some(q) = self.queues.get_mut(&job.queue) {
                q.running_jobs += 1;
            }
            self.counters.started += 1;
        }
        if active(from) && !active(to) {
            let ran = job.started.map_or(0.0, |s| (now - s).max(0.0));
            job.ran_s += ran;
            self.active_cpu = (self.active_cpu - job.resources.cpu_cores).max(0.0);
            self.active_gpus = self.active_gpus.saturating_sub(job.resources.gpu_count);
            self.active_mem = (self.active_mem - job.resources.memory_mb).max(0.0);
            if let Some(q) = self.queues.get_mut(&job.queue) {
                q.running_jobs = q.running_jobs.saturating_sub(1);
            }
            if to.is_terminal() {
                finished = Some((job.info.clone(), ran));
            }
        }
        if to.is_terminal() {
            job.ended = Some(now);
            if matches!(to, JobState::Failed | JobState::Cancelled) {
                job.error = reason.map(str::to_owned);
            }
            if to == JobState::Completed {
                job.progress = 1.0;
            }
        }
        self.counts[state_index(from)] = self.counts[state_index(from)].saturating_sub(1);
        self.counts[state_index(to)] += 1;
        if active(to) {
            self.active_ids.insert(id);
        } else {
            self.active_ids.remove(&id);
        }
        if let Some((info, ran)) = finished {
            self.policy.on_finish(&info, ran, now);
        }
        if to == JobState::Queued {
            self.enqueue(id, now);
        }
        self.journal_job(id)?;
        self.journal_history(id, Some(from), to, call, reason)?;
        if to.is_terminal() {
            self.finished.push_back(id);
            self.prune(now)?;
        }
        self.durable()?;
        Ok(from)
    }

    /// Puts an active job back in the queue (its place: its submission
    /// time), counting why.
    pub fn requeue(
        &mut self,
        id: u64,
        why: Requeue,
        reason: &str,
        now: f64,
    ) -> Result<JobState, JobError> {
        let call = match why {
            Requeue::Preempted => "preempt",
            Requeue::Retried => "retry",
            Requeue::Interrupted => "recover",
        };
        self.check(id, JobState::Queued, call)?;
        if let Some(job) = self.jobs.get_mut(&id) {
            match why {
                Requeue::Preempted => job.preemptions += 1,
                Requeue::Retried => job.retries += 1,
                Requeue::Interrupted => {}
            }
        }
        match why {
            Requeue::Preempted => self.counters.preempted += 1,
            Requeue::Retried => self.counters.retried += 1,
            Requeue::Interrupted => self.counters.interrupted += 1,
        }
        self.transition(id, JobState::Queued, call, Some(reason), now)
    }

    /// Changes a job's priority (0–100); a pending job moves in the order.
    pub fn set_priority(&mut self, id: u64, priority: f64, now: f64) -> Result<(), JobError> {
        if !(priority.is_finite() && (0.0..=100.0).contains(&priority)) {
            return Err(JobError::Invalid {
                field: "priority".into(),
                message: format!("must be between 0 and 100, got {priority}"),
            });
        }
        let job = self.job(id)?;
        if job.state.is_terminal() {
            return Err(self.refuse(job, "set_priority"));
        }
        let queued = job.state == JobState::Queued;
        if queued {
            self.dequeue(id);
        }
        if let Some(job) = self.jobs.get_mut(&id) {
            job.info.priority = priority;
        }
        if queued {
            self.enqueue(id, now);
        }
        self.journal_job(id)?;
        self.durable()
    }

    /// Raises a job's memory needs (out-of-memory retry); never lowers them.
    pub fn grow(&mut self, id: u64, memory_mb: f64, vram_mb: f64) -> Result<Resources, JobError> {
        checked_number("memory_mb", memory_mb, limits::MAX_MEMORY_MB)?;
        checked_number("vram_mb", vram_mb, limits::MAX_VRAM_MB)?;
        let job = self.job(id)?;
        if job.state.is_terminal() {
            return Err(self.refuse(job, "grow"));
        }
        let active = matches!(job.state, JobState::Running | JobState::Paused);
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(JobError::Unknown { id });
        };
        let before = job.resources.memory_mb;
        job.resources.memory_mb = job.resources.memory_mb.max(memory_mb);
        job.resources.vram_mb = job.resources.vram_mb.max(vram_mb);
        if active {
            self.active_mem += job.resources.memory_mb - before;
        }
        let r = job.resources;
        self.journal_job(id)?;
        self.durable()?;
        Ok(r)
    }

    /// Records progress of an active job (fraction clamped to [0, 1]).
    pub fn set_progress(
        &mut self,
        id: u64,
        fraction: f64,
        message: Option<&str>,
    ) -> Result<f64, JobError> {
        if !fraction.is_finite() {
            return Err(JobError::Invalid {
                field: "fraction".into(),
                message: format!("must be a finite number between 0 and 1, got {fraction}"),
            });
        }
        let job = self.job(id)?;
        if !matches!(job.state, JobState::Running | JobState::Paused) {
            return Err(self.refuse(job, "progress"));
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(JobError::Unknown { id });
        };
        job.progress = fraction.clamp(0.0, 1.0);
        job.progress_message = message.map(str::to_owned);
        Ok(job.progress)
    }

    /// Number of jobs in `state`.
    pub fn count(&self, state: JobState) -> u64 {
        self.counts[state_index(state)]
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// CPU cores, GPUs and memory (MB) held by running and paused jobs.
    pub fn active(&self) -> (f64, u32, f64) {
        (self.active_cpu, self.active_gpus, self.active_mem)
    }

    /// Running and paused jobs (those holding resources), by id.
    pub fn active_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.active_ids.iter().filter_map(|id| self.jobs.get(id))
    }

    /// Jobs (optionally in one state), by id.
    pub fn list(&self, state: Option<JobState>) -> Vec<&Job> {
        let mut out: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| state.is_none_or(|s| j.state == s))
            .collect();
        out.sort_unstable_by_key(|j| j.id());
        out
    }

    /// Brings the order up to date before a pass at `now`: a time-varying
    /// policy's floors are asked again where they no longer hold (exact
    /// keys are the pass's); a state
    /// change re-keys the groups, or everything if some key may move
    /// otherwise.
    fn refresh_keys(&mut self, now: f64) {
        if self.policy.time_varying() != self.floored {
            self.rekey_all(now);
        } else if self.floored {
            self.keyed_at = now;
            while let Some(e) = self.expiring.first().copied() {
                if e.tier >= now {
                    break;
                }
                // Its floor no longer holds: a fresh one, asked at `now`.
                self.unplace(e.id);
                self.place(e.id);
            }
        } else if !self.floored && self.policy.epoch() != self.keyed_epoch {
            if self.unscoped > 0 {
                self.rekey_all(now);
            } else {
                self.regroup(now);
            }
        }
    }

    /// The pending set in order at `now` (after [`Self::refresh_keys`]),
    /// read lazily.
    fn ordered(&self, now: f64) -> Ordered<'_> {
        Ordered {
            policy: self.policy.as_ref(),
            jobs: &self.jobs,
            ctx: Ctx { now },
            floored: self.floored,
            sorted: self.pending.iter().peekable(),
            heads: self.heads.iter().peekable(),
            groups: &self.groups,
            heap: BinaryHeap::new(),
        }
    }

    /// Pending job ids in the order they would be considered now.
    pub fn pending_order(&mut self, now: f64, limit: usize) -> Vec<u64> {
        self.refresh_keys(now);
        self.ordered(now).take(limit).collect()
    }

    /// Why the policy puts job `id` where it is.
    pub fn describe(&self, id: u64, now: f64) -> Result<String, JobError> {
        let job = self.job(id)?;
        Ok(self.policy.describe(&job.info, &Ctx { now }))
    }

    /// One admission pass at `now`: pending jobs in order, each offered to
    /// `take` (the front end's reservation: `Some(hold)` when it fits) through
    /// [`admit_each`] under the policy's admission mode. A queue at its
    /// `max_concurrent_jobs` and a job `eligible` refuses (a reason) are
    /// passed over, not waited for. Started jobs are RUNNING on return.
    ///
    /// The pass walks the pending set (kept in order) only as far as it
    /// must: a strict policy stops at the first job that does not fit;
    /// best effort and backfill go on past it only while the free CPU
    /// cores cover the smallest pending job's need. Within a pass, what
    /// `eligible` or `take` refused for one job is taken as refused for a
    /// later job asking the same (same module, project and needs) without
    /// asking again: nothing is released during a pass. `skipped` lists the
    /// jobs passed over among those the pass looked at. An error from a
    /// callback ends the pass there (jobs taken before it are started).
    pub fn dispatch<H, E>(
        &mut self,
        now: f64,
        capacity: Capacity,
        mut eligible: impl FnMut(&Job) -> Result<Option<String>, E>,
        take: impl FnMut(&Job) -> Result<Option<H>, E>,
    ) -> PassOutcome<H, E> {
        self.refresh_keys(now);
        let mut outcome = PassOutcome {
            started: Vec::new(),
            blocked: None,
            skipped: Vec::new(),
            head_start: None,
            error: None,
        };
        let mut room: HashMap<&str, u32> = HashMap::new();
        for q in self.queues.values() {
            if let Some(max) = q.max_concurrent_jobs {
                room.insert(q.name.as_ref(), max.saturating_sub(q.running_jobs));
            }
        }
        let min_cpu = self.min_pending_cpu();
        let mode = self.policy.admission();
        let jobs = &self.jobs;
        let queues = &self.queues;
        let skipped = &mut outcome.skipped;
        let mut eligible_error: Option<E> = None;
        let mut refused: HashMap<Need, String> = HashMap::new();
        let mut walk = self.ordered(now);
        // Pending jobs in order, less those passed over (listed in `skipped`).
        let candidates = std::iter::from_fn(|| {
            if eligible_error.is_some() {
                return None;
            }
            for id in walk.by_ref() {
                let Some((id, job)) = jobs.get_key_value(&id) else {
                    continue;
                };
                if let Some(left) = room.get_mut(job.queue.as_ref()) {
                    if *left == 0 {
                        if skipped.len() < 100 {
                            let max = queues
                                .get(&job.queue)
                                .and_then(|q| q.max_concurrent_jobs)
                                .unwrap_or(0);
                            skipped.push((
                                *id,
                                format!("queue {:?} is at max_concurrent_jobs={max}", job.queue),
                            ));
                        }
                        continue;
                    }
                    *left -= 1;
                }
                let need = Need::of(job);
                if let Some(why) = refused.get(&need) {
                    skipped.push((*id, why.clone()));
                    continue;
                }
                match eligible(job) {
                    Ok(None) => return Some((*id, id)),
                    Ok(Some(why)) => {
                        skipped.push((*id, why.clone()));
                        refused.insert(need, why);
                    }
                    Err(e) => {
                        eligible_error = Some(e);
                        return None;
                    }
                }
            }
            None
        });
        let mut placement = JobPlacement {
            jobs,
            active: &self.active_ids,
            free: Free {
                cpu: capacity.cpu_cores - self.active_cpu,
                gpus: f64::from(capacity.gpus) - f64::from(self.active_gpus),
                mem: capacity.memory_mb - self.active_mem,
            },
            min_cpu,
            running: Vec::new(),
            refused: HashSet::new(),
            now,
            take,
            error: None,
        };
        let pass = admit_each(
            mode,
            candidates,
            &mut placement,
            |id| jobs.get(id).and_then(|j| j.info.estimated_duration),
            now,
        );
        outcome.error = placement.error.take().or(eligible_error);
        outcome.blocked = pass.blocked_head;
        outcome.head_start = pass.head_start;
        outcome.started = pass.started;
        for (id, _) in &outcome.started {
            // Checked: every candidate is QUEUED, and QUEUED → RUNNING is allowed.
            if self
                .transition(*id, JobState::Running, "start", None, now)
                .is_ok()
            {
                if let Some(job) = self.jobs.get(id) {
                    let info = job.info.clone();
                    self.policy.on_start(&info, now);
                }
            }
        }
        outcome
    }

    /// The policy's preemption advice for `head` (who would start if the
    /// running jobs named were stopped): GPUs when it asks for GPUs, else
    /// memory (MB), against what the table holds out of `capacity`.
    pub fn preemption_advice(&self, head: u64, capacity: Capacity) -> Result<Vec<u64>, JobError> {
        let job = self.job(head)?;
        let gpus = job.resources.gpu_count > 0;
        let needed = if gpus {
            f64::from(job.resources.gpu_count)
                - (f64::from(capacity.gpus) - f64::from(self.active_gpus))
        } else {
            job.resources.memory_mb - (capacity.memory_mb - self.active_mem)
        };
        let running: Vec<RunningJob> = self
            .active_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.state == JobState::Running)
            .map(|j| RunningJob {
                job: j.info.clone(),
                started: j.started.unwrap_or(0.0),
                holds: if gpus {
                    f64::from(j.resources.gpu_count)
                } else {
                    j.resources.memory_mb
                },
            })
            .collect();
        Ok(self.policy.should_preempt(&running, &job.info, needed))
    }

    /// Restores the table from its journal: queued jobs wait again in their
    /// order; jobs that were running or paused are requeued when their kind
    /// can be rerun, else failed with the reason.
    pub fn recover(&mut self, now: f64) -> Result<Recovery, JobError> {
        self.load(now, true, &BTreeSet::new())
    }

    /// [`JobQueue::recover`], except that the running or paused jobs in
    /// `adopt` keep their state (their process survived and is reattached:
    /// they hold their resources again from `now`).
    pub fn recover_adopting(
        &mut self,
        now: f64,
        adopt: &BTreeSet<u64>,
    ) -> Result<Recovery, JobError> {
        self.load(now, true, adopt)
    }

    /// The journal, for its additive tables (process records).
    pub fn journal_ref(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Loads the journal's jobs as they were recorded, changing nothing in
    /// it (for viewers such as the CLI, while a scheduler may be running).
    pub fn view(&mut self, now: f64) -> Result<Recovery, JobError> {
        self.load(now, false, &BTreeSet::new())
    }

    fn load(&mut self, now: f64, apply: bool, adopt: &BTreeSet<u64>) -> Result<Recovery, JobError> {
        let Some(journal) = self.journal.as_ref() else {
            return Ok(Recovery::default());
        };
        let rows = journal.load()?;
        let queues = journal.load_queues()?;
        let next_free = journal.next_free_id()?;
        self.next_id = self.next_id.max(next_free);
        for (name, priority, max) in queues {
            self.add_queue_in_memory(&name, priority, max)?;
        }
        let mut report = Recovery::default();
        let mut finished: Vec<(f64, u64)> = Vec::new();
        for row in rows {
            let queue = row.queue.clone();
            if !self.queues.contains_key(queue.as_str()) {
                self.add_queue_in_memory(&queue, 0, None)?;
            }
            let mut job = row.into_job(self.offset);
            job.queue = self.intern(&queue);
            job.info.name = self.intern(&job.info.name.clone());
            job.kind = self.intern(&job.kind.clone());
            let id = job.id();
            self.next_id = self.next_id.max(id + 1);
            let was = job.state;
            if let Some(q) = self.queues.get_mut(&job.queue) {
                q.total_jobs += 1;
            }
            let active = matches!(was, JobState::Running | JobState::Paused);
            // A queued job can have a live process: its start (batched) had
            // not reached the journal, its process record (written at once) had.
            let adopted = apply && adopt.contains(&id) && (active || was == JobState::Queued);
            let interrupted = apply && active && !adopted;
            if adopted {
                if was == JobState::Queued {
                    job.state = JobState::Running;
                    job.attempts += 1;
                    job.started = Some(now);
                }
                // Otherwise it keeps its journaled (wall-clock) start: its
                // process ran on meanwhile.
                job.started = job.started.or(Some(now));
                self.active_cpu += job.resources.cpu_cores;
                self.active_gpus += job.resources.gpu_count;
                self.active_mem += job.resources.memory_mb;
                report.adopted.push(id);
            }
            let can_rerun = rerunnable(&job.kind);
            if interrupted {
                job.state = if can_rerun {
                    JobState::Queued
                } else {
                    JobState::Failed
                };
            }
            let kind = job.kind.clone();
            if job.state == JobState::Failed && interrupted {
                job.error = Some(format!(
                    "interrupted: the scheduler's process ended while it was {was}, and a {kind} job cannot be rerun (register the function by name with register() to make it rerunnable)"
                ));
                job.ended = Some(now);
            }
            let state = job.state;
            let error = job.error.clone();
            let queue_key = job.queue.clone();
            if state.is_terminal() {
                finished.push((job.ended.unwrap_or(f64::NEG_INFINITY), id));
            }
            self.counts[state_index(state)] += 1;
            self.jobs.insert(id, job);
            if matches!(state, JobState::Running | JobState::Paused) {
                self.active_ids.insert(id);
                if let Some(q) = self.queues.get_mut(&queue_key) {
                    q.running_jobs += 1;
                }
            }
            if state == JobState::Queued {
                self.enqueue(id, now);
                if interrupted {
                    report.requeued.push(id);
                } else {
                    report.queued.push(id);
                }
            }
            if interrupted {
                if state == JobState::Failed {
                    report.failed.push(id);
                } else {
                    self.counters.interrupted += 1;
                }
                self.journal_job(id)?;
                let reason = match state {
                    JobState::Queued => format!("interrupted while {was}: requeued"),
                    _ => error.unwrap_or_default(),
                };
                self.journal_history(id, Some(was), state, "recover", Some(&reason))?;
            }
            if adopted {
                if was == JobState::Queued {
                    self.journal_job(id)?;
                }
                self.journal_history(
                    id,
                    Some(was),
                    state,
                    "adopt",
                    Some("its process survived the scheduler's end: adopted"),
                )?;
            }
        }
        finished.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.finished.extend(finished.into_iter().map(|(_, id)| id));
        if apply {
            self.prune(now)?;
            self.flush()?;
        }
        Ok(report)
    }

    /// Commits the journal's buffered writes.
    pub fn flush(&mut self) -> Result<(), JobError> {
        match self.journal.as_mut() {
            Some(j) => j.flush(),
            None => Ok(()),
        }
    }

    pub fn unflushed(&self) -> usize {
        self.journal.as_ref().map_or(0, Journal::unflushed)
    }

    /// History from the journal (empty without one).
    pub fn history(&self, id: Option<u64>, limit: usize) -> Result<Vec<HistoryRow>, JobError> {
        match self.journal.as_ref() {
            Some(j) => j.read_history(id, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Clock seconds → Unix seconds.
    pub fn to_unix(&self, t: f64) -> f64 {
        t + self.offset
    }
}

impl Drop for JobQueue {
    /// A table dropped without a crash gives its unused ids back (the
    /// journal commits as it drops).
    fn drop(&mut self) {
        self.give_back_ids();
    }
}

#[derive(Debug, Clone)]
struct Free {
    cpu: f64,
    gpus: f64,
    mem: f64,
}

/// What a job asks of `eligible` and `take`: two jobs with the same need
/// get the same answer within a pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Need {
    name: Arc<str>,
    project: Option<Arc<str>>,
    cpu: u64,
    gpus: u32,
    vram: u64,
    mem: u64,
}

impl Need {
    fn of(job: &Job) -> Self {
        let r = &job.resources;
        Self {
            name: job.info.name.clone(),
            project: job.info.project.clone(),
            cpu: r.cpu_cores.to_bits(),
            gpus: r.gpu_count,
            vram: r.vram_mb.to_bits(),
            mem: r.memory_mb.to_bits(),
        }
    }
}

/// (CPU cores, GPUs, memory MB, expected end) of a hold.
type Hold = (f64, f64, f64, f64);

/// The table's view of the machine during a pass: CPU cores are checked
/// here; the rest is the front end's `take` (its reservation).
struct JobPlacement<'a, F, E> {
    jobs: &'a HashMap<u64, Job>,
    /// Running and paused jobs before the pass.
    active: &'a BTreeSet<u64>,
    free: Free,
    /// The fewest cores a pending job asks for.
    min_cpu: f64,
    /// Started in this pass.
    running: Vec<Hold>,
    /// Needs `take` refused in this pass.
    refused: HashSet<Need>,
    now: f64,
    take: F,
    error: Option<E>,
}

impl<'a, H, E, F: FnMut(&Job) -> Result<Option<H>, E>> Placement for JobPlacement<'a, F, E> {
    type Job = u64;
    type Hold = H;
    type Plan = CapacityPlan<'a>;

    fn try_take(&mut self, id: &u64) -> Option<H> {
        if self.error.is_some() {
            return None;
        }
        let job = self.jobs.get(id)?;
        if job.resources.cpu_cores > self.free.cpu + 1e-9 {
            return None;
        }
        let need = Need::of(job);
        if self.refused.contains(&need) {
            return None;
        }
        match (self.take)(job) {
            Ok(Some(hold)) => {
                self.free.cpu -= job.resources.cpu_cores;
                self.free.gpus -= f64::from(job.resources.gpu_count);
                self.free.mem -= job.resources.memory_mb;
                self.running.push((
                    job.resources.cpu_cores,
                    f64::from(job.resources.gpu_count),
                    job.resources.memory_mb,
                    job.info
                        .estimated_duration
                        .map_or(f64::INFINITY, |d| self.now + d),
                ));
                Some(hold)
            }
            Ok(None) => {
                self.refused.insert(need);
                None
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    fn plan(&self) -> CapacityPlan<'a> {
        let jobs = self.jobs;
        let mut holds: Vec<Hold> = self
            .active
            .iter()
            .filter_map(|id| jobs.get(id))
            .map(|j| {
                let end = match (j.started, j.info.estimated_duration) {
                    (Some(s), Some(d)) => s + d,
                    _ => f64::INFINITY,
                };
                (
                    j.resources.cpu_cores,
                    f64::from(j.resources.gpu_count),
                    j.resources.memory_mb,
                    end,
                )
            })
            .collect();
        holds.extend_from_slice(&self.running);
        CapacityPlan {
            free: self.free.clone(),
            holds,
            jobs,
        }
    }

    fn exhausted(&self) -> bool {
        self.error.is_some() || self.free.cpu + 1e-9 < self.min_cpu
    }
}

/// Backfill's plan: free CPU cores, GPUs and memory, and the holds of the
/// running jobs with their expected ends (a pending job's needs are read
/// from the table).
#[derive(Debug, Clone)]
pub struct CapacityPlan<'a> {
    free: Free,
    holds: Vec<Hold>,
    jobs: &'a HashMap<u64, Job>,
}

impl CapacityPlan<'_> {
    fn need(&self, id: u64) -> Option<(f64, f64, f64)> {
        let j = self.jobs.get(&id).filter(|j| j.state == JobState::Queued)?;
        Some((
            j.resources.cpu_cores,
            f64::from(j.resources.gpu_count),
            j.resources.memory_mb,
        ))
    }
}

impl Plan for CapacityPlan<'_> {
    type Job = u64;
    fn fits(&self, id: &u64) -> bool {
        let Some((c, g, m)) = self.need(*id) else {
            return false;
        };
        c <= self.free.cpu + 1e-9 && g <= self.free.gpus + 1e-9 && m <= self.free.mem + 1e-9
    }
    fn hold(&mut self, id: &u64) {
        if let Some((c, g, m)) = self.need(*id) {
            self.free.cpu -= c;
            self.free.gpus -= g;
            self.free.mem -= m;
            self.holds.push((c, g, m, f64::INFINITY));
        }
    }
    fn next_end(&self) -> Option<f64> {
        self.holds
            .iter()
            .map(|h| h.3)
            .filter(|t| t.is_finite())
            .min_by(f64::total_cmp)
    }
    fn release_until(&mut self, t: f64) {
        let free = &mut self.free;
        self.holds.retain(|&(c, g, m, end)| {
            if end <= t {
                free.cpu += c;
                free.gpus += g;
                free.mem += m;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{by_name, order};

    fn q(policy: &str) -> JobQueue {
        JobQueue::new(by_name(policy, None).expect("policy"), None)
    }

    const BIG: Capacity = Capacity {
        cpu_cores: 1e9,
        gpus: 1000,
        memory_mb: 1e12,
    };

    fn spec(name: &str, priority: f64) -> JobSpec {
        let mut s = JobSpec::new(name);
        s.priority = priority;
        s
    }

    fn take_all(q: &mut JobQueue, now: f64) -> Vec<u64> {
        let out = q.dispatch::<(), ()>(now, BIG, |_| Ok(None), |_| Ok(Some(())));
        out.started.into_iter().map(|s| s.0).collect()
    }

    #[test]
    fn pending_order_is_the_policys_order() {
        for name in crate::policy::NAMES {
            let mut table = q(name);
            let mut infos = Vec::new();
            for i in 0..40u64 {
                let mut s = spec(&format!("m{}", i % 3), ((i * 37) % 101) as f64);
                s.user = Some(format!("u{}", i % 4));
                s.deadline_in = (i % 2 == 0).then_some((i * 13 % 400) as f64);
                s.estimated_duration = (i % 3 != 0).then_some((i * 7 % 50) as f64);
                let id = table.submit(s, (i % 9) as f64).expect("submit");
                infos.push(table.get(id).expect("job").info.clone());
            }
            let now = 50.0;
            let expected: Vec<u64> = order(table.policy(), &infos, &Ctx { now })
                .into_iter()
                .map(|i| infos[i].id)
                .collect();
            assert_eq!(table.pending_order(now, usize::MAX), expected, "{name}");
        }
    }

    #[test]
    fn invalid_transitions_name_job_state_and_call() {
        let mut t = q("fifo");
        let id = t.submit(spec("a", 50.0), 0.0).expect("submit");
        let e = t
            .transition(id, JobState::Paused, "pause_job", None, 0.0)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot pause_job job 1 (\"a\"): it is QUEUED"
        );
        assert_eq!(take_all(&mut t, 1.0), vec![id]);
        t.transition(id, JobState::Completed, "finish", None, 2.0)
            .expect("complete");
        let e = t
            .transition(id, JobState::Cancelled, "cancel_job", None, 3.0)
            .unwrap_err();
        assert!(e.to_string().contains("COMPLETED"));
        assert!(matches!(
            t.transition(99, JobState::Running, "start", None, 0.0),
            Err(JobError::Unknown { id: 99 })
        ));
        assert_eq!(t.count(JobState::Completed), 1);
        assert_eq!(t.count(JobState::Queued), 0);
        assert_eq!(t.get(id).expect("job").ran_s, 1.0);
    }

    #[test]
    fn priority_reorders_and_requeue_keeps_the_place() {
        let mut t = q("priority");
        let a = t.submit(spec("a", 10.0), 0.0).expect("a");
        let b = t.submit(spec("b", 20.0), 1.0).expect("b");
        assert_eq!(t.pending_order(2.0, 10), vec![b, a]);
        t.set_priority(a, 90.0, 2.0).expect("set");
        assert_eq!(t.pending_order(2.0, 10), vec![a, b]);
        assert_eq!(take_all(&mut t, 3.0), vec![a, b]);
        t.requeue(a, Requeue::Preempted, "preempted for job 3", 4.0)
            .expect("requeue");
        let job = t.get(a).expect("a");
        assert_eq!((job.state, job.preemptions), (JobState::Queued, 1));
        assert_eq!(t.counters().preempted, 1);
        assert_eq!(t.pending_order(4.0, 10), vec![a]);
    }

    #[test]
    fn strict_blocks_at_the_head_and_queue_limits_pass_over() {
        let mut t = q("fifo");
        t.add_queue("gpu", 0, Some(1)).expect("queue");
        let mut s1 = spec("g1", 50.0);
        s1.queue = Some("gpu".into());
        let g1 = t.submit(s1.clone(), 0.0).expect("g1");
        let g2 = t.submit(s1, 1.0).expect("g2");
        let big = {
            let mut s = spec("big", 50.0);
            s.resources.cpu_cores = 8.0;
            t.submit(s, 2.0).expect("big")
        };
        let small = t.submit(spec("small", 50.0), 3.0).expect("small");
        let cap = Capacity {
            cpu_cores: 4.0,
            gpus: 0,
            memory_mb: 1e6,
        };
        let out = t.dispatch::<(), ()>(5.0, cap, |_| Ok(None), |_| Ok(Some(())));
        let started: Vec<u64> = out.started.iter().map(|s| s.0).collect();
        assert_eq!(started, vec![g1]);
        assert_eq!(out.blocked, Some(big));
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.skipped[0].0, g2);
        assert!(out.skipped[0].1.contains("max_concurrent_jobs=1"));
        assert_eq!(t.get(small).expect("small").state, JobState::Queued);
        let stats: Vec<_> = t.queues().filter(|q| q.name.as_ref() == "gpu").collect();
        assert_eq!(
            (
                stats[0].running_jobs,
                stats[0].pending_jobs,
                stats[0].total_jobs
            ),
            (1, 1, 2)
        );
    }

    #[test]
    fn queue_priority_is_a_tier_above_the_policy() {
        let mut t = q("priority");
        t.add_queue("urgent", 10, None).expect("queue");
        let low = t.submit(spec("low", 99.0), 0.0).expect("low");
        let mut s = spec("urgent", 1.0);
        s.queue = Some("urgent".into());
        let hi = t.submit(s, 1.0).expect("hi");
        assert_eq!(t.pending_order(1.0, 10), vec![hi, low]);
        assert!(t
            .submit(
                {
                    let mut s = spec("x", 1.0);
                    s.queue = Some("nope".into());
                    s
                },
                1.0
            )
            .is_err());
    }

    #[test]
    fn take_errors_keep_what_was_taken() {
        let mut t = q("best_effort_fifo");
        let a = t.submit(spec("a", 50.0), 0.0).expect("a");
        let b = t.submit(spec("b", 50.0), 1.0).expect("b");
        let out = t.dispatch::<u64, String>(
            2.0,
            BIG,
            |_| Ok(None),
            |j| {
                if j.id() == a {
                    Ok(Some(a))
                } else {
                    Err("boom".into())
                }
            },
        );
        assert_eq!(out.started.iter().map(|s| s.0).collect::<Vec<_>>(), vec![a]);
        assert_eq!(out.error.as_deref(), Some("boom"));
        assert_eq!(t.get(b).expect("b").state, JobState::Queued);
    }

    #[test]
    fn preemption_advice_comes_from_the_policy() {
        let mut t = q("priority");
        let cap = Capacity {
            cpu_cores: 64.0,
            gpus: 1,
            memory_mb: 1e6,
        };
        let mut low = spec("low", 10.0);
        low.resources.gpu_count = 1;
        let low = t.submit(low, 0.0).expect("low");
        let out = t.dispatch::<(), ()>(1.0, cap, |_| Ok(None), |_| Ok(Some(())));
        assert_eq!(out.started.len(), 1);
        let mut hi = spec("hi", 90.0);
        hi.resources.gpu_count = 1;
        let hi = t.submit(hi, 2.0).expect("hi");
        assert_eq!(t.preemption_advice(hi, cap).expect("advice"), vec![low]);
        let fifo = q("fifo");
        assert!(fifo
            .policy()
            .should_preempt(&[], &t.get(hi).expect("hi").info, 1.0)
            .is_empty());
    }

    #[test]
    fn grow_only_raises() {
        let mut t = q("fifo");
        let mut s = spec("a", 50.0);
        s.resources.memory_mb = 1000.0;
        let a = t.submit(s, 0.0).expect("a");
        assert_eq!(t.grow(a, 1500.0, 0.0).expect("grow").memory_mb, 1500.0);
        assert_eq!(t.grow(a, 10.0, 0.0).expect("grow").memory_mb, 1500.0);
        assert!(t.grow(a, f64::NAN, 0.0).is_err());
    }

    #[test]
    fn recovery_requeues_rerunnable_and_fails_the_rest() {
        let dir = std::env::temp_dir().join(format!("ps-jobs-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("jobs.db");
        let (a, b, c, d);
        {
            let mut t = JobQueue::new(
                by_name("fifo", None).expect("fifo"),
                Some(Journal::open(&path, 1000).expect("journal")),
            );
            t.set_clock(0.0);
            let mut cmd = spec("cmd", 50.0);
            cmd.kind = "command".into();
            cmd.payload = "{\"argv\": [\"true\"]}".into();
            a = t.submit(cmd, 0.0).expect("a");
            let mut f = spec("fn", 50.0);
            f.kind = "function".into();
            b = t.submit(f, 1.0).expect("b");
            c = t.submit(spec("later", 50.0), 2.0).expect("c");
            d = t.submit(spec("first", 50.0), 3.0).expect("d");
            let out = t.dispatch::<(), ()>(
                4.0,
                Capacity {
                    cpu_cores: 64.0,
                    gpus: 0,
                    memory_mb: 1e6,
                },
                |_| Ok(None),
                |j| Ok((j.id() <= b).then_some(())),
            );
            assert_eq!(out.started.len(), 2);
            t.flush().expect("flush");
            // Dropped without any shutdown: as after SIGKILL.
        }
        let mut t = JobQueue::new(
            by_name("fifo", None).expect("fifo"),
            Some(Journal::open(&path, 1000).expect("journal")),
        );
        t.set_clock(100.0);
        let r = t.recover(100.0).expect("recover");
        assert_eq!(r.requeued, vec![a]);
        assert_eq!(r.failed, vec![b]);
        assert_eq!(r.queued, vec![c, d]);
        assert_eq!(t.pending_order(100.0, 10), vec![a, c, d]);
        assert!(t
            .get(b)
            .expect("b")
            .error
            .as_deref()
            .unwrap_or("")
            .contains("cannot be rerun"));
        let next = t.submit(spec("new", 50.0), 101.0).expect("new");
        assert!(next > d);
        let h = t.history(Some(a), 10).expect("history");
        assert_eq!(h.last().map(|r| r.call.as_str()), Some("recover"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recovery_adopting_keeps_the_adopted_job_running_with_its_resources() {
        let dir = std::env::temp_dir().join(format!("ps-jobs-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("jobs.db");
        let (a, b, c);
        {
            let mut t = JobQueue::new(
                by_name("fifo", None).expect("fifo"),
                Some(Journal::open(&path, 1000).expect("journal")),
            );
            t.set_clock(0.0);
            let mut cmd = spec("cmd", 50.0);
            cmd.kind = "command".into();
            cmd.resources.cpu_cores = 2.0;
            a = t.submit(cmd.clone(), 0.0).expect("a");
            b = t.submit(cmd.clone(), 1.0).expect("b");
            let out = t.dispatch::<(), ()>(
                4.0,
                Capacity {
                    cpu_cores: 64.0,
                    gpus: 0,
                    memory_mb: 1e6,
                },
                |_| Ok(None),
                |_| Ok(Some(())),
            );
            assert_eq!(out.started.len(), 2);
            c = t.submit(cmd, 2.0).expect("c");
            t.flush().expect("flush");
        }
        let mut t = JobQueue::new(
            by_name("fifo", None).expect("fifo"),
            Some(Journal::open(&path, 1000).expect("journal")),
        );
        t.set_clock(100.0);
        let r = t
            .recover_adopting(100.0, &BTreeSet::from([a, c]))
            .expect("recover");
        assert_eq!(r.adopted, vec![a, c], "c's start was not journaled yet");
        assert_eq!(r.requeued, vec![b]);
        assert_eq!(t.get(c).expect("c").state, JobState::Running);
        assert_eq!(t.pending_order(100.0, 10), vec![b], "only b reruns");
        assert_eq!(t.get(a).expect("a").state, JobState::Running);
        assert_eq!(t.get(a).expect("a").attempts, 1, "not a new attempt");
        assert_eq!(t.get(c).expect("c").started, Some(100.0), "starts now");
        let a_started = t.get(a).expect("a").started.expect("a started");
        assert!(
            (a_started - 100.0).abs() > 1.0,
            "a keeps its journaled start (its process ran on): {a_started}"
        );
        assert_eq!(t.active().0, 4.0, "the adopted jobs' cores are held again");
        let h = t.history(Some(a), 10).expect("history");
        assert_eq!(h.last().map(|r| r.call.as_str()), Some("adopt"));
        t.transition(a, JobState::Completed, "finish", None, 101.0)
            .expect("ends as usual");
        assert_eq!(t.active().0, 2.0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The pass as it was before it walked the queue lazily: every pending
    /// job checked, the candidates collected, then [`admit`] over them all
    /// (the reference the fast pass must agree with).
    mod naive {
        use super::*;
        use crate::policy::admit::admit;

        struct NaivePlacement<'a, F> {
            jobs: &'a HashMap<u64, Job>,
            free: Free,
            running: Vec<Hold>,
            now: f64,
            take: F,
        }

        impl<'a, F: FnMut(&Job) -> Option<()>> Placement for NaivePlacement<'a, F> {
            type Job = u64;
            type Hold = ();
            type Plan = CapacityPlan<'a>;
            fn try_take(&mut self, id: &u64) -> Option<()> {
                let job = self.jobs.get(id)?;
                if job.resources.cpu_cores > self.free.cpu + 1e-9 {
                    return None;
                }
                (self.take)(job)?;
                self.free.cpu -= job.resources.cpu_cores;
                self.free.gpus -= f64::from(job.resources.gpu_count);
                self.free.mem -= job.resources.memory_mb;
                let end = job
                    .info
                    .estimated_duration
                    .map_or(f64::INFINITY, |d| self.now + d);
                self.running.push((
                    job.resources.cpu_cores,
                    f64::from(job.resources.gpu_count),
                    job.resources.memory_mb,
                    end,
                ));
                Some(())
            }
            /// The plan reads needs from the table, as the fast pass's does
            /// (the reference is about walking every job, not the plan).
            fn plan(&self) -> CapacityPlan<'a> {
                CapacityPlan {
                    free: self.free.clone(),
                    holds: self.running.clone(),
                    jobs: self.jobs,
                }
            }
        }

        /// Every pending job keyed afresh and sorted (what the table's
        /// layouts must agree with): keys at `now` for a time-varying
        /// policy, else as of the table's last re-keying (after
        /// [`JobQueue::refresh_keys`]).
        pub(in super::super) fn full_order(t: &JobQueue, now: f64) -> Vec<u64> {
            let at = if t.policy.time_varying() {
                now
            } else {
                t.keyed_at
            };
            let mut all: Vec<Key> = t
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| t.key_of(j, at))
                .collect();
            all.sort_unstable();
            all.into_iter().map(|k| k.id).collect()
        }

        /// (started, blocked, head start, skipped).
        pub(super) type Outcome = (Vec<u64>, Option<u64>, Option<f64>, Vec<(u64, String)>);

        pub(super) fn dispatch(
            t: &mut JobQueue,
            now: f64,
            capacity: Capacity,
            eligible: impl Fn(&Job) -> Option<String>,
            take: impl FnMut(&Job) -> Option<()>,
        ) -> Outcome {
            t.refresh_keys(now);
            let mut skipped = Vec::new();
            let mut room: HashMap<Arc<str>, u32> = HashMap::new();
            for q in t.queues.values() {
                if let Some(max) = q.max_concurrent_jobs {
                    room.insert(q.name.clone(), max.saturating_sub(q.running_jobs));
                }
            }
            let mut candidates = Vec::new();
            for id in full_order(t, now) {
                let job = &t.jobs[&id];
                if let Some(left) = room.get_mut(&job.queue) {
                    if *left == 0 {
                        if skipped.len() < 100 {
                            let max = t.queues[&job.queue].max_concurrent_jobs.unwrap_or(0);
                            skipped.push((
                                id,
                                format!("queue {:?} is at max_concurrent_jobs={max}", job.queue),
                            ));
                        }
                        continue;
                    }
                    *left -= 1;
                }
                match eligible(job) {
                    None => candidates.push(id),
                    Some(why) => skipped.push((id, why)),
                }
            }
            let mut running: Vec<Hold> = Vec::new();
            for id in &t.active_ids {
                let j = &t.jobs[id];
                let end = match (j.started, j.info.estimated_duration) {
                    (Some(s), Some(d)) => s + d,
                    _ => f64::INFINITY,
                };
                let r = &j.resources;
                running.push((r.cpu_cores, f64::from(r.gpu_count), r.memory_mb, end));
            }
            let mut placement = NaivePlacement {
                jobs: &t.jobs,
                free: Free {
                    cpu: capacity.cpu_cores - t.active_cpu,
                    gpus: f64::from(capacity.gpus) - f64::from(t.active_gpus),
                    mem: capacity.memory_mb - t.active_mem,
                },
                running,
                now,
                take,
            };
            let order: Vec<usize> = (0..candidates.len()).collect();
            let jobs = &t.jobs;
            let pass = admit(
                t.policy.admission(),
                &order,
                &candidates,
                &mut placement,
                |id| jobs.get(id).and_then(|j| j.info.estimated_duration),
                now,
            );
            let started: Vec<u64> = pass.started.iter().map(|s| candidates[s.0]).collect();
            for id in &started {
                t.transition(*id, JobState::Running, "start", None, now)
                    .expect("start");
                let info = t.jobs[id].info.clone();
                t.policy.on_start(&info, now);
            }
            (
                started,
                pass.blocked_head.map(|i| candidates[i]),
                pass.head_start,
                skipped,
            )
        }
    }

    mod fast_pass_agrees {
        use super::*;
        use proptest::prelude::*;

        /// (priority, cpu index, gpus, estimate, project, queue, module)
        type Spec = (u8, usize, u32, Option<u8>, usize, usize, usize);

        fn table(policy: &str, specs: &[Spec]) -> JobQueue {
            let mut t = q(policy);
            t.add_queue("limited", 0, Some(2)).expect("queue");
            t.add_queue("urgent", 5, None).expect("queue");
            for (i, &(prio, cpu, gpus, est, project, queue, module)) in specs.iter().enumerate() {
                let mut s = spec(&format!("m{module}"), f64::from(prio % 101));
                s.resources.cpu_cores = [0.0, 0.5, 1.0, 2.0, 4.0][cpu];
                s.resources.gpu_count = gpus;
                s.estimated_duration = est.map(f64::from);
                s.project = [None, Some("a"), Some("b"), Some("c")][project].map(str::to_owned);
                s.user = s.project.clone();
                s.queue = [None, Some("limited"), Some("urgent")][queue].map(str::to_owned);
                s.deadline_in = est.map(|e| f64::from(e) * 3.0);
                t.submit(s, i as f64 * 0.5).expect("submit");
            }
            t
        }

        /// A GPU pool (what the front end's reservation would say): a job
        /// fits if its GPUs are free; project "c" is over its quota.
        fn run_pass(t: &mut JobQueue, fast: bool, now: f64, cap: Capacity) -> naive::Outcome {
            let mut free_gpus = cap.gpus.saturating_sub(t.active().1);
            let take = |j: &Job| {
                (j.resources.gpu_count <= free_gpus).then(|| free_gpus -= j.resources.gpu_count)
            };
            let eligible = |j: &Job| {
                (j.info.project.as_deref() == Some("c"))
                    .then(|| "project c: quota exceeded".to_owned())
            };
            if !fast {
                return naive::dispatch(t, now, cap, eligible, take);
            }
            let mut take = take;
            let out = t.dispatch::<(), ()>(now, cap, |j| Ok(eligible(j)), |j| Ok(take(j)));
            assert!(out.error.is_none());
            (
                out.started.into_iter().map(|s| s.0).collect(),
                out.blocked,
                out.head_start,
                out.skipped,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            /// On random queues, every policy, several passes with jobs
            /// ending in between: the fast pass starts the same jobs in the
            /// same order, blocks the same head, plans the same start, and
            /// lists a prefix of what the full rescan passes over.
            #[test]
            fn fast_pass_equals_full_rescan(
                policy in 0usize..crate::policy::NAMES.len(),
                specs in proptest::collection::vec(
                    (0u8..101, 0usize..5, 0u32..3, proptest::option::of(1u8..40), 0usize..4, 0usize..3, 0usize..3),
                    0..60,
                ),
                cpu in 0u32..9,
                gpus in 0u32..5,
                ends in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 8), 6),
            ) {
                let name = crate::policy::NAMES[policy];
                let cap = Capacity { cpu_cores: f64::from(cpu), gpus, memory_mb: 1e6 };
                let mut fast = table(name, &specs);
                let mut naive = table(name, &specs);
                for (round, finish) in ends.iter().enumerate() {
                    let now = 40.0 + round as f64 * 7.0;
                    let a = run_pass(&mut fast, true, now, cap);
                    let b = run_pass(&mut naive, false, now, cap);
                    prop_assert_eq!(&a.0, &b.0, "{} round {}: started", name, round);
                    prop_assert_eq!(a.1, b.1, "{} round {}: blocked", name, round);
                    prop_assert_eq!(a.2, b.2, "{} round {}: head start", name, round);
                    prop_assert!(b.3.starts_with(&a.3), "{} round {}: skipped {:?} vs {:?}", name, round, a.3, b.3);
                    let running: Vec<u64> = fast.active_ids.iter().copied().collect();
                    for (id, end) in running.iter().zip(finish.iter().cycle()) {
                        if *end {
                            fast.transition(*id, JobState::Completed, "finish", None, now + 1.0).expect("end");
                            naive.transition(*id, JobState::Completed, "finish", None, now + 1.0).expect("end");
                        }
                    }
                }
            }

            /// The policies whose keys are shared by a group or move with
            /// time, with what can make a layout stale between passes: new
            /// jobs (new groups while the state has changed), priority
            /// changes, preempted jobs back in the queue, a queue's tier
            /// changed. The whole order (not only what a pass looks at)
            /// agrees with a full re-sort, and so do the passes.
            #[test]
            fn scoped_and_floored_orders_equal_full_rescan(
                policy in 0usize..5,
                specs in proptest::collection::vec(
                    (0u8..101, 0usize..5, 0u32..3, proptest::option::of(1u8..40), 0usize..4, 0usize..3, 0usize..3),
                    0..40,
                ),
                gpus in 0u32..5,
                rounds in proptest::collection::vec(
                    (proptest::collection::vec(any::<bool>(), 4), 0usize..4, any::<u8>(), any::<bool>(), any::<bool>(), 0u8..101),
                    6,
                ),
            ) {
                let name = ["round_robin", "fair_share", "sjf", "deadline", "multifactor"][policy];
                let cap = Capacity { cpu_cores: 8.0, gpus, memory_mb: 1e6 };
                let mut fast = table(name, &specs);
                let mut naive = table(name, &specs);
                for (round, (finish, new_jobs, pick, preempt, retier, prio)) in rounds.iter().enumerate() {
                    let now = 40.0 + round as f64 * 7.0;
                    let a = run_pass(&mut fast, true, now, cap);
                    let b = run_pass(&mut naive, false, now, cap);
                    prop_assert_eq!(&a.0, &b.0, "{} round {}: started", name, round);
                    prop_assert_eq!(a.1, b.1, "{} round {}: blocked", name, round);
                    let running: Vec<u64> = fast.active_ids.iter().copied().collect();
                    for (i, (id, end)) in running.iter().zip(finish.iter().cycle()).enumerate() {
                        if *preempt && i == 0 {
                            for t in [&mut fast, &mut naive] {
                                t.requeue(*id, Requeue::Preempted, "preempted", now + 0.5).expect("requeue");
                            }
                        } else if *end {
                            for t in [&mut fast, &mut naive] {
                                t.transition(*id, JobState::Completed, "finish", None, now + 1.0).expect("end");
                            }
                        }
                    }
                    for k in 0..*new_jobs {
                        let more = [(*prio, k % 5, (k % 3) as u32, Some(*pick % 40 + 1).filter(|_| k != 1), (k + round) % 4, k % 3, (*pick as usize + k) % 4)];
                        for t in [&mut fast, &mut naive] {
                            let extra = table(name, &more);
                            let job = extra.jobs.values().next().expect("job");
                            let mut s = spec(&job.info.name, job.info.priority);
                            s.resources = job.resources;
                            s.estimated_duration = job.info.estimated_duration;
                            // Some windows (300 s) open during later rounds.
                            s.deadline_in = job.info.deadline.map(|d| d + 270.0);
                            s.user = job.info.user.as_deref().map(str::to_owned);
                            s.project = job.info.project.as_deref().map(str::to_owned);
                            s.queue = Some(job.queue.to_string());
                            t.submit(s, now + 2.0).expect("submit");
                        }
                    }
                    let queued = fast.pending_order(now + 3.0, usize::MAX);
                    if let Some(&id) = queued.get(usize::from(*pick) % queued.len().max(1)) {
                        for t in [&mut fast, &mut naive] {
                            t.set_priority(id, f64::from(*prio), now + 3.0).expect("priority");
                        }
                    }
                    if *retier {
                        for t in [&mut fast, &mut naive] {
                            t.add_queue("limited", i64::from(*prio % 7) - 3, Some(2)).expect("queue");
                        }
                    }
                    naive.refresh_keys(now + 4.0);
                    prop_assert_eq!(
                        fast.pending_order(now + 4.0, usize::MAX),
                        naive::full_order(&naive, now + 4.0),
                        "{} round {}: whole order", name, round
                    );
                }
            }
        }
    }

    fn journal_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ps-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn owned(path: &std::path::Path) -> JobQueue {
        let mut t = JobQueue::new(
            by_name("fifo", None).expect("fifo"),
            Some(Journal::open_owned(path, 100_000).expect("journal")),
        );
        t.set_clock(0.0);
        t
    }

    #[test]
    fn ids_are_never_reused_after_a_crash_that_lost_acknowledged_jobs() {
        let dir = journal_dir("ids");
        let path = dir.join("jobs.db");
        let mut t = owned(&path);
        let ids: Vec<u64> = (0..10)
            .map(|i| t.submit(spec(&format!("j{i}"), 50.0), 0.0).expect("submit"))
            .collect();
        assert_eq!(t.unflushed(), 20, "batched: nothing committed yet");
        let token = t
            .journal
            .as_ref()
            .and_then(|j| j.owner().ok().flatten())
            .map(|o| o.token)
            .expect("owner");
        // SIGKILL: no drop, no commit (and a new process knows no token).
        std::mem::forget(t);
        super::super::journal::tests_support::forget_owner_token(token);
        let mut t = owned(&path);
        let r = t.recover(1.0).expect("recover");
        assert!(r.queued.is_empty(), "the batch was lost");
        let next = t.submit(spec("after", 50.0), 1.0).expect("submit");
        assert!(next > *ids.last().expect("ids"), "{next} reuses an id");
        t.close().expect("close");
        drop(t);
        let mut t = owned(&path);
        t.recover(2.0).expect("recover");
        assert_eq!(
            t.submit(spec("clean", 50.0), 2.0).expect("submit"),
            next + 1,
            "a clean close leaves no gap"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sync_durability_commits_before_submit_returns() {
        let dir = journal_dir("sync");
        let path = dir.join("jobs.db");
        let mut t = owned(&path);
        t.set_durability(Durability::Sync);
        let a = t.submit(spec("a", 50.0), 0.0).expect("a");
        take_all(&mut t, 1.0);
        t.transition(a, JobState::Completed, "finish", None, 2.0)
            .expect("done");
        assert_eq!(t.unflushed(), 0);
        let reader = Journal::open(&path, 1).expect("reader");
        let rows = reader.load().expect("load");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, JobState::Completed);
        assert!(rows[0].started_unix.is_some() && rows[0].ended_unix.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_live_owner_refuses_a_second_scheduler_and_a_closed_one_lets_go() {
        let dir = journal_dir("owner");
        let path = dir.join("jobs.db");
        let mut first = owned(&path);
        let e = Journal::open_owned(&path, 10).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(Journal::open(&path, 10).is_ok(), "viewers may read");
        first.close().expect("close");
        assert!(first.submit(spec("late", 50.0), 0.0).is_err(), "closed");
        let second = Journal::open_owned(&path, 10).expect("after close");
        assert!(second.took_over().is_none());
        drop(second);
        // A dead owner (a pid that no longer runs) is taken over.
        let conn = rusqlite::Connection::open(&path).expect("conn");
        conn.execute(
            "INSERT OR REPLACE INTO owner (id, pid, start_ticks, token, since_unix) VALUES (1, 4194303, 1, 7, 0)",
            [],
        )
        .expect("fake owner");
        let third = Journal::open_owned(&path, 10).expect("stale owner");
        assert_eq!(third.took_over().map(|o| o.pid), Some(4_194_303));
        // Our own pid with another start time is another process: stale too.
        drop(third);
        let me = crate::reserve::shared::Owner::current().expect("me");
        conn.execute(
            "INSERT OR REPLACE INTO owner (id, pid, start_ticks, token, since_unix) VALUES (1, ?1, ?2, 7, 0)",
            rusqlite::params![i64::from(me.pid), me.start as i64 + 1],
        )
        .expect("reused pid");
        assert!(Journal::open_owned(&path, 10).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn never_fit_and_poison_submissions_are_refused_naming_the_field() {
        let mut t = q("fifo");
        t.set_machine(Machine {
            cpu_cores: Some(2.0),
            memory_mb: Some(8000.0),
            gpu_vram_mb: Some(vec![16000.0]),
        });
        let mut s = spec("big", 50.0);
        s.resources.cpu_cores = 500.0;
        let e = t.submit(s, 0.0).unwrap_err().to_string();
        assert!(
            e.contains("cpu_cores") && e.contains("500") && e.contains("2"),
            "{e}"
        );
        let mut s = spec("gpus", 50.0);
        s.resources.gpu_count = 65537;
        assert!(t
            .submit(s, 0.0)
            .unwrap_err()
            .to_string()
            .contains("gpu_count"));
        let mut s = spec("d", 50.0);
        s.deadline_in = Some(1e300);
        assert!(t
            .submit(s, 0.0)
            .unwrap_err()
            .to_string()
            .starts_with("deadline"));
        let mut s = spec("r", 50.0);
        s.max_retries = u32::MAX;
        assert!(t
            .submit(s, 0.0)
            .unwrap_err()
            .to_string()
            .starts_with("max_retries"));
        t.add_queue("closed", 0, Some(0)).expect("queue");
        let mut s = spec("q", 50.0);
        s.queue = Some("closed".into());
        assert!(t
            .submit(s, 0.0)
            .unwrap_err()
            .to_string()
            .contains("max_concurrent_jobs=0"));
        assert!(t.is_empty());
        // Queued before the machine was known: failed with the reason.
        let mut u = q("fifo");
        let mut s = spec("huge", 50.0);
        s.resources.memory_mb = 1e9;
        let id = u.submit(s, 0.0).expect("unknown machine");
        u.set_machine(Machine {
            memory_mb: Some(1000.0),
            ..Machine::default()
        });
        let failed = u.refuse_never_fit(1.0).expect("refuse");
        assert_eq!(failed.len(), 1);
        assert_eq!(u.get(id).expect("job").state, JobState::Failed);
        assert!(u
            .get(id)
            .expect("job")
            .error
            .as_deref()
            .unwrap_or("")
            .contains("1000 MB"));
    }

    #[test]
    fn retention_bounds_finished_jobs_in_memory_and_in_the_journal() {
        let dir = journal_dir("retention");
        let path = dir.join("jobs.db");
        let mut t = owned(&path);
        t.set_retention(
            Retention {
                max_jobs: Some(5),
                max_age_s: Some(100.0),
            },
            0.0,
        )
        .expect("retention");
        for i in 0..20 {
            let id = t.submit(spec("j", 50.0), f64::from(i)).expect("submit");
            t.transition(id, JobState::Cancelled, "cancel_job", None, f64::from(i))
                .expect("cancel");
        }
        let waiting = t.submit(spec("waits", 50.0), 20.0).expect("waits");
        assert_eq!(t.len(), 6, "5 finished + 1 queued");
        assert_eq!(t.count(JobState::Cancelled), 5);
        assert_eq!(t.take_pruned().len(), 15);
        t.prune(200.0).expect("prune");
        assert_eq!(t.len(), 1, "all finished ones too old");
        assert!(t.get(waiting).is_some());
        t.flush().expect("flush");
        let reader = Journal::open(&path, 1).expect("reader");
        assert_eq!(reader.load().expect("load").len(), 1);
        assert!(reader
            .read_history(None, 1000)
            .expect("h")
            .iter()
            .all(|h| h.job_id == waiting));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn queue_settings_and_times_survive_a_restart() {
        let dir = journal_dir("queues");
        let path = dir.join("jobs.db");
        {
            let mut t = owned(&path);
            t.add_queue("gpu", 7, Some(2)).expect("queue");
            let mut s = spec("a", 50.0);
            s.queue = Some("gpu".into());
            let a = t.submit(s, 0.0).expect("a");
            take_all(&mut t, 1.0);
            t.transition(a, JobState::Completed, "finish", None, 3.0)
                .expect("done");
        }
        let mut t = owned(&path);
        t.recover(10.0).expect("recover");
        let gpu = t
            .queues()
            .find(|q| q.name.as_ref() == "gpu")
            .expect("gpu")
            .clone();
        assert_eq!((gpu.priority, gpu.max_concurrent_jobs), (7, Some(2)));
        let job = t.get(1).expect("job");
        assert_eq!(job.started.map(|s| s.round()), Some(1.0));
        assert_eq!(job.ended.map(|s| s.round()), Some(3.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

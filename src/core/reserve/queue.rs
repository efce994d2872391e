//! The reservation queue: the one owner of the ledger, the line of waiters
//! and the policy, under one lock (the caller's), and the only place that
//! decides who is granted what — as tokio's `batch_semaphore` owns its
//! permits and waiters.
//!
//! Any waiter may bring a reading of the machine ([`ReservationQueue::offer`]);
//! the queue then runs one admission pass over every waiter in the policy's
//! order ([`crate::policy::admit`]) and hands grants to the waiters it
//! admits, returning their wakers for the caller to call *after* unlocking.
//! A granted waiter collects its grant with [`ReservationQueue::claim`]. A
//! grant nobody collects within `claim_s` (a waiter whose event loop is
//! closed or not running) is taken back and that waiter is passed over,
//! keeping its place, until it shows life again; so a dead waiter never
//! holds the line.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use super::ledger::{
    Caller, Finished, Grant, GrantId, Ledger, Limits, Need, Others, Reading, Refusal,
};
use super::peaks::{effective, Peaks};
use crate::policy::admit::{admit, Placement, Plan};
use crate::policy::{Admission, Ctx, JobInfo, Policy, RunningJob};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct WaiterId(pub u64);

/// A waiter as kept outside the queue (a shared ledger file): what
/// [`ReservationQueue::export`] writes and [`ReservationQueue::restore`]
/// reads back. Refusal texts are not kept (the next pass recomputes them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WaiterState<W> {
    pub id: WaiterId,
    pub plugin: String,
    pub need: Need,
    pub job: JobInfo,
    pub waker: W,
    pub granted: Option<(GrantId, f64)>,
    pub stalled: bool,
    pub last_active: f64,
    pub woken_at: Option<f64>,
}

/// What to do when the stats have no GPU figures for a GPU plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingStats {
    /// Admit without a device (reserving the pools only), as the seed's
    /// schedulers do; the grant is marked `without_gpu_figures`.
    Allow,
    /// Wait until GPU figures are available.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub limits: Limits,
    pub start_timeout_s: f64,
    pub missing: MissingStats,
    pub peak_margin: f64,
    /// Seconds a grant may wait for its waiter to collect it.
    pub claim_s: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            limits: Limits {
                headroom: 0.9,
                settle_s: 2.0,
            },
            start_timeout_s: 60.0,
            missing: MissingStats::Allow,
            peak_margin: 1.1,
            claim_s: 1.0,
        }
    }
}

#[derive(Debug)]
struct Waiter<W> {
    job: JobInfo,
    plugin: String,
    need: Need,
    waker: W,
    /// Granted by a pass, not collected yet (and when).
    granted: Option<(GrantId, f64)>,
    /// Passed over (did not collect a grant in time) until it shows life.
    stalled: bool,
    last_refusal: Option<Refusal>,
    /// Why it cannot be admitted at all right now (e.g. no GPU figures).
    blocked: Option<String>,
    /// Last sign of life (joined, offered a reading, claimed).
    last_active: f64,
    /// Woken for its turn and not heard from since.
    woken_at: Option<f64>,
    /// Its entry in the sorted index.
    key: IndexKey,
}

/// Events the caller logs (after unlocking).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Granted {
        grant: Grant,
    },
    Expired {
        grant: Grant,
    },
    /// A waiter did not collect its grant (or take its turn) in time: it is
    /// passed over; the caller may check whether it is gone (see
    /// [`ReservationQueue::gone`]).
    Reclaimed {
        waiter: WaiterId,
        plugin: String,
        waited_s: f64,
    },
    AdmittedWithoutGpuFigures {
        plugin: String,
    },
}

/// Whose execution a collected grant becomes: the calling thread's (so
/// name-based start/finish pair it with its own grants first), or a
/// lease's (released by id only, never by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collect {
    pub caller: Option<Caller>,
    pub lease: bool,
}

/// What an offer produced.
#[derive(Debug)]
pub struct Offer<W> {
    /// The offering waiter's own grant, if it got one (it has left the line).
    pub mine: Option<Grant>,
    /// Other waiters granted by this pass: call these after unlocking.
    pub wake: Vec<W>,
    /// Why the offering waiter did not get a grant.
    pub refusal: Option<Refusal>,
    pub events: Vec<Event>,
}

/// One waiter's place, in the policy's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub id: WaiterId,
    pub plugin: String,
    pub position: usize,
    pub job: JobInfo,
    pub need: Need,
    pub reason: String,
    pub stalled: bool,
}

#[derive(Debug)]
pub struct ReservationQueue<W> {
    ledger: Ledger,
    waiters: BTreeMap<WaiterId, Waiter<W>>,
    /// Sorted by the policy's key when keys do not vary with time; rebuilt
    /// when the policy's epoch changes.
    index: BTreeSet<IndexKey>,
    index_epoch: u64,
    /// Waiters with an uncollected grant or woken for their turn.
    watched: BTreeSet<WaiterId>,
    policy: Box<dyn Policy>,
    pub settings: Settings,
    peaks: Peaks,
    next_waiter: u64,
    owner_pid: u32,
}

/// `f64` with a total order (for index keys).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Where an admission pass is in the policy's order.
enum Cursor {
    /// Keys do not vary with time: walk the sorted index.
    Index(Option<IndexKey>),
    /// Keys vary with time: an order computed for this pass.
    List(std::vec::IntoIter<WaiterId>),
}

type IndexKey = (OrdF64, OrdF64, WaiterId);

/// The live machine as a [`Placement`] for the admission pass.
struct Live<'a> {
    ledger: &'a mut Ledger,
    reading: &'a Reading,
    limits: Limits,
    now: f64,
}

/// Candidate for the pass: the waiter and its adjusted need.
struct Candidate {
    id: WaiterId,
    plugin: String,
    need: Need,
    estimate: Option<f64>,
}

impl Placement for Live<'_> {
    type Job = Candidate;
    type Hold = Grant;
    type Plan = CapacityPlan;
    fn try_take(&mut self, c: &Candidate) -> Option<Grant> {
        self.ledger
            .grant(&c.plugin, &c.need, self.reading, self.limits, self.now)
            .ok()
    }
    fn plan(&self) -> CapacityPlan {
        CapacityPlan::of(self.ledger, self.reading, self.limits)
    }
}

/// A held reservation in a plan: (expected end, devices, VRAM per device,
/// pools).
type PlannedHold = (f64, Vec<u32>, f64, Vec<(Arc<str>, f64)>);

/// Capacity of each device and pool with what is held and until when
/// (unknown ends never come), for the backfill plan.
#[derive(Debug, Clone)]
struct CapacityPlan {
    devices: Vec<(u32, f64)>,
    pools: Vec<(Arc<str>, f64)>,
    /// (expected end, devices, vram per device, pools)
    holds: Vec<PlannedHold>,
}

impl CapacityPlan {
    fn of(ledger: &Ledger, reading: &Reading, limits: Limits) -> Self {
        Self {
            devices: reading
                .devices
                .iter()
                .map(|d| (d.index, limits.headroom * d.total_mb))
                .collect(),
            pools: reading
                .pools
                .iter()
                .filter_map(|p| p.total.map(|t| (p.name.clone(), limits.headroom * t)))
                .collect(),
            holds: ledger
                .grants()
                .map(|g| {
                    (
                        g.expected_end.unwrap_or(f64::INFINITY),
                        g.devices.clone(),
                        g.vram_mb,
                        g.pools.clone(),
                    )
                })
                .collect(),
        }
    }

    fn free_on(&self, device: u32) -> f64 {
        let cap = self
            .devices
            .iter()
            .find(|d| d.0 == device)
            .map_or(0.0, |d| d.1);
        cap - self
            .holds
            .iter()
            .filter(|h| h.1.contains(&device))
            .map(|h| h.2)
            .sum::<f64>()
    }

    fn place(&self, need: &Need) -> Option<Vec<u32>> {
        let mut fits: Vec<(f64, u32)> = self
            .devices
            .iter()
            .map(|d| (self.free_on(d.0) - need.vram_mb, d.0))
            .filter(|f| f.0 >= 0.0)
            .collect();
        if need.gpu_count > 0 && (fits.len() as u32) < need.gpu_count {
            return None;
        }
        for (name, amount) in &need.pools {
            if let Some(cap) = self.pools.iter().find(|p| p.0 == *name).map(|p| p.1) {
                let held: f64 = self
                    .holds
                    .iter()
                    .flat_map(|h| h.3.iter())
                    .filter(|p| p.0 == *name)
                    .map(|p| p.1)
                    .sum();
                if *amount > cap - held {
                    return None;
                }
            }
        }
        fits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Some(
            fits.iter()
                .take(need.gpu_count as usize)
                .map(|f| f.1)
                .collect(),
        )
    }
}

impl Plan for CapacityPlan {
    type Job = Candidate;
    fn fits(&self, c: &Candidate) -> bool {
        self.place(&c.need).is_some()
    }
    fn hold(&mut self, c: &Candidate) {
        if let Some(devices) = self.place(&c.need) {
            let vram = if c.need.gpu_count > 0 {
                c.need.vram_mb
            } else {
                0.0
            };
            self.holds
                .push((f64::INFINITY, devices, vram, c.need.pools.clone()));
        }
    }
    fn next_end(&self) -> Option<f64> {
        self.holds
            .iter()
            .map(|h| h.0)
            .filter(|t| t.is_finite())
            .min_by(f64::total_cmp)
    }
    fn release_until(&mut self, t: f64) {
        self.holds.retain(|h| h.0 > t);
    }
}

impl<W: Clone> ReservationQueue<W> {
    pub fn new(policy: Box<dyn Policy>, settings: Settings, peaks: Peaks) -> Self {
        Self {
            ledger: Ledger::new(),
            waiters: BTreeMap::new(),
            index: BTreeSet::new(),
            index_epoch: policy.epoch(),
            watched: BTreeSet::new(),
            policy,
            settings,
            peaks,
            next_waiter: 0,
            owner_pid: std::process::id(),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The queue's state outside it: its waiters and the next waiter id
    /// (the ledger is [`ReservationQueue::ledger`]).
    pub fn export(&self) -> (Vec<WaiterState<W>>, u64) {
        let waiters = self
            .waiters
            .iter()
            .map(|(id, w)| WaiterState {
                id: *id,
                plugin: w.plugin.clone(),
                need: w.need.clone(),
                job: w.job.clone(),
                waker: w.waker.clone(),
                granted: w.granted,
                stalled: w.stalled,
                last_active: w.last_active,
                woken_at: w.woken_at,
            })
            .collect();
        (waiters, self.next_waiter)
    }

    /// A queue rebuilt from exported state: the same ledger, line and ids,
    /// so it decides as the queue that exported them. A waiter whose grant
    /// is not in the ledger (or a repeated id) is an error.
    pub fn restore(
        policy: Box<dyn Policy>,
        settings: Settings,
        peaks: Peaks,
        ledger: Ledger,
        waiters: Vec<WaiterState<W>>,
        next_waiter: u64,
    ) -> Result<Self, String> {
        let mut q = Self::new(policy, settings, peaks);
        q.ledger = ledger;
        for w in waiters {
            if q.waiters.contains_key(&w.id)
                || w.granted.is_some_and(|(g, _)| q.ledger.get(g).is_none())
            {
                return Err(format!(
                    "waiter {} of {:?} is inconsistent",
                    w.id.0, w.plugin
                ));
            }
            q.next_waiter = q.next_waiter.max(w.id.0 + 1);
            if let Some((g, _)) = w.granted {
                q.ledger.hold_for_waiter(g);
            }
            let (k, s) = q.key_of(&w.job, w.job.submitted);
            let key = (k, s, w.id);
            q.index.insert(key);
            if w.granted.is_some() || w.woken_at.is_some() {
                q.watched.insert(w.id);
            }
            q.waiters.insert(
                w.id,
                Waiter {
                    job: w.job,
                    plugin: w.plugin,
                    need: w.need,
                    waker: w.waker,
                    granted: w.granted,
                    stalled: w.stalled,
                    last_refusal: None,
                    blocked: None,
                    last_active: w.last_active,
                    woken_at: w.woken_at,
                    key,
                },
            );
        }
        q.next_waiter = q.next_waiter.max(next_waiter);
        Ok(q)
    }

    pub fn policy(&self) -> &dyn Policy {
        self.policy.as_ref()
    }

    pub fn peaks(&self) -> &Peaks {
        &self.peaks
    }

    pub fn peaks_mut(&mut self) -> &mut Peaks {
        &mut self.peaks
    }

    /// Replaces the policy (the line is re-ordered at once).
    pub fn set_policy(&mut self, policy: Box<dyn Policy>) {
        self.policy = policy;
        self.rebuild_index(0.0);
    }

    /// Tells an outside policy which waiter it chose (see `policy::External`).
    pub fn set_external_head(&mut self, id: Option<WaiterId>) {
        self.policy.set_head(id.map(|w| w.0));
    }

    /// The waiting jobs (not granted, not passed over), in arrival order:
    /// what an outside policy chooses from.
    pub fn pending_jobs(&self) -> Vec<(WaiterId, JobInfo, Need)> {
        let mut out: Vec<(WaiterId, JobInfo, Need)> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.granted.is_none() && !w.stalled)
            .map(|(id, w)| (*id, w.job.clone(), w.need.clone()))
            .collect();
        out.sort_by(|a, b| a.1.submitted.total_cmp(&b.1.submitted).then(a.0.cmp(&b.0)));
        out
    }

    /// The wakers of everyone in line (for a garbage collector's view).
    pub fn wakers(&self) -> impl Iterator<Item = &W> {
        self.waiters.values().map(|w| &w.waker)
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// After `fork()` the child has a copy of the parent's waiters, none of
    /// which is waiting in the child: they are dropped. (Grants stay: the
    /// memory they stand for is real.) The owner of a queue calls this when
    /// it hands a parent's queue to a forked child (the binding keeps each
    /// process's queue apart: `per_process`).
    pub fn check_fork(&mut self) -> bool {
        let pid = std::process::id();
        if pid == self.owner_pid {
            return false;
        }
        self.owner_pid = pid;
        self.waiters.clear();
        self.index.clear();
        self.watched.clear();
        true
    }

    /// The declared need raised to the measured peak × margin.
    pub fn effective_need(&self, plugin: &str, declared: &Need) -> Need {
        let peak = self.peaks.get(plugin);
        let margin = self.settings.peak_margin;
        let mut need = declared.clone();
        if need.gpu_count > 0 {
            need.vram_mb = effective(declared.vram_mb, peak.vram_mb, margin);
        } else {
            need.vram_mb = 0.0;
        }
        if peak.ram_mb.is_some() || declared.ram_mb() > 0.0 {
            need.set_pool(
                super::ledger::RAM_MB,
                effective(declared.ram_mb(), peak.ram_mb, margin),
            );
        }
        need
    }

    fn key_of(&self, job: &JobInfo, now: f64) -> (OrdF64, OrdF64) {
        (
            OrdF64(self.policy.key(job, &Ctx { now })),
            OrdF64(job.submitted),
        )
    }

    fn rebuild_index(&mut self, now: f64) {
        let keys: Vec<IndexKey> = self
            .waiters
            .iter()
            .map(|(id, w)| {
                let (k, s) = self.key_of(&w.job, now);
                (k, s, *id)
            })
            .collect();
        for key in &keys {
            if let Some(w) = self.waiters.get_mut(&key.2) {
                w.key = *key;
            }
        }
        self.index = keys.into_iter().collect();
        self.index_epoch = self.policy.epoch();
    }

    /// Adds a waiter submitted at `job.submitted` (its id is set here).
    pub fn join(&mut self, plugin: &str, need: Need, mut job: JobInfo, waker: W) -> WaiterId {
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        job.id = id.0;
        if job.size <= 0.0 {
            job.size = f64::from(need.gpu_count.max(1));
        }
        let now_of_join = job.submitted;
        let (k, s) = self.key_of(&job, job.submitted);
        let key = (k, s, id);
        self.index.insert(key);
        self.waiters.insert(
            id,
            Waiter {
                job,
                plugin: plugin.to_owned(),
                need,
                waker,
                granted: None,
                stalled: false,
                last_refusal: None,
                blocked: None,
                last_active: now_of_join,
                woken_at: None,
                key,
            },
        );
        id
    }

    /// Whether waiter `id` should read the stats and offer now: the policy
    /// lets later waiters pass, or it is the first in line that can take a
    /// turn, or that one has shown no life
    /// for `patience_s` (its event loop may be stuck), so someone else's
    /// reading must drive the line.
    pub fn may_offer(&mut self, id: WaiterId, now: f64, patience_s: f64) -> bool {
        // Under best effort and backfill a later waiter may go first, so
        // each one's reading counts.
        if self.policy.admission() != Admission::Strict {
            return true;
        }
        match self.head(now) {
            None => true,
            Some(h) if h == id => true,
            Some(h) => self.waiters.get(&h).is_none_or(|w| {
                now - w.last_active > patience_s
                    || w.woken_at
                        .is_some_and(|at| now - at >= self.settings.claim_s)
            }),
        }
    }

    /// Waiter ids in the policy's order at `now`.
    pub fn order(&mut self, now: f64) -> Vec<WaiterId> {
        if self.policy.time_varying() {
            let jobs: Vec<(WaiterId, &JobInfo)> =
                self.waiters.iter().map(|(id, w)| (*id, &w.job)).collect();
            let mut keyed: Vec<(f64, f64, WaiterId)> = jobs
                .iter()
                .map(|(id, j)| (self.policy.key(j, &Ctx { now }), j.submitted, *id))
                .collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(a.1.total_cmp(&b.1))
                    .then(a.2.cmp(&b.2))
            });
            return keyed.into_iter().map(|k| k.2).collect();
        }
        if self.policy.epoch() != self.index_epoch {
            self.rebuild_index(now);
        }
        self.index.iter().map(|k| k.2).collect()
    }

    fn cursor(&mut self, now: f64) -> Cursor {
        if self.policy.time_varying() {
            return Cursor::List(self.order(now).into_iter());
        }
        if self.policy.epoch() != self.index_epoch {
            self.rebuild_index(now);
        }
        Cursor::Index(None)
    }

    fn advance(&self, cursor: &mut Cursor) -> Option<WaiterId> {
        match cursor {
            Cursor::List(ids) => ids.next(),
            Cursor::Index(at) => {
                let next = match at {
                    None => self.index.iter().next(),
                    Some(k) => self.index.range((Excluded(*k), Unbounded)).next(),
                }
                .copied();
                *at = next;
                next.map(|k| k.2)
            }
        }
    }

    /// The first waiter in order that could take a turn now: the first
    /// eligible entry of the sorted index (O(log n) amortised), or for
    /// policies whose keys vary with time one pass over the line (O(n), no
    /// sort).
    pub fn head(&mut self, now: f64) -> Option<WaiterId> {
        let eligible = |w: &Waiter<W>| w.granted.is_none() && !w.stalled;
        if !self.policy.time_varying() {
            if self.policy.epoch() != self.index_epoch {
                self.rebuild_index(now);
            }
            return self
                .index
                .iter()
                .map(|k| k.2)
                .find(|id| self.waiters.get(id).is_some_and(eligible));
        }
        crate::policy::first_of(
            self.policy.as_ref(),
            self.waiters
                .iter()
                .filter(|(_, w)| eligible(w))
                .map(|(id, w)| (*id, &w.job)),
            &Ctx { now },
        )
    }

    fn head_waker(&mut self, now: f64) -> Vec<W> {
        self.head(now)
            .and_then(|id| self.waiters.get_mut(&id))
            .map(|w| {
                w.woken_at.get_or_insert(now);
                (w.job.id, w.waker.clone())
            })
            .map(|(id, waker)| {
                self.watched.insert(WaiterId(id));
                waker
            })
            .into_iter()
            .collect()
    }

    fn remove_waiter(&mut self, id: WaiterId) -> Option<Waiter<W>> {
        let w = self.waiters.remove(&id)?;
        self.index.remove(&w.key);
        self.watched.remove(&id);
        Some(w)
    }

    /// Gives up a place in line (timeout, cancellation, error). A grant
    /// made for it and not collected is released. Returns the waker of the
    /// waiter whose turn it now is, to call after unlocking.
    pub fn leave(&mut self, id: WaiterId, now: f64) -> Vec<W> {
        let Some(w) = self.remove_waiter(id) else {
            return Vec::new();
        };
        if let Some((grant, _)) = w.granted {
            self.ledger.release(grant);
        }
        self.head_waker(now)
    }

    /// Collects a grant made for this waiter by some pass (it leaves the
    /// line), or `None`. Shows life: a passed-over waiter is eligible again.
    pub fn claim(&mut self, id: WaiterId, now: f64) -> Option<Grant> {
        self.claim_as(id, now, Collect::default())
    }

    /// As [`ReservationQueue::claim`]; the grant becomes `collect`'s. A
    /// grant that is gone meanwhile (expired) leaves the waiter in line,
    /// waiting again: a waiter never leaves without its grant.
    pub fn claim_as(&mut self, id: WaiterId, now: f64, collect: Collect) -> Option<Grant> {
        let w = self.waiters.get_mut(&id)?;
        w.stalled = false;
        w.last_active = now;
        w.woken_at = None;
        let (grant, _) = w.granted?;
        if self.ledger.get(grant).is_none() {
            w.granted = None;
            self.watched.remove(&id);
            return None;
        }
        self.remove_waiter(id);
        self.ledger
            .collect(grant, collect.caller, collect.lease)
            .cloned()
    }

    /// A waiter seen dead (its event loop closed, its task gone, its
    /// process gone) leaves the line at once, as [`ReservationQueue::leave`]:
    /// its uncollected grant is released and it no longer costs anyone a
    /// `claim_s`. Returns the waker of the waiter whose turn it now is.
    pub fn gone(&mut self, id: WaiterId, now: f64) -> Vec<W> {
        self.leave(id, now)
    }

    /// Whether the waiter is still in line.
    pub fn is_waiting(&self, id: WaiterId) -> bool {
        self.waiters.contains_key(&id)
    }

    /// Housekeeping before a decision: unstarted grants expire, uncollected
    /// grants are taken back.
    fn tidy(&mut self, now: f64, events: &mut Vec<Event>) {
        let s = self.settings;
        for grant in self.ledger.expire(now, s.start_timeout_s) {
            events.push(Event::Expired { grant });
        }
        self.ledger.settle(now, s.limits.settle_s);
        // Only waiters holding an uncollected grant or woken for their turn
        // can be overdue: those are watched (no scan of the whole line).
        let watched: Vec<WaiterId> = self.watched.iter().copied().collect();
        for id in watched {
            let Some(w) = self.waiters.get_mut(&id) else {
                self.watched.remove(&id);
                continue;
            };
            if let Some((grant, at)) = w.granted.filter(|(_, at)| now - at >= s.claim_s) {
                // A grant nobody collected: taken back.
                w.granted = None;
                w.woken_at = None;
                self.ledger.release(grant);
                w.stalled = true;
                events.push(Event::Reclaimed {
                    waiter: id,
                    plugin: w.plugin.clone(),
                    waited_s: now - at,
                });
            } else if let Some(at) = w
                .woken_at
                .filter(|at| w.granted.is_none() && !w.stalled && now - at >= s.claim_s)
            {
                // Woken for its turn and silent since: passed over too.
                w.stalled = true;
                w.woken_at = None;
                events.push(Event::Reclaimed {
                    waiter: id,
                    plugin: w.plugin.clone(),
                    waited_s: now - at,
                });
            }
            if w.granted.is_none() && w.woken_at.is_none() {
                self.watched.remove(&id);
            }
        }
    }

    /// Whether `need` could ever be granted with this reading.
    pub fn never_fits(&self, need: &Need, reading: &Reading) -> bool {
        match Self::adjust(self.settings.missing, need, reading) {
            Ok((n, _)) => !Ledger::can_ever_fit(&n, reading, self.settings.limits),
            Err(_) => false,
        }
    }

    /// A waiter (`from`, or an outside caller with `None`) brings a fresh
    /// reading: one admission pass over the line in policy order.
    pub fn offer(&mut self, from: Option<WaiterId>, reading: &Reading, now: f64) -> Offer<W> {
        self.offer_as(from, reading, now, Collect::default())
    }

    /// As [`ReservationQueue::offer`]; the offering waiter's own grant
    /// becomes `collect`'s. Grants made for other waiters are nobody's
    /// execution until those collect them.
    pub fn offer_as(
        &mut self,
        from: Option<WaiterId>,
        reading: &Reading,
        now: f64,
        collect: Collect,
    ) -> Offer<W> {
        let mut events = Vec::new();
        self.tidy(now, &mut events);
        if let Some(w) = from.and_then(|id| self.waiters.get_mut(&id)) {
            w.stalled = false;
            w.last_active = now;
            w.woken_at = None;
        }
        let mode = self.policy.admission();
        let strict = mode == Admission::Strict;
        let mut cursor = self.cursor(now);
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut without_figures = Vec::new();
        let mut started: Vec<(usize, Grant)> = Vec::new();
        let mut blocked_head = None;
        while let Some(id) = self.advance(&mut cursor) {
            let Some(w) = self.waiters.get_mut(&id) else {
                continue;
            };
            if w.granted.is_some() || w.stalled {
                continue;
            }
            match Self::adjust(self.settings.missing, &w.need, reading) {
                Ok((need, no_figures)) => {
                    w.blocked = None;
                    if no_figures {
                        without_figures.push(id);
                    }
                    candidates.push(Candidate {
                        id,
                        plugin: w.plugin.clone(),
                        need,
                        estimate: w.job.estimated_duration,
                    });
                }
                Err(why) => {
                    w.blocked = Some(why);
                    continue;
                }
            }
            if strict {
                // Strict order stops at the first that does not fit: the
                // pass goes only that far (O(started · log n), not O(n)).
                let i = candidates.len() - 1;
                let mut live = Live {
                    ledger: &mut self.ledger,
                    reading,
                    limits: self.settings.limits,
                    now,
                };
                let pass = admit(mode, &[i], &candidates, &mut live, |c| c.estimate, now);
                if pass.started.is_empty() {
                    blocked_head = Some(i);
                    break;
                }
                started.extend(pass.started);
            }
        }
        if !strict {
            let all: Vec<usize> = (0..candidates.len()).collect();
            let mut live = Live {
                ledger: &mut self.ledger,
                reading,
                limits: self.settings.limits,
                now,
            };
            let pass = admit(mode, &all, &candidates, &mut live, |c| c.estimate, now);
            started = pass.started;
            blocked_head = pass.blocked_head;
        }
        let mut mine = None;
        let mut wake = Vec::new();
        let started_ids: BTreeSet<WaiterId> =
            started.iter().map(|(i, _)| candidates[*i].id).collect();
        for (i, grant) in started {
            let c = &candidates[i];
            let Some(w) = self.waiters.get_mut(&c.id) else {
                continue;
            };
            let job = w.job.clone();
            let no_figures = without_figures.contains(&c.id);
            self.ledger.annotate(grant.id, |g| {
                g.job = Some(job.clone());
                g.expected_end = job.estimated_duration.map(|d| now + d);
                g.without_gpu_figures = no_figures;
            });
            self.policy.on_start(&job, now);
            if no_figures {
                events.push(Event::AdmittedWithoutGpuFigures {
                    plugin: c.plugin.clone(),
                });
            }
            let granted = self.ledger.get(grant.id).cloned().unwrap_or(grant);
            events.push(Event::Granted {
                grant: granted.clone(),
            });
            if Some(c.id) == from {
                self.remove_waiter(c.id);
                mine = self
                    .ledger
                    .collect(granted.id, collect.caller, collect.lease)
                    .cloned();
            } else {
                self.ledger.hold_for_waiter(granted.id);
                w.granted = Some((granted.id, now));
                w.last_refusal = None;
                w.woken_at.get_or_insert(now);
                wake.push(w.waker.clone());
                self.watched.insert(c.id);
            }
        }
        // Refusals for the offering waiter and the head that blocked (for
        // explain() and the logs); the others keep their last one.
        let limits = self.settings.limits;
        let mut refusal = None;
        let blocked_id = blocked_head.map(|i| candidates[i].id);
        for c in &candidates {
            if started_ids.contains(&c.id) || (Some(c.id) != from && Some(c.id) != blocked_id) {
                continue;
            }
            let r = self.ledger.place(&c.need, reading, limits, now).err();
            if Some(c.id) == from {
                refusal = r.clone();
            }
            if let Some(w) = self.waiters.get_mut(&c.id) {
                w.last_refusal = r;
            }
        }
        if let Some(id) = from.filter(|id| !started_ids.contains(id) && mine.is_none()) {
            // Not reached by a strict pass (someone ahead blocked): its own fit.
            if refusal.is_none() {
                if let Some(w) = self.waiters.get(&id) {
                    if let Ok((need, _)) = Self::adjust(self.settings.missing, &w.need, reading) {
                        refusal = self.ledger.place(&need, reading, limits, now).err();
                    }
                }
                if let Some(w) = self.waiters.get_mut(&id) {
                    w.last_refusal = refusal.clone();
                }
            }
        }
        Offer {
            mine,
            wake,
            refusal,
            events,
        }
    }

    /// `need` as this reading allows it (`on_missing_stats`), with whether
    /// the GPU part was dropped; or why it must wait.
    pub fn adjusted(&self, need: &Need, reading: &Reading) -> Result<(Need, bool), String> {
        Self::adjust(self.settings.missing, need, reading)
    }

    fn adjust(
        missing: MissingStats,
        need: &Need,
        reading: &Reading,
    ) -> Result<(Need, bool), String> {
        if need.gpu_count == 0 || !reading.devices.is_empty() {
            return Ok((need.clone(), false));
        }
        match missing {
            MissingStats::Allow => {
                let mut n = need.clone();
                n.gpu_count = 0;
                n.vram_mb = 0.0;
                Ok((n, true))
            }
            MissingStats::Block => {
                Err("no GPU figures in the stats (on_missing_stats='block')".into())
            }
        }
    }

    /// Why a waiter is not granted yet, in the policy's terms.
    pub fn why(&mut self, id: WaiterId, now: f64) -> String {
        let order = self.order(now);
        let position = order.iter().position(|x| *x == id);
        let Some(w) = self.waiters.get(&id) else {
            return "not waiting".into();
        };
        if let Some(b) = &w.blocked {
            return b.clone();
        }
        let policy_view = self.policy.describe(&w.job, &Ctx { now });
        let ahead = position.unwrap_or(0);
        let mut parts = Vec::new();
        if ahead > 0 {
            parts.push(format!(
                "{ahead} waiter(s) ahead in {} order",
                self.policy.name()
            ));
        }
        parts.push(policy_view);
        if let Some(r) = &w.last_refusal {
            parts.push(refusal_text(r));
        }
        parts.join("; ")
    }

    /// Every waiter's place, in the policy's order.
    pub fn places(&mut self, now: f64) -> Vec<Place> {
        let order = self.order(now);
        let mut out = Vec::new();
        for (position, id) in order.iter().enumerate() {
            let reason = self.why(*id, now);
            if let Some(w) = self.waiters.get(id) {
                out.push(Place {
                    id: *id,
                    plugin: w.plugin.clone(),
                    position,
                    job: w.job.clone(),
                    need: w.need.clone(),
                    reason,
                    stalled: w.stalled,
                });
            }
        }
        out
    }

    /// The 0-based place of a waiter in the policy's order.
    pub fn position(&mut self, id: WaiterId, now: f64) -> Option<usize> {
        self.order(now).iter().position(|x| *x == id)
    }

    /// Marks the oldest unstarted grant of `plugin` started.
    pub fn start(&mut self, plugin: &str) -> Option<GrantId> {
        self.ledger.start(plugin)
    }

    /// The name-based start for `caller` (see [`Ledger::start_by`]).
    pub fn start_by(
        &mut self,
        plugin: &str,
        caller: Option<Caller>,
        others: &Others<'_>,
        may: &dyn Fn(&Grant) -> bool,
    ) -> Option<GrantId> {
        self.ledger.start_by(plugin, caller, others, may)
    }

    /// The name-based finish for `caller` (see [`Ledger::finish_by`]); with
    /// the waker of the waiter whose turn it now is.
    pub fn finish_by(
        &mut self,
        plugin: &str,
        caller: Option<Caller>,
        others: &Others<'_>,
        may: &dyn Fn(&Grant) -> bool,
        now: f64,
    ) -> (Finished, Vec<W>) {
        match self.ledger.finish_by(plugin, caller, others, may) {
            Finished::Released(g) => {
                self.ended(&g, now);
                let wake = self.head_waker(now);
                (Finished::Released(g), wake)
            }
            other => (other, Vec::new()),
        }
    }

    /// Marks grant `id` started (not as a lease); `false` if it is gone.
    pub fn start_id(&mut self, id: GrantId) -> bool {
        self.ledger.start_id(id)
    }

    pub fn start_lease(&mut self, id: GrantId) -> bool {
        self.ledger.start_lease(id)
    }

    pub fn attach_pid(&mut self, id: GrantId, pid: u32) -> bool {
        self.ledger.attach_pid(id, pid)
    }

    fn ended(&mut self, grant: &Grant, now: f64) {
        if let Some(job) = &grant.job {
            self.policy
                .on_finish(job, (now - grant.granted_at).max(0.0), now);
        }
    }

    /// Releases the oldest started grant of `plugin`; returns it and the
    /// waker of the waiter whose turn it now is.
    pub fn finish(&mut self, plugin: &str, now: f64) -> (Option<Grant>, Vec<W>) {
        match self.ledger.finish(plugin) {
            Some(g) => {
                self.ended(&g, now);
                (Some(g), self.head_waker(now))
            }
            None => (None, Vec::new()),
        }
    }

    /// Releases one grant by id.
    pub fn release(&mut self, id: GrantId, now: f64) -> (Option<Grant>, Vec<W>) {
        match self.ledger.release(id) {
            Some(g) => {
                self.ended(&g, now);
                (Some(g), self.head_waker(now))
            }
            None => (None, Vec::new()),
        }
    }

    /// The waker of whoever's turn it is (after something changed by itself).
    pub fn wake_head(&mut self, now: f64) -> Vec<W> {
        self.head_waker(now)
    }

    /// Records observed per-process GPU memory as peaks of the plugins
    /// whose grants have those processes attached; returns how many.
    pub fn observe(&mut self, processes: &[(u32, f64)]) -> usize {
        let observed: Vec<(String, f64)> = processes
            .iter()
            .filter_map(|&(pid, used)| self.ledger.plugin_of_pid(pid).map(|p| (p.to_owned(), used)))
            .collect();
        for (plugin, used) in &observed {
            // `used` is a validated reading: record cannot fail on it.
            let _ = self.peaks.record(plugin, Some(*used), None);
        }
        observed.len()
    }

    /// The next moment the ledger changes by itself (settle, expiry, a
    /// grant to take back), for a waiter's sleep.
    pub fn next_change(&self, now: f64) -> Option<f64> {
        let s = self.settings;
        let ledger = self
            .ledger
            .next_change(now, s.limits.settle_s, s.start_timeout_s);
        let claims = self
            .watched
            .iter()
            .filter_map(|id| self.waiters.get(id))
            .filter_map(|w| w.granted.map(|(_, at)| at).or(w.woken_at))
            .map(|at| at + s.claim_s)
            .filter(|&t| t > now)
            .min_by(f64::total_cmp);
        match (ledger, claims) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Preemption advice: running grants to stop so that `job` (needing
    /// `need`) could start, by the policy's rule (empty: none). Units are
    /// GPUs for a GPU need, else MB of RAM.
    pub fn preemption_candidates(
        &self,
        job: &JobInfo,
        need: &Need,
        reading: &Reading,
        now: f64,
    ) -> Vec<Grant> {
        if self
            .ledger
            .place(need, reading, self.settings.limits, now)
            .is_ok()
        {
            return Vec::new();
        }
        let gpu = need.gpu_count > 0;
        let grants: Vec<&Grant> = self.ledger.grants().filter(|g| g.started).collect();
        // Jobs are named by their position in `grants` for the policy.
        let running: Vec<RunningJob> = grants
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let mut job = g
                    .job
                    .clone()
                    .unwrap_or_else(|| JobInfo::new(0, &g.plugin, g.granted_at));
                job.id = i as u64;
                RunningJob {
                    job,
                    started: g.granted_at,
                    holds: if gpu {
                        g.devices.len() as f64
                    } else {
                        g.ram_mb()
                    },
                }
            })
            .collect();
        let needed = if gpu {
            f64::from(need.gpu_count)
        } else {
            need.ram_mb()
        };
        let mut new = job.clone();
        new.submitted = now;
        self.policy
            .should_preempt(&running, &new, needed)
            .into_iter()
            .filter_map(|i| grants.get(i as usize).map(|g| (*g).clone()))
            .collect()
    }

    pub fn admission(&self) -> Admission {
        self.policy.admission()
    }
}

/// A refusal as a sentence (MB rounded).
pub fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::NotEnoughDevices { needed, present } => {
            format!("needs {needed} GPUs, the machine shows {present}")
        }
        Refusal::Vram {
            device,
            needed_mb,
            available_mb,
            settling_mb,
            holders,
        } => {
            let mut s = format!(
                "GPU {device}: needs {needed_mb:.0} MB, {:.0} MB available",
                available_mb.max(0.0)
            );
            if !holders.is_empty() {
                s.push_str(&format!(" (held by {})", holders.join(", ")));
            }
            if *settling_mb > 0.0 {
                s.push_str(&format!(
                    "; settling: {settling_mb:.0} MB granted recently, not in the reading yet"
                ));
            }
            s
        }
        Refusal::Pool {
            pool,
            needed,
            available,
            settling,
            holders,
        } => {
            let unit = if pool.ends_with("_mb") { " MB" } else { "" };
            let mut s = format!(
                "{pool}: needs {needed:.0}{unit}, {:.0}{unit} available",
                available.max(0.0)
            );
            if !holders.is_empty() {
                s.push_str(&format!(" (held by {})", holders.join(", ")));
            }
            if *settling > 0.0 {
                s.push_str(&format!(
                    "; settling: {settling:.0}{unit} granted recently, not in the reading yet"
                ));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::{DeviceReading, RAM_MB};
    use super::*;
    use crate::policy::{by_name, Priority};

    fn machine(free: &[f64]) -> Reading {
        let mut r = Reading {
            devices: free
                .iter()
                .enumerate()
                .map(|(i, &f)| DeviceReading {
                    index: i as u32,
                    total_mb: 24_000.0,
                    free_mb: f,
                })
                .collect(),
            pools: Vec::new(),
        };
        r.set_pool(RAM_MB, Some(64_000.0), Some(64_000.0));
        r
    }

    fn gpu(vram: f64) -> Need {
        Need {
            gpu_count: 1,
            vram_mb: vram,
            pools: Vec::new(),
        }
    }

    fn settings() -> Settings {
        Settings {
            limits: Limits {
                headroom: 1.0,
                settle_s: 0.0,
            },
            ..Settings::default()
        }
    }

    fn queue(policy: &str) -> ReservationQueue<u64> {
        ReservationQueue::new(
            by_name(policy, None).unwrap_or_else(|| panic!("{policy}")),
            settings(),
            Peaks::in_memory(),
        )
    }

    fn job(t: f64, priority: f64) -> JobInfo {
        let mut j = JobInfo::new(0, "p", t);
        j.priority = priority;
        j
    }

    #[test]
    fn strict_fifo_grants_in_order_and_wakes_the_granted() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let b = q.join("b", gpu(2_000.0), job(1.0, 50.0), 2);
        // b brings a reading: a (head) is granted first and woken, then b.
        let offer = q.offer(Some(b), &r, 2.0);
        assert_eq!(offer.wake, vec![1]);
        assert!(offer.mine.is_some());
        assert!(q.claim(a, 2.0).is_some());
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn strict_fifo_nobody_passes_a_blocked_head() {
        let mut q = queue("fifo");
        let r = machine(&[10_000.0]);
        let _a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let b = q.join("b", gpu(2_000.0), job(1.0, 50.0), 2);
        let offer = q.offer(Some(b), &r, 2.0);
        assert!(offer.mine.is_none() && offer.wake.is_empty());
        assert!(q.why(b, 2.0).contains("1 waiter(s) ahead in fifo order"));
        // best_effort_fifo lets b pass.
        let mut q = queue("best_effort_fifo");
        let _a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let b = q.join("b", gpu(2_000.0), job(1.0, 50.0), 2);
        assert!(q.offer(Some(b), &r, 2.0).mine.is_some());
    }

    #[test]
    fn priority_orders_the_line() {
        let mut s = settings();
        s.limits.settle_s = 10.0;
        let mut q = ReservationQueue::new(
            Box::new(Priority { aging_per_s: 0.0 }),
            s,
            Peaks::in_memory(),
        );
        let r = machine(&[5_000.0]);
        let low = q.join("low", gpu(4_000.0), job(0.0, 10.0), 1);
        let high = q.join("high", gpu(4_000.0), job(1.0, 90.0), 2);
        assert_eq!(q.order(2.0), vec![high, low]);
        let offer = q.offer(Some(low), &r, 2.0);
        assert!(offer.mine.is_none());
        assert_eq!(offer.wake, vec![2]);
        assert!(q.why(low, 2.0).contains("priority 10"));
    }

    #[test]
    fn an_uncollected_grant_is_taken_back_and_the_line_moves_on() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let dead = q.join("dead", gpu(20_000.0), job(0.0, 50.0), 1);
        let live = q.join("live", gpu(20_000.0), job(1.0, 50.0), 2);
        let first = q.offer(Some(live), &r, 1.0);
        assert_eq!(first.wake, vec![1]);
        assert!(first.mine.is_none());
        // dead never claims; after claim_s it is passed over.
        let second = q.offer(Some(live), &r, 2.5);
        assert!(second
            .events
            .iter()
            .any(|e| matches!(e, Event::Reclaimed { plugin, .. } if plugin == "dead")));
        assert!(second.mine.is_some());
        assert!(q.is_waiting(dead));
        // It keeps its place for the next turn once it shows life.
        assert!(q.claim(dead, 3.0).is_none());
        assert_eq!(q.head(3.0), Some(dead));
    }

    #[test]
    fn a_silent_head_lets_others_drive_the_line() {
        let mut q = queue("fifo");
        let head = q.join("head", gpu(1.0), job(0.0, 50.0), 1);
        let other = q.join("other", gpu(1.0), job(0.0, 50.0), 2);
        assert!(q.may_offer(head, 0.5, 3.0));
        assert!(!q.may_offer(other, 0.5, 3.0));
        assert!(q.may_offer(other, 3.5, 3.0));
    }

    #[test]
    fn a_head_woken_and_silent_is_passed_over() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let holder = q.join("holder", gpu(20_000.0), job(0.0, 50.0), 0);
        let g = q
            .offer(Some(holder), &r, 0.0)
            .mine
            .unwrap_or_else(|| panic!("granted"));
        let dead = q.join("dead", gpu(20_000.0), job(1.0, 50.0), 1);
        let live = q.join("live", gpu(20_000.0), job(2.0, 50.0), 2);
        let (_, woken) = q.release(g.id, 3.0);
        assert_eq!(woken, vec![1]);
        assert!(!q.may_offer(live, 3.5, 100.0));
        assert_eq!(q.next_change(3.5), Some(4.0));
        assert!(q.may_offer(live, 4.0, 100.0));
        let offer = q.offer(Some(live), &r, 4.0);
        assert!(offer.mine.is_some());
        assert!(q.is_waiting(dead));
    }

    #[test]
    fn leaving_releases_an_uncollected_grant() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let b = q.join("b", gpu(20_000.0), job(1.0, 50.0), 2);
        let _ = q.offer(Some(b), &r, 1.0);
        assert_eq!(q.ledger().len(), 1);
        assert_eq!(q.leave(a, 1.0), vec![2]);
        assert_eq!(q.ledger().len(), 0);
    }

    #[test]
    fn missing_gpu_figures_allow_or_block() {
        let mut q = queue("fifo");
        let mut r = Reading::default();
        r.set_pool(RAM_MB, Some(64_000.0), Some(64_000.0));
        let a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let offer = q.offer(Some(a), &r, 0.0);
        let g = offer.mine.unwrap_or_else(|| panic!("granted"));
        assert!(g.without_gpu_figures && g.devices.is_empty());
        assert!(offer
            .events
            .iter()
            .any(|e| matches!(e, Event::AdmittedWithoutGpuFigures { .. })));
        q.settings.missing = MissingStats::Block;
        let b = q.join("b", gpu(1.0), job(1.0, 50.0), 2);
        assert!(q.offer(Some(b), &r, 1.0).mine.is_none());
        assert!(q.why(b, 1.0).contains("on_missing_stats='block'"));
    }

    #[test]
    fn a_fork_child_starts_with_no_waiters() {
        let mut q = queue("fifo");
        q.join("a", gpu(1.0), job(0.0, 50.0), 1);
        q.owner_pid = q.owner_pid.wrapping_add(1);
        assert!(q.check_fork());
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_grant_made_for_a_waiter_is_nobodys_until_collected() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let me = Collect {
            caller: Some(1),
            lease: false,
        };
        let a = q.join("p", gpu(8_000.0), job(0.0, 50.0), 1);
        let b = q.join("p", gpu(8_000.0), job(1.0, 50.0), 2);
        // b's reading grants a (first in line) and b; a has not collected.
        let offer = q.offer_as(Some(b), &r, 2.0, me);
        let mine = offer.mine.unwrap_or_else(|| panic!("granted"));
        assert_eq!(offer.wake, vec![1]);
        // b's start and finish pair with b's grant, never with a's.
        assert_eq!(
            q.start_by("p", Some(1), &Others::Unknown, &|_| true),
            Some(mine.id)
        );
        let (done, _) = q.finish_by("p", Some(1), &Others::Unknown, &|_| true, 3.0);
        assert!(matches!(done, Finished::Released(ref g) if g.id == mine.id));
        // A duplicate finish finds only a's uncollected grant: not released.
        let (dup, _) = q.finish_by("p", Some(1), &Others::Ended(&|_| false), &|_| true, 3.0);
        assert_eq!(dup, Finished::NotYours);
        assert!(q.finish("p", 3.0).0.is_none());
        let theirs = q
            .claim_as(
                a,
                3.0,
                Collect {
                    caller: Some(2),
                    lease: false,
                },
            )
            .unwrap_or_else(|| panic!("a collects its grant"));
        assert_eq!(q.ledger().len(), 1);
        // Another running caller's execution is not caller 1's to finish.
        let (other, _) = q.finish_by("p", Some(1), &Others::Ended(&|_| true), &|_| true, 4.0);
        assert_eq!(other, Finished::NotYours);
        // Once caller 2 has ended, its execution is an orphan: anyone's.
        let (orphan, _) = q.finish_by("p", Some(1), &Others::Ended(&|_| false), &|_| true, 4.0);
        assert!(matches!(orphan, Finished::Released(ref g) if g.id == theirs.id));
        assert!(q.ledger().is_empty());
    }

    #[test]
    fn executions_of_one_name_pair_with_their_callers_grants() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let by = |caller| Collect {
            caller: Some(caller),
            lease: false,
        };
        let a = q.join("p", gpu(1_000.0), job(0.0, 50.0), 1);
        let ga = q
            .offer_as(Some(a), &r, 0.0, by(1))
            .mine
            .unwrap_or_else(|| panic!("a"));
        let b = q.join("p", gpu(1_000.0), job(0.0, 50.0), 2);
        let gb = q
            .offer_as(Some(b), &r, 0.0, by(2))
            .mine
            .unwrap_or_else(|| panic!("b"));
        // b starts first: its own grant, not the older one of a.
        assert_eq!(
            q.start_by("p", Some(2), &Others::Unknown, &|_| true),
            Some(gb.id)
        );
        // a fails before starting: finishing releases its own unstarted grant.
        let (fa, _) = q.finish_by("p", Some(1), &Others::Unknown, &|_| true, 1.0);
        assert!(matches!(fa, Finished::Released(ref g) if g.id == ga.id));
        assert!(q.ledger().get(gb.id).is_some_and(|g| g.started));
        // A hand-off: a thread that allocated nothing starts an orphan.
        let c = q.join("p", gpu(1_000.0), job(0.0, 50.0), 3);
        let gc = q
            .offer_as(Some(c), &r, 0.0, by(3))
            .mine
            .unwrap_or_else(|| panic!("c"));
        assert_eq!(
            q.start_by("p", Some(4), &Others::Ended(&|c| c != 3), &|_| true),
            Some(gc.id)
        );
        let (f4, _) = q.finish_by("p", Some(4), &Others::Unknown, &|_| true, 2.0);
        assert!(matches!(f4, Finished::Released(ref g) if g.id == gc.id));
        let (nothing, _) = q.finish_by("x", Some(4), &Others::Unknown, &|_| true, 2.0);
        assert_eq!(nothing, Finished::NoneHeld);
    }

    #[test]
    fn a_lease_is_marked_when_collected() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let lease = Collect {
            caller: Some(1),
            lease: true,
        };
        let a = q.join("p", gpu(1_000.0), job(0.0, 50.0), 1);
        let g = q
            .offer_as(Some(a), &r, 0.0, lease)
            .mine
            .unwrap_or_else(|| panic!("a"));
        assert!(g.leased);
        assert!(q.start("p").is_none());
        assert!(q.finish("p", 1.0).0.is_none());
        assert!(q.release(g.id, 1.0).0.is_some());
    }

    #[test]
    fn a_waiter_whose_grant_expired_waits_again() {
        let mut q = queue("fifo");
        q.settings.start_timeout_s = 0.5;
        q.settings.claim_s = 10.0;
        let r = machine(&[24_000.0]);
        let a = q.join("a", gpu(20_000.0), job(0.0, 50.0), 1);
        let b = q.join("b", gpu(1_000.0), job(0.0, 50.0), 2);
        let _ = q.offer(Some(b), &r, 0.0);
        // a's grant expires before a collects it: a is still in line.
        let _ = q.offer(Some(b), &r, 1.0);
        assert!(q.claim(a, 1.0).is_none());
        assert!(q.is_waiting(a));
        assert!(q.offer(Some(a), &r, 1.0).mine.is_some());
    }

    #[test]
    fn a_dead_waiter_leaves_the_line_and_costs_nobody_a_claim() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let dead: Vec<WaiterId> = (0..20)
            .map(|i| q.join("dead", gpu(20_000.0), job(f64::from(i), 50.0), 9))
            .collect();
        let live = q.join("live", gpu(20_000.0), job(100.0, 50.0), 1);
        // The first pass grants the first dead waiter; it is reported
        // passed over after claim_s, and seen dead it leaves.
        let first = q.offer(Some(live), &r, 200.0);
        assert!(first.mine.is_none());
        let second = q.offer(Some(live), &r, 201.5);
        let reclaimed: Vec<WaiterId> = second
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Reclaimed { waiter, .. } => Some(*waiter),
                _ => None,
            })
            .collect();
        assert_eq!(reclaimed, vec![dead[0]]);
        for id in &dead {
            q.gone(*id, 201.5);
        }
        assert_eq!(q.waiting(), 1);
        // The live waiter is first now and granted at once.
        assert!(q.may_offer(live, 201.5, 0.0));
        assert!(q.offer(Some(live), &r, 201.5).mine.is_some());
    }

    #[test]
    fn restored_uncollected_grants_stay_nobodys() {
        let mut q = queue("fifo");
        let r = machine(&[24_000.0]);
        let a = q.join("p", gpu(1_000.0), job(0.0, 50.0), 1);
        let _ = q.offer(None, &r, 0.0);
        let (waiters, next) = q.export();
        let mut back = ReservationQueue::restore(
            by_name("fifo", None).unwrap_or_else(|| panic!("fifo")),
            settings(),
            Peaks::in_memory(),
            q.ledger().clone(),
            waiters,
            next,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(back.finish("p", 1.0).0.is_none());
        assert!(back.claim(a, 1.0).is_some());
        assert!(back.finish("p", 1.0).0.is_some());
    }

    #[test]
    fn finish_charges_fair_share_and_reorders() {
        let mut q = queue("fair_share");
        let r = machine(&[24_000.0]);
        let mut alice = job(0.0, 50.0);
        alice.user = Some(Arc::from("alice"));
        let mut bob = job(1.0, 50.0);
        bob.user = Some(Arc::from("bob"));
        let a = q.join("a", gpu(20_000.0), alice.clone(), 1);
        let g = q
            .offer(Some(a), &r, 0.0)
            .mine
            .unwrap_or_else(|| panic!("granted"));
        let _ = q.start(&g.plugin);
        let _ = q.finish("a", 100.0);
        let a2 = q.join("a", gpu(20_000.0), alice, 1);
        let b = q.join("b", gpu(20_000.0), bob, 2);
        assert_eq!(q.order(101.0), vec![b, a2]);
    }

    #[test]
    fn choosing_the_next_of_many_uses_the_index() {
        let mut q = queue("priority");
        for i in 0..10_000 {
            q.join("p", gpu(1.0), job(f64::from(i), f64::from(i % 100)), 0);
        }
        let head = q.head(0.0);
        assert!(head.is_some());
        assert_eq!(q.waiting(), 10_000);
    }

    mod properties {
        use super::*;
        use crate::policy::NAMES;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Join {
                vram: f64,
                gpus: u32,
                priority: f64,
                user: u8,
                est: f64,
            },
            Offer(usize),
            Claim(usize),
            Leave(usize),
            Release(usize),
            Advance(f64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (
                    0.0f64..30_000.0,
                    0u32..3,
                    0.0f64..=100.0,
                    0u8..3,
                    0.1f64..100.0
                )
                    .prop_map(|(vram, gpus, priority, user, est)| Op::Join {
                        vram,
                        gpus,
                        priority,
                        user,
                        est
                    }),
                (0usize..64).prop_map(Op::Offer),
                (0usize..64).prop_map(Op::Claim),
                (0usize..64).prop_map(Op::Leave),
                (0usize..64).prop_map(Op::Release),
                (0.0f64..5.0).prop_map(Op::Advance),
            ]
        }

        proptest! {
            /// Under every policy: nothing is ever reserved beyond a device's
            /// capacity, and after everyone leaves and every grant is
            /// released nothing is left.
            #[test]
            fn no_policy_over_commits(policy in 0usize..NAMES.len(), ops in proptest::collection::vec(op(), 1..80)) {
                let mut q: ReservationQueue<u64> = ReservationQueue::new(
                    by_name(NAMES[policy], None).unwrap_or_else(|| panic!("policy")),
                    Settings::default(),
                    Peaks::in_memory(),
                );
                let r = {
                    let mut r = machine(&[24_000.0, 24_000.0]);
                    r.devices[1].total_mb = 16_000.0;
                    r.devices[1].free_mb = 16_000.0;
                    r
                };
                let mut now = 0.0;
                let mut waiting: Vec<WaiterId> = Vec::new();
                let mut grants: Vec<GrantId> = Vec::new();
                for op in ops {
                    match op {
                        Op::Join { vram, gpus, priority, user, est } => {
                            let mut j = job(now, priority);
                            j.user = Some(Arc::from(format!("u{user}").as_str()));
                            j.estimated_duration = Some(est);
                            let need = Need { gpu_count: gpus, vram_mb: vram, pools: Vec::new() };
                            waiting.push(q.join("p", need, j, 0));
                        }
                        Op::Offer(i) if !waiting.is_empty() => {
                            let id = waiting[i % waiting.len()];
                            if let Some(g) = q.offer(Some(id), &r, now).mine {
                                grants.push(g.id);
                                waiting.retain(|w| *w != id);
                            }
                        }
                        Op::Claim(i) if !waiting.is_empty() => {
                            let id = waiting[i % waiting.len()];
                            if let Some(g) = q.claim(id, now) {
                                grants.push(g.id);
                                waiting.retain(|w| *w != id);
                            }
                        }
                        Op::Leave(i) if !waiting.is_empty() => {
                            let id = waiting.remove(i % waiting.len());
                            q.leave(id, now);
                        }
                        Op::Release(i) if !grants.is_empty() => {
                            let id = grants.remove(i % grants.len());
                            q.release(id, now);
                        }
                        Op::Advance(s) => now += s,
                        _ => {}
                    }
                    for d in &r.devices {
                        let reserved = q.ledger().reserved_by_device().get(&d.index).copied().unwrap_or(0.0);
                        prop_assert!(reserved <= 0.9 * d.total_mb + 1e-6, "{}: device {} holds {reserved}", NAMES[policy], d.index);
                    }
                }
                for id in waiting {
                    q.leave(id, now);
                }
                for id in grants {
                    q.release(id, now);
                }
                prop_assert_eq!(q.waiting(), 0);
                // Grants that expired or were taken back are gone already.
                prop_assert!(q.ledger().is_empty(), "{} left {:?}", NAMES[policy], q.ledger().grants().collect::<Vec<_>>());
            }
        }
    }
}

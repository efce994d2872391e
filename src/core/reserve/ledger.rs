//! The reservation ledger: what is promised on each GPU and in each scalar
//! pool (RAM, CPU cores, user-defined), and the atomic check-and-reserve
//! that never double-books.
//!
//! A grant succeeds only if, on every device it uses and in every pool:
//! (a) capacity: the reservations plus the need stay within
//!     `headroom × total`; and
//! (b) live reading: the need fits what is observed free, less the part of
//!     recent grants (younger than `settle`) that the reading does not show
//!     in use yet. What a reading shows is judged against the device's (or
//!     pool's) use when the first of those grants was made, so a grant whose
//!     memory is already visible is not subtracted a second time.
//!
//! Placement is best fit (the device left with the least spare capacity),
//! lowest index on ties, so it is deterministic; a multi-GPU need is placed
//! on `gpu_count` devices together or not at all.
//!
//! Sums per device and per pool are kept as grants come and go, so a
//! decision costs O(devices + pools + recent grants), not O(grants).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::policy::JobInfo;

/// The pool name of system RAM (MB).
pub const RAM_MB: &str = "ram_mb";
/// The pool name of CPU cores.
pub const CPU_CORES: &str = "cpu_cores";

/// What a plugin asks for.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Need {
    /// Devices needed (0 for a CPU-only plugin).
    pub gpu_count: u32,
    /// VRAM per device, MB.
    pub vram_mb: f64,
    /// Amounts from scalar pools (`ram_mb`, `cpu_cores`, user-defined),
    /// each name at most once.
    pub pools: Vec<(Arc<str>, f64)>,
}

impl Need {
    pub fn pool(&self, name: &str) -> f64 {
        self.pools
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map_or(0.0, |p| p.1)
    }

    pub fn ram_mb(&self) -> f64 {
        self.pool(RAM_MB)
    }

    /// Sets (or adds) a pool amount.
    pub fn set_pool(&mut self, name: &str, amount: f64) {
        match self.pools.iter_mut().find(|(n, _)| n.as_ref() == name) {
            Some(p) => p.1 = amount,
            None => self.pools.push((Arc::from(name), amount)),
        }
    }
}

/// One device as the stats show it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceReading {
    pub index: u32,
    pub total_mb: f64,
    pub free_mb: f64,
}

/// One scalar pool as the stats show it; `None` figures are unknown.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReading {
    pub name: Arc<str>,
    pub total: Option<f64>,
    pub available: Option<f64>,
}

/// The machine as the stats show it now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub devices: Vec<DeviceReading>,
    pub pools: Vec<PoolReading>,
}

impl Reading {
    pub fn pool(&self, name: &str) -> Option<&PoolReading> {
        self.pools.iter().find(|p| p.name.as_ref() == name)
    }

    /// Sets a pool's figures (replacing any earlier ones).
    pub fn set_pool(&mut self, name: &str, total: Option<f64>, available: Option<f64>) {
        self.pools.retain(|p| p.name.as_ref() != name);
        self.pools.push(PoolReading {
            name: Arc::from(name),
            total,
            available,
        });
    }
}

/// Identifies a grant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GrantId(pub u64);

/// A reservation held by a plugin execution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub id: GrantId,
    pub plugin: String,
    pub devices: Vec<u32>,
    /// VRAM per device, MB.
    pub vram_mb: f64,
    pub pools: Vec<(Arc<str>, f64)>,
    /// Clock seconds.
    pub granted_at: f64,
    pub started: bool,
    /// Held by a lease (released by id): name-based start/finish skip it.
    pub leased: bool,
    /// Processes running this grant's plugin, for measured peaks.
    pub pids: Vec<u32>,
    /// Per device, its used MB in the reading that admitted this grant.
    seen_used: Vec<f64>,
    /// Per pool, its used amount in that reading (NaN: unknown; `null`
    /// when serialized).
    #[serde(with = "nan_as_null")]
    seen_pool_used: Vec<f64>,
    /// The job it serves (priority, user, ...), for policies and views.
    pub job: Option<JobInfo>,
    /// When the job is expected to end (start + estimated duration).
    pub expected_end: Option<f64>,
    /// Admitted without GPU figures (on_missing_stats='allow'): no device
    /// was reserved although the plugin asked for one.
    pub without_gpu_figures: bool,
}

impl Grant {
    /// The value for `CUDA_VISIBLE_DEVICES`.
    pub fn cuda_visible_devices(&self) -> String {
        let ids: Vec<String> = self.devices.iter().map(u32::to_string).collect();
        ids.join(",")
    }

    pub fn pool(&self, name: &str) -> f64 {
        self.pools
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map_or(0.0, |p| p.1)
    }

    pub fn ram_mb(&self) -> f64 {
        self.pool(RAM_MB)
    }
}

/// Why a need cannot be granted now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Fewer devices than `gpu_count` exist at all.
    NotEnoughDevices { needed: u32, present: u32 },
    /// No set of devices passes both checks; the closest device is reported.
    Vram {
        device: u32,
        needed_mb: f64,
        available_mb: f64,
        /// MB granted within the settle window and not in the reading yet.
        settling_mb: f64,
        holders: Vec<String>,
    },
    /// A scalar pool (RAM, CPU cores, ...) is short.
    Pool {
        pool: Arc<str>,
        needed: f64,
        available: f64,
        settling: f64,
        holders: Vec<String>,
    },
}

/// Ledger settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Fraction of each device's (and pool's) total that may be reserved.
    pub headroom: f64,
    /// Seconds a new grant's memory may be invisible in the readings.
    pub settle_s: f64,
}

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    grants: BTreeMap<GrantId, Grant>,
    next_id: u64,
    reserved_dev: HashMap<u32, f64>,
    reserved_pool: HashMap<Arc<str>, f64>,
    by_plugin: HashMap<String, BTreeSet<GrantId>>,
    by_pid: HashMap<u32, GrantId>,
    /// Grants in grant order (= time order) that may still be settling.
    recent: VecDeque<GrantId>,
    unstarted: BTreeSet<GrantId>,
    /// Grants made for a waiter that has not collected them yet: nobody's
    /// execution, so name-based start/finish never touch them.
    pending: BTreeSet<GrantId>,
    /// The caller (thread) whose execution holds each collected grant, as
    /// far as known (a ledger read back from a file knows none).
    callers: HashMap<GrantId, Caller>,
}

/// Who runs an execution: an opaque id of the calling thread (the binding
/// uses Python's thread ident). Name-based start/finish pair a caller with
/// its own grants first.
pub type Caller = u64;

/// How a name-based start or finish may pick a grant besides the caller's
/// own: those of callers that have ended (or are unknown) are orphans,
/// anyone's to start or finish.
pub enum Others<'a> {
    /// Only the caller's own grants and those with no known caller.
    Unknown,
    /// Also grants of callers for which `alive` says false.
    Ended(&'a dyn Fn(Caller) -> bool),
}

/// What a name-based finish released, or why nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Released(Box<Grant>),
    /// Executions of the plugin exist but belong to other callers that are
    /// still running (or to waiters that have not collected them).
    NotYours,
    /// No execution of the plugin is held.
    NoneHeld,
}

/// `f64`s where NaN (unknown) is written as `null` (JSON has no NaN).
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let opts: Vec<Option<f64>> = v.iter().map(|x| (!x.is_nan()).then_some(*x)).collect();
        opts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let opts = Vec::<Option<f64>>::deserialize(d)?;
        Ok(opts.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

fn add(map: &mut HashMap<u32, f64>, key: u32, v: f64) {
    let e = map.entry(key).or_insert(0.0);
    *e += v;
    if e.abs() < 1e-6 {
        map.remove(&key);
    }
}

fn add_pool(map: &mut HashMap<Arc<str>, f64>, key: &Arc<str>, v: f64) {
    let e = map.entry(key.clone()).or_insert(0.0);
    *e += v;
    if e.abs() < 1e-9 {
        map.remove(key);
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    pub fn get(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    /// Rebuilds a ledger from its grants and its next grant id (as read
    /// back from a shared ledger file); the per-device, per-pool, per-plugin
    /// and per-pid indices are recomputed, so it decides exactly as the
    /// ledger that wrote them.
    /// A grant that could not have been made (lengths that do not match,
    /// amounts that are not finite and non-negative, a repeated id) is an
    /// error naming it.
    pub fn restore(grants: impl IntoIterator<Item = Grant>, next_id: u64) -> Result<Self, String> {
        let mut ledger = Self::new();
        let mut grants: Vec<Grant> = grants.into_iter().collect();
        grants.sort_by_key(|g| g.id);
        for grant in grants {
            let amounts_ok = grant.vram_mb.is_finite()
                && grant.vram_mb >= 0.0
                && grant.granted_at.is_finite()
                && grant.pools.iter().all(|p| p.1.is_finite() && p.1 >= 0.0)
                && grant.seen_used.iter().all(|v| v.is_finite());
            if grant.seen_used.len() != grant.devices.len()
                || grant.seen_pool_used.len() != grant.pools.len()
                || !amounts_ok
                || ledger.grants.contains_key(&grant.id)
            {
                return Err(format!(
                    "grant {} of {:?} is inconsistent",
                    grant.id.0, grant.plugin
                ));
            }
            ledger.next_id = ledger.next_id.max(grant.id.0 + 1);
            let (id, pids) = (grant.id, grant.pids.clone());
            ledger.insert(grant);
            for pid in pids {
                ledger.by_pid.insert(pid, id);
            }
        }
        ledger.next_id = ledger.next_id.max(next_id);
        Ok(ledger)
    }

    /// The id the next grant will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    fn recent_grants(&self, now: f64, settle_s: f64) -> impl Iterator<Item = &Grant> {
        self.recent
            .iter()
            .filter_map(|id| self.grants.get(id))
            .filter(move |g| now - g.granted_at < settle_s)
    }

    /// MB granted on `d` within the settle window that its reading does not
    /// show in use yet.
    fn unseen_on(&self, d: &DeviceReading, limits: Limits, now: f64) -> f64 {
        let mut granted = 0.0;
        let mut baseline = f64::INFINITY;
        for g in self.recent_grants(now, limits.settle_s) {
            if let Some(pos) = g.devices.iter().position(|&x| x == d.index) {
                granted += g.vram_mb;
                baseline = baseline.min(g.seen_used[pos]);
            }
        }
        if granted <= 0.0 {
            return 0.0;
        }
        let shown = ((d.total_mb - d.free_mb) - baseline).max(0.0);
        (granted - shown).max(0.0)
    }

    fn unseen_in(
        &self,
        pool: &PoolReading,
        index_of: impl Fn(&Grant) -> Option<usize>,
        limits: Limits,
        now: f64,
    ) -> f64 {
        let mut granted = 0.0;
        let mut baseline = f64::INFINITY;
        for g in self.recent_grants(now, limits.settle_s) {
            if let Some(i) = index_of(g) {
                granted += g.pools[i].1;
                let seen = g.seen_pool_used[i];
                if seen.is_nan() {
                    // Unknown at grant time: nothing is taken as shown.
                    baseline = f64::NEG_INFINITY;
                } else {
                    baseline = baseline.min(seen);
                }
            }
        }
        if granted <= 0.0 {
            return 0.0;
        }
        let shown = match (pool.total, pool.available) {
            (Some(t), Some(a)) if baseline.is_finite() => ((t - a) - baseline).max(0.0),
            _ => 0.0,
        };
        (granted - shown).max(0.0)
    }

    fn holders(&self, device: Option<u32>, pool: Option<&str>) -> Vec<String> {
        self.grants
            .values()
            .filter(|g| match (device, pool) {
                (Some(d), _) => g.devices.contains(&d) && g.vram_mb > 0.0,
                (None, Some(p)) => g.pool(p) > 0.0,
                (None, None) => false,
            })
            .map(|g| g.plugin.clone())
            .collect()
    }

    /// What a need could get on a device now (capacity left, live free
    /// less unseen), and the unseen part.
    fn available_on(&self, d: &DeviceReading, limits: Limits, now: f64) -> (f64, f64) {
        let reserved = self.reserved_dev.get(&d.index).copied().unwrap_or(0.0);
        let capacity_left = limits.headroom * d.total_mb - reserved;
        let unseen = self.unseen_on(d, limits, now);
        (capacity_left.min(d.free_mb - unseen), unseen)
    }

    /// What a pool has for a need now; `None` when the reading knows
    /// nothing of it (no check).
    fn available_in(&self, p: &PoolReading, limits: Limits, now: f64) -> Option<(f64, f64)> {
        if p.total.is_none() && p.available.is_none() {
            return None;
        }
        let reserved = self.reserved_pool.get(&p.name).copied().unwrap_or(0.0);
        let capacity = p
            .total
            .map_or(f64::INFINITY, |t| limits.headroom * t - reserved);
        let name = p.name.clone();
        let unseen = self.unseen_in(
            p,
            |g| g.pools.iter().position(|(n, _)| *n == name),
            limits,
            now,
        );
        let live = p.available.map_or(f64::INFINITY, |a| a - unseen);
        Some((capacity.min(live), unseen))
    }

    /// Checks without reserving: the devices the need would get, or why not.
    pub fn place(
        &self,
        need: &Need,
        reading: &Reading,
        limits: Limits,
        now: f64,
    ) -> Result<Vec<u32>, Refusal> {
        let mut devices = Vec::new();
        if need.gpu_count > 0 {
            let present = reading.devices.len() as u32;
            if present < need.gpu_count {
                return Err(Refusal::NotEnoughDevices {
                    needed: need.gpu_count,
                    present,
                });
            }
            let mut fits: Vec<(f64, u32)> = Vec::new();
            let mut closest: Option<(f64, f64, u32)> = None;
            for d in &reading.devices {
                let (available, unseen) = self.available_on(d, limits, now);
                if need.vram_mb <= available {
                    fits.push((available - need.vram_mb, d.index));
                } else if closest.is_none_or(|(best, _, _)| available > best) {
                    closest = Some((available, unseen, d.index));
                }
            }
            if (fits.len() as u32) < need.gpu_count {
                let (available_mb, settling_mb, device) = closest.unwrap_or((0.0, 0.0, 0));
                return Err(Refusal::Vram {
                    device,
                    needed_mb: need.vram_mb,
                    available_mb,
                    settling_mb,
                    holders: self.holders(Some(device), None),
                });
            }
            // Best fit: least spare first; ties by index (deterministic).
            fits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            devices = fits
                .iter()
                .take(need.gpu_count as usize)
                .map(|&(_, i)| i)
                .collect();
            devices.sort_unstable();
        }
        for (name, amount) in &need.pools {
            if *amount <= 0.0 {
                continue;
            }
            let Some(p) = reading.pool(name) else {
                continue;
            };
            if let Some((available, settling)) = self.available_in(p, limits, now) {
                if *amount > available {
                    return Err(Refusal::Pool {
                        pool: name.clone(),
                        needed: *amount,
                        available,
                        settling,
                        holders: self.holders(None, Some(name)),
                    });
                }
            }
        }
        Ok(devices)
    }

    /// Whether `need` could ever be granted on this machine, whatever is
    /// released: within `headroom × total` on enough devices, and in pools.
    pub fn can_ever_fit(need: &Need, reading: &Reading, limits: Limits) -> bool {
        if need.gpu_count > 0 {
            let big_enough = reading
                .devices
                .iter()
                .filter(|d| need.vram_mb <= limits.headroom * d.total_mb)
                .count();
            if (big_enough as u32) < need.gpu_count {
                return false;
            }
        }
        need.pools.iter().all(|(name, amount)| {
            reading
                .pool(name)
                .and_then(|p| p.total)
                .is_none_or(|total| *amount <= limits.headroom * total)
        })
    }

    /// Atomic check-and-reserve.
    pub fn grant(
        &mut self,
        plugin: &str,
        need: &Need,
        reading: &Reading,
        limits: Limits,
        now: f64,
    ) -> Result<Grant, Refusal> {
        let devices = self.place(need, reading, limits, now)?;
        let seen_used = devices
            .iter()
            .map(|i| {
                reading
                    .devices
                    .iter()
                    .find(|d| d.index == *i)
                    .map_or(0.0, |d| d.total_mb - d.free_mb)
            })
            .collect();
        let pools: Vec<(Arc<str>, f64)> = need
            .pools
            .iter()
            .filter(|(_, v)| *v > 0.0)
            .cloned()
            .collect();
        let seen_pool_used = pools
            .iter()
            .map(|(n, _)| match reading.pool(n) {
                Some(PoolReading {
                    total: Some(t),
                    available: Some(a),
                    ..
                }) => t - a,
                _ => f64::NAN,
            })
            .collect();
        let id = GrantId(self.next_id);
        self.next_id += 1;
        let grant = Grant {
            id,
            plugin: plugin.to_owned(),
            devices,
            vram_mb: if need.gpu_count > 0 {
                need.vram_mb
            } else {
                0.0
            },
            pools,
            granted_at: now,
            started: false,
            leased: false,
            pids: Vec::new(),
            seen_used,
            seen_pool_used,
            job: None,
            expected_end: None,
            without_gpu_figures: false,
        };
        self.insert(grant.clone());
        Ok(grant)
    }

    fn insert(&mut self, grant: Grant) {
        for &d in &grant.devices {
            add(&mut self.reserved_dev, d, grant.vram_mb);
        }
        for (name, v) in &grant.pools {
            add_pool(&mut self.reserved_pool, name, *v);
        }
        self.by_plugin
            .entry(grant.plugin.clone())
            .or_default()
            .insert(grant.id);
        self.recent.push_back(grant.id);
        if !grant.started {
            self.unstarted.insert(grant.id);
        }
        self.grants.insert(grant.id, grant);
    }

    /// Mutable access for annotations (job, expected end, flags).
    pub fn annotate(&mut self, id: GrantId, f: impl FnOnce(&mut Grant)) -> bool {
        match self.grants.get_mut(&id) {
            Some(g) => {
                f(g);
                true
            }
            None => false,
        }
    }

    /// Drops settled grants from the recent list (they no longer matter).
    pub fn settle(&mut self, now: f64, settle_s: f64) {
        while let Some(id) = self.recent.front() {
            match self.grants.get(id) {
                Some(g) if now - g.granted_at < settle_s => break,
                _ => {
                    self.recent.pop_front();
                }
            }
        }
    }

    /// Marks the oldest unstarted grant of `plugin` started (see
    /// [`Ledger::start_by`]; no caller: any grant not held by a lease and
    /// collected).
    pub fn start(&mut self, plugin: &str) -> Option<GrantId> {
        self.start_by(plugin, None, &Others::Unknown, &|_| true)
    }

    /// The name-based start: marks started the oldest unstarted grant of
    /// `plugin` that `caller` collected, else the oldest unstarted orphan
    /// (its caller ended or is unknown); the caller then owns it. Grants
    /// waiting for a waiter to collect them, grants held by leases and
    /// those `may` refuses are never picked.
    pub fn start_by(
        &mut self,
        plugin: &str,
        caller: Option<Caller>,
        others: &Others<'_>,
        may: &dyn Fn(&Grant) -> bool,
    ) -> Option<GrantId> {
        let id = self
            .pick(
                plugin,
                caller,
                others,
                may,
                &[(true, false), (false, false)],
            )
            .ok()?;
        self.mark_started(id, false);
        if let Some(c) = caller {
            self.callers.insert(id, c);
        }
        Some(id)
    }

    /// The oldest grant of `plugin` in the first class of `order` that has
    /// one ((own, started) pairs: own means collected or started by
    /// `caller`, else an orphan); `Err` with whether some execution of
    /// `plugin` (another caller's) was passed over.
    fn pick(
        &self,
        plugin: &str,
        caller: Option<Caller>,
        others: &Others<'_>,
        may: &dyn Fn(&Grant) -> bool,
        order: &[(bool, bool)],
    ) -> Result<GrantId, bool> {
        let Some(ids) = self.by_plugin.get(plugin) else {
            return Err(false);
        };
        let mut best: Option<(usize, GrantId)> = None;
        let mut seen = false;
        for id in ids {
            let Some(g) = self.grants.get(id) else {
                continue;
            };
            if g.leased || self.pending.contains(id) || !may(g) {
                continue;
            }
            seen = true;
            let whose = self.callers.get(id).copied();
            let own = caller.is_some() && whose == caller;
            let orphan = match (whose, others) {
                // No caller named, or none known: no pairing to keep.
                _ if caller.is_none() => true,
                (None, _) => true,
                (Some(_), _) if own => false,
                (Some(_), Others::Unknown) => false,
                (Some(c), Others::Ended(alive)) => !alive(c),
            };
            if !own && !orphan {
                continue;
            }
            let rank = order
                .iter()
                .position(|&(o, st)| o == own && st == g.started);
            if let Some(rank) = rank {
                if best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, *id));
                    if rank == 0 {
                        break;
                    }
                }
            }
        }
        best.map(|(_, id)| id).ok_or(seen)
    }

    fn mark_started(&mut self, id: GrantId, leased: bool) -> bool {
        match self.grants.get_mut(&id) {
            Some(g) => {
                g.started = true;
                g.leased |= leased;
                self.unstarted.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Marks one grant started (as `start` does, by id); `false` if it is gone.
    pub fn start_id(&mut self, id: GrantId) -> bool {
        self.mark_started(id, false)
    }

    /// Marks one grant started and held by a lease; `false` if it is gone.
    pub fn start_lease(&mut self, id: GrantId) -> bool {
        self.mark_started(id, true)
    }

    /// Records that `pid` runs the grant's plugin; `false` if the grant is gone.
    pub fn attach_pid(&mut self, id: GrantId, pid: u32) -> bool {
        match self.grants.get_mut(&id) {
            Some(grant) => {
                if !grant.pids.contains(&pid) {
                    grant.pids.push(pid);
                }
                self.by_pid.insert(pid, id);
                true
            }
            None => false,
        }
    }

    /// The plugin whose grant has `pid` attached, if any.
    pub fn plugin_of_pid(&self, pid: u32) -> Option<&str> {
        let id = self.by_pid.get(&pid)?;
        self.grants.get(id).map(|g| g.plugin.as_str())
    }

    pub fn has_pids(&self) -> bool {
        !self.by_pid.is_empty()
    }

    /// Releases the oldest started grant of `plugin` (or, if none started,
    /// the oldest unstarted one) that no lease holds and no waiter still
    /// has to collect.
    pub fn finish(&mut self, plugin: &str) -> Option<Grant> {
        match self.finish_by(plugin, None, &Others::Unknown, &|_| true) {
            Finished::Released(g) => Some(*g),
            _ => None,
        }
    }

    /// The name-based finish, pairing executions with their own grants:
    /// releases `caller`'s oldest started grant of `plugin`, else its
    /// oldest unstarted one (allocated, never started), else the oldest
    /// started orphan (its caller ended or is unknown), else the oldest
    /// unstarted orphan. Another running caller's execution is never
    /// released (nor a lease's, nor a grant a waiter has yet to collect).
    pub fn finish_by(
        &mut self,
        plugin: &str,
        caller: Option<Caller>,
        others: &Others<'_>,
        may: &dyn Fn(&Grant) -> bool,
    ) -> Finished {
        const ORDER: [(bool, bool); 4] =
            [(true, true), (true, false), (false, true), (false, false)];
        match self.pick(plugin, caller, others, may, &ORDER) {
            Ok(id) => self
                .release(id)
                .map_or(Finished::NoneHeld, |g| Finished::Released(Box::new(g))),
            Err(true) => Finished::NotYours,
            Err(false) => match self.by_plugin.contains_key(plugin) {
                true => Finished::NotYours,
                false => Finished::NoneHeld,
            },
        }
    }

    /// A grant made for a waiter, to be collected by it (until then it is
    /// nobody's execution).
    pub fn hold_for_waiter(&mut self, id: GrantId) {
        if self.grants.contains_key(&id) {
            self.pending.insert(id);
        }
    }

    /// Whether grant `id` waits for its waiter to collect it.
    pub fn is_pending(&self, id: GrantId) -> bool {
        self.pending.contains(&id)
    }

    /// The waiter collected grant `id`: from now on it is `caller`'s
    /// execution, or a lease's (released by id only). `None` if it is gone.
    pub fn collect(&mut self, id: GrantId, caller: Option<Caller>, lease: bool) -> Option<&Grant> {
        self.pending.remove(&id);
        let g = self.grants.get_mut(&id)?;
        g.leased |= lease;
        if let Some(c) = caller.filter(|_| !lease) {
            self.callers.insert(id, c);
        }
        Some(g)
    }

    /// The next moment the ledger changes by itself: a recent grant leaves
    /// the settle window, or an unstarted grant expires.
    pub fn next_change(&self, now: f64, settle_s: f64, start_timeout_s: f64) -> Option<f64> {
        let settled = self
            .recent_grants(now, settle_s)
            .map(|g| g.granted_at + settle_s)
            .find(|&t| t > now);
        let expires = self
            .unstarted
            .iter()
            .filter_map(|id| self.grants.get(id))
            .map(|g| g.granted_at + start_timeout_s)
            .find(|&t| t > now);
        match (settled, expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn release(&mut self, id: GrantId) -> Option<Grant> {
        let grant = self.grants.remove(&id)?;
        for &d in &grant.devices {
            add(&mut self.reserved_dev, d, -grant.vram_mb);
        }
        for (name, v) in &grant.pools {
            add_pool(&mut self.reserved_pool, name, -*v);
        }
        if let Some(ids) = self.by_plugin.get_mut(&grant.plugin) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_plugin.remove(&grant.plugin);
            }
        }
        for pid in &grant.pids {
            if self.by_pid.get(pid) == Some(&id) {
                self.by_pid.remove(pid);
            }
        }
        self.unstarted.remove(&id);
        self.pending.remove(&id);
        self.callers.remove(&id);
        Some(grant)
    }

    /// Releases grants never started within `start_timeout_s`.
    pub fn expire(&mut self, now: f64, start_timeout_s: f64) -> Vec<Grant> {
        let mut stale = Vec::new();
        for id in &self.unstarted {
            match self.grants.get(id) {
                Some(g) if now - g.granted_at >= start_timeout_s => stale.push(*id),
                // Ids grow with time: the rest are younger.
                Some(_) => break,
                None => stale.push(*id),
            }
        }
        stale
            .into_iter()
            .filter_map(|id| self.release(id))
            .collect()
    }

    /// Total VRAM reserved per device index.
    pub fn reserved_by_device(&self) -> BTreeMap<u32, f64> {
        self.reserved_dev.iter().map(|(&d, &v)| (d, v)).collect()
    }

    /// Total reserved per pool.
    pub fn reserved_by_pool(&self) -> BTreeMap<Arc<str>, f64> {
        self.reserved_pool
            .iter()
            .map(|(n, &v)| (n.clone(), v))
            .collect()
    }

    pub fn reserved_pool(&self, name: &str) -> f64 {
        // `+ 0.0` turns a -0.0 into 0.0.
        self.reserved_pool.get(name).copied().unwrap_or(0.0) + 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        headroom: 0.9,
        settle_s: 2.0,
    };

    fn reading(devices: &[(f64, f64)]) -> Reading {
        let mut r = Reading {
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, &(total, free))| DeviceReading {
                    index: i as u32,
                    total_mb: total,
                    free_mb: free,
                })
                .collect(),
            pools: Vec::new(),
        };
        r.set_pool(RAM_MB, Some(64_000.0), Some(60_000.0));
        r
    }

    fn gpu(vram: f64) -> Need {
        Need {
            gpu_count: 1,
            vram_mb: vram,
            pools: Vec::new(),
        }
    }

    fn gpus(n: u32, vram: f64) -> Need {
        Need {
            gpu_count: n,
            vram_mb: vram,
            pools: Vec::new(),
        }
    }

    #[test]
    fn the_same_free_memory_is_never_granted_twice() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        assert!(ledger.grant("a", &gpu(12_000.0), &r, LIMITS, 0.0).is_ok());
        // The reading still shows 24 GB free (the model is loading): the
        // settle window subtracts the first grant.
        let second = ledger.grant("b", &gpu(12_000.0), &r, LIMITS, 0.0);
        match second {
            Err(Refusal::Vram { settling_mb, .. }) => assert_eq!(settling_mb, 12_000.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_grant_already_in_the_reading_is_not_subtracted_twice() {
        let mut ledger = Ledger::new();
        let total = 24_576.0;
        let r0 = reading(&[(total, total)]);
        assert!(ledger.grant("a", &gpu(10_000.0), &r0, LIMITS, 0.0).is_ok());
        // 0.4 s later the reading shows a's 10 GB in use: b (10 GB) fits.
        let r1 = reading(&[(total, total - 10_000.0)]);
        assert!(ledger.grant("b", &gpu(10_000.0), &r1, LIMITS, 0.4).is_ok());
        // Only half of a third grant's memory shows: the rest still counts.
        let r2 = reading(&[(total, total - 20_000.0)]);
        let mut l2 = Ledger::new();
        assert!(l2.grant("a", &gpu(10_000.0), &r0, LIMITS, 0.0).is_ok());
        let partial = reading(&[(total, total - 5_000.0)]);
        assert_eq!(l2.unseen_on(&partial.devices[0], LIMITS, 0.5), 5_000.0);
        assert_eq!(l2.unseen_on(&r2.devices[0], LIMITS, 0.5), 0.0);
    }

    #[test]
    fn headroom_caps_reservations_even_when_readings_lag() {
        let mut ledger = Ledger::new();
        let r = reading(&[(10_000.0, 10_000.0)]);
        assert!(ledger.grant("a", &gpu(5_000.0), &r, LIMITS, 0.0).is_ok());
        // Settled, and the (stale) reading says all free: capacity still refuses.
        assert!(ledger.grant("b", &gpu(5_000.0), &r, LIMITS, 10.0).is_err());
        assert!(ledger.grant("b", &gpu(4_000.0), &r, LIMITS, 10.0).is_ok());
    }

    #[test]
    fn a_zero_total_is_no_capacity_not_unknown() {
        let mut ledger = Ledger::new();
        let r = reading(&[(0.0, 8_000.0)]);
        assert!(ledger.grant("a", &gpu(20_000.0), &r, LIMITS, 0.0).is_err());
        assert!(!Ledger::can_ever_fit(&gpu(1.0), &r, LIMITS));
    }

    #[test]
    fn best_fit_and_multi_gpu_together_or_not_at_all() {
        let mut ledger = Ledger::new();
        let r = reading(&[
            (24_000.0, 24_000.0),
            (16_000.0, 16_000.0),
            (80_000.0, 80_000.0),
        ]);
        let g = ledger.grant("a", &gpu(10_000.0), &r, LIMITS, 0.0);
        assert_eq!(g.map(|g| g.devices), Ok(vec![1]));
        let g = ledger.grant("b", &gpus(2, 20_000.0), &r, LIMITS, 0.0);
        assert_eq!(
            g.as_ref().map(|g| g.cuda_visible_devices()),
            Ok("0,2".to_owned())
        );
        assert!(ledger
            .grant("c", &gpus(3, 1_000.0), &r, LIMITS, 0.0)
            .is_ok());
        assert_eq!(
            ledger.grant("d", &gpus(4, 1.0), &r, LIMITS, 0.0).err(),
            Some(Refusal::NotEnoughDevices {
                needed: 4,
                present: 3
            })
        );
    }

    #[test]
    fn pools_are_data_ram_cpu_and_custom() {
        let mut ledger = Ledger::new();
        let mut r = reading(&[]);
        r.set_pool(CPU_CORES, Some(8.0), None);
        r.set_pool("licenses", Some(2.0), Some(2.0));
        let mut need = Need::default();
        need.set_pool(CPU_CORES, 4.0);
        need.set_pool("licenses", 1.0);
        need.set_pool(RAM_MB, 1_000.0);
        let limits = Limits {
            headroom: 1.0,
            settle_s: 0.0,
        };
        assert!(ledger.grant("a", &need, &r, limits, 0.0).is_ok());
        assert!(ledger.grant("b", &need, &r, limits, 0.0).is_ok());
        match ledger.grant("c", &need, &r, limits, 0.0) {
            Err(Refusal::Pool { pool, holders, .. }) => {
                assert_eq!(pool.as_ref(), CPU_CORES);
                assert_eq!(holders, vec!["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ledger.reserved_pool(CPU_CORES), 8.0);
        assert!(ledger.finish("a").is_some());
        assert_eq!(ledger.reserved_pool(CPU_CORES), 4.0);
        // A pool the reading does not know is not checked.
        let mut other = Need::default();
        other.set_pool("unknown", 1e9);
        assert!(ledger.place(&other, &r, limits, 0.0).is_ok());
    }

    #[test]
    fn counted_per_execution_start_finish_and_expiry() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        assert!(ledger.grant("w", &gpu(1_000.0), &r, LIMITS, 0.0).is_ok());
        assert!(ledger.grant("w", &gpu(1_000.0), &r, LIMITS, 0.0).is_ok());
        assert!(ledger.start("w").is_some());
        assert_eq!(ledger.next_change(0.0, 2.0, 60.0), Some(2.0));
        let expired = ledger.expire(61.0, 60.0);
        assert_eq!(expired.len(), 1);
        assert_eq!(ledger.len(), 1);
        assert!(ledger.finish("w").is_some());
        assert!(ledger.finish("w").is_none());
        assert!(ledger.reserved_by_device().is_empty());
    }

    #[test]
    fn leases_are_not_touched_by_name_and_pids_index() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        let g = ledger
            .grant("w", &gpu(1_000.0), &r, LIMITS, 0.0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(ledger.start_lease(g.id));
        assert!(ledger.finish("w").is_none());
        assert!(ledger.attach_pid(g.id, 42));
        assert_eq!(ledger.plugin_of_pid(42), Some("w"));
        assert!(ledger.release(g.id).is_some());
        assert_eq!(ledger.plugin_of_pid(42), None);
        assert!(!ledger.has_pids());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            headroom: 0.9,
            settle_s: 2.0,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant { gpus: u32, vram: f64, ram: f64 },
        Release(usize),
        Advance(f64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..3, 0.0f64..30_000.0, 0.0f64..20_000.0).prop_map(|(gpus, vram, ram)| Op::Grant {
                gpus,
                vram,
                ram
            }),
            (0usize..16).prop_map(Op::Release),
            (0.0f64..3.0).prop_map(Op::Advance),
        ]
    }

    fn need(gpus: u32, vram: f64, ram: f64) -> Need {
        let mut n = Need {
            gpu_count: gpus,
            vram_mb: vram,
            pools: Vec::new(),
        };
        n.set_pool(RAM_MB, ram);
        n
    }

    fn machine() -> Reading {
        let mut r = Reading {
            devices: [24_000.0, 16_000.0, 80_000.0]
                .iter()
                .enumerate()
                .map(|(i, &t)| DeviceReading {
                    index: i as u32,
                    total_mb: t,
                    free_mb: t,
                })
                .collect(),
            pools: Vec::new(),
        };
        r.set_pool(RAM_MB, Some(64_000.0), Some(64_000.0));
        r
    }

    proptest! {
        #[test]
        fn reservations_never_exceed_capacity_and_release_returns_to_zero(ops in proptest::collection::vec(op(), 1..60)) {
            let mut ledger = Ledger::new();
            let reading = machine();
            let mut now = 0.0;
            let mut held: Vec<GrantId> = Vec::new();
            for op in ops {
                match op {
                    Op::Grant { gpus, vram, ram } => {
                        if let Ok(g) = ledger.grant("p", &need(gpus, vram, ram), &reading, limits(), now) {
                            prop_assert_eq!(g.devices.len() as u32, gpus);
                            held.push(g.id);
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            let id = held.remove(i % held.len());
                            prop_assert!(ledger.release(id).is_some());
                        }
                    }
                    Op::Advance(s) => {
                        now += s;
                        ledger.settle(now, 2.0);
                    }
                }
                for d in &reading.devices {
                    let reserved = ledger.reserved_by_device().get(&d.index).copied().unwrap_or(0.0);
                    prop_assert!(reserved <= 0.9 * d.total_mb + 1e-6, "device {} over: {}", d.index, reserved);
                }
                prop_assert!(ledger.reserved_pool(RAM_MB) <= 0.9 * 64_000.0 + 1e-6);
            }
            for id in held {
                prop_assert!(ledger.release(id).is_some());
            }
            prop_assert_eq!(ledger.grants().count(), 0);
            prop_assert!(ledger.reserved_by_device().is_empty());
            prop_assert_eq!(ledger.reserved_pool(RAM_MB), 0.0);
        }

        #[test]
        fn placement_is_deterministic(vram in 0.0f64..30_000.0, gpus in 1u32..3, pre in 0.0f64..20_000.0) {
            let run = || {
                let mut ledger = Ledger::new();
                let _ = ledger.grant("x", &need(1, pre, 0.0), &machine(), limits(), 0.0);
                ledger.place(&need(gpus, vram, 0.0), &machine(), limits(), 0.0)
            };
            prop_assert_eq!(run(), run());
        }
    }
}

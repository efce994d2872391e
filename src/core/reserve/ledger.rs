//! The reservation ledger: what is promised on each GPU and in RAM, and the
//! atomic check-and-reserve that never double-books.
//!
//! A grant succeeds only if, on every device it uses (and for RAM):
//! (a) capacity: the reservations on it plus the need stay within
//!     `headroom × total`; and
//! (b) live reading: the need fits what is observed free, less the
//!     reservations granted so recently (`settle`) that the reading cannot
//!     show their memory in use yet.
//! Placement is best fit (the device left with the least spare capacity),
//! lowest index on ties, so it is deterministic; a multi-GPU need is placed
//! on `gpu_count` devices together or not at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a plugin asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Need {
    /// Devices needed (0 for a CPU-only plugin).
    pub gpu_count: u32,
    /// VRAM per device, MB.
    pub vram_mb: f64,
    /// System RAM, MB.
    pub ram_mb: f64,
}

/// One device as the stats show it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceReading {
    pub index: u32,
    pub total_mb: f64,
    pub free_mb: f64,
}

/// The machine as the stats show it now; `None` figures are unknown.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub devices: Vec<DeviceReading>,
    pub ram_total_mb: Option<f64>,
    pub ram_available_mb: Option<f64>,
}

/// Identifies a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantId(pub u64);

/// A reservation held by a plugin execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: GrantId,
    pub plugin: String,
    pub devices: Vec<u32>,
    pub vram_mb: f64,
    pub ram_mb: f64,
    pub granted_at: Instant,
    pub started: bool,
    /// Held by a lease (released by id): name-based start/finish skip it.
    pub leased: bool,
    /// Processes running this grant's plugin, for measured peaks.
    pub pids: Vec<u32>,
}

impl Grant {
    /// The value for `CUDA_VISIBLE_DEVICES`.
    pub fn cuda_visible_devices(&self) -> String {
        let ids: Vec<String> = self.devices.iter().map(u32::to_string).collect();
        ids.join(",")
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
        holders: Vec<String>,
    },
    Ram {
        needed_mb: f64,
        available_mb: f64,
        holders: Vec<String>,
    },
}

/// Ledger settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Fraction of each device's (and RAM's) total that may be reserved.
    pub headroom: f64,
    /// How long a new grant's memory may be invisible in the readings.
    pub settle: Duration,
}

#[derive(Debug, Default)]
pub struct Ledger {
    grants: BTreeMap<GrantId, Grant>,
    next_id: u64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn get(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    /// VRAM reserved on `device`, and the part of it granted within `settle`.
    fn reserved_on(&self, device: u32, now: Instant, settle: Duration) -> (f64, f64) {
        self.grants
            .values()
            .filter(|g| g.devices.contains(&device))
            .fold((0.0, 0.0), |(all, recent), g| {
                let fresh = now.saturating_duration_since(g.granted_at) < settle;
                (
                    all + g.vram_mb,
                    recent + if fresh { g.vram_mb } else { 0.0 },
                )
            })
    }

    fn reserved_ram(&self, now: Instant, settle: Duration) -> (f64, f64) {
        self.grants.values().fold((0.0, 0.0), |(all, recent), g| {
            let fresh = now.saturating_duration_since(g.granted_at) < settle;
            (all + g.ram_mb, recent + if fresh { g.ram_mb } else { 0.0 })
        })
    }

    fn holders(&self, device: Option<u32>) -> Vec<String> {
        self.grants
            .values()
            .filter(|g| device.is_none_or(|d| g.devices.contains(&d)))
            .filter(|g| {
                if device.is_some() {
                    g.vram_mb > 0.0
                } else {
                    g.ram_mb > 0.0
                }
            })
            .map(|g| g.plugin.clone())
            .collect()
    }

    /// What `need` could get on each device now: the smaller of the
    /// capacity left and the settled free reading.
    fn available_on(&self, d: &DeviceReading, limits: Limits, now: Instant) -> f64 {
        let (reserved, recent) = self.reserved_on(d.index, now, limits.settle);
        let capacity_left = limits.headroom * d.total_mb - reserved;
        let live = d.free_mb - recent;
        capacity_left.min(live)
    }

    /// Checks without reserving: the devices the need would get, or why not.
    pub fn place(
        &self,
        need: &Need,
        reading: &Reading,
        limits: Limits,
        now: Instant,
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
            let mut closest: Option<(f64, u32)> = None;
            for d in &reading.devices {
                let available = self.available_on(d, limits, now);
                if need.vram_mb <= available {
                    fits.push((available - need.vram_mb, d.index));
                } else if closest.is_none_or(|(best, _)| available > best) {
                    closest = Some((available, d.index));
                }
            }
            if (fits.len() as u32) < need.gpu_count {
                let (available_mb, device) = closest.unwrap_or((0.0, 0));
                return Err(Refusal::Vram {
                    device,
                    needed_mb: need.vram_mb,
                    available_mb,
                    holders: self.holders(Some(device)),
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
        if need.ram_mb > 0.0
            && (reading.ram_total_mb.is_some() || reading.ram_available_mb.is_some())
        {
            let (reserved, recent) = self.reserved_ram(now, limits.settle);
            // An unknown total leaves only the live check; an unknown live
            // figure leaves only the capacity check.
            let capacity = reading
                .ram_total_mb
                .map_or(f64::INFINITY, |t| limits.headroom * t - reserved);
            let live = reading
                .ram_available_mb
                .map_or(f64::INFINITY, |free| free - recent);
            let available = capacity.min(live);
            if need.ram_mb > available {
                return Err(Refusal::Ram {
                    needed_mb: need.ram_mb,
                    available_mb: available,
                    holders: self.holders(None),
                });
            }
        }
        Ok(devices)
    }

    /// Whether `need` could ever be granted on this machine, whatever is
    /// released: within `headroom × total` on enough devices, and in RAM.
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
        reading
            .ram_total_mb
            .is_none_or(|total| need.ram_mb <= limits.headroom * total)
    }

    /// Atomic check-and-reserve.
    pub fn grant(
        &mut self,
        plugin: &str,
        need: &Need,
        reading: &Reading,
        limits: Limits,
        now: Instant,
    ) -> Result<Grant, Refusal> {
        let devices = self.place(need, reading, limits, now)?;
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
            ram_mb: need.ram_mb,
            granted_at: now,
            started: false,
            leased: false,
            pids: Vec::new(),
        };
        self.grants.insert(id, grant.clone());
        Ok(grant)
    }

    /// Marks the oldest unstarted grant of `plugin` started.
    pub fn start(&mut self, plugin: &str) -> Option<GrantId> {
        let grant = self
            .grants
            .values_mut()
            .find(|g| g.plugin == plugin && !g.started && !g.leased)?;
        grant.started = true;
        Some(grant.id)
    }

    /// Marks one grant started and held by a lease; `false` if it is gone.
    pub fn start_lease(&mut self, id: GrantId) -> bool {
        match self.grants.get_mut(&id) {
            Some(grant) => {
                grant.started = true;
                grant.leased = true;
                true
            }
            None => false,
        }
    }

    /// Records that `pid` runs the grant's plugin; `false` if the grant is gone.
    pub fn attach_pid(&mut self, id: GrantId, pid: u32) -> bool {
        match self.grants.get_mut(&id) {
            Some(grant) => {
                if !grant.pids.contains(&pid) {
                    grant.pids.push(pid);
                }
                true
            }
            None => false,
        }
    }

    /// The plugin whose grant has `pid` attached, if any.
    pub fn plugin_of_pid(&self, pid: u32) -> Option<&str> {
        self.grants
            .values()
            .find(|g| g.pids.contains(&pid))
            .map(|g| g.plugin.as_str())
    }

    /// Releases the oldest started grant of `plugin` (or, if none started,
    /// the oldest unstarted one); grants held by leases are not touched.
    pub fn finish(&mut self, plugin: &str) -> Option<Grant> {
        let by_name = |g: &&Grant| g.plugin == plugin && !g.leased;
        let id = self
            .grants
            .values()
            .filter(by_name)
            .find(|g| g.started)
            .or_else(|| self.grants.values().find(by_name))
            .map(|g| g.id)?;
        self.grants.remove(&id)
    }

    /// The next moment the ledger changes by itself: a recent grant leaves
    /// the settle window (the readings now show it), or an unstarted grant
    /// expires. A waiter re-checks then instead of at its next poll.
    pub fn next_change(
        &self,
        now: Instant,
        settle: Duration,
        start_timeout: Duration,
    ) -> Option<Instant> {
        self.grants
            .values()
            .flat_map(|g| {
                let settled = g.granted_at + settle;
                let expires = (!g.started).then(|| g.granted_at + start_timeout);
                [Some(settled), expires]
            })
            .flatten()
            .filter(|&t| t > now)
            .min()
    }

    pub fn release(&mut self, id: GrantId) -> Option<Grant> {
        self.grants.remove(&id)
    }

    /// Releases grants never started within `start_timeout`.
    pub fn expire(&mut self, now: Instant, start_timeout: Duration) -> Vec<Grant> {
        let stale: Vec<GrantId> = self
            .grants
            .values()
            .filter(|g| !g.started && now.saturating_duration_since(g.granted_at) >= start_timeout)
            .map(|g| g.id)
            .collect();
        stale
            .into_iter()
            .filter_map(|id| self.grants.remove(&id))
            .collect()
    }

    /// Total VRAM reserved per device index.
    pub fn reserved_by_device(&self) -> BTreeMap<u32, f64> {
        let mut out = BTreeMap::new();
        for g in self.grants.values() {
            for &d in &g.devices {
                *out.entry(d).or_insert(0.0) += g.vram_mb;
            }
        }
        out
    }

    pub fn reserved_ram_mb(&self) -> f64 {
        // `+ 0.0` turns the empty sum's -0.0 into 0.0.
        self.grants.values().map(|g| g.ram_mb).sum::<f64>() + 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        headroom: 0.9,
        settle: Duration::from_secs(2),
    };

    fn reading(devices: &[(f64, f64)]) -> Reading {
        Reading {
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, &(total, free))| DeviceReading {
                    index: i as u32,
                    total_mb: total,
                    free_mb: free,
                })
                .collect(),
            ram_total_mb: Some(64_000.0),
            ram_available_mb: Some(60_000.0),
        }
    }

    fn gpu(vram: f64) -> Need {
        Need {
            gpu_count: 1,
            vram_mb: vram,
            ram_mb: 0.0,
        }
    }

    #[test]
    fn the_same_free_memory_is_never_granted_twice() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        let now = Instant::now();
        assert!(ledger.grant("a", &gpu(12_000.0), &r, LIMITS, now).is_ok());
        // The reading still shows 24 GB free (the model is loading): the
        // settle window subtracts the first grant.
        let second = ledger.grant("b", &gpu(12_000.0), &r, LIMITS, now);
        assert!(matches!(second, Err(Refusal::Vram { .. })), "{second:?}");
    }

    #[test]
    fn headroom_caps_reservations_even_when_readings_lag() {
        let mut ledger = Ledger::new();
        let r = reading(&[(10_000.0, 10_000.0)]);
        let later = Instant::now() + Duration::from_secs(10);
        assert!(ledger
            .grant("a", &gpu(5_000.0), &r, LIMITS, Instant::now())
            .is_ok());
        // Settled, and the (stale) reading says all free: capacity still refuses.
        assert!(ledger.grant("b", &gpu(5_000.0), &r, LIMITS, later).is_err());
        assert!(ledger.grant("b", &gpu(4_000.0), &r, LIMITS, later).is_ok());
    }

    #[test]
    fn best_fit_and_multi_gpu_together_or_not_at_all() {
        let mut ledger = Ledger::new();
        let r = reading(&[
            (24_000.0, 24_000.0),
            (16_000.0, 16_000.0),
            (80_000.0, 80_000.0),
        ]);
        let now = Instant::now();
        let g = ledger.grant("a", &gpu(10_000.0), &r, LIMITS, now);
        assert_eq!(g.map(|g| g.devices), Ok(vec![1]));
        let two = Need {
            gpu_count: 2,
            vram_mb: 20_000.0,
            ram_mb: 0.0,
        };
        let g = ledger.grant("b", &two, &r, LIMITS, now);
        assert_eq!(
            g.as_ref().map(|g| g.cuda_visible_devices()),
            Ok("0,2".to_owned())
        );
        let three = Need {
            gpu_count: 3,
            vram_mb: 1_000.0,
            ram_mb: 0.0,
        };
        assert!(ledger.grant("c", &three, &r, LIMITS, now).is_ok());
        let four = Need {
            gpu_count: 4,
            vram_mb: 1.0,
            ram_mb: 0.0,
        };
        assert_eq!(
            ledger.grant("d", &four, &r, LIMITS, now).err(),
            Some(Refusal::NotEnoughDevices {
                needed: 4,
                present: 3
            })
        );
    }

    #[test]
    fn counted_per_execution_start_finish_and_expiry() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        let t0 = Instant::now();
        assert!(ledger.grant("w", &gpu(1_000.0), &r, LIMITS, t0).is_ok());
        assert!(ledger.grant("w", &gpu(1_000.0), &r, LIMITS, t0).is_ok());
        assert!(ledger.start("w").is_some());
        assert_eq!(ledger.reserved_by_device().get(&0), Some(&2_000.0));
        assert!(ledger.finish("w").is_some_and(|g| g.started));
        let expired = ledger.expire(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(expired.len(), 1);
        assert_eq!(ledger.grants().count(), 0);
    }

    #[test]
    fn unknown_totals_leave_the_live_check() {
        let mut ledger = Ledger::new();
        let r = Reading {
            devices: vec![DeviceReading {
                index: 0,
                total_mb: f64::INFINITY,
                free_mb: 8_000.0,
            }],
            ram_total_mb: None,
            ram_available_mb: Some(1_000.0),
        };
        let now = Instant::now();
        assert!(ledger.grant("a", &gpu(9_000.0), &r, LIMITS, now).is_err());
        let ram = Need {
            gpu_count: 0,
            vram_mb: 0.0,
            ram_mb: 2_000.0,
        };
        assert!(matches!(
            ledger.grant("b", &ram, &r, LIMITS, now),
            Err(Refusal::Ram { .. })
        ));
        assert!(Ledger::can_ever_fit(&gpu(9_000.0), &r, LIMITS));
    }

    #[test]
    fn needs_beyond_the_machine_can_never_fit() {
        let r = reading(&[(24_000.0, 24_000.0), (16_000.0, 16_000.0)]);
        assert!(Ledger::can_ever_fit(&gpu(21_600.0), &r, LIMITS));
        assert!(!Ledger::can_ever_fit(&gpu(21_601.0), &r, LIMITS));
        let three = Need {
            gpu_count: 3,
            vram_mb: 1.0,
            ram_mb: 0.0,
        };
        assert!(!Ledger::can_ever_fit(&three, &r, LIMITS));
        let ram = Need {
            gpu_count: 0,
            vram_mb: 0.0,
            ram_mb: 60_000.0,
        };
        assert!(!Ledger::can_ever_fit(&ram, &r, LIMITS));
    }

    #[test]
    fn leases_are_not_released_by_name_and_the_next_change_is_known() {
        let mut ledger = Ledger::new();
        let r = reading(&[(24_000.0, 24_000.0)]);
        let t0 = Instant::now();
        let leased = ledger
            .grant("w", &gpu(1_000.0), &r, LIMITS, t0)
            .map(|g| g.id);
        assert!(leased.is_ok_and(|id| ledger.start_lease(id)));
        assert_eq!(ledger.finish("w"), None);
        assert_eq!(ledger.start("w"), None);
        let settle = Duration::from_secs(2);
        assert_eq!(
            ledger.next_change(t0, settle, Duration::from_secs(60)),
            Some(t0 + settle)
        );
        assert_eq!(
            ledger.next_change(t0 + settle, settle, Duration::from_secs(60)),
            None
        );
        assert_eq!(ledger.reserved_ram_mb().to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn ram_is_checked_against_headroom_and_live_reading() {
        let mut ledger = Ledger::new();
        let r = reading(&[]);
        let now = Instant::now();
        let big = Need {
            gpu_count: 0,
            vram_mb: 0.0,
            ram_mb: 55_000.0,
        };
        assert!(ledger.grant("a", &big, &r, LIMITS, now).is_ok());
        let small = Need {
            gpu_count: 0,
            vram_mb: 0.0,
            ram_mb: 3_000.0,
        };
        assert!(matches!(
            ledger.grant("b", &small, &r, LIMITS, now),
            Err(Refusal::Ram { .. })
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            headroom: 0.9,
            settle: Duration::from_secs(2),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant { gpus: u32, vram: f64, ram: f64 },
        Release(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..3, 0.0f64..30_000.0, 0.0f64..20_000.0).prop_map(|(gpus, vram, ram)| Op::Grant {
                gpus,
                vram,
                ram
            }),
            (0usize..16).prop_map(Op::Release),
            (0u64..3_000).prop_map(Op::Advance),
        ]
    }

    fn machine() -> Reading {
        Reading {
            devices: vec![
                DeviceReading {
                    index: 0,
                    total_mb: 24_000.0,
                    free_mb: 24_000.0,
                },
                DeviceReading {
                    index: 1,
                    total_mb: 16_000.0,
                    free_mb: 16_000.0,
                },
                DeviceReading {
                    index: 2,
                    total_mb: 80_000.0,
                    free_mb: 80_000.0,
                },
            ],
            ram_total_mb: Some(64_000.0),
            ram_available_mb: Some(64_000.0),
        }
    }

    proptest! {
        #[test]
        fn reservations_never_exceed_capacity_and_release_returns_to_zero(ops in proptest::collection::vec(op(), 1..60)) {
            let mut ledger = Ledger::new();
            let reading = machine();
            let mut now = Instant::now();
            let mut held: Vec<GrantId> = Vec::new();
            for op in ops {
                match op {
                    Op::Grant { gpus, vram, ram } => {
                        let need = Need { gpu_count: gpus, vram_mb: vram, ram_mb: ram };
                        if let Ok(g) = ledger.grant("p", &need, &reading, limits(), now) {
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
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                for d in &reading.devices {
                    let reserved = ledger.reserved_by_device().get(&d.index).copied().unwrap_or(0.0);
                    prop_assert!(reserved <= 0.9 * d.total_mb + 1e-6, "device {} over: {}", d.index, reserved);
                }
                prop_assert!(ledger.reserved_ram_mb() <= 0.9 * 64_000.0 + 1e-6);
            }
            for id in held {
                prop_assert!(ledger.release(id).is_some());
            }
            prop_assert_eq!(ledger.grants().count(), 0);
            prop_assert!(ledger.reserved_by_device().is_empty());
            prop_assert_eq!(ledger.reserved_ram_mb(), 0.0);
        }

        #[test]
        fn placement_is_deterministic(vram in 0.0f64..30_000.0, gpus in 1u32..3, pre in 0.0f64..20_000.0) {
            let run = || {
                let mut ledger = Ledger::new();
                let now = Instant::now();
                let _ = ledger.grant("x", &Need { gpu_count: 1, vram_mb: pre, ram_mb: 0.0 }, &machine(), limits(), now);
                ledger.place(&Need { gpu_count: gpus, vram_mb: vram, ram_mb: 0.0 }, &machine(), limits(), now)
            };
            prop_assert_eq!(run(), run());
        }
    }
}

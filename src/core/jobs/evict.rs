//! Loaded plugins and which idle ones to unload for a blocked job.
//!
//! The host (e.g. a cjm `PluginManager`) keeps plugins loaded between jobs;
//! an idle plugin still holds its memory. When a job is blocked on memory
//! that idle plugins hold, [`Plugins::choose`] names the least recently used
//! idle ones to unload — only as many as needed, never an active or pinned
//! one, and none at all when even every candidate together would not free
//! enough. [`Plugins::expired`] names the idle ones past a keep-alive.

use std::collections::BTreeMap;

/// Which memory a job is blocked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// VRAM of one device (`None`: any device).
    Vram(Option<u32>),
    Ram,
}

/// One loaded plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub name: String,
    /// What it holds while loaded (declared, or measured).
    pub vram_mb: f64,
    pub ram_mb: f64,
    /// The device its VRAM is on, when known.
    pub device: Option<u32>,
    /// Never unloaded by the scheduler.
    pub pinned: bool,
    /// Jobs using it now.
    pub active: u32,
    /// Clock seconds of its last use (or load).
    pub last_used: f64,
}

impl Loaded {
    fn holds(&self, memory: Memory) -> f64 {
        match memory {
            Memory::Ram => self.ram_mb,
            Memory::Vram(device) => match (device, self.device) {
                (Some(d), Some(mine)) if d != mine => 0.0,
                _ => self.vram_mb,
            },
        }
    }

    fn idle(&self) -> bool {
        self.active == 0 && !self.pinned
    }
}

/// The loaded plugins of one host.
#[derive(Debug, Default, Clone)]
pub struct Plugins {
    loaded: BTreeMap<String, Loaded>,
}

impl Plugins {
    /// Records a loaded plugin (or updates its footprint and pin).
    pub fn loaded(
        &mut self,
        name: &str,
        vram_mb: f64,
        ram_mb: f64,
        device: Option<u32>,
        pinned: bool,
        now: f64,
    ) {
        let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        let entry = self.loaded.entry(name.to_owned()).or_insert(Loaded {
            name: name.to_owned(),
            vram_mb: 0.0,
            ram_mb: 0.0,
            device,
            pinned,
            active: 0,
            last_used: now,
        });
        entry.vram_mb = clean(vram_mb);
        entry.ram_mb = clean(ram_mb);
        entry.device = device;
        entry.pinned = pinned;
    }

    /// Forgets an unloaded plugin; whether it was known.
    pub fn unloaded(&mut self, name: &str) -> bool {
        self.loaded.remove(name).is_some()
    }

    /// A job starts using `name` (unknown names are ignored: not loaded here).
    pub fn begin(&mut self, name: &str, now: f64) {
        if let Some(p) = self.loaded.get_mut(name) {
            p.active += 1;
            p.last_used = now;
        }
    }

    /// A job stopped using `name`.
    pub fn end(&mut self, name: &str, now: f64) {
        if let Some(p) = self.loaded.get_mut(name) {
            p.active = p.active.saturating_sub(1);
            p.last_used = now;
        }
    }

    pub fn get(&self, name: &str) -> Option<&Loaded> {
        self.loaded.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Loaded> {
        self.loaded.values()
    }

    /// Idle, unpinned plugins holding `memory`, least recently used first
    /// (ties by name), just enough to free `needed_mb`; empty when
    /// `needed_mb <= 0` or when all of them together hold less.
    pub fn choose(&self, memory: Memory, needed_mb: f64) -> Vec<String> {
        if needed_mb.is_nan() || needed_mb <= 0.0 {
            return Vec::new();
        }
        let mut candidates: Vec<&Loaded> = self
            .loaded
            .values()
            .filter(|p| p.idle() && p.holds(memory) > 0.0)
            .collect();
        candidates.sort_by(|a, b| {
            a.last_used
                .total_cmp(&b.last_used)
                .then(a.name.cmp(&b.name))
        });
        let mut freed = 0.0;
        let mut out = Vec::new();
        for p in candidates {
            if freed >= needed_mb {
                break;
            }
            freed += p.holds(memory);
            out.push(p.name.clone());
        }
        if freed < needed_mb {
            return Vec::new();
        }
        out
    }

    /// Idle, unpinned plugins unused for at least `keep_alive_s`.
    pub fn expired(&self, keep_alive_s: f64, now: f64) -> Vec<String> {
        self.loaded
            .values()
            .filter(|p| p.idle() && now - p.last_used >= keep_alive_s)
            .map(|p| p.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Plugins {
        let mut p = Plugins::default();
        p.loaded("old", 3000.0, 100.0, Some(0), false, 1.0);
        p.loaded("newer", 3000.0, 100.0, Some(0), false, 5.0);
        p.loaded("newest", 3000.0, 100.0, Some(0), false, 9.0);
        p.loaded("pinned", 8000.0, 0.0, Some(0), true, 0.0);
        p.loaded("other_gpu", 8000.0, 0.0, Some(1), false, 0.0);
        p
    }

    #[test]
    fn least_recently_used_idle_first_and_only_as_many_as_needed() {
        let p = pool();
        assert_eq!(p.choose(Memory::Vram(Some(0)), 2000.0), vec!["old"]);
        assert_eq!(
            p.choose(Memory::Vram(Some(0)), 4000.0),
            vec!["old", "newer"]
        );
        assert!(p.choose(Memory::Vram(Some(0)), 0.0).is_empty());
    }

    #[test]
    fn never_active_or_pinned_and_nothing_when_it_would_not_be_enough() {
        let mut p = pool();
        p.begin("old", 10.0);
        assert_eq!(p.choose(Memory::Vram(Some(0)), 2000.0), vec!["newer"]);
        // old active, pinned excluded: newer + newest = 6000 < 7000.
        assert!(p.choose(Memory::Vram(Some(0)), 7000.0).is_empty());
        p.end("old", 11.0);
        assert_eq!(p.choose(Memory::Vram(Some(0)), 2000.0), vec!["newer"]); // old used last now
        assert_eq!(p.choose(Memory::Vram(Some(1)), 5000.0), vec!["other_gpu"]);
        assert_eq!(p.choose(Memory::Ram, 150.0).len(), 2);
    }

    #[test]
    fn keep_alive_expires_idle_plugins() {
        let mut p = pool();
        p.begin("newest", 9.5);
        let mut e = p.expired(5.0, 10.0);
        e.sort();
        assert_eq!(e, vec!["newer", "old", "other_gpu"]);
        assert!(p.unloaded("old"));
        assert!(!p.unloaded("old"));
    }
}

//! The simulated cluster: a flat pool of GPUs or nodes of GPUs, as a
//! [`Placement`] (and its [`Plan`]) for the one admission pass
//! [`crate::policy::admit::admit`].
//!
//! A job that fits in one node is placed within one node (best fit: the
//! node with the fewest free GPUs that still fits, then the cheapest, then
//! the lowest index); a larger job takes `ceil(gpus / gpus_per_node)` whole
//! free nodes (cheapest first). A flat pool is one node of every GPU.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::policy::admit::{Placement, Plan};

/// `f64` with a total order (for ordered sets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ord64(pub f64);
impl Eq for Ord64 {}
impl PartialOrd for Ord64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ord64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The most nodes a simulated cluster may have (its per-node state is
/// allocated up front).
pub const MAX_NODES: u32 = 1 << 20;

/// The cluster's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// One pool (`gpus=N`): any job of at most N GPUs fits anywhere.
    pub flat: bool,
    pub vram_per_gpu_mb: Option<f64>,
    pub ram_per_node_mb: Option<f64>,
    /// Cost per node-hour: empty (none), one value (every node) or one per node.
    pub node_cost_per_hour: Vec<f64>,
}

impl ClusterSpec {
    /// `gpus=N`: one pool.
    pub fn pool(gpus: u32) -> Result<Self> {
        if gpus == 0 {
            return Err(Error::value("gpus", "must be at least 1, got 0"));
        }
        Ok(Self {
            nodes: 1,
            gpus_per_node: gpus,
            flat: true,
            vram_per_gpu_mb: None,
            ram_per_node_mb: None,
            node_cost_per_hour: Vec::new(),
        })
    }

    /// `nodes=K, gpus_per_node=G`.
    pub fn nodes(nodes: u32, gpus_per_node: u32) -> Result<Self> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(Error::value(
                "nodes",
                format!("must be 1 to {MAX_NODES}, got {nodes}"),
            ));
        }
        if gpus_per_node == 0 {
            return Err(Error::value("gpus_per_node", "must be at least 1, got 0"));
        }
        if u64::from(nodes) * u64::from(gpus_per_node) > u64::from(u32::MAX) {
            return Err(Error::value("nodes", "nodes × gpus_per_node is too large"));
        }
        Ok(Self {
            nodes,
            gpus_per_node,
            flat: false,
            vram_per_gpu_mb: None,
            ram_per_node_mb: None,
            node_cost_per_hour: Vec::new(),
        })
    }

    pub fn total_gpus(&self) -> u32 {
        self.nodes * self.gpus_per_node
    }

    /// Checks the optional settings.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vram_per_gpu_mb", self.vram_per_gpu_mb),
            ("ram_per_node_mb", self.ram_per_node_mb),
        ] {
            if let Some(v) = v {
                crate::error::finite_in(name, v, 0.0, f64::MAX)?;
            }
        }
        let n = self.node_cost_per_hour.len();
        if !(n == 0 || n == 1 || n == self.nodes as usize) {
            return Err(Error::value(
                "node_cost_per_hour",
                format!("needs one value or one per node ({}), got {n}", self.nodes),
            ));
        }
        for c in &self.node_cost_per_hour {
            crate::error::finite_in("node_cost_per_hour", *c, 0.0, f64::MAX)?;
        }
        Ok(())
    }

    pub fn cost(&self, node: u32) -> f64 {
        match self.node_cost_per_hour.len() {
            0 => 0.0,
            1 => self.node_cost_per_hour[0],
            _ => self.node_cost_per_hour[node as usize],
        }
    }

    pub fn has_cost(&self) -> bool {
        !self.node_cost_per_hour.is_empty()
    }

    /// Why a job of `gpus` GPUs (`vram_mb` per GPU, `ram_mb`) can never
    /// run here, if it cannot.
    pub fn never_fits(
        &self,
        gpus: u32,
        vram_mb: Option<f64>,
        ram_mb: Option<f64>,
    ) -> Option<String> {
        if gpus > self.total_gpus() {
            return Some(format!(
                "needs {gpus} GPUs, the cluster has {}",
                self.total_gpus()
            ));
        }
        if let (Some(need), Some(have)) = (vram_mb, self.vram_per_gpu_mb) {
            if need > have {
                return Some(format!(
                    "needs {need} MB VRAM per GPU, the GPUs have {have}"
                ));
            }
        }
        if let (Some(need), Some(have)) = (ram_mb, self.ram_per_node_mb) {
            if need > have {
                return Some(format!("needs {need} MB RAM, a node has {have}"));
            }
        }
        None
    }
}

/// What a job needs, as the admission pass handles it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Need {
    /// Index of the job in the simulation.
    pub job: u32,
    pub gpus: u32,
    /// Host RAM on each node it uses (0 when undeclared or untracked).
    pub ram_mb: f64,
    /// Remaining expected run time (the scheduler's view), if any.
    pub estimate: Option<f64>,
}

/// Where a running job sits.
#[derive(Debug, Clone, PartialEq)]
pub enum Alloc {
    /// `gpus` on one node.
    One { node: u32, gpus: u32 },
    /// Whole nodes.
    Whole(Vec<u32>),
}

impl Alloc {
    /// `(node, gpus)` pairs.
    pub fn parts(&self, gpus_per_node: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let (one, whole): (Option<(u32, u32)>, &[u32]) = match self {
            Alloc::One { node, gpus } => (Some((*node, *gpus)), &[]),
            Alloc::Whole(nodes) => (None, nodes.as_slice()),
        };
        one.into_iter()
            .chain(whole.iter().map(move |&n| (n, gpus_per_node)))
    }
}

/// Free capacity per node: the state both the cluster and its plans keep.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Free {
    pub gpus: Vec<u32>,
    /// Empty when RAM is not tracked.
    pub ram: Vec<f64>,
}

impl Free {
    fn new(spec: &ClusterSpec) -> Self {
        Self {
            gpus: vec![spec.gpus_per_node; spec.nodes as usize],
            ram: spec
                .ram_per_node_mb
                .map_or_else(Vec::new, |r| vec![r; spec.nodes as usize]),
        }
    }

    fn ram_ok(&self, node: usize, need: f64) -> bool {
        self.ram.get(node).is_none_or(|&r| r >= need)
    }

    fn whole(&self, spec: &ClusterSpec, node: usize) -> bool {
        self.gpus[node] == spec.gpus_per_node
            && spec
                .ram_per_node_mb
                .is_none_or(|r| self.ram.get(node).is_some_and(|&f| f >= r))
    }

    /// Where `need` would go now, by the placement rule.
    pub fn choose(&self, spec: &ClusterSpec, need: &Need) -> Option<Alloc> {
        let g = need.gpus;
        if spec.flat || g <= spec.gpus_per_node {
            let mut best: Option<(u32, f64, usize)> = None;
            for (i, &f) in self.gpus.iter().enumerate() {
                if f >= g && self.ram_ok(i, need.ram_mb) {
                    let k = (f, spec.cost(i as u32), i);
                    let better = best.is_none_or(|b| {
                        k.0.cmp(&b.0)
                            .then(k.1.total_cmp(&b.1))
                            .then(k.2.cmp(&b.2))
                            .is_lt()
                    });
                    if better {
                        best = Some(k);
                    }
                }
            }
            return best.map(|b| Alloc::One {
                node: b.2 as u32,
                gpus: g,
            });
        }
        let k = g.div_ceil(spec.gpus_per_node) as usize;
        let mut nodes: Vec<u32> = (0..self.gpus.len())
            .filter(|&i| self.whole(spec, i))
            .map(|i| i as u32)
            .collect();
        if nodes.len() < k {
            return None;
        }
        if spec.has_cost() {
            nodes.sort_by(|a, b| spec.cost(*a).total_cmp(&spec.cost(*b)).then(a.cmp(b)));
        }
        nodes.truncate(k);
        Some(Alloc::Whole(nodes))
    }

    /// Whether `alloc` (a placement for a job needing `ram_mb`) is free here.
    pub fn can_take(&self, spec: &ClusterSpec, alloc: &Alloc, ram_mb: f64) -> bool {
        match alloc {
            Alloc::One { node, gpus } => {
                let n = *node as usize;
                self.gpus.get(n).is_some_and(|&f| f >= *gpus) && self.ram_ok(n, ram_mb)
            }
            Alloc::Whole(nodes) => nodes
                .iter()
                .all(|&n| (n as usize) < self.gpus.len() && self.whole(spec, n as usize)),
        }
    }

    /// Takes (`sign` = true) or gives back what `alloc` holds.
    pub fn apply(&mut self, spec: &ClusterSpec, alloc: &Alloc, ram_mb: f64, take: bool) {
        let whole_ram = spec.ram_per_node_mb.unwrap_or(0.0);
        for (node, gpus) in alloc.parts(spec.gpus_per_node) {
            let n = node as usize;
            let ram = if matches!(alloc, Alloc::Whole(_)) {
                whole_ram
            } else {
                ram_mb
            };
            if take {
                self.gpus[n] -= gpus;
                if let Some(r) = self.ram.get_mut(n) {
                    *r -= ram;
                }
            } else {
                self.gpus[n] += gpus;
                if let Some(r) = self.ram.get_mut(n) {
                    *r += ram;
                }
            }
        }
    }

    /// The most GPUs any job could get now (a necessary condition to fit).
    pub fn capacity(&self, spec: &ClusterSpec) -> u32 {
        let best_node = self.gpus.iter().copied().max().unwrap_or(0);
        if spec.flat {
            return best_node;
        }
        let whole = (0..self.gpus.len())
            .filter(|&i| self.whole(spec, i))
            .count() as u32;
        best_node.max(whole * spec.gpus_per_node)
    }
}

/// The cluster as it is now.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub free: Free,
    pub busy_gpus: u64,
    /// Expected ends of running jobs: (end, job); infinite when unknown.
    pub ends: BTreeSet<(Ord64, u32)>,
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            free: Free::new(&spec),
            spec,
            busy_gpus: 0,
            ends: BTreeSet::new(),
        })
    }
}

/// Running jobs' allocations and needs, by job index (for plans).
pub trait Holdings {
    fn holding(&self, job: u32) -> Option<(&Alloc, f64)>;
}

/// On nodes, where a job lands decides whether a backfilled job leaves
/// room for the head, so the plans of one pass share what the pass does
/// now: a plan holds a job where it is (or would now be) placed, not where
/// it would fit best later; only the blocked head (the pass's first job
/// that did not fit) is placed by best fit at its planned start.
#[derive(Debug, Default)]
pub struct Live {
    /// The cluster's free capacity now.
    pub free: Free,
    /// Placed in this pass.
    pub placed: Vec<(u32, Alloc)>,
    pub head: Option<u32>,
}

/// The cluster during one admission pass: takes are applied to the free
/// capacity at once and remembered (with their expected ends) for plans.
pub struct View<'a, H: Holdings> {
    pub spec: &'a ClusterSpec,
    pub free: &'a mut Free,
    pub ends: &'a BTreeSet<(Ord64, u32)>,
    pub holdings: &'a H,
    pub now: f64,
    /// Started in this pass: (expected end, alloc, ram).
    pub started: Vec<(f64, Alloc, f64)>,
    /// Shared with the pass's plans (nodes only; a flat pool has one
    /// place, so plans need not know it).
    pub live: Option<Rc<RefCell<Live>>>,
}

impl<'a, H: Holdings> Placement for View<'a, H> {
    type Job = Need;
    type Hold = Alloc;
    type Plan = ClusterPlan<'a, H>;

    fn try_take(&mut self, job: &Need) -> Option<Alloc> {
        let Some(alloc) = self.free.choose(self.spec, job) else {
            if let Some(live) = &self.live {
                live.borrow_mut().head.get_or_insert(job.job);
            }
            return None;
        };
        self.free.apply(self.spec, &alloc, job.ram_mb, true);
        if let Some(live) = &self.live {
            let mut l = live.borrow_mut();
            l.free.apply(self.spec, &alloc, job.ram_mb, true);
            l.placed.push((job.job, alloc.clone()));
        }
        let end = job.estimate.map_or(f64::INFINITY, |d| self.now + d);
        self.started.push((end, alloc.clone(), job.ram_mb));
        Some(alloc)
    }

    fn plan(&self) -> ClusterPlan<'a, H> {
        ClusterPlan::new(
            self.spec,
            self.free.clone(),
            self.ends,
            self.holdings,
            self.started.clone(),
        )
        .with_live(self.live.clone())
    }
}

/// A capacity plan of the cluster: free capacity now, released as the
/// running jobs' expected ends pass.
pub struct ClusterPlan<'a, H: Holdings> {
    spec: &'a ClusterSpec,
    pub free: Free,
    ends: &'a BTreeSet<(Ord64, u32)>,
    holdings: &'a H,
    /// The last released entry of `ends`.
    after: Option<(Ord64, u32)>,
    extra: Rc<Vec<(f64, Alloc, f64)>>,
    extra_pos: usize,
    live: Option<Rc<RefCell<Live>>>,
}

impl<H: Holdings> Clone for ClusterPlan<'_, H> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec,
            free: self.free.clone(),
            ends: self.ends,
            holdings: self.holdings,
            after: self.after,
            extra: self.extra.clone(),
            extra_pos: self.extra_pos,
            live: self.live.clone(),
        }
    }
}

impl<'a, H: Holdings> ClusterPlan<'a, H> {
    /// A plan from `free` now, releasing `ends` (held as `holdings` says)
    /// and `extra` (expected end, alloc, RAM) as their times pass.
    pub fn new(
        spec: &'a ClusterSpec,
        free: Free,
        ends: &'a BTreeSet<(Ord64, u32)>,
        holdings: &'a H,
        mut extra: Vec<(f64, Alloc, f64)>,
    ) -> Self {
        extra.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self {
            spec,
            free,
            ends,
            holdings,
            after: None,
            extra: Rc::new(extra),
            extra_pos: 0,
            live: None,
        }
    }

    /// Shares the pass's [`Live`] state (see there).
    pub fn with_live(mut self, live: Option<Rc<RefCell<Live>>>) -> Self {
        self.live = live;
        self
    }

    /// Where this plan holds `job`: the blocked head by best fit in the
    /// plan; others where the pass put (or would now put) them.
    fn placement(&self, job: &Need) -> Option<Alloc> {
        let Some(live) = &self.live else {
            return self.free.choose(self.spec, job);
        };
        let l = live.borrow();
        if l.head == Some(job.job) {
            return self.free.choose(self.spec, job);
        }
        if let Some((_, a)) = l.placed.iter().rev().find(|(j, _)| *j == job.job) {
            return Some(a.clone());
        }
        l.free.choose(self.spec, job)
    }

    fn next_base(&self) -> Option<(Ord64, u32)> {
        match self.after {
            None => self.ends.iter().next().copied(),
            Some(a) => self
                .ends
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next()
                .copied(),
        }
    }
}

impl<H: Holdings> Plan for ClusterPlan<'_, H> {
    type Job = Need;

    fn fits(&self, job: &Need) -> bool {
        self.placement(job)
            .is_some_and(|a| self.free.can_take(self.spec, &a, job.ram_mb))
    }

    fn hold(&mut self, job: &Need) {
        if let Some(alloc) = self.placement(job) {
            if self.free.can_take(self.spec, &alloc, job.ram_mb) {
                self.free.apply(self.spec, &alloc, job.ram_mb, true);
            }
        }
    }

    fn next_end(&self) -> Option<f64> {
        let base = self.next_base().map(|e| e.0 .0).filter(|t| t.is_finite());
        let extra = self
            .extra
            .get(self.extra_pos)
            .map(|e| e.0)
            .filter(|t| t.is_finite());
        match (base, extra) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn release_until(&mut self, t: f64) {
        while let Some(e) = self.next_base().filter(|e| e.0 .0 <= t) {
            if let Some((alloc, ram)) = self.holdings.holding(e.1) {
                self.free.apply(self.spec, alloc, ram, false);
            }
            self.after = Some(e);
        }
        while let Some((end, alloc, ram)) = self.extra.get(self.extra_pos) {
            if *end > t {
                break;
            }
            self.free.apply(self.spec, alloc, *ram, false);
            self.extra_pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(job: u32, gpus: u32) -> Need {
        Need {
            job,
            gpus,
            ram_mb: 0.0,
            estimate: None,
        }
    }

    #[test]
    fn small_jobs_stay_in_one_node_large_take_whole_nodes() {
        let spec = ClusterSpec::nodes(3, 4).expect("spec");
        let mut free = Free::new(&spec);
        // 3 GPUs on node 0; then 2 GPUs must not straddle: best fit is
        // node 1 (node 0 has only 1 left).
        let a = free.choose(&spec, &need(0, 3)).expect("fits");
        assert_eq!(a, Alloc::One { node: 0, gpus: 3 });
        free.apply(&spec, &a, 0.0, true);
        let b = free.choose(&spec, &need(1, 2)).expect("fits");
        assert_eq!(b, Alloc::One { node: 1, gpus: 2 });
        free.apply(&spec, &b, 0.0, true);
        // 1 GPU: best fit is node 0 (1 free), not the empty node 2.
        assert_eq!(
            free.choose(&spec, &need(2, 1)),
            Some(Alloc::One { node: 0, gpus: 1 })
        );
        // 5 GPUs need 2 whole nodes: only node 2 is whole.
        assert_eq!(free.choose(&spec, &need(3, 5)), None);
        // 4 GPUs fit on node 2 alone (6 GPUs are free in all, but only one
        // node has 4).
        assert_eq!(
            free.choose(&spec, &need(3, 4)),
            Some(Alloc::One { node: 2, gpus: 4 })
        );
        assert_eq!(free.capacity(&spec), 4);
        free.apply(&spec, &b, 0.0, false);
        free.apply(&spec, &a, 0.0, false);
        assert_eq!(
            free.choose(&spec, &need(4, 9)),
            Some(Alloc::Whole(vec![0, 1, 2]))
        );
        assert_eq!(free.capacity(&spec), 12);
    }

    #[test]
    fn ram_and_cost_steer_placement() {
        let mut spec = ClusterSpec::nodes(2, 4).expect("spec");
        spec.ram_per_node_mb = Some(1000.0);
        spec.node_cost_per_hour = vec![5.0, 1.0];
        spec.validate().expect("valid");
        let mut free = Free::new(&spec);
        // Same free GPUs: the cheaper node 1.
        let mut n = need(0, 1);
        n.ram_mb = 800.0;
        let a = free.choose(&spec, &n).expect("fits");
        assert_eq!(a, Alloc::One { node: 1, gpus: 1 });
        free.apply(&spec, &a, n.ram_mb, true);
        // Node 1 has 200 MB left: a 500 MB job goes to node 0 despite the
        // best GPU fit being node 1.
        n.ram_mb = 500.0;
        assert_eq!(
            free.choose(&spec, &n),
            Some(Alloc::One { node: 0, gpus: 1 })
        );
        // Node 1 is no longer whole.
        assert_eq!(free.choose(&spec, &need(1, 8)), None);
        assert!(spec.never_fits(1, None, Some(2000.0)).is_some());
        assert!(spec.never_fits(9, None, None).is_some());
        spec.node_cost_per_hour = vec![1.0, 2.0, 3.0];
        assert!(spec.validate().is_err());
    }
}

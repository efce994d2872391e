//! Seed 002's five strategies over one batch: order the requests, then give
//! each, in that order, an instance that serves its model, accepts requests
//! and has room under `max_concurrency` counting what this call has already
//! placed there. A request with no such instance gets no decision.

use std::cmp::Ordering;

use super::types::{
    AdaptiveCause, Decision, Instance, Kind, ModelMatch, Parallelism, Reason, Request,
};

/// SLO-aware settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloConfig {
    /// A request whose urgency is above this goes to the fastest instance.
    pub urgency_threshold: f64,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            urgency_threshold: 0.7,
        }
    }
}

/// Cost-optimised settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostConfig {
    pub price_per_gpu_hour: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            price_per_gpu_hour: 2.5,
        }
    }
}

/// Tokens assumed for a request that does not say (`max_tokens` is None).
pub const DEFAULT_TOKENS: u64 = 100;

impl CostConfig {
    /// Cost of running `request` on `instance`: its GPUs for the time the
    /// request's tokens take at the instance's throughput (one second when
    /// the throughput is unknown).
    pub fn cost(&self, request: &Request, instance: &Instance) -> f64 {
        let tokens = request.max_tokens.unwrap_or(DEFAULT_TOKENS) as f64;
        let seconds = if instance.throughput_tokens_per_sec > 0.0 {
            tokens / instance.throughput_tokens_per_sec
        } else {
            1.0
        };
        self.price_per_gpu_hour * instance.gpu_count as f64 / 3600.0 * seconds
    }
}

/// Adaptive settings: the load thresholds (mean utilization of the
/// instances, `current_load / max_concurrency`) and its sub-strategies'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// Above this mean utilization, SLO requests switch to SLO-aware.
    pub high_load_threshold: f64,
    /// Below it, cost-optimised.
    pub low_load_threshold: f64,
    pub slo: SloConfig,
    pub cost: CostConfig,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            high_load_threshold: 0.8,
            low_load_threshold: 0.3,
            slo: SloConfig::default(),
            cost: CostConfig::default(),
        }
    }
}

/// A built-in strategy with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    Fifo,
    Priority,
    SloAware(SloConfig),
    CostOptimized(CostConfig),
    Adaptive(AdaptiveConfig),
}

/// Whose order the requests are placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The strategy's own (`prioritize`).
    Strategy,
    /// As given (a subclass's own `prioritize` already ordered them).
    AsGiven,
}

/// What a call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    /// For Adaptive: the strategy it chose, and why.
    pub adaptive: Option<(Kind, AdaptiveCause)>,
}

fn by_arrival(a: &Request, b: &Request) -> Ordering {
    a.arrival_s.total_cmp(&b.arrival_s)
}

/// The order a strategy schedules `requests` in, as indices (a stable sort:
/// equal keys keep their input order). `now_s` is the clock for urgency.
pub fn prioritize(strategy: &Strategy, requests: &[Request], now_s: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let key = |i: &usize| &requests[*i];
    match strategy {
        Strategy::Fifo => order.sort_by(|a, b| by_arrival(key(a), key(b))),
        Strategy::Priority | Strategy::Adaptive(_) => order.sort_by(|a, b| {
            let (a, b) = (key(a), key(b));
            a.priority.cmp(&b.priority).then_with(|| by_arrival(a, b))
        }),
        Strategy::SloAware(_) => {
            let urgency: Vec<f64> = requests.iter().map(|r| r.urgency(now_s)).collect();
            order.sort_by(|&a, &b| {
                urgency[b]
                    .total_cmp(&urgency[a])
                    .then_with(|| by_arrival(&requests[a], &requests[b]))
            })
        }
        Strategy::CostOptimized(_) => order.sort_by(|a, b| {
            let (a, b) = (key(a), key(b));
            let budget = |r: &Request| r.cost_budget.unwrap_or(f64::INFINITY);
            a.priority
                .cmp(&b.priority)
                .then_with(|| budget(a).total_cmp(&budget(b)))
                .then_with(|| by_arrival(a, b))
        }),
    }
    order
}

/// Which strategy Adaptive uses for this batch: Priority when CRITICAL/HIGH
/// requests are present; SLO-aware when requests carry SLOs and the mean
/// utilization is above `high_load_threshold`; cost-optimised below
/// `low_load_threshold`; SLO-aware otherwise.
pub fn adaptive_choice(
    config: &AdaptiveConfig,
    requests: &[Request],
    instances: &[Instance],
) -> (Kind, AdaptiveCause) {
    let mean_load = if instances.is_empty() {
        0.0
    } else {
        instances.iter().map(Instance::utilization).sum::<f64>() / instances.len() as f64
    };
    if requests.iter().any(|r| r.priority.is_high()) {
        (Kind::Priority, AdaptiveCause::HighPriority)
    } else if requests.iter().any(|r| r.slo_deadline_ms.is_some())
        && mean_load > config.high_load_threshold
    {
        (Kind::SloAware, AdaptiveCause::SloUnderHighLoad)
    } else if mean_load < config.low_load_threshold {
        (Kind::CostOptimized, AdaptiveCause::LowLoad)
    } else {
        (Kind::SloAware, AdaptiveCause::Default)
    }
}

/// The instances and what this call has placed on them so far.
struct Pool<'a> {
    instances: &'a [Instance],
    placed: Vec<f64>,
}

/// How to choose among eligible instances.
#[derive(Clone, Copy)]
enum Target {
    LeastLoaded,
    Fastest,
}

impl<'a> Pool<'a> {
    fn new(instances: &'a [Instance]) -> Self {
        Pool {
            instances,
            placed: vec![0.0; instances.len()],
        }
    }

    fn load(&self, i: usize) -> f64 {
        self.instances[i].current_load + self.placed[i]
    }

    /// Serves the request's model, accepts requests, and has room.
    fn eligible(&self, i: usize, request: &Request) -> bool {
        let instance = &self.instances[i];
        let serves = match request.model {
            ModelMatch::Any => true,
            ModelMatch::Model(m) => instance.model == m,
            ModelMatch::Unserved => false,
        };
        serves && instance.can_accept_request && self.load(i) < instance.max_concurrency
    }

    fn candidates<'r>(&'r self, request: &'r Request) -> impl Iterator<Item = usize> + 'r {
        (0..self.instances.len()).filter(move |&i| self.eligible(i, request))
    }

    /// The best eligible instance by `target` (ties: less loaded, then earlier).
    fn pick(&self, request: &Request, target: Target) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in self.candidates(request) {
            let better = match best {
                None => true,
                Some(b) => {
                    let by_load = self.load(i).total_cmp(&self.load(b));
                    let ord = match target {
                        Target::LeastLoaded => by_load,
                        Target::Fastest => self.instances[i]
                            .avg_latency_ms
                            .total_cmp(&self.instances[b].avg_latency_ms)
                            .then(by_load),
                    };
                    ord == Ordering::Less
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    /// The cheapest eligible instance within the request's budget that meets
    /// its SLO (its average latency fits in the time left); when none meets
    /// the SLO, the cheapest within budget. Ties: less loaded, then earlier.
    fn cheapest(
        &self,
        request: &Request,
        config: &CostConfig,
        now_s: f64,
    ) -> Option<(usize, f64, bool)> {
        let remaining = request.remaining_ms(now_s);
        let budget = request.cost_budget.unwrap_or(f64::INFINITY);
        let mut best_meeting: Option<(usize, f64)> = None;
        let mut best_any: Option<(usize, f64)> = None;
        let better = |cand: (usize, f64), best: Option<(usize, f64)>| match best {
            None => true,
            Some((b, bc)) => {
                cand.1
                    .total_cmp(&bc)
                    .then(self.load(cand.0).total_cmp(&self.load(b)))
                    == Ordering::Less
            }
        };
        for i in self.candidates(request) {
            let cost = config.cost(request, &self.instances[i]);
            if cost > budget {
                continue;
            }
            let meets = remaining.is_none_or(|left| self.instances[i].avg_latency_ms <= left);
            if meets && better((i, cost), best_meeting) {
                best_meeting = Some((i, cost));
            }
            if better((i, cost), best_any) {
                best_any = Some((i, cost));
            }
        }
        match (best_meeting, best_any) {
            (Some((i, c)), _) => Some((i, c, true)),
            (None, Some((i, c))) => Some((i, c, false)),
            (None, None) => None,
        }
    }

    fn place(&mut self, request: usize, instance: usize, cost: f64, reason: Reason) -> Decision {
        self.placed[instance] += 1.0;
        let inst = &self.instances[instance];
        Decision {
            request,
            instance,
            parallelism: Parallelism::of(inst),
            tensor_parallel_size: inst.tensor_parallel_size,
            pipeline_parallel_size: inst.pipeline_parallel_size,
            estimated_latency_ms: inst.avg_latency_ms,
            estimated_cost: cost,
            reason,
        }
    }
}

/// Places `requests` on `instances` with `strategy`. `now_s` (seconds since
/// the epoch) is the clock for SLO urgency; `order` says whether to sort the
/// requests first. The inputs are only read.
pub fn schedule(
    strategy: &Strategy,
    requests: &[Request],
    instances: &[Instance],
    now_s: f64,
    order: Order,
) -> Outcome {
    let (strategy, adaptive) = match strategy {
        Strategy::Adaptive(config) => {
            let choice = adaptive_choice(config, requests, instances);
            let inner = match choice.0 {
                Kind::Priority => Strategy::Priority,
                Kind::SloAware => Strategy::SloAware(config.slo),
                Kind::CostOptimized => Strategy::CostOptimized(config.cost),
                Kind::Fifo => Strategy::Fifo,
            };
            (inner, Some(choice))
        }
        other => (*other, None),
    };
    let sequence: Vec<usize> = match order {
        Order::Strategy => prioritize(&strategy, requests, now_s),
        Order::AsGiven => (0..requests.len()).collect(),
    };
    let mut pool = Pool::new(instances);
    let mut decisions = Vec::with_capacity(requests.len());
    for r in sequence {
        let request = &requests[r];
        let placed = match strategy {
            Strategy::Fifo => pool
                .pick(request, Target::LeastLoaded)
                .map(|i| (i, 0.0, Reason::Fifo)),
            Strategy::Priority => {
                let target = if request.priority.is_high() {
                    Target::Fastest
                } else {
                    Target::LeastLoaded
                };
                pool.pick(request, target).map(|i| {
                    (
                        i,
                        0.0,
                        Reason::Priority {
                            priority: request.priority,
                        },
                    )
                })
            }
            Strategy::SloAware(config) => {
                let urgency = request.urgency(now_s);
                let urgent = urgency > config.urgency_threshold;
                let target = if urgent {
                    Target::Fastest
                } else {
                    Target::LeastLoaded
                };
                pool.pick(request, target)
                    .map(|i| (i, 0.0, Reason::Slo { urgency, urgent }))
            }
            Strategy::CostOptimized(config) => pool
                .cheapest(request, &config, now_s)
                .map(|(i, cost, slo_met)| (i, cost, Reason::Cost { cost, slo_met })),
            // Resolved to its chosen strategy above.
            Strategy::Adaptive(_) => None,
        };
        if let Some((i, cost, reason)) = placed {
            decisions.push(pool.place(r, i, cost, reason));
        }
    }
    Outcome {
        decisions,
        adaptive,
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::Priority;
    use super::*;

    fn req(arrival_s: f64) -> Request {
        Request::new(arrival_s)
    }

    fn inst(load: f64, latency: f64) -> Instance {
        Instance {
            current_load: load,
            avg_latency_ms: latency,
            ..Instance::new()
        }
    }

    fn run(
        strategy: Strategy,
        requests: &[Request],
        instances: &[Instance],
        now: f64,
    ) -> Vec<(usize, usize)> {
        schedule(&strategy, requests, instances, now, Order::Strategy)
            .decisions
            .iter()
            .map(|d| (d.request, d.instance))
            .collect()
    }

    #[test]
    fn fifo_orders_by_arrival_and_picks_least_loaded() {
        let requests = [req(3.0), req(1.0), req(2.0)];
        let instances = [inst(5.0, 1.0), inst(1.0, 50.0), inst(2.0, 1.0)];
        // Loads 5, 1, 2: first (arrival 1.0) -> 1 (now 2), next -> 1 (tie with 2, earlier wins), then 2.
        assert_eq!(
            run(Strategy::Fifo, &requests, &instances, 0.0),
            vec![(1, 1), (2, 1), (0, 2)]
        );
        assert_eq!(prioritize(&Strategy::Fifo, &requests, 0.0), vec![1, 2, 0]);
    }

    #[test]
    fn equal_keys_keep_input_order() {
        let requests = [req(1.0), req(1.0), req(1.0)];
        assert_eq!(prioritize(&Strategy::Fifo, &requests, 0.0), vec![0, 1, 2]);
        assert_eq!(
            prioritize(&Strategy::Priority, &requests, 0.0),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn nothing_schedulable_is_empty() {
        assert!(run(Strategy::Fifo, &[], &[inst(0.0, 1.0)], 0.0).is_empty());
        assert!(run(Strategy::Fifo, &[req(0.0)], &[], 0.0).is_empty());
        let closed = Instance {
            can_accept_request: false,
            ..Instance::new()
        };
        assert!(run(Strategy::Priority, &[req(0.0)], &[closed], 0.0).is_empty());
        let full = Instance {
            current_load: 4.0,
            max_concurrency: 4.0,
            ..Instance::new()
        };
        assert!(run(Strategy::Fifo, &[req(0.0)], &[full], 0.0).is_empty());
    }

    #[test]
    fn model_must_match() {
        let mut a = req(0.0);
        a.model = ModelMatch::Model(1);
        let mut b = req(1.0);
        b.model = ModelMatch::Unserved;
        let c = req(2.0); // any model
        let instances = [
            Instance {
                model: 0,
                ..Instance::new()
            },
            Instance {
                model: 1,
                current_load: 9.0,
                ..Instance::new()
            },
        ];
        assert_eq!(
            run(Strategy::Fifo, &[a, b, c], &instances, 0.0),
            vec![(0, 1), (2, 0)]
        );
    }

    #[test]
    fn capacity_counts_this_calls_decisions() {
        let requests: Vec<Request> = (0..5).map(|i| req(i as f64)).collect();
        let instances = [
            Instance {
                current_load: 1.0,
                max_concurrency: 3.0,
                ..Instance::new()
            },
            Instance {
                current_load: 0.0,
                max_concurrency: 1.0,
                ..Instance::new()
            },
        ];
        // Room: 2 on the first, 1 on the second: three decisions, never more.
        let placed = run(Strategy::Fifo, &requests, &instances, 0.0);
        assert_eq!(placed, vec![(0, 1), (1, 0), (2, 0)]);
    }

    #[test]
    fn priority_orders_high_first_and_sends_high_to_fastest() {
        let mut low = req(0.0);
        low.priority = Priority::Low;
        let mut critical = req(2.0);
        critical.priority = Priority::Critical;
        let mut high = req(1.0);
        high.priority = Priority::High;
        let requests = [low, critical, high];
        assert_eq!(
            prioritize(&Strategy::Priority, &requests, 0.0),
            vec![1, 2, 0]
        );
        // Instance 0: busy but fast; instance 1: idle but slow.
        let instances = [inst(5.0, 10.0), inst(0.0, 90.0)];
        assert_eq!(
            run(Strategy::Priority, &requests, &instances, 0.0),
            vec![(1, 0), (2, 0), (0, 1)]
        );
        let d = &schedule(
            &Strategy::Priority,
            &requests,
            &instances,
            0.0,
            Order::Strategy,
        )
        .decisions;
        assert_eq!(
            d[0].reason.to_string(),
            "Priority CRITICAL scheduling to fastest instance"
        );
        assert_eq!(
            d[2].reason.to_string(),
            "Priority LOW scheduling to least loaded instance"
        );
    }

    #[test]
    fn urgency_grows_with_time_spent() {
        let mut r = req(100.0);
        assert_eq!(r.urgency(200.0), 0.0); // no SLO
        r.slo_deadline_ms = Some(1000.0);
        assert_eq!(r.urgency(99.0), 0.0); // not arrived yet
        assert!((r.urgency(100.5) - 0.5).abs() < 1e-9);
        assert_eq!(r.urgency(101.0), 1.0);
        assert_eq!(r.urgency(150.0), 1.0);
        assert_eq!(r.remaining_ms(100.25), Some(750.0));
    }

    #[test]
    fn slo_aware_serves_urgent_first_on_fastest() {
        let now = 1000.0;
        let mut relaxed = req(now - 0.1);
        relaxed.slo_deadline_ms = Some(10_000.0); // urgency 0.01
        let mut urgent = req(now - 0.9);
        urgent.slo_deadline_ms = Some(1000.0); // urgency 0.9
        let none = req(now - 5.0); // no SLO: urgency 0
        let requests = [relaxed, none, urgent];
        let strategy = Strategy::SloAware(SloConfig::default());
        assert_eq!(prioritize(&strategy, &requests, now), vec![2, 0, 1]);
        let instances = [inst(0.0, 80.0), inst(3.0, 5.0)];
        assert_eq!(
            run(strategy, &requests, &instances, now),
            vec![(2, 1), (0, 0), (1, 0)]
        );
        let d = schedule(&strategy, &requests, &instances, now, Order::Strategy).decisions;
        assert_eq!(
            d[0].reason.to_string(),
            "SLO-aware scheduling (urgency: 0.90) to fastest instance"
        );
        // A higher threshold makes the same request non-urgent.
        let lenient = Strategy::SloAware(SloConfig {
            urgency_threshold: 0.95,
        });
        assert_eq!(run(lenient, &requests, &instances, now)[0], (2, 0));
    }

    #[test]
    fn cost_picks_cheapest_within_slo_and_budget() {
        let config = CostConfig::default();
        let mut r = req(0.0);
        r.max_tokens = Some(3600);
        // 1 GPU at 3600 tok/s: 1 s of one GPU = 2.5/3600.
        let cheap = Instance {
            gpu_count: 1,
            throughput_tokens_per_sec: 3600.0,
            avg_latency_ms: 500.0,
            ..Instance::new()
        };
        let pricey = Instance {
            gpu_count: 8,
            throughput_tokens_per_sec: 3600.0,
            avg_latency_ms: 50.0,
            ..Instance::new()
        };
        assert!((config.cost(&r, &cheap) - 2.5 / 3600.0).abs() < 1e-12);
        assert!((config.cost(&r, &pricey) - 8.0 * 2.5 / 3600.0).abs() < 1e-12);
        let strategy = Strategy::CostOptimized(config);
        assert_eq!(
            run(
                strategy,
                &[r.clone()],
                &[pricey.clone(), cheap.clone()],
                0.0
            ),
            vec![(0, 1)]
        );
        // An SLO only the pricey one meets.
        let mut slo = r.clone();
        slo.slo_deadline_ms = Some(100.0);
        assert_eq!(
            run(
                strategy,
                &[slo.clone()],
                &[pricey.clone(), cheap.clone()],
                0.0
            ),
            vec![(0, 0)]
        );
        // A budget below the pricey one's cost, with that SLO: the SLO cannot be met.
        slo.cost_budget = Some(0.001);
        let d = schedule(
            &strategy,
            &[slo.clone()],
            &[pricey.clone(), cheap.clone()],
            0.0,
            Order::Strategy,
        )
        .decisions;
        assert_eq!(
            (d[0].instance, d[0].reason),
            (
                1,
                Reason::Cost {
                    cost: config.cost(&slo, &cheap),
                    slo_met: false
                }
            )
        );
        // A budget nothing fits: no decision.
        slo.cost_budget = Some(1e-9);
        assert!(run(strategy, &[slo], &[pricey, cheap.clone()], 0.0).is_empty());
        // Unknown throughput: one second; no max_tokens: 100 tokens.
        let unknown = Instance {
            gpu_count: 2,
            ..Instance::new()
        };
        assert!((config.cost(&req(0.0), &unknown) - 5.0 / 3600.0).abs() < 1e-12);
        let r100 = req(0.0);
        assert!(
            (config.cost(
                &r100,
                &Instance {
                    throughput_tokens_per_sec: 100.0,
                    ..Instance::new()
                }
            ) - 2.5 / 3600.0)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn adaptive_switches_on_priority_slo_and_load() {
        let config = AdaptiveConfig::default();
        let busy = [Instance {
            current_load: 90.0,
            ..Instance::new()
        }];
        let middling = [Instance {
            current_load: 50.0,
            ..Instance::new()
        }];
        let idle = [Instance {
            current_load: 10.0,
            ..Instance::new()
        }];
        let mut high = req(0.0);
        high.priority = Priority::High;
        let mut slo = req(0.0);
        slo.slo_deadline_ms = Some(100.0);
        let plain = req(0.0);
        let choice = |rs: &[Request], is: &[Instance]| adaptive_choice(&config, rs, is);
        assert_eq!(
            choice(&[plain.clone(), high], &idle),
            (Kind::Priority, AdaptiveCause::HighPriority)
        );
        assert_eq!(
            choice(&[slo.clone()], &busy),
            (Kind::SloAware, AdaptiveCause::SloUnderHighLoad)
        );
        assert_eq!(
            choice(&[slo.clone()], &idle),
            (Kind::CostOptimized, AdaptiveCause::LowLoad)
        );
        assert_eq!(
            choice(std::slice::from_ref(&plain), &busy),
            (Kind::SloAware, AdaptiveCause::Default)
        );
        assert_eq!(
            choice(&[slo.clone()], &middling),
            (Kind::SloAware, AdaptiveCause::Default)
        );
        // Thresholds are settings.
        let strict = AdaptiveConfig {
            low_load_threshold: 0.6,
            ..config
        };
        assert_eq!(
            adaptive_choice(&strict, &[slo.clone()], &middling),
            (Kind::CostOptimized, AdaptiveCause::LowLoad)
        );
        let out = schedule(
            &Strategy::Adaptive(config),
            &[plain],
            &idle,
            0.0,
            Order::Strategy,
        );
        assert_eq!(
            out.adaptive,
            Some((Kind::CostOptimized, AdaptiveCause::LowLoad))
        );
        assert!(matches!(out.decisions[0].reason, Reason::Cost { .. }));
    }

    #[test]
    fn as_given_order_is_kept() {
        let requests = [req(3.0), req(1.0)];
        let out = schedule(
            &Strategy::Fifo,
            &requests,
            &[Instance::new()],
            0.0,
            Order::AsGiven,
        );
        let order: Vec<usize> = out.decisions.iter().map(|d| d.request).collect();
        assert_eq!(order, vec![0, 1]);
    }

    #[test]
    fn decisions_report_the_instance_layout() {
        let hybrid = Instance {
            tensor_parallel_size: 2,
            pipeline_parallel_size: 2,
            avg_latency_ms: 7.0,
            ..Instance::new()
        };
        let d = &schedule(
            &Strategy::Fifo,
            &[req(0.0)],
            &[hybrid],
            0.0,
            Order::Strategy,
        )
        .decisions[0];
        assert_eq!(
            (
                d.parallelism,
                d.tensor_parallel_size,
                d.pipeline_parallel_size
            ),
            (Parallelism::Hybrid, 2, 2)
        );
        assert_eq!(d.estimated_latency_ms, 7.0);
        let pp = Instance {
            pipeline_parallel_size: 4,
            ..Instance::new()
        };
        assert_eq!(Parallelism::of(&pp), Parallelism::Pipeline);
        assert_eq!(Parallelism::of(&Instance::new()), Parallelism::Tensor);
    }

    mod props {
        use super::super::super::types::{Instance, ModelMatch, Priority, Request};
        use super::super::{
            schedule, AdaptiveConfig, CostConfig, Order, SloConfig, Strategy as Plan,
        };
        use proptest::prelude::*;

        fn arb_request() -> impl Strategy<Value = Request> {
            (
                0u8..5,
                0.0f64..100.0,
                0u32..4,
                proptest::option::of(0u64..5000),
                proptest::option::of(1.0f64..5000.0),
                proptest::option::of(0.0f64..0.01),
            )
                .prop_map(|(p, arrival_s, m, max_tokens, slo, budget)| Request {
                    priority: Priority::ALL[p as usize],
                    arrival_s,
                    model: match m {
                        3 => ModelMatch::Any,
                        m => ModelMatch::Model(m),
                    },
                    max_tokens,
                    slo_deadline_ms: slo,
                    cost_budget: budget,
                })
        }

        fn arb_instance() -> impl Strategy<Value = Instance> {
            (
                0u32..3,
                1u64..4,
                1u64..3,
                1u64..9,
                any::<bool>(),
                0u32..6,
                0u32..6,
                0.0f64..200.0,
                0.0f64..5000.0,
            )
                .prop_map(|(model, tp, pp, gpus, accept, load, cap, lat, tput)| {
                    Instance {
                        model,
                        tensor_parallel_size: tp,
                        pipeline_parallel_size: pp,
                        gpu_count: gpus,
                        can_accept_request: accept,
                        current_load: load as f64,
                        max_concurrency: cap as f64,
                        avg_latency_ms: lat,
                        throughput_tokens_per_sec: tput,
                    }
                })
        }

        fn arb_strategy() -> impl Strategy<Value = Plan> {
            prop_oneof![
                Just(Plan::Fifo),
                Just(Plan::Priority),
                (0.0f64..1.0).prop_map(|t| Plan::SloAware(SloConfig {
                    urgency_threshold: t
                })),
                (0.1f64..10.0).prop_map(|p| Plan::CostOptimized(CostConfig {
                    price_per_gpu_hour: p
                })),
                (0.0f64..1.0, 0.0f64..1.0).prop_map(|(h, l)| Plan::Adaptive(AdaptiveConfig {
                    high_load_threshold: h,
                    low_load_threshold: l,
                    ..AdaptiveConfig::default()
                })),
            ]
        }

        proptest! {
            #[test]
            fn capacity_is_never_exceeded(
                strategy in arb_strategy(),
                requests in proptest::collection::vec(arb_request(), 0..60),
                instances in proptest::collection::vec(arb_instance(), 0..8),
                now in 0.0f64..120.0,
            ) {
                let out = schedule(&strategy, &requests, &instances, now, Order::Strategy);
                let mut placed = vec![0.0; instances.len()];
                let mut seen = vec![false; requests.len()];
                for d in &out.decisions {
                    prop_assert!(d.request < requests.len() && d.instance < instances.len());
                    prop_assert!(!seen[d.request], "request placed twice");
                    seen[d.request] = true;
                    let i = &instances[d.instance];
                    prop_assert!(i.can_accept_request);
                    match requests[d.request].model {
                        ModelMatch::Model(m) => prop_assert_eq!(i.model, m),
                        ModelMatch::Any => {}
                        ModelMatch::Unserved => prop_assert!(false, "unserved model placed"),
                    }
                    placed[d.instance] += 1.0;
                    prop_assert!(i.current_load + placed[d.instance] <= i.max_concurrency.max(i.current_load),
                        "instance {} over capacity", d.instance);
                    prop_assert!(i.current_load + placed[d.instance] - 1.0 < i.max_concurrency);
                }
                // Work-conserving: a request left out had no eligible instance at the end.
                for (r, request) in requests.iter().enumerate() {
                    if seen[r] || matches!(strategy, Plan::CostOptimized(_) | Plan::Adaptive(_)) {
                        continue;
                    }
                    for (i, inst) in instances.iter().enumerate() {
                        let serves = match request.model { ModelMatch::Any => true, ModelMatch::Model(m) => inst.model == m, ModelMatch::Unserved => false };
                        prop_assert!(!(serves && inst.can_accept_request && inst.current_load + placed[i] < inst.max_concurrency),
                            "request {} left out while instance {} had room", r, i);
                    }
                }
            }
        }
    }
}

//! The batch API's plain data: a request, an instance, a decision and why it
//! was made. The binding fills these from Python objects once per call; the
//! strategies never see Python.

use std::fmt;

/// Seed 002's `RequestPriority`, most urgent first (its `value` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Critical = 0,
    High = 1,
    Normal = 2,
    Low = 3,
    Background = 4,
}

impl Priority {
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];

    /// The enum member's name, as Python spells it.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "CRITICAL",
            Priority::High => "HIGH",
            Priority::Normal => "NORMAL",
            Priority::Low => "LOW",
            Priority::Background => "BACKGROUND",
        }
    }

    /// A member from its name (any case).
    pub fn from_name(name: &str) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// CRITICAL and HIGH: served by the fastest instances.
    pub fn is_high(self) -> bool {
        matches!(self, Priority::Critical | Priority::High)
    }
}

/// Seed 002's `ParallelismType` (the members a decision can name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parallelism {
    Tensor = 0,
    Pipeline = 1,
    Data = 2,
    Hybrid = 3,
}

impl Parallelism {
    /// What an instance's layout amounts to: both TP and PP above 1 is
    /// hybrid, PP alone is pipeline, anything else tensor (TP of 1 included,
    /// as the seed's strategies report it).
    pub fn of(instance: &Instance) -> Parallelism {
        match (
            instance.tensor_parallel_size > 1,
            instance.pipeline_parallel_size > 1,
        ) {
            (true, true) => Parallelism::Hybrid,
            (false, true) => Parallelism::Pipeline,
            _ => Parallelism::Tensor,
        }
    }
}

/// Which instances may serve a request, by model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelMatch {
    /// The request names no model: any instance.
    Any,
    /// Instances whose model id is this one (ids are the binding's
    /// numbering of the distinct instance model names).
    Model(u32),
    /// A model no instance serves.
    Unserved,
}

/// A pending request (seed 002's `RequestMetadata`, the fields scheduling reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub priority: Priority,
    /// Submission time, seconds since the epoch.
    pub arrival_s: f64,
    pub model: ModelMatch,
    pub max_tokens: Option<u64>,
    pub slo_deadline_ms: Option<f64>,
    pub cost_budget: Option<f64>,
}

impl Request {
    /// A NORMAL request for any model, arrived at `arrival_s`.
    pub fn new(arrival_s: f64) -> Request {
        Request {
            priority: Priority::Normal,
            arrival_s,
            model: ModelMatch::Any,
            max_tokens: None,
            slo_deadline_ms: None,
            cost_budget: None,
        }
    }

    /// Milliseconds left before the SLO deadline at `now_s` (negative once
    /// missed); `None` without a deadline.
    pub fn remaining_ms(&self, now_s: f64) -> Option<f64> {
        self.slo_deadline_ms
            .map(|slo| slo - (now_s - self.arrival_s) * 1000.0)
    }

    /// Urgency in [0, 1]: the share of the SLO deadline already spent (1 once
    /// missed, 0 without a deadline or before arrival).
    pub fn urgency(&self, now_s: f64) -> f64 {
        let Some(slo) = self.slo_deadline_ms else {
            return 0.0;
        };
        let elapsed_ms = (now_s - self.arrival_s) * 1000.0;
        if slo <= 0.0 || elapsed_ms >= slo {
            return 1.0;
        }
        (elapsed_ms / slo).clamp(0.0, 1.0)
    }
}

/// A serving instance (seed 002's `ExecutionInstance`, the fields scheduling reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Model id (see [`ModelMatch::Model`]).
    pub model: u32,
    pub tensor_parallel_size: u64,
    pub pipeline_parallel_size: u64,
    pub gpu_count: u64,
    pub can_accept_request: bool,
    /// Requests running now.
    pub current_load: f64,
    pub max_concurrency: f64,
    pub avg_latency_ms: f64,
    pub throughput_tokens_per_sec: f64,
}

impl Instance {
    /// An idle, accepting one-GPU instance of model 0.
    pub fn new() -> Instance {
        Instance {
            model: 0,
            tensor_parallel_size: 1,
            pipeline_parallel_size: 1,
            gpu_count: 1,
            can_accept_request: true,
            current_load: 0.0,
            max_concurrency: 100.0,
            avg_latency_ms: 0.0,
            throughput_tokens_per_sec: 0.0,
        }
    }

    /// Load as a share of capacity (1 when it has no capacity).
    pub fn utilization(&self) -> f64 {
        if self.max_concurrency > 0.0 {
            self.current_load / self.max_concurrency
        } else {
            1.0
        }
    }
}

impl Default for Instance {
    fn default() -> Self {
        Instance::new()
    }
}

/// A value a field may not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field's name (`"max_tokens"`).
    pub field: &'static str,
    /// What it must be (`"an int >= 0"`).
    pub expected: &'static str,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} must be {}", self.field, self.expected)
    }
}

/// Checks a number read from a field: finite, and `>= 0` when `non_negative`.
pub fn check_number(
    field: &'static str,
    value: f64,
    non_negative: bool,
) -> Result<f64, FieldError> {
    if !value.is_finite() {
        return Err(FieldError {
            field,
            expected: if non_negative {
                "a finite number >= 0"
            } else {
                "a finite number"
            },
        });
    }
    if non_negative && value < 0.0 {
        return Err(FieldError {
            field,
            expected: "a finite number >= 0",
        });
    }
    Ok(value)
}

/// Checks an integer read from a field: `>= minimum`.
pub fn check_count(field: &'static str, value: i64, minimum: i64) -> Result<u64, FieldError> {
    if value < minimum {
        return Err(FieldError {
            field,
            expected: if minimum == 0 {
                "an int >= 0"
            } else {
                "an int >= 1"
            },
        });
    }
    u64::try_from(value).map_err(|_| FieldError {
        field,
        expected: "an int >= 0",
    })
}

/// The strategy that made a decision (for Adaptive: the one it chose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Fifo,
    Priority,
    SloAware,
    CostOptimized,
}

impl Kind {
    /// The policy's `kind` in Python.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fifo => "fifo",
            Kind::Priority => "priority",
            Kind::SloAware => "slo_aware",
            Kind::CostOptimized => "cost_optimized",
        }
    }
}

/// Why Adaptive chose its strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdaptiveCause {
    HighPriority,
    SloUnderHighLoad,
    LowLoad,
    Default,
}

impl AdaptiveCause {
    pub fn text(self) -> &'static str {
        match self {
            AdaptiveCause::HighPriority => "high-priority requests present",
            AdaptiveCause::SloUnderHighLoad => "SLO requests under high load",
            AdaptiveCause::LowLoad => "low load, optimizing for cost",
            AdaptiveCause::Default => "default SLO-aware scheduling",
        }
    }
}

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// FIFO: least-loaded instance.
    Fifo,
    /// Priority: the fastest instance for CRITICAL/HIGH, else the least loaded.
    Priority { priority: Priority },
    /// SLO-aware: the fastest instance when `urgent`, else the least loaded.
    Slo { urgency: f64, urgent: bool },
    /// Cost-optimised: the cheapest instance within budget that meets the
    /// SLO; `slo_met` is false when none could and the cheapest was taken.
    Cost { cost: f64, slo_met: bool },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Fifo => f.write_str("FIFO scheduling to least loaded instance"),
            Reason::Priority { priority } => {
                let target = if priority.is_high() {
                    "fastest"
                } else {
                    "least loaded"
                };
                write!(
                    f,
                    "Priority {} scheduling to {target} instance",
                    priority.name()
                )
            }
            Reason::Slo { urgency, urgent } => {
                let target = if urgent { "fastest" } else { "least loaded" };
                write!(
                    f,
                    "SLO-aware scheduling (urgency: {urgency:.2}) to {target} instance"
                )
            }
            Reason::Cost { cost, slo_met } => {
                write!(f, "Cost-optimized scheduling (cost: ${cost:.6})")?;
                if !slo_met {
                    f.write_str("; no instance can meet the SLO")?;
                }
                Ok(())
            }
        }
    }
}

/// One placement: `request` and `instance` index the call's input slices.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub request: usize,
    pub instance: usize,
    pub parallelism: Parallelism,
    pub tensor_parallel_size: u64,
    pub pipeline_parallel_size: u64,
    pub estimated_latency_ms: f64,
    pub estimated_cost: f64,
    pub reason: Reason,
}

//! Jobs owned from submission to the end: states and their validated
//! transitions ([`JobState`], [`check_transition`]), the job table with its
//! pending set ordered by a [`crate::policy::Policy`] ([`queue::JobQueue`]),
//! the admission pass over it (through [`crate::policy::admit::admit`]) and
//! a crash-safe SQLite journal ([`journal::Journal`]).
//!
//! What a job *runs* (a function, a subprocess) is the front end's business:
//! the core keeps the record, the order and the history.

pub mod evict;
pub mod journal;
pub mod plan;
pub mod queue;
pub mod recovery;

use std::fmt;
use std::sync::Arc;

use crate::policy::JobInfo;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        Self::Queued,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses a state name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s))
    }

    /// Completed, failed or cancelled: nothing happens to it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `from → to` is a transition of the lifecycle:
///
/// ```text
/// QUEUED  → RUNNING (admitted) | CANCELLED | FAILED (can never run)
/// RUNNING → PAUSED | COMPLETED | FAILED | CANCELLED | QUEUED (preempted, retried, interrupted)
/// PAUSED  → RUNNING (resumed) | COMPLETED | FAILED | CANCELLED | QUEUED
/// ```
///
/// A paused job may still end (a function that ignores the cooperative
/// pause, a stopped process killed from outside). Terminal states have no
/// way out.
pub fn allowed(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Queued, Running | Cancelled | Failed)
            | (Running, Paused | Completed | Failed | Cancelled | Queued)
            | (Paused, Running | Completed | Failed | Cancelled | Queued)
    )
}

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_mb: f64,
    pub gpu_count: u32,
    /// Per GPU.
    pub vram_mb: f64,
}

/// The largest figures a submission may carry. Beyond them a number is a
/// mistake or an attack (`gpu_count=65537`, `memory_mb=1e300`), refused at
/// submit naming the field, before it can reach a dispatch pass.
pub mod limits {
    /// CPU cores a job may ask for.
    pub const MAX_CPU_CORES: f64 = 1_000_000.0;
    /// System memory (MB) a job may ask for: 1 EB.
    pub const MAX_MEMORY_MB: f64 = 1e12;
    /// VRAM per GPU (MB): 1 PB.
    pub const MAX_VRAM_MB: f64 = 1e9;
    /// GPUs a job may ask for.
    pub const MAX_GPU_COUNT: u32 = 4096;
    /// Retries a job may be given.
    pub const MAX_RETRIES: u32 = 1000;
    /// Durations and deadlines (seconds): about 317 years.
    pub const MAX_SECONDS: f64 = 1e10;
    /// Price per second.
    pub const MAX_COST_PER_SECOND: f64 = 1e12;
    /// Names (module, user, project, queue, kind), in bytes.
    pub const MAX_NAME_BYTES: usize = 4096;
}

fn invalid(field: &str, message: String) -> JobError {
    JobError::Invalid {
        field: field.to_owned(),
        message,
    }
}

/// `v` finite, `>= 0` and at most `max`, else an error naming `field`.
pub fn checked_number(field: &str, v: f64, max: f64) -> Result<f64, JobError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(
            field,
            format!("must be a finite number >= 0, got {v}"),
        ));
    }
    if v > max {
        return Err(invalid(field, format!("must be at most {max}, got {v}")));
    }
    Ok(v)
}

/// A name: non-empty when `required`, at most [`limits::MAX_NAME_BYTES`], no NUL.
pub fn checked_name(field: &str, v: &str) -> Result<(), JobError> {
    if v.len() > limits::MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!(
                "must be at most {} bytes, got {}",
                limits::MAX_NAME_BYTES,
                v.len()
            ),
        ));
    }
    if v.contains('\0') {
        return Err(invalid(field, format!("must not contain NUL, got {v:?}")));
    }
    Ok(())
}

/// What the machine has, as far as it is known (`None`: not known yet).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Machine {
    pub cpu_cores: Option<f64>,
    pub memory_mb: Option<f64>,
    /// Each GPU's total VRAM (MB); `Some(vec![])`: no GPU.
    pub gpu_vram_mb: Option<Vec<f64>>,
}

impl Resources {
    /// Every figure checked finite, non-negative and within [`limits`]
    /// (names the field).
    pub fn checked(self) -> Result<Self, JobError> {
        for (field, v, max) in [
            ("cpu_cores", self.cpu_cores, limits::MAX_CPU_CORES),
            ("memory_mb", self.memory_mb, limits::MAX_MEMORY_MB),
            ("vram_mb", self.vram_mb, limits::MAX_VRAM_MB),
        ] {
            checked_number(&format!("requirements.{field}"), v, max)?;
        }
        if self.gpu_count > limits::MAX_GPU_COUNT {
            return Err(invalid(
                "requirements.gpu_count",
                format!(
                    "must be at most {}, got {}",
                    limits::MAX_GPU_COUNT,
                    self.gpu_count
                ),
            ));
        }
        Ok(self)
    }

    /// Why a job asking for this can never run on `machine` (names the
    /// resource, the need and the capacity), or `None` if it may.
    pub fn never_fits(&self, machine: &Machine) -> Option<JobError> {
        let never = |field: &str, what: String| {
            Some(invalid(
                &format!("requirements.{field}"),
                format!("{what}: the job can never fit"),
            ))
        };
        if let Some(cores) = machine.cpu_cores {
            if self.cpu_cores > cores + 1e-9 {
                return never(
                    "cpu_cores",
                    format!(
                        "needs {} CPU cores, the machine has {cores}",
                        self.cpu_cores
                    ),
                );
            }
        }
        if let Some(mem) = machine.memory_mb {
            if self.memory_mb > mem + 1e-9 {
                return never(
                    "memory_mb",
                    format!(
                        "needs {} MB of memory, the machine has {mem} MB",
                        self.memory_mb
                    ),
                );
            }
        }
        if let Some(gpus) = &machine.gpu_vram_mb {
            let n = self.gpu_count as usize;
            if n > gpus.len() {
                return never(
                    "gpu_count",
                    format!(
                        "needs {} GPUs, the machine has {}",
                        self.gpu_count,
                        gpus.len()
                    ),
                );
            }
            if n > 0 && self.vram_mb > 0.0 {
                let big = gpus.iter().filter(|&&v| v + 1e-9 >= self.vram_mb).count();
                if big < n {
                    let largest = gpus.iter().copied().fold(0.0_f64, f64::max);
                    return never(
                        "vram_mb",
                        format!(
                            "needs {} MB of VRAM on each of {n} GPU(s), {big} of the machine's {} GPUs have that much (the largest has {largest} MB)",
                            self.vram_mb,
                            gpus.len()
                        ),
                    );
                }
            }
        }
        None
    }
}

/// How soon a write reaches the journal's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Committed before the call that made it returns.
    Sync,
    /// Buffered; the front end commits within its `flush_interval`.
    #[default]
    Batched,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(Self::Sync),
            "batched" => Some(Self::Batched),
            _ => None,
        }
    }
}

/// How many finished jobs (completed, failed, cancelled) are kept, in
/// memory and in the journal: the oldest beyond `max_jobs`, and any that
/// ended more than `max_age_s` ago, are dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub max_jobs: Option<usize>,
    pub max_age_s: Option<f64>,
}

impl Retention {
    /// 10,000 finished jobs, 7 days.
    pub const DEFAULT: Retention = Retention {
        max_jobs: Some(10_000),
        max_age_s: Some(7.0 * 24.0 * 3600.0),
    };

    pub fn checked(self) -> Result<Self, JobError> {
        if self.max_jobs == Some(0) {
            return Err(invalid(
                "retention.max_jobs",
                "must be at least 1 (the job that just ended is kept), got 0".into(),
            ));
        }
        if let Some(age) = self.max_age_s {
            if !(age.is_finite() && age >= 0.0) {
                return Err(invalid(
                    "retention.max_age_s",
                    format!("must be a finite number of seconds >= 0, got {age}"),
                ));
            }
        }
        Ok(self)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything a submission says about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The module (plugin) name.
    pub name: String,
    /// 0–100 (higher first).
    pub priority: f64,
    /// Seconds from submission by which it should be done.
    pub deadline_in: Option<f64>,
    pub estimated_duration: Option<f64>,
    pub cost_per_second: Option<f64>,
    pub user: Option<String>,
    pub project: Option<String>,
    /// `None`: the default queue.
    pub queue: Option<String>,
    pub resources: Resources,
    /// What runs: `"function"`, `"registered"`, `"command"`, `"simulated"`
    /// (the front end's words; `rerunnable` says which survive a crash).
    pub kind: String,
    /// The kind's data (a command's JSON, a registered function's name).
    pub payload: String,
    pub max_retries: u32,
}

impl JobSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            priority: crate::policy::DEFAULT_PRIORITY,
            deadline_in: None,
            estimated_duration: None,
            cost_per_second: None,
            user: None,
            project: None,
            queue: None,
            resources: Resources::default(),
            kind: "simulated".to_owned(),
            payload: String::new(),
            max_retries: 0,
        }
    }
}

/// Kinds of job that can be started again after a crash (their whole
/// description is in the journal).
pub fn rerunnable(kind: &str) -> bool {
    matches!(kind, "command" | "registered" | "simulated")
}

/// A job's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The policy's view (id, name, priority, user, project, submitted, deadline ...).
    pub info: JobInfo,
    pub queue: Arc<str>,
    pub cost_per_second: Option<f64>,
    pub resources: Resources,
    pub kind: Arc<str>,
    pub payload: Arc<str>,
    pub max_retries: u32,
    pub state: JobState,
    /// Times it was started (1 after the first start).
    pub attempts: u32,
    pub preemptions: u32,
    pub retries: u32,
    pub error: Option<String>,
    pub progress: f64,
    pub progress_message: Option<String>,
    /// Clock seconds of the last start / the end (None while it has none).
    pub started: Option<f64>,
    pub ended: Option<f64>,
    /// Seconds it has run in earlier attempts.
    pub ran_s: f64,
}

impl Job {
    pub fn id(&self) -> u64 {
        self.info.id
    }
}

/// What a job operation can refuse.
#[derive(Debug)]
pub enum JobError {
    /// No job has that id.
    Unknown { id: u64 },
    /// `call` is not valid for a job in `state`.
    Transition {
        id: u64,
        name: String,
        state: JobState,
        call: String,
    },
    /// A bad argument: names the field and the value.
    Invalid { field: String, message: String },
    /// The journal failed (SQLite).
    Journal { path: String, message: String },
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { id } => write!(f, "no job with id {id}"),
            Self::Transition {
                id,
                name,
                state,
                call,
            } => write!(f, "cannot {call} job {id} ({name:?}): it is {state}"),
            Self::Invalid { field, message } => write!(f, "{field}: {message}"),
            Self::Journal { path, message } => write!(f, "job journal {path}: {message}"),
        }
    }
}

impl std::error::Error for JobError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_terminals_are_final() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(&s.name().to_lowercase()), Some(s));
            if s.is_terminal() {
                assert!(JobState::ALL.iter().all(|&t| !allowed(s, t)), "{s}");
            }
        }
        assert_eq!(JobState::parse("MIGRATING"), None);
    }

    #[test]
    fn lifecycle_table() {
        use JobState::*;
        assert!(allowed(Queued, Running));
        assert!(!allowed(Queued, Paused));
        assert!(!allowed(Queued, Completed));
        assert!(allowed(Running, Queued));
        assert!(allowed(Paused, Running));
        assert!(!allowed(Running, Running));
    }

    #[test]
    fn transition_error_names_job_state_and_call() {
        let e = JobError::Transition {
            id: 7,
            name: "arxiv_search".into(),
            state: JobState::Completed,
            call: "pause_job".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot pause_job job 7 (\"arxiv_search\"): it is COMPLETED"
        );
    }

    #[test]
    fn resources_refuse_negative_and_nan() {
        let bad = Resources {
            memory_mb: -1.0,
            ..Resources::default()
        };
        assert!(bad.checked().unwrap_err().to_string().contains("memory_mb"));
        let nan = Resources {
            cpu_cores: f64::NAN,
            ..Resources::default()
        };
        assert!(nan.checked().is_err());
    }

    #[test]
    fn poison_figures_are_refused_naming_the_field() {
        for (r, field) in [
            (
                Resources {
                    gpu_count: 65537,
                    ..Resources::default()
                },
                "requirements.gpu_count",
            ),
            (
                Resources {
                    vram_mb: 1e300,
                    ..Resources::default()
                },
                "requirements.vram_mb",
            ),
            (
                Resources {
                    memory_mb: 1e300,
                    ..Resources::default()
                },
                "requirements.memory_mb",
            ),
            (
                Resources {
                    cpu_cores: f64::INFINITY,
                    ..Resources::default()
                },
                "requirements.cpu_cores",
            ),
        ] {
            let e = r.checked().unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        }
        assert!(checked_number("deadline", 1e11, limits::MAX_SECONDS).is_err());
        assert!(checked_name("queue", "a\0b").is_err());
        assert!(checked_name("queue", &"x".repeat(5000)).is_err());
    }

    #[test]
    fn never_fits_names_resource_need_and_capacity() {
        let m = Machine {
            cpu_cores: Some(2.0),
            memory_mb: Some(16000.0),
            gpu_vram_mb: Some(vec![24000.0, 80000.0]),
        };
        let cpu = Resources {
            cpu_cores: 500.0,
            ..Resources::default()
        };
        let e = cpu.never_fits(&m).expect("never").to_string();
        assert!(
            e.contains("cpu_cores") && e.contains("500") && e.contains("has 2"),
            "{e}"
        );
        let gpus = Resources {
            gpu_count: 3,
            ..Resources::default()
        };
        assert!(gpus
            .never_fits(&m)
            .expect("never")
            .to_string()
            .contains("has 2"));
        let vram = Resources {
            gpu_count: 2,
            vram_mb: 40000.0,
            ..Resources::default()
        };
        let e = vram.never_fits(&m).expect("never").to_string();
        assert!(
            e.contains("vram_mb") && e.contains("40000") && e.contains("80000"),
            "{e}"
        );
        let one_big = Resources {
            gpu_count: 1,
            vram_mb: 40000.0,
            ..Resources::default()
        };
        assert!(one_big.never_fits(&m).is_none());
        let mem = Resources {
            memory_mb: 16001.0,
            ..Resources::default()
        };
        assert!(mem
            .never_fits(&m)
            .expect("never")
            .to_string()
            .contains("16000 MB"));
        assert!(
            cpu.never_fits(&Machine::default()).is_none(),
            "unknown: no refusal"
        );
    }
}

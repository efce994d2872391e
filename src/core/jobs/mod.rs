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

impl Resources {
    /// Every figure checked finite and non-negative (names the field).
    pub fn checked(self) -> Result<Self, JobError> {
        for (field, v) in [
            ("cpu_cores", self.cpu_cores),
            ("memory_mb", self.memory_mb),
            ("vram_mb", self.vram_mb),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(JobError::Invalid {
                    field: format!("requirements.{field}"),
                    message: format!("must be a finite number >= 0, got {v}"),
                });
            }
        }
        Ok(self)
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
}

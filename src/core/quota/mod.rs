//! Per-project resource quotas (seed 004's `QuotaProvider`), with real
//! backends: SQLite ([`sqlite`], the embedded default), PostgreSQL
//! ([`postgres`], several hosts) and Slurm ([`slurm`], limits kept by
//! slurmdbd as association `GrpTRES`).
//!
//! Amounts are kept as exact integers ([`Amounts`]: millicores, KiB, GPUs,
//! KiB of VRAM), so a long run of allocate/release never drifts and a
//! comparison against a limit is exact. The decision (does a request fit
//! a limit given what is in use) is one function, [`decide`], shared by
//! every backend; the two SQL backends also share every operation
//! ([`SqlStore`] + the `*_in` functions) and differ only in how they lock.

pub mod postgres;
pub mod slurm;
pub mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Schema version of the quota tables this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// DDL shared by SQLite and PostgreSQL (both accept these types).
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS plugin_scheduling_schema (
        component TEXT PRIMARY KEY,
        version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS project_quotas (
        project_id TEXT PRIMARY KEY,
        defined BOOLEAN NOT NULL DEFAULT FALSE,
        cpu_quota_milli BIGINT,
        memory_quota_kib BIGINT,
        gpu_quota BIGINT,
        vram_quota_kib BIGINT,
        enforce_quota BOOLEAN NOT NULL DEFAULT TRUE,
        updated_at_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS quota_usage (
        project_id TEXT NOT NULL REFERENCES project_quotas(project_id) ON DELETE CASCADE,
        job_type TEXT NOT NULL,
        cpu_milli BIGINT NOT NULL DEFAULT 0,
        memory_kib BIGINT NOT NULL DEFAULT 0,
        gpu BIGINT NOT NULL DEFAULT 0,
        vram_kib BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, job_type))",
    // One row per holder (a job of a job scheduler's journal) of an
    // allocation made with `allocate_held`: written in the same
    // transaction as the usage it adds, deleted in the same transaction as
    // the release, so a release by holder happens at most once.
    "CREATE TABLE IF NOT EXISTS quota_holds (
        holder TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        job_type TEXT NOT NULL,
        cpu_milli BIGINT NOT NULL,
        memory_kib BIGINT NOT NULL,
        gpu BIGINT NOT NULL,
        vram_kib BIGINT NOT NULL)",
];

/// Statements shared by SQLite and PostgreSQL. SQLite numbers `$N`
/// parameters in order of first appearance, so `$1, $2, ...` written in
/// order bind the same positional values in both.
pub(crate) mod sql {
    pub const INIT_VERSION: &str = "INSERT INTO plugin_scheduling_schema (component, version) \
        VALUES ('quotas', $1) ON CONFLICT (component) DO NOTHING";
    pub const READ_VERSION: &str =
        "SELECT version FROM plugin_scheduling_schema WHERE component = 'quotas'";
    pub const LOAD_LIMITS: &str = "SELECT defined, cpu_quota_milli, memory_quota_kib, gpu_quota, \
        vram_quota_kib, enforce_quota FROM project_quotas WHERE project_id = $1";
    pub const LOAD_USED: &str = "SELECT job_type, cpu_milli, memory_kib, gpu, vram_kib \
        FROM quota_usage WHERE project_id = $1";
    pub const ENSURE_ROW: &str = "INSERT INTO project_quotas (project_id) VALUES ($1) \
        ON CONFLICT (project_id) DO NOTHING";
    pub const SAVE_LIMITS: &str = "INSERT INTO project_quotas (project_id, defined, \
        cpu_quota_milli, memory_quota_kib, gpu_quota, vram_quota_kib, enforce_quota, updated_at_ms) \
        VALUES ($1, TRUE, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id) DO UPDATE SET \
        defined = TRUE, cpu_quota_milli = excluded.cpu_quota_milli, \
        memory_quota_kib = excluded.memory_quota_kib, gpu_quota = excluded.gpu_quota, \
        vram_quota_kib = excluded.vram_quota_kib, enforce_quota = excluded.enforce_quota, \
        updated_at_ms = excluded.updated_at_ms";
    pub const SAVE_USED: &str = "INSERT INTO quota_usage (project_id, job_type, cpu_milli, \
        memory_kib, gpu, vram_kib) VALUES ($1, $2, $3, $4, $5, $6) \
        ON CONFLICT (project_id, job_type) DO UPDATE SET cpu_milli = excluded.cpu_milli, \
        memory_kib = excluded.memory_kib, gpu = excluded.gpu, vram_kib = excluded.vram_kib";
    pub const LOAD_HOLD: &str =
        "SELECT holder, project_id, job_type, cpu_milli, memory_kib, gpu, vram_kib \
        FROM quota_holds WHERE holder = $1";
    pub const SAVE_HOLD: &str =
        "INSERT INTO quota_holds (holder, project_id, job_type, cpu_milli, \
        memory_kib, gpu, vram_kib) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub const DELETE_HOLD: &str = "DELETE FROM quota_holds WHERE holder = $1";
    /// Holders starting with `$1` (compared as a prefix, no LIKE escapes).
    pub const LIST_HOLDS: &str =
        "SELECT holder, project_id, job_type, cpu_milli, memory_kib, gpu, \
        vram_kib FROM quota_holds WHERE substr(holder, 1, length($1)) = $1 ORDER BY holder";
}

/// An allocation recorded under its holder (see `allocate_held`).
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    pub holder: String,
    pub project: String,
    pub job_type: JobType,
    pub amounts: Amounts,
}

fn holds_unsupported(backend: &'static str) -> QuotaError {
    QuotaError::Unsupported {
        backend,
        field: "holder",
        reason: "this backend does not record allocations by holder".to_owned(),
    }
}

pub(crate) fn check_holder(holder: &str) -> Result<()> {
    if holder.is_empty() || holder.len() > 512 || holder.chars().any(char::is_control) {
        return Err(QuotaError::InvalidInput {
            field: "holder",
            value: format!("{holder:?}"),
            reason: "must be 1-512 characters without control characters".to_owned(),
        });
    }
    Ok(())
}

/// `Ok` when the stored schema `found` is the one this build knows.
pub(crate) fn check_version(found: i64) -> Result<()> {
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    Err(QuotaError::SchemaVersion {
        found,
        supported: SCHEMA_VERSION,
    })
}

/// Everything that can go wrong with a quota operation.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaError {
    /// A field of the caller's input is out of range or malformed.
    InvalidInput {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// The backend cannot represent this setting (e.g. VRAM in Slurm).
    Unsupported {
        backend: &'static str,
        field: &'static str,
        reason: String,
    },
    /// A release of more than the project holds under that job type.
    OverRelease {
        project: String,
        job_type: JobType,
        resource: &'static str,
        released: f64,
        held: f64,
    },
    /// The database was written by a newer (or unknown) schema.
    SchemaVersion { found: i64, supported: i64 },
    /// Another transaction held the project's row longer than the lock
    /// timeout (PostgreSQL `lock_timeout`): the call gave up.
    Locked {
        backend: &'static str,
        project: String,
        timeout_s: f64,
    },
    /// The database could not be opened, read or written.
    Storage {
        backend: &'static str,
        detail: String,
    },
    /// A Slurm command failed or printed what we cannot parse.
    Slurm { command: String, detail: String },
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput {
                field,
                value,
                reason,
            } => write!(f, "{field} {reason}, got {value}"),
            Self::Unsupported {
                backend,
                field,
                reason,
            } => write!(f, "{field} is not supported by the {backend} quota backend: {reason}"),
            Self::OverRelease {
                project,
                job_type,
                resource,
                released,
                held,
            } => write!(
                f,
                "project {project:?} releases {released} {resource} for job type {} but holds only {held}",
                job_type.as_str()
            ),
            Self::SchemaVersion { found, supported } => write!(
                f,
                "quota database has schema version {found}; this build supports version {supported}"
            ),
            Self::Locked {
                backend,
                project,
                timeout_s,
            } => write!(
                f,
                "{backend} quota store: project {project:?}'s quota row is locked by another transaction; gave up after {timeout_s} s (lock_timeout; LocalQuotaProvider(lock_timeout=...) sets it)"
            ),
            Self::Storage { backend, detail } => write!(f, "{backend} quota store: {detail}"),
            Self::Slurm { command, detail } => write!(f, "slurm: `{command}`: {detail}"),
        }
    }
}

impl std::error::Error for QuotaError {}

pub type Result<T> = std::result::Result<T, QuotaError>;

/// What a job is, as seed 004's `JobTypeEnum`: kept per allocation so
/// `usage()` breaks a project's use down by kind of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Model training (long, GPU heavy).
    Training,
    /// Serving or offline inference.
    Inference,
    /// Generic batch work (preprocessing, evaluation scripts).
    Batch,
    /// Interactive sessions (notebooks, shells).
    Interactive,
}

impl JobType {
    pub const ALL: [JobType; 4] = [
        JobType::Training,
        JobType::Inference,
        JobType::Batch,
        JobType::Interactive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::Inference => "inference",
            Self::Batch => "batch",
            Self::Interactive => "interactive",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| QuotaError::InvalidInput {
                field: "job_type",
                value: format!("{text:?}"),
                reason: "must be one of training, inference, batch, interactive".to_owned(),
            })
    }
}

const KIB_PER_GIB: f64 = 1024.0 * 1024.0;
const KIB_PER_MB: f64 = 1024.0;
/// Largest amount accepted in any unit (keeps sums far from i64 overflow).
const MAX_UNITS: f64 = 1e15;

/// Exact amounts: millicores, KiB of RAM, GPUs, KiB of VRAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cpu_milli: i64,
    pub memory_kib: i64,
    pub gpu: i64,
    pub vram_kib: i64,
}

/// The resources one job asks for, in the Python API's units.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    /// CPU cores (fractions allowed, resolution 0.001).
    pub cpu: f64,
    /// RAM in GiB (seed 004's `500Gi`).
    pub memory: f64,
    /// Whole GPUs.
    pub gpu: i64,
    /// GPU memory in MB.
    pub vram_mb: f64,
}

/// The unit a scale counts in, for messages.
fn unit_name(scale: f64) -> &'static str {
    if scale == 1000.0 {
        "0.001 core"
    } else if scale == KIB_PER_GIB {
        "1 KiB (1/1048576 GiB)"
    } else {
        "1 KiB (1/1024 MB)"
    }
}

/// `value` in whole units of `1/scale`. What the unit cannot count is
/// refused rather than rounded (rounded, 0.0004 cores under a 0.001-core
/// quota would count as 0, and any number of them would fit): a value must
/// be a whole number of units, up to float noise (a relative 1e-9, so that
/// `0.1` core is 100 millicores).
fn units(field: &'static str, value: f64, scale: f64) -> Result<i64> {
    let scaled = value * scale;
    if !value.is_finite() || value < 0.0 || scaled > MAX_UNITS {
        return Err(QuotaError::InvalidInput {
            field,
            value: format!("{value}"),
            reason: "must be a finite number >= 0 (and not absurdly large)".to_owned(),
        });
    }
    let whole = scaled.round();
    if (scaled - whole).abs() > 1e-9 * scaled.max(1.0) {
        let (down, up) = (scaled.floor() / scale, scaled.ceil() / scale);
        return Err(QuotaError::InvalidInput {
            field,
            value: format!("{value}"),
            reason: format!(
                "must be a whole number of the quota's unit of {} (it counts exactly and does not round; e.g. {down} or {up})",
                unit_name(scale)
            ),
        });
    }
    // In range by the check above; `as` on a finite f64 in i64 range is exact.
    Ok(whole as i64)
}

fn count(field: &'static str, value: i64) -> Result<i64> {
    if !(0..=MAX_UNITS as i64).contains(&value) {
        return Err(QuotaError::InvalidInput {
            field,
            value: value.to_string(),
            reason: "must be a whole number >= 0".to_owned(),
        });
    }
    Ok(value)
}

impl Resources {
    /// Validated exact amounts (each field finite and non-negative).
    pub fn amounts(&self) -> Result<Amounts> {
        Ok(Amounts {
            cpu_milli: units("cpu", self.cpu, 1000.0)?,
            memory_kib: units("memory", self.memory, KIB_PER_GIB)?,
            gpu: count("gpu", self.gpu)?,
            vram_kib: units("vram_mb", self.vram_mb, KIB_PER_MB)?,
        })
    }
}

impl Amounts {
    fn add(self, other: Amounts) -> Amounts {
        Amounts {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_kib: self.memory_kib.saturating_add(other.memory_kib),
            gpu: self.gpu.saturating_add(other.gpu),
            vram_kib: self.vram_kib.saturating_add(other.vram_kib),
        }
    }

    /// `self - other`, or the first resource that would go negative.
    fn sub(self, other: Amounts) -> std::result::Result<Amounts, (&'static str, f64, f64)> {
        let pairs = [
            ("cpu", self.cpu_milli, other.cpu_milli),
            ("memory", self.memory_kib, other.memory_kib),
            ("gpu", self.gpu, other.gpu),
            ("vram_mb", self.vram_kib, other.vram_kib),
        ];
        for (name, held, released) in pairs {
            if released > held {
                return Err((name, to_api(name, released), to_api(name, held)));
            }
        }
        Ok(Amounts {
            cpu_milli: self.cpu_milli - other.cpu_milli,
            memory_kib: self.memory_kib - other.memory_kib,
            gpu: self.gpu - other.gpu,
            vram_kib: self.vram_kib - other.vram_kib,
        })
    }

    pub fn is_zero(&self) -> bool {
        *self == Amounts::default()
    }

    /// The same amounts in the API's units.
    pub fn resources(&self) -> Resources {
        Resources {
            cpu: to_api("cpu", self.cpu_milli),
            memory: to_api("memory", self.memory_kib),
            gpu: self.gpu,
            vram_mb: to_api("vram_mb", self.vram_kib),
        }
    }
}

/// An amount of `resource` in exact units, in the API's unit.
fn to_api(resource: &str, value: i64) -> f64 {
    match resource {
        "cpu" => value as f64 / 1000.0,
        "memory" => value as f64 / KIB_PER_GIB,
        "vram_mb" => value as f64 / KIB_PER_MB,
        _ => value as f64,
    }
}

/// A project's limits; `None` means unlimited for that resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub cpu_milli: Option<i64>,
    pub memory_kib: Option<i64>,
    pub gpu: Option<i64>,
    pub vram_kib: Option<i64>,
    pub enforce: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_milli: None,
            memory_kib: None,
            gpu: None,
            vram_kib: None,
            enforce: true,
        }
    }
}

/// One field of a `set_quota` (the seed's PATCH body): keep it, clear it
/// (unlimited), or set it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Patch<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T: Copy> Patch<T> {
    fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Keep => current,
            Patch::Clear => None,
            Patch::Set(value) => Some(value),
        }
    }
}

/// `set_quota`'s arguments, in the API's units.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuotaPatch {
    pub cpu_quota: Patch<f64>,
    pub memory_quota: Patch<f64>,
    pub gpu_quota: Patch<i64>,
    pub vram_quota_mb: Patch<f64>,
    pub enforce_quota: Option<bool>,
}

fn patch_units(field: &'static str, patch: Patch<f64>, scale: f64) -> Result<Patch<i64>> {
    Ok(match patch {
        Patch::Keep => Patch::Keep,
        Patch::Clear => Patch::Clear,
        Patch::Set(v) => Patch::Set(units(field, v, scale)?),
    })
}

impl QuotaPatch {
    /// The limits after applying this patch to `current`.
    pub fn apply(&self, current: Limits) -> Result<Limits> {
        let gpu = match self.gpu_quota {
            Patch::Set(v) => Patch::Set(count("gpu_quota", v)?),
            other => other,
        };
        Ok(Limits {
            cpu_milli: patch_units("cpu_quota", self.cpu_quota, 1000.0)?.apply(current.cpu_milli),
            memory_kib: patch_units("memory_quota", self.memory_quota, KIB_PER_GIB)?
                .apply(current.memory_kib),
            gpu: gpu.apply(current.gpu),
            vram_kib: patch_units("vram_quota_mb", self.vram_quota_mb, KIB_PER_MB)?
                .apply(current.vram_kib),
            enforce: self.enforce_quota.unwrap_or(current.enforce),
        })
    }
}

/// Why a request does not fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Exceeded {
    pub project: String,
    /// `cpu`, `memory`, `gpu` or `vram_mb`.
    pub resource: &'static str,
    pub requested: f64,
    pub used: f64,
    pub limit: f64,
    /// The request alone is over the limit: it can never fit.
    pub never_fits: bool,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.resource {
            "cpu" => " cores",
            "memory" => " GiB",
            "vram_mb" => " MB",
            _ => "",
        };
        if self.never_fits {
            write!(
                f,
                "project {:?}: {} {}{unit} requested exceeds its quota of {}{unit}",
                self.project, self.resource, self.requested, self.limit
            )
        } else {
            write!(
                f,
                "project {:?}: {} {}{unit} requested, {}{unit} of {}{unit} in use",
                self.project, self.resource, self.requested, self.used, self.limit
            )
        }
    }
}

/// The answer to a check or an allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Allowed,
    Denied(Exceeded),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

/// Does `request` fit `limits` with `used` already in use? The one rule of
/// every backend: each limited resource must satisfy `used + request <=
/// limit`; an unlimited resource, no quota at all, or `enforce == false`
/// always fits.
pub fn decide(project: &str, limits: Option<&Limits>, used: Amounts, request: Amounts) -> Decision {
    let Some(limits) = limits else {
        return Decision::Allowed;
    };
    if !limits.enforce {
        return Decision::Allowed;
    }
    let checks = [
        ("cpu", limits.cpu_milli, used.cpu_milli, request.cpu_milli),
        (
            "memory",
            limits.memory_kib,
            used.memory_kib,
            request.memory_kib,
        ),
        ("gpu", limits.gpu, used.gpu, request.gpu),
        ("vram_mb", limits.vram_kib, used.vram_kib, request.vram_kib),
    ];
    for (resource, limit, used, requested) in checks {
        let Some(limit) = limit else { continue };
        if requested > 0 && used.saturating_add(requested) > limit {
            return Decision::Denied(Exceeded {
                project: project.to_owned(),
                resource,
                requested: to_api(resource, requested),
                used: to_api(resource, used),
                limit: to_api(resource, limit),
                never_fits: requested > limit,
            });
        }
    }
    Decision::Allowed
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seed 004's monitoring view of one project (`GET /quota/{project_id}`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuotaInfo {
    pub project_id: String,
    pub cpu_quota: Option<f64>,
    pub used_cpu: f64,
    pub available_cpu: Option<f64>,
    pub cpu_usage_percent: Option<f64>,
    pub memory_quota: Option<f64>,
    pub used_memory: f64,
    pub available_memory: Option<f64>,
    pub memory_usage_percent: Option<f64>,
    pub gpu_quota: Option<i64>,
    pub used_gpu: i64,
    pub available_gpu: Option<i64>,
    pub gpu_usage_percent: Option<f64>,
    pub vram_quota_mb: Option<f64>,
    pub used_vram_mb: f64,
    pub available_vram_mb: Option<f64>,
    pub vram_usage_percent: Option<f64>,
    pub enforce_quota: bool,
    pub provider: &'static str,
    /// When these figures were read from the backend (ms since the epoch).
    pub synced_at_ms: i64,
}

fn percent(used: i64, limit: Option<i64>) -> Option<f64> {
    limit.map(|l| {
        if l == 0 {
            if used == 0 {
                0.0
            } else {
                100.0
            }
        } else {
            used as f64 * 100.0 / l as f64
        }
    })
}

impl QuotaInfo {
    pub fn new(
        project: &str,
        provider: &'static str,
        limits: &Limits,
        used: Amounts,
        synced_at_ms: i64,
    ) -> Self {
        let avail = |limit: Option<i64>, used: i64| limit.map(|l| (l - used).max(0));
        QuotaInfo {
            project_id: project.to_owned(),
            cpu_quota: limits.cpu_milli.map(|v| to_api("cpu", v)),
            used_cpu: to_api("cpu", used.cpu_milli),
            available_cpu: avail(limits.cpu_milli, used.cpu_milli).map(|v| to_api("cpu", v)),
            cpu_usage_percent: percent(used.cpu_milli, limits.cpu_milli),
            memory_quota: limits.memory_kib.map(|v| to_api("memory", v)),
            used_memory: to_api("memory", used.memory_kib),
            available_memory: avail(limits.memory_kib, used.memory_kib)
                .map(|v| to_api("memory", v)),
            memory_usage_percent: percent(used.memory_kib, limits.memory_kib),
            gpu_quota: limits.gpu,
            used_gpu: used.gpu,
            available_gpu: avail(limits.gpu, used.gpu),
            gpu_usage_percent: percent(used.gpu, limits.gpu),
            vram_quota_mb: limits.vram_kib.map(|v| to_api("vram_mb", v)),
            used_vram_mb: to_api("vram_mb", used.vram_kib),
            available_vram_mb: avail(limits.vram_kib, used.vram_kib).map(|v| to_api("vram_mb", v)),
            vram_usage_percent: percent(used.vram_kib, limits.vram_kib),
            enforce_quota: limits.enforce,
            provider,
            synced_at_ms,
        }
    }
}

/// What a project uses, in total and per job type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageReport {
    pub project_id: String,
    pub provider: &'static str,
    pub cpu: f64,
    pub memory: f64,
    pub gpu: i64,
    pub vram_mb: f64,
    /// Held through this provider, per job type (only types with a use).
    pub by_job_type: BTreeMap<&'static str, UsageAmounts>,
    /// Slurm only: what running Slurm jobs of the account use.
    pub slurm_jobs: Option<UsageAmounts>,
    pub synced_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UsageAmounts {
    pub cpu: f64,
    pub memory: f64,
    pub gpu: i64,
    pub vram_mb: f64,
}

impl From<Amounts> for UsageAmounts {
    fn from(a: Amounts) -> Self {
        let r = a.resources();
        UsageAmounts {
            cpu: r.cpu,
            memory: r.memory,
            gpu: r.gpu,
            vram_mb: r.vram_mb,
        }
    }
}

impl UsageReport {
    fn new(
        project: &str,
        provider: &'static str,
        row: &Row,
        external: Option<Amounts>,
        synced_at_ms: i64,
    ) -> Self {
        let total = row.total_used().add(external.unwrap_or_default());
        let r = total.resources();
        UsageReport {
            project_id: project.to_owned(),
            provider,
            cpu: r.cpu,
            memory: r.memory,
            gpu: r.gpu,
            vram_mb: r.vram_mb,
            by_job_type: row
                .used
                .iter()
                .filter(|(_, a)| !a.is_zero())
                .map(|(t, a)| (t.as_str(), UsageAmounts::from(*a)))
                .collect(),
            slurm_jobs: external.map(UsageAmounts::from),
            synced_at_ms,
        }
    }
}

/// One quota backend; what the Python `LocalQuotaProvider` and
/// `SlurmQuotaProvider` call.
pub trait QuotaBackend: Send + Sync {
    /// `sqlite`, `postgresql` or `slurm` (`QuotaInfo.provider`).
    fn kind(&self) -> &'static str;
    /// Human-readable: the backend and where its data lives.
    fn describe(&self) -> String;
    fn get(&self, project: &str) -> Result<Option<QuotaInfo>>;
    fn set(&self, project: &str, patch: &QuotaPatch) -> Result<QuotaInfo>;
    fn check(&self, project: &str, job_type: JobType, request: &Resources) -> Result<Decision>;
    /// Check and record atomically: two concurrent calls never exceed a limit.
    fn allocate(&self, project: &str, job_type: JobType, request: &Resources) -> Result<Decision>;
    fn release(&self, project: &str, job_type: JobType, request: &Resources) -> Result<()>;
    fn usage(&self, project: &str) -> Result<UsageReport>;
    /// `allocate`, recorded under `holder` in the same transaction; a
    /// holder that already holds is allowed again without a second charge.
    fn allocate_held(
        &self,
        _holder: &str,
        _project: &str,
        _job_type: JobType,
        _request: &Resources,
    ) -> Result<Decision> {
        Err(holds_unsupported(self.kind()))
    }
    /// Releases what `holder` holds, if anything (true), in one
    /// transaction with forgetting the hold: a second call does nothing.
    fn release_held(&self, _holder: &str) -> Result<bool> {
        Err(holds_unsupported(self.kind()))
    }
    /// The holds whose holder starts with `prefix`.
    fn holds(&self, _prefix: &str) -> Result<Vec<Hold>> {
        Err(holds_unsupported(self.kind()))
    }
}

pub(crate) fn check_project(project: &str) -> Result<()> {
    if project.is_empty() || project.len() > 256 || project.chars().any(char::is_control) {
        return Err(QuotaError::InvalidInput {
            field: "project_id",
            value: format!("{project:?}"),
            reason: "must be 1-256 characters without control characters".to_owned(),
        });
    }
    Ok(())
}

/// A project's stored state as the SQL backends hold it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    /// `None` when no quota was ever set (unlimited).
    pub limits: Option<Limits>,
    pub used: BTreeMap<JobType, Amounts>,
}

impl Row {
    /// Assembles a row from `LOAD_LIMITS` (if a row exists) and `LOAD_USED`.
    pub fn from_parts(
        limits: Option<(bool, [Option<i64>; 4], bool)>,
        used: Vec<(String, Amounts)>,
    ) -> Result<Row> {
        let limits = limits.and_then(|(defined, [cpu, mem, gpu, vram], enforce)| {
            defined.then_some(Limits {
                cpu_milli: cpu,
                memory_kib: mem,
                gpu,
                vram_kib: vram,
                enforce,
            })
        });
        let mut by_type = BTreeMap::new();
        for (name, amounts) in used {
            let job_type = JobType::parse(&name).map_err(|_| QuotaError::Storage {
                backend: "quota",
                detail: format!("unknown job_type {name:?} in quota_usage"),
            })?;
            by_type.insert(job_type, amounts);
        }
        Ok(Row {
            limits,
            used: by_type,
        })
    }

    pub fn total_used(&self) -> Amounts {
        self.used
            .values()
            .fold(Amounts::default(), |acc, a| acc.add(*a))
    }
}

/// A transaction of a SQL backend: the project's row is locked (for the
/// writes) from the first `load` to the commit.
pub(crate) trait Txn {
    fn load(&mut self, project: &str) -> Result<Row>;
    fn save_limits(&mut self, project: &str, limits: &Limits, now_ms: i64) -> Result<()>;
    fn save_used(&mut self, project: &str, job_type: JobType, used: Amounts) -> Result<()>;
    /// The hold of `holder` (backends that record holders; others refuse).
    fn load_hold(&mut self, _holder: &str) -> Result<Option<Hold>> {
        Err(holds_unsupported("quota"))
    }
    fn save_hold(&mut self, _hold: &Hold) -> Result<()> {
        Err(holds_unsupported("quota"))
    }
    fn delete_hold(&mut self, _holder: &str) -> Result<()> {
        Err(holds_unsupported("quota"))
    }
    fn list_holds(&mut self, _prefix: &str) -> Result<Vec<Hold>> {
        Err(holds_unsupported("quota"))
    }
}

/// A SQL store: runs `f` in one transaction (`write`: locking the
/// project's row), retrying on lock timeouts or serialization failures.
pub(crate) trait SqlStore: Send + Sync {
    const KIND: &'static str;
    fn describe(&self) -> String;
    fn transact<T>(&self, write: bool, f: &mut dyn FnMut(&mut dyn Txn) -> Result<T>) -> Result<T>;
}

/// The limits and usage an allocation is decided against, from the
/// locked row (local backends) or from elsewhere (Slurm).
pub(crate) type View<'a> = dyn FnMut(&Row) -> Result<(Option<Limits>, Amounts)> + 'a;

pub(crate) fn allocate_in(
    tx: &mut dyn Txn,
    project: &str,
    job_type: JobType,
    request: Amounts,
    view: &mut View<'_>,
) -> Result<Decision> {
    let row = tx.load(project)?;
    let (limits, used) = view(&row)?;
    let decision = decide(project, limits.as_ref(), used, request);
    if decision.allowed() {
        let held = row.used.get(&job_type).copied().unwrap_or_default();
        tx.save_used(project, job_type, held.add(request))?;
    }
    Ok(decision)
}

pub(crate) fn release_in(
    tx: &mut dyn Txn,
    project: &str,
    job_type: JobType,
    request: Amounts,
) -> Result<()> {
    let row = tx.load(project)?;
    let held = row.used.get(&job_type).copied().unwrap_or_default();
    let left = held
        .sub(request)
        .map_err(|(resource, released, held)| QuotaError::OverRelease {
            project: project.to_owned(),
            job_type,
            resource,
            released,
            held,
        })?;
    tx.save_used(project, job_type, left)
}

fn local_view(row: &Row) -> Result<(Option<Limits>, Amounts)> {
    Ok((row.limits, row.total_used()))
}

impl<S: SqlStore> QuotaBackend for S {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn describe(&self) -> String {
        SqlStore::describe(self)
    }

    fn get(&self, project: &str) -> Result<Option<QuotaInfo>> {
        check_project(project)?;
        let row = self.transact(false, &mut |tx| tx.load(project))?;
        Ok(row
            .limits
            .map(|l| QuotaInfo::new(project, S::KIND, &l, row.total_used(), now_ms())))
    }

    fn set(&self, project: &str, patch: &QuotaPatch) -> Result<QuotaInfo> {
        check_project(project)?;
        self.transact(true, &mut |tx| {
            let row = tx.load(project)?;
            let limits = patch.apply(row.limits.unwrap_or_default())?;
            let now = now_ms();
            tx.save_limits(project, &limits, now)?;
            Ok(QuotaInfo::new(
                project,
                S::KIND,
                &limits,
                row.total_used(),
                now,
            ))
        })
    }

    fn check(&self, project: &str, _job_type: JobType, request: &Resources) -> Result<Decision> {
        check_project(project)?;
        let request = request.amounts()?;
        let row = self.transact(false, &mut |tx| tx.load(project))?;
        Ok(decide(
            project,
            row.limits.as_ref(),
            row.total_used(),
            request,
        ))
    }

    fn allocate(&self, project: &str, job_type: JobType, request: &Resources) -> Result<Decision> {
        check_project(project)?;
        let request = request.amounts()?;
        self.transact(true, &mut |tx| {
            allocate_in(tx, project, job_type, request, &mut local_view)
        })
    }

    fn release(&self, project: &str, job_type: JobType, request: &Resources) -> Result<()> {
        check_project(project)?;
        let request = request.amounts()?;
        self.transact(true, &mut |tx| release_in(tx, project, job_type, request))
    }

    fn allocate_held(
        &self,
        holder: &str,
        project: &str,
        job_type: JobType,
        request: &Resources,
    ) -> Result<Decision> {
        check_holder(holder)?;
        check_project(project)?;
        let request = request.amounts()?;
        self.transact(true, &mut |tx| {
            if tx.load_hold(holder)?.is_some() {
                return Ok(Decision::Allowed);
            }
            let decision = allocate_in(tx, project, job_type, request, &mut local_view)?;
            if decision.allowed() {
                tx.save_hold(&Hold {
                    holder: holder.to_owned(),
                    project: project.to_owned(),
                    job_type,
                    amounts: request,
                })?;
            }
            Ok(decision)
        })
    }

    fn release_held(&self, holder: &str) -> Result<bool> {
        check_holder(holder)?;
        self.transact(true, &mut |tx| {
            let Some(hold) = tx.load_hold(holder)? else {
                return Ok(false);
            };
            release_in(tx, &hold.project, hold.job_type, hold.amounts)?;
            tx.delete_hold(holder)?;
            Ok(true)
        })
    }

    fn holds(&self, prefix: &str) -> Result<Vec<Hold>> {
        self.transact(false, &mut |tx| tx.list_holds(prefix))
    }

    fn usage(&self, project: &str) -> Result<UsageReport> {
        check_project(project)?;
        let row = self.transact(false, &mut |tx| tx.load(project))?;
        Ok(UsageReport::new(project, S::KIND, &row, None, now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: i64) -> Amounts {
        Amounts {
            gpu: n,
            ..Amounts::default()
        }
    }

    #[test]
    fn decide_names_the_first_resource_over_its_limit() {
        let limits = Limits {
            gpu: Some(2),
            ..Limits::default()
        };
        assert!(decide("p", Some(&limits), gpus(1), gpus(1)).allowed());
        let Decision::Denied(why) = decide("p", Some(&limits), gpus(2), gpus(1)) else {
            panic!("over the limit was allowed");
        };
        assert_eq!((why.resource, why.never_fits), ("gpu", false));
        assert_eq!(
            why.to_string(),
            "project \"p\": gpu 1 requested, 2 of 2 in use"
        );
        let Decision::Denied(why) = decide("p", Some(&limits), gpus(0), gpus(3)) else {
            panic!("3 of 2 was allowed");
        };
        assert!(why.never_fits);
    }

    #[test]
    fn no_quota_or_not_enforced_always_fits() {
        assert!(decide("p", None, gpus(100), gpus(100)).allowed());
        let off = Limits {
            gpu: Some(0),
            enforce: false,
            ..Limits::default()
        };
        assert!(decide("p", Some(&off), gpus(0), gpus(5)).allowed());
    }

    #[test]
    fn resources_are_validated_and_exact() {
        let r = Resources {
            cpu: 0.1,
            memory: 0.5,
            gpu: 1,
            vram_mb: 1.5,
        };
        let a = r.amounts().unwrap();
        assert_eq!(
            (a.cpu_milli, a.memory_kib, a.gpu, a.vram_kib),
            (100, 524_288, 1, 1536)
        );
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            let err = Resources {
                cpu: bad,
                ..Resources::default()
            }
            .amounts()
            .unwrap_err();
            assert!(err.to_string().starts_with("cpu must be"), "{err}");
        }
        assert!(Resources {
            gpu: -1,
            ..Resources::default()
        }
        .amounts()
        .is_err());
    }

    #[test]
    fn what_the_unit_cannot_count_is_refused_not_rounded() {
        // Issue 24 #13: 0.0004 cores rounded to 0 millicores, so 10,000 of
        // them fit a 0.001-core quota and used_cpu stayed 0.
        for (r, field) in [
            (
                Resources {
                    cpu: 0.0004,
                    ..Resources::default()
                },
                "cpu",
            ),
            (
                Resources {
                    cpu: 1.0015,
                    ..Resources::default()
                },
                "cpu",
            ),
            (
                Resources {
                    memory: 1e-7,
                    ..Resources::default()
                },
                "memory",
            ),
            (
                Resources {
                    vram_mb: 0.0001,
                    ..Resources::default()
                },
                "vram_mb",
            ),
        ] {
            let err = r.amounts().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{field} must be a whole number")),
                "{err}"
            );
        }
        let err = Resources {
            cpu: 0.0004,
            ..Resources::default()
        }
        .amounts()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("0.001 core") && err.contains("got 0.0004"),
            "{err}"
        );
        // Float noise is not a fraction of a unit.
        for cpu in [0.1, 0.7, 1.1, 2.3, 0.001, 123.456] {
            let a = Resources {
                cpu,
                ..Resources::default()
            }
            .amounts()
            .unwrap();
            assert_eq!(a.cpu_milli, (cpu * 1000.0).round() as i64, "{cpu}");
        }
        let limit = QuotaPatch {
            cpu_quota: Patch::Set(0.0005),
            ..QuotaPatch::default()
        };
        assert!(limit
            .apply(Limits::default())
            .unwrap_err()
            .to_string()
            .starts_with("cpu_quota must be a whole number"));
    }

    #[test]
    fn patch_keeps_clears_and_sets() {
        let start = Limits {
            cpu_milli: Some(1000),
            gpu: Some(1),
            ..Limits::default()
        };
        let patch = QuotaPatch {
            cpu_quota: Patch::Clear,
            memory_quota: Patch::Set(2.0),
            enforce_quota: Some(false),
            ..QuotaPatch::default()
        };
        let out = patch.apply(start).unwrap();
        assert_eq!(out.cpu_milli, None);
        assert_eq!(out.memory_kib, Some(2 * 1024 * 1024));
        assert_eq!(out.gpu, Some(1));
        assert!(!out.enforce);
        let bad = QuotaPatch {
            gpu_quota: Patch::Set(-2),
            ..QuotaPatch::default()
        };
        assert!(bad.apply(start).is_err());
    }

    #[test]
    fn job_types_round_trip() {
        for t in JobType::ALL {
            assert_eq!(JobType::parse(t.as_str()), Ok(t));
        }
        assert!(JobType::parse("TRAINING").is_err());
    }

    #[test]
    fn info_reports_available_and_percent() {
        let limits = Limits {
            cpu_milli: Some(100_000),
            ..Limits::default()
        };
        let used = Amounts {
            cpu_milli: 75_000,
            ..Amounts::default()
        };
        let info = QuotaInfo::new("p", "sqlite", &limits, used, 0);
        assert_eq!(info.cpu_quota, Some(100.0));
        assert_eq!(info.used_cpu, 75.0);
        assert_eq!(info.available_cpu, Some(25.0));
        assert_eq!(info.cpu_usage_percent, Some(75.0));
        assert_eq!(info.gpu_quota, None);
        assert_eq!(info.gpu_usage_percent, None);
    }
}

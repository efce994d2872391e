//! The core's one error type. The binding maps it to Python exceptions in
//! one place (`src/py/errors.rs`): bad input to `TypeError`/`ValueError`
//! subclasses naming the field and the value, I/O to `OSError`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A value out of range or malformed: names the field and the value.
    InvalidValue { field: String, message: String },
    /// A value of the wrong kind.
    InvalidType { field: String, message: String },
    /// Reading or writing a file failed.
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A database (SQLite, PostgreSQL) refused or failed.
    Database { target: String, message: String },
    /// A need that no amount of waiting can satisfy on this machine.
    NeverFits { plugin: String, reason: String },
    /// A policy written in another language failed.
    Policy { policy: String, message: String },
    /// A quota operation failed (the caller's input, or the backend).
    Quota(crate::quota::QuotaError),
    /// A job operation failed (unknown job, invalid transition, journal).
    Job(crate::jobs::JobError),
    /// A shared ledger file cannot be used (names the path).
    Shared(crate::reserve::shared::SharedError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn value(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidValue {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn kind(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidType {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub fn db(target: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Database {
            target: target.into(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidValue { field, message } | Self::InvalidType { field, message } => {
                write!(f, "{field}: {message}")
            }
            Self::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Self::Database { target, message } => write!(f, "{target}: {message}"),
            Self::NeverFits { plugin, reason } => {
                write!(f, "{plugin} can never fit on this machine: {reason}")
            }
            Self::Policy { policy, message } => write!(f, "policy {policy} failed: {message}"),
            Self::Quota(e) => e.fmt(f),
            Self::Job(e) => e.fmt(f),
            Self::Shared(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::quota::QuotaError> for Error {
    fn from(e: crate::quota::QuotaError) -> Self {
        Self::Quota(e)
    }
}

impl From<crate::jobs::JobError> for Error {
    fn from(e: crate::jobs::JobError) -> Self {
        Self::Job(e)
    }
}

impl From<crate::reserve::shared::SharedError> for Error {
    fn from(e: crate::reserve::shared::SharedError) -> Self {
        Self::Shared(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::db("sqlite", e)
    }
}

/// `value` checked finite and within `[min, max]`.
pub fn finite_in(field: &str, value: f64, min: f64, max: f64) -> Result<f64> {
    if value.is_finite() && value >= min && value <= max {
        Ok(value)
    } else {
        Err(Error::value(
            field,
            format!("must be a number between {min} and {max}, got {value}"),
        ))
    }
}

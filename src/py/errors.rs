//! Python exceptions for bad input. Each subclasses the built-in the
//! reference raises in the same situation, so `except TypeError:` written
//! against cjm-plugin-system keeps working, and each names the field.

use pyo3::create_exception;
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use plugin_scheduling_core::check::{CompareError, Resource};

create_exception!(
    plugin_scheduling,
    InvalidRequirement,
    PyTypeError,
    "A resource requirement and a stat that cannot be compared (e.g. the string '4096' against a number)."
);
create_exception!(
    plugin_scheduling,
    InvalidManifest,
    PyAttributeError,
    "plugin_meta.manifest, or its 'resources' entry, is not a mapping."
);
create_exception!(
    plugin_scheduling,
    SimulatedOutOfMemory,
    pyo3::exceptions::PyRuntimeError,
    "A SimulatedSystem refused to occupy more memory than is free (as a real allocation would fail)."
);
create_exception!(
    plugin_scheduling,
    ReservationTimeout,
    pyo3::exceptions::PyTimeoutError,
    "A lease could not reserve what the plugin needs within the scheduler's timeout."
);
create_exception!(
    plugin_scheduling,
    InvalidStats,
    PyAttributeError,
    "The stats provider returned something that is not a mapping."
);

/// Longest `repr` quoted whole in a message; longer ones (e.g. `10**400`)
/// keep their start and end.
const MAX_REPR_CHARS: usize = 80;

/// Short `repr (type)` of a value for messages.
pub fn describe(value: &Bound<'_, PyAny>) -> String {
    let repr = value
        .repr()
        .map(|r| shorten(&r.to_string()))
        .unwrap_or_else(|_| "<unrepresentable>".to_owned());
    let type_name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    format!("{repr} ({type_name})")
}

/// Maps a failed comparison: a `TypeError` (what the reference raises for
/// e.g. `'4096' > 4096`) becomes [`InvalidRequirement`] naming both fields,
/// chained to the original; any other exception passes through unchanged.
pub fn compare_error(py: Python<'_>, error: CompareError<Bound<'_, PyAny>, PyErr>) -> PyErr {
    if !error.source.is_instance_of::<PyTypeError>(py) {
        return error.source;
    }
    let resource: Resource = error.resource;
    let message = format!(
        "cannot compare manifest['resources'][{:?}] = {} with stats[{:?}] = {}: {}",
        resource.requirement_key(),
        describe(&error.needed),
        resource.stats_key(),
        describe(&error.available),
        error.source.value(py),
    );
    let mapped = InvalidRequirement::new_err(message);
    mapped.set_cause(py, Some(error.source));
    mapped
}

fn shorten(repr: &str) -> String {
    let count = repr.chars().count();
    if count <= MAX_REPR_CHARS {
        return repr.to_owned();
    }
    let head: String = repr.chars().take(40).collect();
    let tail: String = repr.chars().skip(count - 20).collect();
    format!("{head}…{tail} [{count} chars]")
}

fn is_str(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<pyo3::types::PyString>()
        || value.is_instance_of::<pyo3::types::PyBytes>()
}

/// A number argument (an int, a float, or anything with `__float__`; not a
/// string) as `f64`. `TypeError` for a non-number and `ValueError` for an
/// int too large for a float, both naming `field` and the value (never the
/// bare `OverflowError` a plain conversion raises). Range checks (NaN,
/// negative, …) are the caller's.
pub fn number(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    float_of(field, value, "a number")
}

fn float_of(field: &str, value: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    let py = value.py();
    let is_number = value.is_instance_of::<pyo3::types::PyInt>()
        || value.is_instance_of::<pyo3::types::PyFloat>()
        || value.hasattr(pyo3::intern!(py, "__float__"))?;
    if is_str(value) || !is_number {
        return Err(PyTypeError::new_err(format!(
            "{field} must be {what}, got {}",
            describe(value)
        )));
    }
    value.extract::<f64>().map_err(|error| {
        if error.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) {
            let mapped = PyValueError::new_err(format!(
                "{field} is too large (beyond a float), got {}",
                describe(value)
            ));
            mapped.set_cause(py, Some(error));
            mapped
        } else {
            error
        }
    })
}

/// An integer argument (an int or anything with `__index__`; not a float
/// or a string): `Ok(None)` when it is beyond `i128` (the caller's range
/// check then names field and value), `TypeError` naming `field` for a
/// non-integer.
pub fn integer(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Option<i128>> {
    let py = value.py();
    let is_int = value.is_instance_of::<pyo3::types::PyInt>()
        || value.hasattr(pyo3::intern!(py, "__index__"))?;
    if is_str(value) || !is_int {
        return Err(PyTypeError::new_err(format!(
            "{field} must be an integer, got {}",
            describe(value)
        )));
    }
    match value.extract::<i128>() {
        Ok(v) => Ok(Some(v)),
        Err(error) if error.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) => Ok(None),
        Err(error) => Err(error),
    }
}

/// An integer argument within `min..=max`, as `T`: `ValueError` naming
/// `field`, the range and the value otherwise (`TypeError` for a
/// non-integer). E.g. `int_in("pid", value, 0u32, u32::MAX)`.
pub fn int_in<T>(field: &str, value: &Bound<'_, PyAny>, min: T, max: T) -> PyResult<T>
where
    T: TryFrom<i128> + Copy + PartialOrd + std::fmt::Display,
{
    integer(field, value)?
        .and_then(|v| T::try_from(v).ok())
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{field} must be an integer from {min} to {max}, got {}",
                describe(value)
            ))
        })
}

/// A scheduler setting (`timeout`, `poll_interval`) as seconds: a real
/// number, not NaN, not negative; `allow_infinite` for `timeout`.
pub fn seconds(field: &str, value: &Bound<'_, PyAny>, allow_infinite: bool) -> PyResult<f64> {
    let secs = float_of(field, value, "a number of seconds")?;
    if secs.is_nan() || secs < 0.0 || (!allow_infinite && secs.is_infinite()) {
        let allowed = if allow_infinite {
            "a non-negative number or inf"
        } else {
            "a finite non-negative number"
        };
        return Err(PyValueError::new_err(format!(
            "{field} must be {allowed}, got {}",
            describe(value)
        )));
    }
    Ok(secs)
}

/// The one mapping of the core's error to Python exceptions: bad input to
/// `ValueError`/`TypeError`, files and databases to `OSError`, a need that
/// can never fit to [`ReservationTimeout`], a failed outside policy to
/// `RuntimeError`; quota input mistakes to [`InvalidQuota`] (a
/// `ValueError`), quota backend failures to [`QuotaBackendError`].
pub fn core_error(error: plugin_scheduling_core::error::Error) -> PyErr {
    use plugin_scheduling_core::error::Error;
    let message = error.to_string();
    match error {
        Error::InvalidValue { .. } => PyValueError::new_err(message),
        Error::InvalidType { .. } => PyTypeError::new_err(message),
        Error::Io { source, .. } => {
            pyo3::exceptions::PyOSError::new_err((source.raw_os_error().unwrap_or(0), message))
        }
        Error::Database { .. } => pyo3::exceptions::PyOSError::new_err(message),
        Error::NeverFits { .. } => ReservationTimeout::new_err(message),
        Error::Policy { .. } => pyo3::exceptions::PyRuntimeError::new_err(message),
        Error::Shared(plugin_scheduling_core::reserve::shared::SharedError::Mode { .. }) => {
            PyValueError::new_err(message)
        }
        Error::Shared(_) => SharedLedgerError::new_err(message),
        Error::Job(j) => {
            use plugin_scheduling_core::jobs::JobError as J;
            match j {
                J::Unknown { .. } => UnknownJob::new_err(message),
                J::Transition { .. } => InvalidTransition::new_err(message),
                J::Invalid { .. } => PyValueError::new_err(message),
                J::Journal { .. } => JournalError::new_err(message),
            }
        }
        Error::Quota(q) => {
            use plugin_scheduling_core::quota::QuotaError as E;
            match q {
                E::InvalidInput { .. } | E::Unsupported { .. } | E::OverRelease { .. } => {
                    InvalidQuota::new_err(message)
                }
                E::SchemaVersion { .. }
                | E::Locked { .. }
                | E::Storage { .. }
                | E::Slurm { .. } => QuotaBackendError::new_err(message),
            }
        }
    }
}

/// `?` on a core result in the binding: `core(result)?`.
pub fn core<T>(result: plugin_scheduling_core::error::Result<T>) -> PyResult<T> {
    result.map_err(core_error)
}

/// A value outside what a control-plane field allows (`ValueError` naming
/// the field and the value).
pub fn field_error(
    field: &str,
    error: &plugin_scheduling_core::control_plane::FieldError,
    value: &Bound<'_, PyAny>,
) -> PyErr {
    PyValueError::new_err(format!(
        "{field} must be {}, got {}",
        error.expected,
        describe(value)
    ))
}
create_exception!(
    plugin_scheduling,
    InvalidQuota,
    PyValueError,
    "A quota argument out of range or unsupported by the backend (names the field), or a release of more than is held."
);
create_exception!(
    plugin_scheduling,
    QuotaBackendError,
    pyo3::exceptions::PyRuntimeError,
    "The quota backend failed: the database could not be read or written, or a Slurm command failed."
);

/// A quota failure through the one mapping ([`core_error`]).
pub fn quota_error(error: plugin_scheduling_core::quota::QuotaError) -> PyErr {
    core_error(error.into())
}

/// [`seconds`] (finite) as a `Duration`: `ValueError` naming `field` and the
/// value when it is too large for one.
pub fn duration(field: &str, value: &Bound<'_, PyAny>) -> PyResult<std::time::Duration> {
    let secs = seconds(field, value, false)?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!("{field} is too large: {} seconds", describe(value)))
    })
}
create_exception!(
    plugin_scheduling,
    InvalidTransition,
    PyValueError,
    "A job operation that its state does not allow (names the job, its state and the call)."
);
create_exception!(
    plugin_scheduling,
    UnknownJob,
    pyo3::exceptions::PyKeyError,
    "No job has that id."
);
create_exception!(
    plugin_scheduling,
    JournalError,
    pyo3::exceptions::PyOSError,
    "The job journal (SQLite) could not be opened, read or written."
);

/// A job failure through the one mapping ([`core_error`]).
pub fn job_error(error: plugin_scheduling_core::jobs::JobError) -> PyErr {
    core_error(error.into())
}

create_exception!(
    plugin_scheduling,
    SharedLedgerError,
    pyo3::exceptions::PyRuntimeError,
    "A shared ledger file cannot be used: corrupt, of a newer layout, owned by another user or pid namespace, or unreadable (names the path)."
);

/// A shared-ledger failure through the one mapping ([`core_error`]).
pub fn shared_error(error: plugin_scheduling_core::reserve::shared::SharedError) -> PyErr {
    core_error(error.into())
}

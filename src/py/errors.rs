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

/// Short `repr (type)` of a value for messages.
pub fn describe(value: &Bound<'_, PyAny>) -> String {
    let repr = value
        .repr()
        .map(|r| r.to_string())
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

/// A scheduler setting (`timeout`, `poll_interval`) as seconds: a real
/// number, not NaN, not negative; `allow_infinite` for `timeout`.
pub fn seconds(field: &str, value: &Bound<'_, PyAny>, allow_infinite: bool) -> PyResult<f64> {
    let is_number = value.is_instance_of::<pyo3::types::PyInt>()
        || value.is_instance_of::<pyo3::types::PyFloat>()
        || value.hasattr(pyo3::intern!(value.py(), "__float__"))?;
    if value.is_instance_of::<pyo3::types::PyString>() || !is_number {
        return Err(PyTypeError::new_err(format!(
            "{field} must be a number of seconds, got {}",
            describe(value)
        )));
    }
    let secs: f64 = value.extract()?;
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

/// Maps the core's error: bad input to `ValueError`/`TypeError` (the
/// message names the field and the value), I/O to `OSError`
/// (`FileNotFoundError` for a missing file), the rest to `RuntimeError`.
pub fn core_error(error: plugin_scheduling_core::error::Error) -> PyErr {
    use plugin_scheduling_core::error::Error;
    let message = error.to_string();
    match error {
        Error::InvalidValue { .. } | Error::NeverFits { .. } => PyValueError::new_err(message),
        Error::InvalidType { .. } => PyTypeError::new_err(message),
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            pyo3::exceptions::PyFileNotFoundError::new_err(message)
        }
        Error::Io { .. } => pyo3::exceptions::PyOSError::new_err(message),
        Error::Database { .. } | Error::Policy { .. } => {
            pyo3::exceptions::PyRuntimeError::new_err(message)
        }
    }
}

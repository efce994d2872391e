//! Reading `plugin_meta.manifest['resources']` and the stats mapping into the
//! core's types, the way the reference reads them (`hasattr`, `.get` with the
//! same defaults, Python truthiness), and running the check.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use super::errors::{self, describe, InvalidManifest, InvalidStats};
use crate::core::amount::{Amount, Num};
use crate::core::check::{self, Availability, Decision, MissingGpuStats, Requirements};
use crate::core::messages;

/// A Python value used as an amount of MB. Plain ints, floats and bools
/// compare in Rust; anything else (big ints, Decimal, strings, None, user
/// types) is compared by Python's own `>`, so every decision and every
/// exception is the one the reference would produce.
pub struct PyAmount<'py> {
    /// `None`: the field was absent and the reference's default `0` applies
    /// (kept as a Rust number so the hot path allocates nothing).
    value: Option<Bound<'py, PyAny>>,
    num: Option<Num>,
}

impl<'py> PyAmount<'py> {
    pub fn new(value: Bound<'py, PyAny>) -> Self {
        let num = as_num(&value);
        Self {
            value: Some(value),
            num,
        }
    }

    fn default_zero() -> Self {
        Self {
            value: None,
            num: Some(Num::Int(0)),
        }
    }

    /// The value as a Python object (materialising the default `0`).
    pub fn into_value(self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self.value {
            Some(value) => value,
            None => 0_i32
                .into_pyobject(py)
                .map(Bound::into_any)
                .unwrap_or_else(|never| match never {}),
        }
    }
}

fn as_num(value: &Bound<'_, PyAny>) -> Option<Num> {
    // Exact types only: a subclass may override `__gt__`.
    if value.is_exact_instance_of::<PyInt>() {
        value.extract::<i64>().ok().map(Num::Int)
    } else if value.is_exact_instance_of::<PyFloat>() {
        value.extract::<f64>().ok().map(Num::Float)
    } else if value.is_exact_instance_of::<PyBool>() {
        Some(Num::Int(i64::from(value.is_truthy().ok()?)))
    } else {
        None
    }
}

impl Amount for PyAmount<'_> {
    type Error = PyErr;

    fn exceeds(&self, other: &Self) -> PyResult<bool> {
        match (self.num, other.num) {
            (Some(a), Some(b)) => Ok(a.exceeds(&b).unwrap_or_else(|never| match never {})),
            // Only values that are not plain numbers reach this arm, and
            // those always carry their object.
            _ => match (&self.value, &other.value) {
                (Some(a), Some(b)) => a.gt(b),
                _ => Ok(false),
            },
        }
    }
}

/// Which object a `.get` is called on, for the error when it is no mapping.
#[derive(Clone, Copy)]
enum Source {
    Manifest,
    Resources,
    Stats,
}

/// Marks "absent" in `.get(key, ABSENT)` on mappings that are not dicts,
/// where a stored `None` must stay distinguishable from a missing key.
static ABSENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `mapping.get(key)`, `None` (Rust) when the key is absent; a stored
/// Python `None` is returned as such. Fast path for exact dicts.
fn get<'py>(
    mapping: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
    source: Source,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = mapping.py();
    if let Ok(dict) = mapping.cast_exact::<PyDict>() {
        return dict.get_item(key);
    }
    let method = match mapping.getattr(intern!(py, "get")) {
        Ok(method) => method,
        Err(err) if err.is_instance_of::<PyAttributeError>(py) => {
            return Err(not_a_mapping(mapping, source, err));
        }
        Err(err) => return Err(err),
    };
    let absent = ABSENT.get_or_try_init(py, || {
        py.import(intern!(py, "builtins"))?
            .getattr(intern!(py, "object"))?
            .call0()
            .map(Bound::unbind)
    })?;
    let found = method.call1((key, absent))?;
    Ok((!found.is(absent)).then_some(found))
}

/// A requirement, `0` when absent (`reqs.get(key, 0)`).
fn requirement<'py>(
    resources: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<PyAmount<'py>> {
    Ok(get(resources, key, Source::Resources)?.map_or_else(PyAmount::default_zero, PyAmount::new))
}

/// A stats figure: `stats.get(key)`, absent and `None` alike.
fn stat<'py>(
    stats: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<PyAmount<'py>>> {
    Ok(get(stats, key, Source::Stats)?
        .filter(|value| !value.is_none())
        .map(PyAmount::new))
}

/// Python truthiness, without a call for the common exact values.
fn truthy(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        return Ok(!dict.is_empty());
    }
    if let Ok(flag) = value.cast_exact::<PyBool>() {
        return Ok(flag.is_true());
    }
    value.is_truthy()
}

fn not_a_mapping(value: &Bound<'_, PyAny>, source: Source, cause: PyErr) -> PyErr {
    let py = value.py();
    let err = match source {
        Source::Manifest => InvalidManifest::new_err(format!(
            "plugin_meta.manifest must be a mapping, got {}",
            describe(value)
        )),
        Source::Resources => InvalidManifest::new_err(format!(
            "plugin_meta.manifest['resources'] must be a mapping, got {}",
            describe(value)
        )),
        Source::Stats => InvalidStats::new_err(format!(
            "stats must be a mapping (e.g. a SystemStats dict), got {}",
            describe(value)
        )),
    };
    err.set_cause(py, Some(cause));
    err
}

/// `plugin_meta.manifest.get('resources', {})` when the plugin has a
/// manifest and that entry is truthy; `None` means "no requirements".
fn resources_of<'py>(plugin_meta: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = plugin_meta.py();
    let manifest = match plugin_meta.getattr(intern!(py, "manifest")) {
        Ok(manifest) => manifest,
        // `hasattr` swallows AttributeError only; so do we.
        Err(err) if err.is_instance_of::<PyAttributeError>(py) => return Ok(None),
        Err(err) => return Err(err),
    };
    match get(&manifest, intern!(py, "resources"), Source::Manifest)? {
        Some(resources) if truthy(&resources)? => Ok(Some(resources)),
        _ => Ok(None),
    }
}

/// Runs the seed's check for `plugin_meta` against `stats`.
pub fn decide<'py>(
    plugin_meta: &Bound<'py, PyAny>,
    stats: &Bound<'py, PyAny>,
    missing_gpu: MissingGpuStats,
) -> PyResult<Decision<PyAmount<'py>>> {
    let py = plugin_meta.py();
    let Some(resources) = resources_of(plugin_meta)? else {
        return Ok(Decision::Allowed);
    };
    let requires_gpu = match get(&resources, intern!(py, "requires_gpu"), Source::Resources)? {
        Some(flag) => truthy(&flag)?,
        None => false,
    };
    let mut gpu_vram_mb = None;
    let mut gpu_free_memory_mb = None;
    if requires_gpu {
        gpu_vram_mb = Some(requirement(&resources, intern!(py, "min_gpu_vram_mb"))?);
        gpu_free_memory_mb = stat(stats, intern!(py, "gpu_free_memory_mb"))?;
    }
    let requirements = Requirements {
        gpu_vram_mb,
        system_ram_mb: requirement(&resources, intern!(py, "min_system_ram_mb"))?,
    };
    let availability = Availability {
        gpu_free_memory_mb,
        memory_available_mb: stat(stats, intern!(py, "memory_available_mb"))?,
    };
    check::check(requirements, availability, missing_gpu).map_err(|e| {
        errors::compare_error(
            py,
            check::CompareError {
                resource: e.resource,
                needed: e.needed.into_value(py),
                available: e.available.into_value(py),
                source: e.source,
            },
        )
    })
}

/// Python's `format(value)`, which is what the reference's f-strings show.
pub fn format_value(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = value.py();
    let builtins = py.import(intern!(py, "builtins"))?;
    builtins
        .getattr(intern!(py, "format"))?
        .call1((value,))?
        .extract::<String>()
}

/// `print(line)` through Python, so `sys.stdout` redirection captures it.
fn print(py: Python<'_>, line: &str) -> PyResult<()> {
    py.import(intern!(py, "builtins"))?
        .getattr(intern!(py, "print"))?
        .call1((line,))?;
    Ok(())
}

/// The `SafetyScheduler` check: decides and prints the seed's lines.
pub fn safety_check(plugin_meta: &Bound<'_, PyAny>, stats: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = plugin_meta.py();
    match decide(plugin_meta, stats, MissingGpuStats::AllowWithWarning)? {
        Decision::Allowed => Ok(true),
        Decision::AllowedWithoutGpuStats => {
            print(py, messages::NO_GPU_STATS)?;
            Ok(true)
        }
        Decision::Blocked {
            resource,
            needed,
            available,
        } => {
            let name = format_value(&plugin_meta.getattr(intern!(py, "name"))?)?;
            let line = messages::blocked(
                &name,
                resource,
                &format_value(&needed.into_value(py))?,
                &format_value(&available.into_value(py))?,
            );
            print(py, &line)?;
            Ok(false)
        }
    }
}

/// The `QueueScheduler` check: silent, skips whichever figure is missing.
pub fn queue_check(plugin_meta: &Bound<'_, PyAny>, stats: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(decide(plugin_meta, stats, MissingGpuStats::SkipFigure)?.admits())
}

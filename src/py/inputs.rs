//! Reading `plugin_meta.manifest['resources']` and the stats mapping into the
//! core's types, the way the reference reads them (`hasattr`, `.get` with the
//! same defaults, Python truthiness), and running the check.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
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
    pub value: Bound<'py, PyAny>,
    num: Option<Num>,
}

impl<'py> PyAmount<'py> {
    pub fn new(value: Bound<'py, PyAny>) -> Self {
        let num = as_num(&value);
        Self { value, num }
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
            _ => self.value.gt(&other.value),
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

/// `mapping.get(key, default)` (Python's `None` when `default` is `None`),
/// with a fast path for exact dicts.
fn get<'py>(
    mapping: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
    default: Option<&Bound<'py, PyAny>>,
    source: Source,
) -> PyResult<Bound<'py, PyAny>> {
    let py = mapping.py();
    if let Ok(dict) = mapping.cast_exact::<PyDict>() {
        return Ok(match (dict.get_item(key)?, default) {
            (Some(found), _) => found,
            (None, Some(default)) => default.clone(),
            (None, None) => py.None().into_bound(py),
        });
    }
    let method = match mapping.getattr(intern!(py, "get")) {
        Ok(method) => method,
        Err(err) if err.is_instance_of::<PyAttributeError>(py) => {
            return Err(not_a_mapping(mapping, source, err));
        }
        Err(err) => return Err(err),
    };
    match default {
        Some(default) => method.call1((key, default)),
        None => method.call1((key,)),
    }
}

/// A stats figure: `stats.get(key)`, absent and `None` alike.
fn stat<'py>(
    stats: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<PyAmount<'py>>> {
    let value = get(stats, key, None, Source::Stats)?;
    Ok((!value.is_none()).then(|| PyAmount::new(value)))
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
    let resources = get(&manifest, intern!(py, "resources"), None, Source::Manifest)?;
    Ok(resources.is_truthy()?.then_some(resources))
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
    let zero = 0_i32.into_pyobject(py)?.into_any();
    let no = PyBool::new(py, false).to_owned().into_any();
    let requires_gpu = get(
        &resources,
        intern!(py, "requires_gpu"),
        Some(&no),
        Source::Resources,
    )?
    .is_truthy()?;

    let mut gpu_vram_mb = None;
    let mut gpu_free_memory_mb = None;
    if requires_gpu {
        let needed = get(
            &resources,
            intern!(py, "min_gpu_vram_mb"),
            Some(&zero),
            Source::Resources,
        )?;
        gpu_vram_mb = Some(PyAmount::new(needed));
        gpu_free_memory_mb = stat(stats, intern!(py, "gpu_free_memory_mb"))?;
    }
    let needed_ram = get(
        &resources,
        intern!(py, "min_system_ram_mb"),
        Some(&zero),
        Source::Resources,
    )?;
    let requirements = Requirements {
        gpu_vram_mb,
        system_ram_mb: PyAmount::new(needed_ram),
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
                needed: e.needed.value,
                available: e.available.value,
                source: e.source,
            },
        )
    })
}

/// Python's `format(value)`, which is what the reference's f-strings show.
pub fn format_value(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = value.py();
    let builtins = py.import(intern!(py, "builtins"))?;
    Ok(builtins
        .getattr(intern!(py, "format"))?
        .call1((value,))?
        .extract::<String>()?)
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
                &format_value(&needed.value)?,
                &format_value(&available.value)?,
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

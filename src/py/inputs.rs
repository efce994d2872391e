//! Reading `plugin_meta.manifest['resources']` and the stats mapping into the
//! core's types, the way the reference reads them (`hasattr`, `.get` with the
//! same defaults, Python truthiness), and running the check.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use super::errors::{self, describe, InvalidManifest, InvalidStats};
use plugin_scheduling_core::amount::{Amount, Num};
use plugin_scheduling_core::check::{self, CheckError, Decision, MissingGpuStats};
use plugin_scheduling_core::messages;

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
            None => Self::zero(py),
        }
    }

    fn object(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.value {
            Some(value) => value.clone(),
            None => Self::zero(py),
        }
    }

    fn zero(py: Python<'py>) -> Bound<'py, PyAny> {
        0_i32
            .into_pyobject(py)
            .map(Bound::into_any)
            .unwrap_or_else(|never| match never {})
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
            // At least one side is not a plain number, so it carries its
            // object (and its `py`); the default `0` is materialised.
            _ => match self.value.as_ref().or(other.value.as_ref()) {
                Some(any) => {
                    let py = any.py();
                    self.object(py).gt(other.object(py))
                }
                None => Ok(false),
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

/// The reference's default for a `.get(key, default)`.
#[derive(Clone, Copy)]
enum GetDefault {
    /// `.get(key)`
    Nothing,
    /// `.get('resources', {})`
    EmptyDict,
    /// `.get('requires_gpu', False)`
    False,
    /// `.get('min_..._mb', 0)`
    Zero,
}

/// `mapping.get(key, default)` exactly as the reference calls it; `None`
/// (Rust) when an exact dict lacks the key, so the default costs nothing on
/// the hot path. Other mappings get the real call with the real default.
fn get<'py>(
    mapping: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
    default: GetDefault,
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
    let found = match default {
        GetDefault::Nothing => method.call1((key,))?,
        GetDefault::EmptyDict => method.call1((key, PyDict::new(py)))?,
        GetDefault::False => method.call1((key, false))?,
        GetDefault::Zero => method.call1((key, 0))?,
    };
    Ok(Some(found))
}

/// A requirement, `0` when absent (`reqs.get(key, 0)`).
fn requirement<'py>(
    resources: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<PyAmount<'py>> {
    Ok(get(resources, key, GetDefault::Zero, Source::Resources)?
        .map_or_else(PyAmount::default_zero, PyAmount::new))
}

/// A stats figure: `stats.get(key)`, absent and `None` alike.
fn stat<'py>(
    stats: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<PyAmount<'py>>> {
    Ok(get(stats, key, GetDefault::Nothing, Source::Stats)?
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
    match get(
        &manifest,
        intern!(py, "resources"),
        GetDefault::EmptyDict,
        Source::Manifest,
    )? {
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
    let requires_gpu = match get(
        &resources,
        intern!(py, "requires_gpu"),
        GetDefault::False,
        Source::Resources,
    )? {
        Some(flag) => truthy(&flag)?,
        None => false,
    };
    // Each pair is read (needed, then available) only when the reference
    // would read it, so custom mappings see the same calls.
    let gpu = requires_gpu.then_some(|| {
        Ok((
            requirement(&resources, intern!(py, "min_gpu_vram_mb"))?,
            stat(stats, intern!(py, "gpu_free_memory_mb"))?,
        ))
    });
    let ram = || {
        Ok((
            requirement(&resources, intern!(py, "min_system_ram_mb"))?,
            stat(stats, intern!(py, "memory_available_mb"))?,
        ))
    };
    check::check_lazily(gpu, ram, missing_gpu).map_err(|e| match e {
        CheckError::Read(err) => err,
        CheckError::Compare(e) => errors::compare_error(
            py,
            check::CompareError {
                resource: e.resource,
                needed: e.needed.into_value(py),
                available: e.available.into_value(py),
                source: e.source,
            },
        ),
    })
}

/// A core message with Python values in it, formatted as the reference's
/// f-strings format them: `template` is the core's line built with `{0}`,
/// `{1}`, … in place of the values (the core's lines have no braces of
/// their own), and Python's `str.format` fills them in (`format(value)`
/// each, like an f-string). The values never become Rust text, so a name
/// holding a lone surrogate gets into the line just as it does in the
/// reference's, instead of raising `UnicodeEncodeError`.
pub fn py_line<'py, A>(py: Python<'py>, template: &str, values: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    PyString::new(py, template).call_method1(intern!(py, "format"), values)
}

/// A plugin name that the core keeps as text (reservations, ledgers,
/// peaks): a `str` of valid Unicode. A `str` holding a lone surrogate
/// (e.g. from `os.fsdecode` of a non-UTF-8 file name) cannot be stored or
/// shared as UTF-8, so it is refused with a `ValueError` naming `field`,
/// the name and the surrogate's position, never an unexplained
/// `UnicodeEncodeError`; anything but a `str` is a `TypeError`.
pub fn plugin_name(field: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = value.cast::<PyString>() else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{field} must be a str, got {}",
            describe(value)
        )));
    };
    if let Ok(s) = text.to_str() {
        return Ok(s.to_owned());
    }
    let (index, unit) = lone_surrogate(text).unwrap_or((0, 0));
    Err(pyo3::exceptions::PyValueError::new_err(format!(
        "{field} must be valid Unicode text, got {} (a lone surrogate U+{unit:04X} at index {index}, \
         as os.fsdecode makes of a file name that is not UTF-8); name the plugin with text only",
        describe(value)
    )))
}

/// A `plugin_name` argument, read by [`plugin_name`] (a lone surrogate
/// is a `ValueError` naming the argument, not a `UnicodeEncodeError`).
pub struct PluginName(String);

impl std::ops::Deref for PluginName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PluginName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for PluginName {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        plugin_name("plugin_name", &obj).map(Self)
    }
}

/// The index and code of the first lone surrogate in `text`, if any.
fn lone_surrogate(text: &Bound<'_, PyString>) -> Option<(usize, u32)> {
    let py = text.py();
    let raw = text
        .call_method1(intern!(py, "encode"), ("utf-32-le", "surrogatepass"))
        .ok()?;
    let bytes = raw.cast::<pyo3::types::PyBytes>().ok()?.as_bytes();
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .enumerate()
        .find(|(_, u)| (0xD800..=0xDFFF).contains(u))
}

/// `print(line)` through Python, so `sys.stdout` redirection captures it.
fn print<'py>(py: Python<'py>, line: impl IntoPyObject<'py>) -> PyResult<()> {
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
            let line = py_line(
                py,
                &messages::blocked("{0}", resource, "{1}", "{2}"),
                (
                    plugin_meta.getattr(intern!(py, "name"))?,
                    needed.into_value(py),
                    available.into_value(py),
                ),
            )?;
            print(py, line)?;
            Ok(false)
        }
    }
}

/// The `QueueScheduler` check: silent, skips whichever figure is missing.
pub fn queue_check(plugin_meta: &Bound<'_, PyAny>, stats: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(decide(plugin_meta, stats, MissingGpuStats::SkipFigure)?.admits())
}

//! Reading what `ReservationScheduler` needs from Python objects: a plugin's
//! declared need and scheduling attributes from its manifest, the machine
//! from a stats mapping (per device when `details['gpus']` is there), and
//! GPU processes for peaks. Every bad value raises an exception naming the
//! field; every exception raised while reading (by an iterator, a mapping's
//! `get`) reaches the caller unchanged.

use std::collections::BTreeSet;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use super::errors::{describe, InvalidManifest, InvalidStats};
use plugin_scheduling_core::policy::{priority_from_name, JobInfo, DEFAULT_PRIORITY};
use plugin_scheduling_core::reserve::ledger::{DeviceReading, Need, Reading, CPU_CORES, RAM_MB};

/// A non-negative finite number of MB (or units) from a field.
pub fn mb(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    number(field, value, "a number of MB")
}

fn number(field: &str, value: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    if value.is_instance_of::<PyString>() || value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be {what}, got {}",
            describe(value)
        )));
    }
    let v: f64 = value.extract().map_err(|_| {
        PyTypeError::new_err(format!("{field} must be {what}, got {}", describe(value)))
    })?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "{field} must be a finite number >= 0, got {}",
            describe(value)
        )));
    }
    Ok(v)
}

fn get_item<'py>(map: &Bound<'py, PyAny>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    // A plain dict is read directly (what its `get` would do); anything
    // else, a dict subclass included, through its own `get`.
    let found = match map.cast_exact::<pyo3::types::PyDict>() {
        Ok(dict) => match dict.get_item(key)? {
            Some(v) => v,
            None => return Ok(None),
        },
        Err(_) => map.call_method1(intern!(map.py(), "get"), (key,))?,
    };
    Ok((!found.is_none()).then_some(found))
}

fn is_mapping(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    if v.is_exact_instance_of::<pyo3::types::PyDict>() {
        return Ok(true);
    }
    v.hasattr(intern!(v.py(), "get"))
}

/// The plugin's name and declared need from `plugin_meta`.
pub fn declared_need(plugin_meta: &Bound<'_, PyAny>) -> PyResult<(String, Need)> {
    let py = plugin_meta.py();
    let name_obj = plugin_meta.getattr(intern!(py, "name"))?;
    let name = super::inputs::plugin_name("plugin_meta.name", &name_obj)?;
    let mut need = Need::default();
    let Some(resources) = manifest_section(plugin_meta, "resources")? else {
        return Ok((name, need));
    };
    let requires_gpu = match get_item(&resources, "requires_gpu")? {
        Some(flag) => flag.is_truthy()?,
        None => false,
    };
    if requires_gpu {
        need.gpu_count = match get_item(&resources, "gpu_count")? {
            None => 1,
            Some(count) => gpu_count("manifest['resources']['gpu_count']", &count)?,
        };
        if let Some(v) = get_item(&resources, "min_gpu_vram_mb")? {
            need.vram_mb = mb("manifest['resources']['min_gpu_vram_mb']", &v)?;
        }
    }
    if let Some(v) = get_item(&resources, "min_system_ram_mb")? {
        need.set_pool(
            RAM_MB,
            mb("manifest['resources']['min_system_ram_mb']", &v)?,
        );
    }
    if let Some(v) = get_item(&resources, "cpu_cores")? {
        need.set_pool(
            CPU_CORES,
            number(
                "manifest['resources']['cpu_cores']",
                &v,
                "a number of cores",
            )?,
        );
    }
    if let Some(pools) = get_item(&resources, "pools")? {
        if !is_mapping(&pools)? {
            return Err(InvalidManifest::new_err(format!(
                "manifest['resources']['pools'] must be a mapping of pool name to amount, got {}",
                describe(&pools)
            )));
        }
        let items = pools.call_method0(intern!(py, "items"))?;
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let pool: String = key.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "manifest['resources']['pools'] keys must be str, got {}",
                    describe(&key)
                ))
            })?;
            let field = format!("manifest['resources']['pools'][{pool:?}]");
            need.set_pool(&pool, number(&field, &value, "a number")?);
        }
    }
    Ok((name, need))
}

/// A GPU count: an int >= 1 that fits the ledger.
pub fn gpu_count(field: &str, count: &Bound<'_, PyAny>) -> PyResult<u32> {
    if !count.is_instance_of::<PyInt>() || count.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be an int, got {}",
            describe(count)
        )));
    }
    let n: i128 = count.extract().unwrap_or(i128::MAX);
    if n < 1 {
        return Err(PyValueError::new_err(format!(
            "{field} must be >= 1, got {}",
            describe(count)
        )));
    }
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= 65_536)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{field} must be at most 65536, got {}",
                describe(count)
            ))
        })
}

fn manifest_section<'py>(
    plugin_meta: &Bound<'py, PyAny>,
    key: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = plugin_meta.py();
    let manifest = match plugin_meta.getattr(intern!(py, "manifest")) {
        Ok(m) => m,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !is_mapping(&manifest)? {
        return Err(InvalidManifest::new_err(format!(
            "plugin_meta.manifest must be a mapping, got {}",
            describe(&manifest)
        )));
    }
    let Some(section) = get_item(&manifest, key)? else {
        return Ok(None);
    };
    if !is_mapping(&section)? {
        return Err(InvalidManifest::new_err(format!(
            "plugin_meta.manifest['{key}'] must be a mapping, got {}",
            describe(&section)
        )));
    }
    Ok(Some(section))
}

/// A priority: an int/float 0–100 or a name (CRITICAL=100, HIGH=75,
/// NORMAL=50, LOW=25, BACKGROUND=0); an enum member is read by its name.
pub fn priority(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let py = value.py();
    let name: Option<String> = if value.is_instance_of::<PyString>() {
        Some(value.extract()?)
    } else if !value.is_instance_of::<PyInt>()
        && !value.is_instance_of::<PyFloat>()
        && value.hasattr(intern!(py, "name"))?
    {
        value.getattr(intern!(py, "name"))?.extract().ok()
    } else {
        None
    };
    if let Some(name) = name {
        return priority_from_name(&name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{field} must be 0–100 or one of CRITICAL, HIGH, NORMAL, LOW, BACKGROUND, got {}",
                describe(value)
            ))
        });
    }
    if value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be a number 0–100 or a priority name, got {}",
            describe(value)
        )));
    }
    let v: f64 = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a number 0–100 or a priority name, got {}",
            describe(value)
        ))
    })?;
    if !(0.0..=100.0).contains(&v) {
        return Err(PyValueError::new_err(format!(
            "{field} must be between 0 and 100, got {}",
            describe(value)
        )));
    }
    Ok(v)
}

fn text(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Arc<str>> {
    let s: String = value
        .str()
        .map_err(|_| {
            PyTypeError::new_err(format!("{field} must be a str, got {}", describe(value)))
        })?
        .extract()?;
    Ok(Arc::from(s.as_str()))
}

/// Keyword overrides of the manifest's scheduling attributes.
#[derive(Default)]
pub struct JobOverrides<'py> {
    pub priority: Option<Bound<'py, PyAny>>,
    pub user: Option<Bound<'py, PyAny>>,
    pub project: Option<Bound<'py, PyAny>>,
    pub deadline_s: Option<Bound<'py, PyAny>>,
    pub estimated_duration_s: Option<Bound<'py, PyAny>>,
}

/// The job attributes of a plugin (`manifest["scheduling"]`, overridden by
/// keywords): priority, user, project, deadline (seconds from `now`),
/// estimated duration. `submitted` is `now`.
pub fn job_info<'py>(
    plugin_meta: &Bound<'py, PyAny>,
    plugin: &str,
    need: &Need,
    now: f64,
    overrides: &JobOverrides<'py>,
) -> PyResult<JobInfo> {
    let section = manifest_section(plugin_meta, "scheduling")?;
    type Picked<'py> = PyResult<Option<(String, Bound<'py, PyAny>)>>;
    let pick = |key: &str, over: &Option<Bound<'py, PyAny>>| -> Picked<'py> {
        if let Some(v) = over.as_ref().filter(|v| !v.is_none()) {
            return Ok(Some((key.to_owned(), v.clone())));
        }
        match &section {
            Some(s) => {
                Ok(get_item(s, key)?.map(|v| (format!("manifest['scheduling']['{key}']"), v)))
            }
            None => Ok(None),
        }
    };
    let mut job = JobInfo::new(0, plugin, now);
    job.size = f64::from(need.gpu_count.max(1));
    job.priority = match pick("priority", &overrides.priority)? {
        Some((f, v)) => priority(&f, &v)?,
        None => DEFAULT_PRIORITY,
    };
    if let Some((f, v)) = pick("user", &overrides.user)? {
        job.user = Some(text(&f, &v)?);
    }
    if let Some((f, v)) = pick("project", &overrides.project)? {
        job.project = Some(text(&f, &v)?);
    }
    if let Some((f, v)) = pick("deadline_s", &overrides.deadline_s)? {
        job.deadline = Some(now + number(&f, &v, "a number of seconds")?);
    }
    if let Some((f, v)) = pick("estimated_duration_s", &overrides.estimated_duration_s)? {
        job.estimated_duration = Some(number(&f, &v, "a number of seconds")?);
    }
    Ok(job)
}

fn stat(stats: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<f64>> {
    match get_item(stats, key)? {
        None => Ok(None),
        Some(v) => mb(&format!("stats[{key:?}]"), &v).map(Some),
    }
}

fn gpus_of<'py>(stats: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    match get_item(stats, "details")? {
        Some(details) if is_mapping(&details)? => get_item(&details, "gpus"),
        _ => Ok(None),
    }
}

/// This host's CPU count, read once (the call reads cgroup files).
fn host_cores() -> Option<f64> {
    static CORES: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as f64)
    })
}

/// The machine as the stats show it: per device from `details['gpus']`
/// when present, else the summed cjm figures as one device; RAM as the
/// `ram_mb` pool, CPU cores (capacity only, this host's count unless the
/// stats give `details['cpu_cores']`), and `details['pools']`
/// (`{name: {"total": x, "available": y}}`).
pub fn reading(stats: &Bound<'_, PyAny>) -> PyResult<Reading> {
    if !is_mapping(stats)? {
        return Err(InvalidStats::new_err(format!(
            "stats must be a mapping (e.g. a SystemStats dict), got {}",
            describe(stats)
        )));
    }
    let mut devices = Vec::new();
    if let Some(gpus) = gpus_of(stats)? {
        let iter = gpus.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "stats['details']['gpus'] must be a list of device mappings, got {}",
                describe(&gpus)
            ))
        })?;
        let mut seen = BTreeSet::new();
        for (position, gpu) in iter.enumerate() {
            // An error from the iterator is raised, never skipped (a
            // skipped error asks for the next item, forever if it repeats).
            let gpu = gpu?;
            let field = |name: &str| format!("stats['details']['gpus'][{position}][{name:?}]");
            if !is_mapping(&gpu)? {
                return Err(PyTypeError::new_err(format!(
                    "stats['details']['gpus'][{position}] must be a mapping, got {}",
                    describe(&gpu)
                )));
            }
            let index = match get_item(&gpu, "index")? {
                Some(i) if i.is_instance_of::<PyInt>() && !i.is_instance_of::<PyBool>() => {
                    i.extract::<u32>().map_err(|_| {
                        PyValueError::new_err(format!(
                            "{} must be an int between 0 and {}, got {}",
                            field("index"),
                            u32::MAX,
                            describe(&i)
                        ))
                    })?
                }
                Some(i) => {
                    return Err(PyTypeError::new_err(format!(
                        "{} must be an int >= 0, got {}",
                        field("index"),
                        describe(&i)
                    )))
                }
                None => u32::try_from(position).unwrap_or(u32::MAX),
            };
            if !seen.insert(index) {
                return Err(InvalidStats::new_err(format!(
                    "{}: device index {index} appears more than once in stats['details']['gpus']",
                    field("index")
                )));
            }
            let free = match get_item(&gpu, "memory_free_mb")? {
                Some(v) => mb(&field("memory_free_mb"), &v)?,
                None => continue,
            };
            let total = match get_item(&gpu, "memory_total_mb")? {
                Some(v) => mb(&field("memory_total_mb"), &v)?,
                // Unknown total: only the live check applies.
                None => f64::INFINITY,
            };
            devices.push(DeviceReading {
                index,
                total_mb: total,
                free_mb: free,
            });
        }
    }
    if devices.is_empty() {
        let total = stat(stats, "gpu_total_memory_mb")?;
        if let Some(free) = stat(stats, "gpu_free_memory_mb")? {
            // A total of 0 is a device with no capacity (nothing fits), not
            // an unknown total; an absent total leaves the live check.
            devices.push(DeviceReading {
                index: 0,
                total_mb: total.unwrap_or(f64::INFINITY),
                free_mb: free,
            });
        }
    }
    let mut r = Reading {
        devices,
        pools: Vec::new(),
    };
    r.set_pool(
        RAM_MB,
        stat(stats, "memory_total_mb")?,
        stat(stats, "memory_available_mb")?,
    );
    let details = get_item(stats, "details")?.filter(|d| is_mapping(d).unwrap_or(false));
    let cores = match details
        .as_ref()
        .map(|d| get_item(d, "cpu_cores"))
        .transpose()?
        .flatten()
    {
        Some(v) => Some(number(
            "stats['details']['cpu_cores']",
            &v,
            "a number of cores",
        )?),
        None => host_cores(),
    };
    r.set_pool(CPU_CORES, cores, None);
    if let Some(pools) = details
        .as_ref()
        .map(|d| get_item(d, "pools"))
        .transpose()?
        .flatten()
    {
        if !is_mapping(&pools)? {
            return Err(InvalidStats::new_err(format!(
                "stats['details']['pools'] must be a mapping of name to {{'total', 'available'}}, got {}",
                describe(&pools)
            )));
        }
        let items = pools.call_method0(intern!(stats.py(), "items"))?;
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let name: String = key.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "stats['details']['pools'] keys must be str, got {}",
                    describe(&key)
                ))
            })?;
            if !is_mapping(&value)? {
                return Err(InvalidStats::new_err(format!(
                    "stats['details']['pools'][{name:?}] must be a mapping with 'total' and/or 'available', got {}",
                    describe(&value)
                )));
            }
            let field = |k: &str| format!("stats['details']['pools'][{name:?}][{k:?}]");
            let total = get_item(&value, "total")?
                .map(|v| number(&field("total"), &v, "a number"))
                .transpose()?;
            let available = get_item(&value, "available")?
                .map(|v| number(&field("available"), &v, "a number"))
                .transpose()?;
            r.set_pool(&name, total, available);
        }
    }
    Ok(r)
}

/// `(pid, used_gpu_mb)` of each GPU process in `details['gpus'][*]['processes']`
/// (as `SystemMonitor` reports them). Entries that are not mappings or
/// lack a readable pid/used figure are skipped; an exception raised while
/// iterating or reading reaches the caller.
pub fn gpu_processes(stats: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f64)>> {
    let mut out = Vec::new();
    if !is_mapping(stats)? {
        return Ok(out);
    }
    let Some(gpus) = gpus_of(stats)? else {
        return Ok(out);
    };
    let Ok(gpus) = gpus.try_iter() else {
        return Ok(out);
    };
    for gpu in gpus {
        let gpu = gpu?;
        if !is_mapping(&gpu)? {
            continue;
        }
        let Some(processes) = get_item(&gpu, "processes")? else {
            continue;
        };
        let Ok(processes) = processes.try_iter() else {
            continue;
        };
        for process in processes {
            let process = process?;
            if !is_mapping(&process)? {
                continue;
            }
            let pid = get_item(&process, "pid")?.and_then(|p| p.extract::<u32>().ok());
            let used = get_item(&process, "used_gpu_mb")?.and_then(|u| u.extract::<f64>().ok());
            if let (Some(pid), Some(used)) = (pid, used) {
                if used.is_finite() && used >= 0.0 {
                    out.push((pid, used));
                }
            }
        }
    }
    Ok(out)
}

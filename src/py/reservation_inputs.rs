//! Reading what `ReservationScheduler` needs from Python objects: a plugin's
//! declared need from its manifest, the machine from a stats mapping (per
//! device when `details['gpus']` is there), and GPU processes for peaks.
//! Every bad value raises an exception naming the field.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;

use super::errors::{describe, InvalidManifest, InvalidStats};
use plugin_scheduling_core::reserve::ledger::{DeviceReading, Need, Reading, Refusal};

/// A non-negative finite number of MB from a manifest field.
pub fn mb(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be a number of MB, got {}",
            describe(value)
        )));
    }
    let v: f64 = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a number of MB, got {}",
            describe(value)
        ))
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
    let found = map.call_method1(intern!(map.py(), "get"), (key,))?;
    Ok((!found.is_none()).then_some(found))
}

/// The plugin's name and declared need from `plugin_meta`.
pub fn declared_need(plugin_meta: &Bound<'_, PyAny>) -> PyResult<(String, Need)> {
    let py = plugin_meta.py();
    let name_obj = plugin_meta.getattr(intern!(py, "name"))?;
    let name: String = name_obj.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "plugin_meta.name must be a str, got {}",
            describe(&name_obj)
        ))
    })?;
    let mut need = Need {
        gpu_count: 0,
        vram_mb: 0.0,
        ram_mb: 0.0,
    };
    let manifest = match plugin_meta.getattr(intern!(py, "manifest")) {
        Ok(m) => m,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
            return Ok((name, need))
        }
        Err(e) => return Err(e),
    };
    if !manifest.hasattr(intern!(py, "get"))? {
        return Err(InvalidManifest::new_err(format!(
            "plugin_meta.manifest must be a mapping, got {}",
            describe(&manifest)
        )));
    }
    let Some(resources) = get_item(&manifest, "resources")? else {
        return Ok((name, need));
    };
    if !resources.hasattr(intern!(py, "get"))? {
        return Err(InvalidManifest::new_err(format!(
            "plugin_meta.manifest['resources'] must be a mapping, got {}",
            describe(&resources)
        )));
    }
    let requires_gpu = match get_item(&resources, "requires_gpu")? {
        Some(flag) => flag.is_truthy()?,
        None => false,
    };
    if requires_gpu {
        need.gpu_count = match get_item(&resources, "gpu_count")? {
            None => 1,
            Some(count) => {
                let n: i64 = count.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "manifest['resources']['gpu_count'] must be an int, got {}",
                        describe(&count)
                    ))
                })?;
                u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "manifest['resources']['gpu_count'] must be >= 1, got {n}"
                    ))
                })?
            }
        };
        if let Some(v) = get_item(&resources, "min_gpu_vram_mb")? {
            need.vram_mb = mb("manifest['resources']['min_gpu_vram_mb']", &v)?;
        }
    }
    if let Some(v) = get_item(&resources, "min_system_ram_mb")? {
        need.ram_mb = mb("manifest['resources']['min_system_ram_mb']", &v)?;
    }
    Ok((name, need))
}

fn stat(stats: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<f64>> {
    match get_item(stats, key)? {
        None => Ok(None),
        Some(v) => mb(&format!("stats[{key:?}]"), &v).map(Some),
    }
}

/// The machine as the stats show it: per device from `details['gpus']`
/// when present, else the summed cjm figures as one device.
pub fn reading(stats: &Bound<'_, PyAny>) -> PyResult<Reading> {
    let py = stats.py();
    if !stats.hasattr(intern!(py, "get"))? {
        return Err(InvalidStats::new_err(format!(
            "stats must be a mapping (e.g. a SystemStats dict), got {}",
            describe(stats)
        )));
    }
    let mut devices = Vec::new();
    let gpus = match get_item(stats, "details")? {
        Some(details) if details.hasattr(intern!(py, "get"))? => get_item(&details, "gpus")?,
        _ => None,
    };
    if let Some(gpus) = gpus {
        let not_a_list = |_| {
            PyTypeError::new_err(format!(
                "stats['details']['gpus'] must be a list of device mappings, got {}",
                describe(&gpus)
            ))
        };
        for (position, gpu) in gpus.try_iter().map_err(not_a_list)?.enumerate() {
            let gpu = gpu?;
            let field = |name: &str| format!("stats['details']['gpus'][{position}][{name:?}]");
            if !gpu.hasattr(intern!(py, "get"))? {
                return Err(PyTypeError::new_err(format!(
                    "stats['details']['gpus'][{position}] must be a mapping, got {}",
                    describe(&gpu)
                )));
            }
            let index = match get_item(&gpu, "index")? {
                Some(i) => i.extract::<u32>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "{} must be an int >= 0, got {}",
                        field("index"),
                        describe(&i)
                    ))
                })?,
                None => position as u32,
            };
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
            // A total of 0 is how some monitors say "no GPU".
            if total.is_none_or(|t| t > 0.0) {
                devices.push(DeviceReading {
                    index: 0,
                    total_mb: total.unwrap_or(f64::INFINITY),
                    free_mb: free,
                });
            }
        }
    }
    Ok(Reading {
        devices,
        ram_total_mb: stat(stats, "memory_total_mb")?,
        ram_available_mb: stat(stats, "memory_available_mb")?,
    })
}

/// `(pid, used_gpu_mb)` of each GPU process in `details['gpus'][*]['processes']`
/// (as `SystemMonitor` reports them); entries it cannot read are skipped.
pub fn gpu_processes(stats: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f64)>> {
    let py = stats.py();
    let mut out = Vec::new();
    let Some(details) = get_item(stats, "details")? else {
        return Ok(out);
    };
    if !details.hasattr(intern!(py, "get"))? {
        return Ok(out);
    }
    let Some(gpus) = get_item(&details, "gpus")? else {
        return Ok(out);
    };
    let Ok(gpus) = gpus.try_iter() else {
        return Ok(out);
    };
    for gpu in gpus.flatten() {
        if !gpu.hasattr(intern!(py, "get"))? {
            continue;
        }
        let Some(processes) = get_item(&gpu, "processes")? else {
            continue;
        };
        let Ok(processes) = processes.try_iter() else {
            continue;
        };
        for process in processes.flatten() {
            if !process.hasattr(intern!(py, "get"))? {
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

pub fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::NotEnoughDevices { needed, present } => {
            format!("needs {needed} GPUs, the machine shows {present}")
        }
        Refusal::Vram {
            device,
            needed_mb,
            available_mb,
            holders,
        } => format!(
            "GPU {device}: needs {needed_mb} MB VRAM, {available_mb} MB available{}",
            if holders.is_empty() {
                String::new()
            } else {
                format!(" (held by {})", holders.join(", "))
            }
        ),
        Refusal::Ram {
            needed_mb,
            available_mb,
            holders,
        } => format!(
            "RAM: needs {needed_mb} MB, {available_mb} MB available{}",
            if holders.is_empty() {
                String::new()
            } else {
                format!(" (held by {})", holders.join(", "))
            }
        ),
    }
}

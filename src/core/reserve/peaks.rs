//! Measured peaks per plugin, so later grants reserve what a plugin really
//! uses: `max(declared, observed peak × margin)`. Persisted as a small JSON
//! file written atomically (temporary file + rename), so concurrent
//! processes never read a torn file; the last writer wins per plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub vram_mb: Option<f64>,
    pub ram_mb: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Peaks {
    by_plugin: BTreeMap<String, Peak>,
    path: Option<PathBuf>,
}

fn valid(field: &str, value: Option<f64>) -> Result<Option<f64>, String> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            Err(format!("{field} must be a finite number >= 0, got {v}"))
        }
        other => Ok(other),
    }
}

impl Peaks {
    /// In memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Backed by `path`; an existing file is loaded (an unreadable or
    /// corrupt one is reported and replaced on the next write).
    pub fn at(path: PathBuf) -> (Self, Option<String>) {
        let mut peaks = Self {
            by_plugin: BTreeMap::new(),
            path: Some(path.clone()),
        };
        let problem = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<BTreeMap<String, Peak>>(&text) {
                Ok(map) => {
                    peaks.by_plugin = map;
                    None
                }
                Err(e) => Some(format!(
                    "ignoring corrupt peaks file {}: {e}",
                    path.display()
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot read peaks file {}: {e}", path.display())),
        };
        (peaks, problem)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, plugin: &str) -> Peak {
        self.by_plugin.get(plugin).copied().unwrap_or_default()
    }

    pub fn all(&self) -> &BTreeMap<String, Peak> {
        &self.by_plugin
    }

    /// Keeps the larger of the stored and the new figures; saves if backed.
    pub fn record(
        &mut self,
        plugin: &str,
        vram_mb: Option<f64>,
        ram_mb: Option<f64>,
    ) -> Result<Peak, String> {
        let vram_mb = valid("vram_mb", vram_mb)?;
        let ram_mb = valid("ram_mb", ram_mb)?;
        let entry = self.by_plugin.entry(plugin.to_owned()).or_default();
        let max = |old: Option<f64>, new: Option<f64>| match (old, new) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        entry.vram_mb = max(entry.vram_mb, vram_mb);
        entry.ram_mb = max(entry.ram_mb, ram_mb);
        let peak = *entry;
        self.save()?;
        Ok(peak)
    }

    fn save(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&self.by_plugin).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
    }
}

/// `max(declared, peak × margin)`.
pub fn effective(declared: f64, peak: Option<f64>, margin: f64) -> f64 {
    peak.map_or(declared, |p| declared.max(p * margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_max_and_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("ps-peaks-{}", std::process::id()));
        let path = dir.join("peaks.json");
        let (mut peaks, problem) = Peaks::at(path.clone());
        assert_eq!(problem, None);
        assert!(peaks.record("whisper", Some(5_000.0), None).is_ok());
        assert!(peaks.record("whisper", Some(4_000.0), Some(900.0)).is_ok());
        let (reloaded, _) = Peaks::at(path);
        assert_eq!(
            reloaded.get("whisper"),
            Peak {
                vram_mb: Some(5_000.0),
                ram_mb: Some(900.0)
            }
        );
        assert!(peaks.record("x", Some(-1.0), None).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_files_are_reported_not_fatal() {
        let dir = std::env::temp_dir().join(format!("ps-peaks-bad-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("peaks.json");
        let _ = std::fs::write(&path, "{not json");
        let (peaks, problem) = Peaks::at(path);
        assert!(problem.is_some_and(|p| p.contains("corrupt")));
        assert_eq!(peaks.get("any"), Peak::default());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn effective_need_uses_the_peak_with_margin() {
        assert_eq!(effective(4_000.0, None, 1.2), 4_000.0);
        assert_eq!(effective(4_000.0, Some(5_000.0), 1.2), 6_000.0);
        assert_eq!(effective(8_000.0, Some(5_000.0), 1.2), 8_000.0);
    }
}

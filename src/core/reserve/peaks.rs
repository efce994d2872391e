//! Measured peaks per plugin, so later grants reserve what a plugin really
//! uses: `max(declared, observed peak × margin)`. Persisted as a small JSON
//! file written atomically (temporary file + rename) and merged under a file
//! lock (max per plugin), so concurrent processes never read a torn file nor
//! lose each other's peaks. Saves are batched (at most one per second).
//!
//! The temporary file has one name, `<path>.tmp` (0600, created afresh, so
//! no link there is followed), used only under the lock: a process killed
//! between write and rename leaves it for the next save to replace, and
//! the per-process `<stem>.tmp.<pid>` files older versions left behind are
//! removed by the next save (under the lock no one is writing them).

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
    /// Recorded since the last successful save.
    dirty: bool,
    /// Clock seconds of the last save attempt.
    last_attempt: Option<f64>,
    /// The last save failure reported, so it is logged once, then on change.
    reported: Option<String>,
}

fn valid(field: &str, value: Option<f64>) -> Result<Option<f64>, String> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            Err(format!("{field} must be a finite number >= 0, got {v}"))
        }
        other => Ok(other),
    }
}

fn max_of(old: Option<f64>, new: Option<f64>) -> Option<f64> {
    match (old, new) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn merge_into(into: &mut BTreeMap<String, Peak>, from: &BTreeMap<String, Peak>) -> bool {
    let mut changed = false;
    for (plugin, peak) in from {
        let entry = into.entry(plugin.clone()).or_default();
        let merged = Peak {
            vram_mb: max_of(entry.vram_mb, peak.vram_mb),
            ram_mb: max_of(entry.ram_mb, peak.ram_mb),
        };
        changed |= merged != *entry;
        *entry = merged;
    }
    changed
}

fn load(path: &Path) -> Result<BTreeMap<String, Peak>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<BTreeMap<String, Peak>>(&text)
            .map_err(|e| format!("ignoring corrupt peaks file {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read peaks file {}: {e}", path.display())),
    }
}

/// Seconds between two saves of new peaks (writes are batched).
pub const SAVE_INTERVAL_S: f64 = 1.0;

impl Peaks {
    /// In memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Backed by `path`; an existing file is loaded (an unreadable or
    /// corrupt one is reported and replaced on the next write).
    pub fn at(path: PathBuf) -> (Self, Option<String>) {
        let (by_plugin, problem) = match load(&path) {
            Ok(map) => (map, None),
            Err(problem) => (BTreeMap::new(), Some(problem)),
        };
        let peaks = Self {
            by_plugin,
            path: Some(path),
            ..Self::default()
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

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Keeps the larger of the stored and the new figures (in memory; a
    /// backed book is saved by [`Peaks::flush`]).
    pub fn record(
        &mut self,
        plugin: &str,
        vram_mb: Option<f64>,
        ram_mb: Option<f64>,
    ) -> Result<Peak, String> {
        let vram_mb = valid("vram_mb", vram_mb)?;
        let ram_mb = valid("ram_mb", ram_mb)?;
        let entry = self.by_plugin.entry(plugin.to_owned()).or_default();
        let merged = Peak {
            vram_mb: max_of(entry.vram_mb, vram_mb),
            ram_mb: max_of(entry.ram_mb, ram_mb),
        };
        if merged != *entry {
            *entry = merged;
            self.dirty = self.path.is_some();
        }
        Ok(merged)
    }

    /// Saves new peaks if there are any and `force` or the last attempt was
    /// `SAVE_INTERVAL_S` ago. The file is merged, not overwritten: under an
    /// exclusive lock on `<path>.lock`, what other processes saved is read,
    /// the maximum per plugin kept (here too), and the result written to a
    /// temporary file renamed over the old one. A failure keeps the peaks
    /// dirty (retried later) and is returned once, then again only when the
    /// message changes.
    pub fn flush(&mut self, now: f64, force: bool) -> Option<String> {
        if !self.dirty {
            return None;
        }
        if !force && self.last_attempt.is_some_and(|t| now - t < SAVE_INTERVAL_S) {
            return None;
        }
        self.last_attempt = Some(now);
        match self.save() {
            Ok(()) => {
                self.dirty = false;
                self.reported = None;
                None
            }
            Err(problem) => {
                if self.reported.as_deref() == Some(problem.as_str()) {
                    None
                } else {
                    self.reported = Some(problem.clone());
                    Some(problem)
                }
            }
        }
    }

    fn save(&mut self) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let lock_path = path.with_extension("json.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        // Others' peaks first (a corrupt file is replaced).
        if let Ok(theirs) = load(&path) {
            merge_into(&mut self.by_plugin, &theirs);
        }
        let text = serde_json::to_string_pretty(&self.by_plugin).map_err(|e| e.to_string())?;
        sweep_stale_temporaries(&path);
        let tmp = temporary(&path);
        let written = write_new(&tmp, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, &path)
                    .map_err(|e| format!("cannot replace {}: {e}", path.display()))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        // The lock is released when `lock` is dropped.
        drop(lock);
        written
    }
}

/// The one temporary file of `path` (`peaks.json` → `peaks.json.tmp`).
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to a new 0600 file at `path`, replacing whatever is
/// there (a file or a link, which is removed, never followed).
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes `<stem>.tmp.<pid>` files next to `path`: what older versions
/// wrote before renaming, left behind when killed in between. Called under
/// the lock, when no writer is between its write and its rename.
fn sweep_stale_temporaries(path: &Path) {
    let (Some(stem), Some(dir)) = (path.file_stem(), path.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = stem.to_owned();
    prefix.push(".tmp.");
    let prefix = prefix.as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        let stale = bytes
            .strip_prefix(prefix.as_slice())
            .is_some_and(|pid| !pid.is_empty() && pid.iter().all(u8::is_ascii_digit));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
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
        assert!(peaks.is_dirty());
        assert_eq!(peaks.flush(0.0, true), None);
        assert!(!peaks.is_dirty());
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
    fn writers_merge_instead_of_overwriting() {
        let dir = std::env::temp_dir().join(format!("ps-peaks-merge-{}", std::process::id()));
        let path = dir.join("peaks.json");
        let (mut a, _) = Peaks::at(path.clone());
        let (mut b, _) = Peaks::at(path.clone());
        assert!(a.record("a", Some(1.0), None).is_ok());
        assert!(b.record("b", Some(2.0), None).is_ok());
        assert!(b.record("a", Some(0.5), None).is_ok());
        assert_eq!(a.flush(0.0, true), None);
        assert_eq!(b.flush(0.0, true), None);
        let (c, _) = Peaks::at(path);
        assert_eq!(c.get("a").vram_mb, Some(1.0));
        assert_eq!(c.get("b").vram_mb, Some(2.0));
        let leftovers = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(leftovers, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_killed_writer_leaves_nothing_behind_and_no_link_is_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ps-peaks-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let path = dir.join("peaks.json");
        // What a writer killed between write and rename left: an old-style
        // per-pid file and the one temporary, here a link to a victim.
        let victim = dir.join("victim");
        assert!(std::fs::write(&victim, "keep").is_ok());
        assert!(std::fs::write(dir.join("peaks.tmp.4194999"), "{").is_ok());
        assert!(std::os::unix::fs::symlink(&victim, dir.join("peaks.json.tmp")).is_ok());
        // Not ours: kept.
        assert!(std::fs::write(dir.join("peaks.tmp.notapid"), "x").is_ok());
        assert!(std::fs::write(dir.join("other.tmp.12"), "x").is_ok());
        let (mut p, _) = Peaks::at(path.clone());
        assert!(p.record("a", Some(1.0), None).is_ok());
        assert_eq!(p.flush(0.0, true), None);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        let kept = std::fs::read_to_string(&victim).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            names,
            [
                "other.tmp.12",
                "peaks.json",
                "peaks.json.lock",
                "peaks.tmp.notapid",
                "victim"
            ]
        );
        assert_eq!(mode.ok(), Some(0o600));
        assert_eq!(kept, "keep");
    }

    #[test]
    fn a_failing_save_is_reported_once_and_retried() {
        let (mut p, _) = Peaks::at(PathBuf::from("/proc/definitely/not/writable/peaks.json"));
        assert!(p.record("a", Some(1.0), None).is_ok());
        assert!(p.flush(0.0, true).is_some());
        assert_eq!(p.flush(5.0, true), None);
        assert!(p.is_dirty());
        assert_eq!(p.get("a").vram_mb, Some(1.0));
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

//! Where the package keeps its files.

use std::path::PathBuf;

/// `$XDG_STATE_HOME/plugin-scheduling/<file>` (default `~/.local/state`);
/// `None` when neither variable is set.
pub fn state_path(file: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
            .join(".local")
            .join("state"),
    };
    Some(base.join("plugin-scheduling").join(file))
}

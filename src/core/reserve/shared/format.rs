//! The file's layout: reading and checking the state.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::error::io;
use super::file::check_owner;
use super::owner::{my_uid, Alive};
use super::{SharedError, State, MAGIC, VERSION};

/// Bytes past the state a file may keep before it is truncated.
pub(super) const TRUNCATE_SLACK: usize = 64 * 1024;

/// Reads and checks the state in `file` (the caller holds a lock); with the
/// JSON body as read.
pub(super) fn read_state(path: &Path, file: &File) -> Result<(State, Vec<u8>), SharedError> {
    read_state_sized(path, file, 0).map(|(state, body, _)| (state, body))
}

/// As [`read_state`], reading the whole file in one call when it is about
/// `expected` bytes long; with the file's length.
pub(super) fn read_state_sized(
    path: &Path,
    file: &File,
    expected: usize,
) -> Result<(State, Vec<u8>, usize), SharedError> {
    let mut bytes = vec![0u8; expected + 4096];
    let mut len = 0;
    loop {
        let n = file
            .read_at(&mut bytes[len..], len as u64)
            .map_err(io(path, "read it"))?;
        if n == 0 {
            break;
        }
        len += n;
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
    }
    bytes.truncate(len);
    parse_state(path, &bytes).map(|(state, body)| (state, body, len))
}

pub(super) fn parse_state(path: &Path, bytes: &[u8]) -> Result<(State, Vec<u8>), SharedError> {
    let corrupt = |why: String| SharedError::Corrupt {
        path: path.to_owned(),
        why,
    };
    if bytes.is_empty() {
        return Ok((State::default(), Vec::new()));
    }
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .filter(|&e| e <= 64)
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header =
        std::str::from_utf8(&bytes[..end]).map_err(|_| corrupt("header is not text".into()))?;
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt(format!("header {header:?} is not {MAGIC}")));
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("header {header:?} has no version")))?;
    if version > VERSION {
        return Err(SharedError::Newer {
            path: path.to_owned(),
            version,
        });
    }
    let length: usize = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("header {header:?} has no length")))?;
    let body = bytes.get(end + 1..end + 1 + length).ok_or_else(|| {
        corrupt(format!(
            "{length} bytes announced, {} present",
            bytes.len() - end - 1
        ))
    })?;
    let state = serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
    Ok((state, body.to_vec()))
}

/// The ledger at `path` as it is now, without creating or changing it
/// (`None`: there is no such file); dead processes' entries left out.
pub fn view_file(path: &Path) -> Result<Option<State>, SharedError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "open it")(e)),
    };
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    check_owner(path, meta.uid(), meta.mode(), my_uid()?, meta.mode())?;
    read_view(path, &file).map(Some)
}

pub(super) fn read_view(path: &Path, file: &File) -> Result<State, SharedError> {
    file.lock_shared().map_err(io(path, "lock it"))?;
    let state = read_state(path, file);
    let _ = file.unlock();
    let (mut state, _) = state?;
    let mut alive = Alive::fresh();
    state.grants.retain(|h| alive.check(h.owner));
    state.waiters.retain(|w| alive.check(w.waker.owner));
    Ok(state)
}

//! Where a ledger lives, opening it (refusing what is not ours), and its
//! lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::io;
use super::owner::my_uid;
use super::SharedError;

/// A file (or directory) of another user is refused, unless both it and
/// the request are open to the group (`mode` with group read and write).
pub(super) fn check_owner(
    path: &Path,
    owner_uid: u32,
    file_mode: u32,
    my_uid: u32,
    mode: u32,
) -> Result<(), SharedError> {
    let group_shared = mode & 0o060 == 0o060 && file_mode & 0o060 == 0o060;
    if owner_uid != my_uid && !group_shared {
        return Err(SharedError::Foreign {
            path: path.to_owned(),
            owner_uid,
            my_uid,
        });
    }
    Ok(())
}

/// Where a shared ledger of `name` lives: `name` itself when it is a path
/// (holds a `/`), else `$XDG_RUNTIME_DIR/plugin-scheduling/<name>`, else
/// `<temp dir>/plugin-scheduling-<uid>/<name>`.
pub fn ledger_path(name: &str) -> Result<PathBuf, SharedError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("plugin-scheduling"),
        None => std::env::temp_dir().join(format!("plugin-scheduling-{}", my_uid()?)),
    };
    Ok(dir.join(name))
}

/// An exclusively locked file, unlocked when dropped (also on a panic).
pub(super) struct Locked<'a>(pub(super) &'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Unlocking cannot fail on a file we locked; if it did, closing the
        // handle releases the lock.
        let _ = self.0.unlock();
    }
}

/// Opens (creating with `mode`) the ledger file, refusing what is not ours.
pub(super) fn open_file(path: &Path, mode: u32) -> Result<File, SharedError> {
    let uid = my_uid()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir, "create its directory"))?;
            // Private, or open to the group when the file is.
            let dir_mode = if mode & 0o070 != 0 { 0o770 } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(io(dir, "set its directory's mode"))?;
        }
        // A directory another user made for us could swap the file.
        let d = std::fs::metadata(dir).map_err(io(dir, "stat its directory"))?;
        let sticky_shared = d.mode() & 0o1000 != 0 && d.uid() == 0;
        if !sticky_shared {
            check_owner(dir, d.uid(), d.mode(), uid, mode)?;
        }
    }
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path);
    let file = match created {
        // Exactly `mode`, whatever the umask (a group ledger needs g+rw).
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(path, "set its mode"))?;
            file
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path, "open it"))?,
        Err(e) => return Err(io(path, "create it")(e)),
    };
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    if !meta.is_file() {
        return Err(SharedError::Corrupt {
            path: path.to_owned(),
            why: "not a regular file".into(),
        });
    }
    check_owner(path, meta.uid(), meta.mode(), uid, mode)?;
    Ok(file)
}

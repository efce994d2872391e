//! Why a shared ledger cannot be used; each error names the file.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{SHARED_POLICIES, VERSION};

/// Why the shared ledger cannot be used; each names the file.
#[derive(Debug)]
pub enum SharedError {
    Io {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// Owned by another user (and not opened for a group).
    Foreign {
        path: PathBuf,
        owner_uid: u32,
        my_uid: u32,
    },
    /// Written by a newer version of the package.
    Newer {
        path: PathBuf,
        version: u32,
    },
    Corrupt {
        path: PathBuf,
        why: String,
    },
    /// A policy whose order a shared line cannot reproduce.
    Policy {
        name: String,
    },
    /// Written by processes of another pid namespace (another container).
    Namespace {
        path: PathBuf,
        theirs: u64,
        mine: u64,
    },
    /// Opened with another policy than the processes using it.
    PolicyMismatch {
        path: PathBuf,
        theirs: String,
        mine: String,
    },
    /// A signal came while waiting for the lock and the caller gave up.
    Interrupted {
        path: PathBuf,
    },
    /// `/proc` does not show this process (needed to tell owners apart).
    NoProc,
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedError::Io { path, what, source } => {
                write!(f, "shared ledger {}: cannot {what}: {source}", path.display())
            }
            SharedError::Foreign { path, owner_uid, my_uid } => write!(
                f,
                "shared ledger {} is owned by uid {owner_uid}, not by this user (uid {my_uid}); \
                 refusing to share it (a group shares a ledger with mode=0o660 and a file of its members)",
                path.display()
            ),
            SharedError::Newer { path, version } => write!(
                f,
                "shared ledger {} has layout version {version}, newer than this package's {VERSION}; \
                 upgrade plugin-scheduling in every process that shares it",
                path.display()
            ),
            SharedError::Corrupt { path, why } => write!(
                f,
                "shared ledger {} is corrupt ({why}); remove it when no process uses it",
                path.display()
            ),
            SharedError::Policy { name } => write!(
                f,
                "policy {name:?} keeps its history in one process and cannot order a shared line; \
                 use one of {SHARED_POLICIES:?}"
            ),
            SharedError::Namespace { path, theirs, mine } => write!(
                f,
                "shared ledger {} belongs to pid namespace {theirs}, this process runs in {mine} \
                 (another container?): its pids cannot be told alive or dead here; use another name",
                path.display()
            ),
            SharedError::PolicyMismatch { path, theirs, mine } => write!(
                f,
                "shared ledger {} is in use with policy {theirs:?}, this scheduler asks for {mine:?}: \
                 every process on one ledger orders its line the same way",
                path.display()
            ),
            SharedError::Interrupted { path } => write!(
                f,
                "shared ledger {}: interrupted while waiting for its lock",
                path.display()
            ),
            SharedError::NoProc => write!(f, "a shared ledger needs /proc to identify processes"),
        }
    }
}

impl std::error::Error for SharedError {}

pub(super) fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> SharedError {
    let (path, what) = (path.to_owned(), what.to_owned());
    move |source| SharedError::Io { path, what, source }
}

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
    /// Not a ledger at all (a device, a FIFO, a file without the header):
    /// never to be removed on our advice.
    NotALedger {
        path: PathBuf,
        why: String,
    },
    /// Larger than any ledger (read no further).
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// A ledger holding an entry no process could have written (edited or
    /// damaged): an absurd amount, a non-finite time.
    Invalid {
        path: PathBuf,
        entry: String,
        why: String,
    },
    /// The lock was not released within the caller's wait: who holds it.
    Busy {
        path: PathBuf,
        waited: std::time::Duration,
        holder: Option<Holder>,
    },
    /// A symlink at the ledger's path or its directory's (never followed).
    Symlink {
        path: PathBuf,
    },
    /// A directory others could swap the file in.
    UnsafeDir {
        path: PathBuf,
        why: String,
    },
    /// A ledger file other users can read, lock or write.
    Exposed {
        path: PathBuf,
        mode: u32,
    },
    /// A file mode that would let other users in (`ValueError` naming
    /// `mode` in Python).
    Mode {
        mode: u32,
    },
}

/// The process holding a ledger's lock (from `/proc/locks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its name (`/proc/<pid>/comm`), empty if unknown.
    pub name: String,
    /// Its state (`/proc/<pid>/stat` field 3; `T`: stopped).
    pub state: Option<char>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "?"
        } else {
            &self.name
        };
        write!(f, "pid {} ({name}", self.pid)?;
        match self.state {
            Some('T') | Some('t') => write!(
                f,
                ", stopped: resume it with `kill -CONT {}` or end it",
                self.pid
            )?,
            Some('D') => write!(f, ", in uninterruptible sleep")?,
            _ => {}
        }
        write!(f, ")")
    }
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
            SharedError::NotALedger { path, why } => write!(
                f,
                "{} is not a plugin-scheduling ledger ({why}); refusing to use it: pass the path of a ledger, or a new one",
                path.display()
            ),
            SharedError::TooLarge { path, size, limit } => write!(
                f,
                "{} is {size} bytes, larger than any plugin-scheduling ledger ({limit} bytes at most); refusing to read it",
                path.display()
            ),
            SharedError::Invalid { path, entry, why } => write!(
                f,
                "shared ledger {} holds an invalid entry, {entry}: {why} (edited or damaged); \
                 refusing it rather than let it block every process; remove it when no process uses it",
                path.display()
            ),
            SharedError::Busy { path, waited, holder } => {
                write!(
                    f,
                    "shared ledger {}: its lock was not released within {:.3}s",
                    path.display(),
                    waited.as_secs_f64()
                )?;
                match holder {
                    Some(h) => write!(f, "; it is held by {h}"),
                    None => write!(f, "; its holder is not visible in /proc/locks"),
                }
            }
            SharedError::Symlink { path } => write!(
                f,
                "shared ledger {} is a symbolic link (or under one); refusing to follow it: pass the real path",
                path.display()
            ),
            SharedError::UnsafeDir { path, why } => write!(
                f,
                "shared ledger directory {} {why}; another user could swap the ledger in it: refusing it",
                path.display()
            ),
            SharedError::Exposed { path, mode } => write!(
                f,
                "shared ledger {} has mode {mode:#o}: other users can read, lock or write it; refusing it \
                 (chmod o-rwx it, or remove it when no process uses it)",
                path.display()
            ),
            SharedError::Mode { mode } => write!(
                f,
                "mode must not let other users read, lock or write the ledger (no bits in 0o007; e.g. 0o600, or 0o660 for a group), got {mode:#o}"
            ),
        }
    }
}

impl std::error::Error for SharedError {}

pub(super) fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> SharedError {
    let (path, what) = (path.to_owned(), what.to_owned());
    move |source| SharedError::Io { path, what, source }
}

//! One ledger and one line of waiters for every process of a user on a
//! host, with no daemon: the state of a [`ReservationQueue`] kept in a file
//! and every operation done under an exclusive lock of that file.
//!
//! There is still one implementation of the decisions. Each operation
//! ([`SharedQueue::with`]) takes `flock(LOCK_EX)` on the file, reads the
//! state, drops what dead processes held, rebuilds the queue with
//! [`ReservationQueue::restore`], runs the caller's operation on it
//! (`join`, `offer`, `claim`, `leave`, `release`, ...), writes the state
//! back and unlocks. The lock belongs to the open file description, so it
//! is released by the kernel when a holder dies, SIGKILL included.
//!
//! Holders and waiters are identified by [`Owner`]: pid and the process's
//! start time (`/proc/<pid>/stat` field 22), so a reused pid cannot keep a
//! dead process's grant alive. Everything of an owner that is gone is
//! reclaimed at the start of the next operation of any process.
//!
//! File layout (version 1): one header line `PSLEDGER <version> <length>\n`
//! then `<length>` bytes of JSON ([`State`]). Bytes after them are ignored,
//! so a write that is cut short after the header still parses or is
//! reported corrupt, never half-read. A file of a newer version, with a bad
//! header or JSON, or owned by another user (unless opened with a group
//! mode) is an error naming the path; nothing is shared silently.
//!
//! Policies: the queue is rebuilt per operation, so only policies whose
//! order depends on the waiters alone are offered ([`SHARED_POLICIES`]);
//! fair share, multifactor, round robin and SJF keep history in a process.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::ledger::{Finished, Grant, GrantId, Ledger, Others};
use super::peaks::Peaks;
use super::queue::{ReservationQueue, Settings, WaiterState};
use crate::policy::PolicySpec;

/// The layout version this build writes and reads.
pub const VERSION: u32 = 1;
const MAGIC: &str = "PSLEDGER";

/// Policies a shared line can use: their order depends on the waiters only.
pub const SHARED_POLICIES: [&str; 5] = [
    "fifo",
    "best_effort_fifo",
    "priority",
    "deadline",
    "backfill",
];

/// A process, told apart from any later one with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// `/proc/<pid>/stat`'s state (field 3) and start time (field 22); `None`
/// if there is no such process.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it start past the last ')'; field 3 is the first of them.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: u32) -> Option<u64> {
    stat_of(pid).map(|(_, start)| start)
}

impl Owner {
    /// The process `pid` as it runs now, if it does.
    pub fn of(pid: u32) -> Option<Owner> {
        start_time(pid).map(|start| Owner { pid, start })
    }

    /// This process.
    pub fn current() -> Option<Owner> {
        Owner::of(std::process::id())
    }

    /// Whether this very process still runs (a zombie counts as gone).
    pub fn alive(&self) -> bool {
        stat_of(self.pid)
            .is_some_and(|(state, start)| state != 'Z' && state != 'X' && start == self.start)
    }

    /// The process's name (`/proc/<pid>/comm`), for views.
    pub fn name(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default()
    }
}

/// How a waiter in some process is reached: its owner and a number unique
/// in that process (the binding's wake channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token {
    pub owner: Owner,
    pub id: u64,
}

/// A grant and the process that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub owner: Owner,
    pub grant: Grant,
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub grants: Vec<Held>,
    pub next_grant: u64,
    pub waiters: Vec<WaiterState<Token>>,
    pub next_waiter: u64,
    /// The pid namespace whose pids the file names (`/proc/self/ns/pid`):
    /// a process of another namespace would take live owners for dead.
    #[serde(default)]
    pub pid_ns: Option<u64>,
    /// The policy ordering the line (name and settings): processes with
    /// another one are refused while the ledger is in use.
    #[serde(default)]
    pub policy: Option<String>,
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`), read
/// once per process (a forked child reads its own).
fn pid_namespace() -> Option<u64> {
    static SEEN: Mutex<Option<(u32, Option<u64>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((p, ns)) = *seen {
        if p == pid {
            return ns;
        }
    }
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy();
            text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        });
    *seen = Some((pid, ns));
    ns
}

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

/// A file (or directory) of another user is refused, unless both it and
/// the request are open to the group (`mode` with group read and write).
fn check_owner(
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

/// The effective uid of this process (`/proc/self/status`).
fn my_uid() -> Result<u32, SharedError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|_| SharedError::NoProc)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or(SharedError::NoProc)
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

/// A released grant (if any) and the waiters to wake.
pub type Released = (Option<Grant>, Vec<Token>);

/// The process holding each grant.
pub type Owners = std::collections::HashMap<GrantId, Owner>;

/// What an operation found besides its own result.
#[derive(Debug)]
pub struct Done<R> {
    pub value: R,
    /// Grants of processes that are gone, released by this operation.
    pub reclaimed: Vec<Held>,
    /// Waiters of processes that are gone, dropped from the line.
    pub dropped: Vec<WaiterState<Token>>,
}

/// A handle on a shared ledger file (one per scheduler in a process; its
/// threads share it: an in-process mutex orders them, the file lock orders
/// processes).
#[derive(Debug)]
pub struct SharedQueue {
    path: PathBuf,
    mode: u32,
    spec: PolicySpec,
    /// How the policy is told apart in the file (name and settings).
    policy: String,
    settings: Settings,
    handle: Mutex<Handle>,
    /// This process (a lock of its own: asked for inside operations too).
    me: Mutex<Owner>,
}

/// What belongs to one process: the open file (its own open file
/// description, so `flock` excludes other processes, and after `fork()` the
/// child's own), who this process is, and its peaks.
#[derive(Debug)]
struct Handle {
    pid: u32,
    file: File,
    me: Owner,
    peaks: Peaks,
    /// Owners seen alive, and when (a dead owner is found within
    /// [`ALIVE_FOR`] of its death; one that is gone stays gone).
    alive: std::collections::HashMap<Owner, std::time::Instant>,
    /// The file's length as last read or written (to read it in one call).
    length: usize,
}

/// How long an owner seen alive is taken to be alive without looking again:
/// a dead holder's grant is reclaimed at the first operation after this.
pub const ALIVE_FOR: std::time::Duration = std::time::Duration::from_millis(200);

/// The policy as the file records it: its name and the settings it reads.
fn policy_text(spec: &PolicySpec) -> String {
    let mut out = spec.name.clone();
    for (k, v) in [
        ("aging_per_s", spec.aging_per_s),
        ("window_s", spec.window_s),
        ("boost", spec.boost),
    ] {
        if let Some(v) = v {
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> SharedError {
    let (path, what) = (path.to_owned(), what.to_owned());
    move |source| SharedError::Io { path, what, source }
}

impl SharedQueue {
    /// Opens (creating with `mode`, e.g. `0o600`) the ledger at `path`,
    /// ordering its line by `policy` (one of [`SHARED_POLICIES`]; every
    /// process on the ledger must use the same one while it is in use).
    pub fn open(
        path: &Path,
        mode: u32,
        policy: &PolicySpec,
        settings: Settings,
    ) -> Result<Self, SharedError> {
        Self::open_or(path, mode, policy, settings, &mut || false)
    }

    /// As [`SharedQueue::open`]; a signal while waiting for the lock asks
    /// `interrupted` whether to give up (see [`SharedQueue::with_owned_or`]).
    pub fn open_or(
        path: &Path,
        mode: u32,
        policy: &PolicySpec,
        settings: Settings,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Self, SharedError> {
        if !SHARED_POLICIES.contains(&policy.name.as_str()) {
            return Err(SharedError::Policy {
                name: policy.name.clone(),
            });
        }
        // Settings are checked once here, not at every operation.
        policy.build(0.0).map_err(|_| SharedError::Policy {
            name: policy.name.clone(),
        })?;
        let me = Owner::current().ok_or(SharedError::NoProc)?;
        let file = open_file(path, mode)?;
        let q = Self {
            path: path.to_owned(),
            mode,
            spec: policy.clone(),
            policy: policy_text(policy),
            settings,
            handle: Mutex::new(Handle {
                pid: me.pid,
                file,
                me,
                peaks: Peaks::in_memory(),
                alive: std::collections::HashMap::new(),
                length: 0,
            }),
            me: Mutex::new(me),
        };
        // Check the layout now, so a bad file is reported at construction.
        q.with_owned_or(|_, _| (), interrupted)?;
        Ok(q)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process (after `fork()`, the child).
    pub fn me(&self) -> Owner {
        let mut me = self.me.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        if me.pid != pid {
            *me = Owner::current().unwrap_or(Owner { pid, start: 0 });
        }
        *me
    }

    /// Runs `f` on the peaks this process uses for effective needs (moved
    /// into every operation's queue and back): no operation on the file.
    pub fn with_peaks<R>(&self, f: impl FnOnce(&mut Peaks) -> R) -> Result<R, SharedError> {
        let mut h = self.handle()?;
        Ok(f(&mut h.peaks))
    }

    /// The handle of this process: after `fork()` the child opens the file
    /// again (a lock on the inherited open file description would be the
    /// parent's lock, excluding nobody).
    fn handle(&self) -> Result<MutexGuard<'_, Handle>, SharedError> {
        // Every field is replaced whole; a panic in an operation leaves the
        // handle usable (the file lock goes with the guard below).
        let mut h = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        if h.pid != pid {
            h.file = open_file(&self.path, self.mode)?;
            h.me = self.me();
            h.pid = pid;
        }
        Ok(h)
    }

    /// The state as it is now, with dead processes' entries left out
    /// (not written: a view).
    pub fn view(&self) -> Result<State, SharedError> {
        let h = self.handle()?;
        read_view(&self.path, &h.file)
    }

    /// Runs `op` on the queue as every process sees it, atomically: under
    /// the file's exclusive lock, after dropping what dead processes held.
    /// Grants `op` makes belong to the waiter they were made for (its
    /// process), else to this process.
    pub fn with<R>(
        &self,
        op: impl FnOnce(&mut ReservationQueue<Token>) -> R,
    ) -> Result<Done<R>, SharedError> {
        self.with_owned(|q, _| op(q))
    }

    /// As [`SharedQueue::with`], with the owner of each grant at hand.
    pub fn with_owned<R>(
        &self,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
    ) -> Result<Done<R>, SharedError> {
        self.with_owned_or(op, &mut || false)
    }

    /// As [`SharedQueue::with_owned`]; while waiting for the lock, a signal
    /// (`EINTR`) asks `interrupted` whether to give up
    /// ([`SharedError::Interrupted`], `op` not run) or wait on.
    pub fn with_owned_or<R>(
        &self,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Done<R>, SharedError> {
        let mut h = self.handle()?;
        let Handle {
            file,
            peaks,
            me,
            alive,
            length,
            ..
        } = &mut *h;
        loop {
            match file.lock() {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if interrupted() {
                        return Err(SharedError::Interrupted {
                            path: self.path.clone(),
                        });
                    }
                }
                Err(e) => return Err(io(&self.path, "lock it")(e)),
            }
        }
        let locked = Locked(file);
        self.locked(&locked, peaks, *me, alive, length, op)
    }

    fn locked<R>(
        &self,
        file: &Locked<'_>,
        peaks: &mut Peaks,
        me: Owner,
        seen_alive: &mut std::collections::HashMap<Owner, std::time::Instant>,
        length: &mut usize,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
    ) -> Result<Done<R>, SharedError> {
        let corrupt = |why: String| SharedError::Corrupt {
            path: self.path.clone(),
            why,
        };
        let (state, body, file_len) = read_state_sized(&self.path, file.0, *length)?;
        let ns = pid_namespace();
        if let (Some(theirs), Some(mine)) = (state.pid_ns, ns) {
            if theirs != mine {
                return Err(SharedError::Namespace {
                    path: self.path.clone(),
                    theirs,
                    mine,
                });
            }
        }
        let pid_ns = state.pid_ns.or(ns);
        let mut alive = Alive::cached(me, seen_alive);
        let (kept, reclaimed): (Vec<Held>, Vec<Held>) =
            state.grants.into_iter().partition(|h| alive.check(h.owner));
        let (mut waiters, dropped): (Vec<_>, Vec<_>) = state
            .waiters
            .into_iter()
            .partition(|w: &WaiterState<Token>| alive.check(w.waker.owner));
        if let Some(theirs) = state.policy.filter(|p| *p != self.policy) {
            if !kept.is_empty() || !waiters.is_empty() {
                return Err(SharedError::PolicyMismatch {
                    path: self.path.clone(),
                    theirs,
                    mine: self.policy.clone(),
                });
            }
        }
        // Wake sockets of processes that are gone.
        for owner in alive.dead() {
            let _ = std::fs::remove_file(super::shared_wake::wake_path(&self.path, &owner));
        }
        alive.remember(seen_alive);
        let mut owners: Owners = kept.iter().map(|h| (h.grant.id, h.owner)).collect();
        // A live waiter's uncollected grant that was reclaimed with a dead
        // holder's (a file edited by hand): the waiter just waits again.
        for w in &mut waiters {
            if w.granted.is_some_and(|(g, _)| !owners.contains_key(&g)) {
                w.granted = None;
                w.woken_at = None;
            }
        }
        let ledger = Ledger::restore(kept.into_iter().map(|h| h.grant), state.next_grant)
            .map_err(corrupt)?;
        let policy = self.spec.build(0.0).map_err(|_| SharedError::Policy {
            name: self.spec.name.clone(),
        })?;
        let mut queue = ReservationQueue::restore(
            policy,
            self.settings,
            std::mem::replace(peaks, Peaks::in_memory()),
            ledger,
            waiters,
            state.next_waiter,
        )
        .map_err(corrupt)?;
        let value = op(&mut queue, &owners);
        *peaks = std::mem::replace(queue.peaks_mut(), Peaks::in_memory());
        let (waiters, next_waiter) = queue.export();
        for w in &waiters {
            if let Some((g, _)) = w.granted {
                owners.entry(g).or_insert(w.waker.owner);
            }
        }
        let grants = queue
            .ledger()
            .grants()
            .map(|g| Held {
                owner: owners.get(&g.id).copied().unwrap_or(me),
                grant: g.clone(),
            })
            .collect();
        let next = State {
            grants,
            next_grant: queue.ledger().next_id(),
            waiters,
            next_waiter,
            pid_ns,
            policy: Some(self.policy.clone()),
        };
        *length = self
            .write(file.0, &next, &body, file_len)?
            .unwrap_or(file_len);
        Ok(Done {
            value,
            reclaimed,
            dropped,
        })
    }

    /// Writes `state` unless its encoding is `old` (an operation that
    /// changed nothing writes nothing); the file's new length, if written.
    /// Bytes past the announced length are ignored by readers, so the file
    /// is truncated only when much longer than its state.
    fn write(
        &self,
        file: &File,
        state: &State,
        old: &[u8],
        file_len: usize,
    ) -> Result<Option<usize>, SharedError> {
        let body = serde_json::to_vec(state).map_err(|e| SharedError::Corrupt {
            path: self.path.clone(),
            why: format!("cannot encode the state: {e}"),
        })?;
        if body == old {
            return Ok(None);
        }
        let mut out = format!("{MAGIC} {VERSION} {}\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        file.write_all_at(&out, 0)
            .map_err(io(&self.path, "write it"))?;
        if file_len > out.len() + TRUNCATE_SLACK {
            file.set_len(out.len() as u64)
                .map_err(io(&self.path, "truncate it"))?;
            return Ok(Some(out.len()));
        }
        Ok(Some(file_len.max(out.len())))
    }

    /// Releases the oldest started (else unstarted) grant of `plugin` held
    /// by this process, as `on_execution_finish` does in one process; with
    /// the wakers of whoever's turn it is now.
    pub fn finish_own(&self, plugin: &str, now: f64) -> Result<Done<Released>, SharedError> {
        let me = self.me();
        self.with_owned(move |q, owners| finish_owned(q, owners, me, plugin, now))
    }
}

/// The oldest started (else unstarted) grant of `plugin` that `me` holds,
/// released; with the wakers of whoever's turn it is now. Grants held by
/// leases and grants a waiter has yet to collect are never released by name
/// (the queue's pairing rule, [`ReservationQueue::finish_by`]).
pub fn finish_owned(
    q: &mut ReservationQueue<Token>,
    owners: &Owners,
    me: Owner,
    plugin: &str,
    now: f64,
) -> Released {
    let mine = |g: &Grant| owners.get(&g.id) == Some(&me);
    match q.finish_by(plugin, None, &Others::Unknown, &mine, now) {
        (Finished::Released(g), wake) => (Some(*g), wake),
        (_, wake) => (None, wake),
    }
}

/// Marks the oldest unstarted grant of `plugin` that `me` holds started
/// (never a lease's, nor one a waiter has yet to collect).
pub fn start_owned(
    q: &mut ReservationQueue<Token>,
    owners: &Owners,
    me: Owner,
    plugin: &str,
) -> Option<GrantId> {
    let mine = |g: &Grant| owners.get(&g.id) == Some(&me);
    q.start_by(plugin, None, &Others::Unknown, &mine)
}

/// An exclusively locked file, unlocked when dropped (also on a panic).
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Unlocking cannot fail on a file we locked; if it did, closing the
        // handle releases the lock.
        let _ = self.0.unlock();
    }
}

/// Opens (creating with `mode`) the ledger file, refusing what is not ours.
fn open_file(path: &Path, mode: u32) -> Result<File, SharedError> {
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

/// Bytes past the state a file may keep before it is truncated.
const TRUNCATE_SLACK: usize = 64 * 1024;

/// Reads and checks the state in `file` (the caller holds a lock); with the
/// JSON body as read.
fn read_state(path: &Path, file: &File) -> Result<(State, Vec<u8>), SharedError> {
    read_state_sized(path, file, 0).map(|(state, body, _)| (state, body))
}

/// As [`read_state`], reading the whole file in one call when it is about
/// `expected` bytes long; with the file's length.
fn read_state_sized(
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

fn parse_state(path: &Path, bytes: &[u8]) -> Result<(State, Vec<u8>), SharedError> {
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

fn read_view(path: &Path, file: &File) -> Result<State, SharedError> {
    file.lock_shared().map_err(io(path, "lock it"))?;
    let state = read_state(path, file);
    let _ = file.unlock();
    let (mut state, _) = state?;
    let mut alive = Alive::fresh();
    state.grants.retain(|h| alive.check(h.owner));
    state.waiters.retain(|w| alive.check(w.waker.owner));
    Ok(state)
}

/// Liveness of owners, each checked once per operation; this process and
/// owners seen alive within [`ALIVE_FOR`] are not looked up again.
struct Alive {
    known: std::collections::HashMap<Owner, bool>,
    now: std::time::Instant,
}

impl Alive {
    fn fresh() -> Self {
        Self {
            known: std::collections::HashMap::new(),
            now: std::time::Instant::now(),
        }
    }

    fn cached(me: Owner, seen: &std::collections::HashMap<Owner, std::time::Instant>) -> Self {
        let mut a = Self::fresh();
        a.known.insert(me, true);
        for (o, at) in seen {
            if a.now.saturating_duration_since(*at) < ALIVE_FOR {
                a.known.insert(*o, true);
            }
        }
        a
    }

    /// Keeps the owners found alive by a lookup of this operation.
    fn remember(&self, seen: &mut std::collections::HashMap<Owner, std::time::Instant>) {
        let now = self.now;
        seen.retain(|o, at| {
            self.known.get(o) != Some(&false) && now.saturating_duration_since(*at) < ALIVE_FOR
        });
        for (o, alive) in &self.known {
            if *alive {
                seen.entry(*o).or_insert(now);
            }
        }
    }

    fn check(&mut self, o: Owner) -> bool {
        *self.known.entry(o).or_insert_with(|| o.alive())
    }

    /// The owners found gone.
    fn dead(&self) -> impl Iterator<Item = Owner> + '_ {
        self.known
            .iter()
            .filter(|(_, alive)| !**alive)
            .map(|(o, _)| *o)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::{DeviceReading, Limits, Need, Reading};
    use super::*;
    use crate::policy::JobInfo;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use std::sync::Arc;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ps-shared-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    pub(super) fn settings() -> Settings {
        Settings {
            limits: Limits {
                headroom: 1.0,
                settle_s: 0.0,
            },
            ..Settings::default()
        }
    }

    pub(super) fn gpu(total: f64) -> Reading {
        Reading {
            devices: vec![DeviceReading {
                index: 0,
                total_mb: total,
                free_mb: total,
            }],
            pools: Vec::new(),
        }
    }

    pub(super) fn need(vram: f64) -> Need {
        Need {
            gpu_count: 1,
            vram_mb: vram,
            pools: Vec::new(),
        }
    }

    pub(super) fn open(path: &Path) -> SharedQueue {
        SharedQueue::open(path, 0o600, &PolicySpec::named("fifo"), settings())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn token(q: &SharedQueue, id: u64) -> Token {
        Token { owner: q.me(), id }
    }

    /// Joins the line and offers a reading at once.
    fn enter(
        q: &SharedQueue,
        plugin: &str,
        vram: f64,
        at: f64,
        tok: Token,
    ) -> (super::super::queue::WaiterId, Option<Grant>) {
        q.with(|s| {
            let id = s.join(plugin, need(vram), JobInfo::new(0, plugin, at), tok);
            (id, s.offer(Some(id), &gpu(24_000.0), at).mine)
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .value
    }

    #[test]
    fn the_file_is_private_and_versioned() {
        let path = dir("mode").join("gpu");
        let q = open(&path);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.mode() & 0o777, 0o600);
        let parent =
            std::fs::metadata(path.parent().unwrap_or(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parent.mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(q.path()).unwrap_or_default();
        assert!(text.starts_with("PSLEDGER 1 "), "{text}");
        // A view neither creates nor changes a file.
        let missing = path.with_file_name("missing");
        assert!(matches!(view_file(&missing), Ok(None)));
        assert!(!missing.exists());
        let _ = enter(&q, "p", 1_000.0, 0.0, token(&q, 1));
        let seen = view_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.map(|s| s.grants.len()), Some(1));
    }

    #[test]
    fn handles_share_one_line_in_order() {
        let path = dir("line").join("gpu");
        let (a, b) = (open(&path), open(&path));
        let r = gpu(24_000.0);
        let first = enter(&a, "big", 20_000.0, 0.0, token(&a, 1));
        assert!(first.1.is_some());
        // b waits behind; a's release wakes b's token.
        let waiting = enter(&b, "next", 20_000.0, 1.0, token(&b, 7));
        assert!(waiting.1.is_none());
        let (released, wake) = a
            .finish_own("big", 2.0)
            .unwrap_or_else(|e| panic!("{e}"))
            .value;
        assert!(released.is_some());
        assert_eq!(wake, vec![token(&b, 7)]);
        let got = b
            .with(|q| q.offer(Some(waiting.0), &r, 2.0).mine)
            .unwrap_or_else(|e| panic!("{e}"))
            .value;
        assert!(got.is_some());
        assert!(b
            .finish_own("next", 3.0)
            .unwrap_or_else(|e| panic!("{e}"))
            .value
            .0
            .is_some());
        assert!(a.view().unwrap_or_else(|e| panic!("{e}")).grants.is_empty());
    }

    #[test]
    fn export_and_restore_agree() {
        let path = dir("roundtrip").join("gpu");
        let q = open(&path);
        let me = q.me();
        let r = gpu(24_000.0);
        q.with(|q| {
            for i in 0..5u32 {
                let id = q.join(
                    "p",
                    need(7_000.0),
                    JobInfo::new(0, "p", f64::from(i)),
                    Token {
                        owner: me,
                        id: u64::from(i),
                    },
                );
                let _ = q.offer(Some(id), &r, f64::from(i));
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let before = std::fs::read(&path).unwrap_or_default();
        q.with(|_| ()).unwrap_or_else(|e| panic!("{e}"));
        // Read back, rebuilt and written again: the same bytes.
        assert_eq!(std::fs::read(&path).unwrap_or_default(), before);
        let state = q.view().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((state.grants.len(), state.waiters.len()), (3, 2));
    }

    /// Threads with handles of their own (each its own open file, so the
    /// locks contend as between processes): never more than capacity held.
    #[test]
    fn contending_handles_never_over_commit() {
        let path = dir("stress").join("gpu");
        let held = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (path, held, peak, done) =
                    (path.clone(), held.clone(), peak.clone(), done.clone());
                std::thread::spawn(move || {
                    let q = open(&path);
                    let r = gpu(24_000.0);
                    for i in 0..50u64 {
                        let now = || {
                            std::time::UNIX_EPOCH
                                .elapsed()
                                .map_or(0.0, |d| d.as_secs_f64())
                        };
                        let tok = Token {
                            owner: q.me(),
                            id: t * 1000 + i,
                        };
                        let plugin = format!("p{t}");
                        let id = q
                            .with(|s| {
                                s.join(&plugin, need(8_000.0), JobInfo::new(0, &plugin, now()), tok)
                            })
                            .unwrap_or_else(|e| panic!("{e}"))
                            .value;
                        loop {
                            let got = q
                                .with(|s| {
                                    s.claim(id, now())
                                        .or_else(|| s.offer(Some(id), &r, now()).mine)
                                })
                                .unwrap_or_else(|e| panic!("{e}"))
                                .value;
                            if got.is_some() {
                                break;
                            }
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                        let h = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(h, Ordering::SeqCst);
                        held.fetch_sub(1, Ordering::SeqCst);
                        let released = q
                            .finish_own(&plugin, now())
                            .unwrap_or_else(|e| panic!("{e}"))
                            .value
                            .0;
                        assert!(released.is_some());
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(done.load(Ordering::SeqCst), 200);
        assert!(
            peak.load(Ordering::SeqCst) <= 3,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        let state = open(&path).view().unwrap_or_else(|e| panic!("{e}"));
        assert!(state.grants.is_empty() && state.waiters.is_empty());
    }

    #[test]
    fn a_dead_holder_and_a_dead_waiter_are_reclaimed() {
        let path = dir("dead").join("gpu");
        let q = open(&path);
        let r = gpu(24_000.0);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let ghost = Owner::of(child.id()).unwrap_or_else(|| panic!("child start time"));
        assert!(ghost.alive());
        q.with(|s| {
            let id = s.join(
                "holder",
                need(20_000.0),
                JobInfo::new(0, "holder", 0.0),
                Token {
                    owner: ghost,
                    id: 1,
                },
            );
            let _ = s.offer(None, &r, 0.0);
            let _ = id;
            s.join(
                "waiter",
                need(20_000.0),
                JobInfo::new(0, "waiter", 1.0),
                Token {
                    owner: ghost,
                    id: 2,
                },
            );
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // The grant made for the child's waiter is the child's.
        let state = q.view().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state.grants.len(), 1);
        assert_eq!(state.grants[0].owner, ghost);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!ghost.alive());
        let done = q
            .with(|s| {
                let id = s.join(
                    "mine",
                    need(20_000.0),
                    JobInfo::new(0, "mine", 2.0),
                    token(&q, 3),
                );
                s.offer(Some(id), &r, 2.0).mine
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.reclaimed.len(), 1);
        assert_eq!(done.dropped.len(), 2);
        assert!(done.value.is_some());
    }

    #[test]
    fn a_reused_pid_does_not_keep_a_grant() {
        let me = Owner::current().unwrap_or_else(|| panic!("proc"));
        assert!(me.alive());
        assert!(!Owner {
            start: me.start + 1,
            ..me
        }
        .alive());
        assert!(!me.name().is_empty());
    }

    #[test]
    fn bad_files_are_refused_naming_the_path() {
        let d = dir("bad");
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            ("garbage", "hello world\n".to_owned(), "corrupt"),
            ("json", "PSLEDGER 1 5\n{oops".to_owned(), "corrupt"),
            ("short", "PSLEDGER 1 500\n{}".to_owned(), "corrupt"),
            ("newer", "PSLEDGER 99 2\n{}".to_owned(), "newer"),
            (
                "inconsistent",
                r#"PSLEDGER 1 67
{"grants":[],"next_grant":0,"waiters":[{"id":0}],"next_waiter":0}"#
                    .to_owned(),
                "corrupt",
            ),
        ];
        for (name, text, kind) in cases {
            let path = d.join(name);
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
            let err = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings())
                .map(|_| ())
                .err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains(path.to_string_lossy().as_ref()) && msg.contains(kind),
                "{name}: {msg}"
            );
            // Not overwritten.
            assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text);
        }
        // Another pid namespace's file: refused, not reclaimed.
        let path = d.join("container");
        let body = r#"{"grants":[],"next_grant":0,"waiters":[],"next_waiter":0,"pid_ns":1}"#;
        std::fs::write(&path, format!("PSLEDGER 1 {}\n{body}", body.len()))
            .unwrap_or_else(|e| panic!("{e}"));
        let msg = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("pid namespace 1") && msg.contains(path.to_string_lossy().as_ref()),
            "{msg}"
        );
        let err = SharedQueue::open(
            &d.join("p"),
            0o600,
            &PolicySpec::named("fair_share"),
            settings(),
        )
        .err();
        assert!(matches!(err, Some(SharedError::Policy { .. })));
    }

    #[test]
    fn the_owner_rule() {
        let p = Path::new("/x/gpu");
        assert!(check_owner(p, 1000, 0o600, 1000, 0o600).is_ok());
        let err = check_owner(p, 65534, 0o600, 1000, 0o600).err();
        assert!(matches!(
            err,
            Some(SharedError::Foreign {
                owner_uid: 65534,
                my_uid: 1000,
                ..
            })
        ));
        // A group: both the file and the request must be group read-write.
        assert!(check_owner(p, 65534, 0o660, 1000, 0o660).is_ok());
        assert!(check_owner(p, 65534, 0o660, 1000, 0o600).is_err());
        assert!(check_owner(p, 65534, 0o600, 1000, 0o660).is_err());
    }

    /// Needs root (to give a file away); the suite runs as root here, and
    /// says so loudly where it does not.
    #[test]
    fn another_users_file_is_refused() {
        assert_eq!(
            my_uid().ok(),
            Some(0),
            "this test gives a file to nobody with chown: run it as root"
        );
        let path = dir("foreign").join("gpu");
        drop(open(&path));
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap_or_else(|e| panic!("{e}"));
        let err = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings()).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("owned by uid 65534") && msg.contains(path.to_string_lossy().as_ref()),
            "{msg}"
        );
        // A directory made by another user is refused too (it could swap the file).
        let other = dir("foreign-dir");
        std::fs::create_dir_all(&other).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::chown(&other, Some(65534), Some(65534))
            .unwrap_or_else(|e| panic!("{e}"));
        let msg = SharedQueue::open(
            &other.join("gpu"),
            0o600,
            &PolicySpec::named("fifo"),
            settings(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            msg.contains("owned by uid 65534") && msg.contains(other.to_string_lossy().as_ref()),
            "{msg}"
        );
    }
}

/// Cross-process checks: the test binary runs itself as worker processes.
#[cfg(test)]
mod processes {
    use super::super::ledger::{DeviceReading, Reading};
    use super::tests::{gpu, open};
    use super::*;

    fn reading() -> Reading {
        gpu(24_000.0)
    }

    fn need() -> super::super::ledger::Need {
        super::tests::need(8_000.0)
    }
    use crate::policy::JobInfo;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::time::{Duration, Instant};

    const CHILD: &str = "PS_SHARED_LEDGER_CHILD";
    const CAPACITY: u32 = 3;

    fn now() -> f64 {
        std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// What is really held, across processes: "held peak" in a file under
    /// its own lock.
    fn track(path: &Path, delta: i64) {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.lock().unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<i64>().unwrap_or(0));
        let (held, peak) = (it.next().unwrap_or(0) + delta, it.next().unwrap_or(0));
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.set_len(0);
        let _ = write!(f, "{held} {}", peak.max(held));
        let _ = f.unlock();
    }

    fn spawn(test: &str, dir: &Path, extra: &str) -> std::process::Child {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        std::process::Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, dir)
            .env("PS_SHARED_LEDGER_EXTRA", extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One worker process: 8 threads of allocate (wait in line) / hold /
    /// finish, each with its own handle and plugin name.
    #[test]
    fn worker() {
        let Some(dir) = std::env::var_os(CHILD).map(PathBuf::from) else {
            return; // run only as a child of the tests below
        };
        let rounds: u64 = std::env::var("PS_SHARED_LEDGER_EXTRA")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let q = open(&dir.join("gpu"));
                    let plugin = format!("p{}-{t}", std::process::id());
                    for i in 0..rounds {
                        let tok = Token {
                            owner: q.me(),
                            id: t * 1_000_000 + i,
                        };
                        let id = q
                            .with(|s| s.join(&plugin, need(), JobInfo::new(0, &plugin, now()), tok))
                            .unwrap_or_else(|e| panic!("{e}"))
                            .value;
                        while q
                            .with(|s| {
                                s.claim(id, now())
                                    .or_else(|| s.offer(Some(id), &reading(), now()).mine)
                            })
                            .unwrap_or_else(|e| panic!("{e}"))
                            .value
                            .is_none()
                        {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                        track(&dir.join("tracker"), 1);
                        std::thread::sleep(Duration::from_micros(200));
                        track(&dir.join("tracker"), -1);
                        let released = q
                            .finish_own(&plugin, now())
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(released.value.0.is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
    }

    fn fresh(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ps-shared-proc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        d
    }

    #[test]
    fn four_processes_of_eight_threads_never_over_commit() {
        if std::env::var_os(CHILD).is_some() {
            return;
        }
        let dir = fresh("stress");
        let children: Vec<_> = (0..4)
            .map(|_| spawn("reserve::shared::processes::worker", &dir, "10"))
            .collect();
        for mut c in children {
            let status = c.wait().unwrap_or_else(|e| panic!("{e}"));
            assert!(status.success());
        }
        let text = std::fs::read_to_string(dir.join("tracker")).unwrap_or_default();
        let v: Vec<i64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(v[0], 0, "{text}");
        assert!(v[1] >= 1 && v[1] <= i64::from(CAPACITY), "peak held {text}");
        let q = open(&dir.join("gpu"));
        let state = q.view().unwrap_or_else(|e| panic!("{e}"));
        assert!(state.grants.is_empty() && state.waiters.is_empty());
    }

    /// A worker SIGKILLed mid-run (holding grants, waiting in line) does
    /// not stop the others: its entries are reclaimed and they finish.
    #[test]
    fn a_sigkilled_process_is_reclaimed_and_others_proceed() {
        if std::env::var_os(CHILD).is_some() {
            return;
        }
        let dir = fresh("kill");
        let mut victim = spawn("reserve::shared::processes::worker", &dir, "100000");
        // Wait until the victim holds or waits for something.
        let path = dir.join("gpu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("\"owner\"")) {
            assert!(Instant::now() < deadline, "victim never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = victim.kill(); // SIGKILL
        let _ = victim.wait();
        let others: Vec<_> = (0..2)
            .map(|_| spawn("reserve::shared::processes::worker", &dir, "5"))
            .collect();
        for mut c in others {
            assert!(c.wait().unwrap_or_else(|e| panic!("{e}")).success());
        }
        let q = open(&path);
        let state = q.view().unwrap_or_else(|e| panic!("{e}"));
        assert!(state.grants.is_empty() && state.waiters.is_empty());
    }

    /// A bench worker process: grant+release as fast as it can.
    #[test]
    fn bench_child() {
        let Some(dir) = std::env::var_os(CHILD).map(PathBuf::from) else {
            return;
        };
        let q = open(&dir.join("contended"));
        let plugin = format!("p{}", std::process::id());
        for i in 0..5_000u64 {
            let tok = Token {
                owner: q.me(),
                id: i,
            };
            let _ = q.with(|s| {
                let id = s.join(&plugin, need(), JobInfo::new(0, &plugin, now()), tok);
                if s.offer(Some(id), &reading(), now()).mine.is_none() {
                    s.leave(id, now());
                }
            });
            let _ = q.finish_own(&plugin, now());
        }
    }

    fn wall_ns() -> u128 {
        std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos())
    }

    /// A process that waits on its wake channel and notes when each wake
    /// arrived (wall clock, ns).
    #[test]
    fn wake_child() {
        let Some(dir) = std::env::var_os(CHILD).map(PathBuf::from) else {
            return;
        };
        let ledger = dir.join("contended");
        let token = Token {
            owner: Owner::current().unwrap_or_else(|| panic!("proc")),
            id: 1,
        };
        let chan = super::super::shared_wake::WakeChannel::bind(&ledger, &token.owner)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::write(dir.join("wake-pid"), token.owner.pid.to_string());
        let mut times = Vec::new();
        for _ in 0..200 {
            if !chan
                .recv(Some(Duration::from_secs(10)))
                .unwrap_or_default()
                .is_empty()
            {
                times.push(wall_ns().to_string());
            }
        }
        let _ = std::fs::write(dir.join("wake-times"), times.join("\n"));
    }

    /// `cargo test --release -p plugin-scheduling-core bench_shared -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: prints numbers for README"]
    fn bench_shared_ledger() {
        if std::env::var_os(CHILD).is_some() {
            return;
        }
        let dir = fresh("bench");
        let q = open(&dir.join("gpu"));
        let n = 20_000u64;
        let start = Instant::now();
        for i in 0..n {
            let tok = Token {
                owner: q.me(),
                id: i,
            };
            let _ = q.with(|s| {
                let id = s.join("p", need(), JobInfo::new(0, "p", now()), tok);
                s.offer(Some(id), &reading(), now()).mine
            });
            let _ = q.finish_own("p", now());
        }
        let per_s = n as f64 / start.elapsed().as_secs_f64();
        println!("single process: {per_s:.0} grant+release/s");
        // With 50 grants held by others.
        let hold = open(&dir.join("gpu2"));
        let big = Reading {
            devices: vec![DeviceReading {
                index: 0,
                total_mb: 1e9,
                free_mb: 1e9,
            }],
            pools: Vec::new(),
        };
        for i in 0..50u64 {
            let tok = Token {
                owner: hold.me(),
                id: i,
            };
            let _ = hold.with(|s| {
                let id = s.join("held", need(), JobInfo::new(0, "held", now()), tok);
                s.offer(Some(id), &big, now()).mine
            });
        }
        let bytes = std::fs::metadata(dir.join("gpu2")).map_or(0, |m| m.len());
        println!("file bytes per grant: {}", bytes / 50);
        let start = Instant::now();
        for i in 0..2_000u64 {
            let tok = Token {
                owner: hold.me(),
                id: 100 + i,
            };
            let _ = hold.with(|s| {
                let id = s.join("p", need(), JobInfo::new(0, "p", now()), tok);
                s.offer(Some(id), &big, now()).mine
            });
            let _ = hold.finish_own("p", now());
        }
        println!(
            "with 50 grants held: {:.0} grant+release/s",
            2_000.0 / start.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        let children: Vec<_> = (0..4)
            .map(|_| spawn("reserve::shared::processes::bench_child", &dir, ""))
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap_or_else(|e| panic!("{e}")).success());
        }
        // Includes starting 4 processes (~ms each).
        println!(
            "4 processes contending: {:.0} grant+release/s in all",
            20_000.0 / start.elapsed().as_secs_f64()
        );
        // Wake latency from this process to another one.
        let mut child = spawn("reserve::shared::processes::wake_child", &dir, "");
        let pid_file = dir.join("wake-pid");
        while !pid_file.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let token = Token {
            owner: Owner::of(pid).unwrap_or_else(|| panic!("child")),
            id: 1,
        };
        let mut sent = Vec::new();
        for _ in 0..200 {
            sent.push(wall_ns());
            assert!(super::super::shared_wake::wake(
                &dir.join("contended"),
                &token
            ));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(child.wait().is_ok_and(|s| s.success()));
        let got: Vec<u128> = std::fs::read_to_string(dir.join("wake-times"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        let mut lat: Vec<u128> = sent
            .iter()
            .zip(&got)
            .map(|(s, g)| g.saturating_sub(*s))
            .collect();
        lat.sort_unstable();
        println!(
            "wake latency across processes: median {} us, p99 {} us ({} wakes)",
            lat[lat.len() / 2] / 1000,
            lat[lat.len() * 99 / 100] / 1000,
            lat.len()
        );
    }
}

//! One ledger and one line of waiters for every process of a user on a
//! host, with no daemon: the state of a [`ReservationQueue`] kept in a file
//! and every operation done under an exclusive lock of that file.
//!
//! There is still one implementation of the decisions. Each operation
//! ([`SharedQueue::with`]) takes `flock(LOCK_EX)` on the file (polled, for
//! at most the caller's wait), reads the
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
//! File layout (version 2): see [`format`]: two checksummed records in
//! page 0 naming JSON bodies ([`State`]) written beside each other, so a
//! write killed at any byte leaves the previous state intact and a read
//! needs no lock. Lock waits are bounded ([`SharedQueue::set_lock_wait`])
//! and name the holder. A file of a newer version, not a ledger, invalid,
//! of another user (unless a group ledger of one of our groups) or open to
//! other users is an error naming the path; nothing is shared silently.
//!
//! Policies: the queue is rebuilt per operation, so only policies whose
//! order depends on the waiters alone are offered ([`SHARED_POLICIES`]);
//! fair share, multifactor, round robin and SJF keep history in a process.

//!
//! Files: `owner` (who a process is, alive or gone), `error`, `file`
//! (paths, opening, ownership, the lock), `format` (the layout), `wake`
//! (wake-ups across processes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ledger::{Finished, Grant, GrantId, Ledger, Others};
use super::peaks::Peaks;
use super::queue::{ReservationQueue, Settings, WaiterState};
use crate::policy::PolicySpec;

mod error;
mod file;
mod format;
mod owner;
pub mod wake;

pub use error::{Holder, SharedError};
pub use file::{check_mode, ledger_path};
use file::{open_file, Locked};
pub use format::{view_file, MAX_BODY, MAX_FILE, MAX_MB};
use owner::{pid_namespace, Alive};
pub use owner::{Owner, ALIVE_FOR};

/// The layout version this build writes (it reads version 1 too, and
/// rewrites it).
pub const VERSION: u32 = 2;

/// Policies a shared line can use: their order depends on the waiters only.
pub const SHARED_POLICIES: [&str; 5] = [
    "fifo",
    "best_effort_fifo",
    "priority",
    "deadline",
    "backfill",
];

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
    /// This process's peaks (moved into every operation's queue and back;
    /// a lock of its own, taken after the file's: never held while waiting).
    peaks: Mutex<Peaks>,
    /// This process (a lock of its own: asked for inside operations too).
    me: Mutex<Owner>,
    /// How long an operation waits for the file's lock, in nanoseconds.
    lock_wait_ns: AtomicU64,
}

/// What belongs to one process: the open file (its own open file
/// description, so `flock` excludes other processes, and after `fork()` the
/// child's own) and who this process is.
#[derive(Debug)]
struct Handle {
    pid: u32,
    file: File,
    me: Owner,
    /// Owners seen alive, and when (a dead owner is found within
    /// [`ALIVE_FOR`] of its death; one that is gone stays gone).
    alive: std::collections::HashMap<Owner, std::time::Instant>,
    /// The file's length as last read or written (to read it in one call).
    length: u64,
}

/// How long an operation waits for the lock unless told otherwise
/// ([`SharedQueue::set_lock_wait`]).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

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

/// The queue rebuilt from a state, and what was found on the way.
struct Restored {
    queue: ReservationQueue<Token>,
    owners: Owners,
    reclaimed: Vec<Held>,
    dropped: Vec<WaiterState<Token>>,
    pid_ns: Option<u64>,
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

    /// As [`SharedQueue::open`]. Opening takes no lock (the file is read
    /// and checked without it), so a stopped process holding the lock does
    /// not stop it; `interrupted` is kept for callers of lock waits.
    pub fn open_or(
        path: &Path,
        mode: u32,
        policy: &PolicySpec,
        settings: Settings,
        _interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Self, SharedError> {
        file::check_mode(mode)?;
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
        // Wake sockets of processes that are gone.
        wake::remove_stale(path);
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
                alive: std::collections::HashMap::new(),
                length: 0,
            }),
            peaks: Mutex::new(Peaks::in_memory()),
            me: Mutex::new(me),
            lock_wait_ns: AtomicU64::new(DEFAULT_LOCK_WAIT.as_nanos() as u64),
        };
        // Check the layout and state now (without the lock), so a bad file
        // is reported at construction.
        q.read(|_, _| ())?;
        Ok(q)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long each operation waits for the file's lock before it fails
    /// with [`SharedError::Busy`] naming the holder (e.g. the scheduler's
    /// `timeout`).
    pub fn set_lock_wait(&self, wait: Duration) {
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.lock_wait_ns.store(ns, Ordering::Relaxed);
    }

    pub fn lock_wait(&self) -> Duration {
        Duration::from_nanos(self.lock_wait_ns.load(Ordering::Relaxed))
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
        Ok(f(&mut self
            .peaks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)))
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
            h.length = 0;
            h.me = self.me();
            h.pid = pid;
        }
        Ok(h)
    }

    /// The state as it is now, with dead processes' entries left out
    /// (not written: a view; read without the lock).
    pub fn view(&self) -> Result<State, SharedError> {
        Ok(view_file(&self.path)?.unwrap_or_default())
    }

    /// Runs `op` on the queue as it is now, read without the lock (a
    /// consistent state, checked by its checksum), dead processes' entries
    /// left out; nothing is written.
    pub fn read<R>(
        &self,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
    ) -> Result<R, SharedError> {
        let Some(file) = file::open_existing(&self.path)? else {
            return Ok(op(&mut self.empty_queue()?, &Owners::new()));
        };
        let read = format::read(&self.path, &file, false)?;
        let me = self.me();
        let mut seen = std::collections::HashMap::new();
        let mut r = self.restore(read.state, me, &mut seen, Peaks::in_memory())?;
        let mut peaks = self.peaks.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *peaks, r.queue.peaks_mut());
        let value = op(&mut r.queue, &r.owners);
        std::mem::swap(&mut *peaks, r.queue.peaks_mut());
        Ok(value)
    }

    fn empty_queue(&self) -> Result<ReservationQueue<Token>, SharedError> {
        let policy = self.spec.build(0.0).map_err(|_| SharedError::Policy {
            name: self.spec.name.clone(),
        })?;
        Ok(ReservationQueue::new(
            policy,
            self.settings,
            Peaks::in_memory(),
        ))
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

    /// As [`SharedQueue::with_owned`]; the lock is waited for at most
    /// [`SharedQueue::lock_wait`] ([`SharedError::Busy`] naming the holder),
    /// and every 20 ms of waiting asks `interrupted` whether to give up
    /// ([`SharedError::Interrupted`], `op` not run).
    pub fn with_owned_or<R>(
        &self,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Done<R>, SharedError> {
        let mut h = self.handle()?;
        let Handle {
            file,
            me,
            alive,
            length,
            ..
        } = &mut *h;
        let locked = file::lock(&self.path, file, self.lock_wait(), interrupted)?;
        self.locked(&locked, *me, alive, length, op)
    }

    /// The queue rebuilt from `state`: dead owners' entries dropped (their
    /// wake sockets removed), the namespace and policy checked.
    fn restore(
        &self,
        state: State,
        me: Owner,
        seen_alive: &mut std::collections::HashMap<Owner, std::time::Instant>,
        peaks: Peaks,
    ) -> Result<Restored, SharedError> {
        let corrupt = |why: String| SharedError::Invalid {
            path: self.path.clone(),
            entry: "the line".into(),
            why,
        };
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
            let _ = std::fs::remove_file(wake::wake_path(&self.path, &owner));
        }
        alive.remember(seen_alive);
        let owners: Owners = kept.iter().map(|h| (h.grant.id, h.owner)).collect();
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
        let queue = ReservationQueue::restore(
            policy,
            self.settings,
            peaks,
            ledger,
            waiters,
            state.next_waiter,
        )
        .map_err(corrupt)?;
        Ok(Restored {
            queue,
            owners,
            reclaimed,
            dropped,
            pid_ns,
        })
    }

    fn locked<R>(
        &self,
        file: &Locked<'_>,
        me: Owner,
        seen_alive: &mut std::collections::HashMap<Owner, std::time::Instant>,
        length: &mut u64,
        op: impl FnOnce(&mut ReservationQueue<Token>, &Owners) -> R,
    ) -> Result<Done<R>, SharedError> {
        let mut read = format::read_hinted(&self.path, file.0, true, *length)?;
        *length = read.file_len;
        let state = std::mem::take(&mut read.state);
        let mut peaks = self.peaks.lock().unwrap_or_else(PoisonError::into_inner);
        let Restored {
            mut queue,
            mut owners,
            reclaimed,
            dropped,
            pid_ns,
        } = self.restore(
            state,
            me,
            seen_alive,
            std::mem::replace(&mut *peaks, Peaks::in_memory()),
        )?;
        let value = op(&mut queue, &owners);
        *peaks = std::mem::replace(queue.peaks_mut(), Peaks::in_memory());
        drop(peaks);
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
        let body = serde_json::to_vec(&next).map_err(|e| SharedError::Corrupt {
            path: self.path.clone(),
            why: format!("cannot encode the state: {e}"),
        })?;
        // An operation that changed nothing writes nothing.
        if body != read.body {
            *length = format::write(&self.path, file.0, &read, &body)?;
        }
        Ok(Done {
            value,
            reclaimed,
            dropped,
        })
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

#[cfg(test)]
mod processes;
#[cfg(test)]
mod tests;

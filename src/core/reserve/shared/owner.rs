//! Who a process is (pid and start time), whether it still runs, and this
//! process's uid and pid namespace.

use serde::{Deserialize, Serialize};

use super::SharedError;

/// How long an owner seen alive is taken to be alive without looking again:
/// a dead holder's grant is reclaimed at the first operation after this.
pub const ALIVE_FOR: std::time::Duration = std::time::Duration::from_millis(200);

/// A process, told apart from any later one with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// `/proc/<pid>/stat`'s state (field 3) and start time (field 22); `None`
/// if there is no such process.
pub(super) fn stat_of(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it start past the last ')'; field 3 is the first of them.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

pub(super) fn start_time(pid: u32) -> Option<u64> {
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

/// This process's pid namespace (the inode of `/proc/self/ns/pid`), read
/// once per process (a forked child reads its own). Lock-free, so a child
/// forked while another thread is in here never waits on a lock that thread
/// held: every thread of one process stores the same two values (the
/// namespace first, then the pid that marks it valid), and a child sees its
/// parent's pid and reads its own.
pub(super) fn pid_namespace() -> Option<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const NONE: u64 = u64::MAX;
    const UNSET: u64 = u64::MAX;
    static PID: AtomicU64 = AtomicU64::new(UNSET);
    static NS: AtomicU64 = AtomicU64::new(NONE);
    let pid = u64::from(std::process::id());
    if PID.load(Ordering::Acquire) == pid {
        let ns = NS.load(Ordering::Relaxed);
        return (ns != NONE).then_some(ns);
    }
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy();
            text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|&ns: &u64| ns != NONE);
    NS.store(ns.unwrap_or(NONE), Ordering::Relaxed);
    PID.store(pid, Ordering::Release);
    ns
}

/// The effective gid and the supplementary groups of this process.
pub(super) fn my_groups() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .into_iter()
        .collect();
    if let Some(groups) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
        out.extend(
            groups
                .split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        );
    }
    out
}

/// The effective uid of this process (`/proc/self/status`).
pub(super) fn my_uid() -> Result<u32, SharedError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|_| SharedError::NoProc)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or(SharedError::NoProc)
}

/// Liveness of owners, each checked once per operation; this process and
/// owners seen alive within [`ALIVE_FOR`] are not looked up again.
pub(super) struct Alive {
    known: std::collections::HashMap<Owner, bool>,
    now: std::time::Instant,
}

impl Alive {
    pub(super) fn fresh() -> Self {
        Self {
            known: std::collections::HashMap::new(),
            now: std::time::Instant::now(),
        }
    }

    pub(super) fn cached(
        me: Owner,
        seen: &std::collections::HashMap<Owner, std::time::Instant>,
    ) -> Self {
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
    pub(super) fn remember(&self, seen: &mut std::collections::HashMap<Owner, std::time::Instant>) {
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

    pub(super) fn check(&mut self, o: Owner) -> bool {
        *self.known.entry(o).or_insert_with(|| o.alive())
    }

    /// The owners found gone.
    pub(super) fn dead(&self) -> impl Iterator<Item = Owner> + '_ {
        self.known
            .iter()
            .filter(|(_, alive)| !**alive)
            .map(|(o, _)| *o)
    }
}

//! Fair share (Slurm's classic algorithm, flat): each account (user or
//! project) has shares; its normalized share is `S = shares / Σ shares` over
//! the accounts known, its normalized usage `U = usage / Σ usage`, where
//! usage is resource-seconds decayed with a half-life. The factor is
//! `F = 2^(−U/S)`: 1 for an account that used nothing, 0.5 for one that used
//! exactly its share, less the more it used beyond it. Higher `F` goes first.
//!
//! Usage decays by the same factor for every account, so the order changes
//! only when usage is charged (at the end of a job): keys are recomputed
//! then, not at every decision. Usage persists in SQLite when the book has
//! a path, so it survives a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use super::{Ctx, JobInfo, KeyScope, Policy, RunningJob};
use crate::error::{Error, Result};

/// What fair share is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKey {
    User,
    Project,
}

impl ShareKey {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "project" => Some(Self::Project),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Project => "project",
        }
    }

    /// The account a job is charged to (`""` when it names none).
    pub fn account(self, job: &JobInfo) -> Arc<str> {
        let a = match self {
            Self::User => &job.user,
            Self::Project => &job.project,
        };
        a.clone().unwrap_or_else(|| Arc::from(""))
    }
}

#[derive(Debug)]
struct Inner {
    half_life_s: f64,
    /// account → (usage, clock time it was last decayed to)
    usage: HashMap<Arc<str>, (f64, f64)>,
    shares: HashMap<Arc<str>, f64>,
    default_shares: f64,
    db: Option<(PathBuf, Connection)>,
    epoch: u64,
    /// Last persistence failure (reported once by the owner, then retried).
    last_error: Option<String>,
}

/// Decayed usage per account, shared by the policies that read it and the
/// owner that charges it. Cloning shares the book.
#[derive(Debug, Clone)]
pub struct UsageBook(Arc<Mutex<Inner>>);

impl Default for UsageBook {
    fn default() -> Self {
        Self::in_memory(7.0 * 86_400.0)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn decay(value: f64, elapsed: f64, half_life: f64) -> f64 {
    if half_life.is_finite() && half_life > 0.0 && elapsed > 0.0 {
        value * (-elapsed / half_life).exp2()
    } else {
        value
    }
}

impl UsageBook {
    /// Usage kept in memory, decaying with `half_life_s` (seconds).
    pub fn in_memory(half_life_s: f64) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            half_life_s,
            usage: HashMap::new(),
            shares: HashMap::new(),
            default_shares: 1.0,
            db: None,
            epoch: 0,
            last_error: None,
        })))
    }

    /// Usage persisted in the SQLite file at `path` (created if missing):
    /// what was saved is loaded, decayed by the wall-clock time since.
    pub fn open(path: &Path, half_life_s: f64, now: f64) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        }
        let target = || format!("usage database {}", path.display());
        let conn = Connection::open(path).map_err(|e| Error::db(target(), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| Error::db(target(), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS fair_share_usage (
                 account TEXT PRIMARY KEY,
                 usage REAL NOT NULL,
                 saved_unix REAL NOT NULL
             );",
        )
        .map_err(|e| Error::db(target(), e))?;
        let mut usage = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT account, usage, saved_unix FROM fair_share_usage")
                .map_err(|e| Error::db(target(), e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, f64>(2)?,
                    ))
                })
                .map_err(|e| Error::db(target(), e))?;
            let wall = unix_now();
            for row in rows {
                let (account, value, saved) = row.map_err(|e| Error::db(target(), e))?;
                if value.is_finite() && value >= 0.0 {
                    let v = decay(value, wall - saved, half_life_s);
                    usage.insert(Arc::from(account.as_str()), (v, now));
                }
            }
        }
        let book = Self::in_memory(half_life_s);
        {
            let mut inner = book.lock();
            inner.usage = usage;
            inner.db = Some((path.to_path_buf(), conn));
        }
        Ok(book)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a whole insert or assignment: a panic elsewhere
        // cannot leave the book half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn half_life_s(&self) -> f64 {
        self.lock().half_life_s
    }

    /// Sets an account's shares (default 1 each).
    pub fn set_shares(&self, account: &str, shares: f64) -> Result<()> {
        crate::error::finite_in("shares", shares, 0.0, f64::MAX)?;
        let mut inner = self.lock();
        inner.shares.insert(Arc::from(account), shares);
        inner.epoch += 1;
        Ok(())
    }

    /// The account's usage decayed to `now`.
    pub fn usage(&self, account: &str, now: f64) -> f64 {
        let inner = self.lock();
        inner
            .usage
            .get(account)
            .map_or(0.0, |&(v, at)| decay(v, now - at, inner.half_life_s))
    }

    /// Adds `amount` (resource-seconds) to `account` and saves it. A failed
    /// save is kept in `take_error` and retried at the next charge; the
    /// usage in memory is right either way.
    pub fn charge(&self, account: &str, amount: f64, now: f64) {
        if !(amount.is_finite() && amount > 0.0) {
            return;
        }
        let mut inner = self.lock();
        let half_life = inner.half_life_s;
        let entry = inner.usage.entry(Arc::from(account)).or_insert((0.0, now));
        entry.0 = decay(entry.0, now - entry.1, half_life) + amount;
        entry.1 = now;
        inner.epoch += 1;
        let snapshot: Vec<(Arc<str>, f64)> = if inner.db.is_some() {
            inner
                .usage
                .iter()
                .map(|(a, &(v, at))| (a.clone(), decay(v, now - at, half_life)))
                .collect()
        } else {
            Vec::new()
        };
        if let Some((path, conn)) = inner.db.as_mut() {
            let result = save(conn, &snapshot);
            let problem = result
                .err()
                .map(|e| format!("cannot save fair-share usage to {}: {e}", path.display()));
            inner.last_error = problem;
        }
    }

    /// The last persistence failure, if any (cleared by a later success).
    pub fn take_error(&self) -> Option<String> {
        self.lock().last_error.take()
    }

    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// `(S, U)`: the account's normalized shares and usage at `now`.
    pub fn normalized(&self, account: &str, now: f64) -> (f64, f64) {
        let inner = self.lock();
        let h = inner.half_life_s;
        let total_usage: f64 = inner
            .usage
            .values()
            .map(|&(v, at)| decay(v, now - at, h))
            .sum();
        let mine = inner
            .usage
            .get(account)
            .map_or(0.0, |&(v, at)| decay(v, now - at, h));
        let shares_of = |a: &str| inner.shares.get(a).copied().unwrap_or(inner.default_shares);
        // Accounts known: with shares set or with usage, and this one.
        let mut total_shares: f64 = inner.shares.values().sum();
        for a in inner.usage.keys() {
            if !inner.shares.contains_key(a) {
                total_shares += inner.default_shares;
            }
        }
        if !inner.shares.contains_key(account) && !inner.usage.contains_key(account) {
            total_shares += inner.default_shares;
        }
        let s = if total_shares > 0.0 {
            shares_of(account) / total_shares
        } else {
            0.0
        };
        let u = if total_usage > 0.0 {
            mine / total_usage
        } else {
            0.0
        };
        (s, u)
    }
}

fn save(conn: &mut Connection, rows: &[(Arc<str>, f64)]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO fair_share_usage (account, usage, saved_unix) VALUES (?1, ?2, ?3)
             ON CONFLICT(account) DO UPDATE SET usage = excluded.usage, saved_unix = excluded.saved_unix",
        )?;
        let wall = unix_now();
        for (account, usage) in rows {
            stmt.execute(params![account.as_ref(), usage, wall])?;
        }
    }
    tx.commit()
}

/// Slurm's classic fair-share factor `2^(−U/S)` (0 shares: 0).
pub fn factor(normalized_shares: f64, normalized_usage: f64) -> f64 {
    if normalized_shares > 0.0 {
        (-normalized_usage / normalized_shares).exp2()
    } else {
        0.0
    }
}

/// Orders by fair-share factor, highest first; ties by arrival. Each job's
/// end charges its account `seconds × size`.
#[derive(Debug, Clone)]
pub struct FairShare {
    usage: UsageBook,
    by: ShareKey,
}

impl FairShare {
    pub fn new(usage: UsageBook, by: ShareKey) -> Self {
        Self { usage, by }
    }

    pub fn with_key(mut self, by: ShareKey) -> Self {
        self.by = by;
        self
    }

    pub fn usage(&self) -> &UsageBook {
        &self.usage
    }

    pub fn key_kind(&self) -> ShareKey {
        self.by
    }

    /// The job's account's factor at `now`.
    pub fn factor(&self, job: &JobInfo, now: f64) -> f64 {
        let (s, u) = self.usage.normalized(&self.by.account(job), now);
        factor(s, u)
    }
}

impl Policy for FairShare {
    fn name(&self) -> &str {
        "fair_share"
    }
    fn key(&self, job: &JobInfo, ctx: &Ctx) -> f64 {
        -self.factor(job, ctx.now)
    }
    /// The key is the account's factor, the same for all its jobs (arrival
    /// order within an account): a charge re-keys one entry per account.
    fn key_scope(&self, job: &JobInfo) -> KeyScope {
        KeyScope::Shared(self.by.account(job))
    }
    fn epoch(&self) -> u64 {
        self.usage.epoch()
    }
    fn on_finish(&mut self, job: &JobInfo, ran_s: f64, now: f64) {
        self.usage
            .charge(&self.by.account(job), ran_s * job.size.max(1.0), now);
    }
    fn describe(&self, job: &JobInfo, ctx: &Ctx) -> String {
        format!(
            "fair-share factor {:.2} for {} {}",
            self.factor(job, ctx.now),
            self.by.label(),
            self.by.account(job)
        )
    }
    fn should_preempt(&self, _running: &[RunningJob], _new: &JobInfo, _needed: f64) -> Vec<u64> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_factor_values() {
        // No usage: 1; usage equal to the share: 0.5; twice the share: 0.25.
        assert_eq!(factor(0.25, 0.0), 1.0);
        assert!((factor(0.25, 0.25) - 0.5).abs() < 1e-12);
        assert!((factor(0.25, 0.5) - 0.25).abs() < 1e-12);
        assert_eq!(factor(0.0, 0.3), 0.0);
    }

    /// The classic documentation's formula on a flat tree: four accounts
    /// with equal shares (S = 0.25 each); one has used half of all usage
    /// (U/S = 2 → F = 0.25), two a quarter each (U/S = 1 → 0.5), one
    /// nothing (F = 1).
    #[test]
    fn worked_example_four_equal_accounts() {
        let book = UsageBook::in_memory(f64::INFINITY);
        for a in ["a", "b", "c", "d"] {
            book.set_shares(a, 10.0).unwrap_or_else(|e| panic!("{e}"));
        }
        book.charge("a", 500.0, 0.0);
        book.charge("b", 250.0, 0.0);
        book.charge("c", 250.0, 0.0);
        let f = |a: &str| {
            let (s, u) = book.normalized(a, 0.0);
            assert!((s - 0.25).abs() < 1e-12);
            factor(s, u)
        };
        assert!((f("a") - 0.25).abs() < 1e-12);
        assert!((f("b") - 0.5).abs() < 1e-12);
        assert!((f("c") - 0.5).abs() < 1e-12);
        assert_eq!(f("d"), 1.0);
    }

    #[test]
    fn usage_decays_with_the_half_life() {
        let book = UsageBook::in_memory(10.0);
        book.charge("u", 100.0, 0.0);
        assert!((book.usage("u", 10.0) - 50.0).abs() < 1e-9);
        assert!((book.usage("u", 20.0) - 25.0).abs() < 1e-9);
    }

    #[test]
    fn heavier_users_go_later_and_charges_bump_the_epoch() {
        let book = UsageBook::in_memory(3600.0);
        let mut fs = FairShare::new(book.clone(), ShareKey::User);
        let mk = |id, user: &str| {
            let mut j = JobInfo::new(id, "p", id as f64);
            j.user = Some(Arc::from(user));
            j
        };
        let e0 = fs.epoch();
        fs.on_finish(&mk(1, "alice"), 100.0, 0.0);
        assert!(fs.epoch() > e0);
        let jobs = [mk(1, "alice"), mk(2, "bob")];
        let order = super::super::order(&fs, &jobs, &Ctx { now: 1.0 });
        assert_eq!(order, vec![1, 0]);
        assert!(fs
            .describe(&jobs[0], &Ctx { now: 1.0 })
            .contains("user alice"));
    }

    #[test]
    fn usage_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("ps-usage-{}", std::process::id()));
        let path = dir.join("usage.db");
        let _ = std::fs::remove_file(&path);
        {
            let book = UsageBook::open(&path, 86_400.0, 0.0).unwrap_or_else(|e| panic!("{e}"));
            book.charge("alice", 42.0, 0.0);
            assert!(book.take_error().is_none());
        }
        let book = UsageBook::open(&path, 86_400.0, 5.0).unwrap_or_else(|e| panic!("{e}"));
        let u = book.usage("alice", 5.0);
        assert!(u > 41.9 && u <= 42.0, "{u}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

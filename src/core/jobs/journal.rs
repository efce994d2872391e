//! The job journal: every submission and transition in SQLite (WAL), in
//! batched commits. Writes are buffered and committed together when
//! [`Journal::flush`] is called (the job table does so after every write
//! under [`super::queue::Durability::Sync`]; the front end's writer thread
//! every `flush_interval` under `Batched`) or when the buffer reaches its
//! batch size, so a crash loses at most the writes since the last commit.
//!
//! Also here: the durable id counter (ids are reserved in blocks of
//! [`ID_BLOCK`], committed before any id of a block is handed out, so an id
//! acknowledged before a crash is never given to another job after it),
//! queue settings, and the journal's one owner ([`Journal::open_owned`]:
//! a second scheduler on a journal a live one owns is refused; a dead
//! owner, told apart from a later process with its pid by its start time,
//! is taken over).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::recovery::ProcessRecord;
use super::{Job, JobError, JobState, Resources};
use crate::policy::JobInfo;
use crate::reserve::shared::Owner;

/// Ids reserved (durably) at a time.
pub const ID_BLOCK: u64 = 1024;

/// Ownership tokens of the journals this process has open (a journal whose
/// owner row names this pid with a token not in here was left by an earlier
/// incarnation with the same pid, e.g. after an exec, and is stale).
static LIVE_TOKENS: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

fn live_tokens() -> std::sync::MutexGuard<'static, Option<HashSet<u64>>> {
    // A set of integers: a panic cannot leave it half-changed.
    LIVE_TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // SQLite integers are signed: keep it positive.
    h.finish() >> 1
}

/// Who owns a journal (its owner row).
#[derive(Debug, Clone, PartialEq)]
pub struct JournalOwner {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
    pub token: u64,
    /// Unix seconds it took the journal.
    pub since: f64,
}

/// The owner row (None: nobody owns the journal).
fn read_owner(conn: &Connection) -> rusqlite::Result<Option<JournalOwner>> {
    conn.query_row(
        "SELECT pid, start_ticks, token, since_unix FROM owner WHERE id = 1",
        [],
        |r| {
            Ok(JournalOwner {
                pid: r.get::<_, i64>(0)?.clamp(0, i64::from(u32::MAX)) as u32,
                start: r.get::<_, i64>(1)?.max(0) as u64,
                token: r.get::<_, i64>(2)?.max(0) as u64,
                since: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Whether `owner` (as recorded) is a process that runs now and is not
/// this process's own leftover.
fn owner_live(owner: &JournalOwner) -> bool {
    let running = Owner {
        pid: owner.pid,
        start: owner.start,
    }
    .alive();
    if !running {
        return false;
    }
    if owner.pid == std::process::id() {
        return live_tokens()
            .as_ref()
            .is_some_and(|t| t.contains(&owner.token));
    }
    true
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One history row.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub seq: i64,
    pub job_id: u64,
    /// Unix seconds.
    pub at: f64,
    pub from: Option<String>,
    pub to: String,
    pub call: String,
    pub reason: Option<String>,
}

#[derive(Debug)]
enum Op {
    Upsert(Box<Row>),
    History {
        job_id: u64,
        at: f64,
        from: Option<JobState>,
        to: JobState,
        call: String,
        reason: Option<String>,
    },
    /// A finished job dropped by retention: its row and its history.
    Delete(u64),
    /// The ids from this one on were never handed out (a clean close gives
    /// the rest of its reserved block back).
    NextId(u64),
    Queue {
        name: String,
        priority: i64,
        max_concurrent_jobs: Option<u32>,
    },
}

/// A job as stored (times in Unix seconds, so they survive a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: u64,
    pub name: String,
    pub priority: f64,
    pub user: Option<String>,
    pub project: Option<String>,
    pub queue: String,
    pub submitted_unix: f64,
    pub deadline_unix: Option<f64>,
    pub estimated_duration: Option<f64>,
    pub cost_per_second: Option<f64>,
    pub resources: Resources,
    pub kind: String,
    pub payload: String,
    pub max_retries: u32,
    pub state: JobState,
    pub attempts: u32,
    pub preemptions: u32,
    pub retries: u32,
    pub error: Option<String>,
    pub ran_s: f64,
    /// Unix seconds of the last start and of the end (None while it has none).
    pub started_unix: Option<f64>,
    pub ended_unix: Option<f64>,
}

impl Row {
    /// `job` as stored; `offset` turns its clock seconds into Unix seconds.
    pub fn of(job: &Job, offset: f64) -> Self {
        let i = &job.info;
        Self {
            id: i.id,
            name: i.name.to_string(),
            priority: i.priority,
            user: i.user.as_deref().map(str::to_owned),
            project: i.project.as_deref().map(str::to_owned),
            queue: job.queue.to_string(),
            submitted_unix: i.submitted + offset,
            deadline_unix: i.deadline.map(|d| d + offset),
            estimated_duration: i.estimated_duration,
            cost_per_second: job.cost_per_second,
            resources: job.resources,
            kind: job.kind.to_string(),
            payload: job.payload.to_string(),
            max_retries: job.max_retries,
            state: job.state,
            attempts: job.attempts,
            preemptions: job.preemptions,
            retries: job.retries,
            error: job.error.clone(),
            ran_s: job.ran_s,
            started_unix: job.started.map(|t| t + offset),
            ended_unix: job.ended.map(|t| t + offset),
        }
    }

    /// The job back in clock seconds (`offset` as in [`Row::of`]).
    pub fn into_job(self, offset: f64) -> Job {
        let mut info = JobInfo::new(self.id, &self.name, self.submitted_unix - offset);
        info.priority = self.priority;
        info.user = self.user.as_deref().map(Arc::from);
        info.project = self.project.as_deref().map(Arc::from);
        info.deadline = self.deadline_unix.map(|d| d - offset);
        info.estimated_duration = self.estimated_duration;
        info.size = f64::from(self.resources.gpu_count.max(1));
        Job {
            info,
            queue: Arc::from(self.queue.as_str()),
            cost_per_second: self.cost_per_second,
            resources: self.resources,
            kind: Arc::from(self.kind.as_str()),
            payload: Arc::from(self.payload.as_str()),
            max_retries: self.max_retries,
            state: self.state,
            attempts: self.attempts,
            preemptions: self.preemptions,
            retries: self.retries,
            error: self.error,
            progress: if self.state == JobState::Completed {
                1.0
            } else {
                0.0
            },
            progress_message: None,
            started: self.started_unix.map(|t| t - offset),
            ended: self.ended_unix.map(|t| t - offset),
            ran_s: self.ran_s,
        }
    }
}

/// The SQLite journal of one job scheduler.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None` only while dropping in a forked child (the parent's connection
    /// is left alone there).
    conn: Option<Connection>,
    pending: Vec<Op>,
    batch: usize,
    /// Why the last commit at the batch threshold failed (the writes stay
    /// buffered; the next explicit [`Journal::flush`] retries and reports).
    failed: Option<String>,
    /// The process that opened it: a forked child never writes through the
    /// parent's connection.
    pid: u32,
    /// This journal's ownership token, while it owns the file.
    token: Option<u64>,
    /// The dead owner taken over at open (for the front end's log).
    took_over: Option<JournalOwner>,
    closed: bool,
}

/// Columns added after the first layout (added to older journals at open).
const ADDED_JOB_COLUMNS: [(&str, &str); 2] = [("started_unix", "REAL"), ("ended_unix", "REAL")];

impl Journal {
    /// Opens (creating) the journal at `path` to read it and write through
    /// it without owning it (viewers; tests); `batch`: commit once this many
    /// writes are buffered (at least 1).
    pub fn open(path: &Path, batch: usize) -> Result<Self, JobError> {
        let err = |e: &dyn std::fmt::Display| JobError::Journal {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| err(&e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS jobs (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 priority REAL NOT NULL,
                 user TEXT,
                 project TEXT,
                 queue TEXT NOT NULL,
                 submitted_unix REAL NOT NULL,
                 deadline_unix REAL,
                 estimated_duration REAL,
                 cost_per_second REAL,
                 cpu_cores REAL NOT NULL,
                 memory_mb REAL NOT NULL,
                 gpu_count INTEGER NOT NULL,
                 vram_mb REAL NOT NULL,
                 kind TEXT NOT NULL,
                 payload TEXT NOT NULL,
                 max_retries INTEGER NOT NULL,
                 state TEXT NOT NULL,
                 attempts INTEGER NOT NULL,
                 preemptions INTEGER NOT NULL,
                 retries INTEGER NOT NULL,
                 error TEXT,
                 ran_s REAL NOT NULL
             );
             CREATE TABLE IF NOT EXISTS history (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 job_id INTEGER NOT NULL,
                 at_unix REAL NOT NULL,
                 from_state TEXT,
                 to_state TEXT NOT NULL,
                 call TEXT NOT NULL,
                 reason TEXT
             );
             CREATE INDEX IF NOT EXISTS history_job ON history(job_id);",
        )
        .map_err(|e| err(&e))?;
        Self::migrate(&conn).map_err(|e| err(&e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Some(conn),
            pending: Vec::new(),
            batch: batch.max(1),
            failed: None,
            pid: std::process::id(),
            token: None,
            took_over: None,
            closed: false,
        })
    }

    /// Additive schema changes: new columns of `jobs`, and the tables of the
    /// id counter, the queues, the owner and the process records.
    fn migrate(conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS queues (
                 name TEXT PRIMARY KEY,
                 priority INTEGER NOT NULL,
                 max_concurrent_jobs INTEGER
             );
             CREATE TABLE IF NOT EXISTS owner (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 pid INTEGER NOT NULL,
                 start_ticks INTEGER NOT NULL,
                 token INTEGER NOT NULL,
                 since_unix REAL NOT NULL
             );",
        )?;
        let have = Self::columns(conn, "jobs")?;
        for (col, ty) in ADDED_JOB_COLUMNS {
            if !have.contains(col) {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {col} {ty}"))?;
            }
        }
        conn.execute_batch(PROCESS_TABLES)?;
        Ok(())
    }

    /// The owner's schema changes (in its claim's transaction, never by a
    /// viewer: a scheduler of the earlier layout may still be writing):
    /// the process records' owner columns of that layout go.
    fn migrate_owned(conn: &Connection) -> rusqlite::Result<()> {
        let process_columns = Self::columns(conn, "processes")?;
        for col in DROPPED_PROCESS_COLUMNS {
            if process_columns.contains(col) {
                conn.execute_batch(&format!("ALTER TABLE processes DROP COLUMN {col}"))?;
            }
        }
        Ok(())
    }

    /// The column names of `table`.
    fn columns(conn: &Connection, table: &str) -> rusqlite::Result<HashSet<String>> {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let names = stmt.query_map([table], |r| r.get::<_, String>(0))?;
        names.collect()
    }

    /// Opens the journal as its one owner: refused (naming the path and the
    /// owner's pid) while another live scheduler, in this process or
    /// another, owns it; a dead owner's claim is taken over
    /// ([`Journal::took_over`] says whose).
    pub fn open_owned(path: &Path, batch: usize) -> Result<Self, JobError> {
        let mut j = Self::open(path, batch)?;
        let me = Owner::current()
            .ok_or_else(|| j.err("cannot read this process's start time from /proc/self/stat"))?;
        let token = new_token();
        let path_text = path.display().to_string();
        let conn = j.conn_mut()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| JobError::Journal {
                path: path_text.clone(),
                message: e.to_string(),
            })?;
        let sql_err = |e: rusqlite::Error| JobError::Journal {
            path: path_text.clone(),
            message: e.to_string(),
        };
        let current = read_owner(&tx).map_err(sql_err)?;
        if let Some(owner) = &current {
            if owner_live(owner) {
                let name = Owner {
                    pid: owner.pid,
                    start: owner.start,
                }
                .name();
                let whose = if owner.pid == me.pid {
                    "another JobScheduler of this process (close() it first)".to_owned()
                } else {
                    format!("a running scheduler, pid {} ({name})", owner.pid)
                };
                return Err(JobError::Journal {
                    path: path_text.clone(),
                    message: format!(
                        "is owned by {whose}, pid {} since {:.0} (Unix seconds); one scheduler per journal: stop that one or give this one another journal path",
                        owner.pid, owner.since
                    ),
                });
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO owner (id, pid, start_ticks, token, since_unix) VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                i64::from(me.pid),
                me.start.min(i64::MAX as u64) as i64,
                token as i64,
                unix_now()
            ],
        )
        .map_err(sql_err)?;
        Self::migrate_owned(&tx).map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        live_tokens().get_or_insert_with(HashSet::new).insert(token);
        j.token = Some(token);
        j.took_over = current;
        Ok(j)
    }

    /// The dead owner whose claim [`Journal::open_owned`] took over.
    pub fn took_over(&self) -> Option<&JournalOwner> {
        self.took_over.as_ref()
    }

    /// Whether this journal owns its file.
    pub fn owned(&self) -> bool {
        self.token.is_some()
    }

    /// The owner row as recorded (None: nobody owns it).
    pub fn owner(&self) -> Result<Option<JournalOwner>, JobError> {
        read_owner(self.conn()?).map_err(|e| self.err(e))
    }

    /// Commits what is buffered and gives the file up (its owner row goes);
    /// writes after this are refused.
    pub fn close(&mut self) -> Result<(), JobError> {
        if self.closed {
            return Ok(());
        }
        self.flush()?;
        self.release();
        self.closed = true;
        Ok(())
    }

    fn release(&mut self) {
        if let Some(token) = self.token.take() {
            if let Some(set) = live_tokens().as_mut() {
                set.remove(&token);
            }
            if let Ok(conn) = self.conn() {
                let _ = conn.execute(
                    "DELETE FROM owner WHERE id = 1 AND token = ?1",
                    params![token as i64],
                );
            }
        }
    }

    fn conn(&self) -> Result<&Connection, JobError> {
        if self.pid != std::process::id() {
            return Err(self.err(format!(
                "it was opened by pid {}; a forked child (pid {}) must open its own",
                self.pid,
                std::process::id()
            )));
        }
        self.conn.as_ref().ok_or_else(|| self.err("it is closed"))
    }

    fn conn_mut(&mut self) -> Result<&mut Connection, JobError> {
        self.conn()?;
        let path = self.path.display().to_string();
        self.conn.as_mut().ok_or(JobError::Journal {
            path,
            message: "it is closed".into(),
        })
    }

    /// The first id never handed out: past every stored job and every
    /// reserved block.
    pub fn next_free_id(&self) -> Result<u64, JobError> {
        let conn = self.conn()?;
        let max_id: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM jobs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let reserved: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let from_jobs = max_id.map_or(1, |m| m.max(0) as u64 + 1);
        Ok(from_jobs.max(reserved.map_or(1, |r| r.max(1) as u64)))
    }

    /// Commits every buffered write and the reservation of ids up to
    /// (excluding) `upto`, in one transaction.
    pub fn reserve_ids(&mut self, upto: u64) -> Result<(), JobError> {
        self.commit(Some(upto))
    }

    /// Buffers giving back the reserved ids from `next` on (none of them
    /// was handed out): a clean shutdown leaves no gap in the numbering.
    pub fn give_back_ids(&mut self, next: u64) -> Result<(), JobError> {
        self.writable()?;
        self.pending.push(Op::NextId(next));
        Ok(())
    }

    /// Buffers a queue's settings.
    pub fn queue(
        &mut self,
        name: &str,
        priority: i64,
        max_concurrent_jobs: Option<u32>,
    ) -> Result<(), JobError> {
        self.writable()?;
        self.pending.push(Op::Queue {
            name: name.to_owned(),
            priority,
            max_concurrent_jobs,
        });
        self.maybe_flush()
    }

    /// Buffers the removal of a finished job (its row and its history).
    pub fn delete(&mut self, job_id: u64) -> Result<(), JobError> {
        self.writable()?;
        self.pending.push(Op::Delete(job_id));
        self.maybe_flush()
    }

    /// Stored queue settings: `(name, priority, max_concurrent_jobs)`.
    pub fn load_queues(&self) -> Result<Vec<(String, i64, Option<u32>)>, JobError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT name, priority, max_concurrent_jobs FROM queues ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let max: Option<i64> = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    max.map(|m| m.clamp(0, i64::from(u32::MAX)) as u32),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    fn writable(&self) -> Result<(), JobError> {
        if self.closed {
            return Err(self.err("it is closed (the scheduler was closed)"));
        }
        if self.token.is_some() && self.pid != std::process::id() {
            return Err(self.err(format!(
                "it is owned by the scheduler of pid {}; a forked child (pid {}) cannot write to it (create its own JobScheduler with another journal)",
                self.pid,
                std::process::id()
            )));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> JobError {
        JobError::Journal {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Buffers the job's whole record (insert or update).
    pub fn upsert(&mut self, row: Row) -> Result<(), JobError> {
        self.writable()?;
        self.pending.push(Op::Upsert(Box::new(row)));
        self.maybe_flush()
    }

    /// Buffers a history row (`from = None`: the submission).
    pub fn history(
        &mut self,
        job_id: u64,
        from: Option<JobState>,
        to: JobState,
        call: &str,
        reason: Option<&str>,
    ) -> Result<(), JobError> {
        self.writable()?;
        self.pending.push(Op::History {
            job_id,
            at: unix_now(),
            from,
            to,
            call: call.to_owned(),
            reason: reason.map(str::to_owned),
        });
        self.maybe_flush()
    }

    /// Commits at the batch threshold. A failure there does not fail the
    /// write that triggered it (it is buffered, the record in memory is
    /// right): it is kept for the next explicit flush to retry and report.
    fn maybe_flush(&mut self) -> Result<(), JobError> {
        if self.pending.len() >= self.batch {
            if let Err(e) = self.flush() {
                self.failed = Some(e.to_string());
            }
        }
        Ok(())
    }

    /// Why the last threshold commit failed, if it did (cleared by a
    /// successful flush).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Writes not yet committed.
    pub fn unflushed(&self) -> usize {
        self.pending.len()
    }

    /// Drops the buffered writes from the `mark`-th on (a submission that
    /// is not kept).
    pub fn discard_from(&mut self, mark: usize) {
        self.pending.truncate(mark);
    }

    /// Commits every buffered write in one transaction. On failure the
    /// writes stay buffered (a later flush retries them).
    pub fn flush(&mut self) -> Result<(), JobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.commit(None)
    }

    fn commit(&mut self, reserve: Option<u64>) -> Result<(), JobError> {
        let path = self.path.display().to_string();
        let err = |e: rusqlite::Error| JobError::Journal {
            path: path.clone(),
            message: e.to_string(),
        };
        let pending = std::mem::take(&mut self.pending);
        let result = (|| -> Result<(), JobError> {
            let conn = self.conn_mut()?;
            let tx = conn.transaction().map_err(err)?;
            Self::write(&tx, &pending, reserve).map_err(err)?;
            tx.commit().map_err(err)
        })();
        match result {
            Ok(()) => {
                self.failed = None;
                Ok(())
            }
            Err(e) => {
                // Kept for a retry, before anything buffered since.
                let mut later = std::mem::replace(&mut self.pending, pending);
                self.pending.append(&mut later);
                Err(e)
            }
        }
    }

    fn write(
        tx: &rusqlite::Transaction<'_>,
        ops: &[Op],
        reserve: Option<u64>,
    ) -> rusqlite::Result<()> {
        let mut upsert = tx.prepare_cached(
            "INSERT OR REPLACE INTO jobs (id, name, priority, user, project, queue, submitted_unix,
                 deadline_unix, estimated_duration, cost_per_second, cpu_cores, memory_mb,
                 gpu_count, vram_mb, kind, payload, max_retries, state, attempts, preemptions,
                 retries, error, ran_s, started_unix, ended_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
        )?;
        let mut hist = tx.prepare_cached(
            "INSERT INTO history (job_id, at_unix, from_state, to_state, call, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for op in ops {
            match op {
                Op::Upsert(r) => {
                    upsert.execute(params![
                        r.id as i64,
                        r.name,
                        r.priority,
                        r.user,
                        r.project,
                        r.queue,
                        r.submitted_unix,
                        r.deadline_unix,
                        r.estimated_duration,
                        r.cost_per_second,
                        r.resources.cpu_cores,
                        r.resources.memory_mb,
                        r.resources.gpu_count,
                        r.resources.vram_mb,
                        r.kind,
                        r.payload,
                        r.max_retries,
                        r.state.name(),
                        r.attempts,
                        r.preemptions,
                        r.retries,
                        r.error,
                        r.ran_s,
                        r.started_unix,
                        r.ended_unix,
                    ])?;
                }
                Op::History {
                    job_id,
                    at,
                    from,
                    to,
                    call,
                    reason,
                } => {
                    hist.execute(params![
                        *job_id as i64,
                        at,
                        from.map(JobState::name),
                        to.name(),
                        call,
                        reason,
                    ])?;
                }
                Op::Delete(id) => {
                    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                        .execute(params![*id as i64])?;
                    tx.prepare_cached("DELETE FROM history WHERE job_id = ?1")?
                        .execute(params![*id as i64])?;
                }
                Op::NextId(next) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_id', ?1)",
                    )?
                    .execute(params![(*next).min(i64::MAX as u64) as i64])?;
                }
                Op::Queue {
                    name,
                    priority,
                    max_concurrent_jobs,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO queues (name, priority, max_concurrent_jobs) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![name, priority, max_concurrent_jobs])?;
                }
            }
        }
        if let Some(upto) = reserve {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('next_id', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            )?
            .execute(params![upto.min(i64::MAX as u64) as i64])?;
        }
        Ok(())
    }

    /// Every stored job, by id.
    pub fn load(&self) -> Result<Vec<Row>, JobError> {
        let mut stmt = self
            .conn()?
            .prepare(
                "SELECT id, name, priority, user, project, queue, submitted_unix, deadline_unix,
                        estimated_duration, cost_per_second, cpu_cores, memory_mb, gpu_count,
                        vram_mb, kind, payload, max_retries, state, attempts, preemptions,
                        retries, error, ran_s, started_unix, ended_unix
                 FROM jobs ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let state: String = r.get(17)?;
                Ok((
                    state,
                    Row {
                        id: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        priority: r.get(2)?,
                        user: r.get(3)?,
                        project: r.get(4)?,
                        queue: r.get(5)?,
                        submitted_unix: r.get(6)?,
                        deadline_unix: r.get(7)?,
                        estimated_duration: r.get(8)?,
                        cost_per_second: r.get(9)?,
                        resources: Resources {
                            cpu_cores: r.get(10)?,
                            memory_mb: r.get(11)?,
                            gpu_count: r.get(12)?,
                            vram_mb: r.get(13)?,
                        },
                        kind: r.get(14)?,
                        payload: r.get(15)?,
                        max_retries: r.get(16)?,
                        state: JobState::Queued,
                        attempts: r.get(18)?,
                        preemptions: r.get(19)?,
                        retries: r.get(20)?,
                        error: r.get(21)?,
                        ran_s: r.get(22)?,
                        started_unix: r.get(23)?,
                        ended_unix: r.get(24)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, mut row) = row.map_err(|e| self.err(e))?;
            row.state = JobState::parse(&state).ok_or_else(|| {
                self.err(format!("job {} has an unknown state {state:?}", row.id))
            })?;
            out.push(row);
        }
        Ok(out)
    }

    /// History rows (of one job, or all), oldest first; `limit` newest kept.
    pub fn read_history(
        &self,
        job_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, JobError> {
        let sql = "SELECT seq, job_id, at_unix, from_state, to_state, call, reason FROM history
                   WHERE (?1 IS NULL OR job_id = ?1) ORDER BY seq DESC LIMIT ?2";
        let mut stmt = self.conn()?.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    job_id.map(|i| i as i64),
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| {
                    Ok(HistoryRow {
                        seq: r.get(0)?,
                        job_id: r.get::<_, i64>(1)? as u64,
                        at: r.get(2)?,
                        from: r.get(3)?,
                        to: r.get(4)?,
                        call: r.get(5)?,
                        reason: r.get(6)?,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        let mut out = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        out.reverse();
        Ok(out)
    }
}

/// The journal's process records (`recovery`): an additive table, written
/// at once (not buffered), so a process is on disk before it runs. Whose
/// they are is the journal's [owner](Journal::open_owned): one scheduler
/// writes them at a time, so every record a new owner finds at open was
/// left by an earlier incarnation.
const PROCESS_TABLES: &str = "CREATE TABLE IF NOT EXISTS processes (
         job_id INTEGER PRIMARY KEY,
         token TEXT NOT NULL,
         pid INTEGER,
         start_time INTEGER,
         pgid INTEGER,
         at_unix REAL NOT NULL
     );
     CREATE TABLE IF NOT EXISTS recovery_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );";

/// Columns of `processes` an earlier layout had (its own record of the
/// owning scheduler, now the `owner` table's): dropped when an owner opens it.
const DROPPED_PROCESS_COLUMNS: [&str; 2] = ["owner_pid", "owner_start"];

impl Journal {
    /// This journal's identity (random, made once and kept in the file):
    /// names its jobs' markers and quota holders.
    pub fn journal_id(&self) -> Result<String, JobError> {
        let conn = self.conn()?;
        let fresh = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            let a = h.finish();
            h.write_u64(a);
            format!("{a:016x}{:016x}", h.finish())
        };
        conn.execute(
            "INSERT OR IGNORE INTO recovery_meta (key, value) VALUES ('journal_id', ?1)",
            params![fresh],
        )
        .map_err(|e| self.err(e))?;
        conn.query_row(
            "SELECT value FROM recovery_meta WHERE key = 'journal_id'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// A process-record write, committed at once (never buffered: the
    /// writer thread's batches do not delay it). Refused once closed.
    fn process_write(&self, sql: &str, p: impl rusqlite::Params) -> Result<(), JobError> {
        self.writable()?;
        self.conn()?
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(p))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records (committed at once) that job `job_id` is about to be spawned
    /// (by this journal's owner), with its marker `token`.
    pub fn process_intent(&self, job_id: u64, token: &str) -> Result<(), JobError> {
        self.process_write(
            "INSERT OR REPLACE INTO processes (job_id, token, pid, start_time, pgid, at_unix)
             VALUES (?1, ?2, NULL, NULL, NULL, ?3)",
            params![job_id as i64, token, unix_now()],
        )
    }

    /// Records (committed at once) the spawned process of job `job_id`.
    pub fn process_spawned(
        &self,
        job_id: u64,
        pid: u32,
        start_time: u64,
        pgid: u32,
    ) -> Result<(), JobError> {
        self.process_write(
            "UPDATE processes SET pid = ?2, start_time = ?3, pgid = ?4 WHERE job_id = ?1",
            params![
                job_id as i64,
                pid,
                start_time.min(i64::MAX as u64) as i64,
                pgid
            ],
        )
    }

    /// Forgets job `job_id`'s process (it ended, or was killed), at once.
    pub fn process_ended(&self, job_id: u64) -> Result<(), JobError> {
        self.process_write(
            "DELETE FROM processes WHERE job_id = ?1",
            params![job_id as i64],
        )
    }

    /// Every process record, by job id.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>, JobError> {
        let mut stmt = self
            .conn()?
            .prepare("SELECT job_id, token, pid, start_time, pgid FROM processes ORDER BY job_id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ProcessRecord {
                    job_id: r.get::<_, i64>(0)?.max(0) as u64,
                    token: r.get(1)?,
                    pid: r.get(2)?,
                    start_time: r.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                    pgid: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

/// For tests that simulate a crash in-process (`mem::forget` of a journal):
/// forgets this process's live tokens, as a new process would not have them.
#[cfg(test)]
pub(crate) mod tests_support {
    pub fn forget_owner_token(token: u64) {
        if let Some(set) = super::live_tokens().as_mut() {
            set.remove(&token);
        }
    }
}

impl Drop for Journal {
    /// Commits what is buffered and gives ownership up. In a forked child
    /// nothing is touched: the connection and the claim are the parent's.
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            std::mem::forget(self.conn.take());
            return;
        }
        if !self.closed {
            let _ = self.flush();
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobSpec;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ps-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("jobs.db")
    }

    #[test]
    fn rows_round_trip_and_batches_commit() {
        let path = tmp("rt");
        let mut j = Journal::open(&path, 3).expect("open");
        let mut q = crate::jobs::queue::JobQueue::new(
            crate::policy::by_name("fifo", None).expect("fifo"),
            None,
        );
        let id = q.submit(JobSpec::new("a"), 1.0).expect("submit");
        let row = Row::of(q.get(id).expect("job"), 100.0);
        j.upsert(row.clone()).expect("upsert");
        j.history(id, None, JobState::Queued, "submit_job", None)
            .expect("hist");
        assert_eq!(j.unflushed(), 2);
        let other = Journal::open(&path, 1).expect("reader");
        assert!(other.load().expect("load").is_empty(), "not committed yet");
        j.flush().expect("flush");
        let back = other.load().expect("load");
        assert_eq!(back, vec![row.clone()]);
        assert_eq!(back[0].clone().into_job(100.0).info.submitted, 1.0);
        let h = other.read_history(Some(id), 10).expect("history");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].to, "QUEUED");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_failed_threshold_commit_keeps_the_writes_and_reports_at_flush() {
        let path = tmp("fail");
        let mut j = Journal::open(&path, 1).expect("open");
        let other = Connection::open(&path).expect("other");
        other.execute_batch("DROP TABLE history").expect("drop");
        assert!(j
            .history(1, None, JobState::Queued, "submit_job", None)
            .is_ok());
        assert!(j.failed().is_some_and(|e| e.contains("history")));
        assert_eq!(j.unflushed(), 1, "kept for a retry");
        assert!(j.flush().is_err());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn process_records_are_committed_at_once_and_forgotten() {
        let path = tmp("proc");
        let j = Journal::open(&path, 1000).expect("open");
        let id = j.journal_id().expect("id");
        assert_eq!(id.len(), 32);
        let other = Journal::open(&path, 1).expect("other");
        assert_eq!(other.journal_id().expect("id"), id, "kept in the file");
        j.process_intent(3, "t:3").expect("intent");
        let back = other.processes().expect("read");
        assert_eq!(back.len(), 1, "visible to another connection: committed");
        assert_eq!(back[0].pid, None);
        j.process_spawned(3, 400, 401, 400).expect("spawned");
        let r = &other.processes().expect("read")[0];
        assert_eq!(
            (r.pid, r.start_time, r.pgid),
            (Some(400), Some(401), Some(400))
        );
        j.process_ended(3).expect("ended");
        assert!(other.processes().expect("read").is_empty());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn process_records_commit_at_once_beside_buffered_writes_and_stop_at_close() {
        let path = tmp("proc-batched");
        let mut j = Journal::open_owned(&path, 1000).expect("open");
        j.history(1, None, JobState::Queued, "submit_job", None)
            .expect("buffered");
        j.process_intent(1, "t:1").expect("intent");
        let other = Journal::open(&path, 1).expect("other");
        assert_eq!(other.processes().expect("read").len(), 1, "committed");
        assert!(
            other.read_history(None, 10).expect("h").is_empty(),
            "still buffered"
        );
        assert_eq!(j.unflushed(), 1);
        j.close().expect("close");
        assert!(
            j.process_ended(1).is_err(),
            "a closed journal writes nothing"
        );
        assert_eq!(other.processes().expect("read").len(), 1);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn an_earlier_layouts_owner_columns_of_process_records_are_dropped() {
        let path = tmp("proc-old");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        let old = Connection::open(&path).expect("old");
        old.execute_batch(
            "CREATE TABLE processes (job_id INTEGER PRIMARY KEY, token TEXT NOT NULL,
                 pid INTEGER, start_time INTEGER, pgid INTEGER, owner_pid INTEGER NOT NULL,
                 owner_start INTEGER NOT NULL, at_unix REAL NOT NULL);
             INSERT INTO processes VALUES (7, 'j:7', 70, 71, 70, 5, 6, 0.0);",
        )
        .expect("old layout");
        drop(old);
        let viewer = Journal::open(&path, 1).expect("viewer");
        let r = viewer.processes().expect("read");
        assert_eq!(
            (r[0].job_id, r[0].pid, r[0].start_time),
            (7, Some(70), Some(71))
        );
        let columns =
            |j: &Journal| Journal::columns(j.conn().expect("conn"), "processes").expect("columns");
        assert!(
            columns(&viewer).contains("owner_pid"),
            "a viewer changes no layout"
        );
        let j = Journal::open_owned(&path, 1).expect("owner");
        assert!(
            !columns(&j).contains("owner_pid"),
            "the owner's claim drops them"
        );
        j.process_intent(8, "j:8")
            .expect("written without the owner columns");
        assert_eq!(j.processes().expect("read").len(), 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}

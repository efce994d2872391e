//! The job journal: every submission and transition in SQLite (WAL), in
//! batched commits. Writes are buffered and committed together when
//! [`Journal::flush`] is called (the front end does so at every dispatch
//! and on a short timer) or when the buffer reaches its batch size, so a
//! crash loses at most the writes since the last commit.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use super::recovery::ProcessRecord;
use super::{Job, JobError, JobState, Resources};
use crate::policy::JobInfo;
use std::sync::Arc;

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
            progress: 0.0,
            progress_message: None,
            started: None,
            ended: None,
            ran_s: self.ran_s,
        }
    }
}

/// The SQLite journal of one job scheduler.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    conn: Connection,
    pending: Vec<Op>,
    batch: usize,
    /// Why the last commit at the batch threshold failed (the writes stay
    /// buffered; the next explicit [`Journal::flush`] retries and reports).
    failed: Option<String>,
}

impl Journal {
    /// Opens (creating) the journal at `path`; `batch`: commit once this
    /// many writes are buffered (at least 1).
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
        Ok(Self {
            path: path.to_path_buf(),
            conn,
            pending: Vec::new(),
            batch: batch.max(1),
            failed: None,
        })
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

    /// Commits every buffered write in one transaction. On failure the
    /// writes stay buffered (a later flush retries them).
    pub fn flush(&mut self) -> Result<(), JobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(|e| JobError::Journal {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let result = (|| -> rusqlite::Result<()> {
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO jobs VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
            )?;
            let mut hist = tx.prepare_cached(
                "INSERT INTO history (job_id, at_unix, from_state, to_state, call, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for op in &self.pending {
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
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                let path = &self.path;
                tx.commit().map_err(|e| JobError::Journal {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                self.pending.clear();
                self.failed = None;
                Ok(())
            }
            Err(e) => Err(JobError::Journal {
                path: self.path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Every stored job, by id.
    pub fn load(&self) -> Result<Vec<Row>, JobError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, priority, user, project, queue, submitted_unix, deadline_unix,
                        estimated_duration, cost_per_second, cpu_cores, memory_mb, gpu_count,
                        vram_mb, kind, payload, max_retries, state, attempts, preemptions,
                        retries, error, ran_s
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
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
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
/// at once (not buffered), so a process is on disk before it runs.
const PROCESS_TABLES: &str = "CREATE TABLE IF NOT EXISTS processes (
         job_id INTEGER PRIMARY KEY,
         token TEXT NOT NULL,
         pid INTEGER,
         start_time INTEGER,
         pgid INTEGER,
         owner_pid INTEGER NOT NULL,
         owner_start INTEGER NOT NULL,
         at_unix REAL NOT NULL
     );
     CREATE TABLE IF NOT EXISTS recovery_meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );";

impl Journal {
    fn process_tables(&self) -> Result<(), JobError> {
        self.conn
            .execute_batch(PROCESS_TABLES)
            .map_err(|e| self.err(e))
    }

    /// This journal's identity (random, made once and kept in the file):
    /// names its jobs' markers and quota holders.
    pub fn journal_id(&self) -> Result<String, JobError> {
        self.process_tables()?;
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
        self.conn
            .execute(
                "INSERT OR IGNORE INTO recovery_meta (key, value) VALUES ('journal_id', ?1)",
                params![fresh],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .query_row(
                "SELECT value FROM recovery_meta WHERE key = 'journal_id'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Records (committed at once) that job `job_id` is about to be spawned
    /// by the process `owner_pid` (started at `owner_start`).
    pub fn process_intent(
        &self,
        job_id: u64,
        token: &str,
        owner_pid: u32,
        owner_start: u64,
    ) -> Result<(), JobError> {
        self.process_tables()?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO processes
                 (job_id, token, pid, start_time, pgid, owner_pid, owner_start, at_unix)
                 VALUES (?1, ?2, NULL, NULL, NULL, ?3, ?4, ?5)",
                params![
                    job_id as i64,
                    token,
                    owner_pid,
                    owner_start as i64,
                    unix_now()
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records (committed at once) the spawned process of job `job_id`.
    pub fn process_spawned(
        &self,
        job_id: u64,
        pid: u32,
        start_time: u64,
        pgid: u32,
    ) -> Result<(), JobError> {
        self.process_tables()?;
        self.conn
            .execute(
                "UPDATE processes SET pid = ?2, start_time = ?3, pgid = ?4 WHERE job_id = ?1",
                params![job_id as i64, pid, start_time as i64, pgid],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Moves job `job_id`'s process record to a new owner (an adopting
    /// scheduler), committed at once.
    pub fn process_owner(
        &self,
        job_id: u64,
        owner_pid: u32,
        owner_start: u64,
    ) -> Result<(), JobError> {
        self.process_tables()?;
        self.conn
            .execute(
                "UPDATE processes SET owner_pid = ?2, owner_start = ?3 WHERE job_id = ?1",
                params![job_id as i64, owner_pid, owner_start as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forgets job `job_id`'s process (it ended, or was killed), at once.
    pub fn process_ended(&self, job_id: u64) -> Result<(), JobError> {
        self.process_tables()?;
        self.conn
            .execute(
                "DELETE FROM processes WHERE job_id = ?1",
                params![job_id as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Every process record, by job id.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>, JobError> {
        self.process_tables()?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_id, token, pid, start_time, pgid, owner_pid, owner_start
                 FROM processes ORDER BY job_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ProcessRecord {
                    job_id: r.get::<_, i64>(0)? as u64,
                    token: r.get(1)?,
                    pid: r.get(2)?,
                    start_time: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    pgid: r.get(4)?,
                    owner_pid: r.get(5)?,
                    owner_start: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
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
        j.process_intent(3, "t:3", 10, 11).expect("intent");
        let back = other.processes().expect("read");
        assert_eq!(back.len(), 1, "visible to another connection: committed");
        assert_eq!(back[0].pid, None);
        j.process_spawned(3, 400, 401, 400).expect("spawned");
        j.process_owner(3, 12, 13).expect("owner");
        let r = &other.processes().expect("read")[0];
        assert_eq!(
            (r.pid, r.start_time, r.pgid, r.owner_pid, r.owner_start),
            (Some(400), Some(401), Some(400), 12, 13)
        );
        j.process_ended(3).expect("ended");
        assert!(other.processes().expect("read").is_empty());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}

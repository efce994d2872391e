//! The embedded default: one SQLite file shared by every process of the
//! host. WAL journal (readers never block the writer), `BEGIN IMMEDIATE`
//! for every write (the check and the update of an allocation happen under
//! the database's write lock, so two processes can never both fit into
//! the last unit of a quota), a busy timeout instead of failing on a held
//! lock, and SQLite's journal for atomicity: a process killed in the middle
//! of a transaction leaves the file as it was before that transaction.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::SCHEMA_VERSION;
use super::{
    check_version, sql, Amounts, Hold, JobType, Limits, QuotaError, Result, Row, SqlStore, Txn,
    SCHEMA,
};

/// How long a writer waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn storage(e: impl std::fmt::Display) -> QuotaError {
    QuotaError::Storage {
        backend: "sqlite",
        detail: e.to_string(),
    }
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// `$XDG_STATE_HOME/plugin-scheduling/<file>` (default `~/.local/state`).
pub fn default_state_path(file: &str) -> Result<PathBuf> {
    crate::paths::state_path(file).ok_or_else(|| QuotaError::InvalidInput {
        field: "path",
        value: "None".to_owned(),
        reason: "needs $XDG_STATE_HOME or $HOME to pick a default".to_owned(),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the quota database at `path`, or at
    /// `$XDG_STATE_HOME/plugin-scheduling/quotas.db` when `None`.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => default_state_path("quotas.db")?,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(&path)
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        // Every failure from here on names the file (e.g. "file is not a
        // database" for a file that is not SQLite).
        let named = |e: rusqlite::Error| storage(format!("{}: {e}", path.display()));
        conn.busy_timeout(BUSY_TIMEOUT).map_err(named)?;
        // WAL + synchronous=NORMAL: a committed transaction survives the
        // process being killed; a transaction cut short is rolled back.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(named)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(named)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(named)?;
        let store = Self {
            path,
            conn: Mutex::new(conn),
        };
        store.migrate().map_err(|e| match e {
            QuotaError::Storage { backend, detail } => QuotaError::Storage {
                backend,
                detail: format!("{}: {detail}", store.path.display()),
            },
            other => other,
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        for ddl in SCHEMA {
            tx.execute(ddl, []).map_err(storage)?;
        }
        tx.execute(sql::INIT_VERSION, params![SCHEMA_VERSION])
            .map_err(storage)?;
        let found: i64 = tx
            .query_row(sql::READ_VERSION, [], |r| r.get(0))
            .map_err(storage)?;
        check_version(found)?;
        tx.commit().map_err(storage)
    }
}

/// The four amounts stored in columns `first..first + 4` of a row (the
/// order of `Amounts`' fields, as every query that reads them lists them).
fn amounts_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Amounts> {
    Ok(Amounts {
        cpu_milli: r.get(first)?,
        memory_kib: r.get(first + 1)?,
        gpu: r.get(first + 2)?,
        vram_kib: r.get(first + 3)?,
    })
}

struct SqliteTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
}

impl Txn for SqliteTxn<'_> {
    fn load(&mut self, project: &str) -> Result<Row> {
        let limits = self
            .tx
            .query_row(sql::LOAD_LIMITS, params![project], |r| {
                Ok((
                    r.get::<_, bool>(0)?,
                    [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?],
                    r.get::<_, bool>(5)?,
                ))
            })
            .optional()
            .map_err(storage)?;
        let mut stmt = self.tx.prepare_cached(sql::LOAD_USED).map_err(storage)?;
        let used = stmt
            .query_map(params![project], |r| {
                Ok((r.get::<_, String>(0)?, amounts_at(r, 1)?))
            })
            .map_err(storage)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage)?;
        Row::from_parts(limits, used)
    }

    fn save_limits(&mut self, project: &str, l: &Limits, now_ms: i64) -> Result<()> {
        self.tx
            .prepare_cached(sql::SAVE_LIMITS)
            .and_then(|mut s| {
                s.execute(params![
                    project,
                    l.cpu_milli,
                    l.memory_kib,
                    l.gpu,
                    l.vram_kib,
                    l.enforce,
                    now_ms
                ])
            })
            .map(drop)
            .map_err(storage)
    }

    fn save_used(&mut self, project: &str, job_type: JobType, a: Amounts) -> Result<()> {
        self.tx
            .prepare_cached(sql::ENSURE_ROW)
            .and_then(|mut s| s.execute(params![project]))
            .map_err(storage)?;
        self.tx
            .prepare_cached(sql::SAVE_USED)
            .and_then(|mut s| {
                s.execute(params![
                    project,
                    job_type.as_str(),
                    a.cpu_milli,
                    a.memory_kib,
                    a.gpu,
                    a.vram_kib
                ])
            })
            .map(drop)
            .map_err(storage)
    }

    fn load_hold(&mut self, holder: &str) -> Result<Option<Hold>> {
        Ok(self.read_holds(sql::LOAD_HOLD, holder)?.pop())
    }

    fn save_hold(&mut self, h: &Hold) -> Result<()> {
        let a = h.amounts;
        self.tx
            .prepare_cached(sql::SAVE_HOLD)
            .and_then(|mut s| {
                s.execute(params![
                    h.holder,
                    h.project,
                    h.job_type.as_str(),
                    a.cpu_milli,
                    a.memory_kib,
                    a.gpu,
                    a.vram_kib
                ])
            })
            .map(drop)
            .map_err(storage)
    }

    fn delete_hold(&mut self, holder: &str) -> Result<()> {
        self.tx
            .prepare_cached(sql::DELETE_HOLD)
            .and_then(|mut s| s.execute(params![holder]))
            .map(drop)
            .map_err(storage)
    }

    fn list_holds(&mut self, prefix: &str) -> Result<Vec<Hold>> {
        self.read_holds(sql::LIST_HOLDS, prefix)
    }
}

impl SqliteTxn<'_> {
    /// The `quota_holds` rows `query` selects with its one parameter.
    fn read_holds(&mut self, query: &str, param: &str) -> Result<Vec<Hold>> {
        let mut stmt = self.tx.prepare_cached(query).map_err(storage)?;
        let rows = stmt
            .query_map(params![param], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    amounts_at(r, 3)?,
                ))
            })
            .map_err(storage)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage)?;
        rows.into_iter()
            .map(|(holder, project, job_type, amounts)| {
                Ok(Hold {
                    holder,
                    project,
                    job_type: JobType::parse(&job_type).map_err(|_| {
                        storage(format!("unknown job_type {job_type:?} in quota_holds"))
                    })?,
                    amounts,
                })
            })
            .collect()
    }
}

impl SqlStore for SqliteStore {
    const KIND: &'static str = "sqlite";

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn transact<T>(&self, write: bool, f: &mut dyn FnMut(&mut dyn Txn) -> Result<T>) -> Result<T> {
        // A panic elsewhere while holding the lock left no transaction open
        // (a dropped rusqlite Transaction rolls back), so the connection is fine.
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = conn.transaction_with_behavior(behavior).map_err(storage)?;
        let out = f(&mut SqliteTxn { tx: &tx })?;
        tx.commit().map_err(storage)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decision, Patch, QuotaBackend, QuotaPatch, Resources};
    use super::*;

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ps-quota-test-{}-{}-{name}",
            std::process::id(),
            super::super::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("quotas.db")
    }

    fn gpus(n: i64) -> Resources {
        Resources {
            gpu: n,
            ..Resources::default()
        }
    }

    fn set_gpus(store: &SqliteStore, project: &str, n: i64) {
        store
            .set(
                project,
                &QuotaPatch {
                    gpu_quota: Patch::Set(n),
                    ..QuotaPatch::default()
                },
            )
            .unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named() {
        let dir = std::env::temp_dir().join(format!("ps-quota-notdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("notes.txt");
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/bash\n".repeat(200)).ok();
        let e = SqliteStore::open(Some(&path))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("notes.txt") && e.contains("not a database"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn allocate_until_full_then_release() {
        let store = SqliteStore::open(Some(&temp_db("full"))).unwrap();
        set_gpus(&store, "p", 2);
        let t = JobType::Training;
        assert!(store.allocate("p", t, &gpus(1)).unwrap().allowed());
        assert!(store
            .allocate("p", JobType::Inference, &gpus(1))
            .unwrap()
            .allowed());
        let Decision::Denied(why) = store.allocate("p", t, &gpus(1)).unwrap() else {
            panic!("third GPU of two allocated");
        };
        assert_eq!(why.resource, "gpu");
        assert!(!store.check("p", t, &gpus(1)).unwrap().allowed());
        store.release("p", t, &gpus(1)).unwrap();
        assert!(store.check("p", t, &gpus(1)).unwrap().allowed());
        let info = store.get("p").unwrap().unwrap();
        assert_eq!((info.used_gpu, info.gpu_quota), (1, Some(2)));
        let usage = store.usage("p").unwrap();
        assert_eq!(
            usage.by_job_type.keys().copied().collect::<Vec<_>>(),
            ["inference"]
        );
    }

    #[test]
    fn over_release_is_an_error_and_changes_nothing() {
        let store = SqliteStore::open(Some(&temp_db("over"))).unwrap();
        store.allocate("p", JobType::Batch, &gpus(1)).unwrap();
        let err = store.release("p", JobType::Batch, &gpus(2)).unwrap_err();
        assert!(
            matches!(
                err,
                QuotaError::OverRelease {
                    resource: "gpu",
                    ..
                }
            ),
            "{err}"
        );
        // releasing under another job type than allocated is over-release too
        assert!(store.release("p", JobType::Training, &gpus(1)).is_err());
        assert_eq!(store.usage("p").unwrap().gpu, 1);
    }

    #[test]
    fn state_survives_reopening_and_unknown_project_is_none() {
        let path = temp_db("reopen");
        {
            let store = SqliteStore::open(Some(&path)).unwrap();
            set_gpus(&store, "p", 3);
            store.allocate("p", JobType::Batch, &gpus(2)).unwrap();
        }
        let store = SqliteStore::open(Some(&path)).unwrap();
        assert_eq!(store.get("p").unwrap().unwrap().used_gpu, 2);
        assert_eq!(store.get("nobody").unwrap(), None);
        // usage without a quota is tracked but the project still has no quota
        store.allocate("free", JobType::Batch, &gpus(5)).unwrap();
        assert_eq!(store.get("free").unwrap(), None);
        assert_eq!(store.usage("free").unwrap().gpu, 5);
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_behind() {
        let store = SqliteStore::open(Some(&temp_db("rollback"))).unwrap();
        let err = store
            .transact(true, &mut |tx| {
                tx.save_used(
                    "p",
                    JobType::Batch,
                    Amounts {
                        gpu: 7,
                        ..Amounts::default()
                    },
                )?;
                Err::<(), _>(QuotaError::Storage {
                    backend: "sqlite",
                    detail: "injected".to_owned(),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("injected"));
        assert_eq!(store.usage("p").unwrap().gpu, 0);
    }

    #[test]
    fn threads_never_exceed_the_quota() {
        let path = temp_db("threads");
        let store = std::sync::Arc::new(SqliteStore::open(Some(&path)).unwrap());
        set_gpus(&store, "p", 5);
        let granted: i64 = (0..4)
            .map(|_| {
                // a connection per thread, as separate processes would have
                let store = SqliteStore::open(Some(&path)).unwrap();
                std::thread::spawn(move || {
                    (0..20)
                        .filter(|_| {
                            store
                                .allocate("p", JobType::Batch, &gpus(1))
                                .unwrap()
                                .allowed()
                        })
                        .count() as i64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 5);
        assert_eq!(store.usage("p").unwrap().gpu, 5);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp_db("schema");
        drop(SqliteStore::open(Some(&path)).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE plugin_scheduling_schema SET version = 99", [])
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(Some(&path)).err().unwrap();
        assert_eq!(
            err,
            QuotaError::SchemaVersion {
                found: 99,
                supported: SCHEMA_VERSION
            }
        );
    }

    #[test]
    fn bad_project_and_resources_name_the_field() {
        let store = SqliteStore::open(Some(&temp_db("bad"))).unwrap();
        let err = store.get("").unwrap_err();
        assert!(err.to_string().starts_with("project_id"), "{err}");
        let err = store
            .allocate(
                "p",
                JobType::Batch,
                &Resources {
                    memory: -1.0,
                    ..Resources::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().starts_with("memory must be"), "{err}");
    }

    #[test]
    fn held_allocations_are_released_once() {
        let store = SqliteStore::open(Some(&temp_db("held"))).unwrap();
        set_gpus(&store, "p", 2);
        let a = store
            .allocate_held("J:1", "p", JobType::Batch, &gpus(1))
            .unwrap();
        assert!(a.allowed());
        // Allocating again under the same holder does not charge twice.
        assert!(store
            .allocate_held("J:1", "p", JobType::Batch, &gpus(1))
            .unwrap()
            .allowed());
        assert!(store
            .allocate_held("J:2", "p", JobType::Batch, &gpus(1))
            .unwrap()
            .allowed());
        assert!(!store
            .allocate_held("J:3", "p", JobType::Batch, &gpus(1))
            .unwrap()
            .allowed());
        let holds = store.holds("J:").unwrap();
        assert_eq!(
            holds.iter().map(|h| h.holder.as_str()).collect::<Vec<_>>(),
            ["J:1", "J:2"]
        );
        assert!(store.holds("K:").unwrap().is_empty());
        assert!(store.release_held("J:1").unwrap());
        assert!(
            !store.release_held("J:1").unwrap(),
            "a second release does nothing"
        );
        assert_eq!(store.usage("p").unwrap().gpu, 1);
        assert!(store.release_held("nobody").is_ok_and(|r| !r));
        assert!(store.release_held("").is_err());
    }
}

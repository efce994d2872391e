//! PostgreSQL backend: the same tables and operations as SQLite (see
//! [`super::SCHEMA`], [`super::sql`]) for several hosts. A write locks the
//! project's row with `SELECT ... FOR UPDATE` (after making sure the row
//! exists with `INSERT ... ON CONFLICT DO NOTHING`), so the check and the
//! update of an allocation see no concurrent writer of that project;
//! a serialization failure or deadlock (SQLSTATE 40001 / 40P01) reruns the
//! whole transaction.
//!
//! No wait is unbounded: every session sets `lock_timeout` (default
//! [`DEFAULT_LOCK_TIMEOUT`], 10 s; [`PostgresStore::connect_with`] sets it),
//! so a transaction elsewhere holding a project's row makes a write fail
//! with [`QuotaError::Locked`] naming the project, and `statement_timeout`
//! (three times as long) bounds any other statement.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, IsolationLevel, NoTls};

use super::SCHEMA_VERSION;
use super::{
    check_version, sql, Amounts, JobType, Limits, QuotaError, Result, Row, SqlStore, Txn, SCHEMA,
};

const RETRIES: usize = 20;
/// How long a write waits for a project's row held by another transaction.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` key serializing schema creation across hosts.
const MIGRATION_LOCK: i64 = 0x5053_5155_4f54; // "PSQUOT"

fn storage(e: impl std::fmt::Display) -> QuotaError {
    QuotaError::Storage {
        backend: "postgresql",
        detail: e.to_string(),
    }
}

fn pg(e: postgres::Error) -> QuotaError {
    match e.code() {
        Some(code) => storage(format!("SQLSTATE {}: {e}", code.code())),
        None => storage(e),
    }
}

/// `lock_timeout` ran out (SQLSTATE 55P03) on `project`'s row.
fn locked(e: postgres::Error, project: &str, timeout: Duration) -> QuotaError {
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        return QuotaError::Locked {
            backend: "postgresql",
            project: project.to_owned(),
            timeout_s: timeout.as_secs_f64(),
        };
    }
    pg(e)
}

fn retryable(e: &QuotaError) -> bool {
    let QuotaError::Storage { detail, .. } = e else {
        return false;
    };
    [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .iter()
    .any(|code| detail.starts_with(&format!("SQLSTATE {}:", code.code())))
}

pub struct PostgresStore {
    config: Config,
    description: String,
    lock_timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl PostgresStore {
    /// Connects to `dsn` (`postgresql://user@host:port/db` or key=value)
    /// and creates the tables when missing.
    pub fn connect(dsn: &str) -> Result<Self> {
        Self::connect_with(dsn, DEFAULT_LOCK_TIMEOUT)
    }

    /// [`PostgresStore::connect`], waiting at most `lock_timeout` for a
    /// project's row (from 1 ms to 1 hour).
    pub fn connect_with(dsn: &str, lock_timeout: Duration) -> Result<Self> {
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&lock_timeout) {
            return Err(QuotaError::InvalidInput {
                field: "lock_timeout",
                value: format!("{}", lock_timeout.as_secs_f64()),
                reason: "must be between 0.001 and 3600 seconds".to_owned(),
            });
        }
        let mut config: Config = dsn.parse().map_err(|e| QuotaError::InvalidInput {
            field: "dsn",
            value: "(not shown: may hold a password)".to_owned(),
            reason: format!("is not a PostgreSQL connection string ({e})"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let description = format!(
            "postgresql://{}@{}:{}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            ports.join(","),
            config.get_dbname().unwrap_or("")
        );
        let store = Self {
            config,
            description,
            lock_timeout,
            client: Mutex::new(None),
        };
        store.migrate()?;
        Ok(store)
    }

    fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_none_or(Client::is_closed) {
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(|e| storage(format!("cannot connect to {}: {e}", self.description)))?;
            let ms = self.lock_timeout.as_millis();
            client
                .batch_execute(&format!(
                    "SET lock_timeout = {ms}; SET statement_timeout = {}",
                    ms.saturating_mul(3)
                ))
                .map_err(pg)?;
            *slot = Some(client);
        }
        match slot.as_mut() {
            Some(client) => f(client),
            None => Err(storage("no connection")),
        }
    }

    fn migrate(&self) -> Result<()> {
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(pg)?;
            for ddl in SCHEMA {
                tx.batch_execute(ddl).map_err(pg)?;
            }
            tx.execute(sql::INIT_VERSION, &[&SCHEMA_VERSION])
                .map_err(pg)?;
            let found: i64 = tx
                .query_one(sql::READ_VERSION, &[])
                .and_then(|r| r.try_get(0))
                .map_err(pg)?;
            check_version(found)?;
            tx.commit().map_err(pg)
        })
    }
}

struct PgTxn<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    write: bool,
    locked: bool,
    lock_timeout: Duration,
}

impl PgTxn<'_, '_> {
    fn lock_row(&mut self, project: &str) -> Result<()> {
        if self.write && !self.locked {
            let timeout = self.lock_timeout;
            self.tx
                .execute(sql::ENSURE_ROW, &[&project])
                .map_err(|e| locked(e, project, timeout))?;
            self.tx
                .execute(
                    "SELECT 1 FROM project_quotas WHERE project_id = $1 FOR UPDATE",
                    &[&project],
                )
                .map_err(|e| locked(e, project, timeout))?;
            self.locked = true;
        }
        Ok(())
    }
}

impl Txn for PgTxn<'_, '_> {
    fn load(&mut self, project: &str) -> Result<Row> {
        self.lock_row(project)?;
        let limits = match self
            .tx
            .query_opt(sql::LOAD_LIMITS, &[&project])
            .map_err(pg)?
        {
            Some(r) => Some((
                r.try_get::<_, bool>(0).map_err(pg)?,
                [
                    r.try_get(1).map_err(pg)?,
                    r.try_get(2).map_err(pg)?,
                    r.try_get(3).map_err(pg)?,
                    r.try_get(4).map_err(pg)?,
                ],
                r.try_get::<_, bool>(5).map_err(pg)?,
            )),
            None => None,
        };
        let mut used = Vec::new();
        for r in self.tx.query(sql::LOAD_USED, &[&project]).map_err(pg)? {
            used.push((
                r.try_get::<_, String>(0).map_err(pg)?,
                Amounts {
                    cpu_milli: r.try_get(1).map_err(pg)?,
                    memory_kib: r.try_get(2).map_err(pg)?,
                    gpu: r.try_get(3).map_err(pg)?,
                    vram_kib: r.try_get(4).map_err(pg)?,
                },
            ));
        }
        Row::from_parts(limits, used)
    }

    fn save_limits(&mut self, project: &str, l: &Limits, now_ms: i64) -> Result<()> {
        self.lock_row(project)?;
        self.tx
            .execute(
                sql::SAVE_LIMITS,
                &[
                    &project,
                    &l.cpu_milli,
                    &l.memory_kib,
                    &l.gpu,
                    &l.vram_kib,
                    &l.enforce,
                    &now_ms,
                ],
            )
            .map(drop)
            .map_err(pg)
    }

    fn save_used(&mut self, project: &str, job_type: JobType, a: Amounts) -> Result<()> {
        self.lock_row(project)?;
        self.tx
            .execute(
                sql::SAVE_USED,
                &[
                    &project,
                    &job_type.as_str(),
                    &a.cpu_milli,
                    &a.memory_kib,
                    &a.gpu,
                    &a.vram_kib,
                ],
            )
            .map(drop)
            .map_err(pg)
    }
}

impl SqlStore for PostgresStore {
    const KIND: &'static str = "postgresql";

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn transact<T>(&self, write: bool, f: &mut dyn FnMut(&mut dyn Txn) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.with_client(|client| {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .map_err(pg)?;
                let out = f(&mut PgTxn {
                    tx: &mut tx,
                    write,
                    locked: false,
                    lock_timeout: self.lock_timeout,
                })?;
                tx.commit().map_err(pg)?;
                Ok(out)
            });
            match result {
                Err(e) if attempt < RETRIES && retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(attempt as u64));
                }
                other => return other,
            }
        }
    }
}

//! Slurm backend: a project is the Slurm account `{prefix}{project_id}`;
//! its quota is the account association's `GrpTRES` (`cpu`, `mem`,
//! `gres/gpu`), written with `sacctmgr` and enforced by slurmctld
//! (`AccountingStorageEnforce=limits`) for every job of the account.
//!
//! Limits and usage are read from slurmctld's association manager
//! (`scontrol show assoc_mgr`, ~3 ms): the `GrpTRES=limit(used)` counters
//! there are the very numbers Slurm compares when it decides whether a job
//! may start, so `check` agrees with Slurm. `set` returns once slurmctld
//! shows the new limits; slurmdbd (`sacctmgr show assoc`, ~250 ms) is asked
//! only about an account slurmctld holds no record of.
//!
//! Allocations made through this provider for work Slurm does not run
//! (or has not started yet) are held in a local SQLite ledger (the same
//! tables as [`super::sqlite`]) and counted on top of Slurm's usage; the
//! ledger's write lock makes check-and-allocate atomic among the
//! processes of this host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::sqlite::{default_state_path, SqliteStore};
use super::{
    allocate_in, check_project, decide, now_ms, release_in, Amounts, Decision, JobType, Limits,
    Patch, QuotaBackend, QuotaError, QuotaInfo, QuotaPatch, Resources, Result, SqlStore,
    UsageReport,
};

/// Longest `set` waits for slurmctld to enforce new limits.
pub const SET_PROPAGATION: Duration = Duration::from_secs(10);
/// Longest a Slurm command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const KIND: &str = "slurm";

pub struct SlurmStore {
    prefix: String,
    user: Option<String>,
    bin_dir: Option<PathBuf>,
    ledger: SqliteStore,
}

/// Slurm's view of one account: its limits and what its running jobs use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlurmView {
    pub limits: Limits,
    pub running: Amounts,
}

fn slurm_err(command: &str, detail: impl Into<String>) -> QuotaError {
    QuotaError::Slurm {
        command: command.to_owned(),
        detail: detail.into(),
    }
}

/// A TRES amount as sacctmgr prints it (`mem` may carry K/M/G/T/P; MB is
/// the unit without a suffix), in Slurm's base unit (MB for `mem`).
fn parse_tres_number(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, scale) = match text.chars().last()? {
        'K' => (&text[..text.len() - 1], 1.0 / 1024.0),
        'M' => (&text[..text.len() - 1], 1.0),
        'G' => (&text[..text.len() - 1], 1024.0),
        'T' => (&text[..text.len() - 1], 1024.0 * 1024.0),
        'P' => (&text[..text.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (text, 1.0),
    };
    let value: f64 = digits.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| (value * scale).round() as i64)
}

/// Applies one `name=value` TRES to `amounts` (Slurm units -> ours).
fn put_tres(target: &mut [Option<i64>; 3], name: &str, value: i64) {
    match name {
        "cpu" => target[0] = Some(value.saturating_mul(1000)),
        "mem" => target[1] = Some(value.saturating_mul(1024)),
        "gres/gpu" => target[2] = Some(value),
        _ => {}
    }
}

/// The account association's limits from `sacctmgr -nP show assoc where
/// account=A format=account,user,grptres` (`None`: no such account).
pub fn parse_assoc_limits(stdout: &str, account: &str) -> Option<Limits> {
    let line = stdout.lines().find(|line| {
        let mut f = line.split('|');
        f.next() == Some(account) && f.next() == Some("")
    })?;
    let grptres = line.split('|').nth(2).unwrap_or("");
    let mut l = [None; 3];
    for item in grptres.split(',').filter(|s| !s.is_empty()) {
        if let Some((name, value)) = item.split_once('=') {
            if let Some(v) = parse_tres_number(value) {
                put_tres(&mut l, name, v);
            }
        }
    }
    Some(Limits {
        cpu_milli: l[0],
        memory_kib: l[1],
        gpu: l[2],
        vram_kib: None,
        enforce: true,
    })
}

/// The account's limits and what its running jobs use, from the
/// `GrpTRES=cpu=L(U),...` line of the account record of `scontrol show
/// assoc_mgr accounts=A flags=assoc` (`L` is `N` for no limit); `None`
/// when slurmctld holds no record of the account.
pub fn parse_assoc_mgr(stdout: &str, account: &str) -> Option<SlurmView> {
    let header = format!("Account={account} UserName= ");
    let mut in_record = false;
    for line in stdout.lines() {
        if line.starts_with("ClusterName=") {
            in_record = line.contains(&header);
            continue;
        }
        let Some(list) = line.trim().strip_prefix("GrpTRES=") else {
            continue;
        };
        if !in_record {
            continue;
        }
        let (mut limit, mut used) = ([None; 3], [None; 3]);
        for item in list.split(',') {
            let Some((name, rest)) = item.split_once('=') else {
                continue;
            };
            let Some((l, u)) = rest.split_once('(') else {
                continue;
            };
            if let Some(v) = parse_tres_number(l) {
                put_tres(&mut limit, name, v);
            }
            if let Some(v) = u.strip_suffix(')').and_then(parse_tres_number) {
                put_tres(&mut used, name, v);
            }
        }
        return Some(SlurmView {
            limits: Limits {
                cpu_milli: limit[0],
                memory_kib: limit[1],
                gpu: limit[2],
                vram_kib: None,
                enforce: true,
            },
            running: Amounts {
                cpu_milli: used[0].unwrap_or(0),
                memory_kib: used[1].unwrap_or(0),
                gpu: used[2].unwrap_or(0),
                vram_kib: 0,
            },
        });
    }
    None
}

/// The `GrpTRES=` value setting `limits` (`-1` clears a limit).
pub fn grptres_arg(limits: &Limits) -> String {
    let v = |x: Option<i64>, div: i64| x.map_or("-1".to_owned(), |x| (x / div).to_string());
    format!(
        "GrpTRES=cpu={},mem={},gres/gpu={}",
        v(limits.cpu_milli, 1000),
        v(limits.memory_kib, 1024),
        v(limits.gpu, 1)
    )
}

impl SlurmStore {
    /// `prefix`: account name prefix (`project-`); `user`: a Slurm user
    /// given an association with each account `set` creates (so it can
    /// submit jobs there); `bin_dir`: where sacctmgr/scontrol live (PATH
    /// when `None`); `ledger`: the SQLite file for allocations made through
    /// this provider (`$XDG_STATE_HOME/plugin-scheduling/slurm-ledger.db`).
    pub fn new(
        prefix: &str,
        user: Option<&str>,
        bin_dir: Option<&Path>,
        ledger: Option<&Path>,
    ) -> Result<Self> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !prefix.chars().all(ok) {
            return Err(QuotaError::InvalidInput {
                field: "account_prefix",
                value: format!("{prefix:?}"),
                reason: "may hold only letters, digits, '-', '_' and '.'".to_owned(),
            });
        }
        let ledger_path = match ledger {
            Some(p) => p.to_path_buf(),
            None => default_state_path("slurm-ledger.db")?,
        };
        Ok(Self {
            prefix: prefix.to_owned(),
            user: user.map(str::to_owned),
            bin_dir: bin_dir.map(Path::to_path_buf),
            ledger: SqliteStore::open(Some(&ledger_path))?,
        })
    }

    /// The Slurm account of `project`. Slurm folds account names to lower
    /// case, so this does too.
    pub fn account(&self, project: &str) -> Result<String> {
        check_project(project)?;
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !project.chars().all(ok) {
            return Err(QuotaError::InvalidInput {
                field: "project_id",
                value: format!("{project:?}"),
                reason: "must be a valid Slurm account name (letters, digits, '-', '_', '.')"
                    .to_owned(),
            });
        }
        Ok(format!("{}{}", self.prefix, project).to_ascii_lowercase())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let exe = match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let line = format!("{program} {}", args.join(" "));
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| slurm_err(&line, format!("cannot run {}: {e}", exe.display())))?;
        let mut pipes = (child.stdout.take(), child.stderr.take());
        let readers = [
            pipes.0.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            pipes.1.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .map(|pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    // a read error leaves what was read; the exit status decides
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        });
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    // already exiting or exited is fine: we only want it gone
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(slurm_err(
                        &line,
                        format!("timed out after {COMMAND_TIMEOUT:?}"),
                    ));
                }
                Err(e) => return Err(slurm_err(&line, format!("cannot wait: {e}"))),
            }
        };
        let [out, err] = readers.map(|h| h.join().unwrap_or_default());
        if !status.success() {
            let said = format!("{} {}", out.trim(), err.trim());
            // sacctmgr exits 1 when a modification changed nothing
            if said.contains("Nothing modified") || said.contains("Nothing new added") {
                return Ok(out);
            }
            return Err(slurm_err(&line, format!("{status}: {}", said.trim())));
        }
        Ok(out)
    }

    /// slurmctld's view of the account (`scontrol show assoc_mgr`: the
    /// limits and usage it enforces with, ~3 ms); `None` when it has no record.
    fn controller_view(&self, account: &str) -> Result<Option<SlurmView>> {
        let accounts = format!("accounts={account}");
        let mgr = self.run("scontrol", &["show", "assoc_mgr", &accounts, "flags=assoc"])?;
        Ok(parse_assoc_mgr(&mgr, account))
    }

    /// Reads the account's limits and usage from slurmctld; when it holds
    /// no record, asks slurmdbd (`sacctmgr`, ~250 ms) whether the account
    /// exists (then nothing of it runs yet). `None`: no such account.
    pub fn sync(&self, project: &str) -> Result<Option<SlurmView>> {
        let account = self.account(project)?;
        if let Some(view) = self.controller_view(&account)? {
            return Ok(Some(view));
        }
        let where_account = format!("account={account}");
        let out = self.run(
            "sacctmgr",
            &[
                "-nP",
                "show",
                "assoc",
                "where",
                &where_account,
                "format=account,user,grptres",
            ],
        )?;
        Ok(parse_assoc_limits(&out, &account).map(|limits| SlurmView {
            limits,
            running: Amounts::default(),
        }))
    }

    /// Waits until slurmctld enforces `limits` for `account` (slurmdbd
    /// pushes the change to it right after `sacctmgr modify`).
    fn await_controller(&self, account: &str, limits: &Limits) -> Result<()> {
        let deadline = Instant::now() + SET_PROPAGATION;
        loop {
            let view = self.controller_view(account)?;
            if view.is_some_and(|v| v.limits == *limits) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(slurm_err(
                    "scontrol show assoc_mgr",
                    format!(
                        "slurmctld does not show the new GrpTRES of {account} after {SET_PROPAGATION:?} \
                         (slurmdbd holds it; is slurmctld connected to slurmdbd?)"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn synced(&self, project: &str) -> Result<SlurmView> {
        self.sync(project)?.ok_or_else(|| {
            slurm_err(
                "sacctmgr show assoc",
                format!(
                    "no Slurm account {} for project {project:?} (set_quota creates it)",
                    self.account(project).unwrap_or_default()
                ),
            )
        })
    }

    fn held(&self, project: &str) -> Result<super::Row> {
        self.ledger.transact(false, &mut |tx| tx.load(project))
    }
}

fn unsupported(field: &'static str, reason: &str) -> QuotaError {
    QuotaError::Unsupported {
        backend: KIND,
        field,
        reason: reason.to_owned(),
    }
}

impl QuotaBackend for SlurmStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn describe(&self) -> String {
        format!(
            "slurm:accounts {}<project> (ledger {})",
            self.prefix,
            self.ledger.path().display()
        )
    }

    fn get(&self, project: &str) -> Result<Option<QuotaInfo>> {
        let Some(view) = self.sync(project)? else {
            return Ok(None);
        };
        let used = view.running.add(self.held(project)?.total_used());
        Ok(Some(QuotaInfo::new(
            project,
            KIND,
            &view.limits,
            used,
            now_ms(),
        )))
    }

    fn set(&self, project: &str, patch: &QuotaPatch) -> Result<QuotaInfo> {
        if let Patch::Set(_) = patch.vram_quota_mb {
            return Err(unsupported(
                "vram_quota_mb",
                "Slurm has no VRAM trackable resource; leave it unset",
            ));
        }
        if patch.enforce_quota == Some(false) {
            return Err(unsupported(
                "enforce_quota",
                "Slurm enforces every GrpTRES limit (AccountingStorageEnforce); clear a limit instead",
            ));
        }
        let account = self.account(project)?;
        let current = self.sync(project)?;
        let limits = patch.apply(current.map(|v| v.limits).unwrap_or_default())?;
        if limits.cpu_milli.is_some_and(|c| c % 1000 != 0) {
            return Err(QuotaError::InvalidInput {
                field: "cpu_quota",
                value: format!("{}", limits.cpu_milli.unwrap_or(0) as f64 / 1000.0),
                reason: "must be whole cores for Slurm".to_owned(),
            });
        }
        if limits.memory_kib.is_some_and(|m| m % 1024 != 0) {
            return Err(QuotaError::InvalidInput {
                field: "memory_quota",
                value: format!("{} GiB", limits.memory_kib.unwrap_or(0) as f64 / 1048576.0),
                reason: "must be whole MB for Slurm".to_owned(),
            });
        }
        if current.is_none() {
            let description = format!("Description=plugin-scheduling project {project}");
            self.run(
                "sacctmgr",
                &[
                    "-i",
                    "add",
                    "account",
                    &account,
                    &description,
                    "Organization=plugin-scheduling",
                ],
            )?;
            if let Some(user) = &self.user {
                let assoc = format!("account={account}");
                self.run("sacctmgr", &["-i", "add", "user", user, &assoc])?;
            }
        }
        let name = format!("name={account}");
        let grptres = grptres_arg(&limits);
        self.run(
            "sacctmgr",
            &["-i", "modify", "account", "where", &name, "set", &grptres],
        )?;
        self.await_controller(&account, &limits)?;
        self.get(project)?.ok_or_else(|| {
            slurm_err(
                "sacctmgr show assoc",
                format!("account {account} vanished after set"),
            )
        })
    }

    fn check(&self, project: &str, _job_type: JobType, request: &Resources) -> Result<Decision> {
        let request = request.amounts()?;
        let view = self.synced(project)?;
        let used = view.running.add(self.held(project)?.total_used());
        Ok(decide(project, Some(&view.limits), used, request))
    }

    fn allocate(&self, project: &str, job_type: JobType, request: &Resources) -> Result<Decision> {
        let request = request.amounts()?;
        self.account(project)?;
        self.ledger.transact(true, &mut |tx| {
            allocate_in(tx, project, job_type, request, &mut |row| {
                let view = self.synced(project)?;
                Ok((Some(view.limits), view.running.add(row.total_used())))
            })
        })
    }

    fn release(&self, project: &str, job_type: JobType, request: &Resources) -> Result<()> {
        let request = request.amounts()?;
        self.account(project)?;
        self.ledger
            .transact(true, &mut |tx| release_in(tx, project, job_type, request))
    }

    fn usage(&self, project: &str) -> Result<UsageReport> {
        let running = self.sync(project)?.map(|v| v.running).unwrap_or_default();
        let row = self.held(project)?;
        Ok(UsageReport::new(
            project,
            KIND,
            &row,
            Some(running),
            now_ms(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSOC: &str = "project-a||cpu=2,gres/gpu=1,mem=512M\nproject-a|root|\n";
    const MGR: &str = "Current Association Manager state\n\nAssociation Records\n\n\
ClusterName=c Account=project-a UserName= Partition= Priority=0 ID=3\n\
    GrpJobs=N(1) GrpJobsAccrue=N(1)\n\
    GrpTRES=cpu=2(1),mem=512(64),energy=N(0),node=N(1),gres/gpu=1(1)\n\
    GrpTRESMins=cpu=N(0),mem=N(0),gres/gpu=N(0)\n\
ClusterName=c Account=project-a UserName=root(0) Partition= Priority=0 ID=4\n\
    GrpTRES=cpu=N(7),mem=N(64),gres/gpu=N(9)\n";

    #[test]
    fn limits_from_sacctmgr() {
        let l = parse_assoc_limits(ASSOC, "project-a").unwrap();
        assert_eq!(
            (l.cpu_milli, l.memory_kib, l.gpu),
            (Some(2000), Some(512 * 1024), Some(1))
        );
        assert_eq!(parse_assoc_limits(ASSOC, "project-b"), None);
        let none = parse_assoc_limits("project-a||\n", "project-a").unwrap();
        assert_eq!((none.cpu_milli, none.gpu), (None, None));
        let g = parse_assoc_limits("project-a||mem=2G\n", "project-a").unwrap();
        assert_eq!(g.memory_kib, Some(2 * 1024 * 1024));
    }

    #[test]
    fn limits_and_usage_from_the_account_record_of_assoc_mgr() {
        let v = parse_assoc_mgr(MGR, "project-a").unwrap();
        let (l, u) = (v.limits, v.running);
        assert_eq!((u.cpu_milli, u.memory_kib, u.gpu), (1000, 64 * 1024, 1));
        assert_eq!(
            (l.cpu_milli, l.memory_kib, l.gpu),
            (Some(2000), Some(512 * 1024), Some(1))
        );
        assert_eq!(parse_assoc_mgr(MGR, "project-b"), None);
        let open = MGR.replace("cpu=2(1)", "cpu=N(1)");
        assert_eq!(
            parse_assoc_mgr(&open, "project-a")
                .unwrap()
                .limits
                .cpu_milli,
            None
        );
    }

    #[test]
    fn grptres_sets_and_clears() {
        let l = Limits {
            cpu_milli: Some(4000),
            memory_kib: None,
            gpu: Some(1),
            ..Limits::default()
        };
        assert_eq!(grptres_arg(&l), "GrpTRES=cpu=4,mem=-1,gres/gpu=1");
    }

    #[test]
    fn account_names_are_validated_and_folded() {
        let dir = std::env::temp_dir().join(format!("ps-slurm-unit-{}", std::process::id()));
        let s = SlurmStore::new("project-", None, None, Some(&dir.join("l.db"))).unwrap();
        assert_eq!(s.account("ABC-1").unwrap(), "project-abc-1");
        assert!(s.account("a b").is_err());
        assert!(SlurmStore::new("bad prefix", None, None, Some(&dir.join("l.db"))).is_err());
    }
}

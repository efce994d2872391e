//! At most one copy of a job, across a crash: what a recovering scheduler
//! does with the processes of the previous incarnation.
//!
//! Every `Command` job runs as the leader of its own session and process
//! group (`pgid == pid`). Before it is spawned the journal records an
//! *intent* row (job id, a marker token the child inherits in its environment as
//! `PLUGIN_SCHEDULING_JOB=<token>`); right after, the same row gets the
//! child's pid, process start time (field 22 of `/proc/<pid>/stat`, clock
//! ticks since boot) and process group. Both writes are committed at once.
//!
//! A recovering scheduler reads those rows and a snapshot of `/proc`, and
//! [`plan`] decides per job. Every record is the previous incarnation's:
//! the journal has one owner (its `owner` table, see
//! [`super::journal::Journal::open_owned`]), a live one refuses the
//! recovering scheduler before it reads a record, and recovery runs when
//! the journal is taken, before this incarnation spawns anything.
//!
//! * the leader counts as alive only when a process with its pid has the
//!   recorded start time (so a reused pid never fools it);
//! * the group counts as the job's only while no *other* process holds the
//!   pgid as its pid: Linux does not hand out a number still in use as a
//!   process group, so members of group `g` are ours unless `g` itself was
//!   reused (then a live process `g` has another start time);
//! * processes found by the marker (a crash between the spawn and the
//!   second write, or a descendant that left the group) are the job's too;
//! * `Kill` (the default mode, and the adopt mode when the leader is gone):
//!   every survivor is killed before anything is rerun; `Adopt`: a live
//!   leader is kept and its job stays RUNNING; `Gone`: nothing is left.
//!
//! The front end sends the signals (through pidfds, checking the start
//! time again) and waits; this module only reads `/proc` and decides.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// Clock ticks after boot (field 22).
    pub start_time: u64,
    /// State `Z` or `X`: dead, waiting to be reaped.
    pub dead: bool,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so the fields are read after its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid: u32 = head.split_once('(')?.0.trim().parse().ok()?;
    let f: Vec<&str> = tail.split_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let state = f.first()?;
    Some(ProcStat {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
        dead: matches!(*state, "Z" | "X" | "x"),
    })
}

/// `/proc/<pid>/stat` of one process (None: no such process, or unreadable).
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of a live process `pid`, if there is one.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).filter(|s| !s.dead).map(|s| s.start_time)
}

/// Whether `pid` is alive and is the process that started at `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Every process `/proc` shows now (those that vanish while it is read are
/// left out).
pub fn scan() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// The environment variable a job's processes inherit.
pub const MARKER_VAR: &str = "PLUGIN_SCHEDULING_JOB";

/// The marker token of job `job_id` of the journal `journal_id`.
pub fn marker_token(journal_id: &str, job_id: u64) -> String {
    format!("{journal_id}:{job_id}")
}

/// The job id in `environ` (NUL-separated `KEY=VALUE`) whose marker names
/// the journal `journal_id`.
pub fn marker_in(environ: &[u8], journal_id: &str) -> Option<u64> {
    let prefix = format!("{MARKER_VAR}={journal_id}:");
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .and_then(|id| std::str::from_utf8(id).ok()?.parse().ok())
}

/// `(pid, job_id)` of every live process (of those `/proc` lets this user
/// read) carrying a marker of the journal `journal_id`.
pub fn scan_markers(procs: &[ProcStat], journal_id: &str) -> Vec<(u32, u64)> {
    procs
        .iter()
        .filter(|p| !p.dead)
        .filter_map(|p| {
            let env = fs::read(format!("/proc/{}/environ", p.pid)).ok()?;
            marker_in(&env, journal_id).map(|job| (p.pid, job))
        })
        .collect()
}

/// A journaled process of a job (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub job_id: u64,
    pub token: String,
    /// None: the intent was written, the spawn's result was not.
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub pgid: Option<u32>,
}

/// What a recovering scheduler does with the previous incarnation's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kill every survivor, then rerun (or fail) the job.
    Kill,
    /// Keep a live leader running and reattach it to its job.
    Adopt,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kill" => Some(Self::Kill),
            "adopt" => Some(Self::Adopt),
            _ => None,
        }
    }
}

/// A survivor to signal: the pid and the start time it must still have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Survivor {
    pub pid: u32,
    pub start_time: u64,
}

/// The decision for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing of it is alive: the record can go; the job is recovered as usual.
    Gone,
    /// Keep the leader running: the job stays RUNNING, waiting for it.
    Adopt {
        pid: u32,
        start_time: u64,
        pgid: u32,
    },
    /// Kill these (the leader and its group, and marked strays) before
    /// the job is rerun; `pgid`: the group to signal as a whole, if ours.
    Kill {
        pgid: Option<u32>,
        survivors: Vec<Survivor>,
    },
}

/// One job's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub job_id: u64,
    pub verdict: Verdict,
}

/// Decides, per journaled job, what to do with what survived of it
/// (see the module doc). `procs`: a snapshot of `/proc`; `marked`:
/// `(pid, job_id)` found by the marker. Every record counts as the
/// previous incarnation's (the caller owns the journal and has spawned
/// nothing yet). Jobs found only by a marker get a decision too. Sorted by
/// job id.
pub fn plan(
    records: &[ProcessRecord],
    procs: &[ProcStat],
    marked: &[(u32, u64)],
    mode: Mode,
) -> Vec<Decision> {
    let live: BTreeMap<u32, &ProcStat> = procs
        .iter()
        .filter(|p| !p.dead)
        .map(|p| (p.pid, p))
        .collect();
    let mut by_job: BTreeMap<u64, Option<&ProcessRecord>> = BTreeMap::new();
    for r in records {
        by_job.insert(r.job_id, Some(r));
    }
    for &(_, job) in marked {
        by_job.entry(job).or_insert(None);
    }
    let mut out = Vec::with_capacity(by_job.len());
    for (job_id, record) in by_job {
        let mut survivors: BTreeSet<Survivor> = marked
            .iter()
            .filter(|&&(_, j)| j == job_id)
            .filter_map(|&(pid, _)| live.get(&pid))
            .map(|p| Survivor {
                pid: p.pid,
                start_time: p.start_time,
            })
            .collect();
        let leader = record.and_then(|r| {
            let (pid, start) = (r.pid?, r.start_time?);
            live.get(&pid)
                .filter(|p| p.start_time == start)
                .map(|p| (p.pid, p.start_time))
        });
        // The group is the job's unless its number now names
        // another process (the group emptied and the number was
        // reused).
        let group = record.and_then(|r| {
            let g = r.pgid?;
            let reused = live
                .get(&g)
                .is_some_and(|p| !(r.pid == Some(g) && r.start_time == Some(p.start_time)));
            (!reused).then_some(g)
        });
        let verdict = match (mode, leader, group) {
            (Mode::Adopt, Some((pid, start_time)), _) => Verdict::Adopt {
                pid,
                start_time,
                pgid: group.unwrap_or(pid),
            },
            _ => {
                if let Some((pid, start_time)) = leader {
                    survivors.insert(Survivor { pid, start_time });
                }
                if let Some(g) = group {
                    survivors.extend(live.values().filter(|p| p.pgrp == g).map(|p| Survivor {
                        pid: p.pid,
                        start_time: p.start_time,
                    }));
                }
                if survivors.is_empty() {
                    Verdict::Gone
                } else {
                    let pgid = group.filter(|g| live.values().any(|p| p.pgrp == *g));
                    Verdict::Kill {
                        pgid,
                        survivors: survivors.into_iter().collect(),
                    }
                }
            }
        };
        out.push(Decision { job_id, verdict });
    }
    out
}

/// Quota holders are named `<journal_id>:<job_id>`; the job id of a holder
/// of the journal `journal_id`.
pub fn holder_job(holder: &str, journal_id: &str) -> Option<u64> {
    holder
        .strip_prefix(journal_id)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// Which of the journal's quota holders to release at recovery: every one
/// whose job is not adopted (an adopted job keeps what it holds).
pub fn holders_to_release(
    holders: &[String],
    journal_id: &str,
    adopted: &BTreeSet<u64>,
) -> Vec<String> {
    holders
        .iter()
        .filter(|h| holder_job(h, journal_id).is_some_and(|j| !adopted.contains(&j)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, pgrp: u32, start: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid: 1,
            pgrp,
            session: pgrp,
            start_time: start,
            dead: false,
        }
    }

    fn rec(job: u64, pid: u32, start: u64) -> ProcessRecord {
        ProcessRecord {
            job_id: job,
            token: format!("j:{job}"),
            pid: Some(pid),
            start_time: Some(start),
            pgid: Some(pid),
        }
    }

    #[test]
    fn stat_parses_names_with_spaces_and_parentheses() {
        let text =
            "4242 (we ird) (x)) S 7 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!((s.pid, s.ppid, s.pgrp, s.session), (4242, 7, 4242, 4242));
        assert_eq!(s.start_time, 987654);
        assert!(!s.dead);
        let z = parse_stat("9 (z) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0").expect("z");
        assert!(z.dead);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none(), "too few fields");
    }

    #[test]
    fn this_process_reads_itself() {
        let me = std::process::id();
        let s = read_stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(same_process(me, s.start_time));
        assert!(!same_process(me, s.start_time + 1), "another start time");
        assert!(scan().iter().any(|p| p.pid == me));
    }

    #[test]
    fn a_reused_pid_is_not_the_job() {
        // Job 1's pid 100 now belongs to a process started later.
        let d = plan(&[rec(1, 100, 10)], &[p(100, 100, 99)], &[], Mode::Kill);
        assert_eq!(d[0].verdict, Verdict::Gone);
        let d = plan(&[rec(1, 100, 10)], &[p(100, 100, 99)], &[], Mode::Adopt);
        assert_eq!(d[0].verdict, Verdict::Gone, "nor adopted");
    }

    #[test]
    fn kill_mode_kills_the_leader_and_its_group() {
        let procs = [p(100, 100, 10), p(101, 100, 11), p(200, 200, 12)];
        let d = plan(&[rec(1, 100, 10)], &procs, &[], Mode::Kill);
        assert_eq!(
            d[0].verdict,
            Verdict::Kill {
                pgid: Some(100),
                survivors: vec![
                    Survivor {
                        pid: 100,
                        start_time: 10
                    },
                    Survivor {
                        pid: 101,
                        start_time: 11
                    }
                ],
            }
        );
    }

    #[test]
    fn a_dead_leader_leaves_its_group_to_kill_even_in_adopt_mode() {
        let procs = [p(101, 100, 11)];
        for mode in [Mode::Kill, Mode::Adopt] {
            let d = plan(&[rec(1, 100, 10)], &procs, &[], mode);
            assert!(
                matches!(&d[0].verdict, Verdict::Kill { pgid: Some(100), survivors } if survivors.len() == 1),
                "{mode:?}: {:?}",
                d[0].verdict
            );
        }
    }

    #[test]
    fn a_reused_group_number_is_not_the_job() {
        // The leader died, its number went to a new session leader with
        // members of its own: none of them is the job's.
        let procs = [p(100, 100, 50), p(101, 100, 51)];
        let d = plan(&[rec(1, 100, 10)], &procs, &[], Mode::Kill);
        assert_eq!(d[0].verdict, Verdict::Gone);
    }

    #[test]
    fn adopt_mode_keeps_a_live_leader() {
        let procs = [p(100, 100, 10), p(101, 100, 11)];
        let d = plan(&[rec(1, 100, 10)], &procs, &[], Mode::Adopt);
        assert_eq!(
            d[0].verdict,
            Verdict::Adopt {
                pid: 100,
                start_time: 10,
                pgid: 100
            }
        );
    }

    #[test]
    fn markers_find_unrecorded_processes_and_strays() {
        // Intent only (crash between spawn and the second write).
        let mut r = rec(1, 0, 0);
        r.pid = None;
        r.start_time = None;
        r.pgid = None;
        let procs = [p(300, 300, 30), p(400, 77, 40)];
        let d = plan(&[r], &procs, &[(300, 1), (400, 2)], Mode::Adopt);
        assert_eq!(d.len(), 2, "job 2 found by its marker alone");
        for (job, pid) in [(1, 300), (2, 400)] {
            let v = &d.iter().find(|x| x.job_id == job).expect("job").verdict;
            assert!(
                matches!(v, Verdict::Kill { pgid: None, survivors } if survivors[0].pid == pid),
                "{v:?}"
            );
        }
    }

    #[test]
    fn markers_are_read_from_environ() {
        let env = b"HOME=/x\0PLUGIN_SCHEDULING_JOB=abc:42\0PATH=/bin\0";
        assert_eq!(marker_in(env, "abc"), Some(42));
        assert_eq!(marker_in(env, "ab"), None, "another journal");
        assert_eq!(marker_in(b"PLUGIN_SCHEDULING_JOB=abc:x\0", "abc"), None);
        assert_eq!(marker_token("abc", 42), "abc:42");
    }

    #[test]
    fn quota_holders_of_adopted_jobs_are_kept() {
        let holders = vec![
            "J:1".to_owned(),
            "J:2".to_owned(),
            "K:3".to_owned(),
            "J:x".to_owned(),
        ];
        let adopted = BTreeSet::from([2]);
        assert_eq!(holders_to_release(&holders, "J", &adopted), vec!["J:1"]);
        assert_eq!(holder_job("J:7", "J"), Some(7));
        assert_eq!(holder_job("JJ:7", "J"), None);
    }
}

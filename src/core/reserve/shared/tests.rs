use super::super::ledger::{DeviceReading, Limits, Need, Reading};
use super::file::{check_dir, check_owner, Me, Perm};
use super::owner::my_uid;
use super::*;
use crate::policy::JobInfo;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// Writes a test file as a ledger would be: private.
fn write_private(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
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
    // A view neither creates nor changes a file.
    let missing = path.with_file_name("missing");
    assert!(matches!(view_file(&missing), Ok(None)));
    assert!(!missing.exists());
    let _ = enter(&q, "p", 1_000.0, 0.0, token(&q, 1));
    let bytes = std::fs::read(q.path()).unwrap_or_default();
    assert!(bytes.starts_with(b"PSLEDGER 2\n"), "{:?}", &bytes[..16]);
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
            let (path, held, peak, done) = (path.clone(), held.clone(), peak.clone(), done.clone());
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
        (
            "garbage",
            "hello world\n".to_owned(),
            "is not a plugin-scheduling ledger",
        ),
        ("json", "PSLEDGER 1 5\n{oops".to_owned(), "invalid"),
        ("short", "PSLEDGER 1 500\n{}".to_owned(), "corrupt"),
        ("newer", "PSLEDGER 99 2\n{}".to_owned(), "newer"),
        (
            "inconsistent",
            r#"PSLEDGER 1 65
{"grants":[],"next_grant":0,"waiters":[{"id":0}],"next_waiter":0}"#
                .to_owned(),
            "invalid",
        ),
    ];
    for (name, text, kind) in cases {
        let path = d.join(name);
        write_private(&path, &text);
        let err = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings())
            .map(|_| ())
            .err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(path.to_string_lossy().as_ref()) && msg.contains(kind),
            "{name}: {msg}"
        );
        if name == "garbage" {
            // Not a ledger: never advised to be removed (issue 24 #7).
            assert!(!msg.contains("remove"), "{msg}");
        }
        // Not overwritten.
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text);
    }
    // Another pid namespace's file: refused, not reclaimed.
    let path = d.join("container");
    let body = r#"{"grants":[],"next_grant":0,"waiters":[],"next_waiter":0,"pid_ns":1}"#;
    write_private(&path, format!("PSLEDGER 1 {}\n{body}", body.len()));
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

/// uid 1000, in groups 1000 and 50.
fn user_1000() -> Me {
    Me {
        uid: 1000,
        groups: vec![1000, 50],
    }
}

fn perm(uid: u32, gid: u32, mode: u32) -> Perm {
    Perm { uid, gid, mode }
}

#[test]
fn the_owner_rule() {
    let p = Path::new("/x/gpu");
    let me = user_1000();
    assert!(check_owner(p, perm(1000, 1000, 0o600), &me, 0o600).is_ok());
    let err = check_owner(p, perm(65534, 1000, 0o600), &me, 0o600).err();
    assert!(matches!(
        err,
        Some(SharedError::Foreign {
            owner_uid: 65534,
            my_uid: 1000,
            ..
        })
    ));
    // A group: the file and the request group read-write, the group ours.
    assert!(check_owner(p, perm(65534, 50, 0o660), &me, 0o660).is_ok());
    assert!(check_owner(p, perm(65534, 50, 0o660), &me, 0o600).is_err());
    assert!(check_owner(p, perm(65534, 50, 0o600), &me, 0o660).is_err());
    // ... not a group we are not in, nor a file open to everyone (issue 24 #6).
    assert!(check_owner(p, perm(65534, 77, 0o660), &me, 0o660).is_err());
    let open_to_all = check_owner(p, perm(65534, 50, 0o666), &me, 0o660).err();
    assert!(matches!(open_to_all, Some(SharedError::Exposed { .. })));
    // Even our own file is refused when others may read (lock) or write it.
    assert!(check_owner(p, perm(1000, 1000, 0o604), &me, 0o600).is_err());
}

#[test]
fn the_directory_rule() {
    let p = Path::new("/x");
    let me = user_1000();
    assert!(check_dir(p, perm(1000, 1000, 0o40700), &me, 0o600).is_ok());
    // /tmp: sticky and root's.
    assert!(check_dir(p, perm(0, 0, 0o41777), &me, 0o600).is_ok());
    // Another user's sticky world-writable directory: refused.
    assert!(check_dir(p, perm(65534, 0, 0o41777), &me, 0o600).is_err());
    // Ours but writable by all, or by a group without a group ledger.
    assert!(check_dir(p, perm(1000, 1000, 0o40777), &me, 0o600).is_err());
    assert!(check_dir(p, perm(1000, 50, 0o40770), &me, 0o600).is_err());
    // A group ledger: the group's directory, of one of our groups only.
    assert!(check_dir(p, perm(65534, 50, 0o40770), &me, 0o660).is_ok());
    assert!(check_dir(p, perm(65534, 77, 0o40770), &me, 0o660).is_err());
    assert!(check_dir(p, perm(65534, 50, 0o40777), &me, 0o660).is_err());
    // Another user's private directory.
    assert!(check_dir(p, perm(65534, 65534, 0o40700), &me, 0o600).is_err());
}

#[test]
fn modes_open_to_other_users_are_refused() {
    for bad in [0o666, 0o777, 0o606, 0o604, 0o601, 0o400, 0o1600] {
        let err = check_mode(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("mode") && err.contains(&format!("{bad:#o}")),
            "{bad:o}: {err}"
        );
    }
    for good in [0o600, 0o660, 0o640, 0o620] {
        assert!(check_mode(good).is_ok(), "{good:o}");
    }
    let path = dir("badmode").join("gpu");
    let err = SharedQueue::open(&path, 0o666, &PolicySpec::named("fifo"), settings()).err();
    assert!(matches!(err, Some(SharedError::Mode { mode: 0o666 })));
    assert!(!path.exists(), "nothing created for a refused mode");
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
    std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap_or_else(|e| panic!("{e}"));
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

/// A ledger holding `n` grants of this process, and its file's bytes.
fn ledger_with(path: &Path, n: u64) -> SharedQueue {
    let q = open(path);
    let big = gpu(1e9);
    let me = q.me();
    q.with(|s| {
        for i in 0..n {
            let id = s.join(
                "held",
                need(1.0),
                JobInfo::new(0, "held", 0.0),
                Token { owner: me, id: i },
            );
            let _ = s.offer(Some(id), &big, 0.0);
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    q
}

/// Crash atomicity, exhaustively: a write cut short after any number of
/// bytes (of the body, then of the record; as a SIGKILL between pages
/// leaves it) reads back as the state before or after, never as corrupt
/// (issue 24 #1).
#[test]
fn a_write_cut_short_anywhere_reads_as_before_or_after() {
    let d = dir("torn");
    for held in [0u64, 1, 40] {
        let path = d.join(format!("gpu{held}"));
        let q = ledger_with(&path, held);
        drop(q);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        let before = format::read(&path, &file, true).unwrap_or_else(|e| panic!("{e}"));
        let original = std::fs::read(&path).unwrap_or_default();
        // The next state: one grant more (any other body would do).
        let mut next = before.state.clone();
        next.next_grant += 1;
        next.policy = Some(format!("x{held}"));
        let body = serde_json::to_vec(&next).unwrap_or_default();
        // The bytes the write lays down, in order: a full write on a copy.
        let scratch = d.join(format!("scratch{held}"));
        std::fs::write(&scratch, &original).unwrap_or_else(|e| panic!("{e}"));
        let sf = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&scratch)
            .unwrap_or_else(|e| panic!("{e}"));
        format::write(&scratch, &sf, &before, &body).unwrap_or_else(|e| panic!("{e}"));
        let after = std::fs::read(&scratch).unwrap_or_default();
        // The writes: the body, then the record (or page 0), both known.
        let (slot, rec) = before.newest.unwrap_or((1, format::Record::empty()));
        let body_at = after
            .windows(body.len().max(1))
            .position(|w| w == body.as_slice())
            .unwrap_or_else(|| panic!("body not found"));
        let (rec_at, rec_len) = if before.newest.is_some() {
            (if slot == 0 { 128 } else { 64 }, 48)
        } else {
            (0, 4096)
        };
        let _ = rec;
        let mut cuts: Vec<(usize, usize, usize)> = Vec::new(); // (body bytes, record bytes)
        for k in (0..=body.len()).step_by((body.len() / 64).max(1)) {
            cuts.push((k, 0, 0));
        }
        cuts.push((body.len(), 0, 0));
        for k in 0..=rec_len {
            cuts.push((body.len(), k, 0));
        }
        for (b, r, _) in cuts {
            let mut bytes = original.clone();
            let end = body_at + b;
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[body_at..end].copy_from_slice(&after[body_at..end]);
            if bytes.len() < rec_at + r {
                bytes.resize(rec_at + r, 0);
            }
            bytes[rec_at..rec_at + r].copy_from_slice(&after[rec_at..rec_at + r]);
            std::fs::write(&scratch, &bytes).unwrap_or_else(|e| panic!("{e}"));
            let sf = File::open(&scratch).unwrap_or_else(|e| panic!("{e}"));
            for locked in [true, false] {
                let got = format::read(&scratch, &sf, locked)
                    .unwrap_or_else(|e| panic!("held {held}, cut {b}+{r}: {e}"));
                assert!(
                    got.state == before.state || got.state == next,
                    "held {held}, cut {b}+{r}: another state"
                );
                if r == rec_len {
                    assert!(got.state == next, "a whole write is read");
                }
            }
        }
    }
}

/// Version 1 files (of an older build) are read and rewritten as version 2.
#[test]
fn a_version_1_file_is_migrated() {
    let d = dir("v1");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    let path = d.join("gpu");
    let body = r#"{"grants":[],"next_grant":7,"waiters":[],"next_waiter":3}"#;
    write_private(&path, format!("PSLEDGER 1 {}\n{body}", body.len()));
    let q = open(&path);
    let got = enter(&q, "p", 1_000.0, 0.0, token(&q, 1));
    assert_eq!(got.1.map(|g| g.id.0), Some(7));
    let bytes = std::fs::read(&path).unwrap_or_default();
    assert!(bytes.starts_with(b"PSLEDGER 2\n"));
    assert_eq!(q.view().map(|s| s.grants.len()).ok(), Some(1));
}

/// Hand-edited absurd entries are refused naming the path and the entry,
/// never accepted to block everyone (issue 24 #12).
#[test]
fn absurd_entries_in_a_file_are_refused() {
    let d = dir("absurd");
    let src = d.join("src");
    let q = ledger_with(&src, 1);
    let state = q.view().unwrap_or_else(|e| panic!("{e}"));
    let good = serde_json::to_value(&state).unwrap_or_default();
    let cases: [(&str, &str, serde_json::Value); 5] = [
        ("2^31 MB", "vram_mb", serde_json::json!(2_147_483_648.0)),
        ("1.8e19 MB", "vram_mb", serde_json::json!(1.8e19)),
        ("negative", "vram_mb", serde_json::json!(-1.0)),
        ("time", "granted_at", serde_json::json!(1e308 * 10.0)),
        ("pool", "pools", serde_json::json!([["ram_mb", 1e300]])),
    ];
    for (name, field, value) in cases {
        let mut v = good.clone();
        v["grants"][0]["grant"][field] = value;
        let body = serde_json::to_string(&v).unwrap_or_default();
        let path = d.join(name.replace([' ', '^', '.'], "_"));
        write_private(&path, format!("PSLEDGER 1 {}\n{body}", body.len()));
        let msg = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains(path.to_string_lossy().as_ref())
                && msg.contains("invalid")
                && (msg.contains("grant 0 of \"held\"") || msg.contains("the state")),
            "{name}: {msg}"
        );
        let view = view_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(view.contains("invalid"), "{name}: {view}");
    }
    // A NaN cannot be written in JSON; `null` where a number goes is refused.
    let mut v = good.clone();
    v["grants"][0]["grant"]["vram_mb"] = serde_json::Value::Null;
    let body = serde_json::to_string(&v).unwrap_or_default();
    let path = d.join("nan");
    write_private(&path, format!("PSLEDGER 1 {}\n{body}", body.len()));
    assert!(matches!(view_file(&path), Err(SharedError::Invalid { .. })));
}

/// Devices, FIFOs, huge and foreign files at a ledger path: refused at
/// once, before their body is read, never advised to be removed
/// (issue 24 #7).
#[test]
fn what_is_not_a_ledger_is_refused_without_reading_it() {
    let d = dir("kinds");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    let fifo = d.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let huge = d.join("huge");
    write_private(&huge, "PSLEDGER 2\n");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap_or_else(|e| panic!("{e}"));
    f.set_len(3 << 30).unwrap_or_else(|e| panic!("{e}")); // sparse
    let mut cases = vec![
        (PathBuf::from("/dev/zero"), "a character device"),
        (
            PathBuf::from("/etc/passwd"),
            "does not start with the PSLEDGER header",
        ),
        (huge.clone(), "larger than any plugin-scheduling ledger"),
    ];
    if made {
        cases.push((fifo, "a FIFO"));
    }
    for (path, why) in cases {
        let start = std::time::Instant::now();
        let msg = view_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains(why) && msg.contains(path.to_string_lossy().as_ref()),
            "{}: {msg}",
            path.display()
        );
        assert!(!msg.contains("remove"), "{msg}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
    // Opening for use refuses them too (the huge file is ours: not changed).
    let err = SharedQueue::open(&huge, 0o600, &PolicySpec::named("fifo"), settings()).err();
    assert!(matches!(err, Some(SharedError::TooLarge { .. })), "{err:?}");
    assert_eq!(
        std::fs::metadata(&huge).map(|m| m.len()).ok(),
        Some(3 << 30)
    );
}

/// Symlinks at the ledger's path or as its directory are never followed
/// (issue 24 #6); a directory open to others is refused.
#[test]
fn symlinks_and_open_directories_are_refused() {
    let d = dir("links");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("{e}"));
    let victim = d.join("victim");
    std::fs::write(&victim, "").unwrap_or_else(|e| panic!("{e}"));
    let link = d.join("gpu");
    std::os::unix::fs::symlink(&victim, &link).unwrap_or_else(|e| panic!("{e}"));
    let err = SharedQueue::open(&link, 0o600, &PolicySpec::named("fifo"), settings()).err();
    assert!(matches!(err, Some(SharedError::Symlink { .. })), "{err:?}");
    assert!(matches!(view_file(&link), Err(SharedError::Symlink { .. })));
    assert_eq!(std::fs::read(&victim).unwrap_or_default(), b"");
    // A symlinked directory (as a pre-created <tmp>/plugin-scheduling-<uid>).
    let real = d.join("real");
    std::fs::create_dir_all(&real).unwrap_or_else(|e| panic!("{e}"));
    let linked_dir = d.join("linked");
    std::os::unix::fs::symlink(&real, &linked_dir).unwrap_or_else(|e| panic!("{e}"));
    let err = SharedQueue::open(
        &linked_dir.join("gpu"),
        0o600,
        &PolicySpec::named("fifo"),
        settings(),
    )
    .err();
    assert!(matches!(err, Some(SharedError::Symlink { .. })), "{err:?}");
    assert!(!real.join("gpu").exists());
    // A directory of ours that everyone may write in.
    let open_dir = d.join("open");
    std::fs::create_dir_all(&open_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("{e}"));
    let msg = SharedQueue::open(
        &open_dir.join("gpu"),
        0o600,
        &PolicySpec::named("fifo"),
        settings(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.contains("writable by every user"), "{msg}");
}

/// A lock held (here by another open file of this process, as a stopped
/// process would hold it): operations give up within their wait naming
/// the holder; views and opening do not need the lock (issue 24 #2).
#[test]
fn a_held_lock_fails_within_the_wait_and_views_go_on() {
    let path = dir("busy").join("gpu");
    let q = ledger_with(&path, 3);
    let other = File::open(&path).unwrap_or_else(|e| panic!("{e}"));
    other.lock().unwrap_or_else(|e| panic!("{e}"));
    q.set_lock_wait(std::time::Duration::from_millis(200));
    let start = std::time::Instant::now();
    let err = q.with(|_| ()).err();
    let waited = start.elapsed();
    let msg = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        matches!(&err, Some(SharedError::Busy { holder: Some(h), .. }) if h.pid == std::process::id()),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    // Ctrl-C while waiting: given up.
    q.set_lock_wait(std::time::Duration::from_secs(60));
    let err = q.with_owned_or(|_, _| (), &mut || true).err();
    assert!(matches!(err, Some(SharedError::Interrupted { .. })));
    // Reads need no lock.
    assert_eq!(q.view().map(|s| s.grants.len()).ok(), Some(3));
    assert_eq!(
        view_file(&path).ok().flatten().map(|s| s.grants.len()),
        Some(3)
    );
    assert_eq!(q.read(|s, _| s.ledger().grants().count()).ok(), Some(3));
    let again = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings());
    assert!(again.is_ok());
    other.unlock().unwrap_or_else(|e| panic!("{e}"));
    assert!(q.with(|_| ()).is_ok());
}

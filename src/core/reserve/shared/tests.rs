use super::super::ledger::{DeviceReading, Limits, Need, Reading};
use super::file::check_owner;
use super::owner::my_uid;
use super::*;
use crate::policy::JobInfo;
use std::os::unix::fs::MetadataExt;
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
    let text = std::fs::read_to_string(q.path()).unwrap_or_default();
    assert!(text.starts_with("PSLEDGER 1 "), "{text}");
    // A view neither creates nor changes a file.
    let missing = path.with_file_name("missing");
    assert!(matches!(view_file(&missing), Ok(None)));
    assert!(!missing.exists());
    let _ = enter(&q, "p", 1_000.0, 0.0, token(&q, 1));
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
        ("garbage", "hello world\n".to_owned(), "corrupt"),
        ("json", "PSLEDGER 1 5\n{oops".to_owned(), "corrupt"),
        ("short", "PSLEDGER 1 500\n{}".to_owned(), "corrupt"),
        ("newer", "PSLEDGER 99 2\n{}".to_owned(), "newer"),
        (
            "inconsistent",
            r#"PSLEDGER 1 67
{"grants":[],"next_grant":0,"waiters":[{"id":0}],"next_waiter":0}"#
                .to_owned(),
            "corrupt",
        ),
    ];
    for (name, text, kind) in cases {
        let path = d.join(name);
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let err = SharedQueue::open(&path, 0o600, &PolicySpec::named("fifo"), settings())
            .map(|_| ())
            .err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(path.to_string_lossy().as_ref()) && msg.contains(kind),
            "{name}: {msg}"
        );
        // Not overwritten.
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text);
    }
    // Another pid namespace's file: refused, not reclaimed.
    let path = d.join("container");
    let body = r#"{"grants":[],"next_grant":0,"waiters":[],"next_waiter":0,"pid_ns":1}"#;
    std::fs::write(&path, format!("PSLEDGER 1 {}\n{body}", body.len()))
        .unwrap_or_else(|e| panic!("{e}"));
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

#[test]
fn the_owner_rule() {
    let p = Path::new("/x/gpu");
    assert!(check_owner(p, 1000, 0o600, 1000, 0o600).is_ok());
    let err = check_owner(p, 65534, 0o600, 1000, 0o600).err();
    assert!(matches!(
        err,
        Some(SharedError::Foreign {
            owner_uid: 65534,
            my_uid: 1000,
            ..
        })
    ));
    // A group: both the file and the request must be group read-write.
    assert!(check_owner(p, 65534, 0o660, 1000, 0o660).is_ok());
    assert!(check_owner(p, 65534, 0o660, 1000, 0o600).is_err());
    assert!(check_owner(p, 65534, 0o600, 1000, 0o660).is_err());
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

//! The file's layout (version 2): crash-atomic, readable without the lock.
//!
//! ```text
//! page 0 (4096 bytes)
//!   0..16     preamble "PSLEDGER 2\n", zero padded (a version-1 build
//!             reads "layout version 2" and refuses it as newer)
//!   64..112   record 0 \ each: magic "PSREC2\0\0", generation, offset,
//!   128..176  record 1 / length, body hash, record hash (u64 LE)
//! from 4096   bodies: the JSON of a [`State`], at a record's offset
//! ```
//!
//! Why it survives a SIGKILL at any moment: a write (under the exclusive
//! lock) puts the new body where it overlaps neither page 0 nor the body
//! of the newest record, then writes the *other* record (48 bytes in one
//! page) naming it with the next generation. Until that record is whole,
//! the newest one still names an intact body; a body or record cut short
//! fails its hash and is passed over. Readers take the newest record whose
//! record hash and body hash check. Nothing is ever rewritten in place.
//!
//! Why a read needs no lock: a body is overwritten only two generations
//! after it was written, and a reader checks what it read against the
//! hashes of the record it read first; a write racing the read shows up as
//! a mismatch and the read is retried. So views, `python -m
//! plugin_scheduling ledger` and opening a scheduler see a consistent
//! state even while a stopped process holds the lock.
//!
//! A file that is not a regular file, that has no plugin-scheduling
//! preamble, or that is larger than [`MAX_FILE`] is refused as "not a
//! plugin-scheduling ledger" before its body is read. A file of version 1
//! (`PSLEDGER 1 <length>\n<JSON>`) is read and rewritten as version 2 by
//! the first operation. What is read is checked like what is passed in
//! ([`validate`]): an absurd or negative amount, a non-finite time, an
//! unknown owner is refused naming the path and the entry.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::io;
use super::owner::Alive;
use super::{SharedError, State, VERSION};

/// The first bytes of every version-2 file.
const PREAMBLE: &[u8; 16] = b"PSLEDGER 2\n\0\0\0\0\0";
const RECORD_MAGIC: &[u8; 8] = b"PSREC2\0\0";
/// Page 0 holds the preamble and the two records; bodies start after it.
pub(super) const PAGE: u64 = 4096;
const RECORD_AT: [u64; 2] = [64, 128];
const RECORD_LEN: usize = 48;
/// The longest body read (a state of ~300,000 grants).
pub const MAX_BODY: u64 = 64 << 20;
/// The largest file taken for a ledger (two bodies and their slack).
pub const MAX_FILE: u64 = 2 * MAX_BODY + 2 * PAGE + TRUNCATE_SLACK;
/// Bytes past the newest body a file may keep before it is truncated.
pub(super) const TRUNCATE_SLACK: u64 = 64 * 1024;
/// The largest amount (MB of VRAM or RAM) a file may hold: 2^30 MB, one
/// PiB; no device or machine has that, so more is a damaged file.
pub const MAX_MB: f64 = 1_073_741_824.0;
/// The largest amount of any other pool (cores, user-defined units).
pub const MAX_POOL: f64 = 1e15;

/// 64-bit hash of `bytes` (FNV-1a over 8-byte words, then mixed): it
/// detects torn and stale reads, not forgeries (what is read is validated
/// anyway).
pub(super) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0000_0100_0000_01b3 | (1 << 63));
        h ^= h >> 29;
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Where a body lies and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub generation: u64,
    pub offset: u64,
    pub length: u64,
    pub body_hash: u64,
}

impl Record {
    #[cfg(test)]
    pub(super) fn empty() -> Self {
        Record {
            generation: 0,
            offset: PAGE,
            length: 0,
            body_hash: 0,
        }
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..8].copy_from_slice(RECORD_MAGIC);
        for (i, v) in [self.generation, self.offset, self.length, self.body_hash]
            .into_iter()
            .enumerate()
        {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let h = hash(&out[..40]);
        out[40..].copy_from_slice(&h.to_le_bytes());
        out
    }

    /// A whole record, or `None` (never written, cut short, or damaged).
    fn decode(bytes: &[u8]) -> Option<Record> {
        let bytes = bytes.get(..RECORD_LEN)?;
        let word = |i: usize| -> Option<u64> {
            let b: [u8; 8] = bytes.get(i..i + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(b))
        };
        if &bytes[..8] != RECORD_MAGIC || word(40)? != hash(&bytes[..40]) {
            return None;
        }
        let r = Record {
            generation: word(8)?,
            offset: word(16)?,
            length: word(24)?,
            body_hash: word(32)?,
        };
        (r.offset >= PAGE && r.length <= MAX_BODY).then_some(r)
    }
}

/// What a file holds, as read.
#[derive(Debug)]
pub(super) struct Read {
    pub state: State,
    /// The body as read (an operation that changes nothing writes nothing).
    pub body: Vec<u8>,
    /// The newest record and its slot; `None`: a new file, or version 1.
    pub newest: Option<(usize, Record)>,
    pub file_len: u64,
}

/// Why a single read failed.
enum Attempt {
    /// A race with a writer (or a file damaged for good: known after retries).
    Torn(String),
    Fatal(SharedError),
}

fn not_a_ledger(path: &Path, why: impl Into<String>) -> SharedError {
    SharedError::NotALedger {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// Refuses what is not a regular file or is too large, before reading it;
/// the file's length.
pub(super) fn check_kind(path: &Path, file: &File) -> Result<u64, SharedError> {
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(not_a_ledger(path, kind));
    }
    if meta.len() > MAX_FILE {
        return Err(SharedError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            limit: MAX_FILE,
        });
    }
    Ok(meta.size())
}

/// Refuses a file that does not start like a ledger (of any version), so
/// nothing else is taken for one; an empty (new) file passes.
pub(super) fn check_header(path: &Path, file: &File) -> Result<(), SharedError> {
    let head = read_exact_at(file, 16, 0).map_err(io(path, "read it"))?;
    let ours = head.iter().all(|&b| b == 0)
        || head.starts_with(b"PSLEDGER ")
        || b"PSLEDGER ".starts_with(&head);
    if ours {
        Ok(())
    } else {
        Err(not_a_ledger(
            path,
            "it does not start with the PSLEDGER header",
        ))
    }
}

fn read_exact_at(file: &File, len: usize, at: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// One read of the file; `locked`: no writer can race it, so a record
/// whose body does not check is passed over for the older one.
/// `hint`: the file's length as last seen (0: unknown), to read page 0 and
/// the body in one call when they fit in it.
fn read_once(path: &Path, file: &File, locked: bool, hint: u64) -> Result<Read, Attempt> {
    let fatal = Attempt::Fatal;
    let (head, file_len) = if hint > 0 {
        let want = hint.clamp(PAGE, 4 << 20) as usize;
        let buf = read_exact_at(file, want, 0).map_err(|e| fatal(io(path, "read it")(e)))?;
        // A short read ends at the end of the file: no need to ask its size.
        let len = if buf.len() < want {
            buf.len() as u64
        } else {
            check_kind(path, file).map_err(fatal)?
        };
        (buf, len)
    } else {
        let len = check_kind(path, file).map_err(fatal)?;
        let head = read_exact_at(file, 192, 0).map_err(|e| fatal(io(path, "read it")(e)))?;
        (head, len)
    };
    let fresh = |file_len| Read {
        state: State::default(),
        body: Vec::new(),
        newest: None,
        file_len,
    };
    if head.iter().all(|&b| b == 0) {
        // Never written (or its first page not yet): the empty state.
        return Ok(fresh(file_len));
    }
    if head.starts_with(b"PSLEDGER 1 ") {
        return read_v1(path, file, file_len).map_err(fatal);
    }
    if !head.starts_with(PREAMBLE) {
        if head.starts_with(b"PSLEDGER ") {
            let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let version = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split(' ').nth(1)?.parse::<u32>().ok());
            if let Some(version) = version.filter(|v| *v > VERSION) {
                return Err(fatal(SharedError::Newer {
                    path: path.to_owned(),
                    version,
                }));
            }
        }
        return Err(fatal(not_a_ledger(
            path,
            "it does not start with the PSLEDGER header",
        )));
    }
    let records: Vec<Option<Record>> = RECORD_AT
        .iter()
        .map(|&at| Record::decode(head.get(at as usize..).unwrap_or(&[])))
        .collect();
    let area_zero = |at: u64| {
        head.get(at as usize..at as usize + RECORD_LEN)
            .is_none_or(|b| b.iter().all(|&x| x == 0))
    };
    if records.iter().all(Option::is_none) {
        if RECORD_AT.iter().all(|&at| area_zero(at)) {
            return Ok(fresh(file_len));
        }
        return Err(Attempt::Torn("neither copy of the state is whole".into()));
    }
    let mut order: Vec<(usize, Record)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    order.sort_by_key(|(_, r)| std::cmp::Reverse(r.generation));
    let mut why = String::new();
    for (slot, r) in order {
        let end = r.offset.saturating_add(r.length);
        let body = match head.get(r.offset as usize..end.min(usize::MAX as u64) as usize) {
            Some(b) if end <= head.len() as u64 => b.to_vec(),
            _ => read_exact_at(file, r.length as usize, r.offset)
                .map_err(|e| fatal(io(path, "read it")(e)))?,
        };
        if body.len() as u64 != r.length || hash(&body) != r.body_hash {
            why = format!(
                "the state of generation {} ({} bytes at {}) does not match its checksum",
                r.generation, r.length, r.offset
            );
            if locked {
                continue;
            }
            return Err(Attempt::Torn(why));
        }
        let state = parse_body(path, &body).map_err(fatal)?;
        return Ok(Read {
            state,
            body,
            newest: Some((slot, r)),
            file_len,
        });
    }
    Err(Attempt::Torn(why))
}

/// How long a read without the lock retries a race with writers.
const READ_RETRY_FOR: Duration = Duration::from_secs(2);

/// Reads the state. `locked`: the caller holds the exclusive lock (one
/// pass); else reads race writers and are retried until one checks.
pub(super) fn read(path: &Path, file: &File, locked: bool) -> Result<Read, SharedError> {
    read_hinted(path, file, locked, 0)
}

/// As [`read`], reading the whole file in one call when it is about
/// `hint` bytes long.
pub(super) fn read_hinted(
    path: &Path,
    file: &File,
    locked: bool,
    hint: u64,
) -> Result<Read, SharedError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(10);
    loop {
        match read_once(path, file, locked, hint) {
            Ok(r) => return Ok(r),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Torn(why)) => {
                if locked || start.elapsed() > READ_RETRY_FOR {
                    return Err(SharedError::Corrupt {
                        path: path.to_owned(),
                        why,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
    }
}

/// A version-1 file: one header line then the JSON.
fn read_v1(path: &Path, file: &File, file_len: u64) -> Result<Read, SharedError> {
    let corrupt = |why: String| SharedError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let head = read_exact_at(file, 64, 0).map_err(io(path, "read it"))?;
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header = std::str::from_utf8(&head[..end]).map_err(|_| corrupt("bad header".into()))?;
    let length: u64 = header
        .split(' ')
        .nth(2)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("header {header:?} has no length")))?;
    if length > MAX_BODY {
        return Err(SharedError::TooLarge {
            path: path.to_owned(),
            size: length,
            limit: MAX_BODY,
        });
    }
    let body = read_exact_at(file, length as usize, end as u64 + 1).map_err(io(path, "read it"))?;
    if body.len() as u64 != length {
        return Err(corrupt(format!(
            "{length} bytes announced, {} present",
            body.len()
        )));
    }
    let state = parse_body(path, &body)?;
    Ok(Read {
        state,
        body: Vec::new(), // always rewritten, as version 2
        newest: None,
        file_len,
    })
}

fn parse_body(path: &Path, body: &[u8]) -> Result<State, SharedError> {
    let state: State = serde_json::from_slice(body).map_err(|e| SharedError::Invalid {
        path: path.to_owned(),
        entry: "the state".into(),
        why: e.to_string(),
    })?;
    validate(&state).map_err(|(entry, why)| SharedError::Invalid {
        path: path.to_owned(),
        entry,
        why,
    })?;
    Ok(state)
}

/// What is read is checked like what is passed in: amounts finite, >= 0
/// and below what any machine has, times finite, priorities in 0..=100.
/// The entry and why on failure.
pub(super) fn validate(state: &State) -> Result<(), (String, String)> {
    fn amount(what: &str, v: f64, max: f64) -> Result<(), String> {
        if v.is_finite() && (0.0..=max).contains(&v) {
            Ok(())
        } else {
            Err(format!("{what} = {v} is not a number between 0 and {max}"))
        }
    }
    fn time(what: &str, v: f64) -> Result<(), String> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(format!("{what} = {v} is not a finite time"))
        }
    }
    fn pools(pools: &[(std::sync::Arc<str>, f64)]) -> Result<(), String> {
        for (name, v) in pools {
            let max = if name.as_ref() == super::super::ledger::RAM_MB {
                MAX_MB
            } else {
                MAX_POOL
            };
            amount(&format!("pool {name:?}"), *v, max)?;
        }
        Ok(())
    }
    fn job(j: &crate::policy::JobInfo) -> Result<(), String> {
        if !(j.priority.is_finite() && (0.0..=100.0).contains(&j.priority)) {
            return Err(format!(
                "priority = {} is not between 0 and 100",
                j.priority
            ));
        }
        time("submitted", j.submitted)?;
        if let Some(d) = j.deadline {
            time("deadline", d)?;
        }
        if let Some(d) = j.estimated_duration {
            amount("estimated_duration", d, f64::MAX)?;
        }
        amount("size", j.size, 1e6)
    }
    for h in &state.grants {
        let g = &h.grant;
        let entry = || format!("grant {} of {:?} (pid {})", g.id.0, g.plugin, h.owner.pid);
        let check = || -> Result<(), String> {
            amount("vram_mb", g.vram_mb, MAX_MB)?;
            pools(&g.pools)?;
            time("granted_at", g.granted_at)?;
            if let Some(e) = g.expected_end {
                time("expected_end", e)?;
            }
            if g.devices.len() > 4096 {
                return Err(format!("{} devices", g.devices.len()));
            }
            if let Some(j) = &g.job {
                job(j)?;
            }
            Ok(())
        };
        check().map_err(|why| (entry(), why))?;
    }
    for w in &state.waiters {
        let entry = || {
            format!(
                "waiter {} of {:?} (pid {})",
                w.id.0, w.plugin, w.waker.owner.pid
            )
        };
        let check = || -> Result<(), String> {
            amount("vram_mb", w.need.vram_mb, MAX_MB)?;
            if w.need.gpu_count > 4096 {
                return Err(format!("gpu_count = {}", w.need.gpu_count));
            }
            pools(&w.need.pools)?;
            job(&w.job)?;
            time("last_active", w.last_active)?;
            if let Some((_, at)) = w.granted {
                time("granted", at)?;
            }
            if let Some(at) = w.woken_at {
                time("woken_at", at)?;
            }
            Ok(())
        };
        check().map_err(|why| (entry(), why))?;
    }
    Ok(())
}

/// Where the next body goes: clear of page 0 and of the newest body.
fn place(newest: Option<Record>, length: u64) -> u64 {
    match newest {
        None => PAGE,
        Some(r) if PAGE + length <= r.offset => PAGE,
        Some(r) => (r.offset + r.length).div_ceil(PAGE) * PAGE,
    }
}

/// Writes `body` as the next generation after `read` (the caller holds the
/// exclusive lock); the file's length after.
pub(super) fn write(
    path: &Path,
    file: &File,
    read: &Read,
    body: &[u8],
) -> Result<u64, SharedError> {
    let length = body.len() as u64;
    if length > MAX_BODY {
        return Err(SharedError::TooLarge {
            path: path.to_owned(),
            size: length,
            limit: MAX_BODY,
        });
    }
    let newest = read.newest.map(|(_, r)| r);
    // A version-1 file: the new body after its old content, then page 0
    // whole (one page, one write).
    let v1_end = if read.newest.is_none() {
        read.file_len.div_ceil(PAGE) * PAGE
    } else {
        0
    };
    let offset = place(newest, length).max(v1_end);
    file.write_all_at(body, offset)
        .map_err(io(path, "write it"))?;
    let record = Record {
        generation: newest.map_or(1, |r| r.generation + 1),
        offset,
        length,
        body_hash: hash(body),
    };
    match read.newest {
        Some((slot, _)) => {
            file.write_all_at(&record.encode(), RECORD_AT[1 - slot])
                .map_err(io(path, "write it"))?;
        }
        None => {
            let mut page = vec![0u8; PAGE as usize];
            page[..PREAMBLE.len()].copy_from_slice(PREAMBLE);
            let at = RECORD_AT[0] as usize;
            page[at..at + RECORD_LEN].copy_from_slice(&record.encode());
            file.write_all_at(&page, 0).map_err(io(path, "write it"))?;
        }
    }
    let end = offset + length;
    let file_len = read.file_len.max(end);
    if file_len > end + TRUNCATE_SLACK {
        // Cuts the older body only: its record no longer checks.
        file.set_len(end).map_err(io(path, "truncate it"))?;
        return Ok(end);
    }
    Ok(file_len)
}

/// The ledger at `path` as it is now, without creating or changing it and
/// without its lock (`None`: there is no such file); dead processes'
/// entries left out.
pub fn view_file(path: &Path) -> Result<Option<State>, SharedError> {
    match super::file::open_existing(path)? {
        None => Ok(None),
        Some(file) => read_view(path, &file).map(Some),
    }
}

/// The state without the lock, dead processes' entries left out.
pub(super) fn read_view(path: &Path, file: &File) -> Result<State, SharedError> {
    let mut state = read(path, file, false)?.state;
    let mut alive = Alive::fresh();
    state.grants.retain(|h| alive.check(h.owner));
    state.waiters.retain(|w| alive.check(w.waker.owner));
    Ok(state)
}

//! Workload traces: CSV (header required) or JSON lines, or rows handed
//! over by a front end, with an optional column mapping. Every bad value is
//! reported with its line (or row) and column.
//!
//! Limits, so that every value is simulated exactly and no input can
//! exhaust memory: times (`submit_time`, `duration`, `deadline`,
//! `estimated_duration`) are finite seconds in `0..=`[`MAX_SECONDS`]
//! (1e12 s, about 31,700 years; up to there a double's step is 2^-13 s, and
//! under a millisecond up to the engine's clock limit, so no duration is
//! lost to rounding); a line of a trace
//! file (and a text cell of a row) holds at most [`MAX_LINE_BYTES`]; files
//! are read line by line (UTF-8, an optional byte-order mark), never whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};

/// The trace's fields, in this order (`Cells` are indexed by it).
pub const FIELDS: [&str; 11] = [
    "job_id",
    "submit_time",
    "duration",
    "num_gpu",
    "user",
    "project",
    "priority",
    "vram_mb",
    "ram_mb",
    "deadline",
    "estimated_duration",
];
/// The fields every row must have.
pub const REQUIRED: [&str; 4] = ["job_id", "submit_time", "duration", "num_gpu"];

/// The largest time value (seconds) a trace may hold: 1e12 s, about
/// 31,700 years. Below it a double's step is at most 2^-13 s, so a
/// duration added to a time is never lost to rounding.
pub const MAX_SECONDS: f64 = 1e12;
/// The longest line of a trace file, and the longest text cell of a row
/// (1 MiB); a longer one is refused naming its line.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const JOB_ID: usize = 0;
const SUBMIT: usize = 1;
const DURATION: usize = 2;
const NUM_GPU: usize = 3;
const USER: usize = 4;
const PROJECT: usize = 5;
const PRIORITY: usize = 6;
const VRAM: usize = 7;
const RAM: usize = 8;
const DEADLINE: usize = 9;
const ESTIMATE: usize = 10;

/// One job of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceJob {
    pub job_id: Box<str>,
    /// Seconds.
    pub submit_time: f64,
    /// True run time in seconds (what happens).
    pub duration: f64,
    pub num_gpu: u32,
    pub user: Option<Arc<str>>,
    pub project: Option<Arc<str>>,
    /// 0–100 (default 50).
    pub priority: f64,
    /// Per GPU.
    pub vram_mb: Option<f64>,
    pub ram_mb: Option<f64>,
    /// Seconds after submission by which the job should have finished.
    pub deadline: Option<f64>,
    /// What the scheduler is told (the true duration is `duration`).
    pub estimated_duration: Option<f64>,
    /// Where the job came from ("line 3", "row 0"), for messages.
    pub origin: Box<str>,
}

/// A cell of a row before parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Missing,
    Num(f64),
    Text(String),
}

/// Source column names per field (`mapping[field] = column`); fields not
/// mapped keep their own name.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    names: Vec<String>,
}

impl Columns {
    /// Checks `mapping` (keys must be trace fields, columns distinct).
    pub fn new(mapping: &HashMap<String, String>) -> Result<Self> {
        let mut names: Vec<String> = FIELDS.iter().map(|f| (*f).to_owned()).collect();
        for (field, column) in mapping {
            let Some(i) = FIELDS.iter().position(|f| f == field) else {
                return Err(Error::value(
                    "columns",
                    format!(
                        "unknown trace field {field:?} (fields: {})",
                        FIELDS.join(", ")
                    ),
                ));
            };
            names[i] = column.clone();
        }
        let mut seen = HashSet::new();
        for n in &names {
            if !seen.insert(n.as_str()) {
                return Err(Error::value(
                    "columns",
                    format!("column {n:?} is mapped to two fields"),
                ));
            }
        }
        Ok(Self { names })
    }

    /// The source column of field `i` (see [`FIELDS`]).
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or(FIELDS[i], String::as_str)
    }
}

/// Builds jobs from rows, interning users and projects and refusing
/// duplicate ids.
#[derive(Debug, Default)]
pub struct TraceBuilder {
    columns: Columns,
    jobs: Vec<TraceJob>,
    ids: HashSet<Box<str>>,
    names: HashMap<String, Arc<str>>,
}

fn err(origin: &str, column: &str, message: impl Into<String>) -> Error {
    Error::value(format!("trace {origin}, column {column:?}"), message)
}

impl TraceBuilder {
    pub fn new(columns: Columns) -> Self {
        Self {
            columns,
            ..Self::default()
        }
    }

    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.to_owned(), a.clone());
        a
    }

    fn number(&self, origin: &str, i: usize, cell: &Cell) -> Result<Option<f64>> {
        let col = self.columns.name(i);
        match cell {
            Cell::Missing => Ok(None),
            Cell::Num(v) if v.is_nan() && !REQUIRED.contains(&FIELDS[i]) => Ok(None),
            Cell::Num(v) => Ok(Some(*v)),
            Cell::Text(t) => {
                let t = t.trim();
                if t.is_empty() {
                    return Ok(None);
                }
                match t.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Some(v)),
                    Ok(_) => Err(err(
                        origin,
                        col,
                        format!("must be a finite number, got {t:?}"),
                    )),
                    Err(_) => Err(err(origin, col, format!("must be a number, got {t:?}"))),
                }
            }
        }
    }

    fn seconds(&self, origin: &str, i: usize, cell: &Cell) -> Result<Option<f64>> {
        let v = self.number(origin, i, cell)?;
        if let Some(v) = v {
            if !(v.is_finite() && (0.0..=MAX_SECONDS).contains(&v)) {
                return Err(err(
                    origin,
                    self.columns.name(i),
                    format!(
                        "must be a finite number of seconds from 0 to {MAX_SECONDS:e} (about 31,700 years), got {}",
                        show(v)
                    ),
                ));
            }
        }
        Ok(v)
    }

    fn text(&mut self, i: usize, cell: &Cell) -> Option<Arc<str>> {
        match cell {
            Cell::Missing => None,
            Cell::Num(v) if v.is_nan() => None,
            Cell::Num(v) => Some(self.intern(&fmt_num(*v))),
            Cell::Text(t) if t.trim().is_empty() && i != JOB_ID => None,
            Cell::Text(t) => Some(self.intern(t.trim())),
        }
    }

    /// Adds one row (`cells` indexed by [`FIELDS`]).
    pub fn push(&mut self, origin: &str, cells: &[Cell; 11]) -> Result<()> {
        for &f in &REQUIRED {
            let i = FIELDS.iter().position(|x| *x == f).unwrap_or(0);
            let missing = match &cells[i] {
                Cell::Missing => true,
                Cell::Text(t) => t.trim().is_empty(),
                Cell::Num(v) => v.is_nan(),
            };
            if missing {
                return Err(err(origin, self.columns.name(i), "is required but missing"));
            }
        }
        let job_id: Box<str> = match &cells[JOB_ID] {
            Cell::Num(v) => fmt_num(*v).into(),
            Cell::Text(t) => t.trim().into(),
            Cell::Missing => "".into(),
        };
        if self.ids.contains(&job_id) {
            return Err(err(
                origin,
                self.columns.name(JOB_ID),
                format!("duplicate job_id {job_id:?}"),
            ));
        }
        let submit_time = self.seconds(origin, SUBMIT, &cells[SUBMIT])?.unwrap_or(0.0);
        let duration = self
            .seconds(origin, DURATION, &cells[DURATION])?
            .unwrap_or(0.0);
        let gpus = self
            .number(origin, NUM_GPU, &cells[NUM_GPU])?
            .unwrap_or(0.0);
        if !(gpus.fract() == 0.0 && (1.0..=1_048_576.0).contains(&gpus)) {
            return Err(err(
                origin,
                self.columns.name(NUM_GPU),
                format!("must be a whole number of GPUs >= 1, got {}", show(gpus)),
            ));
        }
        let priority = match self.number(origin, PRIORITY, &cells[PRIORITY]) {
            Ok(p) => p,
            // A named priority (CRITICAL, HIGH, ...).
            Err(e) => match &cells[PRIORITY] {
                Cell::Text(t) => Some(crate::policy::priority_from_name(t.trim()).ok_or(e)?),
                _ => return Err(e),
            },
        };
        let priority = match priority {
            None => crate::policy::DEFAULT_PRIORITY,
            Some(p) if (0.0..=100.0).contains(&p) => p,
            Some(p) => {
                return Err(err(
                    origin,
                    self.columns.name(PRIORITY),
                    format!(
                        "must be 0-100 or CRITICAL/HIGH/NORMAL/LOW/BACKGROUND, got {}",
                        show(p)
                    ),
                ))
            }
        };
        let megabytes = |this: &Self, i: usize| -> Result<Option<f64>> {
            let v = this.number(origin, i, &cells[i])?;
            match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => Err(err(
                    origin,
                    this.columns.name(i),
                    format!("must be a finite number of MB >= 0, got {}", show(v)),
                )),
                _ => Ok(v),
            }
        };
        let vram_mb = megabytes(self, VRAM)?;
        let ram_mb = megabytes(self, RAM)?;
        let deadline = self.seconds(origin, DEADLINE, &cells[DEADLINE])?;
        let estimated_duration = self.seconds(origin, ESTIMATE, &cells[ESTIMATE])?;
        let user = self.text(USER, &cells[USER]);
        let project = self.text(PROJECT, &cells[PROJECT]);
        self.ids.insert(job_id.clone());
        self.jobs.push(TraceJob {
            job_id,
            submit_time,
            duration,
            num_gpu: gpus as u32,
            user,
            project,
            priority,
            vram_mb,
            ram_mb,
            deadline,
            estimated_duration,
            origin: origin.into(),
        });
        Ok(())
    }

    /// The jobs in submission order (ties keep their order in the trace).
    pub fn finish(mut self) -> Vec<TraceJob> {
        self.jobs
            .sort_by(|a, b| a.submit_time.total_cmp(&b.submit_time));
        self.jobs
    }
}

/// A number for a message: plain when of ordinary size, else in
/// scientific notation (`1e308`, not 309 digits).
pub fn show(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-4..1e16).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Splits one CSV record (RFC 4180 quoting within a line).
fn split_csv(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && at_start {
            quoted = true;
            at_start = false;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
            at_start = false;
        }
    }
    if quoted {
        return Err("unterminated quoted field");
    }
    out.push(cur);
    Ok(out)
}

/// One line of a trace: its number (from 1) and its text.
type Line = Result<(usize, String)>;

/// The lines of an in-memory trace (a leading byte-order mark dropped).
fn text_lines(text: &str) -> impl Iterator<Item = Line> + '_ {
    text.trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .map(|(n, l)| {
            if l.len() > MAX_LINE_BYTES {
                Err(too_long(n + 1))
            } else {
                Ok((n + 1, l.to_owned()))
            }
        })
}

fn too_long(line: usize) -> Error {
    Error::value(
        format!("trace line {line}"),
        format!("is longer than {MAX_LINE_BYTES} bytes (the most a trace line may hold)"),
    )
}

/// The lines of a trace file, read as they are needed: each at most
/// [`MAX_LINE_BYTES`], UTF-8 (an error names the line and column of the
/// first bad byte), `\n` or `\r\n` ended, a byte-order mark dropped.
struct FileLines<R> {
    reader: R,
    path: std::path::PathBuf,
    line: usize,
    done: bool,
}

impl<R: std::io::BufRead> FileLines<R> {
    fn read_line(&mut self) -> Result<Option<(usize, String)>> {
        if self.done {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(self.path.clone(), "read trace", e)),
            };
            if chunk.is_empty() {
                self.done = true;
                if bytes.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if bytes.len() + take > MAX_LINE_BYTES + 1 {
                return Err(too_long(self.line + 1));
            }
            bytes.extend_from_slice(&chunk[..take]);
            self.reader.consume(take + usize::from(end));
            if end {
                break;
            }
        }
        self.line += 1;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.len() > MAX_LINE_BYTES {
            return Err(too_long(self.line));
        }
        if self.line == 1 && bytes.starts_with(b"\xef\xbb\xbf") {
            bytes.drain(..3);
        }
        match String::from_utf8(bytes) {
            Ok(s) => Ok(Some((self.line, s))),
            Err(e) => {
                let bad = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                let column = String::from_utf8_lossy(&bytes[..bad]).chars().count() + 1;
                Err(Error::value(
                    format!("trace line {}, column {column}", self.line),
                    format!(
                        "is not valid UTF-8 (byte 0x{:02x}); save the trace as UTF-8",
                        bytes.get(bad).copied().unwrap_or(0)
                    ),
                ))
            }
        }
    }
}

impl<R: std::io::BufRead> Iterator for FileLines<R> {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        self.read_line().transpose()
    }
}

/// Parses a CSV trace (first line: the header).
pub fn parse_csv(text: &str, columns: Columns) -> Result<Vec<TraceJob>> {
    csv_lines(text_lines(text), columns)
}

fn csv_lines(lines: impl Iterator<Item = Line>, columns: Columns) -> Result<Vec<TraceJob>> {
    let mut lines = lines;
    let header = loop {
        match lines.next().transpose()? {
            None => {
                return Err(Error::value(
                    "trace",
                    "is empty (a header line is required)",
                ))
            }
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((n, l)) => {
                break split_csv(l.trim_start_matches('\u{feff}'))
                    .map_err(|m| Error::value(format!("trace line {n}"), m))?
            }
        }
    };
    let header: Vec<String> = header.into_iter().map(|h| h.trim().to_owned()).collect();
    let mut index = [usize::MAX; 11];
    for (i, slot) in index.iter_mut().enumerate() {
        if let Some(p) = header.iter().position(|h| h == columns.name(i)) {
            *slot = p;
        } else if REQUIRED.contains(&FIELDS[i]) {
            return Err(Error::value(
                "trace line 1",
                format!(
                    "header lacks the required column {:?} (header: {})",
                    columns.name(i),
                    header.join(",")
                ),
            ));
        }
    }
    let mut b = TraceBuilder::new(columns);
    for line in lines {
        let (n, line) = line?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("line {n}");
        let mut fields =
            split_csv(&line).map_err(|m| Error::value(format!("trace {origin}"), m))?;
        if fields.len() != header.len() {
            return Err(Error::value(
                format!("trace {origin}"),
                format!(
                    "has {} fields, the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let cells: [Cell; 11] = std::array::from_fn(|i| match index[i] {
            usize::MAX => Cell::Missing,
            p => Cell::Text(std::mem::take(&mut fields[p])),
        });
        b.push(&origin, &cells)?;
    }
    Ok(b.finish())
}

/// Parses a JSON-lines trace (one object per line).
pub fn parse_jsonl(text: &str, columns: Columns) -> Result<Vec<TraceJob>> {
    jsonl_lines(text_lines(text), columns)
}

fn jsonl_lines(lines: impl Iterator<Item = Line>, columns: Columns) -> Result<Vec<TraceJob>> {
    let mut b = TraceBuilder::new(columns);
    for line in lines {
        let (n, line) = line?;
        let line = if n == 1 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("line {n}");
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // serde's position is within this line: say only the column.
            let text = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            let why = text.strip_suffix(&at).unwrap_or(&text);
            Error::value(
                format!("trace {origin}, column {}", e.column()),
                format!("is not JSON: {why}"),
            )
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::value(
                format!("trace {origin}"),
                "must be a JSON object",
            ));
        };
        let cells: [Cell; 11] = std::array::from_fn(|i| match map.get(b.columns().name(i)) {
            None | Some(serde_json::Value::Null) => Cell::Missing,
            Some(serde_json::Value::Number(x)) => Cell::Num(x.as_f64().unwrap_or(f64::NAN)),
            Some(serde_json::Value::String(s)) => Cell::Text(s.clone()),
            Some(other) => Cell::Text(other.to_string()),
        });
        b.push(&origin, &cells)?;
    }
    Ok(b.finish())
}

/// Reads a trace file, line by line: JSON lines if the name ends in
/// `.jsonl`/`.ndjson` or the first non-blank character is `{`, else CSV.
pub fn read_path(path: &std::path::Path, columns: Columns) -> Result<Vec<TraceJob>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read trace", e))?;
    let mut lines = FileLines {
        reader: std::io::BufReader::with_capacity(1 << 16, file),
        path: path.to_owned(),
        line: 0,
        done: false,
    };
    // The blank lines before the first that is not, then that one.
    let mut head = Vec::new();
    let first = loop {
        match lines.read_line()? {
            None => break None,
            Some((n, l)) if l.trim().is_empty() => head.push(Ok((n, l))),
            Some(line) => break Some(line),
        }
    };
    let json = first
        .as_ref()
        .is_some_and(|(_, l)| l.trim_start().starts_with('{'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let all = head.into_iter().chain(first.map(Ok)).chain(lines);
    if ext == "jsonl" || ext == "ndjson" || json {
        jsonl_lines(all, columns)
    } else {
        csv_lines(all, columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<TraceJob>> {
        parse_csv(text, Columns::default())
    }

    #[test]
    fn csv_with_optional_columns_and_quotes() {
        let jobs = csv(
            "job_id,submit_time,duration,num_gpu,user,priority,deadline\n\
             b,5,10,2,\"smith, j\",HIGH,\n\
             a,1,3.5,1,,,20\n",
        )
        .expect("parses");
        assert_eq!(jobs.len(), 2);
        assert_eq!(&*jobs[0].job_id, "a");
        assert_eq!(jobs[0].deadline, Some(20.0));
        assert_eq!(jobs[0].user, None);
        assert_eq!(jobs[0].priority, 50.0);
        assert_eq!(jobs[1].user.as_deref(), Some("smith, j"));
        assert_eq!(jobs[1].priority, 75.0);
        assert_eq!(&*jobs[1].origin, "line 2");
    }

    #[test]
    fn bad_rows_name_the_line_and_column() {
        let e = csv("job_id,submit_time,duration,num_gpu\na,0,1,1\nb,0,abc,1\n")
            .expect_err("bad duration");
        assert_eq!(
            e.to_string(),
            "trace line 3, column \"duration\": must be a number, got \"abc\""
        );
        let e = csv("job_id,submit_time,duration,num_gpu\na,0,1,0\n").expect_err("0 GPUs");
        assert!(e.to_string().contains("line 2, column \"num_gpu\""), "{e}");
        let e = csv("job_id,submit_time,duration,num_gpu\na,0,1,1.5\n").expect_err("1.5");
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = csv("job_id,submit_time,duration,num_gpu\na,-1,1,1\n").expect_err("negative");
        assert!(
            e.to_string().contains("line 2, column \"submit_time\""),
            "{e}"
        );
        let e = csv("job_id,submit_time,duration\na,0,1\n").expect_err("missing column");
        assert!(e.to_string().contains("\"num_gpu\""), "{e}");
        let e = csv("job_id,submit_time,duration,num_gpu\na,0,1,1\na,0,1,1\n").expect_err("dup");
        assert!(e.to_string().contains("line 3") && e.to_string().contains("duplicate"));
        let e = csv("job_id,submit_time,duration,num_gpu\na,0,1\n").expect_err("short row");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = csv("job_id,submit_time,duration,num_gpu\n,0,1,1\n").expect_err("no id");
        assert!(e.to_string().contains("required"), "{e}");
        let e = csv("job_id,submit_time,duration,num_gpu,priority\na,0,1,1,urgent\n")
            .expect_err("priority");
        assert!(e.to_string().contains("column \"priority\""), "{e}");
        assert!(csv("").is_err());
    }

    #[test]
    fn jsonl_and_column_mapping() {
        let mapping: HashMap<String, String> = [
            ("job_id".to_owned(), "id".to_owned()),
            ("num_gpu".to_owned(), "gpus".to_owned()),
        ]
        .into();
        let cols = Columns::new(&mapping).expect("mapping");
        let jobs = parse_jsonl(
            "{\"id\": 7, \"submit_time\": 0, \"duration\": 4, \"gpus\": 2, \"user\": \"u\"}\n\n\
             {\"id\": \"x\", \"submit_time\": 1, \"duration\": 4, \"gpus\": 1, \"vram_mb\": null}\n",
            cols.clone(),
        )
        .expect("parses");
        assert_eq!(&*jobs[0].job_id, "7");
        assert_eq!(jobs[0].num_gpu, 2);
        let e = parse_jsonl("{\"id\": 1, \"submit_time\": 0, \"duration\": 4}\n", cols)
            .expect_err("missing gpus");
        assert!(e.to_string().contains("line 1, column \"gpus\""), "{e}");
        let bad: HashMap<String, String> = [("gpu".to_owned(), "x".to_owned())].into();
        assert!(Columns::new(&bad).is_err());
        assert!(parse_jsonl("[1]\n", Columns::default()).is_err());
        assert!(parse_jsonl("{oops\n", Columns::default())
            .expect_err("not json")
            .to_string()
            .contains("line 1"));
    }

    const HEAD: &str = "job_id,submit_time,duration,num_gpu\n";

    fn lines_of(bytes: &[u8]) -> FileLines<std::io::BufReader<&[u8]>> {
        FileLines {
            reader: std::io::BufReader::with_capacity(16, bytes),
            path: "t.csv".into(),
            line: 0,
            done: false,
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<TraceJob>> {
        csv_lines(lines_of(bytes), Columns::default())
    }

    #[test]
    fn times_beyond_the_limit_or_not_finite_are_refused_naming_line_and_column() {
        // 2^52 s: beyond MAX_SECONDS, where a duration could be lost.
        let e = csv(&format!("{HEAD}a,0,1,1\nb,4503599627370496,1,1\n")).expect_err("2^52");
        assert!(
            e.to_string()
                .starts_with("trace line 3, column \"submit_time\": must be a finite number of seconds from 0 to 1e12"),
            "{e}"
        );
        assert!(e.to_string().ends_with("got 4503599627370496"), "{e}");
        let e = csv(&format!("{HEAD}a,0,1e308,1\n")).expect_err("1e308");
        assert!(e.to_string().contains("column \"duration\""), "{e}");
        assert!(e.to_string().ends_with("got 1e308"), "{e}");
        for text in ["1e400", "inf", "-inf", "NaN"] {
            let e = csv(&format!("{HEAD}a,0,{text},1\n")).expect_err(text);
            assert_eq!(
                e.to_string(),
                format!("trace line 2, column \"duration\": must be a finite number, got {text:?}")
            );
        }
        let e = csv("job_id,submit_time,duration,num_gpu,deadline\na,0,1,1,1e13\n")
            .expect_err("deadline");
        assert!(e.to_string().contains("column \"deadline\""), "{e}");
        // JSON: an out-of-range number names the line and the column.
        let e = parse_jsonl(
            "{\"job_id\": \"a\", \"submit_time\": 0, \"duration\": 1, \"num_gpu\": 1}\n\
             {\"job_id\": \"b\", \"submit_time\": 0, \"duration\": 1e400, \"num_gpu\": 1}\n",
            Columns::default(),
        )
        .expect_err("1e400");
        assert_eq!(
            e.to_string(),
            "trace line 2, column 51: is not JSON: number out of range"
        );
        // The limit itself is fine, and exact.
        let jobs = csv(&format!("{HEAD}a,1e12,1e12,1\n")).expect("at the limit");
        assert_eq!(jobs[0].submit_time + jobs[0].duration, 2e12);
    }

    #[test]
    fn files_are_utf8_read_by_line_with_the_bad_byte_located() {
        let e = read_all(b"job_id,submit_time,duration,num_gpu\na,0,1,1\nb\xc3\xa9\xff,0,1,1\n")
            .expect_err("not UTF-8");
        assert_eq!(
            e.to_string(),
            "trace line 3, column 3: is not valid UTF-8 (byte 0xff); save the trace as UTF-8"
        );
        // CRLF, a BOM and a last line without a newline read as in memory.
        let text = "\u{feff}job_id,submit_time,duration,num_gpu\r\na,0,1,1\r\n\r\nb,2,3,2";
        let from_file = read_all(text.as_bytes()).expect("reads");
        assert_eq!(from_file, csv(text).expect("parses"));
        assert_eq!(from_file.len(), 2);
        assert_eq!(&*from_file[1].origin, "line 4");
    }

    #[test]
    fn a_byte_order_mark_is_accepted_in_json_lines_too() {
        let row = "{\"job_id\": \"a\", \"submit_time\": 0, \"duration\": 1, \"num_gpu\": 1}\n";
        let jobs = parse_jsonl(&format!("\u{feff}{row}"), Columns::default()).expect("BOM");
        assert_eq!(jobs.len(), 1);
        let dir = std::env::temp_dir().join(format!("ps-trace-bom-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        // Detected as JSON lines by its first character, after the BOM.
        let path = dir.join("trace.txt");
        assert!(std::fs::write(&path, format!("\u{feff}\n{row}")).is_ok());
        let e = read_path(&path, Columns::default());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e.expect("reads").len(), 1);
    }

    #[test]
    fn an_endless_or_huge_line_is_refused_without_reading_it_all() {
        use std::io::Read;
        // An endless line (like /dev/zero) stops at the limit.
        let mut endless = FileLines {
            reader: std::io::BufReader::new(std::io::repeat(b'x')),
            path: "/dev/zero".into(),
            line: 0,
            done: false,
        };
        let e = endless.read_line().expect_err("too long");
        assert_eq!(
            e.to_string(),
            format!("trace line 1: is longer than {MAX_LINE_BYTES} bytes (the most a trace line may hold)")
        );
        let mut long = HEAD.as_bytes().to_vec();
        std::io::repeat(b'a')
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_to_end(&mut long)
            .expect("fills");
        long.extend_from_slice(b",0,1,1\n");
        let e = read_all(&long).expect_err("long line");
        assert!(
            e.to_string().starts_with("trace line 2: is longer than"),
            "{e}"
        );
        // Exactly the limit (CR not counted) is fine.
        let mut fits = HEAD.as_bytes().to_vec();
        let cell = MAX_LINE_BYTES - ",0,1,1".len();
        fits.extend(std::iter::repeat_n(b'a', cell));
        fits.extend_from_slice(b",0,1,1\r\n");
        assert_eq!(read_all(&fits).expect("fits")[0].job_id.len(), cell);
    }
}

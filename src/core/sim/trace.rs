//! Workload traces: CSV (header required) or JSON lines, or rows handed
//! over by a front end, with an optional column mapping. Every bad value is
//! reported with its line (or row) and column.

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
                t.parse::<f64>()
                    .map(Some)
                    .map_err(|_| err(origin, col, format!("must be a number, got {t:?}")))
            }
        }
    }

    fn seconds(&self, origin: &str, i: usize, cell: &Cell) -> Result<Option<f64>> {
        let v = self.number(origin, i, cell)?;
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(
                    origin,
                    self.columns.name(i),
                    format!("must be a finite number of seconds >= 0, got {v}"),
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
                format!("must be a whole number of GPUs >= 1, got {gpus}"),
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
                    format!("must be 0-100 or CRITICAL/HIGH/NORMAL/LOW/BACKGROUND, got {p}"),
                ))
            }
        };
        let megabytes = |this: &Self, i: usize| -> Result<Option<f64>> {
            let v = this.number(origin, i, &cells[i])?;
            match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => Err(err(
                    origin,
                    this.columns.name(i),
                    format!("must be a finite number of MB >= 0, got {v}"),
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

/// Parses a CSV trace (first line: the header).
pub fn parse_csv(text: &str, columns: Columns) -> Result<Vec<TraceJob>> {
    let mut lines = text.lines().enumerate();
    let header = loop {
        match lines.next() {
            None => {
                return Err(Error::value(
                    "trace",
                    "is empty (a header line is required)",
                ))
            }
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((n, l)) => {
                break split_csv(l.trim_start_matches('\u{feff}'))
                    .map_err(|m| Error::value(format!("trace line {}", n + 1), m))?
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
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("line {}", n + 1);
        let fields = split_csv(line).map_err(|m| Error::value(format!("trace {origin}"), m))?;
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
            p => Cell::Text(fields[p].clone()),
        });
        b.push(&origin, &cells)?;
    }
    Ok(b.finish())
}

/// Parses a JSON-lines trace (one object per line).
pub fn parse_jsonl(text: &str, columns: Columns) -> Result<Vec<TraceJob>> {
    let mut b = TraceBuilder::new(columns);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("line {}", n + 1);
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::value(format!("trace {origin}"), format!("is not JSON: {e}")))?;
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

/// Reads a trace file: JSON lines if the name ends in `.jsonl`/`.ndjson`
/// or the first non-blank character is `{`, else CSV.
pub fn read_path(path: &std::path::Path, columns: Columns) -> Result<Vec<TraceJob>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read trace", e))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jsonl" || ext == "ndjson" || text.trim_start().starts_with('{') {
        parse_jsonl(&text, columns)
    } else {
        parse_csv(&text, columns)
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
}

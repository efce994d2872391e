//! Synthetic workloads (Gavel-like by default): Poisson arrivals, GPU
//! counts from a discrete distribution, durations log-uniform over ranges
//! (in log10 minutes) chosen with given weights, users uniformly at random.

use std::fmt::Write as _;
use std::sync::Arc;

use super::trace::{show, TraceJob, MAX_SECONDS};
use crate::error::{Error, Result};

/// The most jobs one synthetic trace may have (10 million, about 2 GB in
/// memory); more is refused rather than exhausting memory.
pub const MAX_JOBS: usize = 10_000_000;
/// The most users a synthetic trace may draw from.
pub const MAX_USERS: u32 = 1_000_000;
/// The longest duration range, in log10 minutes (10^10 minutes, about
/// 19,000 years, within the trace limit [`MAX_SECONDS`]).
pub const MAX_LOG10_MINUTES: f64 = 10.0;

/// A workload's distributions.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub jobs: usize,
    pub seed: u64,
    /// Mean arrivals per hour (Poisson).
    pub jobs_per_hour: f64,
    /// (GPUs, weight).
    pub gpus: Vec<(u32, f64)>,
    /// (log10 minutes low, high, weight): duration = 10^U(low, high) minutes.
    pub durations: Vec<(f64, f64, f64)>,
    pub users: u32,
    /// Deadline = this × duration after submission (none when `None`).
    pub deadline_slack: Option<f64>,
}

impl Default for WorkloadSpec {
    /// Gavel's defaults: 1/2/4/8 GPUs at 70/10/15/5 %, durations
    /// 10^U(1.5, 3) minutes (80 %) or 10^U(3, 4) minutes (20 %).
    fn default() -> Self {
        Self {
            jobs: 1000,
            seed: 0,
            jobs_per_hour: 30.0,
            gpus: vec![(1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05)],
            durations: vec![(1.5, 3.0, 0.8), (3.0, 4.0, 0.2)],
            users: 10,
            deadline_slack: None,
        }
    }
}

/// SplitMix64: small, fast, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<T>(&mut self, items: &[T], weight: impl Fn(&T) -> f64) -> usize {
        let total: f64 = items.iter().map(&weight).sum();
        let mut x = self.uniform() * total;
        for (i, it) in items.iter().enumerate() {
            x -= weight(it);
            if x < 0.0 {
                return i;
            }
        }
        items.len() - 1
    }
}

impl WorkloadSpec {
    pub fn validate(&self) -> Result<()> {
        if self.jobs > MAX_JOBS {
            return Err(Error::value(
                "jobs",
                format!("must be at most {MAX_JOBS}, got {}", self.jobs),
            ));
        }
        crate::error::finite_in("jobs_per_hour", self.jobs_per_hour, f64::MIN_POSITIVE, 1e12)?;
        if self.gpus.is_empty()
            || self
                .gpus
                .iter()
                .any(|&(g, w)| g == 0 || !(w >= 0.0 && w.is_finite()))
        {
            return Err(Error::value(
                "gpus",
                format!(
                    "needs GPU counts >= 1 with weights >= 0, got {:?}",
                    self.gpus
                ),
            ));
        }
        if self.gpus.iter().map(|g| g.1).sum::<f64>() <= 0.0 {
            return Err(Error::value("gpus", "weights sum to 0"));
        }
        if self.durations.is_empty()
            || self.durations.iter().any(|&(lo, hi, w)| {
                !(lo.is_finite()
                    && hi.is_finite()
                    && lo <= hi
                    && hi <= MAX_LOG10_MINUTES
                    && w >= 0.0
                    && w.is_finite())
            })
            || self.durations.iter().map(|d| d.2).sum::<f64>() <= 0.0
        {
            return Err(Error::value(
                "durations",
                format!(
                    "needs ranges low <= high (log10 minutes, at most {MAX_LOG10_MINUTES}) with weights >= 0 summing above 0, got {:?}",
                    self.durations
                ),
            ));
        }
        if !(1..=MAX_USERS).contains(&self.users) {
            return Err(Error::value(
                "users",
                format!("must be 1 to {MAX_USERS}, got {}", self.users),
            ));
        }
        if let Some(s) = self.deadline_slack {
            crate::error::finite_in("deadline_slack", s, 0.0, 1e9)?;
        }
        Ok(())
    }

    /// The jobs, in submission order.
    pub fn generate(&self) -> Result<Vec<TraceJob>> {
        self.validate()?;
        let mut rng = Rng::new(self.seed);
        let users: Vec<Arc<str>> = (0..self.users)
            .map(|u| Arc::from(format!("user{u}").as_str()))
            .collect();
        let mean_gap = 3600.0 / self.jobs_per_hour;
        let mut t = 0.0f64;
        let mut jobs = Vec::with_capacity(self.jobs);
        for i in 0..self.jobs {
            if i > 0 {
                t += -mean_gap * (1.0 - rng.uniform()).ln();
            }
            // Whole milliseconds, so a written trace reads back exactly.
            let submit = (t * 1000.0).round() / 1000.0;
            if !(0.0..=MAX_SECONDS).contains(&submit) {
                return Err(Error::value(
                    "jobs_per_hour",
                    format!(
                        "{} jobs at {} per hour arrive over more than {MAX_SECONDS:e} s (the most a trace may span); give more jobs per hour or fewer jobs",
                        self.jobs,
                        show(self.jobs_per_hour)
                    ),
                ));
            }
            let g = self.gpus[rng.pick(&self.gpus, |g| g.1)].0;
            let (lo, hi, _) = self.durations[rng.pick(&self.durations, |d| d.2)];
            let minutes = 10f64.powf(lo + (hi - lo) * rng.uniform());
            let duration = (minutes * 60.0).round().max(1.0);
            let user = users[(rng.next_u64() % u64::from(self.users)) as usize].clone();
            let deadline = self.deadline_slack.map(|s| (s * duration).round());
            if deadline.is_some_and(|d| !(0.0..=MAX_SECONDS).contains(&d)) {
                return Err(Error::value(
                    "deadline_slack",
                    format!(
                        "{} × a duration of {duration} s is beyond {MAX_SECONDS:e} s (the longest deadline a trace may hold)",
                        show(self.deadline_slack.unwrap_or_default())
                    ),
                ));
            }
            jobs.push(TraceJob {
                job_id: format!("job{i}").into(),
                submit_time: submit,
                duration,
                num_gpu: g,
                user: Some(user),
                project: None,
                priority: crate::policy::DEFAULT_PRIORITY,
                vram_mb: None,
                ram_mb: None,
                deadline,
                estimated_duration: None,
                origin: format!("row {i}").into(),
            });
        }
        Ok(jobs)
    }
}

/// Writes `jobs` as a CSV trace (the columns they use).
pub fn to_csv(jobs: &[TraceJob]) -> String {
    let deadlines = jobs.iter().any(|j| j.deadline.is_some());
    let mut out = String::from("job_id,submit_time,duration,num_gpu,user");
    if deadlines {
        out.push_str(",deadline");
    }
    out.push('\n');
    for j in jobs {
        let _ = write!(
            out,
            "{},{},{},{},{}",
            j.job_id,
            j.submit_time,
            j.duration,
            j.num_gpu,
            j.user.as_deref().unwrap_or("")
        );
        if deadlines {
            if let Some(d) = j.deadline {
                let _ = write!(out, ",{d}");
            } else {
                out.push(',');
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::trace::{parse_csv, Columns};
    use super::*;

    #[test]
    fn gavel_like_mix_is_reproducible_and_round_trips() {
        let spec = WorkloadSpec {
            jobs: 20_000,
            seed: 7,
            ..WorkloadSpec::default()
        };
        let a = spec.generate().expect("generates");
        assert_eq!(a, spec.generate().expect("again"));
        let share = |g| a.iter().filter(|j| j.num_gpu == g).count() as f64 / a.len() as f64;
        assert!((share(1) - 0.70).abs() < 0.02, "{}", share(1));
        assert!((share(8) - 0.05).abs() < 0.01);
        let long = a.iter().filter(|j| j.duration > 60_000.0).count() as f64 / a.len() as f64;
        assert!((long - 0.2).abs() < 0.02, "{long}");
        // Poisson: mean gap 120 s at 30 jobs/hour.
        let gap = a.last().map_or(0.0, |j| j.submit_time) / (a.len() - 1) as f64;
        assert!((gap - 120.0).abs() < 5.0, "{gap}");
        let back = parse_csv(&to_csv(&a[..100]), Columns::default()).expect("reads back");
        assert_eq!(back.len(), 100);
        assert_eq!(back[5].submit_time, a[5].submit_time);
        assert_eq!(back[5].user, a[5].user);
        assert!(WorkloadSpec {
            gpus: vec![(0, 1.0)],
            ..WorkloadSpec::default()
        }
        .generate()
        .is_err());
    }
}

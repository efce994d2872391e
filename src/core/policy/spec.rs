//! A policy described by name and settings (what Python hands over), built
//! into a [`Policy`] with every setting checked.

use std::path::PathBuf;

use super::{
    Backfill, BestEffortFifo, Deadline, FairShare, Fifo, Multifactor, MultifactorWeights, Policy,
    Priority, RoundRobin, ShareKey, ShortestJobFirst, UsageBook, NAMES,
};
use crate::error::{finite_in, Error, Result};

/// Settings a policy may take; each policy reads the ones it has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySpec {
    pub name: String,
    /// priority: effective priority points gained per second waited.
    pub aging_per_s: Option<f64>,
    /// fair_share, multifactor: usage half-life (seconds).
    pub half_life_s: Option<f64>,
    /// fair_share, round_robin, multifactor: "user" or "project".
    pub by: Option<String>,
    /// fair_share, multifactor: shares per account (default 1 each).
    pub shares: Vec<(String, f64)>,
    /// fair_share, multifactor: SQLite file that keeps usage across restarts.
    pub usage_path: Option<PathBuf>,
    /// deadline: seconds before the deadline over which the boost grows.
    pub window_s: Option<f64>,
    /// deadline: priority points added at the deadline.
    pub boost: Option<f64>,
    /// multifactor weights.
    pub weights: Option<MultifactorWeights>,
}

impl PolicySpec {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    fn usage(&self, now: f64) -> Result<UsageBook> {
        let half_life = match self.half_life_s {
            Some(h) => finite_in("half_life_s", h, 1e-3, 1e12)?,
            None => 7.0 * 86_400.0,
        };
        let book = match &self.usage_path {
            Some(path) => UsageBook::open(path, half_life, now)?,
            None => UsageBook::in_memory(half_life),
        };
        for (account, shares) in &self.shares {
            book.set_shares(account, *shares).map_err(|_| {
                Error::value(
                    format!("shares[{account:?}]"),
                    format!("must be a finite number >= 0, got {shares}"),
                )
            })?;
        }
        Ok(book)
    }

    fn key(&self) -> Result<ShareKey> {
        match self.by.as_deref() {
            None => Ok(ShareKey::User),
            Some(s) => ShareKey::parse(s).ok_or_else(|| {
                Error::value("by", format!("must be 'user' or 'project', got {s:?}"))
            }),
        }
    }

    /// Builds the policy; `now` is the clock time (for loading usage).
    pub fn build(&self, now: f64) -> Result<Box<dyn Policy>> {
        Ok(match self.name.as_str() {
            "fifo" => Box::new(Fifo),
            "best_effort_fifo" => Box::new(BestEffortFifo),
            "backfill" => Box::new(Backfill),
            "priority" => {
                let mut p = Priority::default();
                if let Some(a) = self.aging_per_s {
                    p.aging_per_s = finite_in("aging_per_s", a, 0.0, 1e9)?;
                }
                Box::new(p)
            }
            "deadline" => {
                let mut d = Deadline::default();
                if let Some(w) = self.window_s {
                    d.window_s = finite_in("window_s", w, 0.0, 1e12)?;
                }
                if let Some(b) = self.boost {
                    d.boost = finite_in("boost", b, 0.0, 1e6)?;
                }
                Box::new(d)
            }
            "sjf" => Box::new(ShortestJobFirst::default()),
            "las" => Box::new(super::Las::default()),
            "round_robin" => Box::new(RoundRobin::new(self.key()?)),
            "fair_share" => Box::new(FairShare::new(self.usage(now)?, self.key()?)),
            "multifactor" => {
                let w = self.weights.unwrap_or_default();
                for (field, v) in [
                    ("weights['age']", w.age),
                    ("weights['fair_share']", w.fair_share),
                    ("weights['priority']", w.priority),
                    ("weights['size']", w.size),
                    ("weights['max_age_s']", w.max_age_s),
                    ("weights['size_norm']", w.size_norm),
                ] {
                    finite_in(field, v, 0.0, 1e12)?;
                }
                Box::new(Multifactor::new(self.usage(now)?, w).with_key(self.key()?))
            }
            other => {
                return Err(Error::value(
                    "policy",
                    format!("must be one of {}, got {other:?}", NAMES.join(", ")),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_and_bad_settings_name_the_field() {
        for name in NAMES {
            let p = PolicySpec::named(name)
                .build(0.0)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name(), name);
        }
        let mut s = PolicySpec::named("priority");
        s.aging_per_s = Some(f64::NAN);
        let e = s
            .build(0.0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("aging_per_s:"), "{e}");
        let mut s = PolicySpec::named("fair_share");
        s.by = Some("team".into());
        assert!(s.build(0.0).is_err());
        assert!(PolicySpec::named("lottery").build(0.0).is_err());
    }
}

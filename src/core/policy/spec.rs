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
        let half_life = self.half_life_s.unwrap_or(7.0 * 86_400.0);
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

    /// Checks the name and every setting, without building the policy (so
    /// without opening `usage_path`): what a policy object checks when it is
    /// made, so a bad setting fails there and not at first use.
    pub fn validate(&self) -> Result<()> {
        let name = canonical_name(&self.name)?;
        let uses_key = matches!(name, "fair_share" | "round_robin" | "multifactor");
        if let Some(a) = self.aging_per_s {
            finite_in("aging_per_s", a, 0.0, 1e9)?;
        }
        if let Some(h) = self.half_life_s {
            finite_in("half_life_s", h, 1e-3, 1e12)?;
        }
        if let Some(w) = self.window_s {
            finite_in("window_s", w, 0.0, 1e12)?;
        }
        if let Some(b) = self.boost {
            finite_in("boost", b, 0.0, 1e6)?;
        }
        for (account, shares) in &self.shares {
            if !(shares.is_finite() && *shares >= 0.0) {
                return Err(Error::value(
                    format!("shares[{account:?}]"),
                    format!("must be a finite number >= 0, got {shares}"),
                ));
            }
        }
        if uses_key || self.by.is_some() {
            self.key()?;
        }
        if let Some(w) = self.weights {
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
        }
        Ok(())
    }

    /// Builds the policy; `now` is the clock time (for loading usage).
    pub fn build(&self, now: f64) -> Result<Box<dyn Policy>> {
        self.validate()?;
        Ok(match canonical_name(&self.name)? {
            "fifo" => Box::new(Fifo),
            "best_effort_fifo" => Box::new(BestEffortFifo),
            "backfill" => Box::new(Backfill),
            "priority" => {
                let mut p = Priority::default();
                if let Some(a) = self.aging_per_s {
                    p.aging_per_s = a;
                }
                Box::new(p)
            }
            "deadline" => {
                let mut d = Deadline::default();
                if let Some(w) = self.window_s {
                    d.window_s = w;
                }
                if let Some(b) = self.boost {
                    d.boost = b;
                }
                Box::new(d)
            }
            "sjf" => Box::new(ShortestJobFirst::default()),
            "las" => Box::new(super::Las::default()),
            "round_robin" => Box::new(RoundRobin::new(self.key()?)),
            "fair_share" => Box::new(FairShare::new(self.usage(now)?, self.key()?)),
            "multifactor" => Box::new(
                Multifactor::new(self.usage(now)?, self.weights.unwrap_or_default())
                    .with_key(self.key()?),
            ),
            other => return Err(unknown_name(other)),
        })
    }
}

/// The built-in policy `name` stands for, ignoring case (`"FIFO"` is
/// `"fifo"`); an unknown name is an error that lists the names and
/// suggests the closest one.
pub fn canonical_name(name: &str) -> Result<&'static str> {
    let wanted = name.trim().to_ascii_lowercase();
    NAMES
        .iter()
        .copied()
        .find(|n| *n == wanted)
        .ok_or_else(|| unknown_name(name))
}

fn unknown_name(name: &str) -> Error {
    let hint = suggest(name)
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default();
    Error::value(
        "policy",
        format!("must be one of {}, got {name:?}{hint}", NAMES.join(", ")),
    )
}

/// The built-in name closest to `name` (edit distance at most 2, or one
/// containing the other), if any.
pub fn suggest(name: &str) -> Option<&'static str> {
    let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
    if wanted.is_empty() {
        return None;
    }
    let best = NAMES
        .iter()
        .map(|n| (edit_distance(&wanted, n), *n))
        .min_by_key(|(d, _)| *d)?;
    if best.0 <= 2 {
        return Some(best.1);
    }
    NAMES
        .iter()
        .copied()
        .find(|n| wanted.len() >= 3 && (n.contains(wanted.as_str()) || wanted.contains(n)))
}

/// Levenshtein distance (names are short: O(|a|·|b|) is nothing).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
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

    #[test]
    fn validate_refuses_what_build_refuses_without_building() {
        let mut s = PolicySpec::named("priority");
        s.aging_per_s = Some(-1.0);
        let e = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("aging_per_s:") && e.contains("-1"), "{e}");
        let mut s = PolicySpec::named("fair_share");
        s.by = Some("team".into());
        let e = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("by:") && e.contains("team"), "{e}");
        // validate opens nothing: a usage file in a missing directory is
        // only an error when the policy is built.
        let mut s = PolicySpec::named("fair_share");
        s.usage_path = Some("/nonexistent-dir/usage.db".into());
        assert!(s.validate().is_ok());
        for name in NAMES {
            assert!(PolicySpec::named(name).validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn names_ignore_case_and_unknown_ones_get_a_suggestion() {
        assert_eq!(canonical_name("FIFO").ok(), Some("fifo"));
        assert_eq!(canonical_name(" Fair_Share ").ok(), Some("fair_share"));
        let e = canonical_name("fifoo")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("did you mean \"fifo\"?"), "{e}");
        assert_eq!(suggest("fairshare"), Some("fair_share"));
        assert_eq!(suggest("best-effort-fifo"), Some("best_effort_fifo"));
        assert_eq!(suggest("lottery"), None);
        assert_eq!(suggest(""), None);
        assert!(PolicySpec::named("PRIORITY").build(0.0).is_ok());
    }
}

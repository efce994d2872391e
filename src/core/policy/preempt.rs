//! Preemption advice shared by the policies that have a notion of
//! importance. Nothing is stopped here: callers act on the advice.

use super::RunningJob;

/// Victims among `running` so that `needed` units are freed: candidates
/// are those `rank` returns a value for (less important = lower value);
/// chosen lowest rank first, then most recently started, until enough is
/// freed; then any victim not needed after all is spared (the more
/// important ones first). Empty when `needed <= 0` or when even every
/// candidate together does not free enough.
pub fn victims(
    running: &[RunningJob],
    needed: f64,
    rank: impl Fn(&RunningJob) -> Option<f64>,
) -> Vec<u64> {
    if needed.is_nan() || needed <= 0.0 {
        return Vec::new();
    }
    let mut candidates: Vec<(f64, &RunningJob)> = running
        .iter()
        .filter_map(|r| rank(r).map(|v| (v, r)))
        .collect();
    candidates.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(b.1.started.total_cmp(&a.1.started))
            .then(b.1.job.id.cmp(&a.1.job.id))
    });
    let mut chosen: Vec<&RunningJob> = Vec::new();
    let mut freed = 0.0;
    for (_, r) in candidates {
        if freed >= needed {
            break;
        }
        freed += r.holds;
        chosen.push(r);
    }
    if freed < needed {
        return Vec::new();
    }
    // Spare the most important victims that are not needed.
    let mut i = chosen.len();
    while i > 0 {
        i -= 1;
        if freed - chosen[i].holds >= needed {
            freed -= chosen[i].holds;
            chosen.remove(i);
        }
    }
    chosen.into_iter().map(|r| r.job.id).collect()
}

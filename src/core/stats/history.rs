//! Monitoring history (seed 003): disk and network I/O rates from sysinfo,
//! a bounded ring buffer of samples, and a trend/prediction per metric
//! (ordinary least squares over the samples in the window).

use std::collections::VecDeque;

use sysinfo::{Disks, Networks};

/// The metrics a sample carries.
pub const METRICS: [&str; 7] = [
    "cpu_percent",
    "memory_used_mb",
    "gpu_used_memory_mb",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
];

/// One sample at clock time `t` (a missing figure is NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub values: [f64; 7],
}

/// Bytes per second read from and written to disks, received and sent on
/// network interfaces, since the previous reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IoRates {
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
}

/// Reads I/O counters (sysinfo `Disks` and `Networks`) and turns them into
/// rates between two readings. Counters the platform does not offer give
/// NaN rates (a missing figure, not a zero).
#[derive(Debug)]
pub struct IoProbe {
    disks: Option<Disks>,
    networks: Option<Networks>,
    last: Option<(f64, [Option<u64>; 4])>,
}

impl IoProbe {
    pub fn new() -> Self {
        Self {
            disks: Disks::new_with_refreshed_list().ok(),
            networks: Networks::new_with_refreshed_list().ok(),
            last: None,
        }
    }

    fn totals(&mut self) -> [Option<u64>; 4] {
        let mut out = [None; 4];
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            let (mut read, mut written) = (0u64, 0u64);
            for d in disks.iter() {
                let u = d.usage();
                read = read.saturating_add(u.total_read_bytes);
                written = written.saturating_add(u.total_written_bytes);
            }
            out[0] = Some(read);
            out[1] = Some(written);
        }
        if let Some(networks) = self.networks.as_mut() {
            networks.refresh(true);
            let (mut rx, mut tx) = (0u64, 0u64);
            for (_, n) in networks.iter() {
                rx = rx.saturating_add(n.total_received());
                tx = tx.saturating_add(n.total_transmitted());
            }
            out[2] = Some(rx);
            out[3] = Some(tx);
        }
        out
    }

    /// Rates since the previous call at clock time `now` (zeros the first
    /// time; a counter that went backwards, e.g. a device removed, counts 0).
    pub fn rates(&mut self, now: f64) -> IoRates {
        let totals = self.totals();
        let rate = |i: usize| -> f64 {
            match (totals[i], self.last) {
                (None, _) => f64::NAN,
                (Some(v), Some((t, prev))) if now > t => match prev[i] {
                    Some(p) => v.saturating_sub(p) as f64 / (now - t),
                    None => 0.0,
                },
                (Some(_), _) => 0.0,
            }
        };
        let out = IoRates {
            disk_read_bps: rate(0),
            disk_write_bps: rate(1),
            net_rx_bps: rate(2),
            net_tx_bps: rate(3),
        };
        self.last = Some((now, totals));
        out
    }
}

impl Default for IoProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded ring buffer of samples.
#[derive(Debug, Clone)]
pub struct History {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl History {
    /// Keeps the last `capacity` samples (at least 2).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Self {
            capacity,
            samples: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a sample; the oldest goes when full. Samples older than the
    /// newest are refused (time only moves forward): returns whether kept.
    pub fn push(&mut self, sample: Sample) -> bool {
        if !sample.t.is_finite() || self.samples.back().is_some_and(|b| sample.t < b.t) {
            return false;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Index of a metric name in [`METRICS`].
    pub fn metric(name: &str) -> Option<usize> {
        METRICS.iter().position(|m| *m == name)
    }

    /// Least-squares line `(slope per second, value at the newest sample)`
    /// of `metric` over the samples within the last `window_s` seconds
    /// (all when `None`); `None` with fewer than 2 finite points or no
    /// spread in time.
    pub fn trend(&self, metric: usize, window_s: Option<f64>) -> Option<(f64, f64)> {
        let newest = self.samples.back()?.t;
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| window_s.is_none_or(|w| newest - s.t <= w))
            .filter_map(|s| {
                let v = *s.values.get(metric)?;
                v.is_finite().then_some((s.t - newest, v))
            })
            .collect();
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = sxy / sxx;
        Some((slope, my - slope * mx))
    }

    /// The metric's value `seconds_ahead` after the newest sample, by the
    /// least-squares line (never below 0: every metric is a size or a rate).
    pub fn predict(&self, metric: usize, seconds_ahead: f64, window_s: Option<f64>) -> Option<f64> {
        if !seconds_ahead.is_finite() {
            return None;
        }
        let (slope, now_value) = self.trend(metric, window_s)?;
        Some((now_value + slope * seconds_ahead).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, cpu: f64) -> Sample {
        let mut values = [f64::NAN; 7];
        values[0] = cpu;
        Sample { t, values }
    }

    #[test]
    fn ring_buffer_keeps_the_newest() {
        let mut h = History::new(3);
        for i in 0..5 {
            assert!(h.push(s(i as f64, i as f64)));
        }
        assert_eq!(
            h.iter().map(|x| x.t).collect::<Vec<_>>(),
            vec![2.0, 3.0, 4.0]
        );
        assert!(!h.push(s(1.0, 0.0)), "older than the newest");
    }

    #[test]
    fn least_squares_predicts_a_linear_trend() {
        let mut h = History::new(100);
        for i in 0..10 {
            h.push(s(i as f64, 10.0 + 2.0 * i as f64));
        }
        let (slope, now) = h.trend(0, None).expect("trend");
        assert!((slope - 2.0).abs() < 1e-9 && (now - 28.0).abs() < 1e-9);
        assert!((h.predict(0, 5.0, None).expect("p") - 38.0).abs() < 1e-9);
        // Falling: clamped at 0.
        let mut d = History::new(10);
        d.push(s(0.0, 10.0));
        d.push(s(1.0, 5.0));
        assert_eq!(d.predict(0, 100.0, None), Some(0.0));
        // Window: only the last 2 s.
        h.push(s(10.0, 0.0));
        h.push(s(11.0, 0.0));
        assert_eq!(h.trend(0, Some(1.0)).map(|t| t.0), Some(0.0));
        // Missing figures (NaN) are not points.
        assert_eq!(h.trend(3, None), None);
    }

    #[test]
    fn io_rates_start_at_zero_and_never_go_negative() {
        let mut p = IoProbe::new();
        let first = p.rates(0.0);
        for v in [first.disk_read_bps, first.net_rx_bps] {
            assert!(v == 0.0 || v.is_nan());
        }
        let r = p.rates(1.0);
        for v in [r.disk_read_bps, r.net_rx_bps] {
            assert!(v.is_nan() || v >= 0.0);
        }
    }
}

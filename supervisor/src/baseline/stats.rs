//! Summaries of repeated measurements: median with min–max, and the 99th percentile for latencies, plus the
//! formatting the bench table uses for times and rates.
//!
//! The median, not the mean: on a 2-vCPU VM a few repetitions always land on a busy vCPU or a descheduled
//! thread, and they would drag a mean far from what a typical repetition costs. The min and max show that spread,
//! and the p99 of a latency shows how often it bites.

use serde::Serialize;

/// One measurement repeated `n` times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Nearest-rank 99th percentile; given for latencies only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

impl Stats {
    /// Median, min and max of `samples` (all zero when there are none).
    pub fn of(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Stats {
            n,
            median,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
            p99: None,
        }
    }

    /// Like [`Stats::of`], with the 99th percentile.
    pub fn latency(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        let rank = (samples.len() * 99).div_ceil(100);
        let p99 = samples.get(rank.saturating_sub(1)).copied().unwrap_or(0.0);
        Stats {
            p99: Some(p99),
            ..Stats::of(samples)
        }
    }

    /// Applies `f` to every summary number, e.g. to turn µs into items/s (`f` must be monotonic; a decreasing
    /// one swaps min and max, as it should).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Stats {
        let (a, b) = (f(self.min), f(self.max));
        Stats {
            n: self.n,
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
            p99: self.p99.map(f),
        }
    }
}

/// A duration given in µs, in the unit that reads best: `0.42 µs`, `19.3 µs`, `812 µs`, `1.25 ms`, `2.10 s`.
pub fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// A count per second with a metric prefix: `980 /s`, `41.5 k/s`, `2.31 M/s`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} /s")
    }
}

/// How many times `a` is `b`, for the notes: `2.1x`, `0.45x`, `37x`.
pub fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if !r.is_finite() {
        "n/a".to_string()
    } else if r >= 10.0 {
        format!("{r:.0}x")
    } else if r >= 1.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_p99() {
        let odd = Stats::of(vec![5.0, 1.0, 3.0]);
        assert_eq!((odd.n, odd.median, odd.min, odd.max, odd.p99), (3, 3.0, 1.0, 5.0, None));
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        let hundred = Stats::latency((1..=100).map(f64::from).collect());
        assert_eq!(hundred.p99, Some(99.0));
        assert_eq!(hundred.median, 50.5);
        assert_eq!(Stats::latency(vec![7.0]).p99, Some(7.0));
        assert_eq!(Stats::of(Vec::new()).median, 0.0);
    }

    #[test]
    fn a_decreasing_map_swaps_min_and_max() {
        let us = Stats::of(vec![1.0, 2.0, 4.0]);
        let per_s = us.map(|us| 1e6 / us);
        assert_eq!(
            (per_s.min, per_s.median, per_s.max),
            (250_000.0, 500_000.0, 1_000_000.0)
        );
    }

    #[test]
    fn units_read_well() {
        assert_eq!(micros(0.4213), "0.42 µs");
        assert_eq!(micros(19.34), "19.3 µs");
        assert_eq!(micros(812.4), "812 µs");
        assert_eq!(micros(1250.0), "1.25 ms");
        assert_eq!(rate(41_500.0), "41.5 k/s");
        assert_eq!(ratio(21.0, 10.0), "2.1x");
        assert_eq!(ratio(370.0, 10.0), "37x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}

//! Medians and percentiles.

use std::time::Duration;

/// The median of some figures (the mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Latency {
    /// Nearest-rank percentiles of the samples.
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Latency {
            p50: ms(rank(&samples, 0.50)),
            p99: ms(rank(&samples, 0.99)),
            max: ms(samples[samples.len() - 1]),
            count: samples.len(),
        }
    }

    /// Per-round figures folded into one: medians of p50 and p99, the largest max.
    pub fn across(rounds: &[Latency]) -> Latency {
        let p50: Vec<f64> = rounds.iter().map(|l| l.p50).collect();
        let p99: Vec<f64> = rounds.iter().map(|l| l.p99).collect();
        Latency {
            p50: median(&p50),
            p99: median(&p99),
            max: rounds.iter().map(|l| l.max).fold(0.0, f64::max),
            count: rounds.iter().map(|l| l.count).sum(),
        }
    }
}

fn rank(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

//! Summaries of repeated measurements. Also compiled into the VM benchmark (`tests/vm/bench`)
//! and `cargo xtask bench`, which reads that benchmark's results: one definition for all three.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Repeated timings of one thing, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Samples {
    pub fn of(durations: &[Duration]) -> Samples {
        Samples::of_values(durations.iter().map(Duration::as_secs_f64).collect())
    }

    /// Summary of plain values (e.g. ratios).
    pub fn of_values(mut s: Vec<f64>) -> Samples {
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return Samples::default();
        }
        Samples {
            median: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            min: s[0],
            max: s[s.len() - 1],
            samples: s,
        }
    }
}

/// Nearest-rank percentile of sorted values (p99 of fewer than 100 values is the maximum).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=200).rev().map(Duration::from_millis).collect();
        let s = Samples::of(&ms);
        assert_eq!((s.median, s.p99, s.min, s.max), (0.1, 0.198, 0.001, 0.2));
        assert_eq!(Samples::of(&[Duration::from_secs(3)]).p99, 3.0);
    }
}

//! How sure a side-by-side comparison is: a bootstrap interval for the difference of two
//! medians measured in alternating rounds. One run's p50s differ by a few percent of a start
//! from the next run's on these machines, so a ratio alone cannot say on which side of a goal
//! a small cost lies.

use crate::stats::Samples;

/// Resamples drawn; enough for the 2.5th and 97.5th percentiles to settle to a tenth of a
/// percent of a container start.
const RESAMPLES: usize = 2000;
/// Fixed, so that the same samples always give the same interval.
const SEED: u64 = 0x006e_6773_6869_6674;

/// The 95 % interval of `with`'s median minus `without`'s, in their unit, when `without[i]`
/// and `with[i]` were measured in the same round. Rounds are resampled whole, so a slow
/// stretch of the machine weighs on both sides as it did in the run. None for fewer than two
/// rounds or sides of different lengths.
pub fn median_shift_95(without: &[f64], with: &[f64]) -> Option<(f64, f64)> {
    let rounds = without.len();
    if rounds < 2 || with.len() != rounds {
        return None;
    }
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut shifts: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let picked: Vec<usize> = (0..rounds).map(|_| rng.usize(..rounds)).collect();
            let median =
                |side: &[f64]| Samples::of_values(picked.iter().map(|&i| side[i]).collect()).median;
            median(with) - median(without)
        })
        .collect();
    shifts.sort_by(f64::total_cmp);
    let at = |q: f64| shifts[((q * RESAMPLES as f64) as usize).min(RESAMPLES - 1)];
    Some((at(0.025), at(0.975)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_shift_is_inside_its_interval_and_noise_widens_it() {
        // Rounds that drift from 100 to 150 ms; the second side 5 ms later in each.
        let without: Vec<f64> = (0..200).map(|i| 100.0 + (i % 50) as f64).collect();
        let with: Vec<f64> = without.iter().map(|t| t + 5.0).collect();
        let (lo, hi) = median_shift_95(&without, &with).unwrap();
        assert!(lo <= 5.0 && 5.0 <= hi, "{lo}..{hi}");
        assert!(
            hi - lo < 1e-9,
            "a paired shift with no noise is exact: {lo}..{hi}"
        );

        // The same shift under noise that does not follow the rounds: a wider interval,
        // still around 5.
        let noisy: Vec<f64> = with
            .iter()
            .enumerate()
            .map(|(i, t)| t + ((i * 37) % 11) as f64 - 5.0)
            .collect();
        let (lo, hi) = median_shift_95(&without, &noisy).unwrap();
        assert!(lo < 5.0 && 5.0 < hi && hi - lo > 1.0, "{lo}..{hi}");
    }

    #[test]
    fn too_few_or_unpaired_rounds_give_no_interval() {
        assert_eq!(median_shift_95(&[1.0], &[2.0]), None);
        assert_eq!(median_shift_95(&[1.0, 2.0], &[2.0]), None);
    }
}

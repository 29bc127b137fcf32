//! The bootstrap over problems: how far an evaluation's means could move had other problems of
//! the same kind been drawn, and whether two methods' difference survives that.
//!
//! Differences are paired: every resample draws one set of problems and scores every method on
//! it, so what two methods share (the same easy and hard problems) cancels out of their
//! difference. Resampling each method on its own would count that shared variation twice and
//! give intervals far wider than the data warrant when methods agree on most problems.

use selfroute_core::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How many resamples to draw, from which seed, at which confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    pub resamples: usize,
    pub seed: u64,
    /// The interval's coverage, e.g. 0.95 for the 2.5% and 97.5% percentiles.
    pub level: f64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// A statistic on the data with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The statistic on the problems as they are (not a bootstrap average).
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether 0 lies outside the interval: the difference is significant at the interval's level.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// The means of several columns over the same resampled rows: `draws[r][c]` is column c's mean in
/// resample r. Column c's `values[i]` and column d's `values[i]` belong to the same row (problem),
/// which is what makes [`MeanDraws::difference`] paired.
#[derive(Debug, Clone)]
pub struct MeanDraws {
    means: Vec<f64>,
    draws: Vec<Vec<f64>>,
    level: f64,
}

impl Bootstrap {
    fn check(&self) -> Result<()> {
        if self.resamples == 0 {
            return Err(TrainError::InvalidSettings(
                "the bootstrap needs at least one resample".into(),
            ));
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(TrainError::InvalidSettings(format!(
                "the interval's level {} must be between 0 and 1",
                self.level
            )));
        }
        Ok(())
    }

    /// Resamples the rows of `columns` (all of one length n > 0) with replacement, n at a time,
    /// jointly for every column, and records each column's mean per resample.
    pub fn means(&self, columns: &[Vec<f64>]) -> Result<MeanDraws> {
        self.check()?;
        let n = columns.first().map_or(0, Vec::len);
        if n == 0 {
            return Err(TrainError::InvalidSettings(
                "the bootstrap needs at least one problem".into(),
            ));
        }
        if let Some(c) = columns.iter().find(|c| c.len() != n) {
            return Err(TrainError::InvalidSettings(format!(
                "paired columns must have one value per problem: {} and {n}",
                c.len()
            )));
        }
        let mean = |c: &Vec<f64>| c.iter().sum::<f64>() / n as f64;
        let means = columns.iter().map(mean).collect();
        let mut rng = SplitMix64::new(self.seed);
        // Counts rather than index lists: one pass draws the resample, one pass per column sums it.
        let mut counts = vec![0u32; n];
        let mut draws = Vec::with_capacity(self.resamples);
        for _ in 0..self.resamples {
            counts.fill(0);
            for _ in 0..n {
                counts[rng.below(n as u64) as usize] += 1;
            }
            draws.push(
                columns
                    .iter()
                    .map(|c| {
                        let sum: f64 = c.iter().zip(&counts).map(|(v, &k)| v * f64::from(k)).sum();
                        sum / n as f64
                    })
                    .collect(),
            );
        }
        Ok(MeanDraws {
            means,
            draws,
            level: self.level,
        })
    }
}

impl MeanDraws {
    /// Column `c`'s mean and its percentile interval.
    pub fn interval(&self, c: usize) -> Interval {
        let values: Vec<f64> = self.draws.iter().map(|d| d[c]).collect();
        self.percentiles(self.means[c], values)
    }

    /// Column `a`'s mean minus column `b`'s, with the interval of that difference over the joint
    /// resamples.
    pub fn difference(&self, a: usize, b: usize) -> Interval {
        let values: Vec<f64> = self.draws.iter().map(|d| d[a] - d[b]).collect();
        self.percentiles(self.means[a] - self.means[b], values)
    }

    fn percentiles(&self, estimate: f64, mut values: Vec<f64>) -> Interval {
        values.sort_by(f64::total_cmp);
        let tail = (1.0 - self.level) / 2.0;
        Interval {
            estimate,
            low: quantile(&values, tail),
            high: quantile(&values, 1.0 - tail),
        }
    }
}

/// The `p`-quantile of sorted values as the inverse of their empirical distribution function:
/// the smallest value with at least a share `p` of the values at or below it. No interpolation,
/// so a bound is always a value some resample produced.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // A hair below p: 0.025 * 10000 must be rank 250, not 251 through rounding.
    let rank = ((p * n as f64) - 1e-9).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every one of the n^n equally likely resamples of `n` rows, as index lists.
    fn every_resample(n: usize) -> Vec<Vec<usize>> {
        let mut all = Vec::new();
        for code in 0..n.pow(n as u32) {
            let mut rest = code;
            all.push(
                (0..n)
                    .map(|_| {
                        let i = rest % n;
                        rest /= n;
                        i
                    })
                    .collect(),
            );
        }
        all
    }

    /// The exact bootstrap distribution of a statistic: its value on every resample, sorted.
    fn exact(n: usize, statistic: impl Fn(&[usize]) -> f64) -> Vec<f64> {
        let mut values: Vec<f64> = every_resample(n).iter().map(|r| statistic(r)).collect();
        values.sort_by(f64::total_cmp);
        values
    }

    fn mean_of(values: &[f64], rows: &[usize]) -> f64 {
        rows.iter().map(|&i| values[i]).sum::<f64>() / rows.len() as f64
    }

    /// The exact distribution's quantile at p, written out independently of [`quantile`]: the
    /// smallest value whose cumulative share reaches p.
    fn exact_quantile(sorted: &[f64], p: f64) -> f64 {
        let n = sorted.len() as f64;
        for (k, v) in sorted.iter().enumerate() {
            if (k + 1) as f64 / n >= p {
                return *v;
            }
        }
        sorted[sorted.len() - 1]
    }

    /// A sampled bound must sit where the exact distribution puts that share, give or take the
    /// sampling error of a quantile from R draws (sd sqrt(p(1-p)/R) ~ 0.0011 at R = 20000).
    fn assert_bracketed(sampled: f64, exact: &[f64], p: f64, what: &str) {
        let slack = 0.006;
        let lo = exact_quantile(exact, (p - slack).max(0.0));
        let hi = exact_quantile(exact, (p + slack).min(1.0));
        assert!(
            (lo..=hi).contains(&sampled),
            "{what}: sampled {p}-quantile {sampled} outside the exact [{lo}, {hi}]"
        );
    }

    const SETTINGS: Bootstrap = Bootstrap {
        resamples: 20_000,
        seed: 5,
        level: 0.95,
    };

    #[test]
    fn a_mean_interval_matches_the_exact_bootstrap_distribution() {
        // Values spread unevenly, so the 4^4 = 256 resample means take many distinct values and
        // a misplaced percentile shows.
        for values in [
            vec![0.0, 1.0, 3.0, 7.0],
            vec![0.0, 0.0, 1.0],
            vec![2.0, -1.0, 5.0, 0.5],
        ] {
            let n = values.len();
            let exact = exact(n, |r| mean_of(&values, r));
            let draws = SETTINGS.means(std::slice::from_ref(&values)).unwrap();
            let interval = draws.interval(0);
            let mean = values.iter().sum::<f64>() / n as f64;
            assert!((interval.estimate - mean).abs() < 1e-12);
            assert_bracketed(interval.low, &exact, 0.025, "low");
            assert_bracketed(interval.high, &exact, 0.975, "high");
        }
    }

    #[test]
    fn a_paired_difference_matches_the_exact_joint_distribution() {
        // Two methods that agree on most rows: the exact distribution of their difference under
        // joint resampling is narrow, under independent resampling it is not.
        let a = [1.0, 0.0, 1.0, 1.0];
        let b = [1.0, 0.0, 0.0, 1.0];
        let exact = exact(4, |r| mean_of(&a, r) - mean_of(&b, r));
        let draws = SETTINGS.means(&[a.to_vec(), b.to_vec()]).unwrap();
        let d = draws.difference(0, 1);
        assert!((d.estimate - 0.25).abs() < 1e-12);
        assert_bracketed(d.low, &exact, 0.025, "low");
        assert_bracketed(d.high, &exact, 0.975, "high");
        // Under joint resampling b never beats a, so the difference cannot go below 0.
        assert!(d.low >= 0.0, "{d:?}");
    }

    #[test]
    fn pairing_narrows_the_interval_of_correlated_methods() {
        // 200 problems of mixed difficulty; method b is method a but for 6 of them. Paired, the
        // difference is the 3% the two disagree on; resampled apart, each method's own spread
        // (about +-7 points) adds in.
        let a: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 5 < 2))).collect();
        let mut b = a.clone();
        for i in [0, 1, 5, 6, 10, 11] {
            b[i] = 0.0;
        }
        let settings = Bootstrap {
            resamples: 4000,
            ..SETTINGS
        };
        let paired = settings
            .means(&[a.clone(), b.clone()])
            .unwrap()
            .difference(0, 1);
        let apart_a = settings.means(std::slice::from_ref(&a)).unwrap();
        let apart_b = Bootstrap {
            seed: 99,
            ..settings
        }
        .means(std::slice::from_ref(&b))
        .unwrap();
        let mut unpaired: Vec<f64> = apart_a
            .draws
            .iter()
            .zip(&apart_b.draws)
            .map(|(x, y)| x[0] - y[0])
            .collect();
        unpaired.sort_by(f64::total_cmp);
        let unpaired_width = quantile(&unpaired, 0.975) - quantile(&unpaired, 0.025);
        let paired_width = paired.high - paired.low;
        assert!(
            paired_width < 0.5 * unpaired_width,
            "paired {paired_width} vs unpaired {unpaired_width}"
        );
        // And the paired interval sees what the unpaired one cannot: b is worse.
        assert!(paired.excludes_zero(), "{paired:?}");
        assert!(unpaired[0] < 0.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_intervals() {
        let values = vec![vec![0.0, 1.0, 1.0, 0.0, 1.0], vec![1.0, 1.0, 0.0, 0.0, 0.0]];
        let one = SETTINGS.means(&values).unwrap();
        let two = SETTINGS.means(&values).unwrap();
        assert_eq!(one.difference(0, 1), two.difference(0, 1));
        let other = Bootstrap {
            seed: 6,
            ..SETTINGS
        }
        .means(&values)
        .unwrap();
        assert_ne!(one.draws, other.draws);
    }

    #[test]
    fn quantile_is_the_inverse_distribution_function() {
        let sorted: Vec<f64> = (1..=40).map(f64::from).collect();
        // 2.5% of 40 is exactly the first value; 97.5% is the 39th.
        assert_eq!(quantile(&sorted, 0.025), 1.0);
        assert_eq!(quantile(&sorted, 0.975), 39.0);
        assert_eq!(quantile(&sorted, 0.026), 2.0);
        assert_eq!(quantile(&sorted, 1.0), 40.0);
        assert_eq!(quantile(&sorted, 0.0), 1.0);
    }

    #[test]
    fn bad_settings_and_ragged_columns_are_refused() {
        assert!(SETTINGS.means(&[vec![]]).is_err());
        assert!(SETTINGS.means(&[vec![1.0], vec![1.0, 0.0]]).is_err());
        let none = Bootstrap {
            resamples: 0,
            ..SETTINGS
        };
        assert!(none.means(&[vec![1.0]]).is_err());
        let level = Bootstrap {
            level: 1.0,
            ..SETTINGS
        };
        assert!(level.means(&[vec![1.0]]).is_err());
    }
}

//! Per-group advantages for the three update rules the trainer offers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// The paper's group-adapted policy gradient: (r_i - mean) / (G - 1), sequence log-prob
    /// sums, no std scaling, no clipping.
    Gapg,
    /// GRPO: (r_i - mean) / (std + eps), token-mean loss, clipped ratio.
    Grpo,
    /// Dr. GRPO (the paper's "collaboration-aware tuning" baseline): r_i - mean, token sums over
    /// a constant length, no std scaling.
    DrGrpo,
}

/// Added to GRPO's std, as TRL does, so a near-constant group does not explode.
pub const GRPO_STD_EPS: f64 = 1e-4;

/// Rewards this close count as equal when testing a group for zero variance.
pub const ZERO_VARIANCE_TOLERANCE: f64 = 1e-9;

/// The advantage of each response of one group (G >= 2 responses to the same prompt).
pub fn advantages(algo: Algo, rewards: &[f64]) -> Vec<f64> {
    let g = rewards.len();
    if g < 2 {
        // One sample has no baseline: no signal.
        return vec![0.0; g];
    }
    let mean = rewards.iter().sum::<f64>() / g as f64;
    match algo {
        Algo::Gapg => rewards
            .iter()
            .map(|r| (r - mean) / (g - 1) as f64)
            .collect(),
        Algo::DrGrpo => rewards.iter().map(|r| r - mean).collect(),
        Algo::Grpo => {
            // Unbiased std, as torch.std (TRL) computes it.
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (g - 1) as f64;
            let std = var.sqrt();
            rewards
                .iter()
                .map(|r| (r - mean) / (std + GRPO_STD_EPS))
                .collect()
        }
    }
}

/// Whether all rewards of a group are equal within [`ZERO_VARIANCE_TOLERANCE`] (its advantages
/// then vanish and it carries no gradient).
pub fn is_zero_variance(rewards: &[f64]) -> bool {
    let (lo, hi) = rewards
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
    rewards.is_empty() || hi - lo <= ZERO_VARIANCE_TOLERANCE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn gapg_divides_the_centred_reward_by_g_minus_one() {
        // mean 0.25; (1 - 0.25) / 3 = 0.25, (0 - 0.25) / 3 = -1/12
        let a = advantages(Algo::Gapg, &[1.0, 0.0, 0.0, 0.0]);
        assert!(
            close(&a, &[0.25, -1.0 / 12.0, -1.0 / 12.0, -1.0 / 12.0]),
            "{a:?}"
        );
        // A lone cloud success is worth a quarter of a lone local success: the point of GAPG.
        let c = advantages(Algo::Gapg, &[0.25, 0.0, 0.0, 0.0]);
        assert!(
            close(&c, &[0.0625, -1.0 / 48.0, -1.0 / 48.0, -1.0 / 48.0]),
            "{c:?}"
        );
        assert!((a[0] / c[0] - 4.0).abs() < 1e-12);
        assert!(a.iter().sum::<f64>().abs() < 1e-12);
    }

    #[test]
    fn grpo_std_scaling_makes_a_lone_cloud_success_look_like_a_local_one() {
        let a = advantages(Algo::Grpo, &[1.0, 0.0, 0.0, 0.0]);
        let c = advantages(Algo::Grpo, &[0.25, 0.0, 0.0, 0.0]);
        // Both are 1.5 (up to the eps): the collapse mechanism the paper describes.
        assert!((a[0] - 1.5).abs() < 1e-3, "{a:?}");
        assert!((c[0] - 1.5).abs() < 2e-3, "{c:?}");
    }

    #[test]
    fn dr_grpo_only_centres() {
        let a = advantages(Algo::DrGrpo, &[1.0, 0.0, 0.0, 0.0]);
        assert!(close(&a, &[0.75, -0.25, -0.25, -0.25]));
    }

    #[test]
    fn degenerate_groups_have_no_signal() {
        for algo in [Algo::Gapg, Algo::Grpo, Algo::DrGrpo] {
            assert_eq!(advantages(algo, &[1.0]), vec![0.0]);
            assert!(
                advantages(algo, &[0.5, 0.5, 0.5])
                    .iter()
                    .all(|a| a.abs() < 1e-12)
            );
        }
        assert!(is_zero_variance(&[0.25, 0.25 + 1e-12, 0.25]));
        assert!(!is_zero_variance(&[0.25, 0.0]));
        assert!(is_zero_variance(&[]));
    }
}

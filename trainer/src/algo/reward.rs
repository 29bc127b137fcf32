//! The hierarchical reward (paper eq. 18): a correct local answer beats a correct cloud answer,
//! which beats anything else.

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardConfig {
    /// Reward of a correct local answer (alpha_a).
    pub alpha_local: f64,
    /// Reward of an offload whose cloud answer is correct (alpha_c).
    pub alpha_cloud: f64,
    /// Added to a well-formed local answer, as the paper's v1 format bonus (alpha_f); None = off.
    pub format_bonus: Option<f64>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        // The paper's Countdown setting: alpha_a = 1, alpha_c = 0.25.
        Self {
            alpha_local: 1.0,
            alpha_cloud: 0.25,
            format_bonus: None,
        }
    }
}

/// How one sampled response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOutcome {
    /// Answered locally; `well_formed` says whether an answer could be extracted at all.
    Local { correct: bool, well_formed: bool },
    /// Emitted the offload signal; `cloud_correct` is the (cached) cloud answer's verdict.
    Offload { cloud_correct: bool },
}

impl RewardConfig {
    pub fn validate(&self) -> Result<()> {
        let finite = self.alpha_local.is_finite()
            && self.alpha_cloud.is_finite()
            && self.format_bonus.is_none_or(f64::is_finite);
        if !finite || self.alpha_cloud < 0.0 || self.alpha_local <= 0.0 {
            return Err(TrainError::InvalidSettings(format!(
                "rewards must be finite with alpha_local > 0 and alpha_cloud >= 0 (got {} and {})",
                self.alpha_local, self.alpha_cloud
            )));
        }
        if self.alpha_cloud > self.alpha_local {
            // Allowed (the paper's collapse experiment uses alpha_c = alpha_a), but a cloud
            // answer worth more than a local one trains a model that always offloads.
            return Err(TrainError::InvalidSettings(format!(
                "alpha_cloud {} exceeds alpha_local {}: the model would learn to always offload",
                self.alpha_cloud, self.alpha_local
            )));
        }
        Ok(())
    }

    pub fn reward(&self, outcome: ResponseOutcome) -> f64 {
        match outcome {
            ResponseOutcome::Local {
                correct,
                well_formed,
            } => {
                let base = if correct { self.alpha_local } else { 0.0 };
                let bonus = match (self.format_bonus, well_formed) {
                    (Some(b), true) => b,
                    _ => 0.0,
                };
                base + bonus
            }
            ResponseOutcome::Offload { cloud_correct } => {
                if cloud_correct {
                    self.alpha_cloud
                } else {
                    0.0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reward_is_hierarchical() {
        let r = RewardConfig::default();
        let local = |correct| ResponseOutcome::Local {
            correct,
            well_formed: true,
        };
        assert_eq!(r.reward(local(true)), 1.0);
        assert_eq!(r.reward(local(false)), 0.0);
        assert_eq!(
            r.reward(ResponseOutcome::Offload {
                cloud_correct: true
            }),
            0.25
        );
        assert_eq!(
            r.reward(ResponseOutcome::Offload {
                cloud_correct: false
            }),
            0.0
        );
        let with_bonus = RewardConfig {
            alpha_local: 2.0,
            alpha_cloud: 0.5,
            format_bonus: Some(0.2),
        };
        assert_eq!(with_bonus.reward(local(true)), 2.2);
        assert_eq!(with_bonus.reward(local(false)), 0.2);
        assert_eq!(
            with_bonus.reward(ResponseOutcome::Local {
                correct: false,
                well_formed: false
            }),
            0.0
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(RewardConfig::default().validate().is_ok());
        let equal = RewardConfig {
            alpha_cloud: 1.0,
            ..RewardConfig::default()
        };
        assert!(equal.validate().is_ok(), "the collapse experiment needs it");
        for (a, c) in [(1.0, 1.5), (0.0, 0.0), (1.0, -0.1), (f64::NAN, 0.2)] {
            let bad = RewardConfig {
                alpha_local: a,
                alpha_cloud: c,
                format_bonus: None,
            };
            assert!(bad.validate().is_err(), "{a} {c}");
        }
    }
}

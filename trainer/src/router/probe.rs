//! The prompt-router baseline: logistic regression on the model's own final hidden state at the
//! answer position, predicting that the model's greedy local answer is wrong. Its threshold is
//! set so the predicted-wrong share on the training prompts equals the budget: the router spends
//! the budget on the prompts it thinks the model gets wrong.
//!
//! The paper's router is a DeBERTa classifier on the prompt text; a probe on the small model's own
//! state needs no second model, runs in the forward pass the answer needs anyway, and can be folded
//! into the `<|offload|>` head row ([`super::fold`]).

use serde::{Deserialize, Serialize};

use super::linalg::{dot, solve_spd};
use crate::error::{Result, TrainError};

/// A fitted probe, as written to its JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRouter {
    /// Over the raw hidden state (standardisation folded in).
    pub weights: Vec<f64>,
    pub bias: f64,
    /// Predicted wrong (send to the cloud) when `weights . h + bias > threshold`.
    pub threshold: f64,
    pub hidden_size: usize,
    /// The model the hidden states came from: its file name and SHA-256. A probe read on another
    /// model's states means nothing.
    pub model_name: String,
    pub model_sha256: String,
    pub task: String,
    /// The share of training prompts the threshold sends to the cloud.
    pub budget: f64,
    pub train_problems: usize,
    /// Share of training prompts whose greedy local answer was wrong.
    pub train_wrong_share: f64,
    /// The L2 strength cross-validation chose, and the held-out AUC it reached (0.5 = chance).
    pub l2: f64,
    pub cv_auc: f64,
}

impl ProbeRouter {
    pub fn score(&self, h: &[f64]) -> f64 {
        dot(&self.weights, h) + self.bias
    }

    pub fn predicts_wrong(&self, h: &[f64]) -> bool {
        self.score(h) > self.threshold
    }

    /// Checks the probe belongs to a model with this hidden size and SHA-256.
    pub fn check_model(&self, hidden_size: usize, sha256: &str) -> Result<()> {
        if self.hidden_size != hidden_size || self.weights.len() != hidden_size {
            return Err(TrainError::InvalidSettings(format!(
                "the router was fitted on hidden states of size {} (model {}), this model's are {}",
                self.hidden_size, self.model_name, hidden_size
            )));
        }
        if self.model_sha256 != sha256 {
            return Err(TrainError::InvalidSettings(format!(
                "the router was fitted on {} (sha256 {}), not on this model (sha256 {sha256})",
                self.model_name, self.model_sha256
            )));
        }
        Ok(())
    }

    pub fn from_json(path: &str, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| TrainError::Data {
            path: path.to_string(),
            reason: format!("not a router file: {e}"),
        })
    }
}

/// Logistic regression weights over raw features.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub bias: f64,
}

/// Per-feature mean and standard deviation, so one L2 strength suits every feature's scale.
struct Standardizer {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl Standardizer {
    fn fit(x: &[Vec<f64>]) -> Self {
        let d = x.first().map_or(0, Vec::len);
        let n = x.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for row in x {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; d];
        for row in x {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        // A constant feature carries nothing; leave it at scale 1 instead of dividing by zero.
        let inv_std = var
            .iter()
            .map(|v| if *v > 1e-12 { 1.0 / v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, inv_std }
    }

    fn apply(&self, row: &[f64]) -> Vec<f64> {
        row.iter()
            .zip(&self.mean)
            .zip(&self.inv_std)
            .map(|((v, m), s)| (v - m) * s)
            .collect()
    }

    /// Standardised-space weights as raw-space weights.
    fn unfold(&self, w: &[f64], b: f64) -> Logistic {
        let weights: Vec<f64> = w.iter().zip(&self.inv_std).map(|(w, s)| w * s).collect();
        let bias = b - dot(&weights, &self.mean);
        Logistic { weights, bias }
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Minimises mean log-loss + `l2`/2 |w|^2 (bias unpenalised) by Newton's method, on standardised
/// features. Newton converges in a few steps and needs no step size; the system is (d+1)^2.
pub fn fit_logistic(x: &[Vec<f64>], y: &[bool], l2: f64) -> Result<Logistic> {
    let n = x.len();
    if n == 0 || y.len() != n {
        return Err(TrainError::InvalidSettings(
            "logistic regression needs one label per example and at least one example".into(),
        ));
    }
    let std = Standardizer::fit(x);
    let z: Vec<Vec<f64>> = x.iter().map(|r| std.apply(r)).collect();
    let d = z[0].len();
    let dim = d + 1;
    let mut w = vec![0.0; d];
    let positives = y.iter().filter(|&&v| v).count() as f64;
    // Start at the base rate (clamped so an all-one-label set stays finite).
    let base = (positives / n as f64).clamp(1e-3, 1.0 - 1e-3);
    let mut b = (base / (1.0 - base)).ln();
    for _ in 0..50 {
        let mut grad = vec![0.0; dim];
        let mut hess = vec![0.0; dim * dim];
        for (row, &label) in z.iter().zip(y) {
            let p = sigmoid(dot(&w, row) + b);
            let err = p - if label { 1.0 } else { 0.0 };
            let weight = (p * (1.0 - p)).max(1e-10);
            for i in 0..d {
                grad[i] += err * row[i] / n as f64;
                let wi = weight * row[i] / n as f64;
                for j in 0..=i {
                    hess[i * dim + j] += wi * row[j];
                }
                hess[d * dim + i] += wi;
            }
            grad[d] += err / n as f64;
            hess[d * dim + d] += weight / n as f64;
        }
        for i in 0..d {
            grad[i] += l2 * w[i];
            hess[i * dim + i] += l2;
        }
        // The bias direction alone can be flat (all examples one label): keep it invertible.
        hess[d * dim + d] += 1e-9;
        for i in 0..dim {
            for j in 0..i {
                hess[j * dim + i] = hess[i * dim + j];
            }
        }
        let step = solve_spd(&mut hess, &grad)?;
        let mut change = 0.0f64;
        for i in 0..d {
            w[i] -= step[i];
            change = change.max(step[i].abs());
        }
        b -= step[d];
        change = change.max(step[d].abs());
        if change < 1e-8 {
            break;
        }
    }
    Ok(std.unfold(&w, b))
}

/// Area under the ROC curve of `scores` for `labels` (ties count half): the chance that a wrong
/// answer's prompt scores above a right one's.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    let mut wins = 0.0;
    for p in &pos {
        for q in &neg {
            wins += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// The threshold that puts `round(share * n)` of `scores` strictly above it: the midpoint between
/// the last score in and the first score out.
pub fn calibrate_threshold(scores: &[f64], share: f64) -> f64 {
    let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let k = ((share * n as f64).round() as usize).min(n);
    match k {
        0 => sorted[0] + 1.0,
        k if k == n => sorted[n - 1] - 1.0,
        k => 0.5 * (sorted[k - 1] + sorted[k]),
    }
}

/// The L2 strengths cross-validation chooses among.
const L2_GRID: [f64; 5] = [1e-3, 1e-2, 1e-1, 1.0, 10.0];
const FOLDS: usize = 4;

/// Fits the probe: the L2 strength with the best held-out AUC over 4 folds, then all examples.
/// Returns the fit and its cross-validated AUC.
pub fn fit_probe(x: &[Vec<f64>], wrong: &[bool]) -> Result<(Logistic, f64, f64)> {
    let n = x.len();
    let mut best = (L2_GRID[L2_GRID.len() / 2], f64::NEG_INFINITY);
    if n >= 2 * FOLDS {
        for &l2 in &L2_GRID {
            let mut scores = vec![0.0; n];
            for fold in 0..FOLDS {
                let (mut tx, mut ty) = (Vec::new(), Vec::new());
                for i in (0..n).filter(|i| i % FOLDS != fold) {
                    tx.push(x[i].clone());
                    ty.push(wrong[i]);
                }
                let fit = fit_logistic(&tx, &ty, l2)?;
                for i in (0..n).filter(|i| i % FOLDS == fold) {
                    scores[i] = dot(&fit.weights, &x[i]) + fit.bias;
                }
            }
            let a = auc(&scores, wrong);
            if a > best.1 {
                best = (l2, a);
            }
        }
    }
    let fit = fit_logistic(x, wrong, best.0)?;
    let cv_auc = if best.1.is_finite() { best.1 } else { 0.5 };
    Ok((fit, best.0, cv_auc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_linear_rule_and_calibrates_to_the_share() {
        // Wrong exactly when x0 - x1 > 0.3: a separable rule in two of four features.
        let mut rng = selfroute_core::rng::SplitMix64::new(3);
        let x: Vec<Vec<f64>> = (0..200)
            .map(|_| (0..4).map(|_| rng.next_f64() * 2.0 - 1.0).collect())
            .collect();
        let y: Vec<bool> = x.iter().map(|r| r[0] - r[1] > 0.3).collect();
        let (fit, _, cv_auc) = fit_probe(&x, &y).unwrap();
        assert!(cv_auc > 0.95, "cv auc {cv_auc}");
        let scores: Vec<f64> = x.iter().map(|r| dot(&fit.weights, r) + fit.bias).collect();
        assert!(auc(&scores, &y) > 0.97);
        let t = calibrate_threshold(&scores, 0.3);
        assert_eq!(scores.iter().filter(|&&s| s > t).count(), 60);
    }

    #[test]
    fn auc_of_perfect_and_reversed_scores() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.0, 1.0, 2.0, 3.0], &labels), 1.0);
        assert_eq!(auc(&[3.0, 2.0, 1.0, 0.0], &labels), 0.0);
        assert_eq!(auc(&[1.0; 4], &labels), 0.5);
    }
}

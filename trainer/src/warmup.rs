//! The offload warm-up: a newly added `<|offload|>` token starts near probability zero, and RL
//! can only reinforce what it samples. Before RL, the token's output-head row is fitted so the
//! token is the first answer token on a chosen share of prompts.
//!
//! Only that row moves; the rest of the model is untouched. Since the offload token never occurs
//! in a prompt, the hidden states `h_i` at the answer position and the other tokens' logits do not
//! depend on it, so `p_i(r) = exp(h_i . r) / (Z_i + exp(h_i . r))` can be evaluated exactly for any
//! row `r`. The row is moved along the mean of the `h_i` (the direction a supervised step on
//! "answer with <|offload|>" takes for this row) by the amount, found by bisection, that makes the
//! mean probability equal the target. The same share on every prompt: telling easy from hard is
//! left to RL.

use candle_core::{D, DType, Tensor};

use crate::error::{Result, TrainError};
use crate::model::{TrainableModel, token_log_probs};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupReport {
    /// Bisection iterations.
    pub steps: usize,
    /// Mean probability of the offload token as the first answer token, before and after.
    pub initial_rate: f64,
    pub final_rate: f64,
}

/// Per prompt: the hidden state at the answer position and log of the sum of exp(logit) over all
/// tokens but `offload_id`.
fn answer_states(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    offload_id: u32,
) -> Result<Vec<(Vec<f64>, f64)>> {
    let head = model.head().as_tensor().to_dtype(DType::F64)?;
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let ids = Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?;
        let h = model
            .final_hidden(&ids)?
            .detach()
            .squeeze(0)?
            .get(prompt.len() - 1)?
            .to_dtype(DType::F64)?;
        let mut logits = head
            .matmul(&h.unsqueeze(1)?)?
            .squeeze(1)?
            .to_vec1::<f64>()?;
        if let Some(l) = logits.get_mut(offload_id as usize) {
            *l = f64::NEG_INFINITY;
        }
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        out.push((h.to_vec1::<f64>()?, log_z));
    }
    Ok(out)
}

fn mean_rate(states: &[(Vec<f64>, f64)], row: &[f64]) -> f64 {
    let total: f64 = states
        .iter()
        .map(|(h, log_z)| {
            let s: f64 = h.iter().zip(row).map(|(a, b)| a * b).sum();
            // sigmoid(s - log_z), computed stably.
            let x = s - log_z;
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        })
        .sum();
    total / states.len().max(1) as f64
}

/// Mean over `prompts` of p(offload token | prompt) at the first answer position, from the full
/// forward pass (independent of the closed form the calibration uses).
pub fn offload_probability(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    offload_id: u32,
) -> Result<f64> {
    let mut total = 0.0;
    for prompt in prompts {
        let ids = Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward(&ids)?.detach();
        let last = logits.narrow(1, prompt.len() - 1, 1)?;
        let target = Tensor::new(&[[offload_id]], model.device())?;
        let lp = token_log_probs(&last, &target)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        total += lp.first().copied().unwrap_or(f64::NEG_INFINITY).exp();
    }
    Ok(total / prompts.len().max(1) as f64)
}

fn head_row(model: &TrainableModel, id: u32) -> Result<Vec<f64>> {
    Ok(model
        .head()
        .as_tensor()
        .get(id as usize)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// Fits the offload token's head row so its mean first-token probability over `prompts` is
/// `target_rate` (only ever raising it).
pub fn calibrate_offload_row(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    offload_id: u32,
    target_rate: f64,
) -> Result<WarmupReport> {
    if prompts.is_empty() || !(target_rate > 0.0 && target_rate < 1.0) {
        return Err(TrainError::InvalidSettings(
            "the warm-up needs prompts and a target rate between 0 and 1".into(),
        ));
    }
    let states = answer_states(model, prompts, offload_id)?;
    let row = head_row(model, offload_id)?;
    let initial_rate = mean_rate(&states, &row);
    if initial_rate >= target_rate {
        return Ok(WarmupReport {
            steps: 0,
            initial_rate,
            final_rate: initial_rate,
        });
    }
    let dim = row.len();
    let mut direction = vec![0.0; dim];
    for (h, _) in &states {
        for (d, x) in direction.iter_mut().zip(h) {
            *d += x;
        }
    }
    let norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(TrainError::InvalidSettings(
            "the answer-position hidden states cancel out; cannot fit the offload row".into(),
        ));
    }
    direction.iter_mut().for_each(|d| *d /= norm);
    let at = |alpha: f64| -> Vec<f64> {
        row.iter()
            .zip(&direction)
            .map(|(r, d)| r + alpha * d)
            .collect()
    };
    // Grow the bracket until the target is inside, then bisect.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut steps = 0;
    while mean_rate(&states, &at(hi)) < target_rate {
        lo = hi;
        hi *= 2.0;
        steps += 1;
        if steps > 60 {
            return Err(TrainError::InvalidSettings(
                "the offload rate does not reach the target along the mean hidden state".into(),
            ));
        }
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if mean_rate(&states, &at(mid)) < target_rate {
            lo = mid;
        } else {
            hi = mid;
        }
        steps += 1;
    }
    let fitted = at(hi);
    let final_rate = mean_rate(&states, &fitted);
    let tensor = Tensor::from_vec(fitted, dim, model.device())?;
    model.set_head_row(offload_id, &tensor)?;
    Ok(WarmupReport {
        steps,
        initial_rate,
        final_rate,
    })
}

/// The mean of the embedding rows of `ids` (for initialising a new token from the text it
/// stands for).
pub fn mean_embedding(model: &TrainableModel, ids: &[u32]) -> Result<Tensor> {
    let rows = model
        .embedding()
        .as_tensor()
        .index_select(&Tensor::new(ids, model.device())?, 0)?;
    Ok(rows.mean(D::Minus2)?)
}

//! The policy-gradient loss of one group and gradient accumulation over groups.
//!
//! GAPG (the paper): L = -1/|K| sum_{x in K} sum_i A_i * sum_t log pi(y_i,t), A_i = (r_i - mean)/(G-1).
//! Dr. GRPO: L = -1/(|K| G) sum_x sum_i A_i * sum_t log pi / max_new_tokens, A_i = r_i - mean.
//! GRPO: L = -1/(|K| G) sum_x sum_i A_i * mean_t log pi, A_i std-normalised. With one on-policy
//! step per batch the importance ratio is exactly 1, so its clipping never acts; the gradient is
//! the same as the clipped objective's.
//! Only the local response's tokens (the offload or stop token included) carry gradient.

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use crate::algo::Algo;
use crate::error::Result;
use crate::model::{TrainableModel, token_log_probs};

/// The factor on a response's summed token log-probs, from its advantage.
pub fn response_weight(
    algo: Algo,
    advantage: f64,
    response_len: usize,
    group: usize,
    kept_prompts: usize,
    max_new_tokens: usize,
) -> f64 {
    let k = kept_prompts.max(1) as f64;
    match algo {
        Algo::Gapg => advantage / k,
        Algo::DrGrpo => advantage / (k * group.max(1) as f64 * max_new_tokens.max(1) as f64),
        Algo::Grpo => advantage / (k * group.max(1) as f64 * response_len.max(1) as f64),
    }
}

/// Backpropagates `-sum_i weight_i * sum_t log pi(y_i,t | prompt, y_i,<t)` for one prompt's
/// responses and adds the gradients into `total`. Responses with zero weight are skipped.
pub fn accumulate_group(
    model: &TrainableModel,
    prompt: &[u32],
    responses: &[(&[u32], f64)],
    total: &mut Option<GradStore>,
) -> Result<()> {
    let responses: Vec<&(&[u32], f64)> = responses
        .iter()
        .filter(|(tokens, w)| !tokens.is_empty() && *w != 0.0)
        .collect();
    if responses.is_empty() {
        return Ok(());
    }
    let device = model.device();
    let p = prompt.len();
    let longest = responses.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    // Inputs are prompt + response minus the last token; targets are shifted by one.
    let width = p + longest - 1;
    let mut inputs = Vec::with_capacity(responses.len() * width);
    let mut targets = Vec::with_capacity(responses.len() * width);
    let mut weights = Vec::with_capacity(responses.len() * width);
    for (tokens, w) in &responses {
        let full: Vec<u32> = prompt.iter().chain(tokens.iter()).copied().collect();
        for t in 0..width {
            // Right padding with token 0: causal attention keeps it from the real positions.
            inputs.push(full.get(t).copied().unwrap_or(0));
            targets.push(full.get(t + 1).copied().unwrap_or(0));
            // Position t predicts token t + 1, a response token when t + 1 >= p.
            let is_response = t + 1 >= p && t + 1 < full.len();
            weights.push(if is_response { *w } else { 0.0 });
        }
    }
    let b = responses.len();
    let inputs = Tensor::from_vec(inputs, (b, width), device)?;
    let targets = Tensor::from_vec(targets, (b, width), device)?;
    let weights = Tensor::from_vec(weights, (b, width), device)?.to_dtype(model.dtype())?;
    let logits = model.forward(&inputs)?;
    let log_probs = token_log_probs(&logits, &targets)?;
    let loss = (log_probs * weights)?.sum_all()?.neg()?;
    let grads = loss.backward()?;
    add_grads(model, total, grads)
}

fn add_grads(model: &TrainableModel, total: &mut Option<GradStore>, new: GradStore) -> Result<()> {
    let Some(sum) = total else {
        *total = Some(new);
        return Ok(());
    };
    for (_, var) in model.named_vars()? {
        if let Some(g) = new.get(var.as_tensor()) {
            let combined = match sum.get(var.as_tensor()) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(var.as_tensor(), combined);
        }
    }
    Ok(())
}

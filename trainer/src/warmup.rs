//! The offload warm-up: a short supervised phase that raises the probability of the offload
//! token at the start of an answer until it is emitted on a measurable share of prompts.
//!
//! RL can only reinforce what it samples, and a newly added token starts near probability zero.
//! The warm-up stops as soon as the mean first-token probability of `<|offload|>` over the given
//! prompts reaches the target, so the model keeps its own answers for the rest.

use candle_core::Tensor;

use crate::error::{Result, TrainError};
use crate::model::{TrainableModel, token_log_probs};
use crate::optim::{AdamW, AdamWConfig};
use crate::update::accumulate_group;

/// What the warm-up did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupReport {
    pub steps: usize,
    /// Mean probability of the offload token as the first answer token, before and after.
    pub initial_rate: f64,
    pub final_rate: f64,
}

/// Mean over `prompts` of p(offload token | prompt) at the first answer position.
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
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        total += lp.first().copied().unwrap_or(f64::NEG_INFINITY).exp();
    }
    Ok(total / prompts.len().max(1) as f64)
}

/// Gradient steps on -log p(offload | prompt) until the mean probability reaches
/// `target_rate` or `max_steps` is spent.
pub fn warm_up_offload(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    offload_id: u32,
    target_rate: f64,
    max_steps: usize,
    lr: f64,
) -> Result<WarmupReport> {
    if prompts.is_empty() || !(0.0..1.0).contains(&target_rate) {
        return Err(TrainError::InvalidSettings(
            "the warm-up needs prompts and a target rate below 1".into(),
        ));
    }
    let initial_rate = offload_probability(model, prompts, offload_id)?;
    let mut rate = initial_rate;
    let mut optimizer = AdamW::new(model.named_vars()?, AdamWConfig::default())?;
    let mut steps = 0;
    let target = [offload_id];
    while rate < target_rate && steps < max_steps {
        let mut grads = None;
        let weight = 1.0 / prompts.len() as f64;
        for prompt in prompts {
            accumulate_group(model, prompt, &[(&target[..], weight)], &mut grads)?;
        }
        if let Some(grads) = grads {
            optimizer.step(&grads, lr)?;
        }
        steps += 1;
        rate = offload_probability(model, prompts, offload_id)?;
    }
    Ok(WarmupReport {
        steps,
        initial_rate,
        final_rate: rate,
    })
}

//! The policy-gradient loss of one group and gradient accumulation over groups.
//!
//! GAPG (the paper): L = -1/|K| sum_{x in K} sum_i A_i * sum_t log pi(y_i,t), A_i = (r_i - mean)/(G-1).
//! Dr. GRPO: L = -1/(|K| G) sum_x sum_i A_i * sum_t log pi / max_new_tokens, A_i = r_i - mean.
//! GRPO: L = -1/(|K| G) sum_x sum_i A_i * mean_t log pi, A_i std-normalised. With one on-policy
//! step per batch the importance ratio is exactly 1, so its clipping never acts; the gradient is
//! the same as the clipped objective's.
//! Only the local response's tokens (the offload or stop token included) carry gradient, and
//! log pi is the distribution the rollouts sampled from: logits / T, with the tokens the rollouts
//! could not sample masked out.

use candle_core::backprop::GradStore;
use candle_core::{D, Tensor};

use crate::algo::{Algo, advantages, is_zero_variance};
use crate::error::{Result, TrainError};
use crate::model::{TrainableModel, token_log_probs};

/// How log pi(y | x) is scored: as the rollouts sampled, so the update stays on-policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The rollouts' sampling temperature: log pi = log softmax(logits / T).
    pub temperature: f32,
    /// Tokens the rollouts could never sample (`train --no-offload` masks the offload token);
    /// the scored distribution leaves them out as well.
    pub masked: Vec<u32>,
}

impl Default for Scoring {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            masked: Vec::new(),
        }
    }
}

impl Scoring {
    /// Greedy rollouts (T = 0) have no log-probability to follow: training refuses them.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::InvalidSettings(format!(
                "training samples its rollouts at a temperature above 0 (got {}); greedy \
                 decoding (0) is deterministic and has no policy gradient",
                self.temperature
            )));
        }
        Ok(())
    }
}

/// Everything the update needs besides the rollouts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateConfig {
    pub algo: Algo,
    /// The rollouts' token limit (Dr. GRPO divides by it).
    pub max_new_tokens: usize,
    /// Sequences per forward/backward pass; None: a whole group at once. Only memory and speed
    /// change: the passes' gradients are summed.
    pub micro_batch: Option<usize>,
    pub scoring: Scoring,
}

impl UpdateConfig {
    pub fn validate(&self) -> Result<()> {
        if self.micro_batch == Some(0) {
            return Err(TrainError::InvalidSettings(
                "a micro-batch holds at least one sequence".into(),
            ));
        }
        self.scoring.validate()
    }
}

/// One prompt's rollouts as the update sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResponses<'a> {
    pub prompt: &'a [u32],
    /// Each response's local tokens, the stop or offload token that ended it included.
    pub responses: Vec<&'a [u32]>,
    /// One reward per response.
    pub rewards: &'a [f64],
}

/// The gradient of one update.
pub struct PolicyGradient {
    /// None when no group carried a signal.
    pub grads: Option<GradStore>,
    /// Groups whose rewards are all equal (no gradient).
    pub zero_variance_groups: usize,
}

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

/// The gradient of the loss over `groups`, the prompts the update keeps (D1 u D2): |K| is
/// `groups.len()`.
pub fn policy_gradient(
    model: &TrainableModel,
    groups: &[GroupResponses<'_>],
    config: &UpdateConfig,
) -> Result<PolicyGradient> {
    config.validate()?;
    let mut grads = None;
    let mut zero_variance_groups = 0;
    for group in groups {
        if group.rewards.len() != group.responses.len() {
            return Err(TrainError::InvalidSettings(format!(
                "{} rewards for {} responses",
                group.rewards.len(),
                group.responses.len()
            )));
        }
        if is_zero_variance(group.rewards) {
            zero_variance_groups += 1;
            continue;
        }
        let adv = advantages(config.algo, group.rewards);
        let weighted: Vec<(&[u32], f64)> = group
            .responses
            .iter()
            .zip(&adv)
            .map(|(tokens, &a)| {
                let w = response_weight(
                    config.algo,
                    a,
                    tokens.len(),
                    group.responses.len(),
                    groups.len(),
                    config.max_new_tokens,
                );
                (*tokens, w)
            })
            .collect();
        accumulate_group(model, group.prompt, &weighted, config, &mut grads)?;
    }
    Ok(PolicyGradient {
        grads,
        zero_variance_groups,
    })
}

/// Backpropagates `-sum_i weight_i * sum_t log pi(y_i,t | prompt, y_i,<t)` for one prompt's
/// responses, `config.micro_batch` sequences per pass, and adds the gradients into `total`.
/// Responses with zero weight are skipped.
pub fn accumulate_group(
    model: &TrainableModel,
    prompt: &[u32],
    responses: &[(&[u32], f64)],
    config: &UpdateConfig,
    total: &mut Option<GradStore>,
) -> Result<()> {
    config.validate()?;
    let mut responses: Vec<(&[u32], f64)> = responses
        .iter()
        .filter(|(tokens, w)| !tokens.is_empty() && *w != 0.0)
        .copied()
        .collect();
    if responses.is_empty() {
        return Ok(());
    }
    // Similar lengths share a pass, so less of each pass is padding.
    responses.sort_by_key(|(tokens, _)| std::cmp::Reverse(tokens.len()));
    let chunk = config.micro_batch.unwrap_or(responses.len()).max(1);
    for part in responses.chunks(chunk) {
        let tokens: Vec<&[u32]> = part.iter().map(|(t, _)| *t).collect();
        let weights: Vec<f64> = part.iter().map(|(_, w)| *w).collect();
        let grads = {
            let log_probs = response_log_probs(model, prompt, &tokens, &config.scoring)?;
            let weights =
                Tensor::from_vec(weights, part.len(), model.device())?.to_dtype(model.dtype())?;
            let loss = (log_probs * weights)?.sum_all()?.neg()?;
            loss.backward()?
        };
        // The pass's graph (its activations) is freed here, before the sum allocates.
        add_grads(model, total, grads)?;
    }
    Ok(())
}

/// The logit a masked token gets in the loss: finite, so a masked target at a padded position
/// (weight 0) cannot turn the loss into 0 * inf = NaN, yet exp() of it is exactly 0.
const MASKED_LOGIT: f64 = -1e30;

/// `[responses]`: each response's summed log pi(y_t | prompt, y_<t) under `scoring`, in one
/// padded pass. Positions after a response's last token are padding and count nothing.
pub fn response_log_probs(
    model: &TrainableModel,
    prompt: &[u32],
    responses: &[&[u32]],
    scoring: &Scoring,
) -> Result<Tensor> {
    scoring.validate()?;
    let p = prompt.len();
    let longest = responses.iter().map(|t| t.len()).max().unwrap_or(0);
    if p == 0 || longest == 0 || responses.iter().any(|t| t.is_empty()) {
        return Err(TrainError::InvalidSettings(
            "scoring needs a prompt and non-empty responses".into(),
        ));
    }
    let device = model.device();
    // Inputs are prompt + response minus its last token, right-padded with token 0 (causal
    // attention keeps padding from the real positions). Position p - 1 + j predicts response
    // token j, so only positions p - 1.. need logits.
    let width = p + longest - 1;
    let b = responses.len();
    let mut inputs = Vec::with_capacity(b * width);
    let mut targets = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for tokens in responses {
        inputs.extend(
            prompt
                .iter()
                .chain(&tokens[..tokens.len() - 1])
                .copied()
                .chain(std::iter::repeat(0))
                .take(width),
        );
        for j in 0..longest {
            targets.push(tokens.get(j).copied().unwrap_or(0));
            mask.push(if j < tokens.len() { 1.0f32 } else { 0.0 });
        }
    }
    let inputs = Tensor::from_vec(inputs, (b, width), device)?;
    let targets = Tensor::from_vec(targets, (b, longest), device)?;
    let mask = Tensor::from_vec(mask, (b, longest), device)?.to_dtype(model.dtype())?;
    let mut logits = model.forward_from(&inputs, p - 1)?;
    if scoring.temperature != 1.0 {
        logits = (logits / f64::from(scoring.temperature))?;
    }
    if !scoring.masked.is_empty() {
        let vocab = logits.dim(D::Minus1)?;
        let mut bias = vec![0.0f64; vocab];
        for &id in &scoring.masked {
            if let Some(slot) = bias.get_mut(id as usize) {
                *slot = MASKED_LOGIT;
            }
        }
        let bias = Tensor::from_vec(bias, vocab, device)?.to_dtype(model.dtype())?;
        logits = logits.broadcast_add(&bias)?;
    }
    Ok((token_log_probs(&logits, &targets)? * mask)?.sum(1)?)
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

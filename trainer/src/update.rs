//! The policy-gradient loss of the kept groups and gradient accumulation over passes.
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
    /// Sequences per forward/backward pass (from any prompts); None: as many as fit
    /// [`PASS_TOKENS`] padded tokens. Only memory and speed change: the passes' gradients are
    /// summed.
    pub micro_batch: Option<usize>,
    pub scoring: Scoring,
    /// Score every answer of every group, those without a gradient (a zero-variance group, a
    /// zero advantage) at weight 0: the same gradient with the work of an update that does not
    /// skip them, such as TRL's GRPOTrainer (`train --update-every-answer`, for benchmarks).
    pub every_answer: bool,
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
    /// Answers whose log-probabilities the forward/backward passes computed.
    pub scored_answers: usize,
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
    let mut rows = Vec::new();
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
            if !config.every_answer {
                continue;
            }
        }
        let adv = advantages(config.algo, group.rewards);
        rows.extend(group.responses.iter().zip(&adv).map(|(tokens, &a)| {
            let w = response_weight(
                config.algo,
                a,
                tokens.len(),
                group.responses.len(),
                groups.len(),
                config.max_new_tokens,
            );
            ScoredRow {
                prompt: group.prompt,
                response: tokens,
                weight: w,
            }
        }));
    }
    // Every kept prompt's responses share the passes (fewer, fuller products than one pass per
    // prompt, and one gradient sum per pass rather than per prompt).
    let scored_answers = accumulate(model, rows, config, &mut grads)?;
    Ok(PolicyGradient {
        grads,
        zero_variance_groups,
        scored_answers,
    })
}

/// One response to score: its prompt, its tokens and the factor on its summed log-probs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredRow<'a> {
    pub prompt: &'a [u32],
    pub response: &'a [u32],
    pub weight: f64,
}

/// Padded tokens per forward/backward pass when no micro-batch is set. SmolLM2's logits for
/// 4096 positions take 0.8 GB, and the pass holds several vocabulary-wide copies of them (the
/// head, the offload row spliced in, their gradients): a step of 16 prompts x 8 x 48 tokens,
/// top 8 blocks, peaked at 18.5 GB with 4096 (15.8 GB once `logsumexp` replaced
/// log-softmax), too close to this 23 GB machine's limit. Short responses share a pass, long
/// ones get fewer rows.
pub const PASS_TOKENS: usize = 2048;

/// Backpropagates `-sum_i weight_i * sum_t log pi(y_i,t | prompt_i, y_i,<t)` for one prompt's
/// responses and adds the gradients into `total` (see [`accumulate`]).
pub fn accumulate_group(
    model: &TrainableModel,
    prompt: &[u32],
    responses: &[(&[u32], f64)],
    config: &UpdateConfig,
    total: &mut Option<GradStore>,
) -> Result<()> {
    let rows = responses
        .iter()
        .map(|&(response, weight)| ScoredRow {
            prompt,
            response,
            weight,
        })
        .collect();
    accumulate(model, rows, config, total).map(|_| ())
}

/// Backpropagates `-sum_i weight_i * sum_t log pi(y_i,t | prompt_i, y_i,<t)` over `rows` (any
/// mix of prompts) and adds the gradients into `total`. A pass holds several prompts' rows, each
/// prompt computed once ([`response_log_probs`]): `config.micro_batch` rows per pass, or as
/// many as fit [`PASS_TOKENS`]. Rows with no tokens are skipped, and so are rows with zero
/// weight unless `config.every_answer`. Returns the rows scored.
pub fn accumulate(
    model: &TrainableModel,
    mut rows: Vec<ScoredRow<'_>>,
    config: &UpdateConfig,
    total: &mut Option<GradStore>,
) -> Result<usize> {
    config.validate()?;
    rows.retain(|r| !r.response.is_empty() && (r.weight != 0.0 || config.every_answer));
    let scored = rows.len();
    // A prompt's rows together, longest first within it, so a pass's padding is small.
    rows.sort_by(|a, b| {
        a.prompt
            .cmp(b.prompt)
            .then(b.response.len().cmp(&a.response.len()))
    });
    // Passes hold several prompts' rows (each prompt computed once), up to the budget: one
    // backward and one gradient sum per pass, not per prompt. A gradient the size of the model
    // per pass is most of a small pass's cost when every weight trains.
    let mut pass: Vec<&[ScoredRow<'_>]> = Vec::new();
    let (mut pass_rows, mut pass_tokens) = (0usize, 0usize);
    for same_prompt in rows.chunk_by(|a, b| a.prompt == b.prompt) {
        let mut rest = same_prompt;
        while !rest.is_empty() {
            // Longest first: a piece's first response sets its width.
            let width = rest[0].response.len().max(1);
            let prompt_len = rest[0].prompt.len();
            let room = match config.micro_batch {
                Some(n) => n.saturating_sub(pass_rows),
                None => PASS_TOKENS.saturating_sub(pass_tokens + prompt_len) / width,
            };
            if room == 0 && pass_rows > 0 {
                backward_pass(model, &pass, config, total)?;
                pass.clear();
                (pass_rows, pass_tokens) = (0, 0);
                continue;
            }
            let take = room.clamp(1, rest.len());
            let (piece, tail) = rest.split_at(take);
            pass.push(piece);
            pass_rows += take;
            pass_tokens += prompt_len + take * width;
            rest = tail;
        }
    }
    if !pass.is_empty() {
        backward_pass(model, &pass, config, total)?;
    }
    Ok(scored)
}

/// One forward/backward pass over `pieces`, each the rows of one prompt, its gradient added into
/// `total`.
fn backward_pass(
    model: &TrainableModel,
    pieces: &[&[ScoredRow<'_>]],
    config: &UpdateConfig,
    total: &mut Option<GradStore>,
) -> Result<()> {
    let grads = {
        let mut loss: Option<Tensor> = None;
        for piece in pieces {
            let responses: Vec<&[u32]> = piece.iter().map(|r| r.response).collect();
            let weights: Vec<f64> = piece.iter().map(|r| r.weight).collect();
            let log_probs =
                response_log_probs(model, piece[0].prompt, &responses, &config.scoring)?;
            let weights =
                Tensor::from_vec(weights, piece.len(), model.device())?.to_dtype(model.dtype())?;
            let part = (log_probs * weights)?.sum_all()?.neg()?;
            loss = Some(match loss {
                Some(sum) => (sum + part)?,
                None => part,
            });
        }
        match loss {
            Some(loss) => loss.backward()?,
            None => return Ok(()),
        }
    };
    // The pass's graph (its activations) is freed here, before the sum allocates.
    add_grads(model, total, grads)
}

/// The logit a masked token gets in the loss: finite, so a masked target at a padded position
/// (weight 0) cannot turn the loss into 0 * inf = NaN, yet exp() of it is exactly 0.
const MASKED_LOGIT: f64 = -1e30;

/// `[responses]`: each response's summed log pi(y_t | prompt, y_<t) under `scoring`, in one
/// pass that computes the prompt once ([`TrainableModel::forward_shared_prompt`]) and the
/// responses right-padded. Positions after a response's last token are padding and count
/// nothing.
pub fn response_log_probs(
    model: &TrainableModel,
    prompt: &[u32],
    responses: &[&[u32]],
    scoring: &Scoring,
) -> Result<Tensor> {
    scoring.validate()?;
    if prompt.is_empty() || responses.is_empty() || responses.iter().any(|r| r.is_empty()) {
        return Err(TrainError::InvalidSettings(
            "scoring needs a prompt and non-empty responses".into(),
        ));
    }
    let device = model.device();
    // Row i's input is its response minus the last token, right-padded with token 0 (causal
    // attention keeps padding from the real positions); output position j predicts token j.
    let span = responses.iter().map(|r| r.len()).max().unwrap_or(1);
    let n = responses.len();
    let mut inputs = Vec::with_capacity(n * (span - 1));
    let mut targets = Vec::with_capacity(n * span);
    let mut mask = Vec::with_capacity(n * span);
    for tokens in responses {
        inputs.extend(
            tokens[..tokens.len() - 1]
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(span - 1),
        );
        for j in 0..span {
            match tokens.get(j) {
                Some(&t) => {
                    targets.push(t);
                    mask.push(1.0f32);
                }
                None => {
                    targets.push(0);
                    mask.push(0.0);
                }
            }
        }
    }
    let prompt_ids = Tensor::from_slice(prompt, (1, prompt.len()), device)?;
    let inputs = Tensor::from_vec(inputs, (n, span - 1), device)?;
    let targets = Tensor::from_vec(targets, (n, span), device)?;
    let mask = Tensor::from_vec(mask, (n, span), device)?.to_dtype(model.dtype())?;
    let mut logits = model.forward_shared_prompt(&prompt_ids, &inputs)?;
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
    for (_, var) in model.trainable_vars()? {
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

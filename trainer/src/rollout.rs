//! Rollouts: G sampled responses to one prompt, generated together (the prompt is prefilled once
//! and its KV cache shared), each stopped at a stop token, at the offload signal (detected as in
//! `selfroute_core::offload`) or at the token limit.

use candle_core::Tensor;
use selfroute_core::{
    Detection, OffloadDetector, OffloadReason, OffloadSignal, Sampler, SamplingParams, TextStream,
    Tokenizer,
};

use crate::error::{Result, TrainError};
use crate::model::{KvCache, TrainableModel};

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Responses per prompt (G).
    pub group: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleEnd {
    /// A stop token (kept as the last trained token: ending is a decision too).
    Stop,
    /// The offload signal; the tokens end with it.
    Offload(OffloadReason),
    /// The token limit.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The local part of the response, the token that ended it included (stop or offload).
    pub tokens: Vec<u32>,
    /// The text shown to a user (the marker and special tokens excluded).
    pub text: String,
    pub end: SampleEnd,
    /// Sum over generated tokens of the entropy (nats) of the distribution each was drawn from.
    pub entropy_sum: f64,
}

impl Sample {
    pub fn offloaded(&self) -> bool {
        matches!(self.end, SampleEnd::Offload(_))
    }
}

/// One sequence while it is being generated.
struct Running {
    sampler: Sampler,
    history: Vec<u32>,
    stream: TextStream,
    detector: OffloadDetector,
    sample: Sample,
    done: bool,
}

/// Whether a prompt of `prompt_len` tokens leaves room for `max_new_tokens` in a context of
/// `context` tokens (what [`rollout_group`] needs).
pub fn fits_context(prompt_len: usize, max_new_tokens: usize, context: usize) -> bool {
    prompt_len + max_new_tokens <= context
}

/// Samples `config.group` responses to `prompt`; sample i is seeded with `seed + i`.
pub fn rollout_group(
    model: &TrainableModel,
    tokenizer: &Tokenizer,
    signal: &OffloadSignal,
    prompt: &[u32],
    config: &RolloutConfig,
    seed: u64,
) -> Result<Vec<Sample>> {
    rollout_group_masked(model, tokenizer, signal, prompt, config, &[], seed)
}

/// [`rollout_group`] with the tokens `masked` never sampled (`train --no-offload` masks the
/// offload token): they leave the distribution before sampling, and so the entropy.
pub fn rollout_group_masked(
    model: &TrainableModel,
    tokenizer: &Tokenizer,
    signal: &OffloadSignal,
    prompt: &[u32],
    config: &RolloutConfig,
    masked: &[u32],
    seed: u64,
) -> Result<Vec<Sample>> {
    let g = config.group;
    if g == 0 || prompt.is_empty() {
        return Err(TrainError::InvalidSettings(
            "a rollout needs a prompt and at least one sample".into(),
        ));
    }
    let context = model.config().context_length;
    if !fits_context(prompt.len(), config.max_new_tokens, context) {
        return Err(TrainError::InvalidSettings(format!(
            "prompt of {} tokens + {} new tokens exceeds the context of {context}",
            prompt.len(),
            config.max_new_tokens
        )));
    }
    let device = model.device();
    let stop_tokens = tokenizer.stop_token_ids().to_vec();
    let mut seqs = (0..g)
        .map(|i| -> Result<Running> {
            Ok(Running {
                sampler: Sampler::new(SamplingParams {
                    temperature: config.temperature,
                    seed: seed.wrapping_add(i as u64),
                    ..SamplingParams::default()
                })?,
                history: prompt.to_vec(),
                stream: TextStream::new(),
                detector: OffloadDetector::new(signal),
                sample: Sample {
                    tokens: Vec::new(),
                    text: String::new(),
                    end: SampleEnd::Length,
                    entropy_sum: 0.0,
                },
                done: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut prompt_cache = KvCache::new();
    let ids = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let last = model
        .forward_cached(&ids, &mut prompt_cache)?
        .squeeze(0)?
        .get(prompt.len() - 1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut rows: Vec<Vec<f32>> = vec![last; g];
    let mut cache = prompt_cache.repeat_batch(g)?;
    for step in 0..config.max_new_tokens {
        let mut next = Vec::with_capacity(g);
        for (seq, row) in seqs.iter_mut().zip(rows.iter_mut()) {
            if seq.done {
                // Finished sequences ride along with a harmless token; their output is ignored.
                next.push(*seq.history.last().unwrap_or(&0));
                continue;
            }
            for &id in masked {
                if let Some(l) = row.get_mut(id as usize) {
                    // The sampler drops NaN logits from its candidates, so the token is never
                    // picked (an -inf one could still be the fallback of its walk on rounding).
                    *l = f32::NAN;
                }
            }
            seq.sample.entropy_sum += entropy(row, config.temperature);
            let token = seq.sampler.sample(row, &seq.history)?;
            seq.history.push(token);
            seq.sample.tokens.push(token);
            next.push(token);
            if stop_tokens.contains(&token) {
                seq.sample.end = SampleEnd::Stop;
                seq.done = true;
                continue;
            }
            let text = seq.stream.push(tokenizer, token)?.unwrap_or_default();
            match seq.detector.push(token, &text) {
                Detection::Continue { visible } => seq.sample.text.push_str(&visible),
                Detection::Offload { reason, visible } => {
                    seq.sample.text.push_str(&visible);
                    seq.sample.end = SampleEnd::Offload(reason);
                    seq.done = true;
                }
            }
        }
        if seqs.iter().all(|s| s.done) || step + 1 == config.max_new_tokens {
            break;
        }
        let ids = Tensor::new(next.as_slice(), device)?.unsqueeze(1)?;
        let logits = model
            .forward_cached(&ids, &mut cache)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::F32)?;
        rows = logits.to_vec2::<f32>()?;
    }
    for seq in &mut seqs {
        if !seq.done {
            let held = seq.stream.finish(tokenizer)?.unwrap_or_default();
            let last = seq.sample.tokens.last().copied().unwrap_or_default();
            if let Detection::Continue { visible } = seq.detector.push(last, &held) {
                seq.sample.text.push_str(&visible);
            }
            seq.sample.text.push_str(&seq.detector.finish());
        }
    }
    Ok(seqs.into_iter().map(|s| s.sample).collect())
}

/// Entropy of softmax(logits / temperature), in nats (greedy: 0).
fn entropy(logits: &[f32], temperature: f32) -> f64 {
    if temperature <= 0.0 {
        return 0.0;
    }
    let t = f64::from(temperature);
    // f32::max skips NaN, and NaN terms (masked tokens) are skipped below.
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if !max.is_finite() {
        return 0.0;
    }
    let (mut z, mut weighted) = (0.0f64, 0.0f64);
    for &l in logits {
        let x = f64::from(l - max) / t;
        if x.is_finite() {
            let e = x.exp();
            z += e;
            weighted += e * x;
        }
    }
    z.ln() - weighted / z
}

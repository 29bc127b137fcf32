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

pub mod fast;

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

/// Which forward pass generates the rollouts (`train --rollout-engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RolloutEngine {
    /// The trainable model's own cached forward, one prompt's group at a time (the reference).
    Trainable,
    /// [`fast`]: every prompt's group decoded together by a no-grad forward over the same
    /// weights. Falls back to the trainable path for models it cannot run (f64, GPU).
    #[default]
    Fast,
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

/// What every sampled token passes through, whichever engine produced its logits.
struct Picking<'a> {
    tokenizer: &'a Tokenizer,
    stop_tokens: &'a [u32],
    masked: &'a [u32],
    temperature: f32,
}

impl Running {
    fn new(signal: &OffloadSignal, prompt: &[u32], temperature: f32, seed: u64) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(SamplingParams {
                temperature,
                seed,
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
    }

    /// Samples the next token from `row` (this sequence's logits), records it and decides
    /// whether the sequence has ended.
    fn advance(&mut self, row: &mut [f32], picking: &Picking<'_>) -> Result<u32> {
        for &id in picking.masked {
            if let Some(l) = row.get_mut(id as usize) {
                // The sampler drops NaN logits from its candidates, so the token is never
                // picked (an -inf one could still be the fallback of its walk on rounding).
                *l = f32::NAN;
            }
        }
        self.sample.entropy_sum += entropy(row, picking.temperature);
        let token = self.sampler.sample(row, &self.history)?;
        self.history.push(token);
        self.sample.tokens.push(token);
        if picking.stop_tokens.contains(&token) {
            self.sample.end = SampleEnd::Stop;
            self.done = true;
            return Ok(token);
        }
        let text = self
            .stream
            .push(picking.tokenizer, token)?
            .unwrap_or_default();
        match self.detector.push(token, &text) {
            Detection::Continue { visible } => self.sample.text.push_str(&visible),
            Detection::Offload { reason, visible } => {
                self.sample.text.push_str(&visible);
                self.sample.end = SampleEnd::Offload(reason);
                self.done = true;
            }
        }
        Ok(token)
    }

    /// The sample, with any text still held back flushed (a sequence cut by the token limit).
    fn finish(mut self, tokenizer: &Tokenizer) -> Result<Sample> {
        if !self.done {
            let held = self.stream.finish(tokenizer)?.unwrap_or_default();
            let last = self.sample.tokens.last().copied().unwrap_or_default();
            if let Detection::Continue { visible } = self.detector.push(last, &held) {
                self.sample.text.push_str(&visible);
            }
            self.sample.text.push_str(&self.detector.finish());
        }
        Ok(self.sample)
    }
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

fn check_rollout(model: &TrainableModel, prompt: &[u32], config: &RolloutConfig) -> Result<()> {
    if config.group == 0 || prompt.is_empty() {
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
    Ok(())
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
    check_rollout(model, prompt, config)?;
    let g = config.group;
    let device = model.device();
    let stop_tokens = tokenizer.stop_token_ids().to_vec();
    let picking = Picking {
        tokenizer,
        stop_tokens: &stop_tokens,
        masked,
        temperature: config.temperature,
    };
    let mut seqs = (0..g)
        .map(|i| {
            Running::new(
                signal,
                prompt,
                config.temperature,
                seed.wrapping_add(i as u64),
            )
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
            next.push(seq.advance(row, &picking)?);
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
    seqs.into_iter().map(|s| s.finish(tokenizer)).collect()
}

/// The rollouts of several prompts at once: `config.group` samples of each, sample i of prompt
/// p seeded with `seeds[p] + i` (as [`rollout_group_masked`] seeds them, so either engine draws
/// the same tokens from the same logits). With [`RolloutEngine::Fast`] every sample of every
/// prompt is a row of one forward per step.
#[allow(clippy::too_many_arguments)]
pub fn rollout_groups(
    engine: RolloutEngine,
    model: &TrainableModel,
    tokenizer: &Tokenizer,
    signal: &OffloadSignal,
    prompts: &[&[u32]],
    config: &RolloutConfig,
    masked: &[u32],
    seeds: &[u64],
) -> Result<Vec<Vec<Sample>>> {
    if prompts.len() != seeds.len() {
        return Err(TrainError::InvalidSettings(format!(
            "{} prompts with {} seeds",
            prompts.len(),
            seeds.len()
        )));
    }
    if engine == RolloutEngine::Trainable || !fast::supports(model) {
        return prompts
            .iter()
            .zip(seeds)
            .map(|(prompt, &seed)| {
                rollout_group_masked(model, tokenizer, signal, prompt, config, masked, seed)
            })
            .collect();
    }
    for prompt in prompts {
        check_rollout(model, prompt, config)?;
    }
    let g = config.group;
    let stop_tokens = tokenizer.stop_token_ids().to_vec();
    let picking = Picking {
        tokenizer,
        stop_tokens: &stop_tokens,
        masked,
        temperature: config.temperature,
    };
    let mut decoder = fast::FastDecoder::new(model)?;
    // Row p * g + i is sample i of prompt p; its decoder sequence has the same index.
    let mut seqs = Vec::with_capacity(prompts.len() * g);
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(prompts.len() * g);
    for (prompt, &seed) in prompts.iter().zip(seeds) {
        let capacity = prompt.len() + config.max_new_tokens;
        let first = decoder.new_sequence(capacity);
        let prefill: Vec<fast::Row> = prompt
            .iter()
            .enumerate()
            .map(|(pos, &token)| fast::Row {
                seq: first,
                token,
                pos,
            })
            .collect();
        // The prompt is run once; the group's other samples start from a copy of its cache.
        let last = decoder
            .forward(&prefill, &[prompt.len() - 1])?
            .pop()
            .unwrap_or_default();
        for i in 0..g {
            if i > 0 {
                decoder.fork(first, capacity)?;
            }
            rows.push(last.clone());
            seqs.push(Running::new(
                signal,
                prompt,
                config.temperature,
                seed.wrapping_add(i as u64),
            )?);
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for step in 0..config.max_new_tokens {
        let picked = advance_all(&mut seqs, &mut rows, &picking, threads)?;
        let mut batch = Vec::new();
        for (id, (seq, token)) in seqs.iter().zip(picked).enumerate() {
            let Some(token) = token else { continue };
            if seq.done {
                decoder.release(id);
            } else {
                batch.push(fast::Row {
                    seq: id,
                    token,
                    pos: decoder.len(id),
                });
            }
        }
        // Finished rows leave the batch; the last step's logits would go unused.
        if batch.is_empty() || step + 1 == config.max_new_tokens {
            break;
        }
        let logits = decoder.forward(&batch, &(0..batch.len()).collect::<Vec<_>>())?;
        for (row, values) in batch.iter().zip(logits) {
            rows[row.seq] = values;
        }
    }
    let mut samples = seqs
        .into_iter()
        .map(|s| s.finish(tokenizer))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    Ok(prompts
        .iter()
        .map(|_| samples.by_ref().take(g).collect())
        .collect())
}

/// Samples the next token of every running sequence from its row of logits (None for those
/// already done), the rows split across `threads`: a draw sorts the whole vocabulary, which at
/// 32 rows of 49k logits is a good part of a step.
fn advance_all(
    seqs: &mut [Running],
    rows: &mut [Vec<f32>],
    picking: &Picking<'_>,
    threads: usize,
) -> Result<Vec<Option<u32>>> {
    let advance = |seqs: &mut [Running], rows: &mut [Vec<f32>]| -> Result<Vec<Option<u32>>> {
        seqs.iter_mut()
            .zip(rows.iter_mut())
            .map(|(seq, row)| {
                if seq.done {
                    Ok(None)
                } else {
                    seq.advance(row, picking).map(Some)
                }
            })
            .collect()
    };
    let running = seqs.iter().filter(|s| !s.done).count();
    // Each draw is a fraction of a millisecond; threads pay off only for several of them.
    let threads = threads.min(running / 4).max(1);
    if threads == 1 {
        return advance(seqs, rows);
    }
    let per = seqs.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Option<u32>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = seqs
            .chunks_mut(per)
            .zip(rows.chunks_mut(per))
            .map(|(seqs, rows)| s.spawn(|| advance(seqs, rows)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::InvalidSettings(
                        "a sampling thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut picked = Vec::with_capacity(seqs.len());
    for part in parts {
        picked.extend(part?);
    }
    Ok(picked)
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

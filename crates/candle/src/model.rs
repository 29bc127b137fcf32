//! The decoder: embedding, then per layer RMSNorm -> GQA attention with RoPE and a KV cache ->
//! residual -> RMSNorm -> SwiGLU MLP -> residual, then the final norm and the output head.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use selfroute_core::backend::{BatchBackend, BatchStep, SeqId};
use selfroute_core::{Backend, Logits, LogitsFor, ModelConfig, WeightKey, WeightSource};

use crate::error::{CandleError, Result};
use crate::kv_cache::{AttentionShape, KvCache};
use crate::linear::{Embedding, Linear, dense_tensor};
use crate::rope::Rope;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    biases: Option<(Tensor, Tensor, Tensor)>,
}

struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Everything a forward pass reads and no sequence owns, so that many sequences can share it.
struct Weights {
    config: ModelConfig,
    device: Device,
    embedding: Embedding,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    rope: Rope,
}

/// One sequence's KV caches, one per layer.
struct SequenceCache {
    layers: Vec<KvCache>,
}

impl SequenceCache {
    fn new(config: &ModelConfig) -> Self {
        Self {
            layers: (0..config.num_layers)
                .map(|_| KvCache::new(config.num_kv_heads, config.head_dim))
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    fn truncate(&mut self, len: usize) {
        for cache in &mut self.layers {
            cache.truncate(len);
        }
    }
}

/// The model: shared weights, the cache of the one sequence the [`Backend`] impl runs, and any
/// number of further sequences for batched decoding ([`CandleModel::new_sequence`],
/// [`CandleModel::forward_batch`]).
pub struct CandleModel {
    weights: Weights,
    cache: SequenceCache,
    sequences: HashMap<SeqId, SequenceCache>,
    next_sequence: u64,
    /// The forward pass runs inside this pool, so the calling thread is one of the workers and a
    /// kernel's parallel loop starts without waking a sleeping thread per call (hundreds of calls
    /// per token). None where threads cannot be spawned (wasm), then it runs inline.
    pool: Option<rayon::ThreadPool>,
}

impl CandleModel {
    /// Builds the model from a validated weight source. Weights are copied into candle storage,
    /// so the source can be dropped afterwards.
    pub fn load(config: &ModelConfig, weights: &dyn WeightSource, device: &Device) -> Result<Self> {
        let get = |key: WeightKey| {
            weights.get(key, config).map_err(|e| CandleError::Weight {
                name: key.gguf_name(),
                reason: e.to_string(),
            })
        };
        let linear = |key| Linear::load(&get(key)?, device);
        let dense = |key| dense_tensor(&get(key)?, device);
        let embedding = Embedding::load(&get(WeightKey::TokenEmbedding)?, device)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let biases = if config.architecture.has_qkv_bias() {
                Some((
                    dense(WeightKey::AttnQBias(l))?,
                    dense(WeightKey::AttnKBias(l))?,
                    dense(WeightKey::AttnVBias(l))?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: dense(WeightKey::AttnNorm(l))?,
                attn: Attention {
                    q: linear(WeightKey::AttnQ(l))?,
                    k: linear(WeightKey::AttnK(l))?,
                    v: linear(WeightKey::AttnV(l))?,
                    o: linear(WeightKey::AttnOutput(l))?,
                    biases,
                },
                ffn_norm: dense(WeightKey::FfnNorm(l))?,
                gate: linear(WeightKey::FfnGate(l))?,
                up: linear(WeightKey::FfnUp(l))?,
                down: linear(WeightKey::FfnDown(l))?,
            });
        }
        let output = if config.tie_embeddings {
            Linear::from_embedding(&embedding)?
        } else {
            linear(WeightKey::Output)?
        };
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            config.context_length,
            config.rope_layout,
        );
        Ok(Self {
            weights: Weights {
                config: config.clone(),
                device: device.clone(),
                embedding,
                layers,
                output_norm: dense(WeightKey::OutputNorm)?,
                output,
                rope,
            },
            cache: SequenceCache::new(config),
            sequences: HashMap::new(),
            next_sequence: 0,
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads())
                .build()
                .ok(),
        })
    }

    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// The forward pass over `tokens` at `start_pos..`; returns logits [rows, vocab].
    pub fn forward_tokens(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor> {
        let (weights, cache) = (&self.weights, &mut self.cache);
        in_pool(self.pool.as_ref(), || {
            weights.forward(cache, tokens, start_pos, want)
        })
    }

    pub fn clear_cache(&mut self) {
        self.truncate_cache(0);
    }

    /// A new, empty sequence for [`CandleModel::forward_batch`], beside the one the [`Backend`]
    /// impl runs. Its cache lives until [`CandleModel::drop_sequence`].
    pub fn new_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_sequence);
        self.next_sequence += 1;
        self.sequences
            .insert(id, SequenceCache::new(&self.weights.config));
        id
    }

    /// Frees a sequence's cache; false if there was no such sequence.
    pub fn drop_sequence(&mut self, seq: SeqId) -> bool {
        self.sequences.remove(&seq).is_some()
    }

    /// Positions cached for `seq`, None for an unknown sequence.
    pub fn sequence_len(&self, seq: SeqId) -> Option<usize> {
        self.sequences.get(&seq).map(SequenceCache::len)
    }

    /// Keeps the first `len` positions of `seq` (a retry, a shared prefix).
    pub fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let cache = self
            .sequences
            .get_mut(&seq)
            .ok_or(CandleError::UnknownSequence { seq: seq.0 })?;
        cache.truncate(len);
        Ok(())
    }

    /// Like [`CandleModel::forward_tokens`] for one of the batch sequences: its prompt (or a
    /// chunk of it). Prefill runs per sequence, not inside a batched step: a prompt is already
    /// several rows, which the kernels' multi-row path multiplies efficiently on its own.
    pub fn forward_sequence(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor> {
        let cache = self
            .sequences
            .get_mut(&seq)
            .ok_or(CandleError::UnknownSequence { seq: seq.0 })?;
        let weights = &self.weights;
        in_pool(self.pool.as_ref(), || {
            weights.forward(cache, tokens, start_pos, want)
        })
    }

    /// One decode step for several sequences in one forward pass: row `i` of the returned logits
    /// [steps, vocab] is `steps[i].token` at `steps[i].pos` of `steps[i].seq`. The projections and
    /// the MLP multiply all rows at once (each weight tile read once for every row); attention
    /// runs per sequence against its own cache. Each row equals what a single-sequence step
    /// would give. On an error no cache has moved.
    pub fn forward_batch(&mut self, steps: &[BatchStep]) -> Result<Tensor> {
        let mut caches = Vec::with_capacity(steps.len());
        for step in steps {
            // Taken out of the map so that each sequence's cache is borrowed mutably once; a
            // sequence named twice is not there the second time.
            match self.sequences.remove(&step.seq) {
                Some(cache) => caches.push(cache),
                None => {
                    let seen = steps.iter().take(caches.len()).any(|s| s.seq == step.seq);
                    self.restore(steps, caches);
                    return Err(if seen {
                        CandleError::RepeatedSequence { seq: step.seq.0 }
                    } else {
                        CandleError::UnknownSequence { seq: step.seq.0 }
                    });
                }
            }
        }
        let weights = &self.weights;
        let result = in_pool(self.pool.as_ref(), || {
            weights.forward_batch(&mut caches, steps)
        });
        if result.is_err() {
            for (cache, step) in caches.iter_mut().zip(steps) {
                cache.truncate(step.pos.min(cache.len()));
            }
        }
        self.restore(steps, caches);
        result
    }

    fn restore(&mut self, steps: &[BatchStep], caches: Vec<SequenceCache>) {
        for (step, cache) in steps.iter().zip(caches) {
            self.sequences.insert(step.seq, cache);
        }
    }
}

/// Runs `f` inside the model's pool, so the calling thread is one of the workers and a kernel's
/// parallel loop starts without waking a sleeping thread per call (hundreds of calls per token).
fn in_pool<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

impl Weights {
    fn forward(
        &self,
        cache: &mut SequenceCache,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor> {
        let cached = cache.len();
        if start_pos != cached {
            return Err(CandleError::CacheMismatch {
                pos: start_pos,
                cached,
            });
        }
        let seq = tokens.len();
        let end = start_pos + seq;
        if end > self.config.context_length {
            return Err(CandleError::ContextOverflow {
                end,
                context: self.config.context_length,
            });
        }
        let c = &self.config;
        let eps = f64::from(c.rms_norm_eps);
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embedding.forward(&ids)?;
        for (layer, cache) in self.layers.iter().zip(&mut cache.layers) {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = attention(c, &layer.attn, cache, &self.rope, &h, start_pos)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let up = layer.up.forward(&h)?;
            x = (x + layer.down.forward(&(gate * up)?)?)?;
        }
        if want == LogitsFor::Last && seq > 1 {
            x = x.narrow(0, seq - 1, 1)?;
        }
        let x = rms_norm(&x, &self.output_norm, eps)?;
        Ok(self.output.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// `caches[i]` is the cache of `steps[i].seq`.
    fn forward_batch(&self, caches: &mut [SequenceCache], steps: &[BatchStep]) -> Result<Tensor> {
        for (cache, step) in caches.iter().zip(steps) {
            if step.pos != cache.len() {
                return Err(CandleError::CacheMismatch {
                    pos: step.pos,
                    cached: cache.len(),
                });
            }
            if step.pos >= self.config.context_length {
                return Err(CandleError::ContextOverflow {
                    end: step.pos + 1,
                    context: self.config.context_length,
                });
            }
        }
        let c = &self.config;
        let eps = f64::from(c.rms_norm_eps);
        let tokens: Vec<u32> = steps.iter().map(|s| s.token).collect();
        let ids = Tensor::new(tokens.as_slice(), &self.device)?;
        let mut x = self.embedding.forward(&ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = batch_attention(c, &layer.attn, caches, l, &self.rope, &h, steps)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate.forward_rows(&h)?)?;
            let up = layer.up.forward_rows(&h)?;
            x = (x + layer.down.forward_rows(&(gate * up)?)?)?;
        }
        let x = rms_norm(&x, &self.output_norm, eps)?;
        Ok(self.output.forward_rows(&x)?.to_dtype(DType::F32)?)
    }
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(
        &x.contiguous()?,
        weight,
        eps as f32,
    )?)
}

fn attention(
    c: &ModelConfig,
    attn: &Attention,
    cache: &mut KvCache,
    rope: &Rope,
    h: &Tensor,
    start: usize,
) -> Result<Tensor> {
    let seq = h.dim(0)?;
    let mut q = attn.q.forward(h)?;
    let mut k = attn.k.forward(h)?;
    let mut v = attn.v.forward(h)?;
    if let Some((bq, bk, bv)) = &attn.biases {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    let mut q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    rope.apply(&mut q, c.num_heads, start);
    rope.apply(&mut k, c.num_kv_heads, start);
    let shape = AttentionShape {
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    };
    let out = cache.attend(&q, &k, &v, &shape);
    let out = Tensor::from_vec(out, (seq, c.q_dim()), h.device())?;
    attn.o.forward(&out)
}

/// Attention for a batched step: one row per sequence, projected together, then each row
/// rotated at its own position and attended against its own cache (in parallel across
/// sequences; each is a few thousand multiply-adds per head).
fn batch_attention(
    c: &ModelConfig,
    attn: &Attention,
    caches: &mut [SequenceCache],
    layer: usize,
    rope: &Rope,
    h: &Tensor,
    steps: &[BatchStep],
) -> Result<Tensor> {
    let mut q = attn.q.forward_rows(h)?;
    let mut k = attn.k.forward_rows(h)?;
    let mut v = attn.v.forward_rows(h)?;
    if let Some((bq, bk, bv)) = &attn.biases {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    let mut q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    let (q_dim, kv_dim) = (c.q_dim(), c.num_kv_heads * c.head_dim);
    let shape = AttentionShape {
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    };
    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(q_dim)
        .zip(q.par_chunks_mut(q_dim))
        .zip(k.par_chunks_mut(kv_dim))
        .zip(v.par_chunks(kv_dim))
        .zip(caches.par_iter_mut())
        .zip(steps.par_iter())
        .for_each(|(((((o, q), k), v), cache), step)| {
            rope.apply(q, c.num_heads, step.pos);
            rope.apply(k, c.num_kv_heads, step.pos);
            if let Some(cache) = cache.layers.get_mut(layer) {
                o.copy_from_slice(&cache.attend(q, k, v, &shape));
            }
        });
    let out = Tensor::from_vec(out, (steps.len(), q_dim), h.device())?;
    attn.o.forward_rows(&out)
}

impl Backend for CandleModel {
    fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        logits_of(&self.forward_tokens(tokens, start_pos, want)?)
    }

    fn truncate_cache(&mut self, len: usize) {
        self.cache.truncate(len);
    }
}

fn logits_of(logits: &Tensor) -> selfroute_core::Result<Logits> {
    let (rows, vocab) = logits.dims2().map_err(CandleError::from)?;
    let data = logits
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(CandleError::from)?;
    Ok(Logits { rows, vocab, data })
}

impl BatchBackend for CandleModel {
    fn batch_config(&self) -> &ModelConfig {
        &self.weights.config
    }

    fn new_sequence(&mut self) -> selfroute_core::Result<SeqId> {
        Ok(CandleModel::new_sequence(self))
    }

    fn drop_sequence(&mut self, seq: SeqId) {
        CandleModel::drop_sequence(self, seq);
    }

    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> selfroute_core::Result<()> {
        Ok(CandleModel::truncate_sequence(self, seq, len)?)
    }

    fn prefill(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        start_pos: usize,
    ) -> selfroute_core::Result<Logits> {
        logits_of(&self.forward_sequence(seq, tokens, start_pos, LogitsFor::Last)?)
    }

    fn decode(&mut self, steps: &[BatchStep]) -> selfroute_core::Result<Logits> {
        logits_of(&self.forward_batch(steps)?)
    }
}

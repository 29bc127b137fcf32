//! The decoder: embedding, then per layer RMSNorm -> GQA attention with RoPE and a KV cache ->
//! residual -> RMSNorm -> SwiGLU MLP -> residual, then the final norm and the output head.

use candle_core::{DType, Device, Tensor};
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
    cache: KvCache,
}

pub struct CandleModel {
    config: ModelConfig,
    device: Device,
    embedding: Embedding,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    rope: Rope,
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
                cache: KvCache::new(config.num_kv_heads, config.head_dim),
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
            config: config.clone(),
            device: device.clone(),
            embedding,
            layers,
            output_norm: dense(WeightKey::OutputNorm)?,
            output,
            rope,
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads())
                .build()
                .ok(),
        })
    }

    pub fn cached_len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.cache.len())
    }

    /// The forward pass over `tokens` at `start_pos..`; returns logits [rows, vocab].
    pub fn forward_tokens(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor> {
        match self.pool.take() {
            Some(pool) => {
                let result = pool.install(|| self.forward_in_pool(tokens, start_pos, want));
                self.pool = Some(pool);
                result
            }
            None => self.forward_in_pool(tokens, start_pos, want),
        }
    }

    fn forward_in_pool(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor> {
        let cached = self.cached_len();
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
        for layer in &mut self.layers {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = attention(c, &layer.attn, &mut layer.cache, &self.rope, &h, start_pos)?;
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

    pub fn clear_cache(&mut self) {
        self.truncate_cache(0);
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

impl Backend for CandleModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        let logits = self.forward_tokens(tokens, start_pos, want)?;
        let (rows, vocab) = logits.dims2().map_err(CandleError::from)?;
        let data = logits
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(CandleError::from)?;
        Ok(Logits { rows, vocab, data })
    }

    fn truncate_cache(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.cache.truncate(len);
        }
    }
}

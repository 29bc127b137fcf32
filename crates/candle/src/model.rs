//! The decoder: embedding, then per layer RMSNorm -> GQA attention with RoPE and a KV cache ->
//! residual -> RMSNorm -> SwiGLU MLP -> residual, then the final norm and the output head.

use candle_core::{DType, Device, Tensor};
use selfroute_core::{Backend, Logits, LogitsFor, ModelConfig, WeightKey, WeightSource};

use crate::error::{CandleError, Result};
use crate::kv_cache::KvCache;
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
                cache: KvCache::new(config.context_length),
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
            device,
        )?;
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            embedding,
            layers,
            output_norm: dense(WeightKey::OutputNorm)?,
            output,
            rope,
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
        let mask = causal_mask(seq, start_pos, &self.device)?;
        for layer in &mut self.layers {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = attention(
                c,
                &layer.attn,
                &mut layer.cache,
                &self.rope,
                &h,
                start_pos,
                mask.as_ref(),
            )?;
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

/// Additive mask [seq, start+seq]: query i sees keys 0..=start+i.
fn causal_mask(seq: usize, start: usize, device: &Device) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = start + seq;
    let data: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(data, (seq, total), device)?))
}

fn attention(
    c: &ModelConfig,
    attn: &Attention,
    cache: &mut KvCache,
    rope: &Rope,
    h: &Tensor,
    start: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let seq = h.dim(0)?;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let group = nh / nkv;
    let mut q = attn.q.forward(h)?;
    let mut k = attn.k.forward(h)?;
    let mut v = attn.v.forward(h)?;
    if let Some((bq, bk, bv)) = &attn.biases {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    // [seq, heads*hd] -> [1, heads, seq, hd]
    let q = q.reshape((1, seq, nh, hd))?.transpose(1, 2)?;
    let k = k.reshape((1, seq, nkv, hd))?.transpose(1, 2)?;
    let v = v.reshape((seq, nkv, hd))?.transpose(0, 1)?;
    let q = rope.apply(&q, start)?.squeeze(0)?;
    let k = rope.apply(&k, start)?.squeeze(0)?;
    let (k_all, v_all) = cache.append(&k, &v)?;
    let total = k_all.dim(1)?;
    // Heads that share a KV head are stacked on the row axis: [nkv, group*seq, hd].
    let q = q.reshape((nkv, group * seq, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = (q.matmul(&k_all.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((nkv, group, seq, total))?
            .broadcast_add(m)?
            .reshape((nkv, group * seq, total))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v_all.contiguous()?)?; // [nkv, group*seq, hd]
    let out = out
        .reshape((nh, seq, hd))?
        .transpose(0, 1)?
        .reshape((seq, nh * hd))?;
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

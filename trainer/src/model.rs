//! The trainable decoder: the same LLaMA/Qwen2 forward pass as `selfroute-candle`, on dense
//! candle `Var`s, written only with ops that have a backward pass.
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and `rope*` kernels have no backward and stop
//! gradients silently (candle issue #2168), so RMSNorm, RoPE and softmax are spelled out here.
//! Weights are held in the dtype asked for (f32 to train, f64 for finite-difference checks);
//! quantized files are dequantized once at load.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use selfroute_core::{ModelConfig, RopeLayout, WeightKey, WeightSource};

use crate::error::{Result, TrainError};
use crate::logsumexp::logsumexp_keepdim;

/// One decoder layer's variables (read directly by the no-grad rollout engine,
/// `crate::rollout::fast`, which shares their storage and so always sees the current weights).
pub(crate) struct LayerVars {
    pub(crate) attn_norm: Var,
    pub(crate) q: Var,
    pub(crate) k: Var,
    pub(crate) v: Var,
    pub(crate) o: Var,
    pub(crate) qkv_bias: Option<(Var, Var, Var)>,
    pub(crate) ffn_norm: Var,
    pub(crate) gate: Var,
    pub(crate) up: Var,
    pub(crate) down: Var,
}

pub struct TrainableModel {
    config: ModelConfig,
    varmap: VarMap,
    embed: Var,
    /// None when the head is tied to the embedding.
    output: Option<Var>,
    output_norm: Var,
    layers: Vec<LayerVars>,
    /// Set by [`Self::train_only`]: what training may move; None: every weight.
    restriction: Option<Restriction>,
    /// [context, head_dim / 2]
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
}

impl TrainableModel {
    /// Loads every weight of `weights` as a trainable variable of `dtype`. Variables are named by
    /// their Hugging Face names, which is also how checkpoints and the HF export store them.
    pub fn from_weights(
        config: &ModelConfig,
        weights: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate(&selfroute_core::SourceName("trainable model".into()))?;
        let varmap = VarMap::new();
        let load = |key: WeightKey| -> Result<Var> {
            let data = weights.get(key, config)?;
            let tensor = selfroute_candle::f32_tensor(&data, device)?.to_dtype(dtype)?;
            let var = Var::from_tensor(&tensor)?;
            varmap
                .data()
                .lock()
                .map_err(|_| TrainError::InvalidSettings("variable map poisoned".into()))?
                .insert(key.hf_name(), var.clone());
            Ok(var)
        };
        let embed = load(WeightKey::TokenEmbedding)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let qkv_bias = if config.architecture.has_qkv_bias() {
                Some((
                    load(WeightKey::AttnQBias(l))?,
                    load(WeightKey::AttnKBias(l))?,
                    load(WeightKey::AttnVBias(l))?,
                ))
            } else {
                None
            };
            layers.push(LayerVars {
                attn_norm: load(WeightKey::AttnNorm(l))?,
                q: load(WeightKey::AttnQ(l))?,
                k: load(WeightKey::AttnK(l))?,
                v: load(WeightKey::AttnV(l))?,
                o: load(WeightKey::AttnOutput(l))?,
                qkv_bias,
                ffn_norm: load(WeightKey::FfnNorm(l))?,
                gate: load(WeightKey::FfnGate(l))?,
                up: load(WeightKey::FfnUp(l))?,
                down: load(WeightKey::FfnDown(l))?,
            });
        }
        let output = if config.tie_embeddings {
            None
        } else {
            Some(load(WeightKey::Output)?)
        };
        let output_norm = load(WeightKey::OutputNorm)?;
        let (cos, sin) = rope_tables(config, dtype, device)?;
        Ok(Self {
            config: config.clone(),
            varmap,
            embed,
            output,
            output_norm,
            layers,
            restriction: None,
            cos,
            sin,
            dtype,
            device: device.clone(),
        })
    }

    /// Restricts training to the top `top_layers` blocks, the final norm and the head rows
    /// `head_rows` (the offload token's, so the policy gradient trains its logit): the rest of
    /// the model is a constant, backprop stops below the lowest trainable block, and an export
    /// keeps the untouched tensors in their source type. Call before creating an optimiser.
    pub fn train_only(&mut self, top_layers: usize, head_rows: &[u32]) -> Result<()> {
        let layers = self.config.num_layers;
        if top_layers == 0 || top_layers > layers {
            return Err(TrainError::InvalidSettings(format!(
                "--train-layers must be 1 to {layers} (the model's blocks); got {top_layers}"
            )));
        }
        let mut ids: Vec<u32> = head_rows.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let head = self.head().as_tensor();
        let (vocab, _) = head.dims2()?;
        let rows = ids
            .into_iter()
            .map(|id| -> Result<(u32, Var)> {
                if id as usize >= vocab {
                    return Err(TrainError::InvalidSettings(format!(
                        "head row {id} is outside the vocabulary of {vocab}"
                    )));
                }
                Ok((
                    id,
                    Var::from_tensor(&head.narrow(0, id as usize, 1)?.copy()?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.restriction = Some(Restriction {
            first_layer: layers - top_layers,
            rows,
        });
        Ok(())
    }

    /// The variables training moves, with their names (the optimiser's and the gradient's): all
    /// of [`Self::named_vars`], or under [`Self::train_only`] the top blocks', the final norm
    /// and one `head_row.ID` variable per trained head row.
    pub fn trainable_vars(&self) -> Result<Vec<(String, Var)>> {
        let all = self.named_vars()?;
        let Some(r) = &self.restriction else {
            return Ok(all);
        };
        let trained_layer = |name: &str| {
            name.strip_prefix("model.layers.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(l, _)| l.parse::<usize>().ok())
                .is_some_and(|l| l >= r.first_layer)
        };
        let norm = WeightKey::OutputNorm.hf_name();
        let mut vars: Vec<(String, Var)> = all
            .into_iter()
            .filter(|(name, _)| trained_layer(name) || *name == norm)
            .collect();
        vars.extend(
            r.rows
                .iter()
                .map(|(id, var)| (format!("head_row.{id}"), var.clone())),
        );
        Ok(vars)
    }

    /// Writes the trained head rows into the head, so everything that reads the head (the fast
    /// rollouts, checkpoints, export) sees them. The trainer calls it after every step.
    pub fn commit_head_rows(&self) -> Result<()> {
        if let Some(r) = &self.restriction {
            for (id, var) in &r.rows {
                self.set_head_row(*id, var.as_tensor())?;
            }
        }
        Ok(())
    }

    /// Reads the trained head rows back from the head (after a checkpoint set the weights).
    pub fn reload_head_rows(&self) -> Result<()> {
        if let Some(r) = &self.restriction {
            let head = self.head().as_tensor();
            for (id, var) in &r.rows {
                var.set(&head.narrow(0, *id as usize, 1)?)?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// All trainable variables (for the optimiser and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Variables with their names, sorted by name (a stable order for checkpoints and tests).
    pub fn named_vars(&self) -> Result<Vec<(String, Var)>> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| TrainError::InvalidSettings("variable map poisoned".into()))?;
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vars)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32), every sequence starting at
    /// position 0. Attention is causal, so right padding never changes the real positions.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, 0, None)
    }

    /// Logits for responses that share one prompt, the prompt computed once: `prompt` `[1, P]`,
    /// `responses` `[n, R]` (each response's tokens but its last, right-padded; R may be 0).
    /// Returns `[n, R + 1, vocab]`: position 0 is the prompt's last (it predicts each response's
    /// first token, the same logits for every row), position j + 1 is response token j. Each
    /// block's prompt keys and values serve every row; backprop sums their gradients over the
    /// rows, so the gradient is that of n separate (prompt + response) sequences.
    pub fn forward_shared_prompt(&self, prompt: &Tensor, responses: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (one, p) = prompt.dims2()?;
        let (n, r) = responses.dims2()?;
        if one != 1 || p == 0 || n == 0 {
            return Err(TrainError::InvalidSettings(format!(
                "a shared prompt is one non-empty sequence with at least one response (got \
                 prompt {:?}, responses {:?})",
                prompt.dims(),
                responses.dims()
            )));
        }
        if p + r > c.context_length {
            return Err(TrainError::InvalidSettings(format!(
                "{} tokens exceed the context of {}",
                p + r,
                c.context_length
            )));
        }
        let eps = f64::from(c.rms_norm_eps);
        let first_trained = self.first_trained_layer();
        let mut xp = self.embed_tokens(prompt)?;
        let mut xr = if r > 0 {
            Some(self.embed_tokens(responses)?)
        } else {
            None
        };
        let prompt_mask = if p > 1 {
            Some(causal_mask(p, 0, self.dtype, &self.device)?)
        } else {
            None
        };
        let (cos_p, sin_p) = (self.cos.narrow(0, 0, p)?, self.sin.narrow(0, 0, p)?);
        // The responses' mask and rotations (positions p..p + r); unused when r is 0.
        let span = r.max(1).min(c.context_length - p);
        let response_mask = causal_mask(span, p, self.dtype, &self.device)?;
        let (cos_r, sin_r) = (self.cos.narrow(0, p, span)?, self.sin.narrow(0, p, span)?);
        for (l, layer) in self.layers.iter().enumerate() {
            let hp = rms_norm(&xp, &layer.attn_norm, eps)?;
            let (qp, kp, vp) = self.project_qkv(layer, &hp, &cos_p, &sin_p)?;
            let ap = self.attend(layer, &qp, kp.clone(), vp.clone(), prompt_mask.as_ref())?;
            if let Some(x) = xr.take() {
                let hr = rms_norm(&x, &layer.attn_norm, eps)?;
                let (qr, kr, vr) = self.project_qkv(layer, &hr, &cos_r, &sin_r)?;
                let (_, kv, _, d) = kp.dims4()?;
                let k = Tensor::cat(&[kp.expand((n, kv, p, d))?, kr], 2)?;
                let v = Tensor::cat(&[vp.expand((n, kv, p, d))?, vr], 2)?;
                let ar = self.attend(layer, &qr, k, v, Some(&response_mask))?;
                let x = (x + ar)?;
                xr = Some(self.feed_forward(layer, x, eps)?);
            }
            xp = self.feed_forward(layer, (xp + ap)?, eps)?;
            if l + 1 == first_trained {
                // As in `hidden`: nothing below trains.
                xp = xp.detach();
                xr = xr.map(|x| x.detach());
            }
        }
        let last = rms_norm(&xp.narrow(1, p - 1, 1)?, &self.output_norm, eps)?;
        let last = self.head_logits(&last)?;
        let vocab = last.dim(D::Minus1)?;
        let last = last.expand((n, 1, vocab))?;
        match xr {
            Some(x) => {
                let rest = self.head_logits(&rms_norm(&x, &self.output_norm, eps)?)?;
                Ok(Tensor::cat(&[last, rest], 1)?)
            }
            None => Ok(last.contiguous()?),
        }
    }

    /// A block's feed-forward half with its residual: `x + down(silu(gate(h)) * up(h))`.
    fn feed_forward(&self, layer: &LayerVars, x: Tensor, eps: f64) -> Result<Tensor> {
        let h = rms_norm(&x, &layer.ffn_norm, eps)?;
        let gate = linear(&h, layer.gate.as_tensor())?.silu()?;
        let up = linear(&h, layer.up.as_tensor())?;
        Ok((x + linear(&(gate * up)?, layer.down.as_tensor())?)?)
    }

    /// Queries `[b, heads, t, d]` and keys and values `[b, kv_heads, t, d]` of `h`, rotated for
    /// the positions `cos`/`sin` cover.
    fn project_qkv(
        &self,
        layer: &LayerVars,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let (batch, seq, _) = h.dims3()?;
        let mut q = linear(h, layer.q.as_tensor())?;
        let mut k = linear(h, layer.k.as_tensor())?;
        let mut v = linear(h, layer.v.as_tensor())?;
        if let Some((bq, bk, bv)) = &layer.qkv_bias {
            q = q.broadcast_add(bq.as_tensor())?;
            k = k.broadcast_add(bk.as_tensor())?;
            v = v.broadcast_add(bv.as_tensor())?;
        }
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, seq, n, c.head_dim))?.transpose(1, 2)?)
        };
        let cos = cos.narrow(0, 0, seq)?;
        let sin = sin.narrow(0, 0, seq)?;
        let q = rope(&heads(q, c.num_heads)?, &cos, &sin, c.rope_layout)?;
        let k = rope(&heads(k, c.num_kv_heads)?, &cos, &sin, c.rope_layout)?;
        Ok((q, k, heads(v, c.num_kv_heads)?))
    }

    /// Scaled dot-product attention of `q` over `k`/`v` (grouped-query heads repeated), masked,
    /// then the output projection.
    fn attend(
        &self,
        layer: &LayerVars,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, _, seq, _) = q.dims4()?;
        let group = c.num_heads / c.num_kv_heads;
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs.matmul(&v.contiguous()?)?;
        let out = out
            .transpose(1, 2)?
            .reshape((batch, seq, c.num_heads * c.head_dim))?;
        linear(&out, layer.o.as_tensor())
    }

    /// Logits for `ids` `[batch, seq]` at positions `cache.len()..`, extending `cache`. For
    /// sampling: the cache holds detached keys and values, so no graph outlives a step.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let start = cache.len;
        let logits = self.run(ids, start, Some(cache))?.detach();
        cache.len = start + ids.dim(1)?;
        Ok(logits)
    }

    /// The final normed hidden states `[batch, seq, hidden]` (what the output head multiplies).
    pub fn final_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.hidden(ids, 0, None)
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn embedding(&self) -> &Var {
        &self.embed
    }

    /// The output head `[vocab, hidden]` (the embedding when tied).
    pub fn head(&self) -> &Var {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// The decoder layers, for the rollout engine.
    pub(crate) fn layers(&self) -> &[LayerVars] {
        &self.layers
    }

    /// The final RMSNorm weight, for the rollout engine.
    pub(crate) fn output_norm(&self) -> &Var {
        &self.output_norm
    }

    /// Appends one token to the vocabulary: a new embedding row (and output-head row when the
    /// head is untied) set to `row`. Returns its id. Call before creating an optimiser.
    pub fn add_token(&mut self, row: &Tensor) -> Result<u32> {
        let id = u32::try_from(self.config.vocab_size)
            .map_err(|_| TrainError::InvalidSettings("vocabulary too large".into()))?;
        let row = row
            .to_dtype(self.dtype)?
            .reshape((1, self.config.hidden_size))?;
        let grow = |var: &Var| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::cat(
                &[var.as_tensor(), &row],
                0,
            )?)?)
        };
        self.embed = grow(&self.embed)?;
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| TrainError::InvalidSettings("variable map poisoned".into()))?;
        data.insert(WeightKey::TokenEmbedding.hf_name(), self.embed.clone());
        if let Some(out) = &self.output {
            let grown = grow(out)?;
            data.insert(WeightKey::Output.hf_name(), grown.clone());
            self.output = Some(grown);
        }
        self.config.vocab_size += 1;
        Ok(id)
    }

    /// Replaces row `id` of the output head (the embedding when tied) with `row`.
    pub fn set_head_row(&self, id: u32, row: &Tensor) -> Result<()> {
        let head = self.head();
        let (vocab, hidden) = head.as_tensor().dims2()?;
        let id = id as usize;
        if id >= vocab {
            return Err(TrainError::InvalidSettings(format!(
                "token {id} is outside the vocabulary of {vocab}"
            )));
        }
        let row = row.to_dtype(self.dtype)?.reshape((1, hidden))?;
        let updated = head
            .as_tensor()
            .slice_assign(&[id..id + 1, 0..hidden], &row)?;
        head.set(&updated)?;
        Ok(())
    }

    fn run(&self, ids: &Tensor, start: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden(ids, start, cache)?;
        self.head_logits(&x)
    }

    /// The lowest block training moves (0 unless [`Self::train_only`] restricted it).
    fn first_trained_layer(&self) -> usize {
        self.restriction.as_ref().map_or(0, |r| r.first_layer)
    }

    /// The embeddings `[batch, seq, hidden]` of `ids` `[batch, seq]`; a constant when training is
    /// restricted (the offload row trains through the head only).
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let embed = match &self.restriction {
            Some(_) => self.embed.as_tensor().detach(),
            None => self.embed.as_tensor().clone(),
        };
        Ok(embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            batch,
            seq,
            self.config.hidden_size,
        ))?)
    }

    /// The output head's logits; under [`Self::train_only`] the head is a constant except its
    /// trained rows, whose logits are computed from their own variables and spliced in.
    fn head_logits(&self, x: &Tensor) -> Result<Tensor> {
        let Some(r) = &self.restriction else {
            return linear(x, self.head().as_tensor());
        };
        let base = linear(x, &self.head().as_tensor().detach())?;
        if r.rows.is_empty() {
            return Ok(base);
        }
        let vocab = base.dim(D::Minus1)?;
        let mut pieces = Vec::with_capacity(2 * r.rows.len() + 1);
        let mut next = 0usize;
        for (id, var) in &r.rows {
            let id = *id as usize;
            if id > next {
                pieces.push(base.narrow(D::Minus1, next, id - next)?);
            }
            pieces.push(linear(x, var.as_tensor())?);
            next = id + 1;
        }
        if next < vocab {
            pieces.push(base.narrow(D::Minus1, next, vocab - next)?);
        }
        Ok(Tensor::cat(&pieces, D::Minus1)?)
    }

    fn hidden(
        &self,
        ids: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let seq = ids.dim(1)?;
        if start + seq > c.context_length {
            return Err(TrainError::InvalidSettings(format!(
                "{} tokens exceed the context of {}",
                start + seq,
                c.context_length
            )));
        }
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.is_empty()
        {
            cache.layers = vec![None; c.num_layers];
        }
        let eps = f64::from(c.rms_norm_eps);
        let first_trained = self.first_trained_layer();
        let mut x = self.embed_tokens(ids)?;
        let mask = if seq > 1 {
            Some(causal_mask(seq, start, self.dtype, &self.device)?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let past = cache.as_deref_mut().and_then(|c| c.layers.get_mut(l));
            let a = self.attention(layer, &h, mask.as_ref(), &cos, &sin, past)?;
            x = self.feed_forward(layer, (x + a)?, eps)?;
            if l + 1 == first_trained {
                // Below here nothing trains: backprop stops, and the frozen blocks' graph
                // (their activations) is freed now rather than at the end of the pass.
                x = x.detach();
            }
        }
        rms_norm(&x, &self.output_norm, eps)
    }

    fn attention(
        &self,
        layer: &LayerVars,
        h: &Tensor,
        mask: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(layer, h, cos, sin)?;
        let (k, v) = match past {
            None => (k, v),
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (
                        Tensor::cat(&[&pk, &k.detach()], 2)?,
                        Tensor::cat(&[&pv, &v.detach()], 2)?,
                    ),
                    None => (k.detach(), v.detach()),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        self.attend(layer, &q, k, v, mask)
    }
}

/// `x @ w^T` for a weight stored [out, in], as files store them. The leading dimensions are
/// folded into rows first: a batched product against a broadcast weight would make backprop
/// build one weight-sized gradient per batch row and then sum them (for the 49152-wide head,
/// ~0.9 GB per 8-sequence pass); one 2-D product gives the weight's gradient directly.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w_t = w.t()?;
    let dims = x.dims();
    if dims.len() <= 2 {
        return Ok(x.matmul(&w_t)?);
    }
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let mut out_shape = dims[..dims.len() - 1].to_vec();
    out_shape.push(w.dim(0)?);
    Ok(x.reshape((rows, inner))?.matmul(&w_t)?.reshape(out_shape)?)
}

/// x / sqrt(mean(x^2) + eps) * w, from differentiable ops.
pub(crate) fn rms_norm(x: &Tensor, w: &Var, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w.as_tensor())?)
}

/// Rotates `x` `[batch, heads, seq, head_dim]` in the layout the weights need (see
/// `selfroute_core::RopeLayout`).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let half = d / 2;
    match layout {
        RopeLayout::Half => {
            let a = x.narrow(D::Minus1, 0, half)?;
            let bb = x.narrow(D::Minus1, half, half)?;
            let lo = (a.broadcast_mul(cos)? - bb.broadcast_mul(sin)?)?;
            let hi = (a.broadcast_mul(sin)? + bb.broadcast_mul(cos)?)?;
            Ok(Tensor::cat(&[lo, hi], D::Minus1)?)
        }
        RopeLayout::Interleaved => {
            let pairs = x.reshape((b, h, t, half, 2))?;
            let a = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
            let bb = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
            let first = (a.broadcast_mul(cos)? - bb.broadcast_mul(sin)?)?;
            let second = (a.broadcast_mul(sin)? + bb.broadcast_mul(cos)?)?;
            Ok(Tensor::stack(&[first, second], D::Minus1)?.reshape((b, h, t, d))?)
        }
    }
}

/// Key/value heads repeated for grouped-query attention: `[b, kv, t, d]` -> `[b, kv*group, t, d]`,
/// each kv head serving `group` consecutive query heads.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, group, t, d))?
        .reshape((b, kv * group, t, d))?)
}

fn rope_tables(c: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let (cos, sin): (Vec<f64>, Vec<f64>) =
        selfroute_core::rope::angles(c.head_dim, c.rope_theta, c.context_length)
            .map(|a| (a.cos(), a.sin()))
            .unzip();
    let table = |v: Vec<f64>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, (c.context_length, half), device)?.to_dtype(dtype)?)
    };
    Ok((table(cos)?, table(sin)?))
}

/// `[seq, start + seq]`: new token i (at position start + i) sees positions up to its own.
fn causal_mask(seq: usize, start: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = start + seq;
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (seq, total), device)?.to_dtype(dtype)?)
}

/// What [`TrainableModel::train_only`] leaves trainable.
#[derive(Debug)]
struct Restriction {
    /// The lowest trained block; those below are constants.
    first_layer: usize,
    /// Trained head rows, ascending by id, each its own `[1, hidden]` variable.
    rows: Vec<(u32, Var)>,
}

/// Keys and values of earlier positions, per layer, `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same cache for `n` copies of a batch-1 sequence (a prompt shared by a group).
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|slot| {
                slot.as_ref()
                    .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                        Ok((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: self.len,
        })
    }
}

/// log p(target) at every position: `logits [b, t, vocab]`, `targets [b, t]` (u32) -> `[b, t]`.
pub fn token_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // log softmax at the target: its logit less the row's log-sum-exp, without a vocabulary-wide
    // log-softmax in the graph (see `logsumexp`).
    let picked = logits.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    Ok((picked - logsumexp_keepdim(logits)?)?.squeeze(D::Minus1)?)
}

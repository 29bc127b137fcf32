//! The whole decoder on the GPU, driven by the same `ModelConfig` and weight source as the CPU
//! engine: embedding, then per layer RMSNorm -> QKV -> RoPE + KV store -> attention -> output
//! projection added to the residual -> RMSNorm -> gate|up -> SwiGLU -> down added to the residual,
//! then the final norm, the output head and (for a decode step) the sampler.
//!
//! Every buffer and bind group is made at load. A forward call writes the token ids and one small
//! `Step` uniform, records all dispatches into one compute pass, and submits once per chunk of up
//! to `chunk` tokens; a decode step that picks on the device reads back four bytes.

use selfroute_core::{Backend, Logits, LogitsFor, ModelConfig, TokenPick, WeightKey, WeightSource};
use web_time::Instant;

use crate::attention::{AttentionBuffers, AttentionKernel, BoundAttention};
use crate::context::GpuContext;
use crate::embedding::{BoundEmbedding, EmbeddingKernel};
use crate::error::{GpuError, Result};
use crate::kernel::Step;
use crate::linear::{BoundLinear, LinearKernels, MAX_STAGED, Output, Prologue};
use crate::quant::GpuMatrix;
use crate::rmsnorm::{BoundRmsNorm, RmsNormKernel};
use crate::rope::{BoundRope, RopeBuffers, RopeKernel, rope_table};
use crate::sample::{GpuSampler, token_from_bytes};
use crate::swiglu::{BoundSwiGlu, SwiGluKernel};

/// Engine settings a caller may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// Positions the KV cache holds; the model's context length if smaller. Memory is
    /// 2 x layers x positions x kv_dim x 4 bytes (94 MiB for SmolLM2-135M at 2048).
    pub max_context: usize,
    /// Prompt tokens per submission during prefill; bounds the activation and score buffers.
    pub chunk: usize,
    /// Fuse the norms and SwiGLU into the products that read them (where widths allow). Off
    /// only to test the separate kernels on whole models.
    pub fuse_prologues: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            max_context: 4096,
            chunk: 64,
            fuse_prologues: true,
        }
    }
}

/// Where the time of the last forward call went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepProfile {
    /// Tokens the call ran.
    pub tokens: usize,
    /// Compute dispatches recorded.
    pub dispatches: usize,
    /// Queue submissions made.
    pub submissions: usize,
    /// Host time to write inputs, record and submit.
    pub encode_ms: f64,
    /// Time from submission until the GPU finished (native; in the browser it is inside
    /// `readback_ms`).
    pub gpu_ms: f64,
    /// Time to map and copy the results to the host.
    pub readback_ms: f64,
    /// Bytes read back.
    pub readback_bytes: u64,
}

struct Kernels {
    linear: LinearKernels,
    embedding: EmbeddingKernel,
    rmsnorm: RmsNormKernel,
    rope: RopeKernel,
    attention: AttentionKernel,
    swiglu: SwiGluKernel,
}

/// One decoder layer's dispatches. Where the widths allow (see `Prologue`), the norms are fused
/// into the QKV and gate|up products and SwiGLU into the down product, and the separate kernels
/// are not bound.
struct Layer {
    attn_norm: Option<BoundRmsNorm>,
    qkv: Vec<BoundLinear>,
    rope: BoundRope,
    attention: BoundAttention,
    o: BoundLinear,
    ffn_norm: Option<BoundRmsNorm>,
    gate_up: Vec<BoundLinear>,
    swiglu: Option<BoundSwiGlu>,
    down: BoundLinear,
}

/// Activations for up to `chunk` tokens, shared by all layers.
struct Activations {
    ids: wgpu::Buffer,
    /// The residual stream [chunk][hidden].
    x: wgpu::Buffer,
    /// Normed rows [chunk][hidden].
    h: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    gate_up: wgpu::Buffer,
    act: wgpu::Buffer,
    scores: wgpu::Buffer,
    logits: wgpu::Buffer,
}

pub struct GpuModel {
    ctx: GpuContext,
    /// The file's description with `context_length` capped to the cache capacity.
    config: ModelConfig,
    kernels: Kernels,
    step: wgpu::Buffer,
    act: Activations,
    embedding: BoundEmbedding,
    layers: Vec<Layer>,
    final_norm: Option<BoundRmsNorm>,
    head: BoundLinear,
    sampler: GpuSampler,
    logits_readback: wgpu::Buffer,
    token_readback: wgpu::Buffer,
    chunk: usize,
    cached: usize,
    weight_bytes: u64,
    profile: StepProfile,
}

impl GpuModel {
    /// Uploads the weights (quantized ones stay quantized) and builds every pipeline, buffer and
    /// bind group. Errors if the model needs more than the device allows.
    pub async fn load(
        ctx: GpuContext,
        config: &ModelConfig,
        weights: &dyn WeightSource,
        options: &GpuOptions,
    ) -> Result<Self> {
        // Shader and pipeline errors surface here rather than at the first answer (in a browser
        // they arrive asynchronously), so a caller can still choose another engine.
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let capacity = config.context_length.min(options.max_context).max(1);
        let chunk = options.chunk.clamp(1, capacity);
        let c = config;
        let get = |key: WeightKey| {
            weights
                .get(key, config)
                .map_err(|e| GpuError::Invalid(format!("{}: {e}", key.gguf_name())))
        };
        let mut weight_bytes = 0u64;
        let mut matrix = |parts: &[WeightKey], label: &str| -> Result<Vec<GpuMatrix>> {
            let tensors = parts.iter().map(|&k| get(k)).collect::<Result<Vec<_>>>()?;
            let out = if GpuMatrix::can_stack(&tensors) {
                vec![GpuMatrix::upload_rows(&ctx, &tensors, label)?]
            } else {
                tensors
                    .iter()
                    .map(|t| GpuMatrix::upload(&ctx, t))
                    .collect::<Result<Vec<_>>>()?
            };
            weight_bytes += out.iter().map(|m| m.buffer.size()).sum::<u64>();
            Ok(out)
        };
        let f32_buffer = |key: WeightKey| -> Result<wgpu::Buffer> {
            let td = get(key)?;
            let values = td.to_f32_vec().ok_or_else(|| {
                GpuError::Unsupported(format!("{}: {} norm weights", td.name, td.dtype))
            })?;
            ctx.storage_buffer(&td.name, bytemuck::cast_slice(&values))
        };

        let kernels = Kernels {
            linear: LinearKernels::new(&ctx),
            embedding: EmbeddingKernel::new(&ctx),
            rmsnorm: RmsNormKernel::new(&ctx),
            rope: RopeKernel::new(&ctx),
            attention: AttentionKernel::new(&ctx),
            swiglu: SwiGluKernel::new(&ctx),
        };
        let step = ctx.uniform("step", &Step::default());
        let f = |n: usize| (chunk * n * 4) as u64;
        let qkv_width = c.q_dim() + 2 * c.kv_dim();
        let act = Activations {
            ids: ctx.scratch_buffer("ids", f(1))?,
            x: ctx.scratch_buffer("x", f(c.hidden_size))?,
            h: ctx.scratch_buffer("h", f(c.hidden_size))?,
            qkv: ctx.scratch_buffer("qkv", f(qkv_width))?,
            attn: ctx.scratch_buffer("attn", f(c.q_dim()))?,
            gate_up: ctx.scratch_buffer("gate_up", f(2 * c.intermediate_size))?,
            act: ctx.scratch_buffer("act", f(c.intermediate_size))?,
            scores: ctx.scratch_buffer("scores", f(c.num_heads * capacity))?,
            logits: ctx.scratch_buffer("logits", f(c.vocab_size))?,
        };
        let table = ctx.storage_buffer(
            "rope table",
            bytemuck::cast_slice(&rope_table(c.head_dim, c.rope_theta, capacity)),
        )?;

        let embed_matrix = matrix(&[WeightKey::TokenEmbedding], "token_embd")?;
        let [embed_matrix] = <[GpuMatrix; 1]>::try_from(embed_matrix)
            .map_err(|_| GpuError::Invalid("token embedding".into()))?;
        let embedding = kernels
            .embedding
            .bind(&ctx, &step, &embed_matrix, &act.ids, &act.x);

        let fuse_norm = options.fuse_prologues && c.hidden_size <= MAX_STAGED;
        let fuse_swiglu = options.fuse_prologues && c.intermediate_size <= MAX_STAGED;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let k_cache = ctx.scratch_buffer("k cache", (capacity * c.kv_dim() * 4) as u64)?;
            let v_cache = ctx.scratch_buffer("v cache", (capacity * c.kv_dim() * 4) as u64)?;
            let qkv_bias = if c.architecture.has_qkv_bias() {
                let mut bias = Vec::with_capacity(qkv_width);
                for key in [
                    WeightKey::AttnQBias(l),
                    WeightKey::AttnKBias(l),
                    WeightKey::AttnVBias(l),
                ] {
                    let td = get(key)?;
                    bias.extend(td.to_f32_vec().ok_or_else(|| {
                        GpuError::Unsupported(format!("{}: {} biases", td.name, td.dtype))
                    })?);
                }
                Some(ctx.storage_buffer("qkv bias", bytemuck::cast_slice(&bias))?)
            } else {
                None
            };
            let attn_norm_w = f32_buffer(WeightKey::AttnNorm(l))?;
            let ffn_norm_w = f32_buffer(WeightKey::FfnNorm(l))?;
            let eps = c.rms_norm_eps;
            // Fused: the product reads the residual stream and normalizes it itself.
            let unfused_norm = |w: &wgpu::Buffer| {
                (!fuse_norm).then(|| {
                    kernels
                        .rmsnorm
                        .bind(&ctx, &step, &act.x, w, &act.h, c.hidden_size, eps, false)
                })
            };
            let fused_norm = |weight| {
                if fuse_norm {
                    Prologue::RmsNorm { weight, eps }
                } else {
                    Prologue::None
                }
            };
            let normed_input = if fuse_norm { &act.x } else { &act.h };
            let (attn_norm, prologue) = (unfused_norm(&attn_norm_w), fused_norm(&attn_norm_w));
            let qkv_m = matrix(
                &[
                    WeightKey::AttnQ(l),
                    WeightKey::AttnK(l),
                    WeightKey::AttnV(l),
                ],
                "qkv",
            )?;
            let qkv = bind_row_blocks(
                &kernels.linear,
                &ctx,
                &step,
                &qkv_m,
                normed_input,
                &act.qkv,
                prologue,
            )?;
            let (ffn_norm, prologue) = (unfused_norm(&ffn_norm_w), fused_norm(&ffn_norm_w));
            let gu_m = matrix(&[WeightKey::FfnGate(l), WeightKey::FfnUp(l)], "gate_up")?;
            let gate_up = bind_row_blocks(
                &kernels.linear,
                &ctx,
                &step,
                &gu_m,
                normed_input,
                &act.gate_up,
                prologue,
            )?;
            let residual = Output {
                accumulate: true,
                ..Output::plain(c.hidden_size)
            };
            let o_m = matrix(&[WeightKey::AttnOutput(l)], "attn_output")?;
            let o = kernels
                .linear
                .bind(&ctx, &step, single(&o_m)?, &act.attn, &act.x, residual)?;
            let down_m = matrix(&[WeightKey::FfnDown(l)], "ffn_down")?;
            let (swiglu, down) = if fuse_swiglu {
                let down = kernels.linear.bind_with(
                    &ctx,
                    &step,
                    single(&down_m)?,
                    &act.gate_up,
                    &act.x,
                    residual,
                    Prologue::SwiGlu,
                )?;
                (None, down)
            } else {
                let swiglu =
                    kernels
                        .swiglu
                        .bind(&ctx, &step, &act.gate_up, &act.act, c.intermediate_size);
                let down = kernels.linear.bind(
                    &ctx,
                    &step,
                    single(&down_m)?,
                    &act.act,
                    &act.x,
                    residual,
                )?;
                (Some(swiglu), down)
            };
            layers.push(Layer {
                attn_norm,
                qkv,
                rope: kernels.rope.bind(
                    &ctx,
                    c,
                    &RopeBuffers {
                        step: &step,
                        qkv: &act.qkv,
                        bias: qkv_bias.as_ref(),
                        table: &table,
                        k_cache: &k_cache,
                        v_cache: &v_cache,
                    },
                )?,
                attention: kernels.attention.bind(
                    &ctx,
                    c,
                    capacity,
                    &AttentionBuffers {
                        step: &step,
                        qkv: &act.qkv,
                        k_cache: &k_cache,
                        v_cache: &v_cache,
                        scores: &act.scores,
                        out: &act.attn,
                    },
                )?,
                o,
                ffn_norm,
                gate_up,
                swiglu,
                down,
            });
        }

        let output_norm_w = f32_buffer(WeightKey::OutputNorm)?;
        // The head computes only the rows whose logits are wanted, from `Step::out_row0` on.
        let head_out = Output {
            out_rows_only: true,
            ..Output::plain(c.vocab_size)
        };
        let (final_norm, head_input, prologue) = if fuse_norm {
            let prologue = Prologue::RmsNorm {
                weight: &output_norm_w,
                eps: c.rms_norm_eps,
            };
            (None, &act.x, prologue)
        } else {
            let bound = kernels.rmsnorm.bind(
                &ctx,
                &step,
                &act.x,
                &output_norm_w,
                &act.h,
                c.hidden_size,
                c.rms_norm_eps,
                true,
            );
            (Some(bound), &act.h, Prologue::None)
        };
        let head_matrix = if c.tie_embeddings {
            None
        } else {
            Some(matrix(&[WeightKey::Output], "output")?)
        };
        let head_weights = match &head_matrix {
            Some(m) => single(m)?,
            None => &embed_matrix,
        };
        let head = kernels.linear.bind_with(
            &ctx,
            &step,
            head_weights,
            head_input,
            &act.logits,
            head_out,
            prologue,
        )?;
        let sampler = GpuSampler::new(&ctx, &act.logits, c.vocab_size)?;
        let logits_readback = ctx.readback_buffer("logits readback", f(c.vocab_size));
        let token_readback = ctx.readback_buffer("token readback", 4);
        if let Some(error) = validation.pop().await {
            return Err(GpuError::Validation(error.to_string()));
        }
        #[cfg(not(target_arch = "wasm32"))]
        ctx.wait()?;
        ctx.check()?;
        let mut config = config.clone();
        config.context_length = capacity;
        Ok(Self {
            ctx,
            config,
            kernels,
            step,
            act,
            embedding,
            layers,
            final_norm,
            head,
            sampler,
            logits_readback,
            token_readback,
            chunk,
            cached: 0,
            weight_bytes,
            profile: StepProfile::default(),
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_name
    }

    /// Bytes of weights resident on the GPU (all read once per decode step).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Where the time of the last forward call went.
    pub fn profile(&self) -> StepProfile {
        self.profile
    }

    /// Positions currently in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.cached
    }

    /// Destroys the device now rather than when the model is dropped (a page unloading the model
    /// frees GPU memory at once). Every later call fails as a lost device would, which is also
    /// how tests exercise device loss.
    pub fn destroy_device(&self) {
        self.ctx.device.destroy();
    }

    fn check_call(&self, tokens: &[u32], start_pos: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(GpuError::Invalid("no tokens to run".into()));
        }
        if start_pos != self.cached {
            return Err(GpuError::Invalid(format!(
                "position {start_pos} does not follow the {} cached positions",
                self.cached
            )));
        }
        let end = start_pos + tokens.len();
        if end > self.config.context_length {
            return Err(GpuError::Invalid(format!(
                "positions up to {end} exceed the context of {}",
                self.config.context_length
            )));
        }
        if let Some(bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(GpuError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// Records and submits one chunk. `want`: which rows get logits (None: no logits, a chunk
    /// before the last); `pick`: run the sampler on the last row; `readback_bytes` of the result
    /// (the id, or the logits) are copied to the matching readback buffer.
    fn submit_chunk(
        &mut self,
        tokens: &[u32],
        start: usize,
        want: Option<LogitsFor>,
        pick: bool,
        readback_bytes: u64,
    ) -> usize {
        let n = tokens.len();
        let out_rows = match want {
            Some(LogitsFor::All) => n,
            Some(LogitsFor::Last) => 1,
            None => 0,
        };
        let step = Step {
            n: n as u32,
            start: start as u32,
            out_row0: (n - out_rows.max(1)) as u32,
            out_rows: out_rows as u32,
        };
        let queue = &self.ctx.queue;
        queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        queue.write_buffer(&self.act.ids, 0, bytemuck::cast_slice(tokens));
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        let mut dispatches = 0;
        {
            let k = &self.kernels;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            let p = &mut pass;
            k.embedding.encode(p, &self.embedding, n);
            dispatches += 1;
            for layer in &self.layers {
                if let Some(norm) = &layer.attn_norm {
                    k.rmsnorm.encode(p, norm, n);
                    dispatches += 1;
                }
                for b in &layer.qkv {
                    k.linear.encode(p, b, n);
                }
                k.rope.encode(p, &layer.rope, n);
                k.attention.encode(p, &layer.attention, n);
                k.linear.encode(p, &layer.o, n);
                if let Some(norm) = &layer.ffn_norm {
                    k.rmsnorm.encode(p, norm, n);
                    dispatches += 1;
                }
                for b in &layer.gate_up {
                    k.linear.encode(p, b, n);
                }
                if let Some(swiglu) = &layer.swiglu {
                    k.swiglu.encode(p, swiglu, n);
                    dispatches += 1;
                }
                k.linear.encode(p, &layer.down, n);
                dispatches += 4 + layer.qkv.len() + layer.gate_up.len();
            }
            if out_rows > 0 {
                if let Some(norm) = &self.final_norm {
                    k.rmsnorm.encode(p, norm, out_rows);
                    dispatches += 1;
                }
                k.linear.encode(p, &self.head, out_rows);
                dispatches += 1;
            }
            if pick {
                self.sampler.encode(p);
                dispatches += self.sampler.dispatches();
            }
        }
        if readback_bytes > 0 {
            let (source, target) = if pick {
                (self.sampler.token_buffer(), &self.token_readback)
            } else {
                (&self.act.logits, &self.logits_readback)
            };
            encoder.copy_buffer_to_buffer(source, 0, target, 0, readback_bytes);
        }
        self.ctx.queue.submit([encoder.finish()]);
        dispatches
    }

    /// Runs `tokens` in chunks; the last chunk gets logits (and the sampler when `pick`), and its
    /// result is copied into the matching readback buffer. Returns the bytes to read back.
    async fn run(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
        pick: bool,
    ) -> Result<Vec<u8>> {
        self.check_call(tokens, start_pos)?;
        self.ctx.check()?;
        let started = Instant::now();
        let mut profile = StepProfile {
            tokens: tokens.len(),
            ..StepProfile::default()
        };
        let last = tokens.len().div_ceil(self.chunk) - 1;
        let mut pos = start_pos;
        let mut result_bytes = 0;
        for (i, chunk) in tokens.chunks(self.chunk).enumerate() {
            if i < last {
                profile.dispatches += self.submit_chunk(chunk, pos, None, false, 0);
            } else {
                let rows = if want == LogitsFor::All {
                    chunk.len()
                } else {
                    1
                };
                result_bytes = if pick {
                    4
                } else {
                    (rows * self.config.vocab_size * 4) as u64
                };
                profile.dispatches += self.submit_chunk(chunk, pos, Some(want), pick, result_bytes);
            }
            profile.submissions += 1;
            pos += chunk.len();
            // The cache holds what was submitted; a failure below forgets it all.
            self.cached = pos;
        }
        profile.encode_ms = started.elapsed().as_secs_f64() * 1e3;
        let waited = Instant::now();
        #[cfg(not(target_arch = "wasm32"))]
        self.ctx.wait()?;
        profile.gpu_ms = waited.elapsed().as_secs_f64() * 1e3;
        let read = Instant::now();
        let buffer = if pick {
            &self.token_readback
        } else {
            &self.logits_readback
        };
        let bytes = self.ctx.read_bytes(buffer, result_bytes).await;
        profile.readback_ms = read.elapsed().as_secs_f64() * 1e3;
        profile.readback_bytes = result_bytes;
        self.profile = profile;
        bytes.inspect_err(|_| self.cached = 0)
    }

    /// The forward pass; logits for the last row or all rows of the last chunk of `tokens`
    /// (`LogitsFor::All` expects `tokens` to fit one chunk).
    pub async fn forward_logits(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> Result<Logits> {
        if want == LogitsFor::All && tokens.len() > self.chunk {
            return Err(GpuError::Invalid(format!(
                "logits for all of {} tokens; at most {} per call",
                tokens.len(),
                self.chunk
            )));
        }
        let bytes = self.run(tokens, start_pos, want, false).await?;
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let vocab = self.config.vocab_size;
        Ok(Logits {
            rows: data.len() / vocab,
            vocab,
            data,
        })
    }

    /// The forward pass, then the next token picked on the GPU; reads back one id.
    pub async fn forward_pick_token(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> Result<u32> {
        self.sampler.prepare(&self.ctx.queue, pick)?;
        let bytes = self.run(tokens, start_pos, LogitsFor::Last, true).await?;
        token_from_bytes(&bytes, self.config.vocab_size)
    }
}

/// Binds matrices stacked by rows into consecutive columns of one output buffer.
fn bind_row_blocks(
    linear: &LinearKernels,
    ctx: &GpuContext,
    step: &wgpu::Buffer,
    parts: &[GpuMatrix],
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    prologue: Prologue<'_>,
) -> Result<Vec<BoundLinear>> {
    let stride: usize = parts.iter().map(|m| m.rows).sum();
    let mut offset = 0;
    parts
        .iter()
        .map(|m| {
            let output = Output {
                stride,
                offset,
                accumulate: false,
                out_rows_only: false,
            };
            offset += m.rows;
            linear.bind_with(ctx, step, m, x, y, output, prologue)
        })
        .collect()
}

fn single(m: &[GpuMatrix]) -> Result<&GpuMatrix> {
    match m {
        [one] => Ok(one),
        _ => Err(GpuError::Invalid("expected one matrix".into())),
    }
}

impl Backend for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        if want == LogitsFor::All && tokens.len() > self.chunk {
            // All rows of a long input: one chunk at a time, concatenated.
            let mut data = Vec::with_capacity(tokens.len() * self.config.vocab_size);
            let mut pos = start_pos;
            for chunk in tokens.chunks(self.chunk) {
                data.extend(self.forward_logits(chunk, pos, want).await?.data);
                pos += chunk.len();
            }
            return Ok(Logits {
                rows: tokens.len(),
                vocab: self.config.vocab_size,
                data,
            });
        }
        Ok(self.forward_logits(tokens, start_pos, want).await?)
    }

    async fn forward_pick(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> selfroute_core::Result<u32> {
        Ok(self.forward_pick_token(tokens, start_pos, pick).await?)
    }

    fn picks_on_device(&self) -> bool {
        true
    }

    fn truncate_cache(&mut self, len: usize) {
        // Positions past `len` are overwritten by the next call.
        self.cached = self.cached.min(len);
    }
}

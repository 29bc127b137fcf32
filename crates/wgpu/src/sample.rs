//! Token sampling on the GPU (`kernels/sample.wgsl`), so a decode step reads back one token id
//! instead of the whole row of logits.
//!
//! The pick is the CPU [`selfroute_core::Sampler`]'s for the same [`TokenPick`]: the logit bias
//! first, then greedy (the first maximum) or temperature, top-k, top-p and the draw with the
//! pick's `uniform`, which the CPU sampler takes from the same seeded RNG, so a generation is the
//! same token for token on either path. Masses are summed exactly (fixed point) and exp is
//! evaluated to within a hundredth of an ulp, so the two paths differ only when the GPU's f32
//! exp and the CPU's round a mass differently and a cut or the draw falls on that last bit; and
//! on ties (equal scaled logits), which the CPU orders arbitrarily and the GPU by index (a top-k
//! cut keeps every token tied with the k-th).
//!
//! Everything is made once in [`GpuSampler::new`]; a pick writes 48 bytes of parameters (plus the
//! bias list) and records two dispatches (greedy) or three into the caller's compute pass.

use std::sync::atomic::{AtomicBool, Ordering};

use selfroute_core::TokenPick;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::kernel::{self, Slot};

/// Most logit-bias entries one pick takes (the bias buffer is sized once, at load).
pub const MAX_BIAS: usize = 64;

/// Logits per `sample_keys` workgroup (kernels/sample.wgsl `CHUNK`).
const CHUNK: usize = 1024;

/// Masses are summed in 64-bit fixed point with 40 fraction bits, so the total of up to `vocab`
/// masses of at most 1 must stay below 2^24.
const MAX_VOCAB: usize = (1 << 24) - 1;

/// Mirrors `Params` in kernels/sample.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    n_bias: u32,
    sampling: u32,
    top_k: u32,
    inv_t: f32,
    top_p: f32,
    groups: u32,
    _pad: u32,
    /// top_p and the draw as 0.64 fixed point, (high word, low word).
    top_p_fixed: [u32; 2],
    draw_fixed: [u32; 2],
}

/// `x` in [0, 1) as 0.64 fixed point: exact for an f32 or an f64 (a power-of-two scale).
fn fraction_bits(x: f64) -> [u32; 2] {
    let bits = (x * 2f64.powi(64)) as u64;
    [(bits >> 32) as u32, bits as u32]
}

/// `exp2_table` in kernels/sample.wgsl: 2^(j / 64) as f32 hi + lo pairs, two per row.
fn exp2_table() -> [[u32; 4]; 32] {
    let split = |j: usize| {
        let v = (j as f64 / 64.0).exp2();
        let hi = v as f32;
        [hi.to_bits(), ((v - f64::from(hi)) as f32).to_bits()]
    };
    std::array::from_fn(|row| {
        let [a, b] = split(2 * row);
        let [c, d] = split(2 * row + 1);
        [a, b, c, d]
    })
}

/// Mirrors `Bias` in kernels/sample.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BiasEntry {
    id: u32,
    value: f32,
}

pub struct GpuSampler {
    vocab: usize,
    groups: u32,
    keys_pipeline: wgpu::ComputePipeline,
    weights_pipeline: wgpu::ComputePipeline,
    select_pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    bias: wgpu::Buffer,
    token: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    /// Whether the last prepared pick samples (three dispatches) rather than takes the maximum
    /// (two). Atomic only so `prepare` can take `&self` and the sampler stays `Sync`.
    sampling: AtomicBool,
    // Scratch the kernels share through the bind group; held so it lives as long as the sampler.
    _keys: wgpu::Buffer,
    _weights: wgpu::Buffer,
    _partials: wgpu::Buffer,
    _table: wgpu::Buffer,
}

impl GpuSampler {
    /// Binds `logits`, a storage buffer whose first `vocab` f32s are the row to pick from (the
    /// model's output head writes it).
    pub fn new(ctx: &GpuContext, logits: &wgpu::Buffer, vocab: usize) -> Result<Self> {
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(GpuError::Invalid(format!(
                "a vocabulary of {vocab} tokens; the GPU sampler takes 1 to {MAX_VOCAB}"
            )));
        }
        let bytes = (vocab * 4) as u64;
        if logits.size() < bytes {
            return Err(GpuError::Invalid(format!(
                "the logits buffer holds {} bytes, less than {vocab} f32s",
                logits.size()
            )));
        }
        if !logits.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(GpuError::Invalid(
                "the logits buffer is not a storage buffer".into(),
            ));
        }
        let groups = kernel::groups_for(vocab, CHUNK);
        let layout = kernel::layout(
            ctx,
            "sample",
            &[
                Slot::Uniform,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
                Slot::ReadWrite,
                Slot::ReadWrite,
                Slot::ReadWrite,
                Slot::Uniform,
            ],
        );
        let module = kernel::module(ctx, "sample", &[include_str!("kernels/sample.wgsl")]);
        let keys_pipeline = kernel::pipeline(ctx, &layout, &module, "sample_keys");
        let weights_pipeline = kernel::pipeline(ctx, &layout, &module, "sample_weights");
        let select_pipeline = kernel::pipeline(ctx, &layout, &module, "sample_select");

        // Greedy until the first `prepare`, so a dispatch before it still reads a valid vocab.
        let params = ctx.uniform(
            "sample params",
            &Params {
                vocab: vocab as u32,
                n_bias: 0,
                sampling: 0,
                top_k: 0,
                inv_t: 1.0,
                top_p: 1.0,
                groups,
                _pad: 0,
                top_p_fixed: [0; 2],
                draw_fixed: [0; 2],
            },
        );
        let bias = ctx.scratch_buffer(
            "sample bias",
            (MAX_BIAS * std::mem::size_of::<BiasEntry>()) as u64,
        )?;
        let keys = ctx.scratch_buffer("sample keys", bytes)?;
        let weights = ctx.scratch_buffer("sample weights", bytes * 2)?;
        let partials = ctx.scratch_buffer("sample partials", u64::from(groups) * 8)?;
        let token = ctx.scratch_buffer("sampled token", 4)?;
        let table = ctx.uniform("sample exp2 table", &exp2_table());
        let bind_group = kernel::bind(
            ctx,
            "sample",
            &layout,
            &[
                &params, &bias, logits, &keys, &weights, &partials, &token, &table,
            ],
        );
        Ok(Self {
            vocab,
            groups,
            keys_pipeline,
            weights_pipeline,
            select_pipeline,
            params,
            bias,
            token,
            bind_group,
            sampling: AtomicBool::new(false),
            _keys: keys,
            _weights: weights,
            _partials: partials,
            _table: table,
        })
    }

    /// Writes the pick's parameters and bias list for the next [`GpuSampler::encode`]. Errors on
    /// more than [`MAX_BIAS`] bias entries or parameters the CPU sampler would refuse. Bias ids
    /// outside the vocabulary are ignored, as on the CPU.
    pub fn prepare(&self, queue: &wgpu::Queue, pick: &TokenPick<'_>) -> Result<()> {
        let TokenPick {
            temperature,
            top_k,
            top_p,
            uniform,
            logit_bias,
        } = *pick;
        if logit_bias.len() > MAX_BIAS {
            return Err(GpuError::Invalid(format!(
                "{} logit-bias entries; the GPU sampler takes at most {MAX_BIAS}",
                logit_bias.len()
            )));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(GpuError::Invalid(format!(
                "temperature {temperature} must be finite and >= 0"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(GpuError::Invalid(format!(
                "top_p {top_p} must be in (0, 1]"
            )));
        }
        if !(0.0..1.0).contains(&uniform) {
            return Err(GpuError::Invalid(format!(
                "the draw {uniform} must be in [0, 1)"
            )));
        }
        let sampling = temperature != 0.0;
        let params = Params {
            vocab: self.vocab as u32,
            n_bias: logit_bias.len() as u32,
            sampling: u32::from(sampling),
            // At or above the vocabulary the cut keeps everything, as on the CPU.
            top_k: if top_k < self.vocab { top_k as u32 } else { 0 },
            // The CPU multiplies by this f32 reciprocal rather than dividing by T.
            inv_t: if sampling { 1.0 / temperature } else { 1.0 },
            top_p,
            groups: self.groups,
            _pad: 0,
            top_p_fixed: if top_p < 1.0 {
                fraction_bits(f64::from(top_p))
            } else {
                [0; 2]
            },
            draw_fixed: fraction_bits(uniform),
        };
        queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        if !logit_bias.is_empty() {
            let mut entries = [BiasEntry { id: 0, value: 0.0 }; MAX_BIAS];
            for (entry, &(id, value)) in entries.iter_mut().zip(logit_bias) {
                *entry = BiasEntry { id, value };
            }
            queue.write_buffer(
                &self.bias,
                0,
                bytemuck::cast_slice(&entries[..logit_bias.len()]),
            );
        }
        self.sampling.store(sampling, Ordering::Relaxed);
        Ok(())
    }

    /// Records the dispatches of the pick last prepared into `pass` (the caller's, so a decode
    /// step stays one pass and one submission). Leaves the pass's pipeline and bind group 0 set
    /// to the sampler's.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        kernel::dispatch(
            pass,
            &self.keys_pipeline,
            &self.bind_group,
            (self.groups, 1),
        );
        if self.sampling.load(Ordering::Relaxed) {
            kernel::dispatch(
                pass,
                &self.weights_pipeline,
                &self.bind_group,
                (self.groups, 1),
            );
        }
        kernel::dispatch(pass, &self.select_pipeline, &self.bind_group, (1, 1));
    }

    /// The 4-byte buffer (STORAGE | COPY_SRC) holding the picked id once the dispatches ran.
    pub fn token_buffer(&self) -> &wgpu::Buffer {
        &self.token
    }

    /// Dispatches [`GpuSampler::encode`] records for the pick last prepared: 2 greedy, 3 sampling.
    pub fn dispatches(&self) -> usize {
        if self.sampling.load(Ordering::Relaxed) {
            3
        } else {
            2
        }
    }

    /// Uploads `logits`, picks and reads the id back: for tests and one-off use (it builds the
    /// pipelines each call).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn pick_once(ctx: &GpuContext, logits: &[f32], pick: &TokenPick<'_>) -> Result<u32> {
        if logits.is_empty() {
            return Err(GpuError::Invalid("no logits to pick from".into()));
        }
        let buffer = ctx.storage_buffer("logits", bytemuck::cast_slice(logits))?;
        let sampler = Self::new(ctx, &buffer, logits.len())?;
        sampler.prepare(&ctx.queue, pick)?;
        sampler.run(ctx).await
    }

    /// Encodes the prepared pick alone, submits it and reads the id back.
    #[cfg(not(target_arch = "wasm32"))]
    async fn run(&self, ctx: &GpuContext) -> Result<u32> {
        let readback = ctx.readback_buffer("sampled token readback", 4);
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sample"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("sample"),
                timestamp_writes: None,
            });
            self.encode(&mut pass);
        }
        encoder.copy_buffer_to_buffer(&self.token, 0, &readback, 0, 4);
        ctx.queue.submit([encoder.finish()]);
        let bytes = ctx.read_bytes(&readback, 4).await?;
        token_from_bytes(&bytes, self.vocab)
    }
}

/// The id a pick wrote, as read back, checked against the vocabulary.
pub(crate) fn token_from_bytes(bytes: &[u8], vocab: usize) -> Result<u32> {
    let id = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| GpuError::Readback("no token id came back".into()))?;
    if id as usize >= vocab {
        return Err(GpuError::Readback(format!(
            "the sampler returned id {id}, outside the vocabulary of {vocab}"
        )));
    }
    Ok(id)
}

//! RoPE and the KV-cache store (`kernels/rope.wgsl`), in one dispatch per layer.

use selfroute_core::{ModelConfig, RopeLayout};

use crate::context::GpuContext;
use crate::error::Result;
use crate::kernel::{self, Slot};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    q_dim: u32,
    kv_dim: u32,
    head_dim: u32,
    half_layout: u32,
    has_bias: u32,
    _pad: [u32; 3],
}

/// cos/sin for every position up to `positions`, [pos][head_dim / 2][cos, sin], from core's
/// angles in f64, as the CPU engine computes them, so both rotate by the same f32 numbers.
pub fn rope_table(head_dim: usize, theta: f32, positions: usize) -> Vec<f32> {
    selfroute_core::rope::angles(head_dim, theta, positions)
        .flat_map(|a| [a.cos() as f32, a.sin() as f32])
        .collect()
}

pub struct RopeKernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

pub struct BoundRope {
    units: usize,
    bind_group: wgpu::BindGroup,
    _dims: wgpu::Buffer,
}

/// The buffers one layer's rotation reads and writes.
pub struct RopeBuffers<'a> {
    pub step: &'a wgpu::Buffer,
    /// [tokens][q | k | v], Q rotated in place.
    pub qkv: &'a wgpu::Buffer,
    /// The Q|K|V bias (Qwen2), or None.
    pub bias: Option<&'a wgpu::Buffer>,
    pub table: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
}

impl RopeKernel {
    pub fn new(ctx: &GpuContext) -> Self {
        let layout = kernel::layout(
            ctx,
            "rope",
            &[
                Slot::Uniform,
                Slot::Uniform,
                Slot::ReadWrite,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
                Slot::ReadWrite,
            ],
        );
        let module = kernel::module(ctx, "rope", &[include_str!("kernels/rope.wgsl")]);
        let pipeline = kernel::pipeline(ctx, &layout, &module, "rope_store");
        Self { layout, pipeline }
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        config: &ModelConfig,
        buffers: &RopeBuffers<'_>,
    ) -> Result<BoundRope> {
        let q_dim = config.q_dim();
        let kv_dim = config.kv_dim();
        let dims = ctx.uniform(
            "rope dims",
            &Dims {
                q_dim: q_dim as u32,
                kv_dim: kv_dim as u32,
                head_dim: config.head_dim as u32,
                half_layout: u32::from(config.rope_layout == RopeLayout::Half),
                has_bias: u32::from(buffers.bias.is_some()),
                _pad: [0; 3],
            },
        );
        // Without biases the slot still needs a buffer; the kernel never reads it.
        let placeholder;
        let bias = match buffers.bias {
            Some(b) => b,
            None => {
                placeholder = ctx.scratch_buffer("no bias", 4)?;
                &placeholder
            }
        };
        let bind_group = kernel::bind(
            ctx,
            "rope",
            &self.layout,
            &[
                buffers.step,
                &dims,
                buffers.qkv,
                bias,
                buffers.table,
                buffers.k_cache,
                buffers.v_cache,
            ],
        );
        Ok(BoundRope {
            units: q_dim / 2 + kv_dim / 2 + kv_dim,
            bind_group,
            _dims: dims,
        })
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundRope, tokens: usize) {
        let groups = (kernel::groups_for(bound.units, 64), tokens as u32);
        kernel::dispatch(pass, &self.pipeline, &bound.bind_group, groups);
    }
}

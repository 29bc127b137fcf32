//! Causal grouped-query attention over the GPU KV cache (`kernels/attention.wgsl`).

use selfroute_core::ModelConfig;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::kernel::{self, Slot};

/// The kernel keeps one head's query in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    q_dim: u32,
    kv_dim: u32,
    capacity: u32,
    scale: f32,
    _pad: u32,
}

pub struct AttentionKernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

pub struct BoundAttention {
    heads: usize,
    bind_group: wgpu::BindGroup,
    _dims: wgpu::Buffer,
}

/// The buffers one layer's attention reads and writes.
pub struct AttentionBuffers<'a> {
    pub step: &'a wgpu::Buffer,
    /// [tokens][q | k | v] with Q rotated.
    pub qkv: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    /// [tokens * heads][capacity] scores.
    pub scores: &'a wgpu::Buffer,
    /// [tokens][q_dim]
    pub out: &'a wgpu::Buffer,
}

impl AttentionKernel {
    pub fn new(ctx: &GpuContext) -> Self {
        let layout = kernel::layout(
            ctx,
            "attention",
            &[
                Slot::Uniform,
                Slot::Uniform,
                Slot::Read,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
                Slot::ReadWrite,
            ],
        );
        let module = kernel::module(ctx, "attention", &[include_str!("kernels/attention.wgsl")]);
        let pipeline = kernel::pipeline(ctx, &layout, &module, "attention");
        Self { layout, pipeline }
    }

    /// `capacity` is the number of positions the cache (and each scores row) holds.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        config: &ModelConfig,
        capacity: usize,
        buffers: &AttentionBuffers<'_>,
    ) -> Result<BoundAttention> {
        if config.head_dim > MAX_HEAD_DIM {
            return Err(GpuError::Unsupported(format!(
                "head_dim {} is above the attention kernel's {MAX_HEAD_DIM}",
                config.head_dim
            )));
        }
        let dims = ctx.uniform(
            "attention dims",
            &Dims {
                heads: config.num_heads as u32,
                kv_heads: config.num_kv_heads as u32,
                head_dim: config.head_dim as u32,
                q_dim: config.q_dim() as u32,
                kv_dim: config.kv_dim() as u32,
                capacity: capacity as u32,
                scale: 1.0 / (config.head_dim as f32).sqrt(),
                _pad: 0,
            },
        );
        let bind_group = kernel::bind(
            ctx,
            "attention",
            &self.layout,
            &[
                buffers.step,
                &dims,
                buffers.qkv,
                buffers.k_cache,
                buffers.v_cache,
                buffers.scores,
                buffers.out,
            ],
        );
        Ok(BoundAttention {
            heads: config.num_heads,
            bind_group,
            _dims: dims,
        })
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundAttention, tokens: usize) {
        let groups = (bound.heads as u32, tokens as u32);
        kernel::dispatch(pass, &self.pipeline, &bound.bind_group, groups);
    }
}

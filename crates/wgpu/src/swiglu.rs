//! SwiGLU (`kernels/swiglu.wgsl`) over the fused gate|up rows.

use crate::context::GpuContext;
use crate::kernel::{self, Slot};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    inter: u32,
    _pad: [u32; 3],
}

pub struct SwiGluKernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

pub struct BoundSwiGlu {
    inter: usize,
    bind_group: wgpu::BindGroup,
    _dims: wgpu::Buffer,
}

impl SwiGluKernel {
    pub fn new(ctx: &GpuContext) -> Self {
        let layout = kernel::layout(
            ctx,
            "swiglu",
            &[Slot::Uniform, Slot::Uniform, Slot::Read, Slot::ReadWrite],
        );
        let module = kernel::module(ctx, "swiglu", &[include_str!("kernels/swiglu.wgsl")]);
        let pipeline = kernel::pipeline(ctx, &layout, &module, "swiglu");
        Self { layout, pipeline }
    }

    /// Binds `act[t] = silu(gate_up[t, ..inter]) * gate_up[t, inter..]`.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        gate_up: &wgpu::Buffer,
        act: &wgpu::Buffer,
        inter: usize,
    ) -> BoundSwiGlu {
        let dims = ctx.uniform(
            "swiglu dims",
            &Dims {
                inter: inter as u32,
                _pad: [0; 3],
            },
        );
        let bind_group = kernel::bind(ctx, "swiglu", &self.layout, &[step, &dims, gate_up, act]);
        BoundSwiGlu {
            inter,
            bind_group,
            _dims: dims,
        }
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundSwiGlu, tokens: usize) {
        let groups = (kernel::groups_for(bound.inter, 64), tokens as u32);
        kernel::dispatch(pass, &self.pipeline, &bound.bind_group, groups);
    }
}

//! RMSNorm (`kernels/rmsnorm.wgsl`) over the rows of a step.

use crate::context::GpuContext;
use crate::kernel::{self, Slot};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    cols: u32,
    eps: f32,
    use_out_rows: u32,
    _pad: u32,
}

pub struct RmsNormKernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

pub struct BoundRmsNorm {
    bind_group: wgpu::BindGroup,
    _dims: wgpu::Buffer,
}

impl RmsNormKernel {
    pub fn new(ctx: &GpuContext) -> Self {
        let layout = kernel::layout(
            ctx,
            "rmsnorm",
            &[
                Slot::Uniform,
                Slot::Uniform,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
            ],
        );
        let module = kernel::module(ctx, "rmsnorm", &[include_str!("kernels/rmsnorm.wgsl")]);
        let pipeline = kernel::pipeline(ctx, &layout, &module, "rmsnorm");
        Self { layout, pipeline }
    }

    /// Binds `y = rmsnorm(x) * weight` over rows of `cols`. With `out_rows_only` only the rows
    /// whose logits are wanted are normalized (the final norm), in place in `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        y: &wgpu::Buffer,
        cols: usize,
        eps: f32,
        out_rows_only: bool,
    ) -> BoundRmsNorm {
        let dims = ctx.uniform(
            "rmsnorm dims",
            &Dims {
                cols: cols as u32,
                eps,
                use_out_rows: u32::from(out_rows_only),
                _pad: 0,
            },
        );
        let bind_group = kernel::bind(ctx, "rmsnorm", &self.layout, &[step, &dims, x, weight, y]);
        BoundRmsNorm {
            bind_group,
            _dims: dims,
        }
    }

    /// Records the norm of `rows` rows (one workgroup each).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundRmsNorm, rows: usize) {
        kernel::dispatch(pass, &self.pipeline, &bound.bind_group, (rows as u32, 1));
    }
}

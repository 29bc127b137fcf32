//! Token embedding lookup (`kernels/embedding.wgsl`) from a table in any weight format.

use crate::context::GpuContext;
use crate::kernel::{self, Slot};
use crate::quant::{GpuMatrix, WeightFormat};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

pub struct EmbeddingKernel {
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<(WeightFormat, wgpu::ComputePipeline)>,
}

pub struct BoundEmbedding {
    format: WeightFormat,
    cols: usize,
    bind_group: wgpu::BindGroup,
    _dims: wgpu::Buffer,
}

impl EmbeddingKernel {
    pub fn new(ctx: &GpuContext) -> Self {
        let layout = kernel::layout(
            ctx,
            "embedding",
            &[
                Slot::Uniform,
                Slot::Uniform,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
            ],
        );
        let pipelines = WeightFormat::ALL
            .iter()
            .map(|&f| {
                let module = kernel::module(
                    ctx,
                    "embedding",
                    &[
                        &f.shader_constant(),
                        include_str!("kernels/quant.wgsl"),
                        include_str!("kernels/embedding.wgsl"),
                    ],
                );
                (f, kernel::pipeline(ctx, &layout, &module, "embedding"))
            })
            .collect();
        Self { layout, pipelines }
    }

    /// Binds `table` to read token ids from `ids` (u32s) and write rows into `out`.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        table: &GpuMatrix,
        ids: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> BoundEmbedding {
        let dims = ctx.uniform(
            "embedding dims",
            &Dims {
                rows: table.rows as u32,
                cols: table.cols as u32,
                _pad: [0; 2],
            },
        );
        let bind_group = kernel::bind(
            ctx,
            "embedding",
            &self.layout,
            &[step, &dims, &table.buffer, ids, out],
        );
        BoundEmbedding {
            format: table.format,
            cols: table.cols,
            bind_group,
            _dims: dims,
        }
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundEmbedding, tokens: usize) {
        if let Some((_, pipeline)) = self.pipelines.iter().find(|(f, _)| *f == bound.format) {
            let groups = (kernel::groups_for(bound.cols / 4, 64), tokens as u32);
            kernel::dispatch(pass, pipeline, &bound.bind_group, groups);
        }
    }
}

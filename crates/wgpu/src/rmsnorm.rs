//! RMSNorm (`kernels/rmsnorm.wgsl`).

use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

pub struct RmsNorm {
    pipeline: wgpu::ComputePipeline,
}

impl RmsNorm {
    pub fn new(ctx: &GpuContext) -> Self {
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("rmsnorm"),
                source: wgpu::ShaderSource::Wgsl(include_str!("kernels/rmsnorm.wgsl").into()),
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("rmsnorm"),
                layout: None,
                module: &module,
                entry_point: Some("rmsnorm"),
                compilation_options: Default::default(),
                cache: None,
            });
        Self { pipeline }
    }

    /// Records `y = rmsnorm(x) * weight` for `rows` rows of `cols` values.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let rows = u32::try_from(rows).map_err(|_| GpuError::Invalid("too many rows".into()))?;
        if rows > 65_535 || cols == 0 {
            return Err(GpuError::Invalid(format!(
                "rmsnorm over {rows} rows of {cols} (at most 65535 rows, at least one column)"
            )));
        }
        let dims = Dims {
            rows,
            cols: u32::try_from(cols).map_err(|_| GpuError::Invalid("too many columns".into()))?,
            eps,
            _pad: 0,
        };
        let uniform = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("rmsnorm dims"),
                contents: bytemuck::bytes_of(&dims),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rmsnorm"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: x.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: weight.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: y.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: uniform.as_entire_binding(),
                },
            ],
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("rmsnorm"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(rows, 1, 1);
        Ok(())
    }

    /// `rmsnorm(x) * weight` on the GPU, read back (tests and one-off use).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn run(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        weight: &[f32],
        eps: f32,
    ) -> Result<Vec<f32>> {
        let cols = weight.len();
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(GpuError::Invalid(format!(
                "{} values are not whole rows of {cols}",
                x.len()
            )));
        }
        let rows = x.len() / cols;
        let input = ctx.storage_buffer("x", bytemuck::cast_slice(x))?;
        let w = ctx.storage_buffer("weight", bytemuck::cast_slice(weight))?;
        let (out, readback) = ctx.output_buffers("y", x.len())?;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("rmsnorm"),
            });
        self.encode(ctx, &mut encoder, &input, &w, &out, rows, cols, eps)?;
        encoder.copy_buffer_to_buffer(&out, 0, &readback, 0, (x.len() * 4) as u64);
        ctx.queue.submit([encoder.finish()]);
        ctx.read_f32(&readback).await
    }
}

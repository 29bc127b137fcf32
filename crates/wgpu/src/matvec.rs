//! Decode matrix-vector products (`kernels/matvec.wgsl`) for F32 and Q8_0 weights.

use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::{GpuError, Result};

/// Workgroups per dispatch dimension (the WebGPU default limit).
const MAX_GROUPS_PER_DIM: u32 = 65_535;
const Q8_0_BLOCK: usize = 32;
const Q8_0_BLOCK_BYTES: usize = 34;

/// A weight matrix `[rows, cols]` resident on the GPU.
pub enum WeightMatrix {
    F32 {
        weights: wgpu::Buffer,
        rows: usize,
        cols: usize,
    },
    /// Quants packed four per u32 word, and one f32 scale per 32-value block.
    Q8_0 {
        quants: wgpu::Buffer,
        scales: wgpu::Buffer,
        rows: usize,
        cols: usize,
    },
}

impl WeightMatrix {
    pub fn rows(&self) -> usize {
        match self {
            Self::F32 { rows, .. } | Self::Q8_0 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::F32 { cols, .. } | Self::Q8_0 { cols, .. } => *cols,
        }
    }

    pub fn from_f32(ctx: &GpuContext, data: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(GpuError::Invalid(format!(
                "{} values for a {rows}x{cols} matrix",
                data.len()
            )));
        }
        let weights = ctx.storage_buffer("weights f32", bytemuck::cast_slice(data))?;
        Ok(Self::F32 {
            weights,
            rows,
            cols,
        })
    }

    /// From GGUF Q8_0 blocks (an f16 scale, then 32 int8 quants), row-major.
    pub fn from_q8_0(ctx: &GpuContext, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(Q8_0_BLOCK) {
            return Err(GpuError::Invalid(format!(
                "Q8_0 rows of {cols} values are not whole blocks of 32"
            )));
        }
        let blocks = rows * cols / Q8_0_BLOCK;
        if bytes.len() != blocks * Q8_0_BLOCK_BYTES {
            return Err(GpuError::Invalid(format!(
                "{} bytes of Q8_0 for a {rows}x{cols} matrix (expected {})",
                bytes.len(),
                blocks * Q8_0_BLOCK_BYTES
            )));
        }
        let mut scales = Vec::with_capacity(blocks);
        let mut words = Vec::with_capacity(blocks * Q8_0_BLOCK / 4);
        for block in bytes.chunks_exact(Q8_0_BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            for q in block[2..].chunks_exact(4) {
                words.push(u32::from_le_bytes([q[0], q[1], q[2], q[3]]));
            }
        }
        Ok(Self::Q8_0 {
            quants: ctx.storage_buffer("weights q8_0", bytemuck::cast_slice(&words))?,
            scales: ctx.storage_buffer("scales q8_0", bytemuck::cast_slice(&scales))?,
            rows,
            cols,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    cols: u32,
    blocks: u32,
    groups_x: u32,
}

/// The matvec pipelines, compiled once.
pub struct MatVec {
    f32_pipeline: wgpu::ComputePipeline,
    q8_pipeline: wgpu::ComputePipeline,
}

impl MatVec {
    pub fn new(ctx: &GpuContext) -> Self {
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("matvec"),
                source: wgpu::ShaderSource::Wgsl(include_str!("kernels/matvec.wgsl").into()),
            });
        let pipeline = |entry: &str| {
            ctx.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        };
        Self {
            f32_pipeline: pipeline("matvec_f32"),
            q8_pipeline: pipeline("matvec_q8_0"),
        }
    }

    /// Records `y = W x` into `encoder`. `x` holds `cols` f32s, `y` `rows` f32s.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        w: &WeightMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let rows =
            u32::try_from(w.rows()).map_err(|_| GpuError::Invalid("too many rows".into()))?;
        let cols =
            u32::try_from(w.cols()).map_err(|_| GpuError::Invalid("too many columns".into()))?;
        let groups_x = rows.clamp(1, MAX_GROUPS_PER_DIM);
        let groups_y = rows.div_ceil(groups_x).max(1);
        let dims = Dims {
            rows,
            cols,
            blocks: cols / Q8_0_BLOCK as u32,
            groups_x,
        };
        let uniform = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("matvec dims"),
                contents: bytemuck::bytes_of(&dims),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let (pipeline, mut entries) = match w {
            WeightMatrix::F32 { weights, .. } => (
                &self.f32_pipeline,
                vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: weights.as_entire_binding(),
                }],
            ),
            WeightMatrix::Q8_0 { quants, scales, .. } => (
                &self.q8_pipeline,
                vec![
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: quants.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: scales.as_entire_binding(),
                    },
                ],
            ),
        };
        entries.extend([
            wgpu::BindGroupEntry {
                binding: 2,
                resource: x.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: y.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: uniform.as_entire_binding(),
            },
        ]);
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matvec"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("matvec"),
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups_x, groups_y, 1);
        Ok(())
    }

    /// `W x` on the GPU, read back (for tests and one-off use; the engine keeps data on the GPU).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn run(&self, ctx: &GpuContext, w: &WeightMatrix, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != w.cols() {
            return Err(GpuError::Invalid(format!(
                "a vector of {} for a matrix of {} columns",
                x.len(),
                w.cols()
            )));
        }
        let x_buf = ctx.storage_buffer("x", bytemuck::cast_slice(x))?;
        let size = (w.rows() * 4) as u64;
        let (y_buf, readback) = ctx.output_buffers("y", w.rows())?;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("matvec"),
            });
        self.encode(ctx, &mut encoder, w, &x_buf, &y_buf)?;
        encoder.copy_buffer_to_buffer(&y_buf, 0, &readback, 0, size);
        ctx.queue.submit([encoder.finish()]);
        ctx.read_f32(&readback).await
    }
}

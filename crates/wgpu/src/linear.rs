//! `y = x W^T` (`kernels/linear.wgsl`): the matrix-vector kernel for decode and the tiled
//! matrix-matrix kernel for prefill, compiled once per weight format; both read the same bind
//! group, made once per weight at load.

use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::kernel::{self, Slot};
use crate::quant::{GpuMatrix, WeightFormat};

/// Workgroups per dispatch dimension (the WebGPU default limit).
const MAX_GROUPS_PER_DIM: u32 = 65_535;
const MATMUL_TILE: usize = 64;
/// Rows and tokens per `matmul_registers` workgroup (64 invocations x 4 rows, 4 tokens).
const REGISTER_ROWS: usize = 256;
const REGISTER_TOKENS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    cols: u32,
    y_stride: u32,
    y_off: u32,
    accumulate: u32,
    use_out_rows: u32,
    groups_x: u32,
    eps: f32,
}

/// Work fused into the read of x (see `kernels/linear.wgsl`).
#[derive(Debug, Clone, Copy)]
pub enum Prologue<'a> {
    None,
    /// x becomes rmsnorm(x) * weight.
    RmsNorm {
        weight: &'a wgpu::Buffer,
        eps: f32,
    },
    /// x holds gate|up rows twice the weight's columns wide; x becomes silu(gate) * up.
    SwiGlu,
}

impl Prologue<'_> {
    fn index(&self) -> usize {
        match self {
            Self::None => 0,
            Self::RmsNorm { .. } => 1,
            Self::SwiGlu => 2,
        }
    }
}

/// The widest x a matvec prologue stages in workgroup memory (`MAX_STAGED` in linear.wgsl).
pub const MAX_STAGED: usize = 2048;

/// Where a product's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// Row width of the output buffer.
    pub stride: usize,
    /// Column of the first output value within a row.
    pub offset: usize,
    /// Add to the output instead of overwriting it (the residual connection).
    pub accumulate: bool,
    /// Compute only the rows whose logits are wanted (`Step::out_rows`), for the output head.
    pub out_rows_only: bool,
}

impl Output {
    pub fn plain(rows: usize) -> Self {
        Self {
            stride: rows,
            offset: 0,
            accumulate: false,
            out_rows_only: false,
        }
    }
}

struct FormatPipelines {
    /// Indexed by `Prologue::index`.
    matvec: Vec<wgpu::ComputePipeline>,
    matmul: Vec<wgpu::ComputePipeline>,
}

pub struct LinearKernels {
    layout: wgpu::BindGroupLayout,
    /// CPU adapters run prefill with `matmul_registers` (no barriers), GPUs with the tiled `matmul`.
    register_matmul: bool,
    /// Rows per matvec workgroup: 64 / invocations per row.
    matvec_rows: usize,
    formats: Vec<(WeightFormat, FormatPipelines)>,
    /// Bound where a prologue reads no auxiliary buffer.
    no_aux: wgpu::Buffer,
}

/// A weight bound to its input and output buffers.
pub struct BoundLinear {
    format: WeightFormat,
    prologue: usize,
    rows: usize,
    bind_group: wgpu::BindGroup,
    // Kept alive with the bind group.
    _dims: wgpu::Buffer,
}

impl LinearKernels {
    pub fn new(ctx: &GpuContext) -> Self {
        let (threads_per_row, rows_per_thread) = if ctx.is_cpu() { (1, 4) } else { (16, 1) };
        let matvec_rows = 64 / threads_per_row * rows_per_thread;
        let threads = format!(
            "const MV_THREADS: u32 = {threads_per_row}u;\nconst MV_ROWS: u32 = {rows_per_thread}u;\n"
        );
        let layout = kernel::layout(
            ctx,
            "linear",
            &[
                Slot::Uniform,
                Slot::Uniform,
                Slot::Read,
                Slot::Read,
                Slot::ReadWrite,
                Slot::Read,
            ],
        );
        let formats = WeightFormat::ALL
            .iter()
            .map(|&f| {
                let mut pipelines = FormatPipelines {
                    matvec: Vec::new(),
                    matmul: Vec::new(),
                };
                for prologue in 0..3 {
                    let module = kernel::module(
                        ctx,
                        "linear",
                        &[
                            &f.shader_constant(),
                            &threads,
                            &format!("const PROLOGUE: u32 = {prologue}u;\n"),
                            include_str!("kernels/quant.wgsl"),
                            include_str!("kernels/linear.wgsl"),
                        ],
                    );
                    pipelines
                        .matvec
                        .push(kernel::pipeline(ctx, &layout, &module, "matvec"));
                    let matmul = if ctx.is_cpu() {
                        "matmul_registers"
                    } else {
                        "matmul"
                    };
                    pipelines
                        .matmul
                        .push(kernel::pipeline(ctx, &layout, &module, matmul));
                }
                (f, pipelines)
            })
            .collect();
        let no_aux = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no aux"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Self {
            layout,
            register_matmul: ctx.is_cpu(),
            matvec_rows,
            formats,
            no_aux,
        }
    }

    /// Binds `w` to read `x` ([tokens, w.cols]) and write `y` as `output` says.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        output: Output,
    ) -> Result<BoundLinear> {
        self.bind_with(ctx, step, w, x, y, output, Prologue::None)
    }

    /// As `bind`, with `prologue` applied to x as it is read.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_with(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        output: Output,
        prologue: Prologue<'_>,
    ) -> Result<BoundLinear> {
        if !matches!(prologue, Prologue::None) && w.cols > MAX_STAGED {
            return Err(GpuError::Invalid(format!(
                "a fused prologue stages at most {MAX_STAGED} values, not {}",
                w.cols
            )));
        }
        let (aux, eps) = match prologue {
            Prologue::RmsNorm { weight, eps } => (weight, eps),
            _ => (&self.no_aux, 0.0),
        };
        let rows = u32::try_from(w.rows).map_err(|_| GpuError::Invalid("too many rows".into()))?;
        let row_groups = w.rows.div_ceil(self.matvec_rows) as u32;
        if output.offset + w.rows > output.stride {
            return Err(GpuError::Invalid(format!(
                "{} output rows at column {} do not fit rows of {}",
                w.rows, output.offset, output.stride
            )));
        }
        let dims = Dims {
            rows,
            cols: w.cols as u32,
            y_stride: output.stride as u32,
            y_off: output.offset as u32,
            accumulate: u32::from(output.accumulate),
            use_out_rows: u32::from(output.out_rows_only),
            groups_x: row_groups.clamp(1, MAX_GROUPS_PER_DIM),
            eps,
        };
        let dims_buffer = ctx.uniform("linear dims", &dims);
        let bind_group = kernel::bind(
            ctx,
            "linear",
            &self.layout,
            &[step, &dims_buffer, &w.buffer, x, y, aux],
        );
        Ok(BoundLinear {
            format: w.format,
            prologue: prologue.index(),
            rows: w.rows,
            bind_group,
            _dims: dims_buffer,
        })
    }

    fn pipelines(&self, format: WeightFormat) -> &FormatPipelines {
        // Every format has pipelines (built from WeightFormat::ALL in `new`).
        let i = self
            .formats
            .iter()
            .position(|(f, _)| *f == format)
            .unwrap_or(0);
        &self.formats[i].1
    }

    /// Records the product for `tokens` tokens: matvec for one, the tiled matmul for more.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundLinear, tokens: usize) {
        let p = self.pipelines(bound.format);
        if tokens <= 1 {
            let groups = bound.rows.div_ceil(self.matvec_rows) as u32;
            let x = groups.clamp(1, MAX_GROUPS_PER_DIM);
            kernel::dispatch(
                pass,
                &p.matvec[bound.prologue],
                &bound.bind_group,
                (x, groups.div_ceil(x)),
            );
        } else {
            let (rows_per_group, tokens_per_group) = if self.register_matmul {
                (REGISTER_ROWS, REGISTER_TOKENS)
            } else {
                (MATMUL_TILE, MATMUL_TILE)
            };
            kernel::dispatch(
                pass,
                &p.matmul[bound.prologue],
                &bound.bind_group,
                (
                    kernel::groups_for(bound.rows, rows_per_group),
                    kernel::groups_for(tokens, tokens_per_group),
                ),
            );
        }
    }
}

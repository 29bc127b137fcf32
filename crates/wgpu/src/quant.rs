//! Weight matrices on the GPU, kept in their file's precision. Every format is uploaded as 32-bit
//! words (storage buffers hold 4-byte words): F32 and F16 as they are, Q4_1 in GGUF's own 20-byte
//! blocks (already word-aligned), Q8_0's 34-byte blocks widened to 36 bytes (the f16 scale as an
//! f32 word, then the quants). BF16 is widened to F32 at load; other block formats are refused
//! with a clear error. `kernels/quant.wgsl` reads all of them.

use selfroute_core::{TensorDType, TensorData};

use crate::context::GpuContext;
use crate::error::{GpuError, Result};

/// The formats the kernels read, with the value of their `FORMAT` constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32 = 0,
    F16 = 1,
    Q8_0 = 2,
    Q4_1 = 3,
}

impl WeightFormat {
    pub const ALL: [Self; 4] = [Self::F32, Self::F16, Self::Q8_0, Self::Q4_1];

    /// The WGSL line that selects this format's branch of `load4`.
    pub fn shader_constant(self) -> String {
        format!("const FORMAT: u32 = {}u;\n", self as u32)
    }

    /// Columns a row must be a multiple of (the kernels load four values at a time).
    fn column_multiple(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 4,
            Self::Q8_0 | Self::Q4_1 => 32,
        }
    }
}

/// A `[rows, cols]` matrix resident on the GPU.
pub struct GpuMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub buffer: wgpu::Buffer,
}

impl GpuMatrix {
    /// Uploads a 2-D tensor (`[out, in]`, as files store linear weights).
    pub fn upload(ctx: &GpuContext, td: &TensorData<'_>) -> Result<Self> {
        Self::upload_rows(ctx, std::slice::from_ref(td), &td.name)
    }

    /// Uploads tensors with the same format and column count stacked as one matrix (Q, K and V as
    /// one QKV matrix), so one dispatch computes all of them.
    pub fn upload_rows(ctx: &GpuContext, parts: &[TensorData<'_>], label: &str) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| GpuError::Invalid(format!("{label}: no tensors")))?;
        let mut words = Vec::new();
        let mut rows = 0;
        let mut format = None;
        let cols = matrix_shape(first)?.1;
        for td in parts {
            let (r, c) = matrix_shape(td)?;
            if c != cols {
                return Err(GpuError::Invalid(format!(
                    "{label}: {} has {c} columns, {} has {cols}",
                    td.name, first.name
                )));
            }
            let (f, w) = pack_words(td.dtype, &td.bytes, r * c)
                .map_err(|reason| GpuError::Unsupported(format!("{}: {reason}", td.name)))?;
            if format.is_some_and(|prev| prev != f) {
                return Err(GpuError::Invalid(format!(
                    "{label}: tensors of different formats cannot be stacked"
                )));
            }
            if !c.is_multiple_of(f.column_multiple()) {
                return Err(GpuError::Unsupported(format!(
                    "{}: rows of {c} values are not a multiple of {}",
                    td.name,
                    f.column_multiple()
                )));
            }
            format = Some(f);
            words.extend_from_slice(&w);
            rows += r;
        }
        let format = format.ok_or_else(|| GpuError::Invalid(format!("{label}: no tensors")))?;
        let buffer = ctx.storage_buffer(label, bytemuck::cast_slice(&words))?;
        Ok(Self {
            format,
            rows,
            cols,
            buffer,
        })
    }

    /// Whether `upload_rows` can stack these tensors.
    pub fn can_stack(parts: &[TensorData<'_>]) -> bool {
        let cols = parts.first().and_then(|t| t.shape.last().copied());
        parts
            .iter()
            .all(|t| t.dtype == parts[0].dtype && t.shape.last().copied() == cols)
    }
}

fn matrix_shape(td: &TensorData<'_>) -> Result<(usize, usize)> {
    match td.shape[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(GpuError::Invalid(format!(
            "{}: expected a matrix, got shape {:?}",
            td.name, td.shape
        ))),
    }
}

/// The words the kernels read for `elements` values of `dtype` stored in `bytes`.
pub fn pack_words(
    dtype: TensorDType,
    bytes: &[u8],
    elements: usize,
) -> std::result::Result<(WeightFormat, Vec<u32>), String> {
    let expected = dtype
        .bytes_for(elements)
        .ok_or_else(|| format!("{elements} values are not whole {dtype} blocks"))?;
    if bytes.len() != expected {
        return Err(format!(
            "{} bytes for {elements} {dtype} values (expected {expected})",
            bytes.len()
        ));
    }
    let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    Ok(match dtype {
        TensorDType::F32 => (WeightFormat::F32, bytes.chunks_exact(4).map(word).collect()),
        TensorDType::F16 => {
            if !elements.is_multiple_of(2) {
                return Err("an odd number of F16 values".into());
            }
            (WeightFormat::F16, bytes.chunks_exact(4).map(word).collect())
        }
        TensorDType::BF16 => (
            WeightFormat::F32,
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32().to_bits())
                .collect(),
        ),
        TensorDType::Q4_1 => (
            WeightFormat::Q4_1,
            bytes.chunks_exact(4).map(word).collect(),
        ),
        TensorDType::Q8_0 => {
            let mut words = Vec::with_capacity(elements / 32 * 9);
            for block in bytes.chunks_exact(34) {
                let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                words.push(scale.to_bits());
                words.extend(block[2..].chunks_exact(4).map(word));
            }
            (WeightFormat::Q8_0, words)
        }
        other => {
            return Err(format!(
                "{other} weights are not supported by the GPU engine yet (F32, F16, BF16, Q8_0 \
                 and Q4_1 are); use the CPU engine"
            ));
        }
    })
}

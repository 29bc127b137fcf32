//! Weights as candle objects: linear layers (quantized via QMatMul, or dense), embeddings, norms.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor};
use selfroute_core::{TensorDType, TensorData};

use crate::error::{CandleError, Result};
use crate::kernels::{BlockFormat, QuantMatrix};

fn ggml_dtype(dtype: TensorDType) -> Option<GgmlDType> {
    Some(match dtype {
        TensorDType::Q8_0 => GgmlDType::Q8_0,
        TensorDType::Q4_0 => GgmlDType::Q4_0,
        TensorDType::Q4_1 => GgmlDType::Q4_1,
        TensorDType::Q4K => GgmlDType::Q4K,
        TensorDType::Q6K => GgmlDType::Q6K,
        TensorDType::F32 | TensorDType::F16 | TensorDType::BF16 => return None,
    })
}

/// A plain-float tensor as f32.
pub fn dense_tensor(td: &TensorData<'_>, device: &Device) -> Result<Tensor> {
    let dtype = match td.dtype {
        TensorDType::F32 => DType::F32,
        TensorDType::F16 => DType::F16,
        TensorDType::BF16 => DType::BF16,
        other => {
            return Err(CandleError::Weight {
                name: td.name.clone(),
                reason: format!("{other} is not a plain float type"),
            });
        }
    };
    Ok(Tensor::from_raw_buffer(&td.bytes, dtype, &td.shape, device)?.to_dtype(DType::F32)?)
}

/// Any tensor as plain f32, dequantizing block formats (for training and reference paths).
pub fn f32_tensor(td: &TensorData<'_>, device: &Device) -> Result<Tensor> {
    if ggml_dtype(td.dtype).is_some() {
        Ok(quantized_tensor(td, device)?.dequantize(device)?)
    } else {
        dense_tensor(td, device)
    }
}

/// A quantized tensor, kept in its block format.
pub fn quantized_tensor(td: &TensorData<'_>, device: &Device) -> Result<QTensor> {
    let dtype = ggml_dtype(td.dtype).ok_or_else(|| CandleError::Weight {
        name: td.name.clone(),
        reason: format!("{} is not quantized", td.dtype),
    })?;
    let storage = QStorage::from_data(Cow::Borrowed(&td.bytes), device, dtype)?;
    Ok(QTensor::new(storage, td.shape.clone())?)
}

/// Our f32-activation kernels handle these block formats on the CPU; others go through QMatMul.
fn kernel_matrix(td: &TensorData<'_>, device: &Device) -> Result<Option<QuantMatrix>> {
    let format = match td.dtype {
        TensorDType::Q4_0 => BlockFormat::Q4_0,
        TensorDType::Q4_1 => BlockFormat::Q4_1,
        TensorDType::Q8_0 => BlockFormat::Q8_0,
        _ => return Ok(None),
    };
    if !device.is_cpu() {
        return Ok(None);
    }
    let [rows, cols] = td.shape[..] else {
        return Err(CandleError::Weight {
            name: td.name.clone(),
            reason: format!("expected a matrix, got shape {:?}", td.shape),
        });
    };
    QuantMatrix::new(format, rows, cols, &td.bytes)
        .map(Some)
        .map_err(|e| CandleError::Weight {
            name: td.name.clone(),
            reason: e.to_string(),
        })
}

/// Which kernel product a [`KernelMatmul`] runs.
#[derive(Clone, Copy)]
enum Product {
    /// Rows of one sequence (prefill, or one decode step): `QuantMatrix::matmul`.
    Sequence,
    /// One row per sequence of a batched decode step: `QuantMatrix::matvec_batch`, each row as
    /// its own decode step would compute it.
    DecodeRows,
}

/// Applies a `QuantMatrix` to a contiguous f32 tensor [.., in] -> [.., out] on the CPU.
struct KernelMatmul(Arc<QuantMatrix>, Product);

impl CustomOp1 for KernelMatmul {
    fn name(&self) -> &'static str {
        "selfroute-quant-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("selfroute-quant-matmul needs f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("selfroute-quant-matmul needs contiguous activations")
        };
        let dims = layout.shape().dims();
        let cols = dims.last().copied().unwrap_or(0);
        if cols != self.0.cols() {
            candle_core::bail!(
                "activations have {cols} columns, the weight {}",
                self.0.cols()
            )
        }
        let batch = (end - start).checked_div(cols).unwrap_or(0);
        let mut out = vec![0.0f32; batch * self.0.rows()];
        let xs = &data[start..end];
        match self.1 {
            Product::Sequence => self.0.matmul(xs, batch, &mut out),
            Product::DecodeRows => self.0.matvec_batch(xs, batch, &mut out),
        }
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.0.rows();
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// y = x W^T for W of shape [out, in].
pub enum Linear {
    Kernel(Arc<QuantMatrix>),
    Quantized(QMatMul),
    Dense(Tensor),
}

impl Linear {
    pub fn load(td: &TensorData<'_>, device: &Device) -> Result<Self> {
        if let Some(m) = kernel_matrix(td, device)? {
            Ok(Self::Kernel(Arc::new(m)))
        } else if td.dtype.is_quantized() {
            Ok(Self::Quantized(QMatMul::from_arc(Arc::new(
                quantized_tensor(td, device)?,
            ))?))
        } else {
            Ok(Self::Dense(dense_tensor(td, device)?))
        }
    }

    pub fn from_embedding(embedding: &Embedding) -> Result<Self> {
        Ok(match embedding {
            Embedding::Kernel(m) => Self::Kernel(m.clone()),
            Embedding::Quantized(q) => Self::Quantized(QMatMul::from_arc(q.clone())?),
            Embedding::Dense(t) => Self::Dense(t.clone()),
        })
    }

    /// x: [seq, in] -> [seq, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Kernel(m) => x
                .contiguous()?
                .apply_op1_no_bwd(&KernelMatmul(m.clone(), Product::Sequence))?,
            Self::Quantized(m) => m.forward(x)?,
            Self::Dense(w) => x.matmul(&w.t()?)?,
        })
    }

    /// x: [sequences, in] -> [sequences, out], one row per sequence of a batched decode step:
    /// each row comes out as [`Linear::forward`] of that row alone would give it.
    pub fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Kernel(m) => Ok(x
                .contiguous()?
                .apply_op1_no_bwd(&KernelMatmul(m.clone(), Product::DecodeRows))?),
            // candle's products pick their kernel by the row count, so several rows at once
            // would round differently from one: row by row keeps a batched step equal to single
            // steps (these formats get no batching speed-up; the kernel formats do).
            Self::Quantized(_) | Self::Dense(_) => {
                let rows = (0..x.dim(0)?)
                    .map(|r| self.forward(&x.narrow(0, r, 1)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&rows, 0)?)
            }
        }
    }
}

/// Token embedding table, looked up row by row (quantized rows are dequantized on lookup).
pub enum Embedding {
    Kernel(Arc<QuantMatrix>),
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    pub fn load(td: &TensorData<'_>, device: &Device) -> Result<Self> {
        if let Some(m) = kernel_matrix(td, device)? {
            Ok(Self::Kernel(Arc::new(m)))
        } else if td.dtype.is_quantized() {
            Ok(Self::Quantized(Arc::new(quantized_tensor(td, device)?)))
        } else {
            Ok(Self::Dense(dense_tensor(td, device)?))
        }
    }

    /// ids: [seq] -> [seq, hidden].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Kernel(m) => {
                let ids = ids.to_vec1::<u32>()?;
                let cols = m.cols();
                let mut out = vec![0.0f32; ids.len() * cols];
                for (id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
                    m.dequantize_row(*id as usize, row)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                }
                Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?
            }
            Self::Quantized(q) => q.embedding(ids)?,
            Self::Dense(t) => t.embedding(ids)?,
        })
    }
}

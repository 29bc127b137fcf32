//! Weights as candle objects: linear layers (quantized via QMatMul, or dense), embeddings, norms.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use selfroute_core::{TensorDType, TensorData};

use crate::error::{CandleError, Result};

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

/// A quantized tensor, kept in its block format.
pub fn quantized_tensor(td: &TensorData<'_>, device: &Device) -> Result<QTensor> {
    let dtype = ggml_dtype(td.dtype).ok_or_else(|| CandleError::Weight {
        name: td.name.clone(),
        reason: format!("{} is not quantized", td.dtype),
    })?;
    let storage = QStorage::from_data(Cow::Borrowed(&td.bytes), device, dtype)?;
    Ok(QTensor::new(storage, td.shape.clone())?)
}

/// y = x W^T for W of shape [out, in].
pub enum Linear {
    Quantized(QMatMul),
    Dense(Tensor),
}

impl Linear {
    pub fn load(td: &TensorData<'_>, device: &Device) -> Result<Self> {
        if td.dtype.is_quantized() {
            Ok(Self::Quantized(QMatMul::from_arc(Arc::new(
                quantized_tensor(td, device)?,
            ))?))
        } else {
            Ok(Self::Dense(dense_tensor(td, device)?))
        }
    }

    pub fn from_embedding(embedding: &Embedding) -> Result<Self> {
        Ok(match embedding {
            Embedding::Quantized(q) => Self::Quantized(QMatMul::from_arc(q.clone())?),
            Embedding::Dense(t) => Self::Dense(t.clone()),
        })
    }

    /// x: [seq, in] -> [seq, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(m) => m.forward(x)?,
            Self::Dense(w) => x.matmul(&w.t()?)?,
        })
    }
}

/// Token embedding table, looked up row by row (quantized rows are dequantized on lookup).
pub enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    pub fn load(td: &TensorData<'_>, device: &Device) -> Result<Self> {
        if td.dtype.is_quantized() {
            Ok(Self::Quantized(Arc::new(quantized_tensor(td, device)?)))
        } else {
            Ok(Self::Dense(dense_tensor(td, device)?))
        }
    }

    /// ids: [seq] -> [seq, hidden].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.embedding(ids)?,
            Self::Dense(t) => t.embedding(ids)?,
        })
    }
}

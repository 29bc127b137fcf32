//! Rotary position embedding tables and their application in either pairing layout.

use candle_core::{D, DType, Device, Tensor};
use selfroute_core::RopeLayout;

use crate::error::Result;

pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
}

impl Rope {
    /// Tables for `max_positions` positions; built once, sliced per call.
    pub fn new(
        head_dim: usize,
        theta: f32,
        max_positions: usize,
        layout: RopeLayout,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (f64::from(theta).powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            layout,
        })
    }

    /// Rotates `x` of shape [batch, heads, seq, head_dim] for positions start..start+seq.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let seq = x.dim(D::Minus2)?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let x = x.contiguous()?;
        Ok(match self.layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeLayout::Half => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        })
    }
}

//! A per-layer key/value cache that grows by doubling, so appending one position copies only that
//! position (amortised) instead of the whole history.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

pub struct KvCache {
    /// [kv_heads, capacity, head_dim]; only the first `len` positions are valid.
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    pub fn new(max_len: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            max_len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if self.len == 0 {
            // Give the memory back; a new conversation starts small again.
            self.k = None;
            self.v = None;
        }
    }

    /// Appends k, v of shape [kv_heads, seq, head_dim]; returns views of all cached positions.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, seq, head_dim) = k.dims3()?;
        let needed = self.len + seq;
        let capacity = self.k.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        if needed > capacity {
            // Double, start at 64, never past the context (but always fit what is needed).
            let new_capacity = needed
                .next_power_of_two()
                .max(64)
                .min(self.max_len)
                .max(needed);
            let grow = |old: &Option<Tensor>, device: &Device| -> Result<Tensor> {
                let fresh = Tensor::zeros((heads, new_capacity, head_dim), DType::F32, device)?;
                if let Some(old) = old
                    && self.len > 0
                {
                    fresh.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(fresh)
            };
            let k_new = grow(&self.k, k.device())?;
            let v_new = grow(&self.v, v.device())?;
            self.k = Some(k_new);
            self.v = Some(v_new);
        }
        let (Some(kc), Some(vc)) = (&self.k, &self.v) else {
            return Err(candle_core::Error::Msg("kv cache was not allocated".into()).into());
        };
        kc.slice_set(&k.contiguous()?, 1, self.len)?;
        vc.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = needed;
        Ok((kc.narrow(1, 0, self.len)?, vc.narrow(1, 0, self.len)?))
    }
}

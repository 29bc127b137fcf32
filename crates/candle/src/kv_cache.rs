//! Grouped-query attention over a per-layer key/value cache held as plain memory.
//!
//! At batch 1 the attention itself is a few thousand multiply-adds per head; done as tensor ops
//! it cost more in copies (strided cache views made contiguous every step) and dispatch than in
//! arithmetic, so it is written directly over slices.

use rayon::prelude::*;

pub struct KvCache {
    /// [position][kv_heads * head_dim]
    k: Vec<f32>,
    v: Vec<f32>,
    row: usize,
}

pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvCache {
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self {
            k: Vec::new(),
            v: Vec::new(),
            row: kv_heads * head_dim,
        }
    }

    pub fn len(&self) -> usize {
        self.k.len() / self.row
    }

    pub fn truncate(&mut self, len: usize) {
        self.k.truncate(len * self.row);
        self.v.truncate(len * self.row);
        if len == 0 {
            // A new conversation starts small again.
            self.k = Vec::new();
            self.v = Vec::new();
        }
    }

    /// Appends keys and values ([seq][kv_heads * head_dim]) and attends with `q`
    /// ([seq][heads * head_dim]), causally: query t sees cached positions 0..=start+t.
    /// Returns [seq][heads * head_dim].
    pub fn attend(&mut self, q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape) -> Vec<f32> {
        let start = self.len();
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
        let (heads, hd) = (shape.heads, shape.head_dim);
        let group = heads / shape.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0f32; q.len()];
        let work = |(i, o): (usize, &mut [f32])| {
            let (t, h) = (i / heads, i % heads);
            let kv = h / group;
            let qh = &q[i * hd..(i + 1) * hd];
            let visible = start + t + 1;
            let mut scores: Vec<f32> = (0..visible)
                .map(|j| {
                    dot(
                        qh,
                        &self.k[j * self.row + kv * hd..j * self.row + (kv + 1) * hd],
                    ) * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            let inv = 1.0 / total;
            for (j, p) in scores.iter().enumerate() {
                let vj = &self.v[j * self.row + kv * hd..j * self.row + (kv + 1) * hd];
                let w = p * inv;
                for (acc, x) in o.iter_mut().zip(vj) {
                    *acc += w * x;
                }
            }
        };
        // One (position, head) pair per task; parallel only when there is enough of it.
        if q.len() / hd >= 64 {
            out.par_chunks_mut(hd).enumerate().for_each(work);
        } else {
            out.chunks_mut(hd).enumerate().for_each(work);
        }
        out
    }
}

/// Dot product with lane accumulators, so it vectorizes. Public so the trainer's rollout
/// attention uses the same loop.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += ca[j] * cb[j];
        }
    }
    let tail: f32 = a
        .chunks_exact(LANES)
        .remainder()
        .iter()
        .zip(b.chunks_exact(LANES).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

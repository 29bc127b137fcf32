//! Rotary position embedding, applied in place to rows laid out [seq][heads][head_dim], in
//! either pairing layout.

use selfroute_core::RopeLayout;

pub struct Rope {
    /// [position][head_dim / 2]
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    layout: RopeLayout,
}

impl Rope {
    /// Tables for `max_positions` positions, built once.
    pub fn new(head_dim: usize, theta: f32, max_positions: usize, layout: RopeLayout) -> Self {
        let half = head_dim / 2;
        let (cos, sin) = selfroute_core::rope::angles(head_dim, theta, max_positions)
            .map(|a| (a.cos() as f32, a.sin() as f32))
            .unzip();
        Self {
            cos,
            sin,
            half,
            layout,
        }
    }

    /// Rotates `x` ([seq][heads][head_dim], flattened) for positions start..start+seq.
    pub fn apply(&self, x: &mut [f32], heads: usize, start: usize) {
        let head_dim = 2 * self.half;
        for (t, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let pos = start + t;
            let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
            let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
            for head in row.chunks_exact_mut(head_dim) {
                match self.layout {
                    // Pairs (2i, 2i+1): llama.cpp's permuted Q/K rows.
                    RopeLayout::Interleaved => {
                        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * cos[i] - b * sin[i];
                            pair[1] = a * sin[i] + b * cos[i];
                        }
                    }
                    // Pairs (i, i + head_dim/2): Hugging Face's rotate-half.
                    RopeLayout::Half => {
                        let (lo, hi) = head.split_at_mut(self.half);
                        for i in 0..self.half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        }
    }
}

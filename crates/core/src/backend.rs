//! The seam between the generation loop and a forward-pass engine (candle on CPU, wgpu on GPU).

use std::future::Future;

use crate::config::ModelConfig;
use crate::error::Result;

/// Which positions of a forward call need logits. Decoding needs only the last; parity tests and
/// scoring need all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    Last,
    All,
}

/// Row-major logits, `rows` x `vocab`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.vocab..(i + 1) * self.vocab)
    }

    pub fn last_row_mut(&mut self) -> Option<&mut [f32]> {
        let start = self.rows.checked_sub(1)? * self.vocab;
        self.data.get_mut(start..start + self.vocab)
    }
}

/// A model instance with its KV cache.
///
/// `forward` is async because in the browser a GPU readback can only be awaited; CPU engines
/// return a ready future. The futures need not be `Send`: the browser is single-threaded.
pub trait Backend {
    fn config(&self) -> &ModelConfig;

    /// Runs `tokens` at positions `start_pos..start_pos + tokens.len()`, extending the KV cache,
    /// which must hold exactly `start_pos` positions before the call.
    fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> impl Future<Output = Result<Logits>>;

    /// Keeps the first `len` cached positions and forgets the rest (0 clears the cache).
    fn truncate_cache(&mut self, len: usize);
}

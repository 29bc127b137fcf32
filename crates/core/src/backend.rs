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

/// How to pick the next token from the last row of logits, handed to a backend that can pick it
/// where the logits are (a GPU reads back one id instead of the whole vocabulary).
///
/// `uniform` is the random number in [0, 1) the draw uses, taken from the generation loop's seeded
/// RNG, so a device pick and the CPU [`crate::Sampler`] given the same seed choose the same token
/// (up to float rounding at the boundary of a cut).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenPick<'a> {
    /// 0 means greedy (the first maximum).
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    pub uniform: f64,
    /// Added to logits before picking (negative infinity forbids a token).
    pub logit_bias: &'a [(u32, f32)],
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

    /// Like `forward` with [`LogitsFor::Last`], then picks the next token on the device. Only
    /// called when [`Backend::picks_on_device`] is true; engines without a device sampler keep
    /// this default, which says so.
    fn forward_pick(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> impl Future<Output = Result<u32>> {
        let _ = (tokens, start_pos, pick);
        async {
            Err(crate::error::Error::Backend(
                crate::error::BackendError::new(
                    crate::error::BackendErrorKind::Unsupported,
                    "this engine cannot pick tokens on its device",
                ),
            ))
        }
    }

    /// Whether `forward_pick` is available. The loop still uses `forward` and the CPU sampler for
    /// settings a device pick cannot express (a repetition penalty needs the history).
    fn picks_on_device(&self) -> bool {
        false
    }

    /// Keeps the first `len` cached positions and forgets the rest (0 clears the cache).
    fn truncate_cache(&mut self, len: usize);
}

/// One of the sequences a [`BatchBackend`] holds. Ids are never reused while the backend lives,
/// so a stale id is an error, not someone else's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// One row of a batched decode step: `token` at position `pos` of sequence `seq`, whose cache
/// must hold exactly `pos` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStep {
    pub seq: SeqId,
    pub token: u32,
    pub pos: usize,
}

/// A model that holds several independent sequences (each its own KV cache and position) over
/// one set of weights and decodes them together: one forward pass per step for every sequence
/// in flight (continuous batching). The rows share the weight reads, which is what makes a batch
/// of B cheaper than B single steps.
///
/// Synchronous, unlike [`Backend`]: it is driven by a scheduler on a native worker thread that
/// owns the model (a server, the trainer's rollouts), where there is nothing to await.
pub trait BatchBackend {
    fn batch_config(&self) -> &ModelConfig;

    /// A new, empty sequence. Fails where the engine cannot hold several sequences.
    fn new_sequence(&mut self) -> Result<SeqId>;

    /// Forgets a sequence and frees its cache; an unknown id is ignored.
    fn drop_sequence(&mut self, seq: SeqId);

    /// Keeps the first `len` positions of a sequence's cache, so a scheduler can reuse a finished
    /// sequence's prompt prefix for a new request. Unsupported by default: a scheduler then
    /// simply starts every sequence from an empty cache.
    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let _ = (seq, len);
        Err(crate::Error::Backend(crate::BackendError::new(
            crate::BackendErrorKind::Unsupported,
            "this engine cannot truncate a sequence's cache",
        )))
    }

    /// Runs `tokens` of one sequence at `start_pos..` (a prompt, or a chunk of one) and returns
    /// the logits of the last position (one row).
    fn prefill(&mut self, seq: SeqId, tokens: &[u32], start_pos: usize) -> Result<Logits>;

    /// One token for each step's sequence in one forward pass; row `i` belongs to `steps[i]`.
    /// A sequence may appear at most once.
    fn decode(&mut self, steps: &[BatchStep]) -> Result<Logits>;
}

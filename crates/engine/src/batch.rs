//! Continuous batching: several sequences decoded together, one forward pass per step for all
//! of them, on any [`BatchBackend`].
//!
//! [`Scheduler`] is the I/O-free core: requests wait in arrival order, join between steps while
//! fewer than [`BatchOptions::max_sequences`] are in flight, and leave at once when they finish
//! (a stop token, their token limit, a full context) or are cancelled (their [`CancelToken`], or
//! their [`TokenSink`] answering [`Flow::Stop`]). A new request's prompt runs on its own
//! (`BatchBackend::prefill`), in chunks of at most [`BatchOptions::prefill_chunk`] tokens per step
//! so that a long prompt delays the others' next token by one chunk, not by the whole prompt; the
//! sequences already decoding then take their step together (`BatchBackend::decode`).
//!
//! A finished sequence is parked rather than dropped: its cache and the token ids in it stay,
//! and the next request whose prompt shares a prefix with it (a chat template's system prompt,
//! a conversation's earlier turns) takes that cache over, cut back to the common prefix, and
//! prefills only the rest. Parked caches count against `max_sequences` (running plus parked
//! never exceed it, so memory is bounded exactly as without reuse), at most `MAX_PARKED` of
//! them, and the least recently parked is dropped first when a new sequence needs the room.
//!
//! Each sequence picks its tokens through its own [`TokenPicker`] (core's [`Sampler`] by
//! default, [`SamplerPicker`]), so penalties, logit bias and log-probabilities attach per
//! request. [`crate::BatchWorker`] runs a scheduler on its own thread for a server or the
//! trainer (native builds only).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use selfroute_core::backend::{BatchBackend, BatchStep, SeqId};
use selfroute_core::{FinishReason, Sampler};

/// Finished sequences kept for prefix reuse at most: a few cover a server's handful of system
/// prompts, and every one kept is a full cache held while idle.
const MAX_PARKED: usize = 4;

/// Shortest common prefix worth taking a parked cache over for: a match of a token or two (a
/// BOS) saves nothing and would spend a cache that a later request may share far more with.
const MIN_REUSED_PREFIX: usize = 4;

/// How many sequences share a step and how much prompt runs between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Sequences decoding at once; later requests wait for a place.
    pub max_sequences: usize,
    /// Prompt tokens run per step (over all joining sequences), so that the sequences in flight
    /// keep getting tokens while a long prompt is read.
    pub prefill_chunk: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_sequences: 16,
            prefill_chunk: 256,
        }
    }
}

/// One token a sequence picked, with whatever its picker measured about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub token: u32,
    /// The token's log-probability, where the picker computes it.
    pub logprob: Option<f32>,
    /// The most likely alternatives (token, log-probability), where the picker computes them.
    pub top_logprobs: Vec<(u32, f32)>,
}

impl Picked {
    pub fn token(token: u32) -> Self {
        Self {
            token,
            logprob: None,
            top_logprobs: Vec::new(),
        }
    }
}

/// Picks a sequence's next token from its row of logits.
pub trait TokenPicker: Send {
    /// `history` is the prompt and every token picked so far; `logits` may be modified.
    fn pick(&mut self, logits: &mut [f32], history: &[u32]) -> selfroute_core::Result<Picked>;
}

/// Core's [`Sampler`] with a logit bias added first (as a server masks the offload token).
pub struct SamplerPicker {
    sampler: Sampler,
    logit_bias: Vec<(u32, f32)>,
}

impl SamplerPicker {
    pub fn new(sampler: Sampler, logit_bias: Vec<(u32, f32)>) -> Self {
        Self {
            sampler,
            logit_bias,
        }
    }
}

impl TokenPicker for SamplerPicker {
    fn pick(&mut self, logits: &mut [f32], history: &[u32]) -> selfroute_core::Result<Picked> {
        for (token, bias) in &self.logit_bias {
            // A bias for a token past the vocabulary has nothing to move.
            if let Some(l) = logits.get_mut(*token as usize) {
                *l += bias;
            }
        }
        Ok(Picked::token(self.sampler.sample(logits, history)?))
    }
}

/// Why a sequence ended, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a sequence's sink hears: its tokens as they are picked, then exactly one of
/// `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceEvent {
    Token(Picked),
    Finished(Finished),
    Failed(String),
}

/// Whether the receiver wants more tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The receiver is done (its client left, a stop string appeared): the sequence leaves
    /// before the next step and its sink hears `Finished` with [`FinishReason::Cancelled`].
    Stop,
}

/// Where a sequence's events go; runs on the scheduler's thread, so it should only hand the
/// event on (a channel send).
pub trait TokenSink: Send {
    fn send(&mut self, event: SequenceEvent) -> Flow;

    /// Called once when the request leaves the queue for a place in the batch, before its
    /// prompt runs: how a server measures queueing apart from prefill. Nothing by default.
    fn admitted(&mut self) {}
}

impl<F: FnMut(SequenceEvent) -> Flow + Send> TokenSink for F {
    fn send(&mut self, event: SequenceEvent) -> Flow {
        self(event)
    }
}

impl TokenSink for std::sync::mpsc::Sender<SequenceEvent> {
    fn send(&mut self, event: SequenceEvent) -> Flow {
        match std::sync::mpsc::Sender::send(self, event) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

/// Cancels a sequence from any thread; the scheduler sees it before its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request to generate: a tokenized prompt and its limits.
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Tokens that end the sequence when picked (EOS, end of turn); they are not sent.
    pub stop_tokens: Vec<u32>,
    pub picker: Box<dyn TokenPicker>,
}

/// A request with the places its events go and its cancellation comes from.
pub struct Submission {
    pub request: SequenceRequest,
    pub sink: Box<dyn TokenSink>,
    pub cancel: CancelToken,
}

struct Waiting {
    submission: Submission,
}

struct Running {
    seq: SeqId,
    /// Prompt, then every token picked; the last one is fed at the next step.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Prompt tokens already in the cache (a reused prefix starts it above zero).
    prefilled: usize,
    /// Positions in the cache: `tokens[..cached]` is what a parked copy may offer for reuse (the
    /// last picked token is not fed until the next step).
    cached: usize,
    /// Whether the cache is known to hold exactly `tokens[..cached]`; an engine error leaves
    /// that in doubt, so such a sequence is dropped, not parked.
    reusable: bool,
    generated: usize,
    max_tokens: usize,
    stop_tokens: Vec<u32>,
    picker: Box<dyn TokenPicker>,
    sink: Box<dyn TokenSink>,
    cancel: CancelToken,
    /// Set when the sequence ends; it leaves at the end of the step.
    ended: bool,
}

impl Running {
    fn finish(&mut self, reason: FinishReason) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.sink.send(SequenceEvent::Finished(Finished {
            reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
        }));
    }

    fn fail(&mut self, message: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.reusable = false;
        self.sink.send(SequenceEvent::Failed(message));
    }

    fn decoding(&self) -> bool {
        !self.ended && self.prefilled == self.prompt_len
    }

    /// Picks the next token from this sequence's logits row and sends it, or ends the sequence.
    fn take_pick(&mut self, row: &mut [f32], context: usize) {
        let picked = match self.picker.pick(row, &self.tokens) {
            Ok(picked) => picked,
            Err(e) => return self.fail(e.to_string()),
        };
        if self.stop_tokens.contains(&picked.token) {
            return self.finish(FinishReason::Stop);
        }
        let token = picked.token;
        self.generated += 1;
        if self.sink.send(SequenceEvent::Token(picked)) == Flow::Stop {
            return self.finish(FinishReason::Cancelled);
        }
        self.tokens.push(token);
        if self.generated >= self.max_tokens {
            self.finish(FinishReason::Length);
        } else if self.tokens.len() > context {
            // The picked token would be fed at position tokens.len() - 1: past the context.
            self.finish(FinishReason::ContextFull);
        }
    }
}

/// Sequences in flight over one [`BatchBackend`]; see the module documentation.
pub struct Scheduler<B: BatchBackend> {
    backend: B,
    options: BatchOptions,
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    /// Finished sequences kept for prefix reuse, least recently parked first.
    parked: VecDeque<Parked>,
}

/// A finished sequence's cache, which holds exactly `tokens`.
struct Parked {
    seq: SeqId,
    tokens: Vec<u32>,
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<B: BatchBackend> Scheduler<B> {
    pub fn new(backend: B, options: BatchOptions) -> Self {
        Self {
            backend,
            options: BatchOptions {
                max_sequences: options.max_sequences.max(1),
                prefill_chunk: options.prefill_chunk.max(1),
            },
            waiting: VecDeque::new(),
            running: Vec::new(),
            parked: VecDeque::new(),
        }
    }

    /// Queues a request; it joins at the next step with a free place.
    pub fn submit(&mut self, submission: Submission) {
        self.waiting.push_back(Waiting { submission });
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Requests not yet admitted.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences in flight.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Finished sequences whose caches are kept for prefix reuse.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Gives the backend back (after the last step), without the parked sequences' caches.
    pub fn into_backend(mut self) -> B {
        for p in self.parked.drain(..) {
            self.backend.drop_sequence(p.seq);
        }
        self.backend
    }

    /// One round: admit waiting requests, drop cancelled sequences, run one prompt chunk, then
    /// one decode step for every sequence past its prompt, and let finished sequences leave.
    pub fn step(&mut self) {
        self.admit();
        for r in &mut self.running {
            if r.cancel.is_cancelled() {
                r.finish(FinishReason::Cancelled);
            }
        }
        self.leave();
        self.prefill();
        self.decode();
        self.leave();
    }

    /// Moves waiting requests into free places (also the first thing [`Scheduler::step`] does):
    /// a caller that counts its queue calls it before the step, so a request stops counting as
    /// queued when it gets its place, not after the step's forward passes.
    pub fn admit(&mut self) {
        let context = self.backend.batch_config().context_length;
        while self.running.len() < self.options.max_sequences {
            let Some(Waiting { submission }) = self.waiting.pop_front() else {
                break;
            };
            let Submission {
                request,
                mut sink,
                cancel,
            } = submission;
            let finished = |reason| {
                SequenceEvent::Finished(Finished {
                    reason,
                    prompt_tokens: request.prompt.len(),
                    completion_tokens: 0,
                })
            };
            if request.prompt.is_empty() {
                sink.send(SequenceEvent::Failed("the prompt is empty".into()));
                continue;
            }
            if request.prompt.len() >= context {
                // No room for a single generated token.
                sink.send(finished(FinishReason::ContextFull));
                continue;
            }
            if request.max_tokens == 0 {
                sink.send(finished(FinishReason::Length));
                continue;
            }
            let (seq, reused) = match self.reuse(&request.prompt) {
                Some(reused) => reused,
                None => {
                    // Parked caches give way first: running plus parked stay within
                    // max_sequences.
                    while self.running.len() + self.parked.len() >= self.options.max_sequences {
                        match self.parked.pop_front() {
                            Some(p) => self.backend.drop_sequence(p.seq),
                            None => break,
                        }
                    }
                    match self.backend.new_sequence() {
                        Ok(seq) => (seq, 0),
                        Err(e) => {
                            sink.send(SequenceEvent::Failed(e.to_string()));
                            continue;
                        }
                    }
                }
            };
            sink.admitted();
            self.running.push(Running {
                seq,
                prompt_len: request.prompt.len(),
                tokens: request.prompt,
                prefilled: reused,
                cached: reused,
                reusable: true,
                generated: 0,
                max_tokens: request.max_tokens,
                stop_tokens: request.stop_tokens,
                picker: request.picker,
                sink,
                cancel,
                ended: false,
            });
        }
    }

    /// Takes over the parked sequence sharing the longest prefix with `prompt` (at least
    /// `MIN_REUSED_PREFIX` tokens), cut back to that prefix: its id and the positions kept. At
    /// least the prompt's last token is left to run, so there are logits to pick from. Running
    /// the rest over the kept prefix is the same computation as the one-at-a-time path's prefix
    /// reuse; `None` when nothing fits (or the engine cannot truncate; that cache is dropped).
    fn reuse(&mut self, prompt: &[u32]) -> Option<(SeqId, usize)> {
        let limit = prompt.len().saturating_sub(1);
        let (index, len) = self
            .parked
            .iter()
            .enumerate()
            .map(|(i, p)| (i, common_prefix(&p.tokens, prompt).min(limit)))
            // The latest parked wins a tie: it is the one least likely to be evicted next.
            .max_by_key(|&(i, len)| (len, i))?;
        if len < MIN_REUSED_PREFIX {
            return None;
        }
        let parked = self.parked.remove(index)?;
        match self.backend.truncate_sequence(parked.seq, len) {
            Ok(()) => Some((parked.seq, len)),
            Err(_) => {
                self.backend.drop_sequence(parked.seq);
                None
            }
        }
    }

    /// Runs up to `prefill_chunk` prompt tokens, oldest request first; a sequence whose prompt
    /// is complete picks its first token from the prompt's last logits.
    fn prefill(&mut self) {
        let context = self.backend.batch_config().context_length;
        let mut budget = self.options.prefill_chunk;
        for r in &mut self.running {
            if budget == 0 {
                break;
            }
            if r.ended || r.prefilled == r.prompt_len {
                continue;
            }
            let n = (r.prompt_len - r.prefilled).min(budget);
            let chunk = &r.tokens[r.prefilled..r.prefilled + n];
            match self.backend.prefill(r.seq, chunk, r.prefilled) {
                Ok(mut logits) => {
                    r.prefilled += n;
                    r.cached = r.prefilled;
                    budget -= n;
                    if r.prefilled == r.prompt_len {
                        match logits.last_row_mut() {
                            Some(row) => r.take_pick(row, context),
                            None => r.fail("the engine returned no logits".into()),
                        }
                    }
                }
                Err(e) => r.fail(e.to_string()),
            }
        }
    }

    /// One forward pass for every sequence past its prompt.
    fn decode(&mut self) {
        let context = self.backend.batch_config().context_length;
        let mut rows = Vec::new();
        let mut steps = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            // A sequence that picked its first token this step joins the same step.
            if r.decoding()
                && let Some(&token) = r.tokens.last()
            {
                rows.push(i);
                steps.push(BatchStep {
                    seq: r.seq,
                    token,
                    pos: r.tokens.len() - 1,
                });
            }
        }
        if steps.is_empty() {
            return;
        }
        match self.backend.decode(&steps) {
            Ok(mut logits) if logits.rows == steps.len() => {
                let vocab = logits.vocab;
                for (row, i) in logits.data.chunks_exact_mut(vocab).zip(rows) {
                    if let Some(r) = self.running.get_mut(i) {
                        // The fed token is in the cache now, whatever the pick does.
                        r.cached += 1;
                        r.take_pick(row, context);
                    }
                }
            }
            Ok(logits) => {
                let message = format!(
                    "the engine returned {} rows of logits for {} sequences",
                    logits.rows,
                    steps.len()
                );
                for i in rows {
                    if let Some(r) = self.running.get_mut(i) {
                        r.fail(message.clone());
                    }
                }
            }
            Err(e) => {
                for i in rows {
                    if let Some(r) = self.running.get_mut(i) {
                        r.fail(e.to_string());
                    }
                }
            }
        }
    }

    /// Ended sequences leave; their caches are parked for prefix reuse (the oldest parked one
    /// dropped past `MAX_PARKED`) or, when in doubt or empty, freed.
    fn leave(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].ended {
                i += 1;
                continue;
            }
            // `remove`, not `swap_remove`: the running order is the prefill order (oldest first).
            let mut r = self.running.remove(i);
            if !r.reusable || r.cached < MIN_REUSED_PREFIX || r.cached > r.tokens.len() {
                self.backend.drop_sequence(r.seq);
                continue;
            }
            r.tokens.truncate(r.cached);
            self.parked.push_back(Parked {
                seq: r.seq,
                tokens: r.tokens,
            });
            while self.parked.len() > MAX_PARKED {
                if let Some(p) = self.parked.pop_front() {
                    self.backend.drop_sequence(p.seq);
                }
            }
        }
    }
}

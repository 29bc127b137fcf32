//! The CPU engine's path: every choice of every request is one sequence of the engine's
//! continuous batch (`selfroute_engine::BatchWorker`), so concurrent requests share each forward
//! pass, a new one joins between two steps and a finished or abandoned one leaves at once.
//!
//! The token choice is the sequential path's, made per sequence by [`ServePicker`]: the same
//! sampler (penalties over the generated tokens, the seed), the same logit bias and the same raw
//! log-softmax, so a request gets the same tokens and numbers either way. Text is decoded and
//! checked against stop strings in [`ChoiceSink`], on the model's thread, exactly as
//! `Generator::generate` does it, so that a completed stop string ends the sequence before its
//! next step rather than one round trip later.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use selfroute_core::{
    FinishReason, GenerationParams, Sampler, StopStrings, TextStream, TokenLogprob, TokenLogprobs,
    Tokenizer,
};
use selfroute_engine::{
    Finished, Flow, Picked, SequenceEvent, SequenceRequest, TokenPicker, TokenSink,
};
use tokio::sync::mpsc;

use super::api::RequestId;
use super::local::{Done, JobEvent, logprob_entry};

/// Picks one sequence's tokens as `Generator::next_token` does on the host: bias on a copy of the
/// row, then core's sampler; log-probs from the raw row, before bias and sampler touch it.
pub struct ServePicker {
    sampler: Sampler,
    logit_bias: Vec<(u32, f32)>,
    /// Alternatives per token when the request asked for log-probs.
    top_logprobs: Option<usize>,
}

impl TokenPicker for ServePicker {
    fn pick(&mut self, logits: &mut [f32], history: &[u32]) -> selfroute_core::Result<Picked> {
        let raw = self.top_logprobs.map(|_| logits.to_vec());
        for &(id, bias) in &self.logit_bias {
            // Ids were checked against the vocabulary; a shorter row has nothing to move.
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        // The sampler sees the whole history but counts only its own picks for the presence and
        // frequency penalties (OpenAI's semantics): the same as the sequential path.
        let token = self.sampler.sample(logits, history)?;
        Ok(match self.top_logprobs.zip(raw) {
            Some((top, raw)) => {
                let measured = TokenLogprobs::from_logits(&raw, token, top);
                Picked {
                    token,
                    logprob: Some(measured.chosen.logprob),
                    top_logprobs: measured.top.iter().map(|t| (t.id, t.logprob)).collect(),
                }
            }
            None => Picked::token(token),
        })
    }
}

/// One sequence per choice, ready to submit. `context` bounds the generated tokens as the
/// sequential loop does (it stops once prompt + output fill the context; the scheduler would
/// take one token more), so both paths produce the same number of tokens.
pub fn sequence_request(
    prompt: &[u32],
    params: &GenerationParams,
    tokenizer: &Tokenizer,
    context: usize,
) -> selfroute_core::Result<SequenceRequest> {
    let picker = ServePicker {
        sampler: Sampler::new(params.sampling.clone())?,
        logit_bias: params.logit_bias.clone(),
        top_logprobs: params.logprobs,
    };
    Ok(SequenceRequest {
        prompt: prompt.to_vec(),
        max_tokens: params
            .max_new_tokens
            .min(context.saturating_sub(prompt.len())),
        stop_tokens: tokenizer
            .stop_token_ids()
            .iter()
            .chain(&params.extra_stop_tokens)
            .copied()
            .collect(),
        picker: Box::new(picker),
    })
}

/// What the choices of one request share: its channel to the HTTP side and its totals. All its
/// sinks run on the model's thread, so the lock is never contended; it only makes the sharing
/// sound.
pub struct RequestState {
    id: RequestId,
    stream: bool,
    events: mpsc::UnboundedSender<JobEvent>,
    queued_at: Instant,
    /// The server's clock for the log's timestamps.
    epoch: Instant,
    /// Choices not yet finished; the last one to finish sends `Done`.
    remaining: u32,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: FinishReason,
    failure: Option<String>,
}

impl RequestState {
    pub fn shared(
        id: RequestId,
        stream: bool,
        events: mpsc::UnboundedSender<JobEvent>,
        queued_at: Instant,
        epoch: Instant,
        choices: u32,
        prompt_tokens: usize,
    ) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            id,
            stream,
            events,
            queued_at,
            epoch,
            remaining: choices,
            admitted: None,
            first_token: None,
            prompt_tokens,
            completion_tokens: 0,
            finish: FinishReason::Stop,
            failure: None,
        }))
    }

    /// One choice is over; after the last, the request's end goes out and is logged.
    fn choice_over(&mut self) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining > 0 {
            return;
        }
        let event = match self.failure.take() {
            Some(message) => {
                tracing::error!(request_id = %self.id.0, error = %message, "generation failed");
                JobEvent::Failed(message)
            }
            None => {
                let since = |t: Instant| (t - self.queued_at).as_secs_f64() * 1e3;
                let done = Done {
                    finish: self.finish,
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: self.completion_tokens,
                    queue_ms: self.admitted.map(since),
                    first_token_ms: self.first_token.map(since),
                    first_token_at_ms: self.first_token.map(|t| at_ms(self.epoch, t)),
                    done_at_ms: at_ms(self.epoch, Instant::now()),
                };
                // Logged here so that abandoned requests are logged too.
                done.log(&self.id.0, self.stream, self.events.is_closed());
                JobEvent::Done(done)
            }
        };
        let _ = self.events.send(event);
    }
}

/// Milliseconds from the server's start: comparable between requests.
pub fn at_ms(epoch: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(epoch).as_secs_f64() * 1e3
}

/// One choice's sink: decodes its tokens, holds back what may be the start of a stop string,
/// and hands the text to the HTTP side.
pub struct ChoiceSink {
    choice: u32,
    tokenizer: Arc<Tokenizer>,
    text: TextStream,
    stops: StopStrings,
    stopped_by_text: bool,
    /// A decoding error: the choice ends, and the request fails once all its choices are over.
    failure: Option<String>,
    request: Arc<Mutex<RequestState>>,
}

impl ChoiceSink {
    pub fn new(
        choice: u32,
        tokenizer: Arc<Tokenizer>,
        stop: &[String],
        request: Arc<Mutex<RequestState>>,
    ) -> Self {
        Self {
            choice,
            tokenizer,
            text: TextStream::new(),
            stops: StopStrings::new(stop),
            stopped_by_text: false,
            failure: None,
            request,
        }
    }

    fn token(&mut self, picked: Picked) -> Flow {
        let mut request = self.request.lock().unwrap_or_else(PoisonError::into_inner);
        request.first_token.get_or_insert_with(Instant::now);
        let mut delta = match self.text.push(&self.tokenizer, picked.token) {
            Ok(delta) => delta.unwrap_or_default(),
            Err(e) => {
                self.failure = Some(e.to_string());
                return Flow::Stop;
            }
        };
        if !self.stops.is_empty() {
            let released = self.stops.push(&delta);
            delta = released.text;
            self.stopped_by_text = released.stopped;
        }
        let logprobs = picked.logprob.map(|logprob| {
            logprob_entry(
                &self.tokenizer,
                &TokenLogprobs {
                    chosen: TokenLogprob {
                        id: picked.token,
                        logprob,
                    },
                    top: picked
                        .top_logprobs
                        .iter()
                        .map(|&(id, logprob)| TokenLogprob { id, logprob })
                        .collect(),
                },
            )
        });
        if (!delta.is_empty() || logprobs.is_some())
            && request
                .events
                .send(JobEvent::Text {
                    choice: self.choice,
                    text: delta,
                    logprobs,
                })
                .is_err()
        {
            return Flow::Stop; // the client left
        }
        if self.stopped_by_text || request.events.is_closed() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn finished(&mut self, finished: Finished) {
        let mut request = self.request.lock().unwrap_or_else(PoisonError::into_inner);
        let mut finish = finished.reason;
        if self.stopped_by_text {
            // The sink stopped the sequence: to the scheduler that is a cancellation.
            finish = FinishReason::Stop;
        } else if self.failure.is_none() {
            // Text held back at the end (an incomplete character, a possible stop string's
            // start) goes out with the last token, as the sequential path sends it; after a
            // stop string, what is held lies beyond it and is dropped.
            let mut rest = match self.text.finish(&self.tokenizer) {
                Ok(rest) => rest.unwrap_or_default(),
                Err(e) => {
                    self.failure = Some(e.to_string());
                    String::new()
                }
            };
            if !self.stops.is_empty() {
                let released = self.stops.push(&rest);
                rest = released.text;
                if released.stopped {
                    finish = FinishReason::Stop;
                } else {
                    rest.push_str(&self.stops.finish());
                }
            }
            if !rest.is_empty() && finished.completion_tokens > 0 {
                let _ = request.events.send(JobEvent::Text {
                    choice: self.choice,
                    text: rest,
                    logprobs: None,
                });
            }
        }
        match self.failure.take() {
            Some(message) => {
                request.failure.get_or_insert(message);
            }
            None => {
                request.prompt_tokens = finished.prompt_tokens;
                request.completion_tokens += finished.completion_tokens;
                request.finish = finish;
                let _ = request.events.send(JobEvent::ChoiceDone {
                    choice: self.choice,
                    finish,
                });
            }
        }
        request.choice_over();
    }
}

impl TokenSink for ChoiceSink {
    fn send(&mut self, event: SequenceEvent) -> Flow {
        match event {
            SequenceEvent::Token(picked) => self.token(picked),
            SequenceEvent::Finished(finished) => {
                self.finished(finished);
                Flow::Stop
            }
            SequenceEvent::Failed(message) => {
                let mut request = self.request.lock().unwrap_or_else(PoisonError::into_inner);
                request.failure.get_or_insert(message);
                request.choice_over();
                Flow::Stop
            }
        }
    }

    fn admitted(&mut self) {
        let mut request = self.request.lock().unwrap_or_else(PoisonError::into_inner);
        // The first choice's admission ends the request's queueing.
        request.admitted.get_or_insert_with(Instant::now);
    }
}

//! The generation loop: prefill (reusing the cached prefix of the previous call), then sample,
//! stream and stop. It is the same loop for every backend and for native and browser builds.

use crate::backend::{Backend, LogitsFor};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::logprobs::TokenLogprobs;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopStrings;
use crate::tokenizer::{TextStream, Tokenizer};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop tokens in addition to the tokenizer's own end-of-turn tokens.
    pub extra_stop_tokens: Vec<u32>,
    /// Added to a token's logit before sampling (negative infinity forbids it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Prompt tokens per forward call during prefill; bounds the attention scratch memory.
    pub prefill_chunk: usize,
    /// Texts that end the generation where they first appear (OpenAI's `stop`); neither they nor
    /// anything after them is output. Streamed text is held back while it could be the start of
    /// one.
    pub stop: Vec<String>,
    /// Report each token's log-probability with this many alternatives (see [`crate::logprobs`]);
    /// None for none. Picks then happen on the host, which needs the logits.
    pub logprobs: Option<usize>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            extra_stop_tokens: Vec::new(),
            logit_bias: Vec::new(),
            prefill_chunk: 256,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was sampled (it is not part of the output).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The model's context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// One generated token, with the text it completes (empty while a character is incomplete, or
/// while it could be the start of a stop string). A generation that ends with text still held back
/// ends with one more event for the last token carrying that text (and no log-probabilities).
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    pub id: u32,
    pub index: usize,
    pub text: &'a str,
    /// This token's log-probabilities, when [`GenerationParams::logprobs`] asked for them.
    pub logprobs: Option<&'a TokenLogprobs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached from the previous call.
    pub reused_prompt_tokens: usize,
    /// One entry per token of `tokens` when [`GenerationParams::logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprobs>,
}

/// A backend plus what its KV cache currently holds, so a follow-up prompt that extends the last
/// conversation only pays for its new tokens.
pub struct Generator<B: Backend> {
    backend: B,
    cached: Vec<u32>,
}

impl<B: Backend> Generator<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            cached: Vec::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        self.cached.clear();
        self.backend.truncate_cache(0);
        &mut self.backend
    }

    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Generates a continuation of `prompt`, calling `on_token` for every token.
    pub async fn generate(
        &mut self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_token: impl FnMut(TokenEvent<'_>) -> Control,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let context = self.backend.config().context_length;
        let vocab = self.backend.config().vocab_size;
        if prompt.len() >= context {
            return Err(Error::PromptTooLong {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Tokenize(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut sampler = Sampler::new(params.sampling.clone())?;

        // Reuse the cached prefix, but always run at least the last prompt token to get logits.
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.backend.truncate_cache(common);
        self.cached.truncate(common);

        let chunk = params.prefill_chunk.max(1);
        let last_chunk = common + (prompt.len() - 1 - common) / chunk * chunk;
        let mut pos = common;
        while pos < last_chunk {
            let end = pos + chunk;
            let step = self
                .backend
                .forward(&prompt[pos..end], pos, LogitsFor::Last)
                .await;
            if let Err(e) = step {
                self.forget_cache();
                return Err(e);
            }
            self.cached.extend_from_slice(&prompt[pos..end]);
            pos = end;
        }
        let first = self
            .next_token(&prompt[pos..], pos, &mut sampler, params, prompt)
            .await;
        let mut pending: Option<(u32, Option<TokenLogprobs>)> = match first {
            Ok(t) => Some(t),
            Err(e) => {
                self.forget_cache();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(&prompt[pos..]);

        let stop_tokens: Vec<u32> = tokenizer
            .stop_token_ids()
            .iter()
            .chain(&params.extra_stop_tokens)
            .copied()
            .collect();
        let mut history: Vec<u32> = prompt.to_vec();
        let mut out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            prompt_tokens: prompt.len(),
            reused_prompt_tokens: common,
            logprobs: Vec::new(),
        };
        let mut stream = TextStream::new();
        let mut stops = StopStrings::new(&params.stop);
        let mut stopped_by_text = false;
        loop {
            if out.tokens.len() >= params.max_new_tokens {
                out.finish_reason = FinishReason::Length;
                break;
            }
            let Some((next, logprobs)) = pending.take() else {
                break;
            };
            if stop_tokens.contains(&next) {
                out.finish_reason = FinishReason::Stop;
                break;
            }
            history.push(next);
            out.tokens.push(next);
            let mut delta = stream.push(tokenizer, next)?.unwrap_or_default();
            if !stops.is_empty() {
                let released = stops.push(&delta);
                delta = released.text;
                stopped_by_text = released.stopped;
            }
            out.text.push_str(&delta);
            let control = on_token(TokenEvent {
                id: next,
                index: out.tokens.len() - 1,
                text: &delta,
                logprobs: logprobs.as_ref(),
            });
            out.logprobs.extend(logprobs);
            if stopped_by_text {
                out.finish_reason = FinishReason::Stop;
                break;
            }
            if control == Control::Stop {
                out.finish_reason = FinishReason::Cancelled;
                break;
            }
            if history.len() >= context {
                out.finish_reason = FinishReason::ContextFull;
                break;
            }
            if out.tokens.len() >= params.max_new_tokens {
                continue;
            }
            let step = self
                .next_token(&[next], history.len() - 1, &mut sampler, params, &history)
                .await;
            match step {
                Ok(t) => {
                    self.cached.push(next);
                    pending = Some(t);
                }
                Err(e) => {
                    self.forget_cache();
                    return Err(e);
                }
            }
        }
        // Text held back because the output ended inside a character or inside what might have
        // been a stop string: hand it over with the last token again, so the streamed text always
        // equals `out.text`. After a stop string, what is held lies beyond it and is dropped.
        if !stopped_by_text {
            let mut rest = stream.finish(tokenizer)?.unwrap_or_default();
            if !stops.is_empty() {
                let released = stops.push(&rest);
                rest = released.text;
                if released.stopped {
                    out.finish_reason = FinishReason::Stop;
                } else {
                    rest.push_str(&stops.finish());
                }
            }
            if let (false, Some(&last)) = (rest.is_empty(), out.tokens.last()) {
                out.text.push_str(&rest);
                on_token(TokenEvent {
                    id: last,
                    index: out.tokens.len() - 1,
                    text: &rest,
                    logprobs: None,
                });
            }
        }
        Ok(out)
    }

    /// Runs `tokens` and chooses the token after them, on the device when it can pick with these
    /// settings, else from the logits on the host; either way one RNG draw per sampled token.
    async fn next_token(
        &mut self,
        tokens: &[u32],
        pos: usize,
        sampler: &mut Sampler,
        params: &GenerationParams,
        history: &[u32],
    ) -> Result<(u32, Option<TokenLogprobs>)> {
        // Sampling where the logits are when the engine can (a GPU then reads back one id); asked
        // per token, since an engine may move to the host mid-answer (a lost GPU). Log-probs need
        // the whole row on the host.
        if params.logprobs.is_none()
            && self.backend.picks_on_device()
            && let Some(pick) = sampler.device_pick(&params.logit_bias)
        {
            return Ok((self.backend.forward_pick(tokens, pos, &pick).await?, None));
        }
        let mut logits = self.backend.forward(tokens, pos, LogitsFor::Last).await?;
        let row = logits.last_row_mut().ok_or_else(|| {
            Error::Backend(BackendError::new(
                BackendErrorKind::Failed,
                "backend returned no logits",
            ))
        })?;
        // The model's own distribution, before the bias and the sampler change the row.
        let raw = params.logprobs.map(|_| row.to_vec());
        for &(id, bias) in &params.logit_bias {
            if let Some(l) = row.get_mut(id as usize) {
                *l += bias;
            }
        }
        let id = sampler.sample(row, history)?;
        let logprobs = params
            .logprobs
            .zip(raw)
            .map(|(top, raw)| TokenLogprobs::from_logits(&raw, id, top));
        Ok((id, logprobs))
    }

    fn forget_cache(&mut self) {
        self.cached.clear();
        self.backend.truncate_cache(0);
    }
}

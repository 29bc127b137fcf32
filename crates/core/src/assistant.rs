//! The routing session: the local model answers, or signals offload and the conversation goes to
//! the cloud; whatever the cloud does, the user gets an answer.
//!
//! One turn ([`Assistant::chat`]):
//! 1. If a cloud is configured and the budget allows a call, the local model may offload: the
//!    offload token gets the configured bias, and for prompt-only routing the offload instruction
//!    is added to the local prompt (never to the cloud's). Otherwise the offload token is masked
//!    and no instruction is given, so the model answers itself.
//! 2. Local generation streams [`RouteEvent::LocalText`] through an [`OffloadDetector`] and stops
//!    at the first signal.
//! 3. On a signal the cloud receives the original conversation (only: the local draft is not
//!    sent unless [`RoutingConfig::send_local_draft`]) and streams [`RouteEvent::CloudText`].
//! 4. If the cloud fails in any way, [`RouteEvent::CloudFailed`] says so and the model answers
//!    locally with offload masked ([`Route::Fallback`]).
//!
//! No tokio and no I/O here: the cloud is a [`CloudClient`], so the browser runs this same code.

use serde::Serialize;
use web_time::Instant;

use crate::backend::Backend;
use crate::budget::CloudBudget;
use crate::chat::{ChatTemplate, Message, Role};
use crate::cloud::{CloudClient, CloudError, CloudReply};
use crate::error::{Error, Result};
use crate::generate::{Control, FinishReason, GenerationParams, Generator};
use crate::offload::{
    DEFAULT_OFFLOAD_MARKER, Detection, OffloadDetector, OffloadReason, OffloadSignal, bias_offload,
    mask_offload,
};
use crate::openai::ChatRequest;
use crate::tokenizer::Tokenizer;

/// The system instruction of the paper's prompt-only baseline, for models without the token.
pub fn default_offload_instruction() -> String {
    format!(
        "If you are not sure you can answer correctly, reply with exactly \
         {DEFAULT_OFFLOAD_MARKER} and nothing else."
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Local generation settings (also used for the fallback answer).
    pub generation: GenerationParams,
    /// Added to the offload token's logit while offloading is allowed; positive offloads more.
    /// Sweeping it traces the accuracy-vs-cloud-share curve.
    pub offload_bias: f32,
    /// The `model` field of cloud requests.
    pub cloud_model: String,
    pub cloud_max_tokens: Option<u32>,
    pub cloud_temperature: Option<f32>,
    /// Appends the local model's partial answer (text before the signal) to the cloud request as
    /// a final system note. Off by default: the paper sends the original conversation only.
    pub send_local_draft: bool,
    /// System text given to the local model (only) while it may offload: prompt-only routing for
    /// models without the offload token, e.g. [`default_offload_instruction`]. Joined to the
    /// conversation's own system message when there is one.
    pub offload_instruction: Option<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            generation: GenerationParams::default(),
            offload_bias: 0.0,
            cloud_model: "default".to_string(),
            cloud_max_tokens: None,
            cloud_temperature: None,
            send_local_draft: false,
            offload_instruction: None,
        }
    }
}

/// Where a turn's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The local model answered.
    Local,
    /// The model offloaded and the cloud answered.
    Cloud,
    /// The model offloaded, the cloud was unavailable, and the model answered with offload
    /// masked (`cloud_unavailable`).
    Fallback,
}

/// Why a local answer is local, when the model had no free choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalReason {
    /// No cloud is configured.
    NoCloud,
    /// The cloud budget for the window is spent; offload was masked.
    BudgetExhausted,
    /// The model asked for the cloud, which failed.
    CloudUnavailable,
    /// The model asked for the cloud, and the [`OffloadGate`] (the user or host page) said no.
    OffloadDeclined,
}

/// Asked before a conversation leaves the device: a host page may veto sending it out. In the
/// browser the answer comes from another thread, so it is awaited.
pub trait OffloadGate {
    fn approve(&mut self, reason: OffloadReason) -> impl std::future::Future<Output = bool>;
}

/// The gate of [`Assistant::chat`]: every offload the model asks for (within the budget) goes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproveAll;

impl OffloadGate for ApproveAll {
    async fn approve(&mut self, _reason: OffloadReason) -> bool {
        true
    }
}

/// Everything a turn streams, in order.
#[derive(Debug)]
pub enum RouteEvent<'a> {
    /// Text of the local answer (never a part of the offload marker).
    LocalText(&'a str),
    /// The model signalled offload; the cloud is being asked. Local text shown so far was a draft.
    OffloadStarted { reason: OffloadReason },
    /// The model signalled offload but the gate declined; a local answer (offload masked) follows
    /// and local text shown so far was a draft.
    OffloadDeclined { reason: OffloadReason },
    /// Text of the cloud answer.
    CloudText(&'a str),
    /// The cloud failed; any cloud text shown is void and a local answer follows.
    CloudFailed { error: &'a CloudError },
    /// The turn is over.
    Done(&'a ChatOutcome),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatOutcome {
    /// The answer to append to the conversation as the assistant's message.
    pub answer: String,
    pub route: Route,
    /// Set when the answer is local without the model's free choice.
    pub local_reason: Option<LocalReason>,
    /// How the model signalled offload, if it did.
    pub offload_reason: Option<OffloadReason>,
    /// Why the cloud call failed, for [`Route::Fallback`].
    pub cloud_error: Option<String>,
    /// Tokens of the first local prompt (the rendered conversation).
    pub prompt_tokens: usize,
    /// Tokens the local model generated this turn (draft and fallback included).
    pub local_tokens: usize,
    /// Prompt tokens of the first local generation served from the KV cache of the last turn.
    pub reused_prompt_tokens: usize,
    /// Completion tokens of the cloud answer (its usage report, else its content chunks).
    pub cloud_tokens: u32,
    /// From the call to the first answer text shown (local or cloud).
    pub time_to_first_token_ms: Option<f64>,
    pub latency_ms: f64,
    /// Request bytes sent to the cloud, retries included.
    pub cloud_bytes_sent: u64,
    pub cloud_attempts: u32,
    /// The user stopped the turn (the answer holds what was shown).
    pub cancelled: bool,
}

/// A local model, a cloud, and the budget between them.
pub struct Assistant<B: Backend, C: CloudClient> {
    generator: Generator<B>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    signal: OffloadSignal,
    cloud: Option<C>,
    config: RoutingConfig,
    budget: CloudBudget,
}

impl<B: Backend, C: CloudClient> Assistant<B, C> {
    /// `cloud` None answers everything locally. `signal` says what counts as an offload (see
    /// [`OffloadSignal::from_tokenizer`]).
    pub fn new(
        backend: B,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        signal: OffloadSignal,
        cloud: Option<C>,
        config: RoutingConfig,
        budget: CloudBudget,
    ) -> Result<Self> {
        if !config.offload_bias.is_finite() {
            return Err(Error::InvalidRouting(format!(
                "offload bias {} must be finite",
                config.offload_bias
            )));
        }
        if config.offload_instruction.is_some() && signal.marker.is_none() {
            return Err(Error::InvalidRouting(
                "an offload instruction needs a text marker to watch for".into(),
            ));
        }
        Ok(Self {
            generator: Generator::new(backend),
            tokenizer,
            template,
            signal,
            cloud,
            config,
            budget,
        })
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut RoutingConfig {
        &mut self.config
    }

    pub fn budget(&self) -> &CloudBudget {
        &self.budget
    }

    pub fn signal(&self) -> &OffloadSignal {
        &self.signal
    }

    pub fn has_cloud(&self) -> bool {
        self.cloud.is_some()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The engine, for status (which device, how fast).
    pub fn backend(&self) -> &B {
        self.generator.backend()
    }

    /// Forgets the KV cache: the next turn starts from an empty context.
    pub fn forget_context(&mut self) {
        self.generator.backend_mut();
    }

    /// Answers the last message of `messages`. The conversation is never modified: append
    /// `outcome.answer` as the assistant's message to go on. An `Err` means the local model itself
    /// failed (the conversation is still as it was).
    pub async fn chat(
        &mut self,
        messages: &[Message],
        on_event: impl FnMut(RouteEvent<'_>) -> Control,
    ) -> Result<ChatOutcome> {
        self.chat_gated(messages, &mut ApproveAll, on_event).await
    }

    /// [`Assistant::chat`], asking `gate` before the conversation goes to the cloud. A declined
    /// offload is answered locally with offload masked ([`LocalReason::OffloadDeclined`]) and does
    /// not count against the budget.
    pub async fn chat_gated(
        &mut self,
        messages: &[Message],
        gate: &mut impl OffloadGate,
        mut on_event: impl FnMut(RouteEvent<'_>) -> Control,
    ) -> Result<ChatOutcome> {
        if messages.is_empty() {
            return Err(Error::InvalidConversation("there are no messages".into()));
        }
        let started = Instant::now();
        let mut first_text: Option<Instant> = None;
        let mut outcome = ChatOutcome {
            answer: String::new(),
            route: Route::Local,
            local_reason: None,
            offload_reason: None,
            cloud_error: None,
            prompt_tokens: 0,
            local_tokens: 0,
            reused_prompt_tokens: 0,
            cloud_tokens: 0,
            time_to_first_token_ms: None,
            latency_ms: 0.0,
            cloud_bytes_sent: 0,
            cloud_attempts: 0,
            cancelled: false,
        };

        let may_offload = self.signal.is_enabled() && self.cloud.is_some() && {
            let allowed = self.budget.allows_cloud();
            if !allowed {
                outcome.local_reason = Some(LocalReason::BudgetExhausted);
            }
            allowed
        };
        if self.cloud.is_none() {
            outcome.local_reason = Some(LocalReason::NoCloud);
        }

        let local = self
            .answer_locally(messages, may_offload, &mut first_text, &mut on_event)
            .await?;
        outcome.local_tokens += local.tokens;
        outcome.prompt_tokens = local.prompt_tokens;
        outcome.reused_prompt_tokens = local.reused_prompt_tokens;
        outcome.cancelled = local.cancelled;
        let Some(reason) = local.offload else {
            self.budget.record(false);
            outcome.answer = local.text;
            return Ok(self.finish(outcome, started, first_text, &mut on_event));
        };

        // The model asked for the cloud.
        outcome.offload_reason = Some(reason);
        if !gate.approve(reason).await {
            self.budget.record(false);
            outcome.local_reason = Some(LocalReason::OffloadDeclined);
            if on_event(RouteEvent::OffloadDeclined { reason }) == Control::Stop {
                outcome.cancelled = true;
                outcome.answer = local.text;
                return Ok(self.finish(outcome, started, first_text, &mut on_event));
            }
            let answer = self
                .answer_locally(messages, false, &mut first_text, &mut on_event)
                .await?;
            outcome.local_tokens += answer.tokens;
            outcome.cancelled = answer.cancelled;
            outcome.answer = answer.text;
            return Ok(self.finish(outcome, started, first_text, &mut on_event));
        }
        self.budget.record(true);
        if on_event(RouteEvent::OffloadStarted { reason }) == Control::Stop {
            outcome.cancelled = true;
            outcome.answer = local.text;
            return Ok(self.finish(outcome, started, first_text, &mut on_event));
        }
        let request = self.cloud_request(messages, &local.text);
        let reply = match &self.cloud {
            Some(cloud) => {
                cloud
                    .stream_chat(&request, &mut |text| {
                        first_text.get_or_insert_with(Instant::now);
                        on_event(RouteEvent::CloudText(text))
                    })
                    .await
            }
            None => CloudReply::not_sent(CloudError::NotConfigured),
        };
        outcome.cloud_bytes_sent = reply.bytes_sent;
        outcome.cloud_attempts = reply.attempts;
        match reply.result {
            Ok(completion) => {
                outcome.route = Route::Cloud;
                outcome.cloud_tokens = completion.completion_tokens;
                outcome.answer = completion.text;
            }
            Err(CloudError::Cancelled) => {
                outcome.route = Route::Cloud;
                outcome.cancelled = true;
            }
            Err(error) => {
                outcome.route = Route::Fallback;
                outcome.local_reason = Some(LocalReason::CloudUnavailable);
                outcome.cloud_error = Some(error.to_string());
                if on_event(RouteEvent::CloudFailed { error: &error }) == Control::Stop {
                    outcome.cancelled = true;
                    return Ok(self.finish(outcome, started, first_text, &mut on_event));
                }
                let fallback = self
                    .answer_locally(messages, false, &mut first_text, &mut on_event)
                    .await?;
                outcome.local_tokens += fallback.tokens;
                outcome.cancelled = fallback.cancelled;
                outcome.answer = fallback.text;
            }
        }
        Ok(self.finish(outcome, started, first_text, &mut on_event))
    }

    /// A plain generation without routing (nothing biased, masked or watched for): `text` as a
    /// user message through the chat template with `chat`, else as raw text. What `selfroute
    /// generate` does, for parity checks and plain completions over the same loaded model.
    pub async fn generate_plain(
        &mut self,
        text: &str,
        chat: bool,
        params: &GenerationParams,
        on_token: impl FnMut(crate::generate::TokenEvent<'_>) -> Control,
    ) -> Result<crate::generate::Generation> {
        let prompt = if chat {
            self.template
                .encode(&[Message::user(text)], true, &self.tokenizer)?
        } else {
            self.tokenizer.encode_literal(text)?
        };
        self.generator
            .generate(&self.tokenizer, &prompt, params, on_token)
            .await
    }

    fn finish(
        &self,
        mut outcome: ChatOutcome,
        started: Instant,
        first_text: Option<Instant>,
        on_event: &mut impl FnMut(RouteEvent<'_>) -> Control,
    ) -> ChatOutcome {
        outcome.time_to_first_token_ms = first_text.map(|t| ms(t - started));
        outcome.latency_ms = ms(started.elapsed());
        on_event(RouteEvent::Done(&outcome));
        outcome
    }

    /// One local generation. With `may_offload` the offload token is biased and watched for (and
    /// the instruction given); without, it is masked and nothing is watched for.
    async fn answer_locally(
        &mut self,
        messages: &[Message],
        may_offload: bool,
        first_text: &mut Option<Instant>,
        on_event: &mut impl FnMut(RouteEvent<'_>) -> Control,
    ) -> Result<LocalAnswer> {
        let mut params = self.config.generation.clone();
        let (mut detector, prompt_messages) = if may_offload {
            bias_offload(
                &mut params.logit_bias,
                &self.signal,
                self.config.offload_bias,
            )?;
            let with_instruction = self
                .config
                .offload_instruction
                .as_deref()
                .map(|instruction| with_system_text(messages, instruction));
            (
                OffloadDetector::new(&self.signal),
                with_instruction.unwrap_or_else(|| messages.to_vec()),
            )
        } else {
            mask_offload(&mut params.logit_bias, &self.signal);
            (
                OffloadDetector::new(&OffloadSignal::default()),
                messages.to_vec(),
            )
        };
        let prompt = self
            .template
            .encode(&prompt_messages, true, &self.tokenizer)?;

        let mut text = String::new();
        let mut user_stopped = false;
        let mut show = |piece: &str, text: &mut String| -> Control {
            if piece.is_empty() {
                return Control::Continue;
            }
            first_text.get_or_insert_with(Instant::now);
            text.push_str(piece);
            on_event(RouteEvent::LocalText(piece))
        };
        let generation = self
            .generator
            .generate(&self.tokenizer, &prompt, &params, |event| {
                match detector.push_event(&event) {
                    Detection::Continue { visible } => {
                        let control = show(&visible, &mut text);
                        user_stopped |= control == Control::Stop;
                        control
                    }
                    Detection::Offload { visible, .. } => {
                        user_stopped |= show(&visible, &mut text) == Control::Stop;
                        Control::Stop
                    }
                }
            })
            .await?;
        let offload = detector.offloaded();
        if offload.is_none() {
            let rest = detector.finish();
            show(&rest, &mut text);
        }
        Ok(LocalAnswer {
            text,
            tokens: generation.tokens.len(),
            prompt_tokens: generation.prompt_tokens,
            reused_prompt_tokens: generation.reused_prompt_tokens,
            offload: offload.filter(|_| !user_stopped),
            cancelled: user_stopped
                || (generation.finish_reason == FinishReason::Cancelled && offload.is_none()),
        })
    }

    fn cloud_request(&self, messages: &[Message], local_draft: &str) -> ChatRequest {
        let mut messages = messages.to_vec();
        if self.config.send_local_draft && !local_draft.trim().is_empty() {
            messages.push(Message::system(format!(
                "An on-device assistant began this answer and handed the question over. Its \
                 partial answer was:\n{local_draft}"
            )));
        }
        let mut request = ChatRequest::new(self.config.cloud_model.clone(), messages);
        request.stream = true;
        request.max_tokens = self.config.cloud_max_tokens;
        request.temperature = self.config.cloud_temperature;
        request
    }
}

struct LocalAnswer {
    /// Text shown (before the signal, when there was one).
    text: String,
    tokens: usize,
    prompt_tokens: usize,
    reused_prompt_tokens: usize,
    offload: Option<OffloadReason>,
    cancelled: bool,
}

/// `messages` with `text` joined to the leading system message, or in a new one.
fn with_system_text(messages: &[Message], text: &str) -> Vec<Message> {
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content = format!("{}\n\n{text}", first.content);
        }
        _ => out.insert(0, Message::system(text)),
    }
    out
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instruction_joins_the_system_message() {
        let joined = with_system_text(&[Message::system("Be brief."), Message::user("hi")], "X");
        assert_eq!(joined[0].content, "Be brief.\n\nX");
        assert_eq!(joined.len(), 2);
        let added = with_system_text(&[Message::user("hi")], "X");
        assert_eq!(added[0], Message::system("X"));
        assert_eq!(added[1], Message::user("hi"));
    }

    #[test]
    fn the_default_instruction_names_the_marker() {
        assert!(default_offload_instruction().contains(DEFAULT_OFFLOAD_MARKER));
    }
}

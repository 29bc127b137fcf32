//! The local backend. On the CPU engine every choice of every request is a sequence of one
//! continuous batch (see `batched`): concurrent requests share each forward pass. On the GPU
//! engine (or with `--no-batch`) one worker thread owns the model and answers queued requests in
//! order, one choice after another (each reuses the prompt's cached keys and values). Either
//! way tokens travel to the HTTP side over a channel, a full queue is a 503, and a client that
//! goes away stops its generation.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use selfroute_core::backend::BatchBackend;
use selfroute_core::logprobs::token_text_and_bytes;
use selfroute_core::offload::mask_offload;
use selfroute_core::openai::{
    ApiError, ChatChunk, ChatResponse, Choice, ChoiceLogprobs, ChunkChoice, Delta, LogprobEntry,
    ResponseMessage, TopLogprob, Usage,
};
use selfroute_core::{
    ChatTemplate, Control, Error as CoreError, FinishReason, GenerationParams, Generator,
    OffloadSignal, Role, TokenLogprobs, Tokenizer,
};
use selfroute_engine::{BatchOptions, BatchWorker, Engine, SequenceHandle};
use tokio::sync::mpsc;

use super::api::{Limits, RequestId, api_error_response, error_response};
use super::batched::{ChoiceSink, RequestState, at_ms, sequence_request};
use super::params::{LocalRequest, generation_params};
use crate::load::LoadedModel;

struct Job {
    id: RequestId,
    stream: bool,
    prompt: Vec<u32>,
    /// One entry per choice.
    params: Vec<GenerationParams>,
    queued_at: Instant,
    events: mpsc::UnboundedSender<JobEvent>,
}

pub enum JobEvent {
    /// New text of one choice, with the log-probs of the token it came with (when asked for).
    Text {
        choice: u32,
        text: String,
        logprobs: Option<LogprobEntry>,
    },
    ChoiceDone {
        choice: u32,
        finish: FinishReason,
    },
    Done(Done),
    Failed(String),
}

pub struct Done {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Over all choices.
    pub completion_tokens: usize,
    /// From arrival to a place in the batch (or the worker); None if it never got one.
    pub queue_ms: Option<f64>,
    /// From arrival to the first token, queueing included.
    pub first_token_ms: Option<f64>,
    /// When the first token came and when the request ended, in ms since the server started:
    /// lines up requests in the log (which ones overlapped, which waited).
    pub first_token_at_ms: Option<f64>,
    pub done_at_ms: f64,
}

impl Done {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.completion_tokens as u32,
            total_tokens: (self.prompt_tokens + self.completion_tokens) as u32,
        }
    }

    pub fn log(&self, request_id: &str, stream: bool, client_left: bool) {
        tracing::info!(
            request_id,
            stream,
            client_left,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            queue_ms = self.queue_ms,
            first_token_ms = self.first_token_ms,
            first_token_at_ms = self.first_token_at_ms,
            done_at_ms = self.done_at_ms,
            finish = finish_text(self.finish),
            "completion done"
        );
    }
}

/// How requests reach the model.
enum Mode {
    /// One request at a time, in arrival order (the GPU engine, or `--no-batch`).
    Sequential {
        jobs: mpsc::Sender<Job>,
        queued: Arc<AtomicUsize>,
    },
    /// Every choice a sequence of the engine's continuous batch (the CPU engine).
    Batched {
        worker: BatchWorker,
        max_queue: usize,
    },
}

pub struct LocalEngine {
    mode: Mode,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    /// As a cloud, the model answers: its offload token (if any) is masked.
    base_bias: Vec<(u32, f32)>,
    context: usize,
    vocab: usize,
    model_id: String,
    /// The server's clock: the log's `*_at_ms` count from here.
    epoch: Instant,
}

impl LocalEngine {
    /// Starts the model's thread: a batch of up to `batch.max_sequences` sequences when given
    /// and the engine can hold several (the CPU engine), else one request at a time.
    pub fn start(
        mut loaded: LoadedModel,
        max_queue: usize,
        batch: Option<BatchOptions>,
    ) -> Result<Self> {
        let template = loaded
            .chat_template
            .with_context(|| format!("{} has no chat template", loaded.path.display()))?;
        let tokenizer = Arc::new(loaded.tokenizer);
        let signal = OffloadSignal::from_tokenizer(&tokenizer, None)?;
        let mut base_bias = Vec::new();
        mask_offload(&mut base_bias, &signal);
        let model_id = loaded
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "selfroute".into());
        let epoch = Instant::now();
        // Asking for a sequence is how the engine says whether it batches: the GPU engine
        // answers Unsupported and keeps the one-at-a-time worker.
        let batch = batch.filter(|_| match BatchBackend::new_sequence(&mut loaded.model) {
            Ok(seq) => {
                BatchBackend::drop_sequence(&mut loaded.model, seq);
                true
            }
            Err(e) => {
                tracing::info!(reason = %e, "answering one request at a time");
                false
            }
        });
        let mode = match batch {
            Some(options) => {
                tracing::info!(
                    max_sequences = options.max_sequences,
                    prefill_chunk = options.prefill_chunk,
                    "continuous batching"
                );
                Mode::Batched {
                    worker: BatchWorker::spawn(loaded.model, options)
                        .context("starting the batch thread")?,
                    max_queue,
                }
            }
            None => {
                let (jobs, receiver) = mpsc::channel::<Job>(max_queue.max(1));
                let queued = Arc::new(AtomicUsize::new(0));
                let worker_tokenizer = tokenizer.clone();
                let worker_queued = queued.clone();
                std::thread::Builder::new()
                    .name("selfroute-model".into())
                    .spawn(move || {
                        work(
                            Generator::new(loaded.model),
                            &worker_tokenizer,
                            receiver,
                            &worker_queued,
                            epoch,
                        )
                    })
                    .context("starting the model thread")?;
                Mode::Sequential { jobs, queued }
            }
        };
        Ok(Self {
            mode,
            tokenizer,
            template: Arc::new(template),
            base_bias,
            context: loaded.config.context_length,
            vocab: loaded.config.vocab_size,
            model_id,
            epoch,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Requests (with the batch: choices) waiting for the model.
    pub fn queued(&self) -> usize {
        match &self.mode {
            Mode::Sequential { queued, .. } => queued.load(Ordering::Relaxed),
            Mode::Batched { worker, .. } => worker.queued(),
        }
    }

    /// Width of the model's logits: the bound on `logit_bias` token ids.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub async fn complete(
        &self,
        id: RequestId,
        checked: LocalRequest,
        limits: &Limits,
    ) -> Response {
        let LocalRequest {
            request,
            choices,
            include_usage,
        } = checked;
        let prompt = match self
            .template
            .encode(&request.messages, true, &self.tokenizer)
        {
            Ok(p) => p,
            Err(e) => {
                return api_error_response(
                    StatusCode::BAD_REQUEST,
                    ApiError::invalid_param("messages", "invalid_value", e.to_string()),
                );
            }
        };
        if prompt.len() >= self.context {
            return api_error_response(
                StatusCode::BAD_REQUEST,
                ApiError::invalid_param(
                    "messages",
                    "context_length_exceeded",
                    CoreError::PromptTooLong {
                        prompt_tokens: prompt.len(),
                        context: self.context,
                    }
                    .to_string(),
                ),
            );
        }
        let params: Vec<GenerationParams> = (0..choices)
            .map(|i| generation_params(&request, limits, &self.base_bias, i))
            .collect();
        let (events, receiver) = mpsc::unbounded_channel();
        let queued_at = Instant::now();
        // Kept by the response for as long as it wants tokens: dropped with it (the client
        // left), they cancel their sequences.
        let mut handles = Vec::new();
        match &self.mode {
            Mode::Sequential { jobs, queued } => {
                let job = Job {
                    id: id.clone(),
                    stream: request.stream,
                    prompt,
                    params,
                    queued_at,
                    events,
                };
                queued.fetch_add(1, Ordering::Relaxed);
                if jobs.try_send(job).is_err() {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    return queue_full();
                }
            }
            Mode::Batched { worker, max_queue } => {
                if worker.queued() >= *max_queue {
                    return queue_full();
                }
                let state = RequestState::shared(
                    id.clone(),
                    request.stream,
                    events,
                    queued_at,
                    self.epoch,
                    choices,
                    prompt.len(),
                );
                for (index, params) in params.iter().enumerate() {
                    let submitted =
                        sequence_request(&prompt, params, &self.tokenizer, self.context)
                            .map_err(|e| e.to_string())
                            .and_then(|sequence| {
                                let sink = ChoiceSink::new(
                                    index as u32,
                                    self.tokenizer.clone(),
                                    &params.stop,
                                    state.clone(),
                                );
                                worker.submit(sequence, sink).map_err(|e| e.to_string())
                            });
                    match submitted {
                        Ok(handle) => handles.push(handle),
                        Err(message) => {
                            // The choices already submitted are cancelled with `handles`.
                            tracing::error!(request_id = %id.0, error = %message, "generation failed");
                            return error_response(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                message,
                            );
                        }
                    }
                }
            }
        }
        let meta = ResponseMeta {
            id: format!("chatcmpl-{}", id.0),
            model: self.model_id.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            choices,
            include_usage,
            logprobs: request.logprobs == Some(true),
        };
        if request.stream {
            stream_response(meta, receiver, handles)
        } else {
            collect_response(meta, receiver, handles).await
        }
    }
}

fn queue_full() -> Response {
    let mut response = api_error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::new("the request queue is full; retry shortly", "server_busy")
            .with_code("server_busy"),
    );
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// One token's log-probs as OpenAI writes them.
pub fn logprob_entry(tokenizer: &Tokenizer, logprobs: &TokenLogprobs) -> LogprobEntry {
    let (token, bytes) = token_text_and_bytes(tokenizer, logprobs.chosen.id);
    LogprobEntry {
        token,
        logprob: logprobs.chosen.logprob,
        bytes: Some(bytes),
        top_logprobs: logprobs
            .top
            .iter()
            .map(|t| {
                let (token, bytes) = token_text_and_bytes(tokenizer, t.id);
                TopLogprob {
                    token,
                    logprob: t.logprob,
                    bytes: Some(bytes),
                }
            })
            .collect(),
    }
}

/// The worker loop: one job at a time, in arrival order.
fn work(
    mut generator: Generator<Engine>,
    tokenizer: &Tokenizer,
    mut jobs: mpsc::Receiver<Job>,
    queued: &AtomicUsize,
    epoch: Instant,
) {
    while let Some(job) = jobs.blocking_recv() {
        queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            continue; // the client left while waiting
        }
        let started = Instant::now();
        let queue_ms = (started - job.queued_at).as_secs_f64() * 1e3;
        let mut first_token: Option<Instant> = None;
        let mut completion_tokens = 0;
        let mut prompt_tokens = job.prompt.len();
        let mut finish = FinishReason::Stop;
        let mut failure = None;
        for (index, params) in job.params.iter().enumerate() {
            let choice = index as u32;
            let result =
                pollster::block_on(generator.generate(tokenizer, &job.prompt, params, |event| {
                    first_token.get_or_insert_with(Instant::now);
                    let logprobs = event.logprobs.map(|l| logprob_entry(tokenizer, l));
                    if (!event.text.is_empty() || logprobs.is_some())
                        && job
                            .events
                            .send(JobEvent::Text {
                                choice,
                                text: event.text.to_string(),
                                logprobs,
                            })
                            .is_err()
                    {
                        return Control::Stop;
                    }
                    if job.events.is_closed() {
                        Control::Stop
                    } else {
                        Control::Continue
                    }
                }));
            match result {
                Ok(generation) => {
                    completion_tokens += generation.tokens.len();
                    prompt_tokens = generation.prompt_tokens;
                    finish = generation.finish_reason;
                    let _ = job.events.send(JobEvent::ChoiceDone { choice, finish });
                }
                Err(e) => {
                    tracing::error!(request_id = %job.id.0, error = %e, "generation failed");
                    failure = Some(e.to_string());
                    break;
                }
            }
            if job.events.is_closed() {
                break;
            }
        }
        let event = match failure {
            None => {
                let done = Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                    queue_ms: Some(queue_ms),
                    first_token_ms: first_token.map(|t| (t - job.queued_at).as_secs_f64() * 1e3),
                    first_token_at_ms: first_token.map(|t| at_ms(epoch, t)),
                    done_at_ms: at_ms(epoch, Instant::now()),
                };
                // Logged here so that abandoned requests are logged too.
                done.log(&job.id.0, job.stream, job.events.is_closed());
                JobEvent::Done(done)
            }
            Some(message) => JobEvent::Failed(message),
        };
        let _ = job.events.send(event);
    }
}

struct ResponseMeta {
    id: String,
    model: String,
    created: u64,
    choices: u32,
    include_usage: bool,
    logprobs: bool,
}

fn finish_text(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn chunk(meta: &ResponseMeta, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Event {
    let chunk = ChatChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
    };
    Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
}

fn choice_chunk(
    meta: &ResponseMeta,
    index: u32,
    delta: Delta,
    finish: Option<&str>,
    logprobs: Option<ChoiceLogprobs>,
) -> Event {
    chunk(
        meta,
        vec![ChunkChoice {
            index,
            delta,
            finish_reason: finish.map(str::to_string),
            logprobs,
        }],
        None,
    )
}

fn stream_response(
    meta: ResponseMeta,
    receiver: mpsc::UnboundedReceiver<JobEvent>,
    handles: Vec<SequenceHandle>,
) -> Response {
    let meta = Arc::new(meta);
    // Every choice opens with its role, as OpenAI streams it.
    let first: Vec<Result<Event, Infallible>> = (0..meta.choices)
        .map(|index| {
            Ok(choice_chunk(
                &meta,
                index,
                Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                },
                None,
                None,
            ))
        })
        .collect();
    // The handles live in the stream's state: when the client goes away, axum drops the stream
    // and with it the handles, which cancels the sequences before their next step.
    let events = stream::unfold((receiver, handles), |(mut rx, handles)| async move {
        rx.recv().await.map(|event| (event, (rx, handles)))
    })
    .map(move |event| {
        let items: Vec<Event> = match event {
            JobEvent::Text {
                choice,
                text,
                logprobs,
            } => vec![choice_chunk(
                &meta,
                choice,
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
                logprobs.map(|entry| ChoiceLogprobs {
                    content: vec![entry],
                }),
            )],
            JobEvent::ChoiceDone { choice, finish } => vec![choice_chunk(
                &meta,
                choice,
                Delta::default(),
                Some(finish_text(finish)),
                None,
            )],
            JobEvent::Done(done) => {
                let mut items = Vec::new();
                if meta.include_usage {
                    items.push(chunk(&meta, Vec::new(), Some(done.usage())));
                }
                items.push(Event::default().data("[DONE]"));
                items
            }
            JobEvent::Failed(message) => {
                let error = ApiError::new(message, "server_error");
                vec![Event::default().data(serde_json::to_string(&error).unwrap_or_default())]
            }
        };
        stream::iter(items.into_iter().map(Ok::<_, Infallible>))
    })
    .flatten();
    Sse::new(stream::iter(first).chain(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn collect_response(
    meta: ResponseMeta,
    mut receiver: mpsc::UnboundedReceiver<JobEvent>,
    // Held until the answer is complete; dropped with this future if the client leaves.
    _handles: Vec<SequenceHandle>,
) -> Response {
    let mut choices: Vec<Choice> = (0..meta.choices)
        .map(|index| Choice {
            index,
            message: ResponseMessage {
                role: Role::Assistant,
                content: Some(String::new()),
            },
            finish_reason: None,
            logprobs: meta.logprobs.then(ChoiceLogprobs::default),
        })
        .collect();
    while let Some(event) = receiver.recv().await {
        match event {
            JobEvent::Text {
                choice,
                text,
                logprobs,
            } => {
                if let Some(c) = choices.get_mut(choice as usize) {
                    c.message.content.get_or_insert_default().push_str(&text);
                    if let (Some(all), Some(entry)) = (&mut c.logprobs, logprobs) {
                        all.content.push(entry);
                    }
                }
            }
            JobEvent::ChoiceDone { choice, finish } => {
                if let Some(c) = choices.get_mut(choice as usize) {
                    c.finish_reason = Some(finish_text(finish).into());
                }
            }
            JobEvent::Failed(message) => {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message);
            }
            JobEvent::Done(done) => {
                let response = ChatResponse {
                    id: meta.id,
                    object: "chat.completion".into(),
                    created: meta.created,
                    model: meta.model,
                    choices,
                    usage: Some(done.usage()),
                };
                return axum::Json(response).into_response();
            }
        }
    }
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the model stopped without an answer",
    )
}

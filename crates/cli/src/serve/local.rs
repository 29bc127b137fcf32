//! The local backend: one worker thread owns the model and answers queued requests in order, so
//! concurrent requests wait their turn instead of being dropped. Tokens travel to the HTTP side
//! over a channel; a client that goes away stops its generation.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use selfroute_core::offload::mask_offload;
use selfroute_core::openai::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, ResponseMessage, Usage,
};
use selfroute_core::{
    ChatTemplate, Control, Error as CoreError, FinishReason, GenerationParams, Generator,
    OffloadSignal, Role, SamplingParams, Tokenizer,
};
use selfroute_engine::Engine;
use tokio::sync::mpsc;

use super::api::{Limits, RequestId, error_response};
use crate::load::LoadedModel;

struct Job {
    id: RequestId,
    stream: bool,
    prompt: Vec<u32>,
    params: GenerationParams,
    queued_at: Instant,
    events: mpsc::UnboundedSender<JobEvent>,
}

enum JobEvent {
    Text(String),
    Done(Done),
    Failed(String),
}

struct Done {
    finish: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    queue_ms: f64,
    /// From arrival to the first token, queueing included.
    first_token_ms: Option<f64>,
}

impl Done {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.completion_tokens as u32,
            total_tokens: (self.prompt_tokens + self.completion_tokens) as u32,
        }
    }

    fn log(&self, request_id: &str, stream: bool, client_left: bool) {
        tracing::info!(
            request_id,
            stream,
            client_left,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            queue_ms = self.queue_ms,
            first_token_ms = self.first_token_ms,
            finish = finish_text(self.finish),
            "completion done"
        );
    }
}

pub struct LocalEngine {
    jobs: mpsc::Sender<Job>,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    /// As a cloud, the model answers: its offload token (if any) is masked.
    base_bias: Vec<(u32, f32)>,
    context: usize,
    model_id: String,
    queued: Arc<AtomicUsize>,
}

impl LocalEngine {
    pub fn start(loaded: LoadedModel, max_queue: usize) -> Result<Self> {
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
                )
            })
            .context("starting the model thread")?;
        Ok(Self {
            jobs,
            tokenizer,
            template: Arc::new(template),
            base_bias,
            context: loaded.config.context_length,
            model_id,
            queued,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub async fn complete(&self, id: RequestId, request: ChatRequest, limits: &Limits) -> Response {
        let prompt = match self
            .template
            .encode(&request.messages, true, &self.tokenizer)
        {
            Ok(p) => p,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    e.to_string(),
                );
            }
        };
        if prompt.len() >= self.context {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                CoreError::PromptTooLong {
                    prompt_tokens: prompt.len(),
                    context: self.context,
                }
                .to_string(),
            );
        }
        let params = GenerationParams {
            max_new_tokens: request.token_limit().unwrap_or(limits.default_max_tokens) as usize,
            sampling: SamplingParams {
                temperature: request.temperature.unwrap_or(0.0),
                top_p: request.top_p.unwrap_or(1.0),
                seed: request.seed.unwrap_or(42),
                ..SamplingParams::default()
            },
            logit_bias: self.base_bias.clone(),
            ..GenerationParams::default()
        };
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            id: id.clone(),
            stream: request.stream,
            prompt,
            params,
            queued_at: Instant::now(),
            events,
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the request queue is full; retry shortly",
            );
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return response;
        }
        let meta = ResponseMeta {
            id: format!("chatcmpl-{}", id.0),
            model: self.model_id.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        if request.stream {
            stream_response(meta, receiver)
        } else {
            collect_response(meta, receiver).await
        }
    }
}

/// The worker loop: one job at a time, in arrival order.
fn work(
    mut generator: Generator<Engine>,
    tokenizer: &Tokenizer,
    mut jobs: mpsc::Receiver<Job>,
    queued: &AtomicUsize,
) {
    while let Some(job) = jobs.blocking_recv() {
        queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            continue; // the client left while waiting
        }
        let started = Instant::now();
        let queue_ms = (started - job.queued_at).as_secs_f64() * 1e3;
        let mut first_token: Option<Instant> = None;
        let result =
            pollster::block_on(
                generator.generate(tokenizer, &job.prompt, &job.params, |event| {
                    first_token.get_or_insert_with(Instant::now);
                    if !event.text.is_empty()
                        && job
                            .events
                            .send(JobEvent::Text(event.text.to_string()))
                            .is_err()
                    {
                        return Control::Stop;
                    }
                    if job.events.is_closed() {
                        Control::Stop
                    } else {
                        Control::Continue
                    }
                }),
            );
        let event = match result {
            Ok(generation) => {
                let done = Done {
                    finish: generation.finish_reason,
                    prompt_tokens: generation.prompt_tokens,
                    completion_tokens: generation.tokens.len(),
                    queue_ms,
                    first_token_ms: first_token.map(|t| (t - job.queued_at).as_secs_f64() * 1e3),
                };
                // Logged here so that abandoned requests are logged too.
                done.log(&job.id.0, job.stream, job.events.is_closed());
                JobEvent::Done(done)
            }
            Err(e) => {
                tracing::error!(request_id = %job.id.0, error = %e, "generation failed");
                JobEvent::Failed(e.to_string())
            }
        };
        let _ = job.events.send(event);
    }
}

struct ResponseMeta {
    id: String,
    model: String,
    created: u64,
}

fn finish_text(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn chunk(meta: &ResponseMeta, delta: Delta, finish: Option<&str>, usage: Option<Usage>) -> String {
    let chunk = ChatChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_string),
        }],
        usage,
    };
    serde_json::to_string(&chunk).unwrap_or_default()
}

fn stream_response(meta: ResponseMeta, receiver: mpsc::UnboundedReceiver<JobEvent>) -> Response {
    let meta = Arc::new(meta);
    let first = Event::default().data(chunk(
        &meta,
        Delta {
            role: Some(Role::Assistant),
            content: None,
        },
        None,
        None,
    ));
    let events = stream::unfold(receiver, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    })
    .map(move |event| {
        let items: Vec<Event> = match &event {
            JobEvent::Text(text) => vec![Event::default().data(chunk(
                &meta,
                Delta {
                    role: None,
                    content: Some(text.clone()),
                },
                None,
                None,
            ))],
            JobEvent::Done(done) => {
                vec![
                    Event::default().data(chunk(
                        &meta,
                        Delta::default(),
                        Some(finish_text(done.finish)),
                        Some(done.usage()),
                    )),
                    Event::default().data("[DONE]"),
                ]
            }
            JobEvent::Failed(message) => {
                let error = selfroute_core::openai::ApiError::new(message.clone(), "server_error");
                vec![Event::default().data(serde_json::to_string(&error).unwrap_or_default())]
            }
        };
        stream::iter(items.into_iter().map(Ok::<_, Infallible>))
    })
    .flatten();
    Sse::new(stream::once(async move { Ok(first) }).chain(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn collect_response(
    meta: ResponseMeta,
    mut receiver: mpsc::UnboundedReceiver<JobEvent>,
) -> Response {
    let mut text = String::new();
    while let Some(event) = receiver.recv().await {
        match event {
            JobEvent::Text(t) => text.push_str(&t),
            JobEvent::Failed(message) => {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message);
            }
            JobEvent::Done(done) => {
                let response = ChatResponse {
                    id: meta.id,
                    object: "chat.completion".into(),
                    created: meta.created,
                    model: meta.model,
                    choices: vec![Choice {
                        index: 0,
                        message: ResponseMessage {
                            role: Role::Assistant,
                            content: Some(text),
                        },
                        finish_reason: Some(finish_text(done.finish).into()),
                    }],
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

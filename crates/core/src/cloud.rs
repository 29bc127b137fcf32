//! What the routing session needs from a cloud endpoint, independent of how bytes travel: the
//! [`CloudClient`] trait (implemented natively with reqwest in `selfroute-cloud`, in the browser
//! with fetch), its errors, the retry policy every client follows, and [`CompletionStream`], which
//! turns the bytes of a streamed Chat Completions response into text with the one shared parser.

use std::future::Future;
use std::time::Duration;

use crate::error::WireError;
use crate::generate::Control;
use crate::openai::{
    ApiError, ChatRequest, ChatResponse, SseParser, StreamItem, Usage, parse_stream_data,
};

/// A Chat Completions endpoint that streams its answer.
pub trait CloudClient {
    /// Sends `request` (the client sets `stream` itself) and calls `on_text` for each piece of
    /// the answer as it arrives; `Control::Stop` from it cancels the call. Retries, if any, happen
    /// inside, and never after text has been handed out.
    fn stream_chat(
        &self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> impl Future<Output = CloudReply>;
}

/// The outcome of one [`CloudClient::stream_chat`], with what it cost whether or not it worked.
#[derive(Debug)]
pub struct CloudReply {
    pub result: Result<CloudCompletion, CloudError>,
    /// Request body bytes sent over all attempts.
    pub bytes_sent: u64,
    pub attempts: u32,
}

impl CloudReply {
    /// A call that failed before anything was sent.
    pub fn not_sent(error: CloudError) -> Self {
        Self {
            result: Err(error),
            bytes_sent: 0,
            attempts: 0,
        }
    }
}

/// A complete cloud answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudCompletion {
    pub text: String,
    /// As the endpoint sent it (`stop`, `length`, ...), if it did.
    pub finish_reason: Option<String>,
    /// The endpoint's own count when it reported usage; otherwise the number of content chunks
    /// (OpenAI-compatible servers send about one token per chunk).
    pub completion_tokens: u32,
    pub model: String,
}

/// Why a cloud call gave no answer. Every variant leads the session to answer locally.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("no cloud endpoint is configured")]
    NotConfigured,
    #[error("invalid cloud endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("cannot reach the cloud endpoint: {0}")]
    Connect(String),
    #[error("the cloud endpoint sent nothing for {} ms while {phase}", .after.as_millis())]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    #[error("the cloud endpoint is rate limiting requests (HTTP 429{})", retry_after_text(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the cloud endpoint answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the cloud stream ended before it was complete")]
    Truncated,
    #[error("the cloud answer is empty")]
    EmptyAnswer,
    #[error("the cloud answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("cancelled")]
    Cancelled,
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} s", d.as_secs_f64()))
        .unwrap_or_default()
}

impl CloudError {
    /// An error status with its body, which is usually an OpenAI error object.
    pub fn from_status(status: u16, body: &str, retry_after: Option<Duration>) -> Self {
        if status == 429 {
            return Self::RateLimited { retry_after };
        }
        let message = match crate::openai::parse_response(body) {
            Err(WireError::Api(api)) => api.to_string(),
            _ if body.trim().is_empty() => "(empty body)".to_string(),
            _ => excerpt(body),
        };
        Self::Status { status, message }
    }

    /// Whether the same request may succeed if sent again. Requests are idempotent until text
    /// has been shown, so the caller also checks that nothing was streamed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout { .. } | Self::RateLimited { .. } => true,
            Self::Status { status, .. } => matches!(status, 408 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

fn excerpt(text: &str) -> String {
    crate::openai::excerpt_chars(text.trim(), 200)
}

/// Bounded retries with exponential backoff, honouring `Retry-After` up to a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: answering locally now is better.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// How long to wait before attempt `attempt + 1` (attempts count from 1) after `error`, or
    /// None to give up. `streamed` says whether text of this attempt was already handed out.
    pub fn delay_after(
        &self,
        attempt: u32,
        error: &CloudError,
        streamed: bool,
    ) -> Option<Duration> {
        if streamed || attempt > self.max_retries || !error.is_retryable() {
            return None;
        }
        if let CloudError::RateLimited {
            retry_after: Some(wait),
        } = error
        {
            return (*wait <= self.max_retry_after).then_some(*wait);
        }
        let exponent = attempt.saturating_sub(1).min(16);
        Some(
            self.base_delay
                .saturating_mul(1u32 << exponent)
                .min(self.max_delay),
        )
    }
}

/// How one client sends one attempt of a request body and waits between attempts: all that
/// differs between the native client (reqwest, tokio) and the browser's (fetch, timers).
pub trait Transport {
    /// Sends `body` once and streams the answer to `on_text`, setting `streamed` once any text
    /// was handed out (after which no retry may happen).
    fn attempt(
        &self,
        body: &[u8],
        on_text: &mut dyn FnMut(&str) -> Control,
        streamed: &mut bool,
    ) -> impl Future<Output = Result<CloudCompletion, CloudError>>;

    fn sleep(&self, wait: Duration) -> impl Future<Output = ()>;
}

/// One streamed call of `request` over `transport`, retried as `policy` allows: the loop every
/// [`CloudClient`] shares, so native and browser clients retry, count and give up alike.
pub async fn send_with_retries(
    transport: &impl Transport,
    policy: &RetryPolicy,
    request: &ChatRequest,
    on_text: &mut dyn FnMut(&str) -> Control,
) -> CloudReply {
    let mut request = request.clone();
    request.stream = true;
    // Without it an OpenAI-compatible server streams no usage, and cloud tokens would be counted
    // from chunks, which some servers batch.
    request.stream_options = Some(crate::openai::StreamOptions {
        include_usage: true,
    });
    let body = match serde_json::to_vec(&request) {
        Ok(b) => b,
        Err(e) => return CloudReply::not_sent(CloudError::Transport(e.to_string())),
    };
    let mut reply = CloudReply {
        result: Err(CloudError::Cancelled),
        bytes_sent: 0,
        attempts: 0,
    };
    loop {
        reply.attempts += 1;
        reply.bytes_sent += body.len() as u64;
        let mut streamed = false;
        let error = match transport.attempt(&body, on_text, &mut streamed).await {
            Ok(done) => {
                reply.result = Ok(done);
                return reply;
            }
            Err(e) => e,
        };
        match policy.delay_after(reply.attempts, &error, streamed) {
            Some(wait) => transport.sleep(wait).await,
            None => {
                reply.result = Err(error);
                return reply;
            }
        }
    }
}

/// The `chat/completions` URL for a base such as `https://api.openai.com/v1`; a URL that already
/// ends in `/chat/completions` is kept. (Clients check the URL itself with their own parser.)
pub fn with_completions_path(base: &str) -> String {
    let trimmed = base.trim().trim_end_matches('/');
    if trimmed.ends_with("/chat/completions") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/chat/completions")
    }
}

/// Reads a `Retry-After` header value: delay-seconds. (The HTTP-date form gives None; callers
/// then back off as usual.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Largest cloud answer accepted, against a server that streams without end.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 4 << 20;

/// The body of a streamed completion turned into text, fed bytes as they arrive.
#[derive(Debug)]
pub struct CompletionStream {
    sse: SseParser,
    text: String,
    chunks: u32,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    model: String,
    done: bool,
    max_answer_bytes: usize,
}

impl Default for CompletionStream {
    fn default() -> Self {
        Self::new()
    }
}

impl CompletionStream {
    pub fn new() -> Self {
        Self {
            sse: SseParser::new(),
            text: String::new(),
            chunks: 0,
            usage: None,
            finish_reason: None,
            model: String::new(),
            done: false,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }

    /// Feeds received bytes, calling `on_text` for each new piece of text. Returns
    /// `Control::Stop` once `[DONE]` arrived or `on_text` asked to stop.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<Control, CloudError> {
        if self.done {
            return Ok(Control::Stop);
        }
        for event in self.sse.feed(bytes)? {
            if self.handle(&event.event, &event.data, on_text)? == Control::Stop {
                return Ok(Control::Stop);
            }
        }
        Ok(Control::Continue)
    }

    /// Whether `[DONE]` was received.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Text received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The end of the body: the complete answer, or why there is none.
    pub fn finish(
        mut self,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<CloudCompletion, CloudError> {
        if !self.done
            && let Some(event) = self.sse.finish()?
        {
            self.handle(&event.event, &event.data, on_text)?;
        }
        // Some servers end a stream without `[DONE]`; a finish reason shows it was complete.
        if !self.done && self.finish_reason.is_none() {
            return Err(CloudError::Truncated);
        }
        if self.text.trim().is_empty() {
            return Err(CloudError::EmptyAnswer);
        }
        Ok(CloudCompletion {
            completion_tokens: self.usage.map_or(self.chunks, |u| u.completion_tokens),
            text: self.text,
            finish_reason: self.finish_reason,
            model: self.model,
        })
    }

    fn handle(
        &mut self,
        event: &str,
        data: &str,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<Control, CloudError> {
        if event == "error" {
            // Not OpenAI, but some compatible servers name their error events.
            return Err(match serde_json::from_str::<ApiError>(data) {
                Ok(api) => WireError::Api(api).into(),
                Err(_) => CloudError::Transport(excerpt(data)),
            });
        }
        let chunk = match parse_stream_data(data)? {
            StreamItem::Done => {
                self.done = true;
                return Ok(Control::Stop);
            }
            StreamItem::Chunk(chunk) => chunk,
        };
        if self.model.is_empty() {
            self.model = chunk.model.clone();
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(Control::Continue);
        };
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) else {
            return Ok(Control::Continue);
        };
        if self.text.len() + piece.len() > self.max_answer_bytes {
            return Err(CloudError::TooLarge {
                limit: self.max_answer_bytes,
            });
        }
        self.chunks += 1;
        self.text.push_str(&piece);
        if on_text(&piece) == Control::Stop {
            return Err(CloudError::Cancelled);
        }
        Ok(Control::Continue)
    }
}

/// A non-streaming response body as a completion (for servers that ignore `stream: true`).
pub fn completion_from_body(
    body: &str,
    on_text: &mut dyn FnMut(&str) -> Control,
) -> Result<CloudCompletion, CloudError> {
    let response: ChatResponse = crate::openai::parse_response(body)?;
    let text = response.text().unwrap_or_default().to_string();
    if text.trim().is_empty() {
        return Err(CloudError::EmptyAnswer);
    }
    if on_text(&text) == Control::Stop {
        return Err(CloudError::Cancelled);
    }
    Ok(CloudCompletion {
        completion_tokens: response.usage.map_or(1, |u| u.completion_tokens),
        finish_reason: response
            .choices
            .first()
            .and_then(|c| c.finish_reason.clone()),
        model: response.model,
        text,
    })
}

/// The client to use when none is configured: every call fails with [`CloudError::NotConfigured`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCloud;

impl CloudClient for NoCloud {
    async fn stream_chat(
        &self,
        _request: &ChatRequest,
        _on_text: &mut dyn FnMut(&str) -> Control,
    ) -> CloudReply {
        CloudReply::not_sent(CloudError::NotConfigured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(stream: &mut CompletionStream, bytes: &[u8]) -> (String, Control) {
        let mut out = String::new();
        let control = stream
            .feed(bytes, &mut |t| {
                out.push_str(t);
                Control::Continue
            })
            .unwrap();
        (out, control)
    }

    #[test]
    fn a_stream_becomes_text_and_stops_at_done() {
        let mut s = CompletionStream::new();
        let body = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"ignored\"}}]}\n\n",
        );
        let (text, control) = collect(&mut s, body.as_bytes());
        assert_eq!(text, "Hello");
        assert_eq!(control, Control::Stop);
        let done = s.finish(&mut |_| Control::Continue).unwrap();
        assert_eq!(done.text, "Hello");
        assert_eq!(done.completion_tokens, 2);
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        assert_eq!(done.model, "m");
    }

    #[test]
    fn a_stream_without_done_or_finish_reason_is_truncated() {
        let mut s = CompletionStream::new();
        collect(
            &mut s,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        );
        assert!(matches!(
            s.finish(&mut |_| Control::Continue),
            Err(CloudError::Truncated)
        ));
    }

    #[test]
    fn usage_overrides_the_chunk_count() {
        let mut s = CompletionStream::new();
        collect(
            &mut s,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a b c\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3,\"total_tokens\":6}}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            s.finish(&mut |_| Control::Continue)
                .unwrap()
                .completion_tokens,
            3
        );
    }

    #[test]
    fn an_error_mid_stream_is_an_api_error() {
        let mut s = CompletionStream::new();
        let err = s
            .feed(
                b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
                &mut |_| Control::Continue,
            )
            .unwrap_err();
        assert!(err.to_string().contains("overloaded"), "{err}");
    }

    #[test]
    fn retry_policy_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let refused = CloudError::Connect("refused".into());
        assert_eq!(
            p.delay_after(1, &refused, false),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            p.delay_after(2, &refused, false),
            Some(Duration::from_millis(500))
        );
        assert_eq!(p.delay_after(3, &refused, false), None);
        assert_eq!(p.delay_after(1, &refused, true), None, "text was shown");
        let limited = CloudError::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            p.delay_after(1, &limited, false),
            Some(Duration::from_secs(1))
        );
        let too_long = CloudError::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(p.delay_after(1, &too_long, false), None);
        let bad_request = CloudError::from_status(
            400,
            r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#,
            None,
        );
        assert!(bad_request.to_string().contains("bad model"));
        assert_eq!(p.delay_after(1, &bad_request, false), None);
        assert!(CloudError::from_status(503, "", None).is_retryable());
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}

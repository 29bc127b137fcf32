//! `HttpCloudClient`: one streamed Chat Completions call with connect and idle timeouts, bounded
//! retries before any text is shown, and cancellation from the text callback.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use selfroute_core::cloud::{
    CompletionStream, DEFAULT_MAX_ANSWER_BYTES, Transport, completion_from_body, parse_retry_after,
    send_with_retries,
};
use selfroute_core::openai::ChatRequest;
use selfroute_core::{CloudClient, CloudCompletion, CloudError, CloudReply, Control, RetryPolicy};

use crate::endpoint::chat_completions_url;

#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Base URL (`https://api.openai.com/v1`) or the full `.../chat/completions` URL.
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Longest silence accepted: waiting for the response headers, and between body bytes.
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
}

impl CloudConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// Error bodies are read up to this size: enough for any error message.
const MAX_ERROR_BODY: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct HttpCloudClient {
    http: reqwest::Client,
    url: String,
    config: CloudConfig,
}

impl HttpCloudClient {
    pub fn new(config: CloudConfig) -> Result<Self, CloudError> {
        let url = chat_completions_url(&config.url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("selfroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Transport(error_chain(&e)))?;
        Ok(Self { http, url, config })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn attempt_once(
        &self,
        body: &[u8],
        on_text: &mut dyn FnMut(&str) -> Control,
        streamed: &mut bool,
    ) -> Result<CloudCompletion, CloudError> {
        let idle = self.config.idle_timeout;
        let mut request = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream, application/json")
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = match tokio::time::timeout(idle, request.send()).await {
            Err(_) => {
                return Err(CloudError::Timeout {
                    phase: "waiting for the response",
                    after: idle,
                });
            }
            Ok(Err(e)) => return Err(self.classify(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // The error message is a courtesy; a body that cannot be read leaves the status.
            let body = self
                .read_body(&mut response, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Err(CloudError::from_status(status.as_u16(), &body, retry_after));
        }
        let is_event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let mut counted = |text: &str| {
            *streamed = true;
            on_text(text)
        };
        if !is_event_stream {
            // A server that ignores `stream: true` answers with one JSON body.
            let body = self
                .read_body(&mut response, DEFAULT_MAX_ANSWER_BYTES)
                .await?;
            return completion_from_body(&body, &mut counted);
        }
        let mut stream = CompletionStream::new();
        loop {
            let chunk = match tokio::time::timeout(idle, response.chunk()).await {
                Err(_) => {
                    return Err(CloudError::Timeout {
                        phase: "streaming the answer",
                        after: idle,
                    });
                }
                Ok(Err(e)) => return Err(self.classify(&e)),
                Ok(Ok(chunk)) => chunk,
            };
            let Some(bytes) = chunk else { break };
            if stream.feed(&bytes, &mut counted)? == Control::Stop {
                break;
            }
        }
        stream.finish(&mut counted)
    }
}

impl CloudClient for HttpCloudClient {
    async fn stream_chat(
        &self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> CloudReply {
        send_with_retries(self, &self.config.retry, request, on_text).await
    }
}

impl Transport for HttpCloudClient {
    async fn attempt(
        &self,
        body: &[u8],
        on_text: &mut dyn FnMut(&str) -> Control,
        streamed: &mut bool,
    ) -> Result<CloudCompletion, CloudError> {
        self.attempt_once(body, on_text, streamed).await
    }

    async fn sleep(&self, wait: Duration) {
        tokio::time::sleep(wait).await;
    }
}

impl HttpCloudClient {
    /// Reads a whole body of at most `limit` bytes, each read within the idle timeout.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        limit: usize,
    ) -> Result<String, CloudError> {
        let idle = self.config.idle_timeout;
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(idle, response.chunk())
                .await
                .map_err(|_| CloudError::Timeout {
                    phase: "reading the response body",
                    after: idle,
                })?
                .map_err(|e| self.classify(&e))?;
            let Some(bytes) = chunk else { break };
            if body.len() + bytes.len() > limit {
                return Err(CloudError::TooLarge { limit });
            }
            body.extend_from_slice(&bytes);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn classify(&self, e: &reqwest::Error) -> CloudError {
        if e.is_connect() && e.is_timeout() {
            CloudError::Timeout {
                phase: "connecting",
                after: self.config.connect_timeout,
            }
        } else if e.is_connect() {
            CloudError::Connect(error_chain(e))
        } else {
            CloudError::Transport(error_chain(e))
        }
    }
}

/// reqwest's own message is terse ("error sending request"); the causes say what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

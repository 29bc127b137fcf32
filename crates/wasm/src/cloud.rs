//! The browser's cloud client: `fetch` with a streamed body (gloo-net), fed to core's
//! `CompletionStream`, retried by core's `send_with_retries` exactly as the native client is.
//! Timeouts and `stop()` both abort the request, so a stalled cloud never holds the worker.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{Either, select};
use gloo_net::http::{Request, Response};
use selfroute_core::cloud::{
    CompletionStream, DEFAULT_MAX_ANSWER_BYTES, Transport, completion_from_body, parse_retry_after,
    send_with_retries, with_completions_path,
};
use selfroute_core::openai::ChatRequest;
use selfroute_core::{CloudClient, CloudCompletion, CloudError, CloudReply, Control, RetryPolicy};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, ReadableStreamDefaultReader};

use crate::yielding::StopFlag;

/// How often a wait checks for `stop()`.
const STOP_POLL: Duration = Duration::from_millis(50);

pub struct FetchCloudClient {
    url: String,
    idle_timeout: Duration,
    retry: RetryPolicy,
    stop: StopFlag,
}

impl FetchCloudClient {
    pub fn new(endpoint: &str, idle_timeout: Duration, retries: u32, stop: StopFlag) -> Self {
        Self {
            url: with_completions_path(endpoint),
            idle_timeout,
            retry: RetryPolicy {
                max_retries: retries,
                ..RetryPolicy::default()
            },
            stop,
        }
    }

    /// `work`, unless `idle_timeout` passes first or `stop()` is called.
    async fn within_idle<T>(
        &self,
        work: impl Future<Output = T>,
        phase: &'static str,
    ) -> Result<T, CloudError> {
        let mut work = std::pin::pin!(work);
        let mut waited = Duration::ZERO;
        loop {
            if self.stop.is_requested() {
                return Err(CloudError::Cancelled);
            }
            if waited >= self.idle_timeout {
                return Err(CloudError::Timeout {
                    phase,
                    after: self.idle_timeout,
                });
            }
            let tick = gloo_timers::future::sleep(STOP_POLL);
            match select(work.as_mut(), std::pin::pin!(tick)).await {
                Either::Left((done, _)) => return Ok(done),
                Either::Right(((), _)) => waited += STOP_POLL,
            }
        }
    }

    async fn read_text(&self, response: &Response, limit: usize) -> Result<String, CloudError> {
        let text = self
            .within_idle(response.text(), "reading the response body")
            .await?
            .map_err(|e| CloudError::Transport(e.to_string()))?;
        if text.len() > limit {
            return Err(CloudError::TooLarge { limit });
        }
        Ok(text)
    }
}

/// Aborts the fetch when the attempt ends, however it ends (a timeout, a stop, an error).
struct AbortOnDrop(AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn transport_error(e: &gloo_net::Error) -> CloudError {
    match e {
        // fetch rejects with a TypeError when nothing answered: refused, DNS, CORS.
        gloo_net::Error::JsError(js) => CloudError::Connect(js.message.clone()),
        other => CloudError::Transport(other.to_string()),
    }
}

impl Transport for FetchCloudClient {
    async fn attempt(
        &self,
        body: &[u8],
        on_text: &mut dyn FnMut(&str) -> Control,
        streamed: &mut bool,
    ) -> Result<CloudCompletion, CloudError> {
        let controller = AbortController::new()
            .map_err(|_| CloudError::Transport("no AbortController".into()))?;
        let signal = controller.signal();
        let _abort = AbortOnDrop(controller);
        let request = Request::post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream, application/json")
            .abort_signal(Some(&signal))
            .body(js_sys::Uint8Array::from(body))
            .map_err(|e| CloudError::InvalidEndpoint(e.to_string()))?;
        let response = self
            .within_idle(request.send(), "waiting for the response")
            .await?
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| parse_retry_after(&v));
            // The error message is a courtesy; an unreadable body leaves the status.
            let text = self
                .read_text(&response, 64 << 10)
                .await
                .unwrap_or_default();
            return Err(CloudError::from_status(status, &text, retry_after));
        }
        let mut counted = |text: &str| {
            *streamed = true;
            on_text(text)
        };
        let is_event_stream = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !is_event_stream {
            let text = self.read_text(&response, DEFAULT_MAX_ANSWER_BYTES).await?;
            return completion_from_body(&text, &mut counted);
        }
        let reader: ReadableStreamDefaultReader = response
            .body()
            .ok_or(CloudError::Truncated)?
            .get_reader()
            .unchecked_into();
        let mut stream = CompletionStream::new();
        loop {
            let read = self
                .within_idle(JsFuture::from(reader.read()), "streaming the answer")
                .await?
                .map_err(|e| {
                    CloudError::Transport(
                        e.dyn_ref::<js_sys::Error>()
                            .map(|e| String::from(e.message()))
                            .unwrap_or_else(|| "the answer stream broke".into()),
                    )
                })?;
            let done = js_sys::Reflect::get(&read, &"done".into())
                .map(|v| v.is_truthy())
                .unwrap_or(true);
            if done {
                break;
            }
            let value = js_sys::Reflect::get(&read, &"value".into())
                .map_err(|_| CloudError::Transport("a stream chunk without bytes".into()))?;
            let bytes = js_sys::Uint8Array::new(&value).to_vec();
            if stream.feed(&bytes, &mut counted)? == Control::Stop {
                break;
            }
        }
        stream.finish(&mut counted)
    }

    async fn sleep(&self, wait: Duration) {
        gloo_timers::future::sleep(wait).await;
    }
}

impl CloudClient for FetchCloudClient {
    async fn stream_chat(
        &self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> CloudReply {
        send_with_retries(self, &self.retry, request, on_text).await
    }
}

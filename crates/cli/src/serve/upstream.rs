//! The upstream backend: validated requests are forwarded to another OpenAI-compatible endpoint
//! with the server's API key; the answer streams back as it arrives. The client's own
//! `Authorization` is never forwarded and the key never appears in a response.

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use selfroute_cloud::chat_completions_url;

use super::api::{RequestId, error_response};

pub struct Upstream {
    http: reqwest::Client,
    completions_url: String,
    models_url: String,
    key: Option<String>,
    model_override: Option<String>,
}

impl Upstream {
    /// `idle_timeout` bounds every wait for the upstream: for its response and between body bytes.
    pub fn new(
        url: &str,
        key: Option<String>,
        model_override: Option<String>,
        idle_timeout: Duration,
    ) -> Result<Self> {
        let completions_url = chat_completions_url(url)?;
        let models_url = completions_url
            .strip_suffix("/chat/completions")
            .map(|base| format!("{base}/models"))
            .unwrap_or_else(|| completions_url.clone());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(idle_timeout)
            .user_agent(concat!("selfroute/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            completions_url,
            models_url,
            key,
            model_override,
        })
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    pub async fn forward(&self, id: RequestId, mut body: serde_json::Value) -> Response {
        if let (Some(model), Some(object)) = (&self.model_override, body.as_object_mut()) {
            object.insert("model".into(), serde_json::Value::String(model.clone()));
        }
        let request = self
            .http
            .post(&self.completions_url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", &id.0)
            .body(body.to_string());
        match self.authorised(request).send().await {
            Ok(response) => relay(response),
            Err(e) => {
                tracing::warn!(request_id = %id.0, error = %e, "upstream failed");
                unreachable_response(&e)
            }
        }
    }

    pub async fn models(&self) -> Response {
        match self
            .authorised(self.http.get(&self.models_url))
            .send()
            .await
        {
            Ok(response) => relay(response),
            Err(e) => unreachable_response(&e),
        }
    }
}

fn unreachable_response(e: &reqwest::Error) -> Response {
    if e.is_timeout() {
        error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "the upstream endpoint did not answer in time",
        )
    } else {
        error_response(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream endpoint cannot be reached",
        )
    }
}

/// The upstream's status, content type, `retry-after` (so a client backs off from a busy upstream
/// as long as it asks) and body, streamed through; nothing else of its headers.
fn relay(response: reqwest::Response) -> Response {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let kept: Vec<(header::HeaderName, HeaderValue)> = [header::CONTENT_TYPE, header::RETRY_AFTER]
        .into_iter()
        .filter_map(|name| {
            let value = response.headers().get(name.as_str())?;
            Some((name, HeaderValue::from_bytes(value.as_bytes()).ok()?))
        })
        .collect();
    let body = Body::from_stream(response.bytes_stream().map_err(std::io::Error::other));
    let mut out = (status, body).into_response();
    for (name, value) in kept {
        out.headers_mut().insert(name, value);
    }
    out
}

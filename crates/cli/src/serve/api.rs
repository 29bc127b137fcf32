//! The HTTP surface: routes, request ids and logging, validation and limits, OpenAI error bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use selfroute_core::openai::ApiError;

use super::local::LocalEngine;
use super::params;
use super::upstream::Upstream;

pub struct Limits {
    pub max_messages: usize,
    pub max_tokens_limit: u32,
    pub default_max_tokens: u32,
    /// Largest `n` (choices per request) the local model answers.
    pub max_choices: u32,
}

pub enum Backend {
    Local(LocalEngine),
    Upstream(Upstream),
}

pub struct AppState {
    backend: Backend,
    limits: Limits,
    required_key: Option<String>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(backend: Backend, limits: Limits, required_key: Option<String>) -> Self {
        Self {
            backend,
            limits,
            required_key,
            next_id: AtomicU64::new(1),
        }
    }
}

/// The id of one request: the caller's `x-request-id` when it is short and printable, else ours.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), request_log))
        .with_state(state)
}

async fn request_log(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{}", state.next_id.fetch_add(1, Ordering::Relaxed)));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        request_id = %id,
        %method,
        path,
        status = response.status().as_u16(),
        // For streams this is the time to the response head; the stream logs its own end.
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// An OpenAI-style error response.
pub fn error_response(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    api_error_response(status, ApiError::new(message, kind))
}

pub fn api_error_response(status: StatusCode, error: ApiError) -> Response {
    (status, axum::Json(error)).into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (backend, queued) = match &state.backend {
        Backend::Local(engine) => ("local", engine.queued()),
        Backend::Upstream(_) => ("upstream", 0),
    };
    axum::Json(serde_json::json!({"status": "ok", "backend": backend, "queued": queued}))
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = check_key(&state, &headers) {
        return r;
    }
    match &state.backend {
        Backend::Local(engine) => axum::Json(serde_json::json!({
            "object": "list",
            "data": [{"id": engine.model_id(), "object": "model", "created": 0, "owned_by": "selfroute"}]
        }))
        .into_response(),
        Backend::Upstream(upstream) => upstream.models().await,
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(id): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(r) = check_key(&state, &headers) {
        return r;
    }
    // A body over --max-body-bytes (413) or one that broke off: in the OpenAI error shape, so
    // clients show the reason.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "invalid_body"
            };
            return api_error_response(
                status,
                ApiError::new(rejection.body_text(), "invalid_request_error").with_code(code),
            );
        }
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "the body must be application/json",
        );
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return api_error_response(
                StatusCode::BAD_REQUEST,
                ApiError::new(
                    format!("the body is not valid JSON: {e}"),
                    "invalid_request_error",
                )
                .with_code("invalid_json"),
            );
        }
    };
    match &state.backend {
        Backend::Local(engine) => {
            match params::check_local(&value, &state.limits, engine.vocab_size()) {
                Ok(request) => engine.complete(id, request, &state.limits).await,
                Err(refusal) => api_error_response(StatusCode::BAD_REQUEST, refusal),
            }
        }
        Backend::Upstream(upstream) => match params::check_forwarded(&value, &state.limits) {
            // The body goes on as it came: parameters this server does not know are the
            // upstream's business.
            Ok(()) => upstream.forward(id, value).await,
            Err(refusal) => api_error_response(StatusCode::BAD_REQUEST, refusal),
        },
    }
}

/// None when the request may go on, else the 401 to send.
fn check_key(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let expected = state.required_key.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    (!constant_time_eq(given.as_bytes(), expected.as_bytes())).then(|| {
        api_error_response(
            StatusCode::UNAUTHORIZED,
            ApiError::new("missing or wrong API key", "authentication_error")
                .with_code("invalid_api_key"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! `--static DIR`: the demo site (page, Web Worker, wasm module, model file) with the headers a
//! browser needs. tower-http's `ServeDir` already sends `Content-Length`, `Last-Modified`, answers
//! `Range` requests (206) and guesses `Content-Type` with mime_guess (`.wasm` is `application/wasm`,
//! `.js` `text/javascript`, unknown extensions such as `.gguf` `application/octet-stream`). What it
//! lacks is added here, from the response's own content type so it also covers `/` (index.html).

use std::path::Path;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::map_response;
use axum::response::Response;
use tower_http::services::ServeDir;

/// The files of `dir` at `/`.
pub fn service(dir: &Path) -> Router {
    Router::new()
        .fallback_service(ServeDir::new(dir))
        .layer(map_response(browser_headers))
}

async fn browser_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // mime_guess calls `.mjs` `application/javascript`; the HTML standard's name is `text/javascript`.
    if content_type == "application/javascript" {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/javascript"));
    }
    // The code of the demo changes with every rebuild: the browser must revalidate (a cheap 304
    // through Last-Modified) instead of running a stale worker against a new wasm module. The model
    // is cached by the page itself (Cache API), so its heuristic HTTP caching is left alone.
    let is_code = [
        "text/html",
        "text/javascript",
        "application/javascript",
        "application/wasm",
    ]
    .iter()
    .any(|t| content_type.starts_with(t));
    if is_code {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// `--cross-origin-isolation`: the headers that make the page cross-origin isolated, which the
/// browser requires before it offers `SharedArrayBuffer` (wasm threads). Applied to every
/// response: documents and workers need COOP/COEP, and under `require-corp` every subresource must
/// allow being embedded, hence CORP on each.
pub async fn isolation_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-embedder-policy", "require-corp"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

//! `selfroute serve`: an OpenAI-compatible Chat Completions server. It serves a model with our own
//! engine (`--model`), or forwards to another endpoint (`--upstream`) holding its API key, so a web
//! page can use a real cloud without ever seeing the key.

mod api;
mod batched;
mod local;
mod params;
mod static_files;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::load;
use crate::options::ModelArgs;
use api::{AppState, Backend, Limits};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Forward requests to this OpenAI-compatible endpoint (e.g. https://api.openai.com/v1)
    /// instead of serving a local model.
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub upstream: Option<String>,

    /// Environment variable holding the upstream's API key (sent as a bearer token, never shown
    /// to clients).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "SELFROUTE_UPSTREAM_API_KEY"
    )]
    pub upstream_key_env: String,

    /// Replace the `model` of forwarded requests (the upstream's model name).
    #[arg(long, value_name = "NAME")]
    pub upstream_model: Option<String>,

    /// Longest silence accepted from the upstream, in seconds (waiting for its answer, and
    /// between its bytes); then the client's response ends.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub upstream_timeout: f64,

    /// Address to listen on. Anything but loopback exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Serve the files of this folder at / (e.g. the demo page, `target/site`).
    #[arg(long = "static", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,

    /// Send Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp and
    /// Cross-Origin-Resource-Policy: same-origin, so pages are cross-origin isolated (what the
    /// browser asks before it allows wasm threads).
    #[arg(long)]
    pub cross_origin_isolation: bool,

    /// Allow cross-origin requests from this origin (repeatable; `*` for any). Off by default.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,

    /// Require `Authorization: Bearer <value of this environment variable>` on API requests.
    #[arg(long, value_name = "NAME")]
    pub require_key_env: Option<String>,

    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Most messages accepted in one request.
    #[arg(long, default_value_t = 256)]
    pub max_messages: usize,

    /// Largest `max_tokens` accepted.
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_limit: u32,

    /// `max_tokens` when a request gives none.
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: u32,

    /// Largest `n` (answers per request) the local model gives; with batching they are
    /// generated together, else one after another.
    #[arg(long, default_value_t = 8)]
    pub max_choices: u32,

    /// Requests waiting for the local model beyond this many are refused with 503 (with
    /// batching: sequences waiting for a place in the batch, one per choice).
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,

    /// Sequences (one per choice of each request) the CPU engine decodes together in one
    /// forward pass; later ones wait for a place.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_batch: usize,

    /// Prompt tokens read per batch step, over all joining requests: a long prompt then delays
    /// the others' next token by one chunk, not by the whole prompt.
    #[arg(long, default_value_t = 256, value_name = "TOKENS")]
    pub prefill_chunk: usize,

    /// Answer one request at a time even on the CPU engine (the GPU engine always does).
    #[arg(long)]
    pub no_batch: bool,

    /// Log one JSON object per line instead of text.
    #[arg(long)]
    pub log_json: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    init_logging(args.log_json);
    load::configure_threads(args.model.threads)?;
    let limits = Limits {
        max_messages: args.max_messages,
        max_tokens_limit: args.max_tokens_limit,
        default_max_tokens: args.default_max_tokens.min(args.max_tokens_limit),
        max_choices: args.max_choices,
    };
    if limits.max_messages == 0 || limits.max_tokens_limit == 0 || limits.max_choices == 0 {
        bail!("--max-messages, --max-tokens-limit and --max-choices must be at least 1");
    }
    let required_key = match &args.require_key_env {
        Some(name) => Some(
            std::env::var(name)
                .ok()
                .filter(|k| !k.is_empty())
                .with_context(|| format!("--require-key-env: ${name} is not set"))?,
        ),
        None => None,
    };
    let backend = match &args.upstream {
        Some(url) => {
            let key = std::env::var(&args.upstream_key_env)
                .ok()
                .filter(|k| !k.is_empty());
            if key.is_none() {
                tracing::warn!(
                    env = %args.upstream_key_env,
                    "no upstream API key set; forwarding without Authorization"
                );
            }
            if !(args.upstream_timeout > 0.0 && args.upstream_timeout.is_finite()) {
                bail!("--upstream-timeout must be a positive number of seconds");
            }
            Backend::Upstream(upstream::Upstream::new(
                url,
                key,
                args.upstream_model.clone(),
                std::time::Duration::from_secs_f64(args.upstream_timeout),
            )?)
        }
        None => {
            let loaded = load::load(&args.model)?;
            tracing::info!(
                model = %loaded.path.display(),
                load_ms = loaded.load_ms as u64,
                "model loaded"
            );
            if args.max_batch == 0 || args.prefill_chunk == 0 {
                bail!("--max-batch and --prefill-chunk must be at least 1");
            }
            let batch = (!args.no_batch).then_some(selfroute_engine::BatchOptions {
                max_sequences: args.max_batch,
                prefill_chunk: args.prefill_chunk,
            });
            Backend::Local(local::LocalEngine::start(loaded, args.max_queue, batch)?)
        }
    };
    let state = Arc::new(AppState::new(backend, limits, required_key));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut app = api::router(state, args.max_body_bytes);
        if let Some(dir) = &args.static_dir {
            if !dir.is_dir() {
                bail!("--static {}: not a folder", dir.display());
            }
            app = app.fallback_service(static_files::service(dir));
        }
        if args.cross_origin_isolation {
            app = app.layer(axum::middleware::map_response(
                static_files::isolation_headers,
            ));
        }
        if let Some(cors) = cors_layer(&args.cors_origins)? {
            app = app.layer(cors);
        }
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .with_context(|| format!("--host {} --port {}", args.host, args.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts read this line to find the port.
        println!("listening on http://{bound}");
        tracing::info!(address = %bound, "serving");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            })
            .await
            .context("serving")
    })
}

fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                o.parse()
                    .with_context(|| format!("--cors-origin {o}: not a valid origin"))
            })
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                axum::http::header::CONTENT_TYPE,
                axum::http::header::AUTHORIZATION,
            ]),
    ))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

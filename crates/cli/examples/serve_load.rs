//! Load generator for `cargo xtask bench serve`: N concurrent streaming clients against an
//! OpenAI-compatible server for a bounded time. Every request must end with `[DONE]`; prints one
//! JSON line with throughput, time-to-first-token percentiles and the number of lost requests.
//!
//! usage: serve_load BASE_URL CLIENTS SECONDS MAX_TOKENS

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use selfroute_core::openai::{SseParser, StreamItem, parse_stream_data};

const QUESTIONS: [&str; 6] = [
    "What is the capital of France?",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "What is 17 times 23?",
    "Give three tips for learning a language.",
    "Why is the sky blue?",
];

#[derive(Default)]
struct ClientStats {
    completed: usize,
    lost: usize,
    chunks: usize,
    ttft_ms: Vec<f64>,
    latency_ms: Vec<f64>,
    errors: Vec<String>,
}

/// One streamed request: (first-content time, content chunks), or why it was lost.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    question: &str,
    max_tokens: u32,
) -> Result<(Option<Duration>, usize), String> {
    let started = Instant::now();
    let body = serde_json::json!({
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    });
    let response = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut parser = SseParser::new();
    let mut stream = response.bytes_stream();
    let mut first = None;
    let mut chunks = 0;
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| e.to_string())?;
        for event in parser.feed(&bytes).map_err(|e| e.to_string())? {
            match parse_stream_data(&event.data).map_err(|e| e.to_string())? {
                StreamItem::Done => return Ok((first, chunks)),
                StreamItem::Chunk(chunk) => {
                    if chunk.text().is_some_and(|t| !t.is_empty()) {
                        first.get_or_insert_with(|| started.elapsed());
                        chunks += 1;
                    }
                }
            }
        }
    }
    Err("stream ended without [DONE]".into())
}

async fn client(id: usize, url: String, until: Instant, max_tokens: u32) -> ClientStats {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client");
    let mut stats = ClientStats::default();
    let mut n = id;
    while Instant::now() < until {
        let started = Instant::now();
        match one_request(&http, &url, QUESTIONS[n % QUESTIONS.len()], max_tokens).await {
            Ok((first, chunks)) => {
                stats.completed += 1;
                stats.chunks += chunks;
                if let Some(t) = first {
                    stats.ttft_ms.push(t.as_secs_f64() * 1e3);
                }
                stats.latency_ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => {
                stats.lost += 1;
                stats.errors.push(e);
            }
        }
        n += 1;
    }
    stats
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, clients, seconds, max_tokens] = args.as_slice() else {
        eprintln!("usage: serve_load BASE_URL CLIENTS SECONDS MAX_TOKENS");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let max_tokens: u32 = max_tokens.parse().expect("MAX_TOKENS is a number");
    let url = format!("{}/v1/chat/completions", base.trim_end_matches('/'));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let all: Vec<ClientStats> = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| tokio::spawn(client(i, url.clone(), until, max_tokens)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out
    });
    // In-flight requests are allowed to finish: the wall time includes them.
    let wall = started.elapsed().as_secs_f64();
    let mut ttft: Vec<f64> = all.iter().flat_map(|s| s.ttft_ms.iter().copied()).collect();
    let mut latency: Vec<f64> = all
        .iter()
        .flat_map(|s| s.latency_ms.iter().copied())
        .collect();
    ttft.sort_by(f64::total_cmp);
    latency.sort_by(f64::total_cmp);
    let completed: usize = all.iter().map(|s| s.completed).sum();
    let lost: usize = all.iter().map(|s| s.lost).sum();
    let chunks: usize = all.iter().map(|s| s.chunks).sum();
    let errors: Vec<&String> = all.iter().flat_map(|s| s.errors.iter()).take(5).collect();
    println!(
        "{}",
        serde_json::json!({
            "clients": clients,
            "completed": completed,
            "lost": lost,
            "errors": errors,
            "wall_s": wall,
            "tok_s": chunks as f64 / wall,
            "req_s": completed as f64 / wall,
            "ttft_p50_ms": percentile(&ttft, 50.0),
            "ttft_p99_ms": percentile(&ttft, 99.0),
            "latency_p50_ms": percentile(&latency, 50.0),
        })
    );
}

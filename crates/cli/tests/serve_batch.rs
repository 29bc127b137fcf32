//! `selfroute serve --model` on the CPU engine batches concurrent requests: more streaming clients
//! than batch places each get exactly the greedy text a lone request gets, one that disconnects
//! mid-stream leaves without disturbing the others, and requests overlap in time.
//!
//! Overlap is read from the server's own log (`first_token_at_ms`, `done_at_ms`: stamped on the
//! model's thread against one clock), not from client-side timing, so a loaded machine cannot
//! make it flaky: a server answering one at a time never starts a request before the one ahead
//! of it is done, however slowly it runs.

mod support;

use futures_util::StreamExt;
use selfroute_core::openai::{SseParser, StreamItem, parse_stream_data};
use serde_json::Value;
use support::{Server, chat_body, stream_text};

const PROMPTS: [&str; 6] = [
    "Name three colours.",
    "What is the capital of France?",
    "Count from one to ten.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me a tip for learning to cook.",
];
const MAX_TOKENS: u32 = 24;

async fn streamed_text(url: &str, id: &str, content: &str, max_tokens: u32) -> String {
    let r = reqwest::Client::new()
        .post(url)
        .header("x-request-id", id)
        .json(&chat_body(content, max_tokens, true))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "{id}");
    let body = r.bytes().await.expect("body");
    let (text, finish, done) = stream_text(&body);
    assert!(done && finish.is_some(), "{id} ends properly");
    text
}

/// Opens a stream: once the headers are here, the server has queued the request.
async fn open_stream(url: &str, id: &str, content: &str, max_tokens: u32) -> TextStream {
    let r = reqwest::Client::new()
        .post(url)
        .header("x-request-id", id)
        .json(&chat_body(content, max_tokens, true))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "{id}");
    Box::pin(r.bytes_stream().map(|b| b.map(|b| b.to_vec())))
}

type TextStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>>>>;

/// Reads until `events` chunks with text have arrived; the caller decides when to drop the
/// stream (the client leaving).
async fn read_text_chunks(stream: &mut TextStream, events: usize) {
    let mut parser = SseParser::new();
    let mut seen = 0;
    while seen < events {
        let bytes = stream
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended before {events} text chunks"))
            .expect("bytes");
        for event in parser.feed(&bytes).expect("valid SSE") {
            if let StreamItem::Chunk(chunk) = parse_stream_data(&event.data).expect("chunk")
                && chunk.text().is_some_and(|t| !t.is_empty())
            {
                seen += 1;
            }
        }
    }
}

fn done_lines(log: &str) -> std::collections::HashMap<String, Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "completion done")
        .filter_map(|l| Some((l["request_id"].as_str()?.to_string(), l)))
        .collect()
}

fn ms(line: &Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

#[tokio::test]
async fn concurrent_clients_share_the_batch_and_each_gets_its_lone_greedy_text() {
    // Three places for eight concurrent requests: some wait for a place.
    let server = Server::model(&["--log-json", "--max-batch", "3"]);
    let url = server.url("/v1/chat/completions");

    let mut alone = Vec::new();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        alone.push(streamed_text(&url, &format!("alone-{i}"), prompt, MAX_TOKENS).await);
    }
    assert!(alone.iter().all(|t| !t.is_empty()), "{alone:?}");

    // A long answer in flight: every request below starts while it runs, if the server batches.
    let mut long = open_stream(&url, "long", "Write a very long story about a dragon.", 400).await;
    read_text_chunks(&mut long, 1).await;
    // A client that leaves after two pieces of text. Queued before the others, it gets a place
    // at once, beside the first of them: its leaving must not disturb them.
    let mut leaver = open_stream(
        &url,
        "leaver",
        "Write a very long poem about the moon.",
        400,
    )
    .await;
    let tasks: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let url = url.clone();
            tokio::spawn(async move {
                streamed_text(&url, &format!("together-{i}"), prompt, MAX_TOKENS).await
            })
        })
        .collect();
    read_text_chunks(&mut leaver, 2).await;
    drop(leaver);
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.expect("client task"));
    }
    drop(long);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            a, b,
            "prompt {i}: the batched text equals the lone greedy text"
        );
    }
    // A last request makes sure the abandoned ones were noticed and logged before the stop.
    streamed_text(&url, "last", "Hi", 2).await;

    let log = server.stop();
    let done = done_lines(&log);
    let line = |id: &str| {
        done.get(id)
            .unwrap_or_else(|| panic!("a completion line for {id}:\n{log}"))
    };
    let leaver = line("leaver");
    assert_eq!(leaver["client_left"], true, "{leaver}");
    let left_after = leaver["completion_tokens"].as_u64().expect("tokens");
    assert!(
        left_after < 200,
        "the leaver's sequence went on for {left_after} tokens"
    );
    let long = line("long");
    let long_done = ms(long, "done_at_ms");
    for i in 0..PROMPTS.len() {
        let l = line(&format!("together-{i}"));
        assert!(
            ms(l, "first_token_at_ms") < long_done,
            "together-{i} got its first token only after the long request ended: {l} vs {long}"
        );
    }
    // And the short ones overlapped one another, not only the long one.
    let spans: Vec<(f64, f64)> = (0..PROMPTS.len())
        .map(|i| {
            let l = line(&format!("together-{i}"));
            (ms(l, "first_token_at_ms"), ms(l, "done_at_ms"))
        })
        .collect();
    let overlapping = spans.iter().enumerate().any(|(i, a)| {
        spans
            .iter()
            .enumerate()
            .any(|(j, b)| i != j && a.0 < b.1 && b.0 < a.1)
    });
    assert!(overlapping, "no two short requests overlapped: {spans:?}");
}

#[tokio::test]
async fn every_parameter_gives_the_same_answer_batched_and_one_at_a_time() {
    let batched = Server::model(&[]);
    let sequential = Server::model(&["--no-batch"]);
    let requests = [
        serde_json::json!({
            "model": "any",
            "messages": [{"role": "user", "content": "Tell me about cats."}],
            "max_tokens": 20, "n": 3, "temperature": 1.3, "top_p": 0.9, "seed": 11,
            "presence_penalty": 0.8, "frequency_penalty": 0.5,
            "logit_bias": {"28": -5.0, "260": 3.0},
            "logprobs": true, "top_logprobs": 3,
        }),
        serde_json::json!({
            "model": "any",
            "messages": [{"role": "user", "content": "Name the days of the week."}],
            // Spans three tokens (" Thursday", ",", " Friday"): held back, then cut.
            "max_tokens": 40, "stop": ["day, Fri", "\n\n"],
        }),
        serde_json::json!({
            "model": "any",
            "messages": [{"role": "user", "content": "Write a sentence about rain."}],
            "max_tokens": 16, "n": 2, "temperature": 0.9, "seed": 3,
            "stream": true, "stream_options": {"include_usage": true},
        }),
    ];
    for request in &requests {
        let answer = |server: &Server| {
            let url = server.url("/v1/chat/completions");
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .json(request)
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(r.status(), 200);
                let body = r.bytes().await.expect("body");
                if request["stream"] == true {
                    // Choices interleave differently when they run together: compare each
                    // choice's own sequence of chunks, and the usage.
                    let mut parser = SseParser::new();
                    let mut events = parser.feed(&body).expect("SSE");
                    events.extend(parser.finish().expect("SSE"));
                    let mut per_choice: Vec<Vec<Value>> = vec![Vec::new(); 4];
                    let mut usage = Value::Null;
                    for event in events {
                        if event.data == "[DONE]" {
                            continue;
                        }
                        let chunk: Value = serde_json::from_str(&event.data).expect("chunk");
                        if !chunk["usage"].is_null() {
                            usage = chunk["usage"].clone();
                        }
                        for c in chunk["choices"].as_array().expect("choices") {
                            let i = c["index"].as_u64().expect("index") as usize;
                            per_choice[i].push(c.clone());
                        }
                    }
                    serde_json::json!({"choices": per_choice, "usage": usage})
                } else {
                    let v: Value = serde_json::from_slice(&body).expect("JSON");
                    serde_json::json!({"choices": v["choices"], "usage": v["usage"]})
                }
            }
        };
        let a = answer(&batched).await;
        let b = answer(&sequential).await;
        if request.get("stop").is_some() {
            let text = &a["choices"][0]["message"]["content"];
            assert_eq!(a["choices"][0]["finish_reason"], "stop", "{text}");
            assert!(
                text.as_str().is_some_and(|t| t.ends_with("Thurs")),
                "{text}"
            );
        }
        assert!(
            same(&a, &b),
            "batched vs one at a time for {request}:\n{a}\n{b}"
        );
    }
}

/// Equal, except that log-probabilities may differ in the sixth digit: one at a time, choice
/// 1.. of a request (and any request sharing a prefix with the one before) reuses the cached
/// prompt and runs its last prompt token as a one-token step, which rounds differently from the
/// full prefill every batched sequence gets. Tokens and texts must agree exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-4 * (1.0 + x.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

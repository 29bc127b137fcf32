//! `selfroute serve`'s request options with the real SmolLM2 model, each held to a computation made
//! here: stop strings against the plain answer, log-probs against a log-softmax of the model's own
//! logits (the CPU engine run directly), penalties and `logit_bias` against the choice they imply
//! on the reported log-probs; plus `n`, `include_usage`, the refusals and the proxy's pass-through.

mod support;

use std::io::{BufRead, BufReader, Read, Write};

use selfroute_core::{Backend, LogitsFor, Message, ModelPackage};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use serde_json::{Value, json};
use support::{Server, post_json};

/// The server on the CPU engine, as the direct computations below run it.
fn server() -> Server {
    Server::model(&["--device", "cpu"])
}

fn body(content: &str, max_tokens: u32) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// The content and finish reason of choice 0, and its log-prob entries.
fn answer(response: &Value) -> (String, String, Vec<Value>) {
    let choice = &response["choices"][0];
    (
        choice["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content in {response}"))
            .to_string(),
        choice["finish_reason"].as_str().unwrap_or("").to_string(),
        choice["logprobs"]["content"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

/// Every chunk of a streamed answer, parsed.
async fn stream_chunks(url: String, body: &Value) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(url)
        .json(&with(body.clone(), json!({"stream": true})))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("body");
    let mut parser = selfroute_core::openai::SseParser::new();
    let mut events = parser.feed(&bytes).expect("SSE");
    events.extend(parser.finish().expect("SSE"));
    events
        .into_iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).expect("JSON chunk"))
        .collect()
}

const COUNT: &str = "Count from 1 to 10, separated by commas.";

#[tokio::test]
async fn a_stop_string_split_over_tokens_is_caught_and_never_streamed() {
    let server = server();
    let url = server.url("/v1/chat/completions");
    let plain = post_json(&url, &with(body(COUNT, 24), json!({"logprobs": true}))).await;
    let (text, _, tokens) = answer(&plain);
    let pieces: Vec<&str> = tokens.iter().filter_map(|t| t["token"].as_str()).collect();
    assert_eq!(pieces.concat(), text, "the entries spell the answer");
    // A stop string over three tokens: from the last character of one to the first of the next
    // but one.
    let k = 3;
    assert!(pieces.len() > k + 2, "{pieces:?}");
    let tail: String = {
        let chars: Vec<char> = pieces[k].chars().collect();
        chars[chars.len() - 1..].iter().collect()
    };
    let stop = format!(
        "{tail}{}{}",
        pieces[k + 1],
        pieces[k + 2].chars().next().unwrap_or_default()
    );
    let cut = text.find(&stop).expect("the stop string is in the answer");
    let expected = &text[..cut];

    let request = with(body(COUNT, 24), json!({"stop": [stop.clone(), "never"]}));
    let plain = post_json(&url, &request).await;
    let (got, finish, _) = answer(&plain);
    assert_eq!(got, expected, "stop {stop:?}");
    assert_eq!(finish, "stop");

    let chunks = stream_chunks(url, &request).await;
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    // Without the hold-back, the start of the stop string would have gone out before its end
    // arrived.
    assert_eq!(streamed, expected, "stop {stop:?}");
    let finishes: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["stop"]);
}

/// log-softmax in f64 of one row of logits.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let sum: f64 = row.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    row.iter().map(|&l| f64::from(l) - max - sum.ln()).collect()
}

#[tokio::test]
async fn log_probs_are_the_model_log_softmax() {
    let server = server();
    let url = server.url("/v1/chat/completions");
    const STEPS: usize = 5;
    let request = with(
        body("Name a colour.", STEPS as u32),
        // A temperature changes the pick, never the reported numbers (the model's own).
        json!({"logprobs": true, "top_logprobs": 5, "temperature": 1.5, "seed": 9}),
    );
    let plain = post_json(&url, &request).await;
    let (_, _, entries) = answer(&plain);
    assert!(!entries.is_empty());

    // The same model on the CPU engine, run here token by token.
    let path = support::model();
    let package = ModelPackage::from_gguf("model.gguf", std::fs::read(&path).expect("model file"))
        .expect("model");
    let tokenizer = package.tokenizer.clone();
    let template = package.chat_template.as_ref().expect("template");
    let mut prompt = template
        .encode(&[Message::user("Name a colour.")], true, &tokenizer)
        .expect("prompt");
    let options = EngineOptions {
        choice: BackendChoice::Cpu,
        ..EngineOptions::default()
    };
    let (mut engine, _) =
        pollster::block_on(load_engine(&package.config, package.weights, &options))
            .expect("engine");
    let mut pos = 0;
    for (k, entry) in entries.iter().enumerate() {
        let logits = pollster::block_on(engine.forward(&prompt[pos..], pos, LogitsFor::Last))
            .expect("forward");
        pos = prompt.len();
        let expected = log_softmax(logits.row(0).expect("a row"));
        let token = entry["token"].as_str().expect("token");
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .expect("bytes")
            .iter()
            .map(|b| b.as_u64().expect("byte") as u8)
            .collect();
        assert_eq!(bytes, token.as_bytes(), "position {k}");
        let id = tokenizer
            .encode_literal(token)
            .ok()
            .filter(|ids| ids.len() == 1)
            .map(|ids| ids[0])
            .unwrap_or_else(|| panic!("{token:?} is one token"));
        let got = entry["logprob"].as_f64().expect("logprob");
        assert!(
            (got - expected[id as usize]).abs() < 2e-3,
            "position {k}, {token:?}: {got} vs {}",
            expected[id as usize]
        );
        let mut order: Vec<usize> = (0..expected.len()).collect();
        order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 5);
        for (alt, &want) in top.iter().zip(&order) {
            let lp = alt["logprob"].as_f64().expect("logprob");
            assert!(
                (lp - expected[want]).abs() < 2e-3,
                "position {k}: {alt} vs {want}: {}",
                expected[want]
            );
        }
        prompt.push(id);
    }
}

/// The entries' tokens as byte strings, for counting repeats.
fn token_bytes(entry: &Value) -> Vec<u8> {
    entry["bytes"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(Value::as_u64)
                .map(|b| b as u8)
                .collect()
        })
        .unwrap_or_default()
}

/// Positions of a greedy answer with these penalties whose pick the reported raw log-probs decide,
/// checked against the pick made by hand: argmax of log-prob - presence * [seen] - frequency *
/// count, over the tokens picked before. Returns how many positions were decidable and whether the
/// penalties changed the answer.
async fn check_penalties(url: &str, prompt: &str, presence: f64, frequency: f64) -> (usize, bool) {
    let (plain_text, _, _) = answer(&post_json(url, &body(prompt, 24)).await);
    let penalised = post_json(
        url,
        &with(
            body(prompt, 24),
            json!({"presence_penalty": presence, "frequency_penalty": frequency,
                   "logprobs": true, "top_logprobs": 20}),
        ),
    )
    .await;
    let (text, _, entries) = answer(&penalised);
    let mut counts: std::collections::HashMap<Vec<u8>, f64> = Default::default();
    let penalty = |count: f64| {
        if count > 0.0 {
            presence + frequency * count
        } else {
            0.0
        }
    };
    let mut checked = 0;
    for (k, entry) in entries.iter().enumerate() {
        let top = entry["top_logprobs"].as_array().expect("top");
        let mut scored: Vec<(f64, Vec<u8>)> = top
            .iter()
            .map(|alt| {
                let bytes = token_bytes(alt);
                let count = counts.get(&bytes).copied().unwrap_or(0.0);
                let lp = alt["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY);
                (lp - penalty(count), bytes)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        // A token outside the top 20 has a raw log-prob of at most `floor`; a negative penalty
        // may lift one picked before by at most `lift`.
        let floor = top
            .last()
            .and_then(|a| a["logprob"].as_f64())
            .unwrap_or(f64::NEG_INFINITY);
        let lift = counts
            .iter()
            .filter(|(bytes, _)| !top.iter().any(|alt| token_bytes(alt) == **bytes))
            .map(|(_, &count)| -penalty(count))
            .fold(0.0, f64::max);
        if scored[0].0 > floor + lift + 1e-3 && scored[0].0 - scored[1].0 > 1e-3 {
            assert_eq!(
                scored[0].1,
                token_bytes(entry),
                "position {k}: expected {:?}",
                String::from_utf8_lossy(&scored[0].1)
            );
            checked += 1;
        }
        *counts.entry(token_bytes(entry)).or_default() += 1.0;
    }
    (checked, text != plain_text)
}

#[tokio::test]
async fn penalties_pick_what_the_hand_computation_picks() {
    let server = server();
    let url = server.url("/v1/chat/completions");
    // Both penalties on free text; then a frequency penalty alone on a list whose commas repeat,
    // where the count matters, not just whether a token was seen; then negative ones.
    for (prompt, presence, frequency) in [
        ("Write a long story about a cat and a dog.", 1.5, 0.8),
        (COUNT, 0.0, 1.2),
        ("Write a long story about a cat and a dog.", -0.5, -0.7),
    ] {
        let (checked, changed) = check_penalties(&url, prompt, presence, frequency).await;
        assert!(
            checked >= 12,
            "{prompt} {presence} {frequency}: only {checked} positions were decidable"
        );
        // Each setting here changes the greedy answer (by hand: the checks above).
        assert!(
            changed,
            "{prompt} {presence} {frequency}: the answer changed"
        );
    }
}

#[tokio::test]
async fn logit_bias_moves_the_pick_exactly_as_far_as_the_log_probs_say() {
    let server = server();
    let url = server.url("/v1/chat/completions");
    let prompt = "Name a colour.";
    let base = post_json(
        &url,
        &with(
            body(prompt, 1),
            json!({"logprobs": true, "top_logprobs": 3}),
        ),
    )
    .await;
    let (_, _, entries) = answer(&base);
    let top = entries[0]["top_logprobs"].as_array().expect("top").clone();
    let lp = |i: usize| top[i]["logprob"].as_f64().expect("logprob");
    let package = ModelPackage::from_gguf(
        "model.gguf",
        std::fs::read(support::model()).expect("model file"),
    )
    .expect("model");
    let third_text = top[2]["token"].as_str().expect("token");
    let third = package
        .tokenizer
        .encode_literal(third_text)
        .expect("ids")
        .first()
        .copied()
        .expect("one id");
    let gap = lp(0) - lp(2);
    for (bias, wins) in [(gap + 0.3, true), (gap - 0.3, false)] {
        let r = post_json(
            &url,
            &with(
                body(prompt, 1),
                json!({"logit_bias": {third.to_string(): bias}, "logprobs": true}),
            ),
        )
        .await;
        let (text, _, entries) = answer(&r);
        assert_eq!(
            text == third_text,
            wins,
            "bias {bias} on {third_text:?} (gap {gap}): got {text:?}"
        );
        // The reported log-prob stays the model's own.
        if wins {
            let got = entries[0]["logprob"].as_f64().expect("logprob");
            assert!((got - lp(2)).abs() < 1e-4);
        }
    }
    // -100 bans the greedy token: the runner-up comes instead.
    let first_text = top[0]["token"].as_str().expect("token");
    let first = package.tokenizer.encode_literal(first_text).expect("ids")[0];
    let r = post_json(
        &url,
        &with(
            body(prompt, 1),
            json!({"logit_bias": {first.to_string(): -100}}),
        ),
    )
    .await;
    assert_eq!(answer(&r).0, top[1]["token"].as_str().expect("token"));
}

#[tokio::test]
async fn n_choices_stream_with_their_index_and_usage_comes_when_asked() {
    let server = server();
    let url = server.url("/v1/chat/completions");
    let request = with(
        body("Tell me a colour.", 6),
        json!({"n": 3, "temperature": 1.5, "seed": 5}),
    );
    let plain = post_json(&url, &request).await;
    let choices = plain["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    let texts: Vec<&str> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            c["message"]["content"].as_str().expect("text")
        })
        .collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "independent samples: {texts:?}"
    );
    let again = post_json(&url, &request).await;
    assert_eq!(
        again["choices"], plain["choices"],
        "the seed reproduces them"
    );

    let chunks = stream_chunks(
        url.clone(),
        &with(
            request.clone(),
            json!({"stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    let mut streamed = vec![String::new(); 3];
    for chunk in &chunks {
        for c in chunk["choices"].as_array().expect("choices") {
            let i = c["index"].as_u64().expect("index") as usize;
            streamed[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(streamed, texts, "streamed choices equal the plain ones");
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    let without = stream_chunks(url, &request).await;
    assert!(without.iter().all(|c| c.get("usage").is_none()));
}

async fn refusal(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (
        status,
        r.json::<Value>().await.expect("JSON error")["error"].clone(),
    )
}

#[tokio::test]
async fn what_the_model_cannot_do_is_refused_by_name_and_the_rest_is_accepted() {
    let server = Server::model(&["--max-tokens-limit", "100", "--max-choices", "4"]);
    let url = server.url("/v1/chat/completions");
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"parallel_tool_calls": true}), "parallel_tool_calls"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"audio": {"voice": "alloy"}}), "audio"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"n": 5}), "n"),
        (json!({"max_tokens": 101}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": "x"}), "top_p"),
        (json!({"presence_penalty": -3}), "presence_penalty"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"seed": -1}), "seed"),
    ] {
        let (status, error) = refusal(&url, with(json!({"messages": hi}), extra.clone())).await;
        assert_eq!(status, 400, "{extra}");
        assert_eq!(error["param"], param, "{extra}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["code"].is_string(), "{error}");
    }
    for (messages, param) in [
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            "messages.[0].content.[0].type",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]),
            "messages.[1].role",
        ),
        (json!([]), "messages"),
    ] {
        let (status, error) = refusal(&url, json!({"messages": messages})).await;
        assert_eq!(status, 400);
        assert_eq!(error["param"], param, "{error}");
    }
    let (_, error) = refusal(
        &url,
        json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("input_audio"),
        "named: {error}"
    );

    // What current clients send: no model, the developer role, text parts, harmless extras.
    let ok = post_json(
        &url,
        &json!({
            "messages": [
                {"role": "developer", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "colour."}]}
            ],
            "max_completion_tokens": 3,
            "response_format": {"type": "text"},
            "modalities": ["text"],
            "tools": [],
            "user": "someone",
            "store": false,
            "metadata": {"a": "b"},
            "some_future_field": 1,
        }),
    )
    .await;
    assert_eq!(ok["object"], "chat.completion", "{ok}");
    assert_eq!(ok["model"], "SmolLM2-135M-Instruct.Q4_1");
}

/// A fake upstream that records the one request body it gets and answers with a fixed completion.
fn recording_upstream() -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("a request");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        let answer = r#"{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .expect("answer");
        String::from_utf8(body).expect("UTF-8 body")
    });
    (url, handle)
}

#[tokio::test]
async fn the_proxy_passes_every_parameter_through_unchanged() {
    let (upstream, recorded) = recording_upstream();
    let proxy = Server::start(&["--upstream", &upstream], &[]);
    // Everything the local model refuses, and things no server knows: the upstream decides.
    let sent = json!({
        "model": "gpt-x",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "42"}
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
        "n": 9,
        "stop": ["a", "b"],
        "seed": 3,
        "logit_bias": {"50256": -100},
        "logprobs": true,
        "top_logprobs": 4,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "temperature": 0.3,
        "top_p": 0.9,
        "max_completion_tokens": 7,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "reasoning_effort": "low",
        "a_field_from_the_future": {"nested": [1, 2]}
    });
    let r = post_json(proxy.url("/v1/chat/completions"), &sent).await;
    assert_eq!(r["choices"][0]["message"]["content"], "ok", "{r}");
    let got: Value = serde_json::from_str(&recorded.join().expect("upstream")).expect("JSON");
    assert_eq!(got, sent);
}

//! `selfroute serve` on 127.0.0.1 with the real SmolLM2 model: the OpenAI surface, its limits,
//! queueing, cancellation, CORS, static files, and the key-holding upstream proxy.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{Server, chat_body, stream_text};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn streaming_and_plain_answers_agree_and_follow_the_openai_format() {
    let server = Server::model(&[]);
    let question = "What is 7 + 5? Answer with just the number.";
    let plain: serde_json::Value = support::post_json(
        server.url("/v1/chat/completions"),
        &chat_body(question, 12, false),
    )
    .await;
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    let text = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("12"), "answer was {text:?}");
    let usage = &plain["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "my-request-7")
        .json(&chat_body(question, 12, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "my-request-7");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = response.bytes().await.unwrap();
    let (streamed, finish, done) = stream_text(&body);
    assert_eq!(streamed, text, "greedy stream equals the plain answer");
    assert!(done, "the stream ends with [DONE]");
    assert!(finish.is_some());

    let models: serde_json::Value = support::get_json(server.url("/v1/models")).await;
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let health: serde_json::Value = support::get_json(server.url("/health")).await;
    assert_eq!(health["status"], "ok");

    let log = server.stop();
    assert!(
        log.contains("my-request-7") && log.contains("completion done"),
        "structured log names the request:\n{log}"
    );
}

async fn error_of(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.expect("error JSON");
    body["error"]["message"]
        .as_str()
        .expect("OpenAI error shape")
        .to_string()
}

#[tokio::test]
async fn bad_requests_get_clear_openai_errors() {
    let server = Server::model(&[
        "--max-messages",
        "3",
        "--max-tokens-limit",
        "100",
        "--max-body-bytes",
        "4096",
    ]);
    let url = server.url("/v1/chat/completions");
    let c = client();
    let m = error_of(
        c.post(&url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(m.contains("not valid JSON"), "{m}");
    let m = error_of(
        c.post(&url)
            .json(&serde_json::json!({"model": "x", "messages": []}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(m.contains("must not be empty"), "{m}");
    let m = error_of(
        c.post(&url)
            .json(&serde_json::json!({"model": "x", "messages": [{"role": "wizard", "content": "hi"}]}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(m.contains("wizard"), "{m}");
    let four: Vec<_> = (0..4)
        .map(|_| serde_json::json!({"role": "user", "content": "hi"}))
        .collect();
    let m = error_of(
        c.post(&url)
            .json(&serde_json::json!({"model": "x", "messages": four}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(m.contains("limit of 3"), "{m}");
    let m = error_of(
        c.post(&url)
            .json(&chat_body("hi", 101, false))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(m.contains("max_tokens 101"), "{m}");
    // Every 400 names its parameter.
    let r = c
        .post(&url)
        .json(&chat_body("hi", 101, false))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"]["param"], "max_tokens", "{body}");
    let big = "x".repeat(5000);
    let r = c
        .post(&url)
        .json(&chat_body(&big, 10, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // In the OpenAI error shape, like every other refusal, so SDKs show the reason.
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    // The server is still fine.
    let r = c
        .post(&url)
        .json(&chat_body("hi", 2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn concurrent_requests_are_queued_and_all_answered() {
    let server = Server::model(&[]);
    let url = server.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = chat_body(&format!("Count to {}.", i + 2), 8, i % 2 == 0);
                let r = client().post(&url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap().len())
            })
        })
        .collect();
    for t in tasks {
        let (status, len) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(len > 0);
    }
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_generation() {
    let server = Server::model(&["--log-json"]);
    let url = server.url("/v1/chat/completions");
    let response = client()
        .post(&url)
        .header("x-request-id", "abandoned")
        .json(&chat_body(
            "Write a very long story about a dragon.",
            2000,
            true,
        ))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.expect("first bytes").unwrap();
    drop(stream);
    // If the abandoned 2000-token generation still ran, this would wait behind it for tens of
    // seconds.
    let started = Instant::now();
    let r = client()
        .post(&url)
        .json(&chat_body("Hi", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited {:?}",
        started.elapsed()
    );
    let log = server.stop();
    let done: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["request_id"] == "abandoned" && l["message"] == "completion done")
        .unwrap_or_else(|| panic!("a JSON log line for the abandoned request:\n{log}"));
    let generated = done["completion_tokens"].as_u64().unwrap();
    assert!(generated < 200, "generation went on for {generated} tokens");
}

#[tokio::test]
async fn cors_is_off_unless_configured_and_static_files_are_served() {
    let dir = std::env::temp_dir().join(format!("selfroute-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    let preflight = |base: String| async move {
        client()
            .request(
                reqwest::Method::OPTIONS,
                format!("{base}/v1/chat/completions"),
            )
            .header("origin", "http://example.test")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap()
    };
    let closed = Server::model(&["--static", dir.to_str().unwrap()]);
    let r = preflight(closed.base.clone()).await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let page = client().get(closed.url("/")).send().await.unwrap();
    assert_eq!(page.text().await.unwrap(), "<h1>demo</h1>");
    drop(closed);

    let open = Server::model(&["--cors-origin", "http://example.test"]);
    let r = preflight(open.base.clone()).await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://example.test"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_upstream_chain_works_and_the_key_reaches_only_the_upstream() {
    const KEY: &str = "sk-test-0123456789abcdef";
    let model = support::model();
    let upstream = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--require-key-env",
            "MODEL_SERVER_KEY",
        ],
        &[("MODEL_SERVER_KEY", KEY)],
    );
    let proxy = Server::start(
        &["--upstream", &upstream.url("/v1")],
        &[("SELFROUTE_UPSTREAM_API_KEY", KEY)],
    );
    let body = chat_body("What is 7 + 5? Answer with just the number.", 12, true);

    // Without the key the model server refuses.
    let direct = client()
        .post(upstream.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);

    // Through the proxy, which adds it, the answer streams, and nothing carries the key back.
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = format!("{:?}", r.headers());
    let bytes = r.bytes().await.unwrap();
    let (text, _, done) = stream_text(&bytes);
    assert!(text.contains("12"), "{text:?}");
    assert!(done);
    assert!(!headers.contains(KEY));
    assert!(!String::from_utf8_lossy(&bytes).contains(KEY));

    // A non-streaming call and the model list also pass through.
    let plain: serde_json::Value = support::post_json(
        proxy.url("/v1/chat/completions"),
        &chat_body("Hi", 4, false),
    )
    .await;
    assert_eq!(plain["object"], "chat.completion");
    let models: serde_json::Value = support::get_json(proxy.url("/v1/models")).await;
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");

    // A proxy holding the wrong key relays the upstream's refusal, not a fake success.
    let wrong = Server::start(
        &["--upstream", &upstream.url("/v1")],
        &[("SELFROUTE_UPSTREAM_API_KEY", "sk-wrong")],
    );
    let r = client()
        .post(wrong.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let proxy_log = proxy.stop();
    assert!(!proxy_log.contains(KEY), "the key is never logged");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_with_a_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let proxy = Server::start(&["--upstream", &format!("http://{addr}/v1")], &[]);
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("Hi", 4, false))
        .send()
        .await
        .unwrap();
    let m = error_of(r, 502).await;
    assert!(m.contains("cannot be reached"), "{m}");
}

#[tokio::test]
async fn a_silent_upstream_times_out_with_a_504() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let proxy = Server::start(
        &[
            "--upstream",
            &format!("http://{addr}/v1"),
            "--upstream-timeout",
            "0.5",
        ],
        &[],
    );
    let started = Instant::now();
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("Hi", 4, false))
        .send()
        .await
        .unwrap();
    let m = error_of(r, 504).await;
    assert!(m.contains("did not answer in time"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A site like `target/site`: a page, a module script, a worker module, the wasm and a model.
fn demo_site(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("selfroute-site-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("web/pkg")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(dir.join("web/chat.js"), "export {};").unwrap();
    std::fs::write(dir.join("web/worker.mjs"), "export {};").unwrap();
    std::fs::write(dir.join("web/chat.css"), "h1 {}").unwrap();
    std::fs::write(dir.join("web/pkg/app_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let model: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("models/demo.gguf"), model).unwrap();
    dir
}

/// Static files only: an upstream that is never asked spares loading a model.
fn static_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--static",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

#[tokio::test]
async fn static_files_carry_the_types_and_caching_a_worker_and_wasm_need() {
    let dir = demo_site("types");
    let server = static_server(&dir, &[]);
    let c = client();
    for (path, content_type, no_cache) in [
        ("/", "text/html", true),
        ("/index.html", "text/html", true),
        ("/web/chat.js", "text/javascript", true),
        ("/web/worker.mjs", "text/javascript", true),
        ("/web/chat.css", "text/css", false),
        ("/web/pkg/app_bg.wasm", "application/wasm", true),
        ("/models/demo.gguf", "application/octet-stream", false),
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let got = h["content-type"].to_str().unwrap();
        assert!(got.starts_with(content_type), "{path}: {got}");
        assert_eq!(
            h.get("cache-control").map(|v| v.to_str().unwrap()),
            no_cache.then_some("no-cache"),
            "{path}"
        );
        assert!(
            h.get("cross-origin-opener-policy").is_none(),
            "{path}: isolation is opt-in"
        );
    }

    // The page's download progress needs the model's length; a resumed download needs ranges.
    let r = c.get(server.url("/models/demo.gguf")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let r = c
        .get(server.url("/models/demo.gguf"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(r.headers()["content-length"], "10");
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &(10..20u8).collect::<Vec<_>>()[..]);
    let missing = c.get(server.url("/models/none.gguf")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn cross_origin_isolation_is_sent_on_every_response_when_asked() {
    let dir = demo_site("coi");
    let server = static_server(&dir, &["--cross-origin-isolation"]);
    let c = client();
    for path in [
        "/",
        "/web/chat.js",
        "/web/pkg/app_bg.wasm",
        "/models/demo.gguf",
        "/health",
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["cross-origin-opener-policy"], "same-origin", "{path}");
        assert_eq!(h["cross-origin-embedder-policy"], "require-corp", "{path}");
        assert_eq!(h["cross-origin-resource-policy"], "same-origin", "{path}");
    }
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

//! Starting `selfroute serve` as a user would, on a free port, and stopping it with the test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub fn model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask fetch-model`",
        path.display()
    );
    path
}

pub fn selfroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_selfroute"))
}

/// A running `selfroute serve`, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `selfroute serve --port 0 ARGS` with extra environment variables.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = selfroute();
        cmd.args(["serve", "--port", "0", "--threads", "1"])
            .args(args)
            .env_remove("SELFROUTE_UPSTREAM_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("selfroute serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reads the address line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self {
            child,
            base,
            stderr: Some(stderr),
        }
    }

    pub fn model(extra: &[&str]) -> Self {
        let model = model();
        let mut args = vec!["--model", model.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Self::start(&args, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server and returns what it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chat_body(content: &str, max_tokens: u32, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "any",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// The text of a streamed completion, parsed with selfroute-core's client-side parser.
pub fn stream_text(body: &[u8]) -> (String, Option<String>, bool) {
    use selfroute_core::openai::{SseParser, StreamItem, parse_stream_data};
    let mut parser = SseParser::new();
    let mut events = parser.feed(body).expect("valid SSE");
    events.extend(parser.finish().expect("valid SSE"));
    let mut text = String::new();
    let mut finish = None;
    let mut done = false;
    for event in events {
        match parse_stream_data(&event.data).expect("valid chunk") {
            StreamItem::Done => done = true,
            StreamItem::Chunk(chunk) => {
                if let Some(t) = chunk.text() {
                    text.push_str(t);
                }
                if let Some(f) = chunk.choices.first().and_then(|c| c.finish_reason.clone()) {
                    finish = Some(f);
                }
            }
        }
    }
    (text, finish, done)
}

/// GET `url` and parse the JSON answer.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

/// POST `body` as JSON to `url` and parse the JSON answer.
pub async fn post_json(url: impl reqwest::IntoUrl, body: &serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

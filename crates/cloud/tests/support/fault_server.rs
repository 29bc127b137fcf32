//! A real HTTP/1.1 server on 127.0.0.1 that answers Chat Completions requests with a scripted
//! behaviour per connection, for the failures a real server will not produce on demand. It
//! records every request it receives.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A well-formed stream of these pieces, then `[DONE]`.
    Stream(Vec<String>),
    /// A non-streaming JSON completion.
    Json(String),
    /// HTTP 500 with an OpenAI error body.
    Status500,
    /// HTTP 429 with `Retry-After: secs`.
    TooMany { retry_after_secs: u64 },
    /// Headers and the first piece, then silence for `for_ms`.
    StallMidStream { for_ms: u64 },
    /// Reads the request, then silence before any header for `for_ms`.
    StallBeforeHeaders { for_ms: u64 },
    /// Two pieces, then the connection closes without `[DONE]`.
    CloseMidStream,
    /// One piece, then a `data:` line that is not JSON.
    MalformedChunk,
    /// HTTP 400 with an OpenAI error JSON.
    ErrorJson,
    /// HTTP 200, one piece, then an error object in the stream.
    ErrorMidStream,
}

#[derive(Debug, Clone)]
pub struct Captured {
    pub head: String,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// A request header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub struct FaultServer {
    pub addr: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
}

impl FaultServer {
    /// Serves `script` one behaviour per connection; once it is used up, the last one repeats.
    pub async fn start(script: Vec<Behaviour>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let log = captured.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let behaviour = {
                    let mut s = script.lock().expect("script");
                    if s.len() > 1 {
                        s.pop_front()
                    } else {
                        s.front().cloned()
                    }
                };
                let log = log.clone();
                tokio::spawn(async move {
                    if let Some(b) = behaviour {
                        serve(socket, b, log).await;
                    }
                });
            }
        });
        Self { addr, captured }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.captured.lock().expect("log").clone()
    }
}

/// An address nothing listens on.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/v1")
}

async fn read_request(socket: &mut TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(Captured {
        head,
        body: buf[head_end..head_end + length].to_vec(),
    })
}

fn chunk(piece: &str) -> String {
    let c = serde_json::json!({
        "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fault",
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]
    });
    format!("data: {c}\n\n")
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

fn plain(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn serve(mut socket: TcpStream, behaviour: Behaviour, log: Arc<Mutex<Vec<Captured>>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    log.lock().expect("log").push(request);
    let mut out = String::new();
    match behaviour {
        Behaviour::Stream(pieces) => {
            out.push_str(SSE_HEAD);
            for p in &pieces {
                out.push_str(&chunk(p));
            }
            out.push_str("data: [DONE]\n\n");
        }
        Behaviour::Json(text) => {
            let body = serde_json::json!({
                "id": "c1", "object": "chat.completion", "created": 0, "model": "fault",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            });
            out = plain("200 OK", "", &body.to_string());
        }
        Behaviour::Status500 => {
            out = plain(
                "500 Internal Server Error",
                "",
                r#"{"error":{"message":"the model crashed","type":"server_error"}}"#,
            );
        }
        Behaviour::TooMany { retry_after_secs } => {
            out = plain(
                "429 Too Many Requests",
                &format!("Retry-After: {retry_after_secs}\r\n"),
                r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
            );
        }
        Behaviour::StallMidStream { for_ms } => {
            let _ = socket.write_all(SSE_HEAD.as_bytes()).await;
            let _ = socket.write_all(chunk("Partial").as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            return;
        }
        Behaviour::StallBeforeHeaders { for_ms } => {
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            return;
        }
        Behaviour::CloseMidStream => {
            out.push_str(SSE_HEAD);
            out.push_str(&chunk("Half an "));
            out.push_str(&chunk("answer"));
        }
        Behaviour::MalformedChunk => {
            out.push_str(SSE_HEAD);
            out.push_str(&chunk("Fine so far"));
            out.push_str("data: {\"choices\": [{\"delta\": \n\n");
        }
        Behaviour::ErrorJson => {
            out = plain(
                "400 Bad Request",
                "",
                r#"{"error":{"message":"model `x` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#,
            );
        }
        Behaviour::ErrorMidStream => {
            out.push_str(SSE_HEAD);
            out.push_str(&chunk("Starting"));
            out.push_str(
                "data: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\"}}\n\n",
            );
        }
    }
    let _ = socket.write_all(out.as_bytes()).await;
    let _ = socket.shutdown().await;
}

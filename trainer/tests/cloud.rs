//! The training cloud against a real HTTP server on 127.0.0.1: each prompt is asked once, the
//! verdicts are cached in a file, and a later run reads the file instead of asking again.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use selfroute_train::cloud::{CloudOracle, HttpCloud};
use selfroute_train::tasks::{Split, parse_task};

/// Answers every chat completion with `<answer>5</answer>`; counts requests.
fn start_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then the body by its length.
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"<answer>5</answer>"},"finish_reason":"stop"}]}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

#[test]
fn each_prompt_is_asked_once_and_the_cache_survives_the_run() {
    let (url, requests) = start_server();
    let dir = std::env::temp_dir().join(format!("selfroute-cloud-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cloud-cache.jsonl");
    let task = parse_task("arith:1").unwrap();
    let problems = task.problems(Split::Train, 30, 4).unwrap();

    let mut cloud = HttpCloud::new(&url, None, "big".into(), Some(16), cache.clone()).unwrap();
    let first: Vec<bool> = problems
        .iter()
        .map(|p| cloud.is_correct(task.as_ref(), p).unwrap())
        .collect();
    let again: Vec<bool> = problems
        .iter()
        .map(|p| cloud.is_correct(task.as_ref(), p).unwrap())
        .collect();
    assert_eq!(first, again);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        problems.len(),
        "once per prompt"
    );
    for (p, &ok) in problems.iter().zip(&first) {
        assert_eq!(ok, p.answer == "5", "{} -> {}", p.question, p.answer);
    }
    assert!(first.iter().any(|&c| c) && first.iter().any(|&c| !c));
    assert_eq!(cloud.calls(), problems.len());
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap().lines().count(),
        problems.len()
    );

    // A later run reads the cache and asks nothing.
    let mut later = HttpCloud::new(&url, None, "big".into(), Some(16), cache.clone()).unwrap();
    let cached: Vec<bool> = problems
        .iter()
        .map(|p| later.is_correct(task.as_ref(), p).unwrap())
        .collect();
    assert_eq!(cached, first);
    assert_eq!(requests.load(Ordering::SeqCst), problems.len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_cloud_that_is_down_counts_as_wrong_and_is_asked_again_later() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let dir = std::env::temp_dir().join(format!("selfroute-cloud-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache.jsonl");
    let task = parse_task("arith:1").unwrap();
    let problem = task.problems(Split::Train, 1, 0).unwrap().remove(0);
    let mut cloud = HttpCloud::new(&url, None, "big".into(), None, cache.clone()).unwrap();
    assert!(!cloud.is_correct(task.as_ref(), &problem).unwrap());
    assert_eq!(cloud.failures, 1);
    assert_eq!(cloud.calls(), 0, "a failure is not cached");
    assert!(!cache.exists());
    std::fs::remove_dir_all(&dir).ok();
}

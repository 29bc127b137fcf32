//! The training cloud against a real HTTP server on 127.0.0.1: each prompt is asked once, the
//! verdicts are cached in a file, and a later run reads the file instead of asking again; the
//! cache belongs to one cloud (endpoint and model); a failing cloud is asked once per prompt per
//! step, so all of a step's offloads of a prompt get the same reward.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::DType;
use selfroute_core::{OffloadSignal, RetryPolicy};
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::cloud::{CloudOracle, HttpCloud};
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::RolloutConfig;
use selfroute_train::tasks::{Problem, Split, Task, Verdict, parse_task};
use selfroute_train::train::{OffloadMode, ScoredGroup, TrainConfig, Trainer, prompt_ids};
use selfroute_train::warmup::calibrate_offload_row;

/// Answers every chat completion with `<answer>5</answer>`; counts requests.
fn start_server() -> (String, Arc<AtomicUsize>) {
    start_server_failing_first(0)
}

/// As [`start_server`], but the first `failures` requests get a 503.
fn start_server_failing_first(failures: usize) -> (String, Arc<AtomicUsize>) {
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
            if seen.fetch_add(1, Ordering::SeqCst) < failures {
                let _ = write!(
                    stream,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
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

#[test]
fn the_cache_belongs_to_one_endpoint_and_model() {
    let (url, requests) = start_server();
    let (other_url, other_requests) = start_server();
    let dir = std::env::temp_dir().join(format!("selfroute-cloud-keyed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cloud-cache.jsonl");
    let task = parse_task("arith:1").unwrap();
    let problems = task.problems(Split::Train, 5, 4).unwrap();
    // A line from before verdicts named their cloud: whose answer it was is unknown.
    std::fs::write(
        &cache,
        format!(
            "{}\n",
            serde_json::json!({"id": problems[0].id, "question": "?", "answer": "", "correct": true})
        ),
    )
    .unwrap();
    let ask_all = |cloud: &mut HttpCloud| {
        for p in &problems {
            cloud.is_correct(task.as_ref(), p).unwrap();
        }
    };
    let open = |url: &str, model: &str| {
        HttpCloud::new(url, None, model.into(), Some(16), cache.clone()).unwrap()
    };

    let mut big = open(&url, "big");
    assert_eq!(big.calls(), 0, "the unnamed line is not reused");
    ask_all(&mut big);
    assert_eq!(requests.load(Ordering::SeqCst), problems.len());
    // Another model behind the same endpoint is another cloud.
    let mut small = open(&url, "small");
    assert_eq!(small.calls(), 0);
    ask_all(&mut small);
    assert_eq!(requests.load(Ordering::SeqCst), 2 * problems.len());
    // So is the same model name at another endpoint.
    let mut elsewhere = open(&other_url, "big");
    assert_eq!(elsewhere.calls(), 0);
    ask_all(&mut elsewhere);
    assert_eq!(other_requests.load(Ordering::SeqCst), problems.len());
    // Each reads back its own answers from the shared file and asks nothing.
    for (u, model) in [(&url, "big"), (&url, "small"), (&other_url, "big")] {
        let mut again = open(u, model);
        assert_eq!(again.calls(), problems.len(), "{u} {model}");
        ask_all(&mut again);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2 * problems.len());
    assert_eq!(other_requests.load(Ordering::SeqCst), problems.len());
    assert_ne!(big.identity(), small.identity());
    assert_ne!(big.identity(), elsewhere.identity());
    std::fs::remove_dir_all(&dir).ok();
}

/// Local answers are never right; the cloud's `<answer>5</answer>` always is.
struct OnlyTheCloud;

impl Task for OnlyTheCloud {
    fn name(&self) -> &str {
        "only-the-cloud"
    }
    fn problems(&self, _: Split, n: usize, _: u64) -> selfroute_train::Result<Vec<Problem>> {
        Ok((0..n)
            .map(|i| Problem {
                id: 1000 + i as u64,
                question: format!("question {i}"),
                answer: "5".into(),
                difficulty: 0,
                system: None,
                subset: String::new(),
            })
            .collect())
    }
    fn verify(&self, _: &Problem, response: &str) -> Verdict {
        if response.trim() == "<answer>5</answer>" {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }
    fn answer_format(&self) -> &str {
        ""
    }
}

#[test]
fn a_failing_cloud_is_asked_once_per_prompt_per_step() {
    // The first call fails (all its attempts), every later one succeeds: a trainer that asked
    // again for the next offload of the same prompt would score that prompt's offloads both ways.
    let attempts = RetryPolicy::default().max_retries as usize + 1;
    let (url, requests) = start_server_failing_first(attempts);
    let dir = std::env::temp_dir().join(format!("selfroute-cloud-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cloud =
        HttpCloud::new(&url, None, "big".into(), Some(16), dir.join("cache.jsonl")).unwrap();

    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = OnlyTheCloud.problems(Split::Train, 4, 0).unwrap();
    let prompts: Vec<Vec<u32>> = problems
        .iter()
        .map(|p| prompt_ids(template, &package.tokenizer, &OnlyTheCloud, p).unwrap())
        .collect();
    // Most groups offload several times.
    calibrate_offload_row(&model, &prompts, signal.token_id.unwrap(), 0.5).unwrap();
    let config = TrainConfig {
        prompts_per_step: 4,
        rollout: RolloutConfig {
            group: 8,
            max_new_tokens: 2,
            temperature: 1.0,
        },
        algo: Algo::Gapg,
        rho: Some(3.0 / 7.0),
        reward: RewardConfig::default(),
        schedule: LrSchedule {
            peak: 1e-3,
            warmup_steps: 0,
            total_steps: 2,
            final_fraction: 1.0,
        },
        adamw: AdamWConfig::default(),
        seed: 1,
        micro_batch: None,
        train_layers: None,
        offload: OffloadMode::Learn,
        every_answer: false,
    };
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        template,
        signal,
        &OnlyTheCloud,
        &mut cloud,
        problems,
        config,
    )
    .unwrap();

    let offloading = |groups: &[ScoredGroup]| -> Vec<(u64, Vec<f64>)> {
        groups
            .iter()
            .filter(|g| g.summary.offloaded > 0)
            .map(|g| {
                let rewards = g
                    .samples
                    .iter()
                    .zip(&g.rewards)
                    .filter(|(s, _)| s.offloaded())
                    .map(|(_, &r)| r)
                    .collect();
                (g.problem.id, rewards)
            })
            .collect()
    };
    let first = trainer.prepare_update().unwrap();
    let asked = offloading(&first.groups);
    eprintln!("step 1 offload rewards: {asked:?}");
    assert!(asked.len() >= 2 && asked[0].1.len() >= 2, "{asked:?}");
    // One call per prompt that offloaded: the first failed after its retries, the rest answered.
    assert_eq!(requests.load(Ordering::SeqCst), attempts + asked.len() - 1);
    assert_eq!(first.cloud_failures, 1);
    for (i, (id, rewards)) in asked.iter().enumerate() {
        let expected = if i == 0 { 0.0 } else { 0.25 };
        assert!(
            rewards.iter().all(|&r| r == expected),
            "prompt {id}: one verdict for the whole step, got {rewards:?}"
        );
    }
    let metrics = trainer.apply_update(first).unwrap();
    assert_eq!(metrics.cloud_failures, 1);
    assert_eq!(
        metrics.cloud_calls,
        asked.len() - 1,
        "the failure is not cached"
    );

    // The next step (the same four prompts) asks again only about the one that failed.
    let before = requests.load(Ordering::SeqCst);
    let second = trainer.prepare_update().unwrap();
    let failed_again = offloading(&second.groups)
        .iter()
        .any(|(id, _)| *id == asked[0].0);
    assert_eq!(
        requests.load(Ordering::SeqCst) - before,
        usize::from(failed_again)
    );
    assert_eq!(second.cloud_failures, 0);
    std::fs::remove_dir_all(&dir).ok();
}

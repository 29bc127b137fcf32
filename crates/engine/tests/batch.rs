//! Continuous batching through the scheduler and its worker thread: every client gets the same
//! greedy tokens as a one-at-a-time run of its prompt on the single-sequence path, while others
//! join and leave mid-way.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::{FinishReason, LogitsFor, ModelPackage, Sampler, SamplingParams};
use selfroute_engine::{
    BatchOptions, BatchWorker, CancelToken, Finished, Flow, SamplerPicker, Scheduler,
    SequenceEvent, SequenceRequest, Submission,
};

const CONTEXT: u32 = 96;

fn model() -> CandleModel {
    let package = ModelPackage::from_gguf(
        "tiny.gguf",
        common::GgufBuilder::tiny_llama_with_offload(CONTEXT).bytes(),
    )
    .expect("load");
    CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).expect("model")
}

fn argmax(row: &[f32]) -> u32 {
    selfroute_core::sampler::argmax(row)
}

/// Greedy tokens of `prompt`, one at a time on the single-sequence path.
fn one_at_a_time(model: &mut CandleModel, prompt: &[u32], n: usize) -> Vec<u32> {
    model.clear_cache();
    let mut out = Vec::new();
    let mut logits = model
        .forward_tokens(prompt, 0, LogitsFor::Last)
        .expect("prefill")
        .to_vec2::<f32>()
        .expect("logits");
    for i in 0..n {
        let token = argmax(&logits[0]);
        out.push(token);
        if i + 1 < n {
            logits = model
                .forward_tokens(&[token], prompt.len() + i, LogitsFor::Last)
                .expect("step")
                .to_vec2::<f32>()
                .expect("logits");
        }
    }
    model.clear_cache();
    out
}

fn greedy(prompt: &[u32], max_tokens: usize, stop_tokens: Vec<u32>) -> SequenceRequest {
    SequenceRequest {
        prompt: prompt.to_vec(),
        max_tokens,
        stop_tokens,
        picker: Box::new(SamplerPicker::new(
            Sampler::new(SamplingParams::greedy()).expect("sampler"),
            Vec::new(),
        )),
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 77, 200, 13],
        (10..30).collect(),
        vec![250],
        vec![40, 41, 42, 43, 44, 45, 46],
        (100..140).collect(),
    ]
}

/// Tokens and the final event a client saw.
fn collect(events: &mpsc::Receiver<SequenceEvent>) -> (Vec<u32>, SequenceEvent) {
    let mut tokens = Vec::new();
    loop {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(SequenceEvent::Token(p)) => tokens.push(p.token),
            Ok(end) => return (tokens, end),
            Err(e) => panic!("no end event: {e}"),
        }
    }
}

#[test]
fn concurrent_clients_get_their_one_at_a_time_tokens_with_joins_and_leaves() {
    let mut reference_model = model();
    let prompts = prompts();
    let lengths = [12usize, 20, 6, 16, 9];
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .zip(lengths)
        .map(|(p, n)| one_at_a_time(&mut reference_model, p, n))
        .collect();

    // Room for three at a time, so the last two wait and join when others leave; the 40-token
    // prompt is read in 8-token chunks between steps.
    let worker = Arc::new(
        BatchWorker::spawn(
            model(),
            BatchOptions {
                max_sequences: 3,
                prefill_chunk: 8,
            },
        )
        .expect("worker"),
    );
    // Clients 0-2 start together; 3 and 4 start once client 0 has its third token (mid-way).
    let started = Arc::new(Barrier::new(3));
    let (third_token, mid_way) = mpsc::channel::<()>();
    let mid_way = Arc::new(std::sync::Mutex::new(mid_way));
    let mut clients = Vec::new();
    for (i, (prompt, n)) in prompts.iter().cloned().zip(lengths).enumerate() {
        let worker = worker.clone();
        let started = started.clone();
        let mid_way = mid_way.clone();
        let third_token = third_token.clone();
        clients.push(std::thread::spawn(move || {
            if i < 3 {
                started.wait();
            } else {
                let _ = mid_way.lock().expect("lock").recv();
            }
            let (sink, events) = mpsc::channel();
            let _handle = worker
                .submit(greedy(&prompt, n, Vec::new()), sink)
                .expect("submit");
            let mut tokens = Vec::new();
            loop {
                match events.recv_timeout(Duration::from_secs(60)).expect("event") {
                    SequenceEvent::Token(p) => {
                        tokens.push(p.token);
                        if i == 0 && tokens.len() == 3 {
                            // Both late clients.
                            let _ = third_token.send(());
                            let _ = third_token.send(());
                        }
                    }
                    end => return (tokens, end),
                }
            }
        }));
    }
    // A client that leaves mid-way: it drops its handle after two tokens.
    let (sink, events) = mpsc::channel();
    let handle = worker
        .submit(greedy(&prompts[1], 20, Vec::new()), sink)
        .expect("submit");
    let mut left = Vec::new();
    while left.len() < 2 {
        if let SequenceEvent::Token(p) = events.recv_timeout(Duration::from_secs(60)).expect("ev") {
            left.push(p.token);
        }
    }
    drop(handle);
    for (i, client) in clients.into_iter().enumerate() {
        let (tokens, end) = client.join().expect("client");
        assert_eq!(tokens, expected[i], "client {i}");
        assert_eq!(
            end,
            SequenceEvent::Finished(Finished {
                reason: FinishReason::Length,
                prompt_tokens: prompts[i].len(),
                completion_tokens: lengths[i],
            }),
            "client {i}"
        );
    }
    // The leaver's tokens were right as far as they went, and it stopped early.
    let (rest, end) = collect(&events);
    let all: Vec<u32> = left.iter().chain(&rest).copied().collect();
    assert_eq!(all[..], expected[1][..all.len()]);
    assert!(
        all.len() < 20,
        "a cancelled sequence kept going: {}",
        all.len()
    );
    assert!(
        matches!(
            end,
            SequenceEvent::Finished(Finished {
                reason: FinishReason::Cancelled,
                ..
            })
        ),
        "{end:?}"
    );
    assert_eq!(worker.queued(), 0);
}

/// The scheduler without a thread: limits, stop tokens, a sink that stops, cancellation before
/// admission and requests that cannot run.
#[test]
fn the_scheduler_ends_each_sequence_for_the_right_reason() {
    let mut reference_model = model();
    let prompt: Vec<u32> = (60..75).collect();
    let expected = one_at_a_time(&mut reference_model, &prompt, 10);
    let mut scheduler = Scheduler::new(
        model(),
        BatchOptions {
            max_sequences: 2,
            prefill_chunk: 4,
        },
    );
    let mut receivers = Vec::new();
    let mut submit = |request: SequenceRequest, cancel: CancelToken| {
        let (sink, events) = mpsc::channel();
        scheduler.submit(Submission {
            request,
            sink: Box::new(sink),
            cancel,
        });
        receivers.push(events);
    };
    // 0: runs to its limit. 1: stops at the first token the reference picks that it had not
    // picked before (the stop token is not sent).
    let stop_at = (1..expected.len())
        .find(|&i| !expected[..i].contains(&expected[i]))
        .expect("a new token");
    submit(greedy(&prompt, 10, Vec::new()), CancelToken::default());
    submit(
        greedy(&prompt, 10, vec![expected[stop_at]]),
        CancelToken::default(),
    );
    // 2: cancelled while waiting. 3: an empty prompt. 4: a prompt that fills the context.
    let cancelled = CancelToken::default();
    submit(greedy(&prompt, 10, Vec::new()), cancelled.clone());
    cancelled.cancel();
    submit(greedy(&[], 10, Vec::new()), CancelToken::default());
    submit(
        greedy(&vec![7; CONTEXT as usize], 10, Vec::new()),
        CancelToken::default(),
    );
    // 5: a sink that wants one token only.
    let (tx, stops_after_one) = mpsc::channel();
    let mut sent = 0;
    scheduler.submit(Submission {
        request: greedy(&prompt, 10, Vec::new()),
        sink: Box::new(move |event: SequenceEvent| {
            let _ = tx.send(event);
            sent += 1;
            if sent == 1 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }),
        cancel: CancelToken::default(),
    });
    let mut steps = 0;
    while scheduler.has_work() {
        assert!(scheduler.running() <= 2, "more sequences than places");
        scheduler.step();
        steps += 1;
        assert!(steps < 200, "the scheduler does not finish");
    }
    let finished = |reason, completion_tokens| {
        SequenceEvent::Finished(Finished {
            reason,
            prompt_tokens: prompt.len(),
            completion_tokens,
        })
    };
    let results: Vec<_> = receivers.iter().map(collect).collect();
    assert_eq!(
        results[0],
        (expected.clone(), finished(FinishReason::Length, 10))
    );
    assert_eq!(
        results[1],
        (
            expected[..stop_at].to_vec(),
            finished(FinishReason::Stop, stop_at)
        )
    );
    assert_eq!(
        results[2],
        (Vec::new(), finished(FinishReason::Cancelled, 0))
    );
    assert!(matches!(results[3], (_, SequenceEvent::Failed(_))));
    assert!(matches!(
        results[4].1,
        SequenceEvent::Finished(Finished {
            reason: FinishReason::ContextFull,
            ..
        })
    ));
    assert_eq!(
        collect(&stops_after_one),
        (expected[..1].to_vec(), finished(FinishReason::Cancelled, 1))
    );
    // Every sequence left and freed its cache.
    assert_eq!(scheduler.running(), 0);
}

/// A long generation stops at the context, not past it.
#[test]
fn a_sequence_stops_when_the_context_is_full() {
    let mut scheduler = Scheduler::new(model(), BatchOptions::default());
    let (sink, events) = mpsc::channel();
    let prompt: Vec<u32> = (30..40).collect();
    scheduler.submit(Submission {
        request: greedy(&prompt, 1000, Vec::new()),
        sink: Box::new(sink),
        cancel: CancelToken::default(),
    });
    while scheduler.has_work() {
        scheduler.step();
    }
    let (tokens, end) = collect(&events);
    // Positions 0..CONTEXT hold the prompt and every generated token but the last, which is
    // never fed.
    assert_eq!(tokens.len(), CONTEXT as usize - prompt.len() + 1);
    assert!(matches!(
        end,
        SequenceEvent::Finished(Finished {
            reason: FinishReason::ContextFull,
            ..
        })
    ));
}

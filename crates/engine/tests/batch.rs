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
use selfroute_core::backend::{BatchBackend, BatchStep, Logits, SeqId};
use selfroute_core::{FinishReason, LogitsFor, ModelConfig, ModelPackage, Sampler, SamplingParams};
use selfroute_engine::{
    BatchOptions, BatchWorker, CancelToken, Finished, Flow, Picked, SamplerPicker, Scheduler,
    SequenceEvent, SequenceRequest, Submission, TokenPicker,
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

/// The CPU engine with a record of every prompt chunk it ran, to see how much of each prompt a
/// reused prefix saved.
struct Counting {
    model: CandleModel,
    prefilled: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
}

impl BatchBackend for Counting {
    fn batch_config(&self) -> &ModelConfig {
        self.model.batch_config()
    }
    fn new_sequence(&mut self) -> selfroute_core::Result<SeqId> {
        BatchBackend::new_sequence(&mut self.model)
    }
    fn drop_sequence(&mut self, seq: SeqId) {
        BatchBackend::drop_sequence(&mut self.model, seq);
    }
    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> selfroute_core::Result<()> {
        BatchBackend::truncate_sequence(&mut self.model, seq, len)
    }
    fn prefill(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        start_pos: usize,
    ) -> selfroute_core::Result<Logits> {
        self.prefilled
            .lock()
            .expect("lock")
            .push((start_pos, tokens.len()));
        self.model.prefill(seq, tokens, start_pos)
    }
    fn decode(&mut self, steps: &[BatchStep]) -> selfroute_core::Result<Logits> {
        self.model.decode(steps)
    }
}

/// Greedy picks that keep every row of logits they saw, to compare with a fresh run's rows.
struct Recording(Arc<std::sync::Mutex<Vec<Vec<f32>>>>);

impl TokenPicker for Recording {
    fn pick(&mut self, logits: &mut [f32], _history: &[u32]) -> selfroute_core::Result<Picked> {
        self.0.lock().expect("lock").push(logits.to_vec());
        Ok(Picked::token(argmax(logits)))
    }
}

/// The rows of logits a fresh one-at-a-time greedy run of `prompt` picks its `n` tokens from.
fn fresh_rows(model: &mut CandleModel, prompt: &[u32], n: usize) -> Vec<Vec<f32>> {
    model.clear_cache();
    let mut rows = Vec::new();
    let mut fed = prompt.to_vec();
    let mut start = 0;
    for _ in 0..n {
        let row = model
            .forward_tokens(&fed[start..], start, LogitsFor::Last)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("logits")
            .remove(0);
        start = fed.len();
        fed.push(argmax(&row));
        rows.push(row);
    }
    model.clear_cache();
    rows
}

/// A finished sequence's cache is parked and a later prompt that shares a prefix with it runs
/// only the rest, with the same greedy tokens as a fresh one-at-a-time run: the same prompt
/// again, a strict prefix of it, an extension into what was generated, a prompt that departs
/// mid-way, and a different one.
#[test]
fn a_reused_prompt_prefix_gives_the_fresh_tokens_and_runs_only_the_rest() {
    let mut reference_model = model();
    let base: Vec<u32> = (10..30).collect();
    let first = one_at_a_time(&mut reference_model, &base, 8);
    let extended: Vec<u32> = base
        .iter()
        .chain(&first[..5])
        .chain(&[3, 4])
        .copied()
        .collect();
    let departs: Vec<u32> = base[..12].iter().chain(&[150, 151, 152]).copied().collect();
    let different: Vec<u32> = (200..216).collect();
    // (prompt, tokens to generate, positions expected to come from a parked cache)
    let cases: Vec<(Vec<u32>, usize, usize)> = vec![
        (base.clone(), 8, 0),
        // The whole prompt matches: all but its last token is reused, for logits to pick from.
        (base.clone(), 6, base.len() - 1),
        // That run's cache held the prompt and its generated tokens but the last (the same
        // tokens as the first run's). A reused cache is taken over, not copied: the next
        // request shares only what this one kept.
        (extended.clone(), 6, base.len() + 5),
        (base[..12].to_vec(), 6, 11),
        (departs.clone(), 6, 12),
        (different.clone(), 6, 0),
        // The different prompt was parked in turn.
        (different[..10].to_vec(), 4, 9),
    ];
    let prefilled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut scheduler = Scheduler::new(
        Counting {
            model: model(),
            prefilled: prefilled.clone(),
        },
        BatchOptions {
            max_sequences: 4,
            prefill_chunk: 8,
        },
    );
    for (i, (prompt, n, reused)) in cases.iter().enumerate() {
        let expected = one_at_a_time(&mut reference_model, prompt, *n);
        let expected_rows = fresh_rows(&mut reference_model, prompt, *n);
        prefilled.lock().expect("lock").clear();
        let rows = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, events) = mpsc::channel();
        scheduler.submit(Submission {
            request: SequenceRequest {
                prompt: prompt.clone(),
                max_tokens: *n,
                stop_tokens: Vec::new(),
                picker: Box::new(Recording(rows.clone())),
            },
            sink: Box::new(sink),
            cancel: CancelToken::default(),
        });
        while scheduler.has_work() {
            scheduler.step();
        }
        let (tokens, end) = collect(&events);
        assert_eq!(tokens, expected, "case {i}");
        assert_eq!(
            end,
            SequenceEvent::Finished(Finished {
                reason: FinishReason::Length,
                prompt_tokens: prompt.len(),
                completion_tokens: *n,
            }),
            "case {i}"
        );
        // Every row within float rounding of the fresh run's (see the test below): a wrong
        // token left in the reused cache moves them far more, even where greedy hides it.
        let rows = rows.lock().expect("lock").clone();
        assert_eq!(rows.len(), expected_rows.len(), "case {i}");
        for (step, (got, want)) in rows.iter().zip(&expected_rows).enumerate() {
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "case {i} step {step}: max |diff| {diff:e}");
        }
        let chunks = prefilled.lock().expect("lock").clone();
        assert_eq!(chunks.first().map(|c| c.0), Some(*reused), "case {i}");
        let ran: usize = chunks.iter().map(|c| c.1).sum();
        assert_eq!(ran, prompt.len() - reused, "case {i}");
        assert!(scheduler.parked() >= 1, "case {i}");
    }
    // Parked caches stay within max_sequences (and the scheduler's own bound of four).
    assert!(scheduler.parked() <= 4);
}

/// Running the rest of a prompt over a cache cut back to a shared prefix gives the logits of a
/// fresh prefill to float rounding, not bit for bit: the same rows run in matrix products of
/// another height (the whole prompt, or the rest; one row per decode step), which sum in
/// another order. Measured on the tiny model: about 1.5e-8 at most, so the bound is 1e-5 and
/// the greedy token must match. (The one-at-a-time server path reused its prefix the same way,
/// so the batched path now computes exactly what that one did.)
#[test]
fn a_truncated_cache_gives_the_fresh_prefill_logits() {
    let mut m = model();
    let prompt: Vec<u32> = (40..64).collect();
    let fresh_seq = m.new_sequence();
    let fresh = m
        .forward_sequence(fresh_seq, &prompt, 0, LogitsFor::Last)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .expect("fresh");
    // A cache that ran the first 10 prompt tokens and then something else.
    let seq = m.new_sequence();
    let other: Vec<u32> = prompt[..10].iter().chain(&[7, 8, 9, 11]).copied().collect();
    m.forward_sequence(seq, &other, 0, LogitsFor::Last)
        .expect("other");
    m.truncate_sequence(seq, 10).expect("truncate");
    assert_eq!(m.sequence_len(seq), Some(10));
    let reused = m
        .forward_sequence(seq, &prompt[10..], 10, LogitsFor::Last)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .expect("reused");
    let max_diff = fresh
        .iter()
        .zip(&reused)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("prefix from a prefill: max |diff| = {max_diff:e}");
    assert_eq!(argmax(&fresh), argmax(&reused));
    assert!(max_diff < 1e-5, "{max_diff}");
    // A prefix built token by token (as decode steps leave it).
    let stepped = m.new_sequence();
    for (pos, &t) in prompt[..10].iter().enumerate() {
        m.forward_batch(&[BatchStep {
            seq: stepped,
            token: t,
            pos,
        }])
        .expect("step");
    }
    let reused_steps = m
        .forward_sequence(stepped, &prompt[10..], 10, LogitsFor::Last)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .expect("reused");
    let max_diff_steps = fresh
        .iter()
        .zip(&reused_steps)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("prefix from decode steps: max |diff| = {max_diff_steps:e}");
    assert_eq!(argmax(&fresh), argmax(&reused_steps));
    assert!(max_diff_steps < 1e-5, "{max_diff_steps}");
}

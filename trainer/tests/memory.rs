//! Peak memory of one update on SmolLM2-135M (f32) with G = 8 responses of 512 tokens each: the
//! forward/backward and the AdamW step, without the rollouts (whose KV cache is small beside
//! them). Run by hand, one micro-batch size per process (the peak is per process):
//!
//! ```sh
//! MICRO_BATCH=1 cargo test -p selfroute-train --test memory -- --ignored --nocapture
//! ```
//!
//! It prints the process's peak resident set (VmHWM). Ignored in the normal suite: minutes of CPU.

mod support;

use candle_core::DType;
use selfroute_core::{Message, ModelPackage};
use selfroute_train::algo::Algo;
use selfroute_train::optim::{AdamW, AdamWConfig};
use selfroute_train::update::{GroupResponses, Scoring, UpdateConfig, policy_gradient};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore]
fn one_update_of_eight_512_token_responses_on_smollm2() {
    let micro_batch: Option<usize> = std::env::var("MICRO_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    let package = ModelPackage::from_gguf(path.display().to_string(), bytes).unwrap();
    let model = support::trainable(&package, DType::F32);
    let loaded = peak_rss_kib();
    let prompt = package
        .chat_template
        .as_ref()
        .unwrap()
        .encode(
            &[Message::user(
                "What is 37 * 48? Think step by step, then answer with just the number.",
            )],
            true,
            &package.tokenizer,
        )
        .unwrap();
    let eos = package.tokenizer.stop_token_ids()[0];
    let mut rng = selfroute_core::rng::SplitMix64::new(1);
    let responses: Vec<Vec<u32>> = (0..8)
        .map(|_| {
            let mut r: Vec<u32> = (0..511).map(|_| 100 + rng.below(40_000) as u32).collect();
            r.push(eos);
            r
        })
        .collect();
    let rewards = [1.0, 0.0, 0.25, 0.0, 1.0, 0.0, 0.25, 0.0];
    let started = std::time::Instant::now();
    let gradient = policy_gradient(
        &model,
        &[GroupResponses {
            prompt: &prompt,
            responses: responses.iter().map(Vec::as_slice).collect(),
            rewards: &rewards,
        }],
        &UpdateConfig {
            algo: Algo::Gapg,
            max_new_tokens: 512,
            micro_batch,
            scoring: Scoring::default(),
            every_answer: false,
        },
    )
    .unwrap();
    let backward_s = started.elapsed().as_secs_f64();
    let mut optimizer = AdamW::new(model.named_vars().unwrap(), AdamWConfig::default()).unwrap();
    let report = optimizer
        .step(gradient.grads.as_ref().unwrap(), 1e-6)
        .unwrap();
    let peak = peak_rss_kib();
    eprintln!(
        "SmolLM2-135M f32, prompt {} + 8 x 512 tokens, micro-batch {micro_batch:?}: peak RSS \
         {:.2} GiB (after loading {:.2} GiB), forward/backward {backward_s:.0} s, grad norm {:.3}",
        prompt.len(),
        peak as f64 / (1 << 20) as f64,
        loaded as f64 / (1 << 20) as f64,
        report.grad_norm
    );
    assert!(report.grad_norm.is_finite() && report.grad_norm > 0.0);
}

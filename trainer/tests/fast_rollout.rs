//! The fast rollout engine (`rollout::fast`) against the trainable model it samples for: the
//! same logits (prompt prefill and batched decode, biases and both RoPE layouts), the current
//! weights after an optimiser-style in-place update, and the same samples as the trainable path.

mod support;

use candle_core::{DType, Device, Tensor};
use selfroute_core::{ModelPackage, OffloadSignal};
use selfroute_train::model::TrainableModel;
use selfroute_train::rollout::{RolloutConfig, RolloutEngine, fast, rollout_groups};

/// The trainable model's logits at every position of `tokens`.
fn reference(model: &TrainableModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Max |fast - trainable| over every position, once as one prefill and once as a prefill of
/// `tokens.len() / 2` then batched decode steps of three identical rows.
fn parity(model: &TrainableModel, tokens: &[u32]) -> (f32, f32) {
    let want = reference(model, tokens);
    let prefill = fast::logits(model, tokens).unwrap();
    let half = tokens.len() / 2;
    let decoded = fast::decode_logits(model, tokens, half, 3).unwrap();
    (
        max_diff(&prefill, &want),
        max_diff(&decoded, &want[half - 1..]),
    )
}

/// The tolerance of the fast path on the small fixtures: f32 arithmetic in another order.
const TOLERANCE: f32 = 1e-4;

#[test]
fn tiny_model_logits_match_the_trainable_model_in_prefill_and_batched_decode() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 250 + 4).collect();
    let (prefill, decode) = parity(&model, &tokens);
    assert!(
        prefill < TOLERANCE,
        "prefill: max logit difference {prefill}"
    );
    assert!(decode < TOLERANCE, "decode: max logit difference {decode}");
}

#[test]
fn safetensors_fixtures_match_too() {
    for name in ["tiny_llama_f16", "tiny_qwen2_bf16"] {
        let package = support::hf_fixture(name);
        let model = support::trainable(&package, DType::F32);
        let tokens: Vec<u32> = (0..16).map(|i| (i * 31 + 9) % 200 + 3).collect();
        let (prefill, decode) = parity(&model, &tokens);
        assert!(prefill < TOLERANCE, "{name} prefill: {prefill}");
        assert!(decode < TOLERANCE, "{name} decode: {decode}");
    }
}

#[test]
fn smollm2_logits_match_the_trainable_model() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    let package = ModelPackage::from_gguf(path.display().to_string(), bytes).expect("SmolLM2");
    let model = support::trainable(&package, DType::F32);
    let tokens = package
        .tokenizer
        .encode_literal("The capital of France is Paris, and the capital of Italy is")
        .unwrap();
    let (prefill, decode) = parity(&model, &tokens);
    eprintln!("SmolLM2: prefill {prefill}, decode {decode}");
    // Logits of size ~20 summed over 576- and 1536-long products in another order: 6.6e-5 on
    // the machine this was written on; the bound leaves room for another thread count's gemm
    // blocking.
    assert!(prefill < 2e-4, "prefill: max logit difference {prefill}");
    assert!(decode < 2e-4, "decode: max logit difference {decode}");
}

#[test]
fn the_fast_engine_reads_the_weights_as_the_optimiser_leaves_them() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 13 + 7) % 250 + 4).collect();
    let before = fast::logits(&model, &tokens).unwrap();
    // A decoder made before the update (as a trainer could hold one across steps) must run on
    // the updated weights, not a snapshot.
    let mut decoder = fast::FastDecoder::new(&model).unwrap();
    // What AdamW does: every variable written in place.
    for (_, var) in model.named_vars().unwrap() {
        let t = var.as_tensor();
        var.set(&(t * 1.1).unwrap()).unwrap();
    }
    let seq = decoder.new_sequence(tokens.len());
    let rows: Vec<fast::Row> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &token)| fast::Row { seq, token, pos })
        .collect();
    let after = decoder
        .forward(&rows, &(0..rows.len()).collect::<Vec<_>>())
        .unwrap();
    let want = reference(&model, &tokens);
    let diff = max_diff(&after, &want);
    assert!(
        diff < TOLERANCE,
        "max logit difference {diff} after the update"
    );
    assert!(
        max_diff(&before, &after) > 1e-2,
        "the update did not change the logits"
    );
}

#[test]
fn fast_rollouts_draw_the_trainable_paths_samples() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    // Prompts of different lengths, so rows sit at different positions in one step.
    let prompts: Vec<Vec<u32>> = [5usize, 9, 3, 14]
        .iter()
        .enumerate()
        .map(|(p, &n)| {
            (0..n as u32)
                .map(|i| (i * 29 + p as u32 * 7) % 250 + 4)
                .collect()
        })
        .collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let config = RolloutConfig {
        group: 8,
        max_new_tokens: 24,
        temperature: 1.0,
    };
    let seeds = [11u64, 22, 33, 44];
    let run = |engine| {
        rollout_groups(
            engine,
            &model,
            &package.tokenizer,
            &signal,
            &prompts,
            &config,
            &[],
            &seeds,
        )
        .unwrap()
    };
    let fast = run(RolloutEngine::Fast);
    let slow = run(RolloutEngine::Trainable);
    assert_eq!(fast.len(), 4);
    let (mut same, mut total, mut lengths) = (0, 0, std::collections::BTreeSet::new());
    for (f, s) in fast.iter().zip(&slow) {
        assert_eq!(f.len(), 8);
        for (a, b) in f.iter().zip(s) {
            total += 1;
            // The entropy sums over logits that agree to float rounding.
            same += usize::from(
                a.tokens == b.tokens
                    && a.end == b.end
                    && a.text == b.text
                    && (a.entropy_sum - b.entropy_sum).abs() < 1e-3,
            );
            lengths.insert(a.tokens.len());
        }
    }
    // Rows that stop early leave the batch while others continue.
    assert!(lengths.len() > 1, "every sample had the same length");
    // Logits within 1e-4 move a draw only when it lands that close to a token boundary.
    assert_eq!(same, total, "{} of {total} samples differ", total - same);
}

//! The trainable model against the inference engine (logits at every position), and its
//! gradients: every parameter gets a finite, non-zero gradient, and autograd agrees with finite
//! differences on a tiny random model in f64.

mod support;

use candle_core::{DType, Device, Tensor};
use selfroute_candle::CandleModel;
use selfroute_core::{LogitsFor, ModelPackage};
use selfroute_train::model::{TrainableModel, token_log_probs};

fn tiny_package() -> ModelPackage {
    support::tiny_with_offload(64)
}

fn smollm2_package() -> ModelPackage {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    ModelPackage::from_gguf(path.display().to_string(), bytes).expect("SmolLM2")
}

/// Max |difference| between the trainable model's logits and the inference engine's, at every
/// position of `tokens`.
fn max_logit_diff(package: &ModelPackage, tokens: &[u32]) -> f32 {
    let trainable = support::trainable(package, DType::F32);
    let ids = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ours = trainable
        .forward(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut engine =
        CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).unwrap();
    let theirs = engine
        .forward_tokens(tokens, 0, LogitsFor::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(ours.len(), tokens.len());
    ours.iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn tiny_model_logits_match_the_inference_engine_at_every_position() {
    let tokens: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 250 + 4).collect();
    let diff = max_logit_diff(&tiny_package(), &tokens);
    assert!(diff < 1e-4, "max logit difference {diff}");
}

#[test]
fn safetensors_checkpoints_match_the_inference_engine_too() {
    for name in ["tiny_llama_f16", "tiny_qwen2_bf16"] {
        let package = support::hf_fixture(name);
        let tokens: Vec<u32> = (0..16).map(|i| (i * 31 + 9) % 200 + 3).collect();
        let diff = max_logit_diff(&package, &tokens);
        assert!(diff < 1e-4, "{name}: max logit difference {diff}");
    }
}

#[test]
fn smollm2_logits_match_the_inference_engine_at_every_position() {
    let package = smollm2_package();
    let tokens = package
        .tokenizer
        .encode_literal("The capital of France is Paris, and the capital of Italy is")
        .unwrap();
    let diff = max_logit_diff(&package, &tokens);
    // Same dequantized weights, f32 activations on both sides; what differs is summation order.
    assert!(diff < 2e-3, "max logit difference {diff}");
}

/// Sum of log-probs of `tokens[1..]` given their prefix.
fn sequence_log_prob(model: &TrainableModel, tokens: &[u32]) -> Tensor {
    let device = model.device();
    let input = Tensor::new(&tokens[..tokens.len() - 1], device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let targets = Tensor::new(&tokens[1..], device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input).unwrap();
    token_log_probs(&logits, &targets)
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn every_parameter_gets_a_finite_non_zero_gradient() {
    let package = tiny_package();
    let model = support::trainable(&package, DType::F32);
    // Two sequences' worth of tokens through the whole vocabulary's head.
    let tokens: Vec<u32> = (0..24).map(|i| (i * 53 + 11) % 250 + 4).collect();
    let loss = sequence_log_prob(&model, &tokens);
    let grads = loss.backward().unwrap();
    let vars = model.named_vars().unwrap();
    assert!(
        vars.len() >= 2 + 9 * package.config.num_layers,
        "{}",
        vars.len()
    );
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let values = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        let norm: f32 = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn autograd_agrees_with_finite_differences_in_f64() {
    let package = tiny_package();
    let model = support::trainable(&package, DType::F64);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 29 + 7) % 250 + 4).collect();
    let grads = sequence_log_prob(&model, &tokens).backward().unwrap();
    // Central differences: truncation error ~eps^2, rounding ~|loss| * 1e-16 / eps.
    let eps = 1e-5;
    let mut checked = 0;
    for (name, var) in model.named_vars().unwrap() {
        let grad = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let n = grad.dim(0).unwrap();
        let original = var.as_tensor().copy().unwrap();
        // A few entries spread over each tensor.
        for idx in [0, n / 3, n - 1] {
            let flat = original.flatten_all().unwrap();
            let mut values = flat.to_vec1::<f64>().unwrap();
            let base = values[idx];
            values[idx] = base + eps;
            var.set(&Tensor::from_vec(values.clone(), original.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let plus = sequence_log_prob(&model, &tokens)
                .to_scalar::<f64>()
                .unwrap();
            values[idx] = base - eps;
            var.set(&Tensor::from_vec(values, original.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let minus = sequence_log_prob(&model, &tokens)
                .to_scalar::<f64>()
                .unwrap();
            var.set(&original).unwrap();
            let numeric = (plus - minus) / (2.0 * eps);
            let analytic = grad.get(idx).unwrap().to_scalar::<f64>().unwrap();
            let scale = numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() < 1e-4 * scale + 1e-8,
                "{name}[{idx}]: autograd {analytic} vs finite difference {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30);
}

#[test]
fn the_cached_forward_used_for_rollouts_matches_the_full_pass() {
    use selfroute_train::model::KvCache;
    let package = tiny_package();
    let model = support::trainable(&package, DType::F32);
    let tokens: Vec<u32> = (0..10).map(|i| (i * 41 + 3) % 250 + 4).collect();
    let row = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let full = model
        .forward(
            &Tensor::new(tokens.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut cache = KvCache::new();
    let prefix = Tensor::new(&tokens[..6], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward_cached(&prefix, &mut cache).unwrap();
    // Three copies of the sequence go on together, as a rollout group does.
    let mut batch = cache.repeat_batch(3).unwrap();
    for (pos, &t) in tokens.iter().enumerate().skip(6) {
        let ids = Tensor::new(&[[t], [t], [t]], &Device::Cpu).unwrap();
        let logits = model.forward_cached(&ids, &mut batch).unwrap();
        let expected = row(&full.get(pos).unwrap());
        for b in 0..3 {
            let got = row(&logits.get(b).unwrap());
            let diff = got
                .iter()
                .zip(&expected)
                .map(|(a, e)| (a - e).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "position {pos}, copy {b}: {diff}");
        }
    }
    assert_eq!(batch.len(), 10);
}

//! The whole decoder on the GPU (lavapipe in CI) against independent references: the numpy
//! implementation in tests/reference (its own dequantisation, Hugging Face layout) for SmolLM2's
//! top logits and greedy continuations and for the tiny LLaMA/Qwen2 models in every float layout,
//! and the candle CPU engine for SmolLM2's whole logit rows.

#[path = "../../../tests/reference/fixtures.rs"]
mod fixtures;
mod support;

use candle_core::Device;
use fixtures::{FullReference, SmolReference, assert_close, data, hf_folder, read_json, smollm2};
use selfroute_candle::CandleModel;
use selfroute_core::{
    Backend, GenerationParams, Generator, LogitsFor, ModelPackage, SamplingParams,
};
use selfroute_wgpu::{GpuModel, GpuOptions};

fn gpu_model(package: &ModelPackage, options: &GpuOptions) -> Option<GpuModel> {
    let ctx = support::context()?;
    Some(
        pollster::block_on(GpuModel::load(
            ctx,
            &package.config,
            package.weights.as_ref(),
            options,
        ))
        .expect("the model loads on the GPU"),
    )
}

fn rows(model: &mut GpuModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    model.truncate_cache(0);
    let logits = pollster::block_on(model.forward(tokens, 0, LogitsFor::All)).unwrap();
    logits
        .data
        .chunks(logits.vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

/// The CPU engine's bound against the same reference is 2e-3 (it keeps activations in f32, as
/// this engine does); summation order differs between the engines, so the GPU gets the same bound.
const LOGIT_TOLERANCE: f32 = 2e-3;

#[test]
fn smollm2_logits_match_the_numpy_reference_and_the_cpu_engine() {
    let package = smollm2();
    // A chunk smaller than the prompts, so prefill also crosses chunk boundaries.
    let options = GpuOptions {
        chunk: 16,
        ..GpuOptions::default()
    };
    let Some(mut gpu) = gpu_model(&package, &options) else {
        return;
    };
    let mut cpu =
        CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).unwrap();
    let reference: SmolReference = read_json(&data("smollm2_q4_1.json"));
    let (mut worst_ref, mut worst_cpu) = (0.0f32, 0.0f32);
    for prompt in &reference.prompts {
        let ours = rows(&mut gpu, &prompt.token_ids);
        assert_eq!(ours.len(), prompt.token_ids.len());
        for pos in &prompt.positions {
            let row = &ours[pos.position];
            for &(id, expected) in &pos.top {
                worst_ref = worst_ref.max((row[id as usize] - expected).abs());
            }
        }
        cpu.clear_cache();
        let theirs = cpu
            .forward_tokens(&prompt.token_ids, 0, LogitsFor::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            for (x, y) in a.iter().zip(b) {
                worst_cpu = worst_cpu.max((x - y).abs());
            }
        }
    }
    eprintln!("worst |logit difference|: numpy top-20 {worst_ref}, candle all {worst_cpu}");
    assert!(worst_ref < LOGIT_TOLERANCE, "numpy reference: {worst_ref}");
    assert!(worst_cpu < LOGIT_TOLERANCE, "candle engine: {worst_cpu}");
}

#[test]
fn smollm2_greedy_continuations_match_the_reference_with_the_gpu_sampler() {
    let package = smollm2();
    let Some(gpu) = gpu_model(&package, &GpuOptions::default()) else {
        return;
    };
    let reference: SmolReference = read_json(&data("smollm2_q4_1.json"));
    let mut generator = Generator::new(gpu);
    for prompt in &reference.prompts {
        let params = GenerationParams {
            max_new_tokens: prompt.greedy.token_ids.len(),
            sampling: SamplingParams::greedy(),
            // The reference continues through end-of-turn tokens; so must we.
            extra_stop_tokens: Vec::new(),
            ..GenerationParams::default()
        };
        let out = pollster::block_on(generator.generate(
            &package.tokenizer,
            &prompt.token_ids,
            &params,
            |_| selfroute_core::Control::Continue,
        ))
        .unwrap();
        // The generator stops at an end-of-turn token (the reference runs on through it).
        let stops = package.tokenizer.stop_token_ids();
        let n = prompt
            .greedy
            .token_ids
            .iter()
            .position(|t| stops.contains(t))
            .unwrap_or(prompt.greedy.token_ids.len());
        assert_eq!(
            out.tokens,
            prompt.greedy.token_ids[..n],
            "greedy continuation of {}",
            prompt.name
        );
        // One id read back per decode step.
        assert_eq!(generator.backend().profile().readback_bytes, 4);
    }
}

/// Both ways the engine can be assembled: norms and SwiGLU fused into the products (the default)
/// and run as separate kernels (models wider than the fused prologue stages).
fn check_tiny(package: &ModelPackage, reference: &str, what: &str) {
    let reference: FullReference = read_json(&data(reference));
    for fuse_prologues in [true, false] {
        let options = GpuOptions {
            fuse_prologues,
            ..GpuOptions::default()
        };
        let Some(mut gpu) = gpu_model(package, &options) else {
            return;
        };
        let ours = rows(&mut gpu, &reference.token_ids);
        let what = format!("{what}, fused prologues {fuse_prologues}");
        assert_close(&ours, &reference.logits, 1e-4, &what);
    }
}

#[test]
fn tiny_llama_gguf_in_llama_cpp_layout_matches_the_reference() {
    let bytes = std::fs::read(data("tiny_llama.gguf")).unwrap();
    let package = ModelPackage::from_gguf("tiny_llama.gguf", bytes).unwrap();
    check_tiny(
        &package,
        "tiny_llama_gguf_reference.json",
        "tiny llama GGUF",
    );
}

#[test]
fn tiny_llama_f16_in_hugging_face_layout_matches_the_reference() {
    let package = hf_folder("tiny_llama_f16");
    check_tiny(&package, "tiny_llama_f16/reference.json", "tiny llama f16");
}

#[test]
fn tiny_qwen2_bf16_with_biases_and_tied_head_matches_the_reference() {
    let package = hf_folder("tiny_qwen2_bf16");
    check_tiny(
        &package,
        "tiny_qwen2_bf16/reference.json",
        "tiny qwen2 bf16",
    );
}

/// Asking for more than the device allows (here: prefill chunks whose logits exceed the 128 MiB
/// binding limit) is a clear error at load, not a crash at the first step.
#[test]
fn buffers_beyond_the_device_limits_are_a_clear_error() {
    let package = smollm2();
    let Some(ctx) = support::context() else {
        return;
    };
    let options = GpuOptions {
        chunk: 8192,
        max_context: 8192,
        ..GpuOptions::default()
    };
    let result = pollster::block_on(GpuModel::load(
        ctx,
        &package.config,
        package.weights.as_ref(),
        &options,
    ));
    match result {
        Err(e @ selfroute_wgpu::GpuError::TooLarge { .. }) => {
            let message = e.to_string();
            assert!(message.contains("limit"), "{message}");
        }
        Err(other) => panic!("expected TooLarge, got {other}"),
        Ok(_) => panic!("a 1.6 GB logits buffer was accepted"),
    }
}

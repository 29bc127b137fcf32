//! Engine choice and the CPU fallback after a lost GPU, on the tiny model and (natively) lavapipe.
//! With SELFROUTE_REQUIRE_GPU=1 (set by `cargo xtask test`) a missing adapter fails the GPU tests;
//! elsewhere they are skipped.

#[path = "../../core/tests/common/mod.rs"]
mod gguf;

use selfroute_core::{Backend, LogitsFor, ModelPackage, TokenPick};
use selfroute_engine::{BackendChoice, EngineError, EngineKind, EngineOptions, load_engine};

/// The tiny llama in formats both engines run (its gate matrices are Q4_0, which only the CPU
/// engine reads).
fn tiny() -> ModelPackage {
    let mut builder = gguf::GgufBuilder::tiny_llama();
    for l in 0..gguf::LAYERS {
        builder.replace_tensor(
            &format!("blk.{l}.ffn_gate.weight"),
            &[gguf::FFN, gguf::HIDDEN],
            candle_core::quantized::GgmlDType::Q8_0,
        );
    }
    ModelPackage::from_gguf("tiny.gguf", builder.bytes()).expect("parses")
}

fn load(choice: BackendChoice) -> Option<(selfroute_engine::Engine, selfroute_engine::Selection)> {
    let package = tiny();
    let options = EngineOptions {
        choice,
        ..EngineOptions::default()
    };
    match pollster::block_on(load_engine(&package.config, package.weights, &options)) {
        Ok(loaded) => Some(loaded),
        // Only a missing adapter skips (where no GPU test can run); any other error is a failure.
        Err(EngineError::NoAdapter(e)) if std::env::var_os("SELFROUTE_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: no adapter: {e}");
            None
        }
        Err(e) => panic!("loading the tiny model on {choice:?}: {e}"),
    }
}

const TOKENS: [u32; 9] = [5, 17, 42, 8, 99, 3, 64, 21, 7];

fn cpu_logits() -> Vec<f32> {
    let (mut cpu, selection) = load(BackendChoice::Cpu).expect("the CPU engine always loads");
    assert_eq!(selection.kind, EngineKind::Cpu);
    assert!(
        selection.reason.contains("asked for"),
        "{}",
        selection.reason
    );
    pollster::block_on(cpu.forward(&TOKENS, 0, LogitsFor::All))
        .expect("cpu forward")
        .data
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn auto_passes_over_a_software_adapter_and_says_why() {
    let Some((engine, selection)) = load(BackendChoice::Auto) else {
        return;
    };
    // lavapipe is the only adapter here: a CPU renderer, slower than the CPU engine.
    if engine.kind() == EngineKind::Cpu {
        assert!(
            selection.reason.contains("software") || selection.reason.contains("no usable"),
            "{}",
            selection.reason
        );
        assert_eq!(selection.adapter, None);
    } else {
        assert!(selection.adapter.is_some());
    }
}

#[test]
fn a_lost_gpu_moves_the_engine_to_the_cpu_mid_conversation() {
    let Some((mut gpu, selection)) = load(BackendChoice::Gpu) else {
        return;
    };
    assert_eq!(selection.kind, EngineKind::Gpu);
    assert_eq!(gpu.kind(), EngineKind::Gpu);
    assert!(gpu.picks_on_device());
    let reference = cpu_logits();
    let vocab = gpu.config().vocab_size;

    // Five positions cached on the GPU, then the device goes away.
    pollster::block_on(gpu.forward(&TOKENS[..5], 0, LogitsFor::Last)).expect("gpu forward");
    gpu.release_gpu();
    let after = pollster::block_on(gpu.forward(&TOKENS[5..8], 5, LogitsFor::All))
        .expect("the engine carries on after losing its device");
    assert_eq!(gpu.kind(), EngineKind::Cpu);
    assert!(!gpu.picks_on_device());
    let reason = gpu.fallback_reason().expect("says why").to_string();
    assert!(reason.contains("lost"), "{reason}");
    assert!(gpu.describe().contains("CPU"), "{}", gpu.describe());
    // The replayed cache gives the logits a whole CPU pass gives.
    let diff = max_diff(&after.data, &reference[5 * vocab..8 * vocab]);
    assert!(diff < 1e-4, "max |diff| {diff}");
}

#[test]
fn a_pick_in_flight_when_the_gpu_is_lost_is_made_on_the_host() {
    let Some((mut gpu, _)) = load(BackendChoice::Gpu) else {
        return;
    };
    let reference = cpu_logits();
    let vocab = gpu.config().vocab_size;
    pollster::block_on(gpu.forward(&TOKENS[..8], 0, LogitsFor::Last)).expect("gpu forward");
    gpu.release_gpu();
    let greedy = TokenPick {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        uniform: 0.0,
        logit_bias: &[],
    };
    let token = pollster::block_on(gpu.forward_pick(&TOKENS[8..9], 8, &greedy))
        .expect("picked on the host");
    let row = &reference[8 * vocab..9 * vocab];
    assert_eq!(token, selfroute_core::sampler::argmax(row));
    assert_eq!(gpu.kind(), EngineKind::Cpu);
}

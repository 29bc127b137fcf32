//! Prefill and decode speed of the GPU engine beside the candle CPU engine on the same prompt ids,
//! one JSON line. Driven by `cargo xtask bench gpu` (and by scripts/gpu_bench_nvidia.sh).
//! The GPU decode step is timed as the generation loop runs it: forward plus the pick on the GPU,
//! reading back one id. Its time is split into host encoding/submission, waiting for the GPU and
//! the readback.
//!
//! usage: gpu_bench MODEL.gguf PROMPT_TOKENS DECODE_TOKENS REPEATS [--no-cpu]

use std::time::Instant;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::{Backend, LogitsFor, ModelPackage, TokenPick};
use selfroute_wgpu::{GpuContext, GpuModel, GpuOptions, StepProfile};

const PROMPT_TEXT: &str = "Self-routing lets a small language model running in the browser decide, while it answers, \
whether it can solve a query itself or should hand the conversation to a larger model in the cloud. \
The decision is learned with reinforcement learning: a hierarchical reward prefers correct local answers, \
then correct cloud answers, and gives nothing for wrong ones. ";

struct Speed {
    prefill: f64,
    decode: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_path, prompt_tokens, decode_tokens, repeats, with_cpu) = match args.as_slice() {
        [m, p, d, r] => (
            m,
            p.parse::<usize>()?,
            d.parse::<usize>()?,
            r.parse()?,
            true,
        ),
        [m, p, d, r, flag] if flag == "--no-cpu" => (m, p.parse()?, d.parse()?, r.parse()?, false),
        _ => {
            return Err(
                "usage: gpu_bench MODEL.gguf PROMPT_TOKENS DECODE_TOKENS REPEATS [--no-cpu]".into(),
            );
        }
    };
    let package = ModelPackage::from_gguf(model_path.as_str(), std::fs::read(model_path)?)?;
    let mut prompt = Vec::new();
    while prompt.len() < prompt_tokens {
        prompt.extend(package.tokenizer.encode_literal(PROMPT_TEXT)?);
    }
    prompt.truncate(prompt_tokens);

    let ctx = pollster::block_on(GpuContext::new())?;
    let loaded = Instant::now();
    let mut gpu = pollster::block_on(GpuModel::load(
        ctx,
        &package.config,
        package.weights.as_ref(),
        &GpuOptions::default(),
    ))?;
    let load_s = loaded.elapsed().as_secs_f64();
    // One untimed pass so pipelines are compiled (lavapipe and some drivers compile on first use).
    gpu_run(&mut gpu, &prompt, 2)?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut profiles = Vec::new();
    for _ in 0..repeats {
        let (p, d, prof) = gpu_run(&mut gpu, &prompt, decode_tokens)?;
        prefill.push(p);
        decode.push(d);
        profiles.extend(prof);
    }
    let gpu_speed = Speed {
        prefill: median(&mut prefill),
        decode: median(&mut decode),
    };
    let n = profiles.len().max(1) as f64;
    let mean = |f: fn(&Profiled) -> f64| profiles.iter().map(f).sum::<f64>() / n;
    let (encode_ms, gpu_ms, readback_ms) = (
        mean(|p| p.encode_ms),
        mean(|p| p.gpu_ms),
        mean(|p| p.readback_ms),
    );
    let dispatches = profiles.first().map_or(0, |p| p.dispatches);
    let cpu_speed = if with_cpu {
        let mut cpu = CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu)?;
        let (mut p, mut d) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let (a, b) = cpu_run(&mut cpu, &prompt, decode_tokens)?;
            p.push(a);
            d.push(b);
        }
        Some(Speed {
            prefill: median(&mut p),
            decode: median(&mut d),
        })
    } else {
        None
    };
    let weight_bytes = gpu.weight_bytes();
    // The mean wall time of the profiled steps, so it and its split are the same statistic.
    let step_ms = mean(|p| p.step_ms);
    println!(
        "{}",
        serde_json::json!({
            "adapter": gpu.adapter_name(),
            "load_s": load_s,
            "prompt_tokens": prompt.len(),
            "decode_tokens": decode_tokens,
            "gpu_prefill_tok_s": gpu_speed.prefill,
            "gpu_decode_tok_s": gpu_speed.decode,
            "cpu_prefill_tok_s": cpu_speed.as_ref().map(|s| s.prefill),
            "cpu_decode_tok_s": cpu_speed.as_ref().map(|s| s.decode),
            "decode_step_ms": step_ms,
            "decode_encode_submit_ms": encode_ms,
            "decode_gpu_wait_ms": gpu_ms,
            "decode_readback_ms": readback_ms,
            "dispatches_per_token": dispatches,
            "submissions_per_token": profiles.first().map_or(0, |p| p.submissions),
            "readback_bytes_per_token": profiles.first().map_or(0, |p| p.readback_bytes),
            "weight_bytes": weight_bytes,
            "achieved_weight_gb_s": weight_bytes as f64 / (step_ms / 1e3) / 1e9,
        })
    );
    Ok(())
}

/// A decode step's profile with its wall time around the call.
struct Profiled {
    step_ms: f64,
    encode_ms: f64,
    gpu_ms: f64,
    readback_ms: f64,
    dispatches: usize,
    submissions: usize,
    readback_bytes: u64,
}

impl Profiled {
    fn new(step_ms: f64, p: StepProfile) -> Self {
        Self {
            step_ms,
            encode_ms: p.encode_ms,
            gpu_ms: p.gpu_ms,
            readback_ms: p.readback_ms,
            dispatches: p.dispatches,
            submissions: p.submissions,
            readback_bytes: p.readback_bytes,
        }
    }
}

/// Prefill tok/s, decode tok/s and the profile of every decode step.
fn gpu_run(
    gpu: &mut GpuModel,
    prompt: &[u32],
    decode_tokens: usize,
) -> Result<(f64, f64, Vec<Profiled>), Box<dyn std::error::Error>> {
    let greedy = TokenPick {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        uniform: 0.0,
        logit_bias: &[],
    };
    gpu.truncate_cache(0);
    let t = Instant::now();
    let logits = pollster::block_on(gpu.forward_logits(prompt, 0, LogitsFor::Last))?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut next = selfroute_core::sampler::argmax(logits.row(0).unwrap_or(&[]));
    let mut profiles = Vec::with_capacity(decode_tokens);
    let t = Instant::now();
    for i in 0..decode_tokens {
        let step = Instant::now();
        next = pollster::block_on(gpu.forward_pick_token(&[next], prompt.len() + i, &greedy))?;
        profiles.push(Profiled::new(
            step.elapsed().as_secs_f64() * 1e3,
            gpu.profile(),
        ));
    }
    let decode = decode_tokens as f64 / t.elapsed().as_secs_f64();
    Ok((prefill, decode, profiles))
}

fn cpu_run(
    cpu: &mut CandleModel,
    prompt: &[u32],
    decode_tokens: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    cpu.clear_cache();
    let t = Instant::now();
    let logits = cpu.forward_tokens(prompt, 0, LogitsFor::Last)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    let t = Instant::now();
    for i in 0..decode_tokens {
        let logits = cpu.forward_tokens(&[next], prompt.len() + i, LogitsFor::Last)?;
        next = selfroute_core::sampler::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
    }
    Ok((prefill, decode_tokens as f64 / t.elapsed().as_secs_f64()))
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

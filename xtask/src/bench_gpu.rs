//! `cargo xtask bench gpu`: the WGSL engine on the available adapter beside the candle CPU engine,
//! same GGUF and prompt ids, in one run. Prints tok/s and the ratio, the decode step split into
//! host encoding/submission, GPU wait and readback, dispatches and readback bytes per token, and
//! the weight bandwidth the decode step achieves (every weight is read once per token).
//! On lavapipe (Vulkan on the CPU, what CI has) the figures only show the engine is not wasteful;
//! scripts/gpu_bench_nvidia.sh runs the same on a real GPU beside PyTorch.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;
const REPEATS: usize = 3;

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let (prompt, decode) = match args {
        [] => (PROMPT_TOKENS, DECODE_TOKENS),
        ["--quick"] => (32, 16),
        other => bail!("`bench gpu` takes no arguments but --quick, got {other:?}"),
    };
    let model = fetch_default_model(root)?;
    if std::env::var_os("SELFROUTE_NO_LAVAPIPE").is_none() {
        setup::ensure_lavapipe()?;
    }
    step("building selfroute's gpu_bench (release)");
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "selfroute-wgpu",
            "--example",
            "gpu_bench",
        ],
    )?;
    let bin = root.join("target/release/examples/gpu_bench");
    step(&format!(
        "measuring: {prompt}-token prefill, {decode} greedy decode steps, median of {REPEATS}, GPU then CPU"
    ));
    let output = setup::output(
        Command::new(&bin)
            .arg(&model)
            .args([prompt, decode, REPEATS].map(|n| n.to_string())),
    )?;
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("gpu_bench printed no JSON line")?;
    let v: Value = serde_json::from_str(line).context("parsing gpu_bench output")?;
    print_table(&v)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("gpu_bench output lacks {key}"))
}

fn print_table(v: &Value) -> Result<()> {
    let adapter = v.get("adapter").and_then(Value::as_str).unwrap_or("?");
    println!(
        "\nSmolLM2-135M-Instruct Q4_1 on {adapter}, {} prompt tokens, {} decode steps (tok/s)",
        num(v, "prompt_tokens")?,
        num(v, "decode_tokens")?
    );
    println!("| phase   | selfroute GPU (wgpu) | selfroute CPU (candle) | GPU/CPU |");
    println!("|---------|----------------------|------------------------|---------|");
    for phase in ["prefill", "decode"] {
        let gpu = num(v, &format!("gpu_{phase}_tok_s"))?;
        let cpu = num(v, &format!("cpu_{phase}_tok_s"))?;
        println!(
            "| {phase:<7} | {gpu:>20.1} | {cpu:>22.1} | {:>6.2}x |",
            gpu / cpu
        );
    }
    println!(
        "\ndecode step (mean) {:.2} ms = encode+submit {:.2} ms + GPU wait {:.2} ms + readback {:.3} ms \
         (rest: host-side loop)",
        num(v, "decode_step_ms")?,
        num(v, "decode_encode_submit_ms")?,
        num(v, "decode_gpu_wait_ms")?,
        num(v, "decode_readback_ms")?,
    );
    println!(
        "{} dispatches and {} submission per token, {} bytes read back per token",
        num(v, "dispatches_per_token")?,
        num(v, "submissions_per_token")?,
        num(v, "readback_bytes_per_token")?,
    );
    println!(
        "weights {:.1} MB read once per token: {:.2} GB/s achieved (bandwidth bound: \
         adapter memory bandwidth / {:.1} MB per token; not known for this adapter)",
        num(v, "weight_bytes")? / 1e6,
        num(v, "achieved_weight_gb_s")?,
        num(v, "weight_bytes")? / 1e6,
    );
    if adapter.contains("llvmpipe") {
        println!(
            "note: llvmpipe is Mesa's software Vulkan on this CPU; these figures show only that the \
             engine is not wasteful, not GPU speed."
        );
    }
    Ok(())
}

//! `cargo xtask bench batch`: the engine's batched decode (B sequences, one forward pass per
//! step) against the same B sequences decoded one after another, in the same run, at B = 1, 4,
//! 8, 16 and 1 and 2 threads: the speed-up continuous batching gives a server, measured without
//! one.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const PROMPT_TOKENS: usize = 64;
const DECODE_STEPS: usize = 48;
const REPEATS: usize = 3;
const BATCH_SIZES: &str = "1,4,8,16";

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("`bench batch` takes no arguments, got {args:?}");
    }
    let model = fetch_default_model(root)?;
    step("building selfroute's batch_bench (release)");
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "selfroute-candle",
            "--example",
            "batch_bench",
        ],
    )?;
    let bin = root.join("target/release/examples/batch_bench");
    let mut rows = Vec::new();
    for threads in [1usize, 2] {
        step(&format!(
            "measuring at {threads} thread(s): B in {BATCH_SIZES}, {PROMPT_TOKENS}-token prompts, {DECODE_STEPS} greedy steps, median of {REPEATS}"
        ));
        let out = setup::output(
            Command::new(&bin)
                .arg(&model)
                .args([PROMPT_TOKENS, DECODE_STEPS].map(|n| n.to_string()))
                .arg(BATCH_SIZES)
                .arg(REPEATS.to_string())
                .env("RAYON_NUM_THREADS", threads.to_string()),
        )?;
        for line in out.lines().filter(|l| l.starts_with('{')) {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("batch_bench printed `{line}`"))?;
            rows.push((threads, v));
        }
    }
    println!(
        "\nSmolLM2-135M-Instruct Q4_1, decode tokens summed over B sequences: one batched forward pass per step vs B single steps (median of {REPEATS}); per wall second, and per CPU second of the bench process (steadier on a shared machine)"
    );
    println!(
        "| threads |  B | batched tok/s | sequential tok/s | ratio | batched tok/CPU-s | sequential tok/CPU-s | CPU ratio | kernel |"
    );
    println!(
        "|---------|----|---------------|------------------|-------|-------------------|----------------------|-----------|--------|"
    );
    for (threads, v) in &rows {
        let num = |key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .with_context(|| format!("no `{key}` in {v}"))
        };
        println!(
            "| {threads:>7} | {:>2} | {:>13.1} | {:>16.1} | {:>4.2}x | {:>17.1} | {:>20.1} | {:>8.2}x | {:<6} |",
            num("batch")?,
            num("batched_tok_s")?,
            num("sequential_tok_s")?,
            num("ratio")?,
            num("batched_tok_per_cpu_s")?,
            num("sequential_tok_per_cpu_s")?,
            num("cpu_ratio")?,
            v.get("kernel").and_then(Value::as_str).unwrap_or("?")
        );
    }
    Ok(())
}

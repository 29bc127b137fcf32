//! `cargo xtask bench cpu`: selfroute's candle engine and llama.cpp, same GGUF, same prompt ids,
//! same thread counts, in one run; prints both and the ratio. llama.cpp is built from PyPI
//! (`llama-cpp-python`) into a venv on first use, 15-20 minutes on 2 cores: the bench's cost.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 128;
const REPEATS: usize = 3;
const LLAMA_CPP: &str = "llama-cpp-python==0.3.36";
/// This CPU reports AMX, and a native llama.cpp build dies with SIGILL: pin the ISA explicitly.
const LLAMA_CPP_CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF";

pub fn cpu(root: &Path, args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("`bench cpu` takes no arguments, got {args:?}");
    }
    let model = fetch_default_model(root)?;
    let python = setup::python_venv(
        root,
        "llama-cpp-venv",
        &[LLAMA_CPP, "numpy"],
        &[("CMAKE_ARGS", LLAMA_CPP_CMAKE_ARGS)],
    )?;
    step("building selfroute's cpu_bench (release)");
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "selfroute-candle",
            "--example",
            "cpu_bench",
        ],
    )?;
    let ours_bin = root.join("target/release/examples/cpu_bench");
    let ids = root.join("target/xtask/bench-prompt-ids.json");
    let mut rows = Vec::new();
    for threads in [1usize, 2] {
        step(&format!(
            "measuring at {threads} thread(s): {PROMPT_TOKENS}-token prefill, {DECODE_TOKENS} greedy decode steps, median of {REPEATS}"
        ));
        let ours = json_line(
            Command::new(&ours_bin)
                .arg(&model)
                .arg(&ids)
                .args([PROMPT_TOKENS, DECODE_TOKENS, REPEATS].map(|n| n.to_string()))
                .env("RAYON_NUM_THREADS", threads.to_string()),
        )?;
        let peer = json_line(
            Command::new(&python)
                .arg(root.join("xtask/bench/llama_cpp_bench.py"))
                .arg(&model)
                .arg(&ids)
                .args([threads, DECODE_TOKENS, REPEATS].map(|n| n.to_string())),
        )?;
        rows.push((threads, ours, peer));
    }
    println!(
        "\nSmolLM2-135M-Instruct Q4_1, {PROMPT_TOKENS}-token prompt, {DECODE_TOKENS} decode steps (tok/s, median of {REPEATS})"
    );
    println!("| threads | phase   | selfroute (candle) | llama.cpp | ratio |");
    println!("|---------|---------|--------------------|-----------|-------|");
    for (threads, ours, peer) in &rows {
        for phase in ["prefill", "decode"] {
            let key = format!("{phase}_tok_s");
            let (a, b) = (field(ours, &key)?, field(peer, &key)?);
            println!(
                "| {threads:>7} | {phase:<7} | {a:>18.1} | {b:>9.1} | {:>4.2}x |",
                a / b
            );
        }
    }
    Ok(())
}

fn json_line(cmd: &mut Command) -> Result<Value> {
    let out = setup::output(cmd)?;
    let line = out.lines().last().context("benchmark printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("benchmark printed `{line}`"))
}

fn field(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no `{key}` in {v}"))
}

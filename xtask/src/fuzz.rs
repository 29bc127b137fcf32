//! A short fuzz run of the model-loading path (`fuzz/`), seeded with the committed GGUF and
//! safetensors fixtures. Run longer by hand:
//!   RUSTC_BOOTSTRAP=1 cargo fuzz run model_load --sanitizer none -- -max_total_time=600

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{self, step};

const SMOKE_SECONDS: u32 = 60;

pub fn smoke(root: &Path) -> Result<()> {
    ensure_cargo_fuzz()?;
    let corpus = root.join("fuzz/corpus/model_load");
    std::fs::create_dir_all(&corpus)?;
    seed_corpus(root, &corpus)?;
    step(&format!(
        "fuzzing the model loaders for {SMOKE_SECONDS} s (cargo fuzz run model_load)"
    ));
    // Stable toolchain: RUSTC_BOOTSTRAP unlocks the coverage flags cargo-fuzz passes; without a
    // sanitizer, a panic is still caught and reported as a crash.
    let out = Command::new(env!("CARGO"))
        .args(["fuzz", "run", "model_load", "--sanitizer", "none", "--"])
        .arg(format!("-max_total_time={SMOKE_SECONDS}"))
        .args([
            "-print_final_stats=1",
            "-max_len=65536",
            "-rss_limit_mb=4096",
        ])
        .arg(&corpus)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root.join("fuzz"))
        .output()
        .context("starting cargo fuzz")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        bail!(
            "fuzzing found a failure:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let executions = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .map(str::trim)
        .unwrap_or("unknown");
    eprintln!("fuzz: model_load ran {executions} executions in {SMOKE_SECONDS} s without a crash");
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    step("installing cargo-fuzz from crates.io (once; about 2 minutes)");
    setup::run(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--version", "0.13.2"]))
}

/// Small valid inputs make the fuzzer reach past the header checks quickly.
fn seed_corpus(root: &Path, corpus: &Path) -> Result<()> {
    let data = root.join("tests/reference/data");
    for name in [
        "tiny_llama.gguf",
        "quant_types.gguf",
        "tiny_llama_f16/model.safetensors",
        "tiny_llama_f16/config.json",
    ] {
        let src = data.join(name);
        if src.exists() {
            std::fs::copy(&src, corpus.join(name.replace('/', "_")))?;
        }
    }
    Ok(())
}

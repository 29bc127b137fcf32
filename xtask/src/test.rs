//! `cargo xtask test`: everything CI runs, from a fresh machine. `.ci/run` is exactly this.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::browser_tests::{self, BrowserTestEnv};
use crate::demo_model::{self, TrainerBuild};
use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};
use crate::web::{self, WasmBuild};

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    step("checking prerequisites: the wasm32 Rust target, python3 with pip, Node.js 20+");
    setup::ensure_rust_target("wasm32-unknown-unknown")?;
    setup::run(Command::new("python3").args(["-m", "pip", "--version"]))?;
    crate::node::ensure_node()?;
    let model = fetch_default_model(root)?;
    setup::ensure_lavapipe()?;
    let chromium = browser_tests::ensure_chromium()?;

    step("cargo fmt --check");
    cargo(root, &["fmt", "--all", "--check"])?;
    step("cargo clippy (all targets, warnings are errors)");
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("cargo clippy for wasm32 (the browser crate, which the host-target lint skips)");
    cargo(
        root,
        &[
            "clippy",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "selfroute-wasm",
            "--",
            "-D",
            "warnings",
        ],
    )?;

    step("cargo test (workspace): unit, parity, GPU (lavapipe) and CLI tests");
    // GPU tests skip without an adapter elsewhere; here a missing adapter is a failure.
    setup::run(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace"])
            .env("SELFROUTE_REQUIRE_GPU", "1")
            .current_dir(root),
    )?;
    // Plotting is an opt-in feature the workspace test leaves out.
    step("selfroute-train plot tests (--features plot)");
    setup::ensure_plot_font()?;
    cargo(
        root,
        &[
            "test",
            "-p",
            "selfroute-train",
            "--features",
            "plot",
            "--test",
            "plot",
        ],
    )?;
    // That step built target/debug/selfroute-train with plots: the experiment's every stage on it.
    crate::experiment::smoke(root, &model)?;
    for path in ["avx2", "baseline"] {
        step(&format!(
            "kernel and parity tests again on the {path} path (SELFROUTE_KERNEL={path})"
        ));
        setup::run(
            Command::new(env!("CARGO"))
                .args(["test", "--workspace", "--lib", "--test", "parity"])
                .env("SELFROUTE_KERNEL", path)
                .current_dir(root),
        )?;
    }

    // The official OpenAI SDK against `selfroute serve`, with the test-profile binary the
    // workspace test step built.
    crate::openai_conformance::run(
        root,
        &model,
        &crate::openai_conformance::test_profile_selfroute(root),
    )?;

    // Before the browser tests, whose site build reuses the wasm dependencies it compiles.
    wasm_kernel_tests(root)?;

    browser(root, &model, &chromium)?;

    crate::fuzz::smoke(root)?;

    // Last: the trainer's `cuda` feature, compiled with nvcc from PyPI (no GPU). Its own target
    // directory, cached outside the checkout, so a warm run is seconds.
    crate::cuda::check(root)?;

    eprintln!(
        "\nxtask test: all steps passed in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// The quantized kernels' unit tests (f64 reference, portable body, every f16 scale) compiled for
/// wasm32 with simd128 and run where the page runs them: V8 in a dedicated worker of headless
/// Chromium, through wasm-bindgen-test-runner (`.cargo/config.toml`'s wasm32 runner, installed
/// with wasm-bindgen-cli). Profile `wasm`, the optimisation the site ships with; naming
/// selfroute-wasm too (its lib has no tests) resolves dependency features as the site build does,
/// so that build reuses every dependency compiled here (a cold run is ~80 s, nearly all of it
/// compiling what the site build would otherwise compile).
fn wasm_kernel_tests(root: &Path) -> Result<()> {
    let chromedriver = setup::ensure_chromedriver()?;
    crate::wasm_bindgen::ensure(root)?;
    step("kernel tests in wasm32 (simd128) in headless Chromium, wasm-bindgen-test in a worker");
    setup::timed("wasm32 kernel tests", || {
        setup::run(
            Command::new(env!("CARGO"))
                .args([
                    "test",
                    "--profile",
                    "wasm",
                    "--target",
                    "wasm32-unknown-unknown",
                    "-p",
                    "selfroute-candle",
                    "-p",
                    "selfroute-wasm",
                    "--lib",
                ])
                .env("CHROMEDRIVER", chromedriver)
                .env("WASM_BINDGEN_USE_DEDICATED_WORKER", "1")
                .current_dir(root),
        )
    })
}

/// `cargo xtask test browser`: only the browser part, for working on the page or its tests.
pub fn browser_only(root: &Path) -> Result<()> {
    crate::node::ensure_node()?;
    let model = fetch_default_model(root)?;
    let chromium = browser_tests::ensure_chromium()?;
    browser(root, &model, &chromium)
}

/// The demo model and the site (quick wasm profile; no wasm-opt, a minute for a size the tests do
/// not need), then the page tests. The site's wasm build also compiles selfroute-candle and
/// selfroute-wgpu for wasm32 (selfroute-wasm depends on both through selfroute-engine).
fn browser(root: &Path, model: &Path, chromium: &Path) -> Result<()> {
    // `selfroute` (for the demo test) and `selfroute-train` (for the demo model) as `cargo test
    // --workspace` builds them for its integration tests, dependencies optimised: the same command
    // finds nothing to do after the test step, and two release builds are spared.
    step("the test-profile selfroute and selfroute-train (built by cargo test --workspace)");
    cargo(root, &["test", "--workspace", "--no-run"])?;
    let demo = demo_model::ensure(root, model, TrainerBuild::Test)?;
    let site = web::build_site(root, &demo, WasmBuild::Quick)?;
    browser_tests::run(
        root,
        &BrowserTestEnv {
            chromium,
            site: &site,
            model,
            demo_model: &demo.path,
            selfroute: &root.join("target/debug/selfroute"),
        },
    )
}

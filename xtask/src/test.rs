//! `cargo xtask test`: everything CI runs, from a fresh machine. `.ci/run` is exactly this.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    step("checking prerequisites: the wasm32 Rust target, python3 with pip");
    setup::ensure_rust_target("wasm32-unknown-unknown")?;
    setup::run(Command::new("python3").args(["-m", "pip", "--version"]))?;
    fetch_default_model(root)?;
    setup::ensure_lavapipe()?;

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

    step("cargo test (workspace): unit, parity, GPU (lavapipe) and CLI tests");
    // GPU tests skip without an adapter elsewhere; here a missing adapter is a failure.
    setup::run(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace"])
            .env("SELFROUTE_REQUIRE_GPU", "1")
            .current_dir(root),
    )?;
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

    step(
        "building selfroute-candle (the browser's CPU fallback) and selfroute-wgpu (WebGPU) for wasm32-unknown-unknown",
    );
    cargo(
        root,
        &[
            "build",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "selfroute-candle",
            "-p",
            "selfroute-wgpu",
        ],
    )?;

    crate::fuzz::smoke(root)?;

    eprintln!(
        "\nxtask test: all steps passed in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

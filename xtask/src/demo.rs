//! `cargo xtask demo`: the browser demo. Builds the site and serves it with `selfroute serve`,
//! whose chat endpoint is the page's cloud. `cargo xtask chat`: the terminal chat.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::demo_model::{self, TrainerBuild};
use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};
use crate::web::{self, SITE, WasmBuild};

const UPSTREAM_KEY_ENV: &str = "SELFROUTE_UPSTREAM_API_KEY";

/// Who answers the questions the page offloads.
enum Cloud {
    /// `selfroute serve --model`: the same small model, standing in for a real cloud.
    StandIn,
    /// `selfroute serve --upstream URL`: a real OpenAI-compatible endpoint, key from the environment.
    Upstream(String),
}

struct DemoArgs {
    cloud: Cloud,
    port: u16,
}

fn parse(args: &[&str]) -> Result<DemoArgs> {
    let mut parsed = DemoArgs {
        cloud: Cloud::StandIn,
        port: 8080,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match *arg {
            "--upstream" => parsed.cloud = Cloud::Upstream(value()?.to_string()),
            "--port" => {
                let v = value()?;
                parsed.port = v.parse().with_context(|| format!("--port {v}"))?;
            }
            other => bail!("`demo` takes --upstream URL and --port N, got {other:?}"),
        }
    }
    Ok(parsed)
}

pub fn demo(root: &Path, args: &[&str]) -> Result<()> {
    let args = parse(args)?;
    let base = fetch_default_model(root)?;
    let model = demo_model::ensure(root, &base, TrainerBuild::Release)?;
    web::build_site(root, &model, WasmBuild::Size)?;
    step("building selfroute (release): the server for the page and its cloud");
    setup::timed("building selfroute", || {
        cargo(root, &["build", "--release", "-p", "selfroute-cli"])
    })?;

    let mut serve = Command::new(root.join("target/release/selfroute"));
    serve
        .args(["serve", "--static", SITE, "--port"])
        .arg(args.port.to_string());
    match &args.cloud {
        Cloud::StandIn => {
            step(&format!(
                "starting selfroute serve: the page at /, and a stand-in cloud at /v1 running {} on this machine's CPU",
                base.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("the model")
            ));
            eprintln!(
                "note: the \"cloud\" is a stand-in for a real one: the same small model, without the offload token. \
                 For a real cloud: cargo xtask demo --upstream https://api.openai.com/v1 (key in ${UPSTREAM_KEY_ENV})"
            );
            serve.arg("--model").arg(&base);
        }
        Cloud::Upstream(url) => {
            step(&format!(
                "starting selfroute serve: the page at /, and /v1 forwarding to {url}"
            ));
            let key_set = std::env::var(UPSTREAM_KEY_ENV).is_ok_and(|k| !k.is_empty());
            eprintln!(
                "note: the upstream's API key is read from ${UPSTREAM_KEY_ENV} ({}); the page never sees it",
                if key_set {
                    "set"
                } else {
                    "NOT set: requests go without a key"
                }
            );
            serve.arg("--upstream").arg(url);
        }
    }
    let mut child = serve
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting selfroute serve")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    match first.trim().strip_prefix("listening on ") {
        Some(url) => eprintln!(
            "\n    open {url}/ in Chromium or Chrome (WebGPU; other browsers run on the CPU)\n    Ctrl-C stops the server\n"
        ),
        None => eprint!("{first}"),
    }
    // The server logs to stderr (inherited); pass on anything else it prints.
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    let status = child.wait()?;
    if !status.success() {
        bail!("selfroute serve exited with {status}");
    }
    Ok(())
}

/// The terminal chat with the on-device model (the demo before the browser one).
pub fn chat(root: &Path) -> Result<()> {
    let model = fetch_default_model(root)?;
    step("building selfroute (release)");
    cargo(root, &["build", "--release", "-p", "selfroute-cli"])?;
    step("starting `selfroute chat` on the on-device model (Ctrl-D or /exit to quit)");
    let status = Command::new(root.join("target/release/selfroute"))
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

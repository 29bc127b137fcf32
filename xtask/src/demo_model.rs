//! `models/selfroute-demo.gguf`: the default model with the `<|offload|>` token added, so the
//! browser demo has a model that can hand questions to the cloud. `selfroute-train router` fits a
//! prompt router (a probe on the model's answer-position state predicting its own wrong answers,
//! 30% sent out), and `selfroute-train prepare --router` folds it into the token's head row: the
//! model offloads, at its first answer token, the arithmetic it would likely get wrong. Rebuilt
//! only when an input changes: a stamp beside it records the input model's SHA-256, the router
//! and prepare arguments and a hash of the trainer sources that shape the output.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fetch_model;
use crate::setup::{self, cargo, step};

pub const DEMO_MODEL: &str = "models/selfroute-demo.gguf";

/// Q8_0 holds the source's Q4_1 matrices almost exactly and its Q8_0 embedding (also the output
/// head: SmolLM2 ties them) exactly; Q4_1 would save ~45 MB of download but requantize the head.
const PREPARE_ARGS: &[&str] = &[
    "--task",
    "arith:1-4",
    "--prompts",
    "128",
    "--answer-tokens",
    "48",
    "--margin",
    "4",
    "--type",
    "q8_0",
    "--seed",
    "0",
];

/// The router's labels come from the same training problems prepare folds on (same task, count
/// and seed), answered greedily as the demo will.
const ROUTER_ARGS: &[&str] = &[
    "--task",
    "arith:1-4",
    "--problems",
    "128",
    "--max-new-tokens",
    "48",
    "--budget",
    "0.3",
    "--seed",
    "0",
];

/// The router file, kept beside the model (it names the base model's SHA-256).
const ROUTER_FILE: &str = "models/selfroute-demo.router.json";

/// The trainer code the prepared file depends on: the command, the token fit, the forward pass
/// it fits through, and the GGUF writer.
const TRAINER_SOURCES: &[&str] = &[
    "trainer/src/bin/selfroute-train/prepare.rs",
    "trainer/src/bin/selfroute-train/router.rs",
    "trainer/src/prepare.rs",
    "trainer/src/warmup.rs",
    "trainer/src/model.rs",
    "trainer/src/hidden.rs",
    "trainer/src/export.rs",
    "trainer/src/eval/mod.rs",
    "trainer/src/router/mod.rs",
    "trainer/src/router/probe.rs",
    "trainer/src/router/fold.rs",
    "trainer/src/router/linalg.rs",
];

/// Which build of the trainer runs prepare.
#[derive(Clone, Copy, Debug)]
pub enum TrainerBuild {
    /// `cargo build --release`: for people.
    Release,
    /// The binary `cargo test --workspace` leaves in target/debug (dependencies at opt-level 3):
    /// in CI, where a release build would cost minutes more. Asked for with the very command the
    /// test step ran, so cargo finds nothing to do; any other command resolves features
    /// differently and rebuilds part of the tree.
    Test,
}

pub struct DemoModel {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The demo model, prepared from `base` (the verified default model) when missing or stale.
pub fn ensure(root: &Path, base: &Path, build: TrainerBuild) -> Result<DemoModel> {
    let path = root.join(DEMO_MODEL);
    let stamp_path = path.with_extension("gguf.stamp");
    let inputs = json!({
        "input_sha256": fetch_model::SHA256,
        "router_args": ROUTER_ARGS,
        "prepare_args": PREPARE_ARGS,
        "trainer_sources_sha256": sources_hash(root)?,
    });
    if let Some(model) = up_to_date(&path, &stamp_path, &inputs)? {
        eprintln!("demo model: {} is up to date", path.display());
        return Ok(model);
    }
    let trainer = build_trainer(root, build)?;
    // A stale stamp must not vouch for a half-written model if a step fails.
    let _ = std::fs::remove_file(&stamp_path);
    let router = root.join(ROUTER_FILE);
    step(&format!(
        "making the demo model {DEMO_MODEL}: a prompt router for {} (selfroute-train router {})",
        base.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("the model"),
        ROUTER_ARGS.join(" ")
    ));
    setup::timed("selfroute-train router", || {
        setup::run(
            Command::new(&trainer)
                .arg("router")
                .arg("--model")
                .arg(base)
                .arg("--out")
                .arg(&router)
                .args(ROUTER_ARGS)
                .current_dir(root),
        )
    })?;
    step(&format!(
        "adding <|offload|> with the router folded into its row (selfroute-train prepare --router {ROUTER_FILE} {})",
        PREPARE_ARGS.join(" ")
    ));
    setup::timed("selfroute-train prepare --router", || {
        setup::run(
            Command::new(&trainer)
                .arg("prepare")
                .arg("--model")
                .arg(base)
                .arg("--out")
                .arg(&path)
                .arg("--router")
                .arg(&router)
                .args(PREPARE_ARGS)
                .current_dir(root),
        )
    })?;
    let model = DemoModel {
        sha256: setup::sha256_file(&path)?,
        size: std::fs::metadata(&path)?.len(),
        path,
    };
    let mut stamp = inputs;
    stamp["output_sha256"] = json!(model.sha256);
    stamp["output_size"] = json!(model.size);
    std::fs::write(&stamp_path, serde_json::to_string_pretty(&stamp)?)?;
    eprintln!(
        "demo model: {} ({} bytes, sha256 {})",
        model.path.display(),
        model.size,
        model.sha256
    );
    Ok(model)
}

/// The model described by the stamp, if the stamp's inputs are `inputs` and the file on disk is
/// the one the stamp recorded (hashing ~140 MB takes well under a second).
fn up_to_date(path: &Path, stamp_path: &Path, inputs: &Value) -> Result<Option<DemoModel>> {
    let Ok(text) = std::fs::read_to_string(stamp_path) else {
        return Ok(None);
    };
    let Ok(stamp) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    let same_inputs = inputs
        .as_object()
        .context("inputs")?
        .iter()
        .all(|(k, v)| stamp.get(k) == Some(v));
    let (Some(sha256), Some(size)) = (
        stamp["output_sha256"].as_str(),
        stamp["output_size"].as_u64(),
    ) else {
        return Ok(None);
    };
    if !same_inputs || std::fs::metadata(path).map(|m| m.len()).ok() != Some(size) {
        return Ok(None);
    }
    if setup::sha256_file(path)? != sha256 {
        return Ok(None);
    }
    Ok(Some(DemoModel {
        path: path.to_path_buf(),
        sha256: sha256.to_string(),
        size,
    }))
}

fn sources_hash(root: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    for source in TRAINER_SOURCES {
        let bytes =
            std::fs::read(root.join(source)).with_context(|| format!("reading {source}"))?;
        hasher.update(source.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(setup::hex(&hasher.finalize()))
}

fn build_trainer(root: &Path, build: TrainerBuild) -> Result<PathBuf> {
    let (args, dir): (&[&str], _) = match build {
        TrainerBuild::Release => (&["build", "--release", "-p", "selfroute-train"], "release"),
        TrainerBuild::Test => (&["test", "--workspace", "--no-run"], "debug"),
    };
    step(&format!("building selfroute-train ({dir}) for prepare"));
    setup::timed("building selfroute-train", || cargo(root, args))?;
    Ok(root.join("target").join(dir).join("selfroute-train"))
}

//! `selfroute-train router`: fits the prompt-router baseline, a logistic-regression probe on the
//! model's final hidden state at the answer position, predicting a wrong greedy local answer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use selfroute_core::{GenerationParams, ModelPackage, NoCloud};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use selfroute_train::eval::{EvalConfig, Policy, evaluate};
use selfroute_train::export::write_atomically;
use selfroute_train::model::TrainableModel;
use selfroute_train::router::{ProbeSource, sha256_hex, train_probe};
use selfroute_train::tasks::{Split, parse_task};
use selfroute_train::train::prompt_ids;

use crate::output::prepare_output_file;

#[derive(Args)]
pub struct RouterArgs {
    /// The GGUF whose answers and hidden states the probe learns (the model it will route).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The task whose training problems label the probe (see `train --task`).
    #[arg(long, default_value = "arith")]
    task: String,
    /// Training problems answered greedily to make the labels.
    #[arg(long, default_value_t = 256)]
    problems: usize,
    /// Share of the training prompts the calibrated threshold sends to the cloud.
    #[arg(long, default_value_t = 0.3)]
    budget: f64,
    /// Most tokens of a local answer (as in `eval`).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the router (JSON).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

pub fn run(args: RouterArgs) -> Result<()> {
    prepare_output_file(&args.out)?;
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let sha256 = sha256_hex(&bytes);
    let model_name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.display().to_string());
    let mut package = ModelPackage::from_gguf(args.model.display().to_string(), bytes)?;
    let template = package
        .chat_template
        .take()
        .context("the model has no chat template")?;
    let task = parse_task(&args.task)?;
    let problems = task.problems(Split::Train, args.problems.max(1), args.seed)?;
    let prompts = problems
        .iter()
        .map(|p| prompt_ids(&template, &package.tokenizer, task.as_ref(), p))
        .collect::<selfroute_train::Result<Vec<_>>>()?;
    let model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;

    // Labels: the greedy local answers eval would give (same engine, same Assistant, offload
    // masked), so the probe predicts what the evaluation will see.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (engine, _) = runtime.block_on(load_engine(
        &package.config,
        package.weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))?;
    eprintln!(
        "answering {} {} training problems greedily for the labels ...",
        problems.len(),
        task.name()
    );
    let started = std::time::Instant::now();
    let config = EvalConfig {
        generation: GenerationParams {
            max_new_tokens: args.max_new_tokens,
            ..EvalConfig::default().generation
        },
        ..EvalConfig::default()
    };
    let records = runtime.block_on(evaluate(
        engine,
        package.tokenizer,
        template,
        None::<NoCloud>,
        task.as_ref(),
        &problems,
        &Policy::Local,
        &config,
        |r| {
            if (r.index + 1) % 32 == 0 {
                eprintln!("  {} answered", r.index + 1);
            }
        },
    ))?;
    let wrong: Vec<bool> = records.iter().map(|r| !r.correct).collect();
    eprintln!(
        "labels in {:.1} s; fitting the probe on the answer-position states ...",
        started.elapsed().as_secs_f64()
    );
    let probe = train_probe(
        &model,
        &prompts,
        &wrong,
        args.budget,
        &ProbeSource {
            model_name: &model_name,
            model_sha256: &sha256,
            task: task.name(),
        },
    )?;
    write_atomically(&args.out, serde_json::to_string_pretty(&probe)?.as_bytes())?;
    println!(
        "probe on {} prompts: {:.1}% wrong locally; cross-validated AUC {:.3} (L2 {}); threshold \
         sends {:.0}% to the cloud",
        probe.train_problems,
        100.0 * probe.train_wrong_share,
        probe.cv_auc,
        probe.l2,
        100.0 * probe.budget
    );
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

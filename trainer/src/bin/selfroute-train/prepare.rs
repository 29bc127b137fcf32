//! `selfroute-train prepare`: add <|offload|> to a model and warm it up.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use selfroute_core::{ModelPackage, OFFLOAD_TOKEN, OffloadSignal};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use selfroute_train::eval::greedy_answer_ids;
use selfroute_train::export::{AddedToken, ExportType, gguf_bytes, write_atomically};
use selfroute_train::model::TrainableModel;
use selfroute_train::prepare::{add_offload_token, add_routed_offload_token};
use selfroute_train::rollout::{RolloutConfig, rollout_group};
use selfroute_train::router::fold::answer_states;
use selfroute_train::router::{ProbeRouter, sha256_hex};
use selfroute_train::tasks::{Split, parse_task};
use selfroute_train::train::prompt_ids;

use crate::model_file::read_gguf;
use crate::output::prepare_output_file;

#[derive(Args)]
pub struct PrepareArgs {
    /// GGUF model without <|offload|>.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Where to write the prepared GGUF.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Task whose prompts the warm-up uses (see `train --task`).
    #[arg(long, default_value = "arith")]
    task: String,
    /// Prompts for the warm-up and the offload-rate measurement.
    #[arg(long, default_value_t = 32)]
    prompts: usize,
    /// Mean probability of <|offload|> as the first answer token after the warm-up.
    #[arg(long, default_value_t = 0.15)]
    target_rate: f64,
    /// Tokens sampled per prompt when measuring the initial offload rate.
    #[arg(long, default_value_t = 32)]
    sample_tokens: usize,
    /// Weight format of the written file: f32, f16, q8_0, q4_1.
    #[arg(long = "type", default_value = "f32")]
    format: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A probe from `selfroute-train router` fitted on this --model: the token's row is fitted so
    /// greedy decoding offloads, at the first answer token, the prompts the probe sends out
    /// (instead of the same --target-rate everywhere). Use more --prompts (e.g. 256).
    #[arg(long, value_name = "PATH")]
    router: Option<PathBuf>,
    /// With --router: the offload logit's margin (logits) at the median probe margin.
    #[arg(long, default_value_t = 4.0)]
    margin: f64,
    /// With --router: tokens of the model's greedy answers along which the row must not offload.
    #[arg(long, default_value_t = 48)]
    answer_tokens: usize,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let format = ExportType::parse(&args.format)?;
    prepare_output_file(&args.out)?;
    let (package, source) = read_gguf(&args.model)?;
    let probe = match &args.router {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let probe = ProbeRouter::from_json(&path.display().to_string(), &text)?;
            let bytes = std::fs::read(&args.model)
                .with_context(|| format!("reading {}", args.model.display()))?;
            probe.check_model(package.config.hidden_size, &sha256_hex(&bytes))?;
            Some((probe, bytes))
        }
        None => None,
    };
    let template = package
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let task = parse_task(&args.task)?;
    let problems = task.problems(Split::Train, args.prompts.max(1), args.seed)?;
    let prompts = problems
        .iter()
        .map(|p| prompt_ids(template, &package.tokenizer, task.as_ref(), p))
        .collect::<selfroute_train::Result<Vec<_>>>()?;
    let mut model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;
    eprintln!(
        "adding {OFFLOAD_TOKEN} and fitting its row on {} {} prompts ...",
        prompts.len(),
        task.name()
    );
    if let Some((probe, bytes)) = &probe {
        let started = std::time::Instant::now();
        // The model's own greedy answers, through the engine eval uses.
        let mut base = ModelPackage::from_gguf(args.model.display().to_string(), bytes.clone())?;
        let base_template = base
            .chat_template
            .take()
            .context("the model has no chat template")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .context("starting the async runtime")?;
        let answers = runtime.block_on(async {
            let (engine, _) = load_engine(
                &base.config,
                base.weights,
                &EngineOptions {
                    choice: BackendChoice::Cpu,
                    ..EngineOptions::default()
                },
            )
            .await?;
            anyhow::Ok(
                greedy_answer_ids(
                    engine,
                    base.tokenizer,
                    base_template,
                    task.as_ref(),
                    &problems,
                    args.answer_tokens,
                )
                .await?,
            )
        })?;
        eprintln!(
            "greedy answers in {:.1} s; fitting the row ...",
            started.elapsed().as_secs_f64()
        );
        let (id, report) = add_routed_offload_token(
            &mut model,
            &package.tokenizer,
            &prompts,
            &answers,
            probe,
            args.margin,
        )?;
        let bytes = gguf_bytes(&model, &source, &added_token(), format)?;
        write_atomically(&args.out, &bytes)?;
        let fitted_s = started.elapsed().as_secs_f64();
        // Measured on the file as written (quantized): the greedy first answer token.
        let prepared = ModelPackage::from_gguf(args.out.display().to_string(), bytes)?;
        let prepared_model = TrainableModel::from_weights(
            &prepared.config,
            prepared.weights.as_ref(),
            DType::F32,
            &Device::Cpu,
        )?;
        let states = answer_states(&prepared_model, &prompts, id)?;
        let offloads = states.iter().filter(|s| s.offloads()).count();
        let agree = states
            .iter()
            .filter(|s| s.offloads() == probe.predicts_wrong(&s.hidden))
            .count();
        println!(
            "{OFFLOAD_TOKEN} is token {id}; folded the probe in {fitted_s:.1} s: it sends {:.1}% of \
             the {} prompts out, the fitted row {:.1}% (agreement {:.1}%) and {:.1}% of {} later \
             answer positions; in the written file greedy decoding offloads {:.1}% at the first \
             token and agrees with the probe on {:.1}%",
            100.0 * report.probe_share,
            report.prompts,
            100.0 * report.offload_share,
            100.0 * report.agreement,
            100.0 * report.later_offload_share,
            report.later_positions,
            100.0 * offloads as f64 / states.len() as f64,
            100.0 * agree as f64 / states.len() as f64,
        );
        eprintln!("wrote {}", args.out.display());
        return Ok(());
    }
    let (id, report) =
        add_offload_token(&mut model, &package.tokenizer, &prompts, args.target_rate)?;
    let bytes = gguf_bytes(&model, &source, &added_token(), format)?;
    write_atomically(&args.out, &bytes)?;
    // Measure on the file as written: what `train` will start from.
    let prepared = ModelPackage::from_gguf(args.out.display().to_string(), bytes)?;
    let prepared_model = TrainableModel::from_weights(
        &prepared.config,
        prepared.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;
    let signal = OffloadSignal::from_tokenizer(&prepared.tokenizer, None)?;
    let mut offloaded = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let sample = rollout_group(
            &prepared_model,
            &prepared.tokenizer,
            &signal,
            prompt,
            &RolloutConfig {
                group: 1,
                max_new_tokens: args.sample_tokens,
                temperature: 1.0,
            },
            args.seed.wrapping_add(i as u64),
        )?;
        offloaded += sample.iter().filter(|s| s.offloaded()).count();
    }
    println!(
        "{OFFLOAD_TOKEN} is token {id}; first-token offload probability {:.4} -> {:.4}; \
         initial offload rate (sampled, temperature 1, {} tokens): {}/{} = {:.3}",
        report.initial_rate,
        report.final_rate,
        args.sample_tokens,
        offloaded,
        prompts.len(),
        offloaded as f64 / prompts.len().max(1) as f64
    );
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn added_token() -> [AddedToken; 1] {
    [AddedToken {
        text: OFFLOAD_TOKEN.to_string(),
        token_type: 3,
    }]
}

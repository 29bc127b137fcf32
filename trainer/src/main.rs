//! `selfroute-train`: teaches a small model when to offload (arXiv:2509.24050).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand, ValueEnum};
use selfroute_core::{
    DEFAULT_OFFLOAD_MARKER, GgufFile, ModelPackage, OFFLOAD_TOKEN, OffloadSignal,
};
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::checkpoint::append_line;
use selfroute_train::cloud::{CloudOracle, HttpCloud, SimulatedCloud};
use selfroute_train::export::{
    AddedToken, ExportType, gguf_bytes, write_atomically, write_hf_folder,
};
use selfroute_train::model::TrainableModel;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::prepare::add_offload_token;
use selfroute_train::rollout::{RolloutConfig, rollout_group};
use selfroute_train::tasks::{Split, parse_task};
use selfroute_train::train::{TrainConfig, Trainer, prompt_ids};

#[derive(Parser)]
#[command(
    name = "selfroute-train",
    version,
    about = "Teach a small model when to offload (GAPG, arXiv:2509.24050)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add the <|offload|> token to a GGUF model and warm it up so RL has offloads to reinforce.
    Prepare(PrepareArgs),
    /// Post-train with the hierarchical reward, group policy gradient and adaptive filtering.
    Train(TrainArgs),
    /// Write a trained checkpoint as a GGUF file the inference engine and the browser load.
    Export(ExportArgs),
}

#[derive(Args)]
struct PrepareArgs {
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
}

#[derive(Args)]
struct ExportArgs {
    /// The GGUF the checkpoint was trained from (its tokenizer and metadata are kept).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// A checkpoint written by `train`.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// f32, f16, q8_0 or q4_1.
    #[arg(long = "type", default_value = "q8_0")]
    format: String,
    /// Also write a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json) here.
    #[arg(long, value_name = "DIR")]
    hf: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgoArg {
    Gapg,
    Grpo,
    DrGrpo,
}

#[derive(Args)]
struct TrainArgs {
    /// GGUF model to train (dequantized to f32).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// arith, arith:LO-HI, countdown, countdown:N or jsonl:PATH.
    #[arg(long, default_value = "arith")]
    task: String,
    /// Who answers offloaded prompts: simulated:ACC (right with probability ACC, fixed per
    /// prompt), or an OpenAI-compatible URL (asked once per prompt; answers cached in
    /// OUT/cloud-cache.jsonl).
    #[arg(long, default_value = "simulated:0.9")]
    cloud: String,
    /// The `model` sent to a --cloud URL.
    #[arg(long, default_value = "default")]
    cloud_model: String,
    /// Environment variable holding the --cloud URL's API key.
    #[arg(long, default_value = "SELFROUTE_CLOUD_API_KEY")]
    cloud_key_env: String,
    /// Most tokens of a cloud answer.
    #[arg(long, default_value_t = 1024)]
    cloud_max_tokens: u32,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    prompts_per_step: usize,
    /// Responses per prompt (G).
    #[arg(long, default_value_t = 8)]
    group: usize,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, value_enum, default_value = "gapg")]
    algo: AlgoArg,
    /// Most "needs the cloud" prompts per update, as a share of the locally solved ones.
    #[arg(long, default_value_t = 3.0 / 7.0)]
    rho: f64,
    /// Keep every prompt (no adaptive filtering).
    #[arg(long)]
    no_filter: bool,
    #[arg(long, default_value_t = 1.0)]
    alpha_local: f64,
    #[arg(long, default_value_t = 0.25)]
    alpha_cloud: f64,
    /// Reward added to a well-formed local answer (the paper's v1 format bonus).
    #[arg(long)]
    format_bonus: Option<f64>,
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Folder for metrics.jsonl and checkpoint.safetensors.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Write a checkpoint every N steps (and always after the last).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from OUT/checkpoint.safetensors (same model and settings); metrics are appended.
    #[arg(long)]
    resume: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare(args) => prepare(args),
        Command::Train(args) => train(args),
        Command::Export(args) => export(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let package = ModelPackage::from_gguf(args.model.display().to_string(), bytes)?;
    let template = package
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let has_token = package.tokenizer.token_to_id(OFFLOAD_TOKEN).is_some();
    if !has_token {
        eprintln!(
            "note: the model has no {OFFLOAD_TOKEN} token; watching for the text marker instead \
             (expect few offloads)"
        );
    }
    let signal = OffloadSignal::from_tokenizer(
        &package.tokenizer,
        (!has_token).then(|| DEFAULT_OFFLOAD_MARKER.to_string()),
    )?;
    let task = parse_task(&args.task)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut cloud: Box<dyn CloudOracle> = match SimulatedCloud::parse(&args.cloud, args.seed)? {
        Some(simulated) => Box::new(simulated),
        None => Box::new(HttpCloud::new(
            &args.cloud,
            std::env::var(&args.cloud_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
            args.cloud_model.clone(),
            Some(args.cloud_max_tokens),
            args.out.join("cloud-cache.jsonl"),
        )?),
    };
    let needed = args.steps * args.prompts_per_step;
    let problems = task.problems(Split::Train, needed.clamp(1, 100_000), args.seed)?;
    let device = parse_device(&args.device)?;
    let model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &device,
    )?;
    if args.lr.is_nan() || args.lr <= 0.0 {
        bail!("--lr must be positive");
    }
    let config = TrainConfig {
        prompts_per_step: args.prompts_per_step,
        rollout: RolloutConfig {
            group: args.group,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
        },
        algo: match args.algo {
            AlgoArg::Gapg => Algo::Gapg,
            AlgoArg::Grpo => Algo::Grpo,
            AlgoArg::DrGrpo => Algo::DrGrpo,
        },
        rho: (!args.no_filter).then_some(args.rho),
        reward: RewardConfig {
            alpha_local: args.alpha_local,
            alpha_cloud: args.alpha_cloud,
            format_bonus: args.format_bonus,
        },
        schedule: LrSchedule {
            peak: args.lr,
            warmup_steps: args.warmup_steps,
            total_steps: args.steps,
            final_fraction: 0.1,
        },
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            ..AdamWConfig::default()
        },
        seed: args.seed,
    };
    let metrics_path = args.out.join("metrics.jsonl");
    let checkpoint_path = args.out.join("checkpoint.safetensors");
    if !args.resume && metrics_path.exists() {
        std::fs::remove_file(&metrics_path)
            .with_context(|| format!("starting a fresh {}", metrics_path.display()))?;
    }
    eprintln!(
        "training {} on {} with {} ({}), {} steps of {} prompts x {}",
        args.model.display(),
        task.name(),
        cloud.describe(),
        args.algo.name(),
        args.steps,
        args.prompts_per_step,
        args.group
    );
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        template,
        signal,
        task.as_ref(),
        cloud.as_mut(),
        problems,
        config,
    )?;
    if args.resume {
        trainer
            .restore_checkpoint(&checkpoint_path)
            .with_context(|| format!("--resume from {}", checkpoint_path.display()))?;
        eprintln!("resumed at step {}", trainer.steps_done());
    }
    let progress = Progress::new(args.steps, trainer.steps_done());
    while trainer.steps_done() < args.steps {
        let m = trainer.step()?;
        append_line(&metrics_path, &serde_json::to_string(&m)?)?;
        let done = trainer.steps_done();
        if done == args.steps || (args.checkpoint_every > 0 && done % args.checkpoint_every == 0) {
            trainer.save_checkpoint(&checkpoint_path)?;
        }
        progress.step(&m);
    }
    progress.finish();
    eprintln!(
        "metrics: {}; checkpoint: {}",
        metrics_path.display(),
        checkpoint_path.display()
    );
    Ok(())
}

impl AlgoArg {
    fn name(self) -> &'static str {
        match self {
            Self::Gapg => "GAPG",
            Self::Grpo => "GRPO",
            Self::DrGrpo => "Dr. GRPO",
        }
    }
}

fn read_gguf(path: &std::path::Path) -> Result<(ModelPackage, GgufFile)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let package = ModelPackage::from_gguf(name.clone(), bytes.clone())?;
    Ok((package, GgufFile::from_bytes(name, bytes)?))
}

fn prepare(args: PrepareArgs) -> Result<()> {
    let format = ExportType::parse(&args.format)?;
    let (package, source) = read_gguf(&args.model)?;
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
    let (id, report) =
        add_offload_token(&mut model, &package.tokenizer, &prompts, args.target_rate)?;
    let added = [AddedToken {
        text: OFFLOAD_TOKEN.to_string(),
        token_type: 3,
    }];
    let bytes = gguf_bytes(&model, &source, &added, format)?;
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

fn export(args: ExportArgs) -> Result<()> {
    let format = ExportType::parse(&args.format)?;
    let (package, source) = read_gguf(&args.model)?;
    let model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;
    let checkpoint = selfroute_train::checkpoint::load(&args.checkpoint, DType::F32, &Device::Cpu)?;
    selfroute_train::checkpoint::load_weights_into(&model, &checkpoint.weights, &args.checkpoint)?;
    let bytes = gguf_bytes(&model, &source, &[], format)?;
    write_atomically(&args.out, &bytes)?;
    if let Some(dir) = &args.hf {
        let template = source
            .metadata("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        write_hf_folder(&model, &package.tokenizer, template.as_deref(), dir)?;
        eprintln!("wrote {}", dir.display());
    }
    eprintln!(
        "wrote {} ({:.1} MB, step {})",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        checkpoint.position.step
    );
    Ok(())
}

fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("--device {other}: expected cpu, cuda or cuda:N"))?,
    };
    Device::new_cuda(ordinal).with_context(|| {
        format!("--device {spec}: no CUDA device (build with `--features cuda` on a GPU machine)")
    })
}

/// The progress line on a terminal (a bar with the key figures, each step's line above it), or
/// one plain line per step when stderr is a file or pipe.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(steps: usize, done: usize) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_position(done as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar }
    }

    fn step(&self, m: &selfroute_train::train::StepMetrics) {
        let line = format!(
            "step {:>4} · reward {:.3}±{:.3} · local acc {:.2} · offload {:.2} · D1 {} D2 {} dropped {} · grad {:.3} · {:.1} tok/s · {:.1} s (rollout {:.1}, fwd/bwd {:.1}, optimiser {:.1})",
            m.step,
            m.reward_mean,
            m.reward_std,
            m.local_accuracy,
            m.offload_rate,
            m.d1,
            m.d2,
            m.dropped,
            m.grad_norm,
            m.tokens_per_s,
            m.step_s,
            m.rollout_s,
            m.forward_backward_s,
            m.optimizer_s
        );
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.set_message(format!(
                    "reward {:.3} · offload {:.2} · {:.1} s/step",
                    m.reward_mean, m.offload_rate, m.step_s
                ));
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

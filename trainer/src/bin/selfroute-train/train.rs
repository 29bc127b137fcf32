//! `selfroute-train train`: GAPG (or a baseline algorithm) with the hierarchical reward.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use clap::{Args, ValueEnum};
use selfroute_core::{DEFAULT_OFFLOAD_MARKER, ModelPackage, OFFLOAD_TOKEN, OffloadSignal};
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::checkpoint::append_line;
use selfroute_train::cloud::{CloudOracle, HttpCloud, SimulatedCloud};
use selfroute_train::model::TrainableModel;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::{RolloutConfig, RolloutEngine};
use selfroute_train::tasks::{Split, parse_task};
use selfroute_train::train::{OffloadMode, TrainConfig, Trainer};
use selfroute_train::update::Scoring;

use crate::device::parse_device;
use crate::output::prepare_output_dir;
use crate::progress::Progress;

#[derive(Clone, Copy, ValueEnum)]
pub enum AlgoArg {
    /// The paper's group-adapted policy gradient, with adaptive prompt filtering (--rho).
    Gapg,
    /// GRPO: std-normalised advantages, token-mean loss.
    Grpo,
    /// Dr. GRPO: centred advantages, token sums over a constant length.
    DrGrpo,
    /// The paper's collaboration-aware tuning baseline in one flag: Dr. GRPO with the
    /// hierarchical reward and no prompt filtering (--rho and --no-filter do not apply).
    CollabAware,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LrScheduleArg {
    Constant,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RolloutEngineArg {
    Fast,
    Trainable,
}

#[derive(Args)]
pub struct TrainArgs {
    /// GGUF model to train (dequantized to f32).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// arith, arith:LO-HI, countdown, countdown:N, mix or jsonl:PATH.
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
    /// Sampling temperature of the rollouts, above 0 (the loss scores log-probs at the same
    /// temperature, so the update stays on-policy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// What generates the rollouts: fast (every prompt's G samples decoded together by a no-grad
    /// forward over the trainable weights) or trainable (the model's own autograd forward, one
    /// prompt at a time; the reference). Both sample from the same weights.
    #[arg(long, value_enum, default_value = "fast")]
    rollout_engine: RolloutEngineArg,
    /// Sequences per forward/backward pass of the update, from any of the step's prompts
    /// (default: as many as fit 2048 padded tokens). Gradients are summed over the passes: the
    /// same update in less memory.
    #[arg(long, value_name = "N")]
    micro_batch: Option<usize>,
    /// Train only the top N blocks, the final norm and the offload token's head row; the rest
    /// stays as loaded (backprop stops below block N from the top, and `export` copies the
    /// untouched tensors in their source type). Default: every weight.
    #[arg(long, value_name = "N")]
    train_layers: Option<usize>,
    /// Score every sampled answer in the update, those without a gradient at weight 0: the same
    /// step with the work of a trainer that does not skip them (TRL's GRPOTrainer). For
    /// like-for-like benchmarks (`cargo xtask bench train`).
    #[arg(long)]
    update_every_answer: bool,
    /// The task-tuning-only baseline: the offload token is never sampled, the cloud never asked,
    /// and only a correct local answer earns a reward (--alpha-local).
    #[arg(long)]
    no_offload: bool,
    /// The update rule. collab-aware is the paper's collaboration-aware tuning baseline (Dr. GRPO,
    /// hierarchical reward, no filtering).
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
    /// After the warmup: constant (the rate held to the end) or cosine (decay to a tenth of
    /// --lr at the last step).
    #[arg(long, value_enum, default_value = "constant")]
    lr_schedule: LrScheduleArg,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off, the default). The paper's update has none, and
    /// AdamW divides the gradient's scale out: a clip below the usual norm (SmolLM2's GAPG
    /// gradients measure 30-120) only makes every step count the same, however strong its
    /// signal.
    #[arg(long, default_value_t = 0.0)]
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

pub fn run(args: TrainArgs) -> Result<()> {
    // Refused before any work (the trainer checks them again).
    Scoring {
        temperature: args.temperature,
        masked: Vec::new(),
    }
    .validate()
    .context("--temperature")?;
    if args.micro_batch == Some(0) {
        bail!("--micro-batch must be at least 1");
    }
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
    prepare_output_dir(&args.out)?;
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
    let (algo, filtered) = match args.algo {
        AlgoArg::Gapg => (Algo::Gapg, !args.no_filter),
        AlgoArg::Grpo => (Algo::Grpo, !args.no_filter),
        AlgoArg::DrGrpo => (Algo::DrGrpo, !args.no_filter),
        // The baseline is defined without filtering.
        AlgoArg::CollabAware => (Algo::DrGrpo, false),
    };
    let config = TrainConfig {
        prompts_per_step: args.prompts_per_step,
        rollout: RolloutConfig {
            group: args.group,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
        },
        algo,
        rho: filtered.then_some(args.rho),
        reward: RewardConfig {
            alpha_local: args.alpha_local,
            alpha_cloud: args.alpha_cloud,
            format_bonus: args.format_bonus,
        },
        schedule: match args.lr_schedule {
            LrScheduleArg::Constant => LrSchedule::constant(args.lr, args.warmup_steps),
            LrScheduleArg::Cosine => LrSchedule::cosine(args.lr, args.warmup_steps, args.steps),
        },
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            ..AdamWConfig::default()
        },
        seed: args.seed,
        micro_batch: args.micro_batch,
        train_layers: args.train_layers,
        every_answer: args.update_every_answer,
        offload: if args.no_offload {
            OffloadMode::Never
        } else {
            OffloadMode::Learn
        },
    };
    let metrics_path = args.out.join("metrics.jsonl");
    let checkpoint_path = args.out.join("checkpoint.safetensors");
    if !args.resume && metrics_path.exists() {
        std::fs::remove_file(&metrics_path)
            .with_context(|| format!("starting a fresh {}", metrics_path.display()))?;
    }
    eprintln!(
        "training {} on {} with {} ({}{}), {} steps of {} prompts x {}",
        args.model.display(),
        task.name(),
        if args.no_offload {
            "no offloading".to_string()
        } else {
            cloud.describe()
        },
        args.algo.name(),
        if filtered { "" } else { ", no filtering" },
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
    )?
    .with_rollout_engine(match args.rollout_engine {
        RolloutEngineArg::Fast => RolloutEngine::Fast,
        RolloutEngineArg::Trainable => RolloutEngine::Trainable,
    });
    if args.resume {
        trainer
            .restore_checkpoint(&checkpoint_path)
            .with_context(|| format!("--resume from {}", checkpoint_path.display()))?;
        eprintln!("resumed at step {}", trainer.steps_done());
        // Steps logged after the last checkpoint (a run stopped between checkpoints) are taken
        // again; their old lines would otherwise appear twice.
        keep_metrics_before(&metrics_path, trainer.steps_done())?;
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
            Self::CollabAware => "collaboration-aware tuning: Dr. GRPO",
        }
    }
}

/// Drops the lines of `path` whose `step` (0-based) is `steps_done` or later.
fn keep_metrics_before(path: &Path, steps_done: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::new();
    let mut dropped = 0usize;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64));
        match step {
            Some(step) if step as usize >= steps_done => dropped += 1,
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    if dropped > 0 {
        eprintln!(
            "{}: dropped {dropped} line(s) logged after the checkpoint",
            path.display()
        );
        std::fs::write(path, kept).with_context(|| format!("rewriting {}", path.display()))?;
    }
    Ok(())
}

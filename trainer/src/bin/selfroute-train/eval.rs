//! `selfroute-train eval`: the paper's evaluation protocol on held-out problems, through the
//! exported model in the inference engine (CPU) and the routing Assistant users run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use selfroute_core::{GenerationParams, ModelPackage, SamplingParams};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use selfroute_train::eval::cloud::{EvalCloud, SimulatedCloudClient};
use selfroute_train::eval::report::{RunLabels, markdown, summarize};
use selfroute_train::eval::{EvalConfig, Policy, ProblemRecord, evaluate, random_decisions};
use selfroute_train::model::TrainableModel;
use selfroute_train::router::{ProbeRouter, probe_decisions, sha256_hex};
use selfroute_train::tasks::{JsonlTask, Problem, Split, Task, parse_task};
use selfroute_train::train::prompt_ids;

use crate::output::prepare_output_dir;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouteArg {
    /// The model decides by emitting <|offload|> (with --offload-bias), within the budget.
    Token,
    /// Everything locally, <|offload|> masked (the task-tuned-only baseline).
    Local,
    /// Everything to the cloud (the cloud-only baseline; no cap).
    Cloud,
    /// A seeded random --share of the problems to the cloud, within the budget.
    Random,
    /// A prompt router (--router, from `selfroute-train router`) decides, within the budget.
    Probe,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The task's held-out problems.
    Test,
    /// Every problem of a jsonl file that is a test set in itself.
    All,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The GGUF to evaluate (e.g. from `export` or `prepare`).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// arith, arith:LO-HI, countdown, countdown:N or jsonl:PATH.
    #[arg(long, default_value = "arith")]
    task: String,
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// How many problems (with --split all: at most; default every one).
    #[arg(long)]
    problems: Option<usize>,
    /// Most cloud calls as a share of the problems: floor(budget * N) calls over the run.
    #[arg(long, default_value_t = 0.3)]
    budget: f64,
    #[arg(long, value_enum, default_value = "token")]
    route: RouteArg,
    /// Added to <|offload|>'s logit (--route token); positive offloads more.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    offload_bias: f32,
    /// Share of problems sent out by --route random (default: the budget).
    #[arg(long)]
    share: Option<f64>,
    /// A router file from `selfroute-train router` (--route probe).
    #[arg(long, value_name = "PATH")]
    router: Option<PathBuf>,
    /// simulated:ACC (right with probability ACC, fixed per problem and --seed), or an
    /// OpenAI-compatible URL.
    #[arg(long, default_value = "simulated:0.9")]
    cloud: String,
    /// The `model` sent to a --cloud URL.
    #[arg(long, default_value = "default")]
    cloud_model: String,
    /// Environment variable holding the --cloud URL's API key.
    #[arg(long, default_value = "SELFROUTE_CLOUD_API_KEY")]
    cloud_key_env: String,
    #[arg(long, default_value_t = 1024)]
    cloud_max_tokens: u32,
    /// Most tokens of a local answer.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Picks the problems, the simulated cloud's verdicts and the random route's choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The method's name in the table (default: from the route).
    #[arg(long)]
    method: Option<String>,
    /// Folder for summary.md, summary.json and problems.jsonl.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
}

fn problems(args: &EvalArgs, task: &dyn Task) -> Result<Vec<Problem>> {
    match args.split {
        SplitArg::Test => {
            Ok(task.problems(Split::Test, args.problems.unwrap_or(100), args.seed)?)
        }
        SplitArg::All => {
            let Some(path) = args.task.trim().strip_prefix("jsonl:") else {
                bail!(
                    "--split all is for a jsonl file that is a test set in itself (--task jsonl:PATH)"
                );
            };
            let file = JsonlTask::load(path.trim())?;
            let mut all = Vec::new();
            for split in [Split::Test, Split::Train] {
                let available = file.available(split);
                if available > 0 {
                    all.extend(file.problems(split, available, args.seed)?);
                }
            }
            all.truncate(args.problems.unwrap_or(usize::MAX));
            Ok(all)
        }
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    prepare_output_dir(&args.out)?;
    // One runtime for the engine's load and the whole run: an HTTP cloud client needs tokio.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
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
    let problems = problems(&args, task.as_ref())?;
    if problems.is_empty() {
        bail!("no problems to evaluate");
    }
    let n = problems.len();

    let (policy, method) = match args.route {
        RouteArg::Token => (
            Policy::Token {
                offload_bias: args.offload_bias,
            },
            format!("self-routing (<|offload|>, bias {})", args.offload_bias),
        ),
        RouteArg::Local => (Policy::Local, "local only".to_string()),
        RouteArg::Cloud => (Policy::Cloud, "cloud only".to_string()),
        RouteArg::Random => {
            let share = args.share.unwrap_or(args.budget);
            (
                Policy::Decided(random_decisions(n, share, args.seed)?),
                format!("random offload {:.0}%", 100.0 * share),
            )
        }
        RouteArg::Probe => {
            let path = args
                .router
                .as_ref()
                .context("--route probe needs --router PATH")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let probe = ProbeRouter::from_json(&path.display().to_string(), &text)?;
            probe.check_model(package.config.hidden_size, &sha256)?;
            let model = TrainableModel::from_weights(
                &package.config,
                package.weights.as_ref(),
                DType::F32,
                &Device::Cpu,
            )?;
            let prompts = problems
                .iter()
                .map(|p| prompt_ids(&template, &package.tokenizer, task.as_ref(), p))
                .collect::<selfroute_train::Result<Vec<_>>>()?;
            eprintln!("reading the answer-position state of {n} prompts for the probe ...");
            (
                Policy::Decided(probe_decisions(&model, &probe, &prompts)?),
                "probe router".to_string(),
            )
        }
    };
    let method = args.method.clone().unwrap_or(method);

    let cloud = if policy == Policy::Local {
        None
    } else if let Some(acc) = args.cloud.strip_prefix("simulated:") {
        let accuracy: f64 = acc
            .parse()
            .with_context(|| format!("--cloud {}: the accuracy must be a number", args.cloud))?;
        Some(EvalCloud::Simulated(Box::new(SimulatedCloudClient::new(
            accuracy,
            args.seed,
            parse_task(&args.task)?,
            &problems,
        )?)))
    } else {
        let mut config = selfroute_cloud::CloudConfig::new(&args.cloud);
        config.api_key = std::env::var(&args.cloud_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        Some(EvalCloud::Http(
            selfroute_cloud::HttpCloudClient::new(config)
                .with_context(|| format!("--cloud {}", args.cloud))?,
        ))
    };
    let cloud_name = cloud
        .as_ref()
        .map(EvalCloud::describe)
        .unwrap_or_else(|| "none".into());

    let (engine, selection) = runtime.block_on(load_engine(
        &package.config,
        package.weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))?;
    let config = EvalConfig {
        budget: if policy == Policy::Cloud {
            1.0
        } else {
            args.budget
        },
        generation: GenerationParams {
            max_new_tokens: args.max_new_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            ..GenerationParams::default()
        },
        cloud_model: args.cloud_model.clone(),
        cloud_max_tokens: Some(args.cloud_max_tokens),
    };
    eprintln!(
        "evaluating {model_name} on {n} {} problems ({method}; {cloud_name}; {}; at most {} cloud calls)",
        task.name(),
        selection.reason,
        max_calls(config.budget, n)
    );
    let progress = EvalProgress::new(n);
    let records = runtime.block_on(evaluate(
        engine,
        package.tokenizer,
        template,
        cloud,
        task.as_ref(),
        &problems,
        &policy,
        &config,
        |r| progress.problem(r),
    ))?;
    progress.finish();

    let summary = summarize(
        &records,
        &RunLabels {
            method: &method,
            model: &model_name,
            task: task.name(),
            cloud: &cloud_name,
            budget: config.budget,
            max_cloud_calls: max_calls(config.budget, n),
        },
    );
    let mut lines = std::fs::File::create(args.out.join("problems.jsonl"))
        .with_context(|| format!("writing {}", args.out.display()))?;
    for r in &records {
        writeln!(lines, "{}", serde_json::to_string(r)?)?;
    }
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let table = markdown(&summary);
    std::fs::write(args.out.join("summary.md"), &table)?;
    println!("{table}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The cap for `budget` over `n` problems, as the Assistant's budget computes it.
fn max_calls(budget: f64, n: usize) -> usize {
    ((budget * n as f64) + 1e-9).floor() as usize
}

/// A bar on a terminal; one line per problem when stderr is a file or pipe.
struct EvalProgress {
    bar: Option<indicatif::ProgressBar>,
    state: std::cell::Cell<(usize, usize, usize)>,
}

impl EvalProgress {
    fn new(n: usize) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(n as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} problems · {msg} · eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            state: std::cell::Cell::new((0, 0, 0)),
        }
    }

    fn problem(&self, r: &ProblemRecord) {
        let (done, correct, cloud) = self.state.get();
        let state = (
            done + 1,
            correct + usize::from(r.correct),
            cloud + usize::from(r.route != selfroute_train::eval::EvalRoute::Local),
        );
        self.state.set(state);
        let summary = format!(
            "accuracy {:.3} · cloud {:.3}",
            state.1 as f64 / state.0 as f64,
            state.2 as f64 / state.0 as f64
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(summary);
                bar.inc(1);
            }
            None => eprintln!(
                "problem {} · {:?} · {} · {:.0} ms · {summary}",
                state.0,
                r.route,
                if r.correct { "right" } else { "wrong" },
                r.latency_ms
            ),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

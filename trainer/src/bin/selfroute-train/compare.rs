//! `selfroute-train compare`: several `eval` folders of the same problems side by side, with
//! bootstrap intervals and paired differences, as compare.md and compare.json.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use selfroute_train::eval::compare::{Evaluation, compare, markdown, read_records};
use selfroute_train::stats::Bootstrap;

use crate::output::prepare_output_dir;

#[derive(Args)]
pub struct CompareArgs {
    /// NAME=DIR: an `eval --out` folder (its problems.jsonl) and the method's name in the tables.
    /// At least two, all of the same problems.
    #[arg(long = "eval", value_name = "NAME=DIR", required = true)]
    evals: Vec<String>,
    /// The NAME every other method is compared with (default: the first --eval).
    #[arg(long)]
    baseline: Option<String>,
    /// Bootstrap resamples of the problems.
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    /// Seeds the resampling (the same seed gives the same intervals).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for compare.md and compare.json.
    #[arg(long)]
    out: PathBuf,
}

/// `NAME=DIR`, split at the first `=` (a folder may contain one, a name may not).
fn parse_eval(spec: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.trim().is_empty() && !dir.is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(dir)))
        }
        _ => bail!("--eval {spec}: expected NAME=DIR, e.g. --eval gapg=runs/eval/gapg"),
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    if args.evals.len() < 2 {
        bail!("compare needs at least two --eval NAME=DIR");
    }
    let mut evals: Vec<Evaluation> = Vec::with_capacity(args.evals.len());
    for spec in &args.evals {
        let (name, dir) = parse_eval(spec)?;
        if evals.iter().any(|e| e.name == name) {
            bail!("--eval {spec}: the name `{name}` is given twice");
        }
        let records = read_records(&dir.join("problems.jsonl"))
            .with_context(|| format!("--eval {spec}: reading the evaluation"))?;
        evals.push(Evaluation {
            name,
            dir: dir.display().to_string(),
            records,
        });
    }
    let baseline = match &args.baseline {
        None => 0,
        Some(name) => evals
            .iter()
            .position(|e| &e.name == name)
            .with_context(|| format!("--baseline {name} is none of the --eval names"))?,
    };
    if args.resamples == 0 {
        bail!("--resamples must be at least 1");
    }
    prepare_output_dir(&args.out)?;
    let bootstrap = Bootstrap {
        resamples: args.resamples,
        seed: args.seed,
        ..Bootstrap::default()
    };
    let comparison = compare(&evals, baseline, &bootstrap)?;
    std::fs::write(
        args.out.join("compare.json"),
        serde_json::to_string_pretty(&comparison)? + "\n",
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    let table = markdown(&comparison);
    std::fs::write(args.out.join("compare.md"), &table)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{table}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

//! `selfroute-train`: teaches a small model when to offload (arXiv:2509.24050).

mod compare;
mod curve;
mod device;
mod eval;
mod export;
mod model_file;
mod output;
mod plot;
mod prepare;
mod progress;
mod router;
mod train;

use clap::{Parser, Subcommand};
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
    Prepare(prepare::PrepareArgs),
    /// Post-train with the hierarchical reward, group policy gradient and adaptive filtering.
    Train(train::TrainArgs),
    /// Write a trained checkpoint as a GGUF file the inference engine and the browser load.
    Export(export::ExportArgs),
    /// Evaluate a GGUF on held-out problems under a cloud budget (greedy or sampled, through the
    /// engine).
    Eval(eval::EvalArgs),
    /// Compare `eval` runs of the same problems: bootstrap intervals and paired differences.
    Compare(compare::CompareArgs),
    /// Fit a prompt router: a probe on the model's answer-position state predicting wrong answers.
    Router(router::RouterArgs),
    /// Draw training curves (metrics.jsonl) and the cost-quality curve (curve.json) as SVG and
    /// PNG. Needs a build with `--features plot`.
    Plot(plot::PlotArgs),
    /// Merge `eval --sweep` curves of several methods over shared references; APGR and CPT.
    Curve(curve::CurveArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare(args) => prepare::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Router(args) => router::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Curve(args) => curve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

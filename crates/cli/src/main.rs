//! `selfroute`: run the on-device model from a terminal.

mod chat;
mod generate;
mod load;
mod options;
mod routing;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "selfroute",
    version,
    about = "A small language model that knows when to ask the cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt (raw text, or one chat turn with --chat) and print the result.
    Generate(generate::GenerateArgs),
    /// Talk to the model interactively; answers stream as they are generated.
    Chat(chat::ChatArgs),
    /// Serve an OpenAI-compatible Chat Completions API: a local model (--model) or a key-holding
    /// proxy to another endpoint (--upstream).
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

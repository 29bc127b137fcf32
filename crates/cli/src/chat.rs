//! `selfroute chat`: an interactive conversation with streaming answers.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use selfroute_core::{Control, Generator, Message};

use crate::load;
use crate::options::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// System message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: ChatArgs) -> Result<()> {
    load::configure_threads(args.model.threads)?;
    eprintln!(
        "loading {} ...",
        args.model
            .model
            .clone()
            .unwrap_or_else(load::default_model_path)
            .display()
    );
    let loaded = load::load(&args.model)?;
    let template = loaded
        .package
        .chat_template
        .as_ref()
        .with_context(|| format!("{} has no chat template", loaded.path.display()))?;
    let tokenizer = loaded.package.tokenizer.clone();
    let params = args.sampling.params();
    let mut generator = Generator::new(loaded.model);
    let mut history: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::system(s.clone()))
        .collect();
    eprintln!(
        "ready in {:.1} s. Type a message; /reset starts over, /exit or Ctrl-D quits.",
        loaded.load_ms / 1e3
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "\n> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == selfroute_core::Role::System);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let prompt = template.encode(&history, true, &tokenizer)?;
        let started = Instant::now();
        let mut first = None;
        let result =
            pollster::block_on(generator.generate(&tokenizer, &prompt, &params, |event| {
                first.get_or_insert_with(Instant::now);
                let _ = write!(stdout, "{}", event.text);
                let _ = stdout.flush();
                Control::Continue
            }));
        let generation = match result {
            Ok(g) => g,
            Err(e) => {
                // The conversation stays as it was before this message; the user can go on.
                history.pop();
                eprintln!("\nerror: {e}");
                continue;
            }
        };
        let total = started.elapsed();
        let ttft = first.map_or(total, |t| t - started);
        let decode = (total - ttft).as_secs_f64();
        let rate = if decode > 0.0 {
            generation.tokens.len().saturating_sub(1) as f64 / decode
        } else {
            0.0
        };
        writeln!(stdout)?;
        eprintln!(
            "[on device · {} tokens · first token {:.0} ms · {:.1} tok/s · {} prompt tokens reused]",
            generation.tokens.len(),
            ttft.as_secs_f64() * 1e3,
            rate,
            generation.reused_prompt_tokens
        );
        history.push(Message::assistant(generation.text));
    }
    Ok(())
}

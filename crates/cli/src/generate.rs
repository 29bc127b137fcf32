//! `selfroute generate`: one completion, printed as it streams or as JSON.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use selfroute_core::{Control, Generator, Message};
use serde::Serialize;

use crate::load;
use crate::options::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    model: String,
    engine: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    text: &'a str,
    token_ids: &'a [u32],
    finish_reason: selfroute_core::FinishReason,
    timings: Timings,
}

#[derive(Serialize)]
pub struct Timings {
    pub load_ms: f64,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
    pub decode_tokens_per_s: f64,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    load::configure_threads(args.model.threads)?;
    let loaded = load::load(&args.model)?;
    let tokenizer = loaded.tokenizer.clone();
    let prompt = if args.chat {
        let Some(template) = &loaded.chat_template else {
            bail!(
                "{} has no chat template; drop --chat",
                loaded.path.display()
            );
        };
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::system(system.clone()));
        }
        messages.push(Message::user(args.prompt.clone()));
        template.encode(&messages, true, &tokenizer)?
    } else {
        tokenizer.encode_literal(&args.prompt)?
    };
    let params = args.sampling.params();
    let engine = loaded.model.describe();
    let mut generator = Generator::new(loaded.model);
    let started = Instant::now();
    let mut first_token_at = None;
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let generation =
        pollster::block_on(generator.generate(&tokenizer, &prompt, &params, |event| {
            first_token_at.get_or_insert_with(Instant::now);
            if !json {
                // A closed stdout (e.g. piped into `head`) ends generation instead of failing it.
                if stdout
                    .write_all(event.text.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Control::Stop;
                }
            }
            Control::Continue
        }))?;
    let total = started.elapsed();
    let ttft = first_token_at.map_or(total, |t| t - started);
    let decode_secs = (total - ttft).as_secs_f64();
    let timings = Timings {
        load_ms: loaded.load_ms,
        time_to_first_token_ms: ttft.as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        decode_tokens_per_s: if decode_secs > 0.0 {
            (generation.tokens.len().saturating_sub(1)) as f64 / decode_secs
        } else {
            0.0
        },
    };
    if json {
        let out = JsonOutput {
            model: loaded.path.display().to_string(),
            engine,
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.tokens.len(),
            text: &generation.text,
            token_ids: &generation.tokens,
            finish_reason: generation.finish_reason,
            timings,
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "[{} prompt + {} new tokens, first token {:.0} ms, {:.1} tok/s, {:?}, {engine}]",
            generation.prompt_tokens,
            generation.tokens.len(),
            timings.time_to_first_token_ms,
            timings.decode_tokens_per_s,
            generation.finish_reason
        );
    }
    Ok(())
}

//! `selfroute chat`: an interactive conversation. Each answer streams from the device or, when the
//! model hands the question over, from the cloud, and ends with where it came from and its figures.

use std::io::{BufRead, Write};

use anyhow::Result;
use clap::Args;
use selfroute_core::{ChatOutcome, Control, LocalReason, Message, Role, Route, RouteEvent};

use crate::load;
use crate::options::{ModelArgs, SamplingArgs};
use crate::routing::{self, RoutingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// System message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object per answer (text, route and figures) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub routing: RoutingArgs,
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
    let load_ms = loaded.load_ms;
    let engine = format!("{} ({})", loaded.model.describe(), loaded.selection.reason);
    let mut assistant = routing::build(loaded, &args.routing, args.sampling.params())?;
    // The session's futures are not Send (the browser runs the same code), so one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut history: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::system(s.clone()))
        .collect();
    eprintln!(
        "ready in {:.1} s on {engine}; {}. Type a message; /reset starts over, /exit or Ctrl-D quits.",
        load_ms / 1e3,
        routing::describe(&assistant)
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        if !args.json {
            write!(stdout, "\n> ")?;
            stdout.flush()?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == Role::System);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let json = args.json;
        let result = runtime.block_on(assistant.chat(&history, |event| {
            if !json {
                show(&mut stdout, event);
            }
            Control::Continue
        }));
        match result {
            Ok(outcome) => {
                if json {
                    writeln!(stdout, "{}", serde_json::to_string(&outcome)?)?;
                    stdout.flush()?;
                }
                history.push(Message::assistant(outcome.answer));
            }
            Err(e) => {
                // The conversation stays as it was before this message; the user can go on.
                history.pop();
                eprintln!("\nerror: {e}");
            }
        }
    }
    Ok(())
}

fn show(stdout: &mut std::io::Stdout, event: RouteEvent<'_>) {
    match event {
        RouteEvent::LocalText(text) | RouteEvent::CloudText(text) => {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
        RouteEvent::OffloadStarted { .. } => {
            eprintln!("\n[the model hands this to the cloud ...]");
        }
        RouteEvent::CloudFailed { error } => {
            eprintln!("\n[cloud unavailable: {error}; answering on device]");
        }
        RouteEvent::OffloadDeclined { .. } => {
            eprintln!("\n[offload declined; answering on device]");
        }
        RouteEvent::Done(outcome) => {
            let _ = writeln!(stdout);
            eprintln!("{}", summary(outcome));
        }
    }
}

/// The line under each answer: where it came from, and its figures.
fn summary(o: &ChatOutcome) -> String {
    let source = match (o.route, o.local_reason) {
        (Route::Cloud, _) => "cloud",
        (Route::Fallback, _) => "on device (cloud unavailable)",
        (Route::Local, Some(LocalReason::BudgetExhausted)) => "on device (cloud budget reached)",
        (Route::Local, Some(LocalReason::OffloadDeclined)) => "on device (offload declined)",
        (Route::Local, _) => "on device",
    };
    let mut parts = vec![source.to_string()];
    parts.push(format!("{} local tokens", o.local_tokens));
    if o.route == Route::Cloud {
        parts.push(format!("{} cloud tokens", o.cloud_tokens));
    }
    if let Some(ttft) = o.time_to_first_token_ms {
        parts.push(format!("first token {ttft:.0} ms"));
    }
    parts.push(format!("{:.2} s", o.latency_ms / 1e3));
    if o.cloud_attempts > 0 {
        parts.push(format!(
            "{} B sent in {} attempt{}",
            o.cloud_bytes_sent,
            o.cloud_attempts,
            if o.cloud_attempts == 1 { "" } else { "s" }
        ));
    }
    if o.cancelled {
        parts.push("stopped".into());
    }
    parts.push(format!("{} prompt tokens reused", o.reused_prompt_tokens));
    format!("[{}]", parts.join(" · "))
}

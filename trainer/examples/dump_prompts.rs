//! The prompts `selfroute-train train` rolls out, step by step, as JSON: for other trainers fed
//! exactly what ours is fed (`cargo xtask bench train` gives them to TRL's GRPOTrainer).
//!
//! ```sh
//! cargo run --release -p selfroute-train --example dump_prompts -- \
//!     --model M.gguf --task arith:1-4 --seed 0 --steps 4 --prompts-per-step 4 --max-new-tokens 48
//! ```
//!
//! One JSON object on stdout: `{task, seed, steps, prompts_per_step, prompts: [{step, question,
//! prompt, prompt_ids, answer}]}`. `question` is the user message, `prompt` the chat template's
//! text for it (generation prompt added) and `prompt_ids` the ids train feeds the model, so a
//! consumer can check that its own tokenization of `prompt` gives the same ids. Within a step the
//! prompts are in train's rollout order (longest first).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use selfroute_core::{Message, ModelPackage};
use selfroute_train::rollout::fits_context;
use selfroute_train::tasks::{Split, parse_task};
use selfroute_train::train::{prompt_ids, prompt_text};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The GGUF train would be given (its chat template and tokenizer format the prompts).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "arith")]
    task: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    prompts_per_step: usize,
    /// Prompts with no room for this many new tokens are left out, as train leaves them out.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let package = ModelPackage::from_gguf(args.model.display().to_string(), bytes)?;
    let template = package
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let task = parse_task(&args.task)?;
    // The draw train makes (bin/selfroute-train/train.rs): steps x prompts problems of the train
    // split from the seed, taken in order, prompts_per_step at a time, cycling if the task runs
    // short; each step's prompts that fit the context, longest first (a stable sort, as train's).
    let needed = args.steps * args.prompts_per_step;
    let problems = task.problems(Split::Train, needed.clamp(1, 100_000), args.seed)?;
    if problems.is_empty() {
        anyhow::bail!("the task {} gave no problems", task.name());
    }
    let context = package.config.context_length;
    let mut prompts = Vec::with_capacity(needed);
    let mut cursor = 0usize;
    for step in 0..args.steps {
        let mut batch = Vec::with_capacity(args.prompts_per_step);
        for _ in 0..args.prompts_per_step {
            let problem = &problems[cursor % problems.len()];
            cursor += 1;
            let ids = prompt_ids(template, &package.tokenizer, task.as_ref(), problem)?;
            if fits_context(ids.len(), args.max_new_tokens, context) {
                batch.push((problem, ids));
            }
        }
        batch.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));
        for (problem, ids) in batch {
            let question = prompt_text(task.as_ref(), problem);
            let prompt =
                template.render(&[Message::user(question.clone())], true, &package.tokenizer)?;
            prompts.push(json!({
                "step": step,
                "question": question,
                "prompt": prompt,
                "prompt_ids": ids,
                "answer": problem.answer,
            }));
        }
    }
    let out = json!({
        "task": task.name(),
        "seed": args.seed,
        "steps": args.steps,
        "prompts_per_step": args.prompts_per_step,
        "prompts": prompts,
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

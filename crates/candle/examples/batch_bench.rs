//! Decode speed of batched steps (B sequences, one forward pass per step) against the same B
//! sequences decoded one after another on the single-sequence path, in one run. One JSON line
//! per batch size. Driven by `cargo xtask bench batch`; threads come from RAYON_NUM_THREADS.
//!
//! Besides wall-clock rates it reports rates per CPU second of this process (Linux
//! /proc/self/stat): on a machine shared with other work, wall time measures the neighbours as
//! much as the code, CPU time much less so.
//!
//! usage: batch_bench MODEL.gguf PROMPT_TOKENS DECODE_STEPS BATCH_SIZES(comma-separated) REPEATS

use std::time::Instant;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::backend::{BatchStep, SeqId};
use selfroute_core::{LogitsFor, ModelPackage};

const PROMPT_TEXT: &str = "Continuous batching lets one server answer many clients at once: every \
sequence in flight advances by one token per forward pass, and the weights are read once for all. ";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, prompt_tokens, steps, sizes, repeats] = args.as_slice() else {
        return Err(
            "usage: batch_bench MODEL.gguf PROMPT_TOKENS DECODE_STEPS BATCH_SIZES REPEATS".into(),
        );
    };
    let (prompt_tokens, steps, repeats): (usize, usize, usize) =
        (prompt_tokens.parse()?, steps.parse()?, repeats.parse()?);
    let sizes = sizes
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<usize>, _>>()?;
    let package = ModelPackage::from_gguf(model_path.as_str(), std::fs::read(model_path)?)?;
    let mut model = CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu)?;
    let mut prompt = Vec::new();
    while prompt.len() < prompt_tokens {
        prompt.extend(package.tokenizer.encode_literal(PROMPT_TEXT)?);
    }
    prompt.truncate(prompt_tokens);

    for &b in &sizes {
        let (mut batched, mut sequential) = (Vec::new(), Vec::new());
        let (mut batched_cpu, mut sequential_cpu) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            // Each sequence starts from a different prompt length, as clients would.
            let seqs = start(&mut model, &prompt, b)?;
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let mut tokens = vec![prompt[0]; b];
            for _ in 0..steps {
                let batch: Vec<BatchStep> = seqs
                    .iter()
                    .zip(&tokens)
                    .map(|((seq, len), token)| BatchStep {
                        seq: *seq,
                        token: *token,
                        pos: model.sequence_len(*seq).unwrap_or(*len),
                    })
                    .collect();
                let logits = model.forward_batch(&batch)?.to_vec2::<f32>()?;
                tokens = logits.iter().map(|row| argmax(row)).collect();
            }
            batched.push((b * steps) as f64 / t.elapsed().as_secs_f64());
            batched_cpu.push((b * steps) as f64 / (cpu_seconds() - cpu));
            finish(&mut model, &seqs);

            let seqs = start(&mut model, &prompt, b)?;
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let mut tokens = vec![prompt[0]; b];
            for _ in 0..steps {
                for ((seq, _), token) in seqs.iter().zip(tokens.iter_mut()) {
                    let pos = model.sequence_len(*seq).unwrap_or(0);
                    let logits = model
                        .forward_sequence(*seq, &[*token], pos, LogitsFor::Last)?
                        .to_vec2::<f32>()?;
                    *token = logits.first().map_or(0, |row| argmax(row));
                }
            }
            sequential.push((b * steps) as f64 / t.elapsed().as_secs_f64());
            sequential_cpu.push((b * steps) as f64 / (cpu_seconds() - cpu));
            finish(&mut model, &seqs);
        }
        let (batched, sequential) = (median(batched), median(sequential));
        let (batched_cpu, sequential_cpu) = (median(batched_cpu), median(sequential_cpu));
        println!(
            "{{\"batch\":{b},\"batched_tok_s\":{batched:.2},\"sequential_tok_s\":{sequential:.2},\"ratio\":{:.3},\"batched_tok_per_cpu_s\":{batched_cpu:.2},\"sequential_tok_per_cpu_s\":{sequential_cpu:.2},\"cpu_ratio\":{:.3},\"kernel\":\"{}\"}}",
            batched / sequential,
            batched_cpu / sequential_cpu,
            selfroute_candle::kernels::selected_path()
        );
    }
    Ok(())
}

/// B sequences prefilled with prompts of slightly different lengths.
fn start(
    model: &mut CandleModel,
    prompt: &[u32],
    b: usize,
) -> Result<Vec<(SeqId, usize)>, Box<dyn std::error::Error>> {
    let mut seqs = Vec::new();
    for i in 0..b {
        let len = prompt.len().saturating_sub(i % 8).max(1);
        let seq = model.new_sequence();
        model.forward_sequence(seq, &prompt[..len], 0, LogitsFor::Last)?;
        seqs.push((seq, len));
    }
    Ok(seqs)
}

fn finish(model: &mut CandleModel, seqs: &[(SeqId, usize)]) {
    for (seq, _) in seqs {
        model.drop_sequence(*seq);
    }
}

/// User plus system CPU seconds of this process so far; NaN where /proc is missing (the rates
/// then read NaN rather than a wrong number).
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks; field 2 (the name) may hold spaces,
    // so count from the closing parenthesis. 100 ticks per second on Linux.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

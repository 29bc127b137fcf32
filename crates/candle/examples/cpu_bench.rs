//! Prefill and decode speed of the candle engine, one JSON line per run. Driven by
//! `cargo xtask bench cpu`, which runs llama.cpp on the same prompt ids beside it.
//! Threads come from RAYON_NUM_THREADS.
//!
//! usage: cpu_bench MODEL.gguf PROMPT_IDS_OUT PROMPT_TOKENS DECODE_TOKENS REPEATS

use std::time::Instant;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::{LogitsFor, ModelPackage};

const PROMPT_TEXT: &str = "Self-routing lets a small language model running in the browser decide, while it answers, \
whether it can solve a query itself or should hand the conversation to a larger model in the cloud. \
The decision is learned with reinforcement learning: a hierarchical reward prefers correct local answers, \
then correct cloud answers, and gives nothing for wrong ones. ";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, ids_out, prompt_tokens, decode_tokens, repeats] = args.as_slice() else {
        return Err(
            "usage: cpu_bench MODEL.gguf PROMPT_IDS_OUT PROMPT_TOKENS DECODE_TOKENS REPEATS".into(),
        );
    };
    let (prompt_tokens, decode_tokens, repeats): (usize, usize, usize) = (
        prompt_tokens.parse()?,
        decode_tokens.parse()?,
        repeats.parse()?,
    );
    let package = ModelPackage::from_gguf(model_path.as_str(), std::fs::read(model_path)?)?;
    let mut model = CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu)?;
    let mut prompt = Vec::new();
    while prompt.len() < prompt_tokens {
        prompt.extend(package.tokenizer.encode_literal(PROMPT_TEXT)?);
    }
    prompt.truncate(prompt_tokens);
    std::fs::write(ids_out, serde_json::to_string(&prompt)?)?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..repeats {
        model.clear_cache();
        let t = Instant::now();
        let logits = model.forward_tokens(&prompt, 0, LogitsFor::Last)?;
        prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        let t = Instant::now();
        for i in 0..decode_tokens {
            let logits = model.forward_tokens(&[next], prompt.len() + i, LogitsFor::Last)?;
            next = selfroute_core::sampler::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        }
        decode.push(decode_tokens as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({ "prefill_tok_s": median(&mut prefill), "decode_tok_s": median(&mut decode) })
    );
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

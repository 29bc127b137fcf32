//! The optimiser step on SmolLM2-135M's parameter shapes (134.5M f32 values in 30 layers plus
//! the tied 49152 x 576 embedding): the fused in-place AdamW against the same update on
//! candle tensor ops, both on this machine in one run, median of 5 steps each.
//!
//! `cargo run --release -p selfroute-train --example adamw_bench`

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use selfroute_train::optim::{AdamW, AdamWConfig};

/// SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, 9 heads of 64 with 3 KV heads.
fn shapes() -> Vec<(String, Vec<usize>)> {
    let mut s = vec![("embed".to_string(), vec![49152, 576])];
    for l in 0..30 {
        for (name, shape) in [
            ("q", vec![576, 576]),
            ("k", vec![192, 576]),
            ("v", vec![192, 576]),
            ("o", vec![576, 576]),
            ("gate", vec![1536, 576]),
            ("up", vec![1536, 576]),
            ("down", vec![576, 1536]),
            ("attn_norm", vec![576]),
            ("ffn_norm", vec![576]),
        ] {
            s.push((format!("layer{l}.{name}"), shape));
        }
    }
    s.push(("norm".to_string(), vec![576]));
    s
}

fn median_step_s(fused: bool) -> candle_core::Result<(f64, usize)> {
    let device = Device::Cpu;
    let mut vars = Vec::new();
    // Random gradients stand in for a backward pass (the optimiser's cost does not depend on
    // the values), so only the weights, gradients and moments are in memory.
    let mut grads = GradStore::default();
    let mut count = 0;
    for (name, shape) in shapes() {
        let var = Var::from_tensor(&Tensor::randn(0f32, 0.02, shape.as_slice(), &device)?)?;
        count += var.elem_count();
        grads.insert(
            var.as_tensor(),
            Tensor::randn(0f32, 1e-3, shape.as_slice(), &device)?,
        );
        vars.push((name, var));
    }
    let config = AdamWConfig::default();
    let mut opt = if fused {
        AdamW::new(vars, config)
    } else {
        AdamW::unfused(vars, config)
    }
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        opt.step(&grads, 1e-6)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], count))
}

fn main() -> candle_core::Result<()> {
    let (unfused, count) = median_step_s(false)?;
    let (fused, _) = median_step_s(true)?;
    println!("AdamW step over {count} f32 parameters (median of 5)");
    println!("| optimiser | s/step |");
    println!("|---|---:|");
    println!("| tensor ops (before) | {unfused:.3} |");
    println!("| fused, in place (now) | {fused:.3} |");
    println!("speed-up: {:.1}x", unfused / fused);
    Ok(())
}

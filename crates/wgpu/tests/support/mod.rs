//! The GPU context for kernel tests: with SELFROUTE_REQUIRE_GPU=1 (set by `cargo xtask test`) a
//! missing adapter fails the test; elsewhere the test is skipped with the reason.
#![allow(dead_code)]

use selfroute_wgpu::GpuContext;

pub fn context() -> Option<GpuContext> {
    match pollster::block_on(GpuContext::new()) {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.adapter_name);
            Some(ctx)
        }
        Err(e) if std::env::var_os("SELFROUTE_REQUIRE_GPU").is_some() => {
            panic!("SELFROUTE_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// Uniform values in [-scale, scale), reproducible from `seed`.
pub fn random(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = selfroute_core::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

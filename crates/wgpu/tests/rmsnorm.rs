//! RMSNorm on the GPU against an f64 CPU reference, on widths that are and are not multiples of
//! the workgroup size (SmolLM2's 576 among them).

mod support;

use selfroute_wgpu::GpuError;
use selfroute_wgpu::rmsnorm::RmsNorm;
use support::{context, random};

#[test]
fn rmsnorm_matches_an_f64_reference() {
    let Some(ctx) = context() else { return };
    let norm = RmsNorm::new(&ctx);
    for (rows, cols) in [(1, 1), (3, 576), (5, 70), (2, 1536), (17, 64)] {
        let x = random(rows * cols, cols as u64, 2.0);
        let w = random(cols, 99, 2.0);
        let eps = 1e-5f32;
        let got = pollster::block_on(norm.run(&ctx, &x, &w, eps)).unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
            let scale = 1.0 / (ms + f64::from(eps)).sqrt();
            for c in 0..cols {
                let want = f64::from(row[c]) * scale * f64::from(w[c]);
                let g = f64::from(got[r * cols + c]);
                assert!(
                    (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{rows}x{cols} [{r},{c}]: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn ragged_input_is_a_clear_error() {
    let Some(ctx) = context() else { return };
    let norm = RmsNorm::new(&ctx);
    assert!(matches!(
        pollster::block_on(norm.run(&ctx, &[1.0; 7], &[1.0; 3], 1e-5)),
        Err(GpuError::Invalid(_))
    ));
}

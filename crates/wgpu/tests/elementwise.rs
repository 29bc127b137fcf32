//! RMSNorm and SwiGLU against f64 references, on widths that are not multiples of the 64-wide
//! workgroup, with rows past the step's tokens left untouched.
//!
//! Tolerance: 1e-5 * (1 + |y|). Both kernels do a few f32 operations per value (plus, for the
//! norm, a sum of squares over one row), so their error is a few ulps (~1e-7 relative); a missed
//! column in the sum, a wrong mean or a swapped gate/up is off by 1e-3 or much more.

mod support;

use selfroute_wgpu::GpuContext;
use selfroute_wgpu::kernel::Step;
use selfroute_wgpu::rmsnorm::RmsNormKernel;
use selfroute_wgpu::swiglu::SwiGluKernel;
use support::{assert_close, context, input_buffer, output_buffer, random, run_pass};

const TOL: f64 = 1e-5;

fn norm_reference(row: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / row.len() as f64;
    let scale = 1.0 / (ms + f64::from(eps)).sqrt();
    row.iter()
        .zip(w)
        .map(|(x, w)| f64::from(*x) * scale * f64::from(*w))
        .collect()
}

#[allow(clippy::too_many_arguments)]
/// Runs the norm over `x` (rows of `cols`) dispatched for `dispatched` rows; `y` starts as NaN.
fn rmsnorm(
    ctx: &GpuContext,
    kernel: &RmsNormKernel,
    step: Step,
    x: &[f32],
    w: &[f32],
    cols: usize,
    out_rows_only: bool,
    dispatched: usize,
) -> Vec<f32> {
    let step = ctx.uniform("step", &step);
    let xb = input_buffer(ctx, "x", x);
    let wb = input_buffer(ctx, "w", w);
    let y = output_buffer(ctx, "y", &vec![f32::NAN; x.len()]);
    let eps = 1e-5;
    let bound = kernel.bind(ctx, &step, &xb, &wb, &y, cols, eps, out_rows_only);
    run_pass(ctx, |pass| kernel.encode(pass, &bound, dispatched), &[&y]).remove(0)
}

#[test]
fn rmsnorm_matches_an_f64_reference_on_awkward_widths() {
    let Some(ctx) = context() else { return };
    let kernel = RmsNormKernel::new(&ctx);
    let mut worst = 0.0f64;
    for (rows, cols) in [(2, 1), (3, 63), (5, 65), (4, 576), (3, 1000)] {
        let mut x = random(rows * cols, cols as u64, 3.0);
        // A row of zeros normalizes to zeros (eps keeps it finite).
        if rows > 2 {
            x[cols..2 * cols].fill(0.0);
        }
        let w = random(cols, 99, 2.0);
        let n = rows - 1;
        let step = Step {
            n: n as u32,
            out_rows: n as u32,
            ..Step::default()
        };
        // Dispatched for every row but the step has one fewer: the last must stay NaN.
        let got = rmsnorm(&ctx, &kernel, step, &x, &w, cols, false, rows);
        let want: Vec<f64> = x[..n * cols]
            .chunks(cols)
            .flat_map(|row| norm_reference(row, &w, 1e-5))
            .collect();
        let case = format!("rmsnorm {rows}x{cols}");
        worst = worst.max(assert_close(&got[..n * cols], &want, TOL, &case));
        assert!(
            got[n * cols..].iter().all(|v| v.is_nan()),
            "{case}: row n written"
        );
    }
    eprintln!("rmsnorm: worst |err| / (1 + |y|) = {worst:.2e}");
}

#[test]
fn final_rmsnorm_reads_the_wanted_rows_from_out_row0() {
    // The final norm: rows out_row0..out_row0 + out_rows of x, written to the same rows of y.
    let Some(ctx) = context() else { return };
    let kernel = RmsNormKernel::new(&ctx);
    let (n, cols) = (9, 65);
    let x = random(n * cols, 5, 3.0);
    let w = random(cols, 6, 2.0);
    for (out_row0, out_rows) in [(8, 1), (6, 3), (0, 9)] {
        let step = Step {
            n: n as u32,
            start: 11,
            out_row0,
            out_rows,
        };
        // Dispatched for all n rows; only out_rows may be written.
        let got = rmsnorm(&ctx, &kernel, step, &x, &w, cols, true, n);
        let (r0, k) = (out_row0 as usize, out_rows as usize);
        let want: Vec<f64> = x[r0 * cols..(r0 + k) * cols]
            .chunks(cols)
            .flat_map(|row| norm_reference(row, &w, 1e-5))
            .collect();
        let case = format!("final norm of rows {r0}..{}", r0 + k);
        let worst = assert_close(&got[r0 * cols..(r0 + k) * cols], &want, TOL, &case);
        assert!(
            got[..r0 * cols]
                .iter()
                .chain(&got[(r0 + k) * cols..])
                .all(|v| v.is_nan()),
            "{case}: other rows written"
        );
        eprintln!("{case}: worst {worst:.2e}");
    }
}

fn silu_times(g: f32, u: f32) -> f64 {
    let g = f64::from(g);
    g / (1.0 + (-g).exp()) * f64::from(u)
}

#[test]
fn swiglu_matches_an_f64_reference_and_survives_extreme_gates() {
    let Some(ctx) = context() else { return };
    let kernel = SwiGluKernel::new(&ctx);
    let mut worst = 0.0f64;
    for (tokens, inter) in [(1, 1), (3, 63), (2, 65), (4, 1536)] {
        let mut gate_up = random(tokens * 2 * inter, inter as u64, 8.0);
        // Gates whose exp(-g) overflows f32 (silu -> -0) or underflows (silu -> g).
        let extremes = [-1e4f32, -1000.0, -104.0, -88.0, 88.0, 1000.0];
        for (i, g) in extremes.iter().enumerate() {
            let t = i % tokens;
            let c = (i * 7) % inter;
            gate_up[t * 2 * inter + c] = *g;
        }
        // One more token than the step has: its row must stay untouched.
        gate_up.extend(random(2 * inter, 1, 1.0));
        let step = ctx.uniform(
            "step",
            &Step {
                n: tokens as u32,
                ..Step::default()
            },
        );
        let gu = input_buffer(&ctx, "gate_up", &gate_up);
        let act = output_buffer(&ctx, "act", &vec![f32::NAN; (tokens + 1) * inter]);
        let bound = kernel.bind(&ctx, &step, &gu, &act, inter);
        let got = run_pass(
            &ctx,
            |pass| kernel.encode(pass, &bound, tokens + 1),
            &[&act],
        )
        .remove(0);
        let mut want = Vec::with_capacity(tokens * inter);
        for t in 0..tokens {
            let row = &gate_up[t * 2 * inter..(t + 1) * 2 * inter];
            want.extend((0..inter).map(|i| silu_times(row[i], row[inter + i])));
        }
        let case = format!("swiglu {tokens}x{inter}");
        worst = worst.max(assert_close(&got[..tokens * inter], &want, TOL, &case));
        assert!(
            got[tokens * inter..].iter().all(|v| v.is_nan()),
            "{case}: token n written"
        );
    }
    eprintln!("swiglu: worst |err| / (1 + |y|) = {worst:.2e}");
}

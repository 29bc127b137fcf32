//! The linear kernels (`y = x W^T`: matvec for one token, the tiled matmul for more) against an
//! f64 CPU reference, in every weight format, on shapes that are not multiples of the workgroup
//! tiles (4 rows per matvec group, 64 x 64 per matmul group, 16 columns per staged slice). Q8_0
//! and Q4_1 data comes from candle's quantizer and the reference weights from candle's
//! dequantizer, so the repacking and the WGSL decoding are checked against an independent codec.
//!
//! `LinearKernels` tunes its matvec to the adapter's kind (one invocation per row on a CPU
//! adapter such as lavapipe, sixteen sharing a row elsewhere); every test runs both tunings, by
//! building the kernels once as for each kind, whatever adapter runs the tests.
//!
//! Tolerance: 1e-4 * (1 + |y|). The kernels sum at most a few hundred f32 products of values in
//! [-1, 1] (rounding error around 1e-5 at worst), while a misread column, block or nibble, or a
//! missed partial tile, changes y by the size of a product (~0.1 or more).

mod support;

use selfroute_core::{TensorDType, TensorData};
use selfroute_wgpu::kernel::Step;
use selfroute_wgpu::linear::{LinearKernels, Output};
use selfroute_wgpu::quant::{GpuMatrix, WeightFormat};
use selfroute_wgpu::{GpuContext, GpuError};
use support::{assert_close, context, input_buffer, output_buffer, random, run_pass, weight};
use wgpu::DeviceType;

const TOL: f64 = 1e-4;

/// The kernels as built for a CPU adapter and for a GPU one.
fn tunings(ctx: &mut GpuContext) -> Vec<(&'static str, LinearKernels)> {
    let real = ctx.device_type;
    let tunings = [
        ("cpu-tuned", DeviceType::Cpu),
        ("gpu-tuned", DeviceType::DiscreteGpu),
    ]
    .into_iter()
    .map(|(name, kind)| {
        ctx.device_type = kind;
        (name, LinearKernels::new(ctx))
    })
    .collect();
    ctx.device_type = real;
    tunings
}

/// `x W^T` in f64: [tokens][rows].
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(tokens * rows);
    for t in 0..tokens {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y.push(
                wr.iter()
                    .zip(xt)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum(),
            );
        }
    }
    y
}

fn upload(ctx: &GpuContext, td: &TensorData<'_>) -> GpuMatrix {
    match GpuMatrix::upload(ctx, td) {
        Ok(m) => m,
        Err(e) => panic!("{}: {e}", td.name),
    }
}

#[allow(clippy::too_many_arguments)]
/// Runs `w` on `x` with the step and output given, `y` starting as `y0`, dispatched for `tokens`.
fn product(
    ctx: &GpuContext,
    kernels: &LinearKernels,
    w: &GpuMatrix,
    x: &[f32],
    y0: &[f32],
    step: Step,
    output: Output,
    tokens: usize,
) -> Vec<f32> {
    let step = ctx.uniform("step", &step);
    let x = input_buffer(ctx, "x", x);
    let y = output_buffer(ctx, "y", y0);
    let bound = kernels.bind(ctx, &step, w, &x, &y, output).unwrap();
    run_pass(ctx, |pass| kernels.encode(pass, &bound, tokens), &[&y]).remove(0)
}

fn plain_step(tokens: usize) -> Step {
    Step {
        n: tokens as u32,
        start: 0,
        out_row0: 0,
        out_rows: tokens as u32,
    }
}

/// Formats with the column counts each is tested on: multiples of 4 (F32/F16, whose rows load
/// four values at a time) and of 32 (the block formats), none of them a multiple of 64, and the
/// F32/F16 ones not of 16 either (a partial staged slice in the matmul).
fn formats() -> [(TensorDType, WeightFormat, [usize; 3]); 5] {
    [
        (TensorDType::F32, WeightFormat::F32, [4, 36, 100]),
        (TensorDType::F16, WeightFormat::F16, [4, 36, 100]),
        (TensorDType::BF16, WeightFormat::F32, [4, 36, 100]),
        (TensorDType::Q8_0, WeightFormat::Q8_0, [32, 96, 160]),
        (TensorDType::Q4_1, WeightFormat::Q4_1, [32, 96, 160]),
    ]
}

/// Rows that leave a partial matvec group (4 or 64 rows) and a partial matmul tile (64).
const ROWS: [usize; 4] = [1, 3, 67, 130];

fn check_every_format(token_counts: &[usize], what: &str) {
    let Some(mut ctx) = context() else { return };
    for (tuning, kernels) in tunings(&mut ctx) {
        for (dtype, format, col_set) in formats() {
            let mut worst = 0.0f64;
            for rows in ROWS {
                for cols in col_set {
                    let (td, w) = weight(dtype, rows, cols, (rows * 1000 + cols) as u64);
                    let m = upload(&ctx, &td);
                    assert_eq!(m.format, format, "{}", td.name);
                    for &tokens in token_counts {
                        let x = random(tokens * cols, 7 + tokens as u64, 1.0);
                        let got = product(
                            &ctx,
                            &kernels,
                            &m,
                            &x,
                            &vec![f32::NAN; tokens * rows],
                            plain_step(tokens),
                            Output::plain(rows),
                            tokens,
                        );
                        let want = reference(&w, &x, rows, cols, tokens);
                        let case = format!("{tuning} {what} {}, {tokens} tokens", td.name);
                        worst = worst.max(assert_close(&got, &want, TOL, &case));
                    }
                }
            }
            eprintln!("{tuning} {what} {dtype}: worst |err| / (1 + |y|) = {worst:.2e}");
        }
    }
}

#[test]
fn matvec_matches_the_reference_in_every_format() {
    check_every_format(&[1], "matvec");
}

#[test]
fn matmul_matches_the_reference_in_every_format() {
    // 2, 3 and 17 tokens: one partial tile of tokens; 64: exactly one; 70: one full, one partial.
    check_every_format(&[2, 3, 17, 64, 70], "matmul");
}

#[test]
fn more_row_groups_than_one_dispatch_dimension_holds() {
    // 65,536 * 64 + 3 rows: more matvec groups than the 65,535 of one dispatch dimension in both
    // tunings (64 or 4 rows a group). F16, to keep the matrix at 32 MiB.
    let Some(mut ctx) = context() else { return };
    let (rows, cols) = (65_536 * 64 + 3, 4);
    let (td, w) = weight(TensorDType::F16, rows, cols, 5);
    let x = random(cols, 9, 1.0);
    let want = reference(&w, &x, rows, cols, 1);
    for (tuning, kernels) in tunings(&mut ctx) {
        let m = upload(&ctx, &td);
        let got = product(
            &ctx,
            &kernels,
            &m,
            &x,
            &vec![f32::NAN; rows],
            plain_step(1),
            Output::plain(rows),
            1,
        );
        let case = format!("{tuning} matvec of {rows} rows");
        let worst = assert_close(&got, &want, TOL, &case);
        eprintln!("{case}: worst {worst:.2e}");
    }
}

#[test]
fn two_matrices_write_side_by_side_into_one_buffer() {
    // Q (67 rows of Q8_0) at column 1 and K (3 rows of Q4_1) at column 68 of rows 72 wide; columns
    // 0 and 71 are nobody's and must keep their sentinel.
    let Some(mut ctx) = context() else { return };
    let cols = 96;
    let (qd, qw) = weight(TensorDType::Q8_0, 67, cols, 21);
    let (kd, kw) = weight(TensorDType::Q4_1, 3, cols, 22);
    let (q, k) = (upload(&ctx, &qd), upload(&ctx, &kd));
    let stride = 72;
    let at = |offset| Output {
        stride,
        offset,
        ..Output::plain(stride)
    };
    let sentinel = 1234.5f32;
    for (tuning, kernels) in tunings(&mut ctx) {
        for tokens in [1, 5, 70] {
            let x = random(tokens * cols, 23, 1.0);
            let step = ctx.uniform("step", &plain_step(tokens));
            let xb = input_buffer(&ctx, "x", &x);
            let y = output_buffer(&ctx, "y", &vec![sentinel; tokens * stride]);
            let bq = kernels.bind(&ctx, &step, &q, &xb, &y, at(1)).unwrap();
            let bk = kernels.bind(&ctx, &step, &k, &xb, &y, at(68)).unwrap();
            let got = run_pass(
                &ctx,
                |pass| {
                    kernels.encode(pass, &bq, tokens);
                    kernels.encode(pass, &bk, tokens);
                },
                &[&y],
            )
            .remove(0);
            let (yq, yk) = (
                reference(&qw, &x, 67, cols, tokens),
                reference(&kw, &x, 3, cols, tokens),
            );
            let mut want = vec![f64::from(sentinel); tokens * stride];
            for t in 0..tokens {
                want[t * stride + 1..t * stride + 68].copy_from_slice(&yq[t * 67..(t + 1) * 67]);
                want[t * stride + 68..t * stride + 71].copy_from_slice(&yk[t * 3..(t + 1) * 3]);
            }
            let case = format!("{tuning} side by side, {tokens} tokens");
            let worst = assert_close(&got, &want, TOL, &case);
            eprintln!("{case}: worst {worst:.2e}");
        }
        // An output that does not fit its row is refused at bind.
        let step = ctx.uniform("step", &plain_step(1));
        let xb = input_buffer(&ctx, "x", &[0.0; 96]);
        let y = output_buffer(&ctx, "y", &[0.0; 72]);
        assert!(matches!(
            kernels.bind(&ctx, &step, &q, &xb, &y, at(6)),
            Err(GpuError::Invalid(_))
        ));
    }
}

#[test]
fn accumulate_adds_the_product_to_the_output() {
    let Some(mut ctx) = context() else { return };
    for (tuning, kernels) in tunings(&mut ctx) {
        for (dtype, rows, cols) in [
            (TensorDType::F32, 130, 36),
            (TensorDType::F16, 67, 100),
            (TensorDType::Q8_0, 67, 160),
            (TensorDType::Q4_1, 130, 96),
        ] {
            let (td, w) = weight(dtype, rows, cols, 31);
            let m = upload(&ctx, &td);
            for tokens in [1, 3, 70] {
                let x = random(tokens * cols, 32, 1.0);
                let y0 = random(tokens * rows, 33, 10.0);
                let output = Output {
                    accumulate: true,
                    ..Output::plain(rows)
                };
                let step = plain_step(tokens);
                let got = product(&ctx, &kernels, &m, &x, &y0, step, output, tokens);
                let want: Vec<f64> = reference(&w, &x, rows, cols, tokens)
                    .iter()
                    .zip(&y0)
                    .map(|(p, y)| p + f64::from(*y))
                    .collect();
                let case = format!("{tuning} accumulate {}, {tokens} tokens", td.name);
                let worst = assert_close(&got, &want, TOL, &case);
                eprintln!("{case}: worst {worst:.2e}");
            }
        }
    }
}

#[test]
fn out_rows_only_computes_just_the_wanted_tokens() {
    // The output head: the product reads x rows out_row0..out_row0 + out_rows (the wanted rows
    // of the step) and writes y rows 0..out_rows, whatever `n` and the dispatch size are.
    let Some(mut ctx) = context() else { return };
    let (rows, cols, n) = (130, 96, 70);
    let (td, w) = weight(TensorDType::Q8_0, rows, cols, 41);
    let m = upload(&ctx, &td);
    let x = random(n * cols, 42, 1.0);
    let sentinel = -777.0f32;
    let output = Output {
        out_rows_only: true,
        ..Output::plain(rows)
    };
    for (tuning, kernels) in tunings(&mut ctx) {
        // (out_rows, tokens dispatched): all of them, the last one (matvec), and a matmul
        // dispatched for every token of the step.
        for (out_rows, dispatched) in [(n, n), (1, 1), (5, n)] {
            let step = Step {
                n: n as u32,
                start: 3,
                out_row0: (n - out_rows) as u32,
                out_rows: out_rows as u32,
            };
            let y0 = vec![sentinel; n * rows];
            let got = product(&ctx, &kernels, &m, &x, &y0, step, output, dispatched);
            let mut want = reference(&w, &x[(n - out_rows) * cols..], rows, cols, out_rows);
            want.resize(n * rows, f64::from(sentinel));
            let case = format!("{tuning} out_rows {out_rows} of {n}, dispatched for {dispatched}");
            let worst = assert_close(&got, &want, TOL, &case);
            eprintln!("{case}: worst {worst:.2e}");
        }
    }
}

/// x prepared as the fused prologues must prepare it: rmsnorm(x) * g, or silu(gate) * up from rows
/// twice as wide.
fn prepared_reference(x: &[f32], cols: usize, norm: Option<&[f32]>) -> Vec<f32> {
    match norm {
        Some(g) => x
            .chunks(cols)
            .flat_map(|row| {
                let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
                let scale = 1.0 / (ms + 1e-5).sqrt();
                row.iter()
                    .zip(g)
                    .map(move |(v, w)| (f64::from(*v) * scale * f64::from(*w)) as f32)
            })
            .collect(),
        None => x
            .chunks(2 * cols)
            .flat_map(|row| {
                let (gate, up) = row.split_at(cols);
                gate.iter().zip(up).map(|(g, u)| {
                    let g = f64::from(*g);
                    (g / (1.0 + (-g).exp()) * f64::from(*u)) as f32
                })
            })
            .collect(),
    }
}

#[test]
fn fused_prologues_normalize_or_gate_x_as_they_read_it() {
    use selfroute_wgpu::linear::Prologue;
    let Some(mut ctx) = context() else { return };
    // 160 columns: five Q4_1 blocks, not a multiple of the 64-wide staging loop.
    let (rows, cols) = (67, 160);
    let (td, w) = weight(TensorDType::Q4_1, rows, cols, 51);
    let m = upload(&ctx, &td);
    let gain = random(cols, 52, 2.0);
    let gain_buffer = input_buffer(&ctx, "gain", &gain);
    for (tuning, kernels) in tunings(&mut ctx) {
        for tokens in [1usize, 3, 70] {
            for norm in [true, false] {
                let width = if norm { cols } else { 2 * cols };
                // Large gates too: silu must not overflow into NaN.
                let x = random(
                    tokens * width,
                    53 + tokens as u64,
                    if norm { 3.0 } else { 90.0 },
                );
                let step = Step {
                    n: tokens as u32,
                    start: 0,
                    out_row0: 0,
                    out_rows: 1,
                };
                let step = ctx.uniform("step", &step);
                let x_buffer = input_buffer(&ctx, "x", &x);
                let y = output_buffer(&ctx, "y", &vec![f32::NAN; tokens * rows]);
                let prologue = if norm {
                    Prologue::RmsNorm {
                        weight: &gain_buffer,
                        eps: 1e-5,
                    }
                } else {
                    Prologue::SwiGlu
                };
                let bound = kernels
                    .bind_with(
                        &ctx,
                        &step,
                        &m,
                        &x_buffer,
                        &y,
                        Output::plain(rows),
                        prologue,
                    )
                    .unwrap();
                let got = run_pass(&ctx, |pass| kernels.encode(pass, &bound, tokens), &[&y]);
                let xp = prepared_reference(&x, cols, norm.then_some(gain.as_slice()));
                let want = reference(&w, &xp, rows, cols, tokens);
                let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
                let case = format!(
                    "{tuning} {} prologue, {tokens} token(s)",
                    if norm { "rmsnorm" } else { "swiglu" }
                );
                // Relative to the largest output: silu(90) * up reaches ~1e3 per product.
                let worst = assert_close(&got[0], &want, TOL * scale, &case);
                eprintln!("{case}: worst {worst:.2e}");
            }
        }
    }
}

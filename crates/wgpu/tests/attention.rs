//! RoPE with the KV-cache store, and causal grouped-query attention, against f64 references on
//! GQA shapes (9 heads over 3 KV heads of 64, as SmolLM2; 4 over 2 of 6; 2 over 1 of 80, wider
//! than the 64-wide workgroup), start positions past 0 and contexts that are and are not
//! multiples of the workgroup.

mod support;

use selfroute_core::{Architecture, ModelConfig, RopeLayout};
use selfroute_wgpu::GpuError;
use selfroute_wgpu::attention::{AttentionBuffers, AttentionKernel};
use selfroute_wgpu::kernel::Step;
use selfroute_wgpu::rope::{RopeBuffers, RopeKernel, rope_table};
use support::{assert_close, context, input_buffer, output_buffer, random, run_pass};

fn config(heads: usize, kv_heads: usize, head_dim: usize, layout: RopeLayout) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 16,
        hidden_size: heads * head_dim,
        intermediate_size: 16,
        num_layers: 1,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rope_theta: if head_dim == 64 { 10_000.0 } else { 1e6 },
        rms_norm_eps: 1e-5,
        context_length: 256,
        tie_embeddings: false,
        rope_layout: layout,
    }
}

fn step(n: usize, start: usize) -> Step {
    Step {
        n: n as u32,
        start: start as u32,
        out_row0: n.saturating_sub(1) as u32,
        out_rows: 1,
    }
}

/// Rotates one head (in f64) for position `pos`: pairs (2i, 2i+1) or (i, i + head_dim/2) turned
/// by pos * theta^(-2i/head_dim), as candle's `Rope` (crates/candle/src/rope.rs) does.
fn rotate(head: &mut [f64], pos: usize, theta: f32, layout: RopeLayout) {
    let d = head.len();
    for i in 0..d / 2 {
        let angle = pos as f64 * f64::from(theta).powf(-2.0 * i as f64 / d as f64);
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::Half => (i, i + d / 2),
        };
        let (x, y) = (head[a], head[b]);
        head[a] = x * angle.cos() - y * angle.sin();
        head[b] = x * angle.sin() + y * angle.cos();
    }
}

/// Tolerance for RoPE: 1e-5 * (1 + |y|). Each output is two f32 products of values below 1.5
/// with table entries rounded to f32 (a few 1e-8); a wrong pairing, a position off by one (a
/// whole radian for pair 0) or a missing bias is off by 0.1 or more.
const ROPE_TOL: f64 = 1e-5;

#[test]
fn rope_rotates_q_in_place_and_stores_k_and_v_at_their_positions() {
    let Some(ctx) = context() else { return };
    let kernel = RopeKernel::new(&ctx);
    let mut worst = 0.0f64;
    let sentinel = 4321.0f32;
    for layout in [RopeLayout::Interleaved, RopeLayout::Half] {
        for (heads, kv_heads, head_dim) in [(9, 3, 64), (4, 2, 6)] {
            let c = config(heads, kv_heads, head_dim, layout);
            let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
            let stride = q_dim + 2 * kv_dim;
            for (start, n) in [(0, 1), (37, 1), (5, 7), (60, 9)] {
                for with_bias in [false, true] {
                    let capacity = start + n + 3;
                    // One token more than the step has: its row and cache row stay untouched.
                    let qkv = random((n + 1) * stride, (start * 31 + n) as u64, 1.0);
                    let bias = random(stride, 77, 0.5);
                    let table = rope_table(head_dim, c.rope_theta, capacity);
                    let step_b = ctx.uniform("step", &step(n, start));
                    let qkv_b = output_buffer(&ctx, "qkv", &qkv);
                    let bias_b = input_buffer(&ctx, "bias", &bias);
                    let table_b = input_buffer(&ctx, "table", &table);
                    let k_cache = output_buffer(&ctx, "k", &vec![sentinel; capacity * kv_dim]);
                    let v_cache = output_buffer(&ctx, "v", &vec![sentinel; capacity * kv_dim]);
                    let bound = kernel
                        .bind(
                            &ctx,
                            &c,
                            &RopeBuffers {
                                step: &step_b,
                                qkv: &qkv_b,
                                bias: with_bias.then_some(&bias_b),
                                table: &table_b,
                                k_cache: &k_cache,
                                v_cache: &v_cache,
                            },
                        )
                        .unwrap();
                    let got = run_pass(
                        &ctx,
                        |pass| kernel.encode(pass, &bound, n + 1),
                        &[&qkv_b, &k_cache, &v_cache],
                    );

                    // Q rotated in place (bias added first); the K and V columns of qkv as they
                    // were; K rotated and V copied (biases added) into cache rows start..start+n.
                    let mut want_qkv: Vec<f64> = qkv.iter().map(|&v| f64::from(v)).collect();
                    let mut want_k = vec![f64::from(sentinel); capacity * kv_dim];
                    let mut want_v = want_k.clone();
                    for t in 0..n {
                        let pos = start + t;
                        let row: Vec<f64> = (0..stride)
                            .map(|j| {
                                let b = if with_bias { bias[j] } else { 0.0 };
                                f64::from(qkv[t * stride + j]) + f64::from(b)
                            })
                            .collect();
                        let (q, rest) = row.split_at(q_dim);
                        let (k, v) = rest.split_at(kv_dim);
                        let out_q = &mut want_qkv[t * stride..t * stride + q_dim];
                        out_q.copy_from_slice(q);
                        for head in out_q.chunks_mut(head_dim) {
                            rotate(head, pos, c.rope_theta, layout);
                        }
                        let out_k = &mut want_k[pos * kv_dim..(pos + 1) * kv_dim];
                        out_k.copy_from_slice(k);
                        for head in out_k.chunks_mut(head_dim) {
                            rotate(head, pos, c.rope_theta, layout);
                        }
                        want_v[pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(v);
                    }
                    let case = format!(
                        "{layout:?} {heads}/{kv_heads}x{head_dim} start {start} n {n} bias \
                         {with_bias}"
                    );
                    for (g, w, what) in [
                        (&got[0], &want_qkv, "qkv"),
                        (&got[1], &want_k, "k cache"),
                        (&got[2], &want_v, "v cache"),
                    ] {
                        let e = assert_close(g, w, ROPE_TOL, &format!("{case}: {what}"));
                        worst = worst.max(e);
                    }
                }
            }
        }
    }
    eprintln!("rope: worst |err| / (1 + |y|) = {worst:.2e}");
}

/// Softmax attention in f64 of the step's queries (the Q columns of `qkv`) over cache positions
/// 0..=start+t: [n][q_dim].
fn attention_reference(
    c: &ModelConfig,
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start: usize,
    n: usize,
) -> Vec<f64> {
    let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = c.num_heads / c.num_kv_heads;
    let mut out = vec![0.0; n * q_dim];
    for t in 0..n {
        for h in 0..c.num_heads {
            let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
            let kv = (h / group) * hd;
            let len = start + t + 1;
            let scores: Vec<f64> = (0..len)
                .map(|p| {
                    let k = &k_cache[p * kv_dim + kv..p * kv_dim + kv + hd];
                    let dot: f64 = q
                        .iter()
                        .zip(k)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out[t * q_dim + h * hd + d] = (0..len)
                    .map(|p| e[p] * f64::from(v_cache[p * kv_dim + kv + d]))
                    .sum::<f64>()
                    / sum;
            }
        }
    }
    out
}

/// Tolerance for attention: 1e-4 * (1 + |y|). Scores are f32 sums of up to 80 products and the
/// outputs f32 sums of up to 200 weighted values, so a few 1e-6 of rounding; attending one
/// position too many or too few moves an output by about |v| / context (5e-3 at 200 positions,
/// with scores spread by the [-2, 2] queries and keys), a wrong KV head or scale far more.
const ATTENTION_TOL: f64 = 1e-4;

#[test]
fn attention_matches_an_f64_softmax_reference() {
    let Some(ctx) = context() else { return };
    let kernel = AttentionKernel::new(&ctx);
    let capacity = 205;
    let mut worst = 0.0f64;
    for (heads, kv_heads, head_dim) in [(9, 3, 64), (4, 2, 6), (2, 1, 80)] {
        let c = config(heads, kv_heads, head_dim, RopeLayout::Interleaved);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let stride = q_dim + 2 * kv_dim;
        // Every cache position holds values, those past each query's position included (the
        // causal mask must skip them).
        let k_cache = random(capacity * kv_dim, 1, 2.0);
        let v_cache = random(capacity * kv_dim, 2, 1.0);
        let k_b = input_buffer(&ctx, "k cache", &k_cache);
        let v_b = input_buffer(&ctx, "v cache", &v_cache);
        // Decode with 1, 63, 64, 65 and 200 visible positions; prefill from 0, across 64, and
        // up to 200.
        for (start, n) in [
            (0, 1),
            (62, 1),
            (63, 1),
            (64, 1),
            (199, 1),
            (0, 20),
            (45, 20),
            (183, 17),
        ] {
            // One token more than the step has: its output row must stay untouched.
            let qkv = random((n + 1) * stride, (start + n) as u64, 2.0);
            let step_b = ctx.uniform("step", &step(n, start));
            let qkv_b = input_buffer(&ctx, "qkv", &qkv);
            let scores = output_buffer(&ctx, "scores", &vec![0.0; (n + 1) * heads * capacity]);
            let out = output_buffer(&ctx, "out", &vec![f32::NAN; (n + 1) * q_dim]);
            let bound = kernel
                .bind(
                    &ctx,
                    &c,
                    capacity,
                    &AttentionBuffers {
                        step: &step_b,
                        qkv: &qkv_b,
                        k_cache: &k_b,
                        v_cache: &v_b,
                        scores: &scores,
                        out: &out,
                    },
                )
                .unwrap();
            let got = run_pass(&ctx, |pass| kernel.encode(pass, &bound, n + 1), &[&out]).remove(0);
            let want = attention_reference(&c, &qkv, &k_cache, &v_cache, start, n);
            let case = format!("{heads}/{kv_heads}x{head_dim} start {start} n {n}");
            worst = worst.max(assert_close(&got[..n * q_dim], &want, ATTENTION_TOL, &case));
            assert!(
                got[n * q_dim..].iter().all(|v| v.is_nan()),
                "{case}: token n written"
            );
        }
    }
    eprintln!("attention: worst |err| / (1 + |y|) = {worst:.2e}");
}

#[test]
fn heads_wider_than_the_kernel_holds_are_refused() {
    let Some(ctx) = context() else { return };
    let kernel = AttentionKernel::new(&ctx);
    let c = config(2, 1, 258, RopeLayout::Half);
    let b = output_buffer(&ctx, "b", &[0.0; 4]);
    let buffers = AttentionBuffers {
        step: &b,
        qkv: &b,
        k_cache: &b,
        v_cache: &b,
        scores: &b,
        out: &b,
    };
    assert!(matches!(
        kernel.bind(&ctx, &c, 8, &buffers),
        Err(GpuError::Unsupported(_))
    ));
}

//! The kernel bodies, written so LLVM vectorizes them: fixed-width lane arrays, no horizontal
//! reductions inside the block loop. `#[inline(always)]` so each dispatch variant gets its own
//! copy compiled with its target features.

use half::f16;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

const LANES: usize = 16;

/// Scales and offsets of one row as f32 (half's slice conversion uses F16C when available).
#[inline(always)]
fn row_scales(scales: &[f16], offsets: &[f16], d: &mut Vec<f32>, m: &mut Vec<f32>) {
    d.clear();
    m.clear();
    d.resize(scales.len(), 0.0);
    m.resize(offsets.len(), 0.0);
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(scales, d);
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(offsets, m);
}

/// Dot product of one repacked row with x (batch 1), d and m already in f32.
#[inline(always)]
fn dot_row(
    format: BlockFormat,
    quants: &[u8],
    d: &[f32],
    m: &[f32],
    x: &[f32],
    block_sums: &[f32],
) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut offset_total = 0.0f32;
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            for (b, q) in quants.chunks_exact(16).enumerate() {
                let xb = &x[b * BLOCK..b * BLOCK + BLOCK];
                let mut t = [0.0f32; LANES];
                for j in 0..LANES {
                    t[j] = xb[j] * f32::from(q[j] & 0x0F) + xb[j + 16] * f32::from(q[j] >> 4);
                }
                let scale = d[b];
                for j in 0..LANES {
                    acc[j] += scale * t[j];
                }
                offset_total += m[b] * block_sums[b];
            }
        }
        BlockFormat::Q8_0 => {
            for (b, q) in quants.chunks_exact(32).enumerate() {
                let xb = &x[b * BLOCK..b * BLOCK + BLOCK];
                let mut t = [0.0f32; LANES];
                for j in 0..LANES {
                    t[j] = xb[j] * f32::from(q[j] as i8) + xb[j + 16] * f32::from(q[j + 16] as i8);
                }
                let scale = d[b];
                for j in 0..LANES {
                    acc[j] += scale * t[j];
                }
            }
        }
    }
    acc.iter().sum::<f32>() + offset_total
}

#[inline(always)]
pub fn matvec_rows(
    w: &QuantMatrix,
    first_row: usize,
    x: &[f32],
    block_sums: &[f32],
    out: &mut [f32],
) {
    let mut d = Vec::with_capacity(w.blocks_per_row());
    let mut m = Vec::with_capacity(w.blocks_per_row());
    for (i, o) in out.iter_mut().enumerate() {
        let (quants, scales, offsets) = w.row(first_row + i);
        row_scales(scales, offsets, &mut d, &mut m);
        *o = dot_row(w.format(), quants, &d, &m, x, block_sums);
    }
}

/// Plain f32 dot product with lane accumulators.
#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += ca[j] * cb[j];
        }
    }
    let tail: f32 = a
        .chunks_exact(LANES)
        .remainder()
        .iter()
        .zip(b.chunks_exact(LANES).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub fn dequantize_row(
    format: BlockFormat,
    (quants, scales, offsets): (&[u8], &[f16], &[f16]),
    out: &mut [f32],
) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            for (b, q) in quants.chunks_exact(16).enumerate() {
                let (d, m) = (scales[b].to_f32(), offsets[b].to_f32());
                let o = &mut out[b * BLOCK..b * BLOCK + BLOCK];
                for j in 0..16 {
                    o[j] = f32::from(q[j] & 0x0F) * d + m;
                    o[j + 16] = f32::from(q[j] >> 4) * d + m;
                }
            }
        }
        BlockFormat::Q8_0 => {
            for (b, q) in quants.chunks_exact(32).enumerate() {
                let d = scales[b].to_f32();
                let o = &mut out[b * BLOCK..b * BLOCK + BLOCK];
                for j in 0..32 {
                    o[j] = f32::from(q[j] as i8) * d;
                }
            }
        }
    }
}

/// Rows first_row.. of W times every activation row; out is [rows_in_chunk, batch].
#[inline(always)]
pub fn matmul_rows(w: &QuantMatrix, first_row: usize, xs: &[f32], batch: usize, out: &mut [f32]) {
    let cols = w.cols();
    let mut row = vec![0.0f32; cols];
    for (i, o) in out.chunks_exact_mut(batch).enumerate() {
        dequantize_row(w.format(), w.row(first_row + i), &mut row);
        for (b, v) in o.iter_mut().enumerate() {
            *v = dot_f32(&row, &xs[b * cols..(b + 1) * cols]);
        }
    }
}

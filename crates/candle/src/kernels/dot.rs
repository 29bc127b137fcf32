//! The kernel bodies, written so LLVM vectorizes them: fixed-width lane arrays, no horizontal
//! reductions inside the block loop. `#[inline(always)]` so each dispatch variant gets its own
//! copy compiled with its target features.

use half::f16;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

const LANES: usize = 16;

/// Dot product of one repacked row with x (batch 1), d and m already in f32.
#[inline(always)]
fn dot_row(
    format: BlockFormat,
    quants: &[u8],
    d: &[f16],
    m: &[f16],
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
                let scale = d[b].to_f32();
                for j in 0..LANES {
                    acc[j] += scale * t[j];
                }
                offset_total += m[b].to_f32() * block_sums[b];
            }
        }
        BlockFormat::Q8_0 => {
            for (b, q) in quants.chunks_exact(32).enumerate() {
                let xb = &x[b * BLOCK..b * BLOCK + BLOCK];
                let mut t = [0.0f32; LANES];
                for j in 0..LANES {
                    t[j] = xb[j] * f32::from(q[j] as i8) + xb[j + 16] * f32::from(q[j + 16] as i8);
                }
                let scale = d[b].to_f32();
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
    for (i, o) in out.iter_mut().enumerate() {
        let (quants, d, m) = w.row(first_row + i);
        *o = dot_row(w.format(), quants, d, m, x, block_sums);
    }
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
    let rows = out.len() / batch;
    let mut tile = vec![0.0f32; rows * cols];
    for (i, row) in tile.chunks_exact_mut(cols).enumerate() {
        dequantize_row(w.format(), w.row(first_row + i), row);
    }
    gemm_tile(&tile, rows, cols, xs, batch, out);
}

/// out[r, b] = sum_c tile[r, c] * xs[b, c]: the f32 GEMM of a dequantized row tile
/// ([rows, cols], row-major) with every activation row ([batch, cols]); out is [rows, batch].
#[inline(always)]
pub fn gemm_tile(
    tile: &[f32],
    rows: usize,
    cols: usize,
    xs: &[f32],
    batch: usize,
    out: &mut [f32],
) {
    assert!(
        tile.len() == rows * cols && xs.len() >= batch * cols && out.len() == rows * batch,
        "tile, activations and output sized by the caller"
    );
    // Tile row-major, xs read transposed.
    // SAFETY: the pointers and strides describe exactly the slices above (rows x cols tile,
    // cols x batch view of xs, rows x batch out), all in bounds (asserted) and not aliased.
    unsafe {
        gemm::gemm(
            rows,
            batch,
            cols,
            out.as_mut_ptr(),
            1,
            batch as isize,
            false,
            tile.as_ptr(),
            1,
            cols as isize,
            xs.as_ptr(),
            cols as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

//! Hand-written AVX-512 matrix-vector products (batch 1, the decode step). Four rows run side by
//! side so four independent FMA chains hide the FMA latency and each activation load serves four
//! rows. Quants are widened to i32 lanes, converted to f32 and multiplied by f32 activations.

use std::arch::x86_64::*;

use half::f16;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

const ROWS: usize = 4;

/// out[i] = W[first_row + i] . x for every i (offsets are folded into the per-block tables, so
/// the block sums the portable path uses are not needed here).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub unsafe fn matvec_rows(
    w: &QuantMatrix,
    first_row: usize,
    x: &[f32],
    block_sums: &[f32],
    out: &mut [f32],
) {
    let nb = w.blocks_per_row();
    assert!(
        x.len() >= nb * BLOCK && block_sums.len() >= nb,
        "activation length checked by the caller"
    );
    let mut i = 0;
    while i + ROWS <= out.len() {
        let rows: [_; ROWS] = std::array::from_fn(|k| w.row(first_row + i + k));
        let sums = unsafe { dot4(w.format(), rows, x, nb) };
        out[i..i + ROWS].copy_from_slice(&sums);
        i += ROWS;
    }
    while i < out.len() {
        let row = w.row(first_row + i);
        let sums = unsafe { dot4(w.format(), [row, row, row, row], x, nb) };
        out[i] = sums[0];
        i += 1;
    }
}

/// One f16 value in all 16 lanes (vcvtph2ps + vbroadcastss).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn splat_f16(v: f16) -> __m512 {
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(v.to_bits()))))
}

/// Dot products of four rows with x; each row is (quants, scales, offsets) of `nb` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn dot4(
    format: BlockFormat,
    rows: [(&[u8], &[f16], &[f16]); ROWS],
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    let qb = format.quant_bytes();
    let nibbles = matches!(format, BlockFormat::Q4_0 | BlockFormat::Q4_1);
    for (q, d, m) in &rows {
        assert!(
            q.len() == nb * qb && d.len() == nb && (!nibbles || m.len() == nb),
            "row layout checked at construction"
        );
    }
    // Rows are contiguous, so the next group of four starts where the last row ends. Decode is
    // bound by memory latency; pulling the next group's quants in while this one computes keeps
    // the loads ahead (a group is nb * qb * 4 bytes: one or two cache lines per block).
    let next_group = rows[ROWS - 1].0.as_ptr().wrapping_add(nb * qb);
    let lines_per_block = qb * ROWS / 64;
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let xp = x.as_ptr();
    // SAFETY (all loads below): b < nb, each row holds nb * qb quant bytes and nb scales, and x
    // holds nb * 32 floats, as asserted above.
    unsafe {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                // A 16-entry table of this block's dequantized values (q * d + m for q = 0..15);
                // vpermps indexes it with the low 4 bits of each lane, so a nibble needs no mask
                // and no int-to-float conversion, and the offset m is already folded in.
                let iota = _mm512_setr_ps(
                    0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
                );
                for b in 0..nb {
                    _mm_prefetch::<_MM_HINT_T0>(next_group.wrapping_add(b * 64) as *const i8);
                    let x0 = _mm512_loadu_ps(xp.add(b * BLOCK));
                    let x1 = _mm512_loadu_ps(xp.add(b * BLOCK + 16));
                    for k in 0..ROWS {
                        let (q, d, m) = rows[k];
                        let table = _mm512_fmadd_ps(
                            iota,
                            splat_f16(*d.get_unchecked(b)),
                            splat_f16(*m.get_unchecked(b)),
                        );
                        let packed = _mm_loadu_si128(q.as_ptr().add(b * 16) as *const __m128i);
                        let wide = _mm512_cvtepu8_epi32(packed);
                        let lo = _mm512_permutexvar_ps(wide, table);
                        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), table);
                        acc[k] = _mm512_fmadd_ps(x0, lo, acc[k]);
                        acc[k] = _mm512_fmadd_ps(x1, hi, acc[k]);
                    }
                }
            }
            BlockFormat::Q8_0 => {
                for b in 0..nb {
                    for line in 0..lines_per_block {
                        _mm_prefetch::<_MM_HINT_T0>(
                            next_group.wrapping_add((b * lines_per_block + line) * 64) as *const i8,
                        );
                    }
                    let x0 = _mm512_loadu_ps(xp.add(b * BLOCK));
                    let x1 = _mm512_loadu_ps(xp.add(b * BLOCK + 16));
                    for k in 0..ROWS {
                        let (q, d, _) = rows[k];
                        let p = q.as_ptr().add(b * 32);
                        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            p as *const __m128i,
                        )));
                        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            p.add(16) as *const __m128i,
                        )));
                        let t = _mm512_fmadd_ps(x1, hi, _mm512_mul_ps(x0, lo));
                        acc[k] = _mm512_fmadd_ps(splat_f16(*d.get_unchecked(b)), t, acc[k]);
                    }
                }
            }
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

/// Several activation rows (one per sequence of a batched decode step) through the same weight
/// rows: out[v * stride + at + i] = W[first_row + i] . xs[v] for i < n. Each weight block is
/// turned into floats once and used for up to eight activation rows; per (row, activation) the
/// arithmetic is exactly `matvec_rows`'s, so the results are equal bit for bit.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub unsafe fn matvec_multi(
    w: &QuantMatrix,
    first_row: usize,
    n: usize,
    rows_out: super::dispatch::MultiOut<'_>,
) {
    let super::dispatch::MultiOut {
        xs,
        batch,
        out,
        stride,
        at,
        ..
    } = rows_out;
    let nb = w.blocks_per_row();
    let cols = nb * BLOCK;
    assert!(
        xs.len() >= batch * cols && (batch == 0 || out.len() >= (batch - 1) * stride + at + n),
        "activation and output lengths checked by the caller"
    );
    let mut v = 0;
    while v < batch {
        // Up to eight activation rows per weight row: the block's dequantization (a table FMA,
        // two permutes, a conversion) then costs less than the two FMAs each row needs.
        let take = (batch - v).min(8);
        for i in 0..n {
            let row = w.row(first_row + i);
            let x = &xs[v * cols..];
            let f = w.format();
            let sums: [f32; 8] = unsafe {
                match take {
                    8 => dot1xv::<8>(f, row, x, cols, nb),
                    7 => pad(dot1xv::<7>(f, row, x, cols, nb)),
                    6 => pad(dot1xv::<6>(f, row, x, cols, nb)),
                    5 => pad(dot1xv::<5>(f, row, x, cols, nb)),
                    4 => pad(dot1xv::<4>(f, row, x, cols, nb)),
                    3 => pad(dot1xv::<3>(f, row, x, cols, nb)),
                    2 => pad(dot1xv::<2>(f, row, x, cols, nb)),
                    _ => pad(dot1xv::<1>(f, row, x, cols, nb)),
                }
            };
            for (j, s) in sums.iter().take(take).enumerate() {
                out[(v + j) * stride + at + i] = *s;
            }
        }
        v += take;
    }
}

fn pad<const V: usize>(a: [f32; V]) -> [f32; 8] {
    std::array::from_fn(|j| a.get(j).copied().unwrap_or(0.0))
}

/// One row with V activation rows (x holds them back to back, `cols` apart); the per-pair
/// operations are dot4's, in the same order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn dot1xv<const V: usize>(
    format: BlockFormat,
    (q, d, m): (&[u8], &[f16], &[f16]),
    x: &[f32],
    cols: usize,
    nb: usize,
) -> [f32; V] {
    let qb = format.quant_bytes();
    let nibbles = matches!(format, BlockFormat::Q4_0 | BlockFormat::Q4_1);
    assert!(
        q.len() == nb * qb
            && d.len() == nb
            && (!nibbles || m.len() == nb)
            && x.len() >= V * cols
            && cols >= nb * BLOCK,
        "row layout checked at construction, activations by the caller"
    );
    let mut acc = [_mm512_setzero_ps(); V];
    let xp = x.as_ptr();
    // SAFETY (all loads below): b < nb, the row holds nb * qb quant bytes and nb scales, and x
    // holds V rows of cols >= nb * 32 floats, as asserted above.
    unsafe {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let iota = _mm512_setr_ps(
                    0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
                );
                for b in 0..nb {
                    let table = _mm512_fmadd_ps(
                        iota,
                        splat_f16(*d.get_unchecked(b)),
                        splat_f16(*m.get_unchecked(b)),
                    );
                    let packed = _mm_loadu_si128(q.as_ptr().add(b * 16) as *const __m128i);
                    let wide = _mm512_cvtepu8_epi32(packed);
                    let lo = _mm512_permutexvar_ps(wide, table);
                    let hi = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), table);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let x0 = _mm512_loadu_ps(xp.add(j * cols + b * BLOCK));
                        let x1 = _mm512_loadu_ps(xp.add(j * cols + b * BLOCK + 16));
                        *a = _mm512_fmadd_ps(x0, lo, *a);
                        *a = _mm512_fmadd_ps(x1, hi, *a);
                    }
                }
            }
            BlockFormat::Q8_0 => {
                for b in 0..nb {
                    let p = q.as_ptr().add(b * 32);
                    let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        p as *const __m128i,
                    )));
                    let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        p.add(16) as *const __m128i
                    )));
                    let scale = splat_f16(*d.get_unchecked(b));
                    for (j, a) in acc.iter_mut().enumerate() {
                        let x0 = _mm512_loadu_ps(xp.add(j * cols + b * BLOCK));
                        let x1 = _mm512_loadu_ps(xp.add(j * cols + b * BLOCK + 16));
                        let t = _mm512_fmadd_ps(x1, hi, _mm512_mul_ps(x0, lo));
                        *a = _mm512_fmadd_ps(scale, t, *a);
                    }
                }
            }
        }
    }
    std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
}

//! Hand-written AVX2 + FMA matrix-vector products (batch 1) for CPUs without AVX-512. Same plan
//! as `avx512.rs` (four rows side by side, next group prefetched), with 8-lane vectors; nibbles
//! are converted to f32 and the block scale applied per block, the offset term via block sums.

use std::arch::x86_64::*;

use half::f16;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

const ROWS: usize = 4;

/// out[i] = W[first_row + i] . x for every i.
///
/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
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
        let sums = unsafe { dot4(w.format(), rows, x, block_sums, nb) };
        out[i..i + ROWS].copy_from_slice(&sums);
        i += ROWS;
    }
    while i < out.len() {
        let row = w.row(first_row + i);
        let sums = unsafe { dot4(w.format(), [row, row, row, row], x, block_sums, nb) };
        out[i] = sums[0];
        i += 1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn splat_f16(v: f16) -> __m256 {
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(v.to_bits()))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4(
    format: BlockFormat,
    rows: [(&[u8], &[f16], &[f16]); ROWS],
    x: &[f32],
    block_sums: &[f32],
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
    let next_group = rows[ROWS - 1].0.as_ptr().wrapping_add(nb * qb);
    let lines_per_block = qb * ROWS / 64;
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let mut offset = [0.0f32; ROWS];
    let xp = x.as_ptr();
    // SAFETY (all loads below): b < nb, each row holds nb * qb quant bytes and nb scales, and x
    // holds nb * 32 floats, as asserted above.
    unsafe {
        for b in 0..nb {
            for line in 0..lines_per_block {
                _mm_prefetch::<_MM_HINT_T0>(
                    next_group.wrapping_add((b * lines_per_block + line) * 64) as *const i8,
                );
            }
            let xs = [
                _mm256_loadu_ps(xp.add(b * BLOCK)),
                _mm256_loadu_ps(xp.add(b * BLOCK + 8)),
                _mm256_loadu_ps(xp.add(b * BLOCK + 16)),
                _mm256_loadu_ps(xp.add(b * BLOCK + 24)),
            ];
            for k in 0..ROWS {
                let (q, d, m) = rows[k];
                let widened: [__m256; 4] = if nibbles {
                    let packed = _mm_loadu_si128(q.as_ptr().add(b * 16) as *const __m128i);
                    let mask = _mm_set1_epi8(0x0F);
                    let lo = _mm_and_si128(packed, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                    [
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                    ]
                } else {
                    let p = q.as_ptr().add(b * 32);
                    let first = _mm_loadu_si128(p as *const __m128i);
                    let second = _mm_loadu_si128(p.add(16) as *const __m128i);
                    [
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(first)),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(first, 8))),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(second)),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(second, 8))),
                    ]
                };
                let mut t = _mm256_mul_ps(xs[0], widened[0]);
                t = _mm256_fmadd_ps(xs[1], widened[1], t);
                t = _mm256_fmadd_ps(xs[2], widened[2], t);
                t = _mm256_fmadd_ps(xs[3], widened[3], t);
                acc[k] = _mm256_fmadd_ps(splat_f16(*d.get_unchecked(b)), t, acc[k]);
                if nibbles {
                    offset[k] += m.get_unchecked(b).to_f32() * block_sums.get_unchecked(b);
                }
            }
        }
    }
    std::array::from_fn(|k| hsum(acc[k]) + offset[k])
}

/// Several activation rows through the same weight rows, as `avx512::matvec_multi` does:
/// out[v * stride + at + i] = W[first_row + i] . xs[v]; each block is widened once for up to
/// four activation rows, and per (row, activation) the arithmetic is `matvec_rows`'s exactly.
///
/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matvec_multi(
    w: &QuantMatrix,
    first_row: usize,
    n: usize,
    rows_out: super::dispatch::MultiOut<'_>,
) {
    let super::dispatch::MultiOut {
        xs,
        sums,
        batch,
        out,
        stride,
        at,
    } = rows_out;
    let nb = w.blocks_per_row();
    let cols = nb * BLOCK;
    assert!(
        xs.len() >= batch * cols
            && sums.len() >= batch * nb
            && (batch == 0 || out.len() >= (batch - 1) * stride + at + n),
        "activation and output lengths checked by the caller"
    );
    let mut v = 0;
    while v < batch {
        let take = (batch - v).min(4);
        for i in 0..n {
            let row = w.row(first_row + i);
            let (x, s) = (&xs[v * cols..], &sums[v * nb..]);
            let dots: [f32; 4] = unsafe {
                match take {
                    4 => dot1xv::<4>(w.format(), row, x, s, nb),
                    3 => pad(dot1xv::<3>(w.format(), row, x, s, nb)),
                    2 => pad(dot1xv::<2>(w.format(), row, x, s, nb)),
                    _ => pad(dot1xv::<1>(w.format(), row, x, s, nb)),
                }
            };
            for (j, d) in dots.iter().take(take).enumerate() {
                out[(v + j) * stride + at + i] = *d;
            }
        }
        v += take;
    }
}

fn pad<const V: usize>(a: [f32; V]) -> [f32; 4] {
    std::array::from_fn(|j| a.get(j).copied().unwrap_or(0.0))
}

/// One row with V activation rows (back to back in x, their block sums back to back in
/// block_sums); per pair the operations of dot4, in the same order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot1xv<const V: usize>(
    format: BlockFormat,
    (q, d, m): (&[u8], &[f16], &[f16]),
    x: &[f32],
    block_sums: &[f32],
    nb: usize,
) -> [f32; V] {
    let qb = format.quant_bytes();
    let cols = nb * BLOCK;
    let nibbles = matches!(format, BlockFormat::Q4_0 | BlockFormat::Q4_1);
    assert!(
        q.len() == nb * qb
            && d.len() == nb
            && (!nibbles || m.len() == nb)
            && x.len() >= V * cols
            && block_sums.len() >= V * nb,
        "row layout checked at construction, activations by the caller"
    );
    let mut acc = [_mm256_setzero_ps(); V];
    let mut offset = [0.0f32; V];
    let xp = x.as_ptr();
    // SAFETY (all loads below): b < nb, the row holds nb * qb quant bytes and nb scales, x holds
    // V rows of nb * 32 floats and block_sums V rows of nb sums, as asserted above.
    unsafe {
        for b in 0..nb {
            let widened: [__m256; 4] = if nibbles {
                let packed = _mm_loadu_si128(q.as_ptr().add(b * 16) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(packed, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                ]
            } else {
                let p = q.as_ptr().add(b * 32);
                let first = _mm_loadu_si128(p as *const __m128i);
                let second = _mm_loadu_si128(p.add(16) as *const __m128i);
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(first)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(first, 8))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(second)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(second, 8))),
                ]
            };
            let scale = splat_f16(*d.get_unchecked(b));
            for j in 0..V {
                let base = xp.add(j * cols + b * BLOCK);
                let mut t = _mm256_mul_ps(_mm256_loadu_ps(base), widened[0]);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(8)), widened[1], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(16)), widened[2], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(24)), widened[3], t);
                acc[j] = _mm256_fmadd_ps(scale, t, acc[j]);
                if nibbles {
                    offset[j] += m.get_unchecked(b).to_f32() * block_sums.get_unchecked(j * nb + b);
                }
            }
        }
    }
    std::array::from_fn(|j| hsum(acc[j]) + offset[j])
}

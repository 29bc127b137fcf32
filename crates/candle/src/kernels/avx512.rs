//! Hand-written AVX-512 matrix-vector products (batch 1, the decode step). Four rows run side by
//! side so four independent FMA chains hide the FMA latency and each activation load serves four
//! rows. Quants are widened to i32 lanes, converted to f32 and multiplied by f32 activations.

use std::arch::x86_64::*;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

const ROWS: usize = 4;

/// out[i] = W[first_row + i] . x for every i, with x's block sums for the offset term.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and fma.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
        for k in 0..ROWS {
            let (_, _, m) = rows[k];
            out[i + k] = sums[k] + offset_term(m, block_sums);
        }
        i += ROWS;
    }
    while i < out.len() {
        let row = w.row(first_row + i);
        let sums = unsafe { dot4(w.format(), [row, row, row, row], x, nb) };
        out[i] = sums[0] + offset_term(row.2, block_sums);
        i += 1;
    }
}

#[inline(always)]
fn offset_term(m: &[f32], block_sums: &[f32]) -> f32 {
    m.iter().zip(block_sums).map(|(a, b)| a * b).sum()
}

/// Dot products of four rows with x; each row is (quants, scales, offsets) of `nb` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn dot4(
    format: BlockFormat,
    rows: [(&[u8], &[f32], &[f32]); ROWS],
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    let qb = format.quant_bytes();
    for (q, d, _) in &rows {
        assert!(
            q.len() == nb * qb && d.len() == nb,
            "row layout checked at construction"
        );
    }
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let xp = x.as_ptr();
    let mask = _mm512_set1_epi32(0x0F);
    // SAFETY (all loads below): b < nb, each row holds nb * qb quant bytes and nb scales, and x
    // holds nb * 32 floats, as asserted above.
    unsafe {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                for b in 0..nb {
                    let x0 = _mm512_loadu_ps(xp.add(b * BLOCK));
                    let x1 = _mm512_loadu_ps(xp.add(b * BLOCK + 16));
                    for k in 0..ROWS {
                        let (q, d, _) = rows[k];
                        let packed = _mm_loadu_si128(q.as_ptr().add(b * 16) as *const __m128i);
                        let wide = _mm512_cvtepu8_epi32(packed);
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(wide, mask));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(wide, 4));
                        let t = _mm512_fmadd_ps(x1, hi, _mm512_mul_ps(x0, lo));
                        acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(*d.get_unchecked(b)), t, acc[k]);
                    }
                }
            }
            BlockFormat::Q8_0 => {
                for b in 0..nb {
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
                        acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(*d.get_unchecked(b)), t, acc[k]);
                    }
                }
            }
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

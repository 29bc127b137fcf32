//! Hand-written wasm simd128 kernels: the browser's CPU path, single-threaded in a Web Worker.
//!
//! Matrix-vector (decode): the quants of a block are widened to i32 lanes (`*_extend_*`),
//! converted to f32 and multiplied by the f32 activations; the block scale is applied once per
//! block, and the offset term (Q4_0/Q4_1) comes from the activations' block sums, four blocks per
//! vector. wasm has no f16 conversion instruction and `half`'s software one costs more than a
//! block's arithmetic, so scales are converted four at a time with lane arithmetic
//! (`f16x4_to_f32x4`).
//!
//! One row at a time, unlike `avx2.rs`: in Chromium (V8 on x86-64), computing 2, 3 or 4 rows side
//! by side was no faster with the weights in cache (V8 has 16 vector registers and no FMA, so
//! sharing the activation loads saves little) and much slower from memory, where a 30-layer
//! SmolLM2 decode's matrix products took 14.5 ms (1 row), 17 ms (2), 34 ms (3) and 31 ms (4) for
//! Q8_0: one sequential stream per row is what the hardware prefetcher follows best, and wasm has
//! no prefetch instruction to help several.
//!
//! Prefill (several tokens): each row is dequantized once into an f32 tile with these
//! conversions, then one f32 GEMM (the `gemm` crate, whose wasm build has simd128 microkernels)
//! multiplies the tile with every token. Per SmolLM2 layer in Chromium, the matrix-vector kernel
//! takes 0.36 ms per token; the tile 0.3 ms once and the GEMM 0.21 ms per token, so from two
//! tokens on the tile wins.
//!
//! wasm has no fused multiply-add without the relaxed-simd proposal (not in every browser), so
//! products and sums are separate instructions.

use core::arch::wasm32::*;

use half::f16;

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};

/// How one format's repacked quants become f32 lanes; the kernels are generic over it so the
/// format test is decided at compile time, not per block.
trait Quants {
    /// Quant bytes per block after repacking.
    const BYTES: usize;
    /// Whether the format has a per-block offset (value = q * d + m).
    const OFFSETS: bool;
    /// The block's 32 quants as eight f32x4 vectors, in element order.
    ///
    /// # Safety
    /// `q` must point at `BYTES` readable bytes.
    unsafe fn widen(q: *const u8) -> [v128; 8];
}

/// Q4_0 and Q4_1 after repacking: 16 bytes, element j in the low nibble of byte j, element j + 16
/// in its high nibble (Q4_0's -8 lives in its offsets).
struct Nibbles;

impl Quants for Nibbles {
    const BYTES: usize = 16;
    const OFFSETS: bool = true;

    #[inline(always)]
    unsafe fn widen(q: *const u8) -> [v128; 8] {
        // SAFETY: the caller guarantees 16 readable bytes; v128_load has no alignment requirement.
        let packed = unsafe { v128_load(q.cast::<v128>()) };
        let mask = u8x16_splat(0x0F);
        let lo = v128_and(packed, mask);
        let hi = v128_and(u16x8_shr(packed, 4), mask);
        let [a, b, c, d] = widen_u8(lo);
        let [e, f, g, h] = widen_u8(hi);
        [a, b, c, d, e, f, g, h]
    }
}

/// Q8_0: 32 signed bytes.
struct Bytes;

impl Quants for Bytes {
    const BYTES: usize = 32;
    const OFFSETS: bool = false;

    #[inline(always)]
    unsafe fn widen(q: *const u8) -> [v128; 8] {
        // SAFETY: the caller guarantees 32 readable bytes; each load reads 8 of them, unaligned.
        let [a, b, c, d] = unsafe {
            [
                i16x8_load_extend_i8x8(q.cast::<i8>()),
                i16x8_load_extend_i8x8(q.add(8).cast::<i8>()),
                i16x8_load_extend_i8x8(q.add(16).cast::<i8>()),
                i16x8_load_extend_i8x8(q.add(24).cast::<i8>()),
            ]
        };
        let f = |v: v128| {
            [
                f32x4_convert_i32x4(i32x4_extend_low_i16x8(v)),
                f32x4_convert_i32x4(i32x4_extend_high_i16x8(v)),
            ]
        };
        let ([a0, a1], [b0, b1], [c0, c1], [d0, d1]) = (f(a), f(b), f(c), f(d));
        [a0, a1, b0, b1, c0, c1, d0, d1]
    }
}

/// Sixteen unsigned bytes (each < 16 here) as four f32x4 vectors.
#[inline(always)]
fn widen_u8(v: v128) -> [v128; 4] {
    let lo = u16x8_extend_low_u8x16(v);
    let hi = u16x8_extend_high_u8x16(v);
    [
        f32x4_convert_i32x4(u32x4_extend_low_u16x8(lo)),
        f32x4_convert_i32x4(u32x4_extend_high_u16x8(lo)),
        f32x4_convert_i32x4(u32x4_extend_low_u16x8(hi)),
        f32x4_convert_i32x4(u32x4_extend_high_u16x8(hi)),
    ]
}

/// Four f16 bit patterns, one in the low half of each 32-bit lane, as f32; exact for every
/// value, subnormals and infinities included (NaNs stay NaNs).
#[inline(always)]
pub(super) fn f16x4_to_f32x4(h: v128) -> v128 {
    // The f16 exponent and mantissa moved to the f32 positions read, as an f32, 2^-112 times the
    // half's value (the exponent biases differ by 112) for normals and subnormals alike, so one
    // multiply by 2^112 finishes the conversion; wasm keeps subnormals (no flush to zero).
    let magnitude = i32x4_shl(v128_and(h, u32x4_splat(0x7FFF)), 13);
    let scaled = f32x4_mul(magnitude, f32x4_splat(f32::from_bits(0x7780_0000)));
    // f16 infinities and NaNs (exponent all ones) keep their mantissa and get f32's all-ones
    // exponent.
    let special = u32x4_ge(magnitude, u32x4_splat(0x7C00 << 13));
    let scaled = v128_or(scaled, v128_and(special, u32x4_splat(0x7F80_0000)));
    v128_or(scaled, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

/// Values `at..at + 4` of a per-block f16 array as f32 (zeros past its end).
#[inline(always)]
fn f16x4_at(values: &[f16], at: usize) -> v128 {
    let bits = match values.get(at..at + 4) {
        // SAFETY: the slice holds four f16s, 8 bytes, which the load reads (unaligned is fine).
        Some(four) => unsafe { u32x4_load_extend_u16x4(four.as_ptr().cast::<u16>()) },
        None => {
            let lane = |k: usize| values.get(at + k).map_or(0, |v| u32::from(v.to_bits()));
            u32x4(lane(0), lane(1), lane(2), lane(3))
        }
    };
    f16x4_to_f32x4(bits)
}

/// `values[at..at + 4]` as a vector (zeros past the end).
#[inline(always)]
fn f32x4_at(values: &[f32], at: usize) -> v128 {
    match values.get(at..at + 4) {
        // SAFETY: the slice holds four f32s, 16 bytes (unaligned is fine).
        Some(four) => unsafe { v128_load(four.as_ptr().cast::<v128>()) },
        None => {
            let lane = |k: usize| values.get(at + k).copied().unwrap_or(0.0);
            f32x4(lane(0), lane(1), lane(2), lane(3))
        }
    }
}

#[inline(always)]
fn lanes(v: v128) -> [f32; 4] {
    [
        f32x4_extract_lane::<0>(v),
        f32x4_extract_lane::<1>(v),
        f32x4_extract_lane::<2>(v),
        f32x4_extract_lane::<3>(v),
    ]
}

#[inline(always)]
fn hsum(v: v128) -> f32 {
    let [a, b, c, d] = lanes(v);
    (a + b) + (c + d)
}

/// x . w for one block: eight products summed as a tree, so the adds do not wait on each other.
#[inline(always)]
fn block_dot(x: &[v128; 8], w: &[v128; 8]) -> v128 {
    let p = |i: usize| f32x4_add(f32x4_mul(x[i], w[i]), f32x4_mul(x[i + 1], w[i + 1]));
    f32x4_add(f32x4_add(p(0), p(2)), f32x4_add(p(4), p(6)))
}

/// out[i] = W[first_row + i] . x for every i; `block_sums[b]` is the sum of x's block b.
pub fn matvec_rows(
    w: &QuantMatrix,
    first_row: usize,
    x: &[f32],
    block_sums: &[f32],
    out: &mut [f32],
) {
    match w.format() {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            matvec_rows_of::<Nibbles>(w, first_row, x, block_sums, out)
        }
        BlockFormat::Q8_0 => matvec_rows_of::<Bytes>(w, first_row, x, block_sums, out),
    }
}

fn matvec_rows_of<Q: Quants>(
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
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_row::<Q>(w.row(first_row + i), x, block_sums, nb);
    }
}

/// One row's dot product with x. `x.len() >= nb * 32` and `block_sums.len() >= nb` are checked
/// by the caller.
#[inline(always)]
fn dot_row<Q: Quants>(
    (quants, scales, offsets): (&[u8], &[f16], &[f16]),
    x: &[f32],
    block_sums: &[f32],
    nb: usize,
) -> f32 {
    assert!(
        quants.len() == nb * Q::BYTES && scales.len() == nb && (!Q::OFFSETS || offsets.len() == nb),
        "row layout checked at construction"
    );
    let mut acc = f32x4_splat(0.0);
    let mut offset = f32x4_splat(0.0);
    let mut first = 0;
    while first < nb {
        // Four blocks' scales at a time: one vector conversion instead of four.
        let d = lanes(f16x4_at(scales, first));
        if Q::OFFSETS {
            let m = f16x4_at(offsets, first);
            offset = f32x4_add(offset, f32x4_mul(m, f32x4_at(block_sums, first)));
        }
        for (j, b) in (first..nb.min(first + 4)).enumerate() {
            // SAFETY: b < nb and x holds nb * 32 floats (checked by the caller): 8 loads of 16
            // bytes inside block b, unaligned.
            let xs: [v128; 8] = std::array::from_fn(|i| unsafe {
                v128_load(x.as_ptr().add(b * BLOCK + i * 4).cast())
            });
            // SAFETY: the row holds nb * BYTES quant bytes (asserted above) and b < nb.
            let w = unsafe { Q::widen(quants.as_ptr().add(b * Q::BYTES)) };
            acc = f32x4_add(acc, f32x4_mul(f32x4_splat(d[j]), block_dot(&xs, &w)));
        }
        first += 4;
    }
    hsum(f32x4_add(acc, offset))
}

/// One repacked row as f32.
pub fn dequantize_row(format: BlockFormat, row: (&[u8], &[f16], &[f16]), out: &mut [f32]) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => dequantize_row_of::<Nibbles>(row, out),
        BlockFormat::Q8_0 => dequantize_row_of::<Bytes>(row, out),
    }
}

fn dequantize_row_of<Q: Quants>(
    (quants, scales, offsets): (&[u8], &[f16], &[f16]),
    out: &mut [f32],
) {
    let nb = scales.len();
    assert!(
        quants.len() == nb * Q::BYTES
            && (!Q::OFFSETS || offsets.len() == nb)
            && out.len() == nb * BLOCK,
        "row layout checked at construction, output sized by the caller"
    );
    let mut first = 0;
    while first < nb {
        let d = lanes(f16x4_at(scales, first));
        let m = if Q::OFFSETS {
            lanes(f16x4_at(offsets, first))
        } else {
            [0.0; 4]
        };
        for (j, b) in (first..nb.min(first + 4)).enumerate() {
            // SAFETY: b < nb, and quants holds nb * BYTES bytes (asserted above).
            let w = unsafe { Q::widen(quants.as_ptr().add(b * Q::BYTES)) };
            let (d, m) = (f32x4_splat(d[j]), f32x4_splat(m[j]));
            for (i, v) in w.iter().enumerate() {
                let v = if Q::OFFSETS {
                    f32x4_add(f32x4_mul(*v, d), m)
                } else {
                    f32x4_mul(*v, d)
                };
                // SAFETY: out holds nb * 32 floats (asserted above); 16 bytes inside block b.
                unsafe { v128_store(out.as_mut_ptr().add(b * BLOCK + i * 4).cast(), v) };
            }
        }
        first += 4;
    }
}

/// Rows first_row.. of W times every activation row; out is [rows_in_chunk, batch].
pub fn matmul_rows(w: &QuantMatrix, first_row: usize, xs: &[f32], batch: usize, out: &mut [f32]) {
    let cols = w.cols();
    let rows = out.len() / batch;
    let mut tile = vec![0.0f32; rows * cols];
    for (i, row) in tile.chunks_exact_mut(cols).enumerate() {
        dequantize_row(w.format(), w.row(first_row + i), row);
    }
    super::dot::gemm_tile(&tile, rows, cols, xs, batch, out);
}

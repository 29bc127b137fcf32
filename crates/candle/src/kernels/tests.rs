//! Every kernel path against a plain f64 product of the dequantized weights.
//!
//! The same tests run natively and, for the simd128 kernels, in wasm32 (`cargo xtask test` runs
//! them in headless Chromium's dedicated worker through wasm-bindgen-test-runner, the browser
//! engine that runs the real thing).

use super::matrix::{BLOCK, BlockFormat, QuantMatrix};
// In wasm32, wasm-bindgen-test-runner runs `#[wasm_bindgen_test]` functions, not libtest's;
// this import makes every `#[test]` below one of them.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Deterministic pseudo-random bytes / floats.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn float(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// Random GGML blocks with sane f16 scales.
fn random_blocks(format: BlockFormat, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rows * cols / BLOCK {
        let d = half::f16::from_f32(0.01 + (rng.next() % 100) as f32 / 5000.0);
        out.extend_from_slice(&d.to_le_bytes());
        match format {
            BlockFormat::Q4_1 => {
                out.extend_from_slice(&half::f16::from_f32(rng.float() * 0.1).to_le_bytes())
            }
            BlockFormat::Q4_0 | BlockFormat::Q8_0 => {}
        }
        let n = if format == BlockFormat::Q8_0 { 32 } else { 16 };
        out.extend((0..n).map(|_| rng.next() as u8));
    }
    out
}

/// Dequantizes straight from the GGML bytes (independent of the repacked layout).
fn reference_dequant(format: BlockFormat, bytes: &[u8], cols: usize) -> Vec<f64> {
    let block_bytes = match format {
        BlockFormat::Q4_0 => 18,
        BlockFormat::Q4_1 => 20,
        BlockFormat::Q8_0 => 34,
    };
    let mut out = Vec::new();
    for b in bytes.chunks_exact(block_bytes) {
        let d = f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
        let mut vals = [0f64; 32];
        match format {
            BlockFormat::Q4_0 => {
                for j in 0..16 {
                    vals[j] = (f64::from(b[2 + j] & 15) - 8.0) * d;
                    vals[j + 16] = (f64::from(b[2 + j] >> 4) - 8.0) * d;
                }
            }
            BlockFormat::Q4_1 => {
                let m = f64::from(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
                for j in 0..16 {
                    vals[j] = f64::from(b[4 + j] & 15) * d + m;
                    vals[j + 16] = f64::from(b[4 + j] >> 4) * d + m;
                }
            }
            BlockFormat::Q8_0 => {
                for j in 0..32 {
                    vals[j] = f64::from(b[2 + j] as i8) * d;
                }
            }
        }
        out.extend_from_slice(&vals);
    }
    assert_eq!(out.len() % cols, 0);
    out
}

fn check(format: BlockFormat, rows: usize, cols: usize, batch: usize) {
    let mut rng = Lcg(rows as u64 * 31 + cols as u64 * 7 + batch as u64);
    let bytes = random_blocks(format, rows, cols, &mut rng);
    let w = reference_dequant(format, &bytes, cols);
    let m = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
    let xs: Vec<f32> = (0..batch * cols).map(|_| rng.float()).collect();
    let mut out = vec![0f32; batch * rows];
    m.matmul(&xs, batch, &mut out).unwrap();
    for b in 0..batch {
        for r in 0..rows {
            let expected: f64 = (0..cols)
                .map(|c| w[r * cols + c] * f64::from(xs[b * cols + c]))
                .sum();
            let scale: f64 = (0..cols)
                .map(|c| (w[r * cols + c] * f64::from(xs[b * cols + c])).abs())
                .sum();
            let got = f64::from(out[b * rows + r]);
            // f32 accumulation: relative to the sum of magnitudes, a few ulps per term.
            assert!(
                (got - expected).abs() <= 1e-5 * scale.max(1e-3),
                "{format:?} {rows}x{cols} batch {batch} [{b},{r}]: {got} vs {expected}"
            );
        }
    }
    let mut row = vec![0f32; cols];
    m.dequantize_row(rows - 1, &mut row).unwrap();
    for (c, v) in row.iter().enumerate() {
        assert!((f64::from(*v) - w[(rows - 1) * cols + c]).abs() < 1e-6);
    }
}

#[test]
fn all_formats_shapes_and_batches_match_the_f64_reference() {
    // The path is chosen once per process from SELFROUTE_KERNEL (natively; in wasm32 at build
    // time); CI runs this file on the widest path the machine has, and
    // `every_compiled_path_agrees_with_the_baseline` below compares paths directly. Row counts
    // that are not multiples of 4 exercise the kernels' single-row tails; 576 columns are 18
    // blocks, which the simd128 kernel reads four at a time with a tail of two.
    for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        for (rows, cols) in [(1, 32), (7, 64), (6, 96), (37, 576), (130, 1536)] {
            for batch in [1, 3, 17] {
                check(format, rows, cols, batch);
            }
        }
    }
}

#[test]
fn every_compiled_path_agrees_with_the_baseline() {
    let mut rng = Lcg(99);
    for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let (rows, cols) = (45, 576);
        let bytes = random_blocks(format, rows, cols, &mut rng);
        let m = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| rng.float()).collect();
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        let mut baseline = vec![0f32; rows];
        super::dot::matvec_rows(&m, 0, &x, &sums, &mut baseline);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("fma")
        {
            let mut fast = vec![0f32; rows];
            // SAFETY: features checked just above.
            unsafe { super::avx512::matvec_rows(&m, 0, &x, &sums, &mut fast) };
            for (a, b) in fast.iter().zip(&baseline) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{format:?}: avx512 {a} vs baseline {b}"
                );
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            let mut fast = vec![0f32; rows];
            super::simd128::matvec_rows(&m, 0, &x, &sums, &mut fast);
            for (a, b) in fast.iter().zip(&baseline) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{format:?}: simd128 {a} vs baseline {b}"
                );
            }
            let (mut fast, mut portable) = (vec![0f32; cols], vec![0f32; cols]);
            for r in [0, rows - 1] {
                super::simd128::dequantize_row(format, m.row(r), &mut fast);
                super::dot::dequantize_row(format, m.row(r), &mut portable);
                assert_eq!(fast, portable, "{format:?}: simd128 dequantized row {r}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            let mut fast = vec![0f32; rows];
            // SAFETY: features checked just above.
            unsafe { super::avx2::matvec_rows(&m, 0, &x, &sums, &mut fast) };
            for (a, b) in fast.iter().zip(&baseline) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{format:?}: avx2 {a} vs baseline {b}"
                );
            }
        }
    }
}

/// Every f16 bit pattern converts to the f32 `half` gives, bit for bit (NaNs to NaNs: `half`
/// also sets the quiet bit, which a scale's NaN-ness does not depend on).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[test]
fn simd128_f16_conversion_is_exact_for_every_value() {
    use core::arch::wasm32::{f32x4_extract_lane, u32x4};
    for first in (0..=u16::MAX).step_by(4) {
        let bits: [u16; 4] = std::array::from_fn(|k| first + k as u16);
        let [a, b, c, d] = bits.map(u32::from);
        let v = super::simd128::f16x4_to_f32x4(u32x4(a, b, c, d));
        let got = [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ];
        for (h, g) in bits.iter().zip(got) {
            let want = half::f16::from_bits(*h).to_f32();
            if want.is_nan() {
                assert!(g.is_nan(), "f16 {h:#06x}: {g} vs NaN");
            } else {
                assert_eq!(g.to_bits(), want.to_bits(), "f16 {h:#06x}: {g} vs {want}");
            }
        }
    }
}

/// A batched decode product equals each row's batch-1 product bit for bit, on whichever path
/// this process runs (CI runs it with SELFROUTE_KERNEL=avx2 and =baseline too). Shapes cross the
/// cache tiles (4096 rows of 64 columns is several tiles per task), the task chunks and the
/// kernels' four-row groups (37, 130 rows).
#[test]
fn decode_batch_rows_equal_single_rows_exactly() {
    let mut rng = Lcg(7);
    for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        for (rows, cols) in [(1, 32), (37, 576), (130, 1536), (4096, 64)] {
            let bytes = random_blocks(format, rows, cols, &mut rng);
            let m = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
            for batch in [1, 2, 5, 16] {
                let xs: Vec<f32> = (0..batch * cols).map(|_| rng.float()).collect();
                let mut batched = vec![0f32; batch * rows];
                m.matvec_batch(&xs, batch, &mut batched).unwrap();
                for (b, x) in xs.chunks_exact(cols).enumerate() {
                    let mut single = vec![0f32; rows];
                    m.matmul(x, 1, &mut single).unwrap();
                    assert_eq!(
                        &batched[b * rows..(b + 1) * rows],
                        &single[..],
                        "{format:?} {rows}x{cols} batch {batch} row {b}"
                    );
                }
            }
        }
    }
    let m = QuantMatrix::new(BlockFormat::Q8_0, 2, 32, &[0; 68]).unwrap();
    assert!(m.matvec_batch(&[0.0; 63], 2, &mut [0.0; 4]).is_err());
    assert!(m.matvec_batch(&[0.0; 64], 2, &mut [0.0; 3]).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    assert!(QuantMatrix::new(BlockFormat::Q4_1, 2, 48, &[0; 60]).is_err());
    assert!(QuantMatrix::new(BlockFormat::Q4_1, 2, 32, &[0; 39]).is_err());
    let m = QuantMatrix::new(BlockFormat::Q8_0, 2, 32, &[0; 68]).unwrap();
    assert!(m.matmul(&[0.0; 31], 1, &mut [0.0; 2]).is_err());
    assert!(m.matmul(&[0.0; 32], 1, &mut [0.0; 3]).is_err());
    assert!(m.dequantize_row(2, &mut [0.0; 32]).is_err());
}

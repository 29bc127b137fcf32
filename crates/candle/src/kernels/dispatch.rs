//! Picks the widest instruction set this CPU has, once, and runs the kernel body compiled for it.
//! On wasm32 the choice is made at build time: simd128 kernels when the target enables simd128
//! (`.cargo/config.toml` does), the portable body otherwise.

use super::dot;
use super::matrix::QuantMatrix;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QuantMatrix, dot};

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn matmul_avx512(
        w: &QuantMatrix,
        first: usize,
        xs: &[f32],
        batch: usize,
        out: &mut [f32],
    ) {
        dot::matmul_rows(w, first, xs, batch, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_avx2(
        w: &QuantMatrix,
        first: usize,
        xs: &[f32],
        batch: usize,
        out: &mut [f32],
    ) {
        dot::matmul_rows(w, first, xs, batch, out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    /// The portable body; on wasm32 with simd128 the choice is made at build time and never
    /// falls to it, but every target keeps one path that needs nothing.
    #[cfg_attr(
        all(target_arch = "wasm32", target_feature = "simd128"),
        allow(dead_code)
    )]
    Baseline,
}

fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            // SELFROUTE_KERNEL=avx2|baseline forces a narrower path (tests and benchmarks).
            let forced = std::env::var("SELFROUTE_KERNEL").unwrap_or_default();
            let has_avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let has_avx512 = has_avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            match forced.as_str() {
                "baseline" => Level::Baseline,
                "avx2" if has_avx2 => Level::Avx2,
                _ if has_avx512 => Level::Avx512,
                _ if has_avx2 => Level::Avx2,
                _ => Level::Baseline,
            }
        })
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        Level::Simd128
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    Level::Baseline
}

pub fn matvec_rows(w: &QuantMatrix, first: usize, x: &[f32], sums: &[f32], out: &mut [f32]) {
    match level() {
        // SAFETY: level() returned these only after detecting the features they enable.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::avx512::matvec_rows(w, first, x, sums, out) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::avx2::matvec_rows(w, first, x, sums, out) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Level::Simd128 => super::simd128::matvec_rows(w, first, x, sums, out),
        Level::Baseline => dot::matvec_rows(w, first, x, sums, out),
    }
}

/// Where `matvec_multi` reads and writes: `batch` activation rows back to back in `xs`, their
/// block sums back to back in `sums`; row v's result for weight row first_row + i goes to
/// `out[v * stride + at + i]`.
pub struct MultiOut<'a> {
    pub xs: &'a [f32],
    pub sums: &'a [f32],
    pub batch: usize,
    pub out: &'a mut [f32],
    pub stride: usize,
    pub at: usize,
}

/// Weight rows first_row..first_row + n times every activation row, each pair computed exactly
/// as `matvec_rows` computes it. The SIMD paths turn each weight block into floats once for
/// several activation rows; the others run `matvec_rows` per activation row.
pub fn matvec_multi(w: &QuantMatrix, first_row: usize, n: usize, rows_out: MultiOut<'_>) {
    match level() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::avx512::matvec_multi(w, first_row, n, rows_out) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::avx2::matvec_multi(w, first_row, n, rows_out) },
        _ => {
            let MultiOut {
                xs,
                sums,
                batch,
                out,
                stride,
                at,
            } = rows_out;
            let (cols, nb) = (w.cols(), w.blocks_per_row());
            for v in 0..batch {
                let (x, s) = (&xs[v * cols..(v + 1) * cols], &sums[v * nb..(v + 1) * nb]);
                let o = &mut out[v * stride + at..v * stride + at + n];
                matvec_rows(w, first_row, x, s, o);
            }
        }
    }
}

pub fn matmul_rows(w: &QuantMatrix, first: usize, xs: &[f32], batch: usize, out: &mut [f32]) {
    match level() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::matmul_avx512(w, first, xs, batch, out) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::matmul_avx2(w, first, xs, batch, out) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Level::Simd128 => super::simd128::matmul_rows(w, first, xs, batch, out),
        Level::Baseline => dot::matmul_rows(w, first, xs, batch, out),
    }
}

/// Which path `level()` chose, for benchmark output.
pub fn describe() -> &'static str {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => "avx2",
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Level::Simd128 => "simd128",
        Level::Baseline => "baseline",
    }
}

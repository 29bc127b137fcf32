//! CPU matrix products for GGML block formats with **f32 activations**.
//!
//! candle's `QMatMul` (like llama.cpp) first rounds the activations to 8 bits for integer dot
//! products. On SmolLM2 that moves logits by up to ~0.3 and changes greedy continuations, so these
//! kernels keep activations in f32 and fold the block scale in afterwards: per block of 32,
//! `sum_j x_j (q_j d + m) = d * sum_j x_j q_j + m * sum_j x_j`. Weights are repacked at load into
//! separate arrays of quants and f16 scales/offsets, so the hot loops read plain bytes.
//!
//! Natively, hand-written AVX-512 and AVX2 matrix-vector kernels and one generic body compiled
//! for each level (AVX-512, AVX2+FMA, baseline) are chosen at run time. On wasm32 with simd128
//! (the browser build), hand-written simd128 kernels run; the generic body is the fallback.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod dot;
mod matrix;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

pub use dispatch::describe as selected_path;
pub use matrix::{BlockFormat, KernelError, QuantMatrix};

#[cfg(test)]
mod tests;

//! CPU matrix products for GGML block formats with **f32 activations**.
//!
//! candle's `QMatMul` (like llama.cpp) first rounds the activations to 8 bits for integer dot
//! products. On SmolLM2 that moves logits by up to ~0.3 and changes greedy continuations, so these
//! kernels keep activations in f32 and fold the block scale in afterwards: per block of 32,
//! `sum_j x_j (q_j d + m) = d * sum_j x_j q_j + m * sum_j x_j`. Weights are repacked at load into
//! separate arrays of quants and f16 scales/offsets, so the hot loops read plain bytes.
//!
//! One generic body is compiled three times (AVX-512, AVX2+FMA, baseline) and chosen at run time;
//! on wasm32 the baseline is built with simd128 when the target enables it.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod dot;
mod matrix;

pub use dispatch::describe as selected_path;
pub use matrix::{BlockFormat, KernelError, QuantMatrix};

#[cfg(test)]
mod tests;

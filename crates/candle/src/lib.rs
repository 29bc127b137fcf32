//! selfroute-candle: the LLaMA/Qwen2 forward pass on candle-core, for native CPU and for the
//! browser's wasm CPU fallback. Quantized weights stay quantized.

mod error;
pub mod kernels;
mod kv_cache;
mod linear;
mod model;
mod rope;

pub use error::CandleError;
pub use kv_cache::dot;
pub use linear::f32_tensor;
pub use model::CandleModel;

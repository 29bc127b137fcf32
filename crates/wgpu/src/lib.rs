//! selfroute-wgpu: the forward pass in WGSL compute shaders on wgpu, for WebGPU in the browser and
//! Vulkan/Metal/DX12 natively. One kernel family per `.wgsl` file under `kernels/`.
//!
//! So far: the device set-up, the decode matrix-vector kernels for F32 and Q8_0 weights, and
//! RMSNorm; the rest of the forward pass builds on them.

mod context;
mod error;
pub mod matvec;
pub mod rmsnorm;

pub use context::GpuContext;
pub use error::{GpuError, Result};

//! selfroute-wgpu: the forward pass in WGSL compute shaders on wgpu, for WebGPU in the browser and
//! Vulkan/Metal/DX12 natively. One kernel family per `.wgsl` file under `kernels/`; one Rust
//! module per family binds it. `GpuModel` assembles them into the decoder and implements the core
//! `Backend`, so the generation loop, sampler settings and offload detection are shared with the
//! CPU engine.

pub mod attention;
mod context;
pub mod embedding;
mod error;
pub mod kernel;
pub mod linear;
mod model;
pub mod quant;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod swiglu;

pub use context::{GpuContext, UNNAMED_ADAPTER};
pub use error::{GpuError, Result};
pub use model::{GpuModel, GpuOptions, StepProfile};

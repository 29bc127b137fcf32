//! selfroute-engine: what every front end (the `selfroute` CLI, the browser's wasm module) needs
//! between a parsed model and a conversation: choosing the engine that runs the forward pass
//! (the WGSL engine on a GPU, or candle on the CPU), falling back to the CPU when a GPU goes
//! away, and assembling a routing [`Assistant`](selfroute_core::Assistant) from routing options.
//!
//! It does no I/O of its own: model bytes and the cloud client come from the caller.

mod assistant;
mod choice;
mod engine;
mod error;

pub use assistant::{OffloadRouting, RoutingOptions, build_assistant};
pub use choice::{BackendChoice, EngineKind, EngineOptions, Selection, load_engine};
pub use engine::Engine;
pub use error::EngineError;
pub use selfroute_wgpu::{GpuOptions, UNNAMED_ADAPTER};

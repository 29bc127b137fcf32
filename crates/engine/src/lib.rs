//! selfroute-engine: what every front end (the `selfroute` CLI, the browser's wasm module) needs
//! between a parsed model and a conversation: choosing the engine that runs the forward pass
//! (the WGSL engine on a GPU, or candle on the CPU), falling back to the CPU when a GPU goes
//! away, and assembling a routing [`Assistant`](selfroute_core::Assistant) from routing options.
//!
//! It does no I/O of its own: model bytes and the cloud client come from the caller.

mod assistant;
pub mod batch;
#[cfg(not(target_arch = "wasm32"))]
mod batch_worker;
mod choice;
mod engine;
mod error;

pub use assistant::{OffloadRouting, RoutingOptions, build_assistant};
pub use batch::{
    BatchOptions, CancelToken, Finished, Flow, Picked, SamplerPicker, Scheduler, SequenceEvent,
    SequenceRequest, Submission, TokenPicker, TokenSink,
};
#[cfg(not(target_arch = "wasm32"))]
pub use batch_worker::{BatchWorker, SequenceHandle};
pub use choice::{BackendChoice, EngineKind, EngineOptions, Selection, load_engine};
pub use engine::Engine;
pub use error::EngineError;
pub use selfroute_wgpu::{GpuOptions, UNNAMED_ADAPTER};

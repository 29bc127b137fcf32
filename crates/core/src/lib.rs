//! selfroute-core: what a model is and how text becomes tokens and back, independent of any
//! compute backend and of any I/O policy (callers hand in bytes).

pub mod assistant;
pub mod backend;
pub mod budget;
pub mod chat;
pub mod cloud;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod logprobs;
pub mod offload;
pub mod openai;
pub mod package;
pub mod rng;
pub mod rope;
pub mod safetensors;
pub mod sampler;
pub mod stop;
pub mod tokenizer;
pub mod weights;

pub use assistant::{
    ApproveAll, Assistant, ChatOutcome, LocalReason, OffloadGate, Route, RouteEvent, RoutingConfig,
};
pub use backend::{Backend, Logits, LogitsFor, TokenPick};
pub use budget::CloudBudget;
pub use chat::{ChatTemplate, Message, Role};
pub use cloud::{CloudClient, CloudCompletion, CloudError, CloudReply, NoCloud, RetryPolicy};
pub use config::{Architecture, ModelConfig, RopeLayout};
pub use error::{BackendError, BackendErrorKind, Error, Result, SourceName, WireError};
pub use generate::{Control, FinishReason, Generation, GenerationParams, Generator, TokenEvent};
pub use gguf::GgufFile;
pub use logprobs::{TokenLogprob, TokenLogprobs};
pub use offload::{
    DEFAULT_OFFLOAD_MARKER, Detection, OFFLOAD_TOKEN, OffloadDetector, OffloadReason, OffloadSignal,
};
pub use package::ModelPackage;
pub use sampler::{Sampler, SamplingParams};
pub use stop::StopStrings;
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::{TensorDType, TensorData, WeightKey, WeightSource};

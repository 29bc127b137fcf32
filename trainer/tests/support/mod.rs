//! What the trainer's tests share: the tiny GGUF model (built in memory) and the trainable model
//! made from a package.
#![allow(dead_code)]

#[path = "../../../crates/core/tests/common/mod.rs"]
pub mod gguf;

use candle_core::{DType, Device};
use selfroute_core::ModelPackage;
use selfroute_train::model::TrainableModel;

/// The tiny two-layer llama with `<|offload|>` (id 3) and a context of `context` tokens.
pub fn tiny_with_offload(context: u32) -> ModelPackage {
    ModelPackage::from_gguf(
        "tiny.gguf",
        gguf::GgufBuilder::tiny_llama_with_offload(context).bytes(),
    )
    .expect("tiny model")
}

pub fn trainable(package: &ModelPackage, dtype: DType) -> TrainableModel {
    TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        dtype,
        &Device::Cpu,
    )
    .expect("trainable model")
}

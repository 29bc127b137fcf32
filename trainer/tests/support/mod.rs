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

/// The tiny Hugging Face checkpoints of the reference fixtures (f16 llama; bf16 qwen2 with QKV
/// biases, a tied head and the rotate-half RoPE layout), with the tiny GGUF's tokenizer (the
/// tests feed ids directly).
pub fn hf_fixture(name: &str) -> ModelPackage {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/data");
    let gguf = selfroute_core::GgufFile::from_bytes(
        "tiny_llama.gguf",
        std::fs::read(data.join("tiny_llama.gguf")).unwrap(),
    )
    .unwrap();
    let tokenizer_json = selfroute_core::Tokenizer::from_gguf(&gguf)
        .unwrap()
        .to_json()
        .unwrap();
    let dir = data.join(name);
    ModelPackage::from_hf_files(
        name,
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
        vec![(
            "model.safetensors".into(),
            std::fs::read(dir.join("model.safetensors")).unwrap(),
        )],
        Some(tokenizer_json.as_bytes()),
        None,
    )
    .unwrap()
}

//! What the trainer's tests share: the tiny GGUF model (built in memory) and the trainable model
//! made from a package.
#![allow(dead_code)]

#[path = "../../../crates/core/tests/common/mod.rs"]
pub mod gguf;

use candle_core::{DType, Device};
use selfroute_core::ModelPackage;
use selfroute_train::model::TrainableModel;
use selfroute_train::tasks::{Problem, Split, Task, Verdict};

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

/// "easy": a response with a lowercase ASCII letter is correct. "hard": no local answer is; the
/// simulated cloud (always right) is.
pub struct EasyHard;

impl Task for EasyHard {
    fn name(&self) -> &str {
        "easy-hard"
    }
    fn problems(&self, _: Split, n: usize, _: u64) -> selfroute_train::Result<Vec<Problem>> {
        Ok((0..n)
            .map(|i| Problem {
                id: i as u64,
                question: if i % 2 == 0 { "easy one" } else { "HARD ONE" }.into(),
                answer: String::new(),
                difficulty: 0,
                system: None,
                subset: String::new(),
            })
            .collect())
    }
    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        if problem.question == "easy one" && response.chars().any(|c| c.is_ascii_lowercase()) {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }
    fn answer_format(&self) -> &str {
        ""
    }
}

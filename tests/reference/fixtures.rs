//! The committed reference data of tests/reference/data as the engines' parity tests read it,
//! shared by crates/candle/tests/parity.rs and crates/wgpu/tests/model.rs (`#[path]` modules).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use selfroute_core::{GgufFile, ModelPackage, SourceName};
use serde::Deserialize;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn data(name: &str) -> PathBuf {
    root().join("tests/reference/data").join(name)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn smollm2() -> ModelPackage {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    ModelPackage::from_gguf(path.display().to_string(), bytes).expect("SmolLM2 loads")
}

#[derive(Deserialize)]
pub struct SmolReference {
    pub prompts: Vec<SmolPrompt>,
}

#[derive(Deserialize)]
pub struct SmolPrompt {
    pub name: String,
    pub token_ids: Vec<u32>,
    pub positions: Vec<Position>,
    pub greedy: Greedy,
}

#[derive(Deserialize)]
pub struct Position {
    pub position: usize,
    pub top: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
pub struct Greedy {
    pub token_ids: Vec<u32>,
}

#[derive(Deserialize)]
pub struct FullReference {
    pub token_ids: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

pub fn assert_close(ours: &[Vec<f32>], reference: &[Vec<f32>], tolerance: f32, what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: rows");
    let mut worst = 0.0f32;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len(), "{what}: vocab");
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("{what}: worst |logit difference| {worst}");
    assert!(
        worst < tolerance,
        "{what}: worst logit difference {worst} exceeds {tolerance}"
    );
}

pub fn hf_folder(name: &str) -> ModelPackage {
    let dir = data(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let shard = (
        SourceName(format!("{name}/model.safetensors")),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    );
    // These folders carry no tokenizer; borrow the tiny GGUF's (same 256-token vocabulary size
    // is not needed: the test feeds ids directly), via tokenizer.json round trip.
    let gguf = GgufFile::from_bytes(
        "tiny_llama.gguf",
        std::fs::read(data("tiny_llama.gguf")).unwrap(),
    )
    .unwrap();
    let tokenizer_json = selfroute_core::Tokenizer::from_gguf(&gguf)
        .unwrap()
        .to_json()
        .unwrap();
    ModelPackage::from_hf_files(
        name,
        &config,
        vec![shard],
        Some(tokenizer_json.as_bytes()),
        None,
    )
    .unwrap()
}

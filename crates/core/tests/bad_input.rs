//! Bad model files give a clear error that names the file and the field or tensor, never a panic.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use common::GgufBuilder;
use selfroute_core::{Error, ModelPackage};

const NAME: &str = "models/broken.gguf";

fn load(bytes: Vec<u8>) -> Result<ModelPackage, Error> {
    ModelPackage::from_gguf(NAME, bytes)
}

fn message(bytes: Vec<u8>) -> String {
    match load(bytes) {
        Ok(_) => panic!("a broken file loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_valid_tiny_model_loads() {
    let package = load(GgufBuilder::tiny_llama().bytes()).expect("tiny model loads");
    assert_eq!(package.config.num_layers, 2);
    assert!(package.config.tie_embeddings);
    assert_eq!(package.tokenizer.encode_literal("hi").unwrap().len(), 2);
}

#[test]
fn wrong_magic_is_named() {
    let mut bytes = GgufBuilder::tiny_llama().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let msg = message(bytes);
    assert!(msg.contains(NAME) && msg.contains("wrong magic"), "{msg}");
    let msg = message(b"{\"not\": \"gguf\"}".to_vec());
    assert!(msg.contains("wrong magic"), "{msg}");
    let msg = message(Vec::new());
    assert!(msg.contains("wrong magic"), "{msg}");
}

#[test]
fn truncation_anywhere_is_an_error_not_a_panic() {
    let bytes = GgufBuilder::tiny_llama().bytes();
    let len = bytes.len();
    // Cut inside the header, the metadata, the tensor table and the tensor data.
    for cut in [5, 20, 100, 1000, 4000, len / 2, len - 10, len - 1] {
        let msg = message(bytes[..cut].to_vec());
        assert!(msg.contains(NAME), "cut at {cut}: {msg}");
    }
    let msg = message(bytes[..len - 1].to_vec());
    assert!(
        msg.contains("truncated") && msg.contains("output_norm.weight"),
        "{msg}"
    );
}

#[test]
fn corrupt_bytes_never_panic() {
    let bytes = GgufBuilder::tiny_llama().bytes();
    let mut state = 0x1234_5678_u64;
    for round in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..8 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (state >> 33) as usize % b.len().min(8192);
            b[i] ^= (state >> 13) as u8 | 1;
        }
        let _ = std::panic::catch_unwind(|| load(b))
            .unwrap_or_else(|_| panic!("panic on corrupt input {round}"));
    }
}

#[test]
fn unsupported_quantisation_names_the_tensor_and_type() {
    let mut b = GgufBuilder::tiny_llama();
    b.replace_tensor(
        "blk.1.ffn_up.weight",
        &[common::FFN, common::HIDDEN],
        GgmlDType::Q5_0,
    );
    let msg = message(b.bytes());
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("Q5_0") && msg.contains("unsupported"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("general.architecture", Value::String("mamba".into()));
    let msg = message(b.bytes());
    assert!(
        msg.contains("unknown architecture `mamba`") && msg.contains(NAME),
        "{msg}"
    );
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let mut b = GgufBuilder::tiny_llama();
    b.remove_meta("llama.embedding_length");
    let msg = message(b.bytes());
    assert!(
        msg.contains("missing metadata field `llama.embedding_length`"),
        "{msg}"
    );

    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("llama.block_count", Value::String("two".into()));
    let msg = message(b.bytes());
    assert!(
        msg.contains("`llama.block_count`") && msg.contains("expected an integer"),
        "{msg}"
    );

    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("llama.attention.head_count_kv", Value::U32(3));
    let msg = message(b.bytes());
    assert!(msg.contains("not a multiple of num_kv_heads 3"), "{msg}");
}

#[test]
fn tensor_shape_mismatch_names_the_tensor_and_both_shapes() {
    let mut b = GgufBuilder::tiny_llama();
    b.replace_tensor(
        "blk.0.attn_k.weight",
        &[64, common::HIDDEN],
        GgmlDType::Q8_0,
    );
    let msg = message(b.bytes());
    assert!(
        msg.contains("blk.0.attn_k.weight")
            && msg.contains("[64, 64]")
            && msg.contains("expected [32, 64]"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let mut b = GgufBuilder::tiny_llama();
    b.remove_tensor("blk.1.ffn_down.weight");
    let msg = message(b.bytes());
    assert!(
        msg.contains("tensor `blk.1.ffn_down.weight` is missing"),
        "{msg}"
    );
}

#[test]
fn missing_or_broken_tokenizer_is_explained() {
    let mut b = GgufBuilder::tiny_llama();
    b.remove_meta("tokenizer.ggml.model");
    let msg = message(b.bytes());
    assert!(
        msg.contains("no tokenizer found") && msg.contains("tokenizer.json"),
        "{msg}"
    );

    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("tokenizer.ggml.model", Value::String("llama".into()));
    let msg = message(b.bytes());
    assert!(msg.contains("`llama` is not supported"), "{msg}");

    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("tokenizer.ggml.eos_token_id", Value::U32(100_000));
    let msg = message(b.bytes());
    assert!(
        msg.contains("eos_token_id") && msg.contains("outside the vocabulary"),
        "{msg}"
    );

    let mut b = GgufBuilder::tiny_llama();
    b.set_meta("tokenizer.ggml.pre", Value::String("klingon".into()));
    let msg = message(b.bytes());
    assert!(msg.contains("pre-tokenizer `klingon`"), "{msg}");
}

#[test]
fn a_broken_chat_template_is_an_error() {
    let mut b = GgufBuilder::tiny_llama();
    b.set_meta(
        "tokenizer.chat_template",
        Value::String("{% for m in messages %}".into()),
    );
    let msg = message(b.bytes());
    assert!(msg.contains("chat template"), "{msg}");
}

#[test]
fn bad_hf_config_is_named() {
    let name = selfroute_core::SourceName::from("tiny/config.json");
    let err = selfroute_core::ModelConfig::from_hf_json("{\"hidden_size\": 64", &name)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny/config.json") && err.contains("invalid config"),
        "{err}"
    );
    let err = selfroute_core::ModelConfig::from_hf_json(
        r#"{"model_type":"gpt_neox","vocab_size":8,"hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#,
        &name,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown architecture `gpt_neox`"), "{err}");
}

#[test]
fn corrupt_safetensors_is_named() {
    let config = r#"{"model_type":"llama","vocab_size":8,"hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#;
    let shard = (
        selfroute_core::SourceName::from("tiny/model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}garbage".to_vec(),
    );
    let err = ModelPackage::from_hf_files("tiny", config, vec![shard], None, None)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("tiny/model.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}

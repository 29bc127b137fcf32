//! Every model-loading entry point must turn arbitrary bytes into a model or an error, never a
//! panic: the GGUF reader (header, metadata, tensor table, tokenizer, chat template, shape checks),
//! `config.json` and safetensors parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selfroute_core::{ModelConfig, ModelPackage, SourceName};

fuzz_target!(|data: &[u8]| {
    let name = SourceName::from("fuzz-input");
    if let Ok(package) = ModelPackage::from_gguf(name.clone(), data.to_vec()) {
        // A file that loads must also tokenize and render without panicking.
        let _ = package.tokenizer.encode_literal("Hello 123 <|im_start|>");
        if let Some(template) = &package.chat_template {
            let _ = template.encode(&[selfroute_core::Message::user("hi")], true, &package.tokenizer);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelConfig::from_hf_json(text, &name);
        let _ = ModelPackage::from_hf_files(name.clone(), text, Vec::new(), None, None);
    }
    let _ = ModelPackage::from_hf_files(
        name.clone(),
        r#"{"model_type":"llama","vocab_size":8,"hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#,
        vec![(name.clone(), data.to_vec())],
        None,
        None,
    );
});

//! Builds small GGUF files in memory with candle-core's writer, so bad-input tests can break one
//! field at a time.
#![allow(dead_code)]

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 128;
pub const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the rest to U+0100 onwards.
pub fn byte_level_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut chars = Vec::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u32 {
        if printable.contains(&b) {
            chars.push(b);
        } else {
            chars.push(next);
            next += 1;
        }
    }
    printable.clear();
    chars
        .into_iter()
        .map(|c| char::from_u32(c).map(String::from).unwrap_or_default())
        .collect()
}

pub struct GgufBuilder {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

fn tensor(shape: &[usize], seed: u64, dtype: GgmlDType) -> QTensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, dtype).expect("quantize")
}

impl GgufBuilder {
    /// A complete, valid two-layer llama with a byte-level tokenizer and a ChatML template.
    pub fn tiny_llama() -> Self {
        let mut tokens: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
        tokens.extend(byte_level_alphabet());
        let vocab = tokens.len();
        let token_types: Vec<Value> = (0..vocab)
            .map(|i| Value::I32(if i < CONTROL_TOKENS.len() { 3 } else { 1 }))
            .collect();
        let metadata = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("llama.block_count".into(), Value::U32(LAYERS as u32)),
            ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
            ("llama.feed_forward_length".into(), Value::U32(FFN as u32)),
            ("llama.attention.head_count".into(), Value::U32(HEADS as u32)),
            ("llama.attention.head_count_kv".into(), Value::U32(KV_HEADS as u32)),
            ("llama.rope.freq_base".into(), Value::F32(10000.0)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
            ("llama.context_length".into(), Value::U32(32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(token_types)),
            ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            (
                "tokenizer.chat_template".into(),
                Value::String(
                    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
                ),
            ),
        ];
        let q = HEADS * HIDDEN / HEADS;
        let kv = KV_HEADS * HIDDEN / HEADS;
        let mut tensors = vec![(
            "token_embd.weight".to_string(),
            tensor(&[vocab, HIDDEN], 1, GgmlDType::F32),
        )];
        for l in 0..LAYERS {
            let s = 10 * (l as u64 + 1);
            tensors.push((
                format!("blk.{l}.attn_norm.weight"),
                tensor(&[HIDDEN], s, GgmlDType::F32),
            ));
            tensors.push((
                format!("blk.{l}.attn_q.weight"),
                tensor(&[q, HIDDEN], s + 1, GgmlDType::Q8_0),
            ));
            tensors.push((
                format!("blk.{l}.attn_k.weight"),
                tensor(&[kv, HIDDEN], s + 2, GgmlDType::Q8_0),
            ));
            tensors.push((
                format!("blk.{l}.attn_v.weight"),
                tensor(&[kv, HIDDEN], s + 3, GgmlDType::Q8_0),
            ));
            tensors.push((
                format!("blk.{l}.attn_output.weight"),
                tensor(&[HIDDEN, q], s + 4, GgmlDType::Q8_0),
            ));
            tensors.push((
                format!("blk.{l}.ffn_norm.weight"),
                tensor(&[HIDDEN], s + 5, GgmlDType::F32),
            ));
            tensors.push((
                format!("blk.{l}.ffn_gate.weight"),
                tensor(&[FFN, HIDDEN], s + 6, GgmlDType::Q4_0),
            ));
            tensors.push((
                format!("blk.{l}.ffn_up.weight"),
                tensor(&[FFN, HIDDEN], s + 7, GgmlDType::Q4_1),
            ));
            tensors.push((
                format!("blk.{l}.ffn_down.weight"),
                tensor(&[HIDDEN, FFN], s + 8, GgmlDType::Q8_0),
            ));
        }
        tensors.push((
            "output_norm.weight".into(),
            tensor(&[HIDDEN], 99, GgmlDType::F32),
        ));
        Self { metadata, tensors }
    }

    /// [`Self::tiny_llama`] with `<|offload|>` as a control token (id 3, as the trainer adds it)
    /// and a context of `context` tokens.
    pub fn tiny_llama_with_offload(context: u32) -> Self {
        let mut tokens: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
        tokens.push("<|offload|>".to_string());
        let controls = tokens.len();
        tokens.extend(byte_level_alphabet());
        let vocab = tokens.len();
        let types = (0..vocab)
            .map(|i| Value::I32(if i < controls { 3 } else { 1 }))
            .collect();
        let mut builder = Self::tiny_llama();
        builder
            .set_meta(
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            )
            .set_meta("tokenizer.ggml.token_type", Value::Array(types))
            .set_meta("llama.context_length", Value::U32(context));
        builder.tensors.retain(|(n, _)| n != "token_embd.weight");
        builder.tensors.insert(
            0,
            (
                "token_embd.weight".to_string(),
                tensor(&[vocab, HIDDEN], 1, GgmlDType::F32),
            ),
        );
        builder
    }

    pub fn set_meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn remove_meta(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    pub fn replace_tensor(&mut self, name: &str, shape: &[usize], dtype: GgmlDType) -> &mut Self {
        self.tensors.retain(|(n, _)| n != name);
        self.tensors
            .push((name.to_string(), tensor(shape, 7, dtype)));
        self
    }

    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|(n, _)| n != name);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut out, &metadata, &tensors).expect("write gguf");
        out.into_inner()
    }
}

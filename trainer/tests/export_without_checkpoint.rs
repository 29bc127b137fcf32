//! `selfroute-train export` without `--checkpoint`: the GGUF's own weights, dequantized, in the
//! exported GGUF and in the Hugging Face folder. Both outputs are read back independently of the
//! trainer (candle's GGUF reader and its dequantization on one side, the `safetensors` crate on the
//! other, and this file's own name map and Q/K row order), so a wrong name, a missed permutation
//! or a weight the export did not take from the file shows up as a mismatch.

mod support;

use support::gguf;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};

/// Every tensor of a GGUF file, dequantized to f32: name -> (shape, values).
fn gguf_tensors(bytes: &[u8]) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut reader = Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).expect("a GGUF file");
    content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content
                .tensor(&mut reader, name, &Device::Cpu)
                .expect("tensor")
                .dequantize(&Device::Cpu)
                .expect("dequantize");
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (name.clone(), (t.dims().to_vec(), values))
        })
        .collect()
}

fn gguf_u32(bytes: &[u8], key: &str) -> usize {
    let content = gguf_file::Content::read(&mut Cursor::new(bytes)).unwrap();
    content.metadata[key].to_u32().unwrap() as usize
}

/// The Hugging Face name of a llama GGUF tensor (llama.cpp's converter, read backwards).
fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.").expect("a block tensor");
    let (layer, part) = rest.split_once('.').unwrap();
    let hf_part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{hf_part}")
}

/// llama.cpp stores Q and K with each head's rows interleaved (HF row i at 2i, row i + d/2 at
/// 2i + 1); this puts them back in Hugging Face order, row by row.
fn hf_rows(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    let head_dim = rows / heads;
    let mut out = vec![f32::NAN; values.len()];
    for head in 0..heads {
        for i in 0..head_dim / 2 {
            for (gguf_row, hf_row) in [(2 * i, i), (2 * i + 1, i + head_dim / 2)] {
                let src = (head * head_dim + gguf_row) * cols;
                let dst = (head * head_dim + hf_row) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn export_without_a_checkpoint_writes_the_models_own_weights() {
    let dir = std::env::temp_dir().join(format!("selfroute-export-nockpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("tiny.gguf");
    // The tiny llama mixes F32, Q8_0, Q4_0 and Q4_1 tensors, so every dequantization is exercised.
    let mut builder = gguf::GgufBuilder::tiny_llama();
    builder.set_meta("llama.context_length", Value::U32(64));
    let source_bytes = builder.bytes();
    std::fs::write(&source, &source_bytes).unwrap();
    let out = dir.join("out").join("untrained.gguf");
    let hf = dir.join("hf");

    let result = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(["export", "--model", path(&source), "--out", path(&out)])
        .args(["--type", "f32", "--hf", path(&hf)])
        .output()
        .expect("selfroute-train runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("the model's own weights"), "{stderr}");

    let expected = gguf_tensors(&source_bytes);
    let heads = gguf_u32(&source_bytes, "llama.attention.head_count");
    let kv_heads = gguf_u32(&source_bytes, "llama.attention.head_count_kv");

    // The F32 GGUF holds the source's dequantized values, name for name.
    let exported = gguf_tensors(&std::fs::read(&out).unwrap());
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, (shape, values)) in &expected {
        let (got_shape, got) = &exported[name];
        assert_eq!(got_shape, shape, "{name}");
        assert_eq!(max_diff(got, values), 0.0, "{name} in the exported GGUF");
    }

    // The Hugging Face folder: the same values under HF names, Q/K rows in HF order.
    let st_bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("a safetensors file");
    let mut hf_names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    hf_names.sort();
    let mut wanted: Vec<String> = expected.keys().map(|n| hf_name(n)).collect();
    wanted.sort();
    assert_eq!(
        hf_names, wanted,
        "the folder holds exactly the GGUF's tensors"
    );
    for (name, (shape, values)) in &expected {
        let view = st.tensor(&hf_name(name)).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(view.shape(), shape.as_slice(), "{name}");
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want = if name.ends_with("attn_q.weight") {
            hf_rows(values, shape, heads)
        } else if name.ends_with("attn_k.weight") {
            hf_rows(values, shape, kv_heads)
        } else {
            values.clone()
        };
        assert_eq!(max_diff(&got, &want), 0.0, "{name} in the HF folder");
    }

    // No output.weight in the source: the folder must say the head is the embedding.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert!(!expected.contains_key("output.weight"));
    assert_eq!(config["tie_word_embeddings"], serde_json::json!(true));
    assert_eq!(config["num_attention_heads"], serde_json::json!(heads));
    std::fs::remove_dir_all(&dir).ok();
}

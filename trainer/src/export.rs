//! Writing a trained model as GGUF: the source file's metadata (tokenizer, chat template, config),
//! with a vocabulary grown by any added tokens, and the weights. A tensor training left as it was
//! is copied from the source file in its own type, byte for byte (a model trained in a few blocks
//! keeps the rest of its file); a changed one is written in the chosen format: quantized (Q8_0,
//! Q4_1) or F16/F32. Norms and biases stay F32, as llama.cpp's converter does.

use std::io::Cursor;
use std::path::Path;

use candle_core::DType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use selfroute_core::{GgufFile, TensorDType, WeightKey};

use crate::error::{Result, TrainError};
use crate::model::TrainableModel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    Q8_0,
    Q4_1,
}

impl ExportType {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_1" => Self::Q4_1,
            other => {
                return Err(TrainError::InvalidSettings(format!(
                    "unknown export type `{other}` (f32, f16, q8_0, q4_1)"
                )));
            }
        })
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_1 => GgmlDType::Q4_1,
        }
    }
}

/// Tokens appended to the source vocabulary (e.g. `<|offload|>`), with their GGUF token type
/// (3 = control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub text: String,
    pub token_type: i32,
}

/// The bytes of a GGUF file holding `model`'s weights and `source`'s metadata.
pub fn gguf_bytes(
    model: &TrainableModel,
    source: &GgufFile,
    added: &[AddedToken],
    format: ExportType,
) -> Result<Vec<u8>> {
    let config = model.config();
    let arch = config.architecture.gguf_name();
    let mut metadata: Vec<(String, Value)> = Vec::new();
    for (key, value) in source.metadata_entries() {
        let value = match key {
            "tokenizer.ggml.tokens" => {
                extend_array(value, added.iter().map(|t| Value::String(t.text.clone())))?
            }
            "tokenizer.ggml.token_type" => {
                extend_array(value, added.iter().map(|t| Value::I32(t.token_type)))?
            }
            "tokenizer.ggml.scores" => extend_array(value, added.iter().map(|_| Value::F32(0.0)))?,
            k if k == format!("{arch}.vocab_size") => Value::U32(config.vocab_size as u32),
            _ => value.clone(),
        };
        metadata.push((key.to_string(), value));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let vars = model.named_vars()?;
    for key in WeightKey::all_for(config) {
        let Some((_, var)) = vars.iter().find(|(name, _)| *name == key.hf_name()) else {
            continue;
        };
        let t = var.as_tensor().to_dtype(DType::F32)?;
        if let Some(kept) = unchanged_source_tensor(source, &key.gguf_name(), &t)? {
            tensors.push((key.gguf_name(), kept));
            continue;
        }
        let dtype = if t.rank() == 2 && t.dim(1)? % format.ggml().block_size() == 0 {
            format.ggml()
        } else {
            GgmlDType::F32
        };
        tensors.push((key.gguf_name(), QTensor::quantize(&t, dtype)?));
    }
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs)?;
    Ok(out.into_inner())
}

/// The source file's tensor `name`, as stored, when `trained` holds exactly its values (what the
/// trainer loaded and did not move); None when it changed, changed shape or is not in the source.
fn unchanged_source_tensor(
    source: &GgufFile,
    name: &str,
    trained: &candle_core::Tensor,
) -> Result<Option<QTensor>> {
    let Some(data) = source.tensor_by_name(name)? else {
        return Ok(None);
    };
    if data.shape != trained.dims() {
        return Ok(None);
    }
    let device = trained.device();
    let loaded = selfroute_candle::f32_tensor(&data, device)?;
    // Counted in f32: a u8 sum of the mismatches would wrap.
    let differing = loaded.ne(trained)?.to_dtype(DType::F32)?.sum_all()?;
    let same = differing.to_scalar::<f32>()? == 0.0;
    if !same {
        return Ok(None);
    }
    Ok(Some(qtensor_from_ggml(
        ggml_type(data.dtype),
        &data.bytes,
        data.shape.clone(),
        device,
    )?))
}

fn ggml_type(dtype: TensorDType) -> GgmlDType {
    match dtype {
        TensorDType::F32 => GgmlDType::F32,
        TensorDType::F16 => GgmlDType::F16,
        TensorDType::BF16 => GgmlDType::BF16,
        TensorDType::Q8_0 => GgmlDType::Q8_0,
        TensorDType::Q4_0 => GgmlDType::Q4_0,
        TensorDType::Q4_1 => GgmlDType::Q4_1,
        TensorDType::Q4K => GgmlDType::Q4K,
        TensorDType::Q6K => GgmlDType::Q6K,
    }
}

fn extend_array(value: &Value, extra: impl Iterator<Item = Value>) -> Result<Value> {
    let Value::Array(items) = value else {
        return Err(TrainError::InvalidSettings(
            "a tokenizer field of the source GGUF is not an array".into(),
        ));
    };
    let mut items = items.clone();
    items.extend(extra);
    Ok(Value::Array(items))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let io = |e: std::io::Error| TrainError::Data {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    crate::checkpoint::commit_file(&tmp, path)
}

/// Writes a Hugging Face folder: `config.json`, `model.safetensors` (f32), `tokenizer.json` and
/// `tokenizer_config.json` (bos/eos names and the chat template). Q and K rows are returned to
/// the Hugging Face layout when the model came from a llama.cpp GGUF (which permutes them so RoPE
/// rotates adjacent pairs).
pub fn write_hf_folder(
    model: &TrainableModel,
    tokenizer: &selfroute_core::Tokenizer,
    chat_template: Option<&str>,
    dir: &Path,
) -> Result<()> {
    let c = model.config();
    let io = |p: &Path, e: &dyn std::fmt::Display| TrainError::Data {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let vars = model.named_vars()?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for key in WeightKey::all_for(c) {
        let Some((_, var)) = vars.iter().find(|(name, _)| *name == key.hf_name()) else {
            continue;
        };
        let mut t = var.as_tensor().to_dtype(DType::F32)?;
        if c.rope_layout == selfroute_core::RopeLayout::Interleaved {
            t = match key {
                WeightKey::AttnQ(_) => unpermute_rows(&t, c.num_heads)?,
                WeightKey::AttnK(_) => unpermute_rows(&t, c.num_kv_heads)?,
                _ => t,
            };
        }
        let bytes: Vec<u8> = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        buffers.push((key.hf_name(), t.dims().to_vec(), bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| io(dir, &e))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &weights).map_err(|e| io(&weights, &e))?;

    let (architecture, model_type) = match c.architecture {
        selfroute_core::Architecture::Llama => ("LlamaForCausalLM", "llama"),
        selfroute_core::Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let token_id = |t: Option<&str>| t.and_then(|t| tokenizer.token_to_id(t));
    let config = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": token_id(tokenizer.bos_token()),
        "eos_token_id": token_id(tokenizer.eos_token()),
        "torch_dtype": "float32",
    });
    let mut tokenizer_config = serde_json::json!({
        "bos_token": tokenizer.bos_token(),
        "eos_token": tokenizer.eos_token(),
    });
    if let Some(template) = chat_template {
        tokenizer_config["chat_template"] = serde_json::Value::String(template.to_string());
    }
    let write_json = |name: &str, value: &serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| io(&p, &e))?;
        std::fs::write(&p, text).map_err(|e| io(&p, &e))
    };
    write_json("config.json", &config)?;
    write_json("tokenizer_config.json", &tokenizer_config)?;
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, tokenizer.to_json()?).map_err(|e| io(&p, &e))?;
    Ok(())
}

/// Inverse of llama.cpp's Q/K permutation: per head, rows (2i, 2i+1) go back to (i, i + d/2).
fn unpermute_rows(w: &candle_core::Tensor, heads: usize) -> Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / heads;
    Ok(w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

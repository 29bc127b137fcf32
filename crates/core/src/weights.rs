//! Weights as raw bytes with a type and a shape, whatever file they came from. Backends turn these
//! into their own tensors (candle `QTensor`s, wgpu buffers); this module only finds, types and
//! checks them.

use std::borrow::Cow;
use std::fmt;

use crate::config::ModelConfig;
use crate::error::{Error, Result, SourceName};

/// Element or block types selfroute can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorDType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q6K,
}

impl TensorDType {
    /// Elements per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes needed for `elements` values, or None when they do not fill whole blocks.
    pub fn bytes_for(self, elements: usize) -> Option<usize> {
        if !elements.is_multiple_of(self.block_len()) {
            return None;
        }
        (elements / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for TensorDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        };
        f.write_str(name)
    }
}

/// One tensor's bytes. `shape` is outer-first (`[out, in]` for a linear weight, as in PyTorch).
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub name: String,
    pub dtype: TensorDType,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

impl TensorData<'_> {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Dequantizes plain float types to f32; quantized types are a backend's business.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        let b = &self.bytes;
        match self.dtype {
            TensorDType::F32 => Some(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            TensorDType::F16 => Some(
                b.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            TensorDType::BF16 => Some(
                b.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The role of a weight in a LLaMA/Qwen2 decoder, independent of any file's naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKey {
    TokenEmbedding,
    OutputNorm,
    Output,
    AttnNorm(usize),
    AttnQ(usize),
    AttnK(usize),
    AttnV(usize),
    AttnQBias(usize),
    AttnKBias(usize),
    AttnVBias(usize),
    AttnOutput(usize),
    FfnNorm(usize),
    FfnGate(usize),
    FfnUp(usize),
    FfnDown(usize),
}

impl WeightKey {
    /// The name llama.cpp's converter gives this weight in a GGUF file.
    pub fn gguf_name(self) -> String {
        match self {
            Self::TokenEmbedding => "token_embd.weight".into(),
            Self::OutputNorm => "output_norm.weight".into(),
            Self::Output => "output.weight".into(),
            Self::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Self::AttnQ(l) => format!("blk.{l}.attn_q.weight"),
            Self::AttnK(l) => format!("blk.{l}.attn_k.weight"),
            Self::AttnV(l) => format!("blk.{l}.attn_v.weight"),
            Self::AttnQBias(l) => format!("blk.{l}.attn_q.bias"),
            Self::AttnKBias(l) => format!("blk.{l}.attn_k.bias"),
            Self::AttnVBias(l) => format!("blk.{l}.attn_v.bias"),
            Self::AttnOutput(l) => format!("blk.{l}.attn_output.weight"),
            Self::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Self::FfnGate(l) => format!("blk.{l}.ffn_gate.weight"),
            Self::FfnUp(l) => format!("blk.{l}.ffn_up.weight"),
            Self::FfnDown(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }

    /// The name Hugging Face transformers gives this weight.
    pub fn hf_name(self) -> String {
        match self {
            Self::TokenEmbedding => "model.embed_tokens.weight".into(),
            Self::OutputNorm => "model.norm.weight".into(),
            Self::Output => "lm_head.weight".into(),
            Self::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Self::AttnQ(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            Self::AttnK(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            Self::AttnV(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            Self::AttnQBias(l) => format!("model.layers.{l}.self_attn.q_proj.bias"),
            Self::AttnKBias(l) => format!("model.layers.{l}.self_attn.k_proj.bias"),
            Self::AttnVBias(l) => format!("model.layers.{l}.self_attn.v_proj.bias"),
            Self::AttnOutput(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            Self::FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Self::FfnGate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
            Self::FfnUp(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
            Self::FfnDown(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
        }
    }

    /// The shape (outer-first) the forward pass expects for this weight.
    pub fn expected_shape(self, c: &ModelConfig) -> Vec<usize> {
        match self {
            Self::TokenEmbedding | Self::Output => vec![c.vocab_size, c.hidden_size],
            Self::OutputNorm | Self::AttnNorm(_) | Self::FfnNorm(_) => vec![c.hidden_size],
            Self::AttnQ(_) => vec![c.q_dim(), c.hidden_size],
            Self::AttnK(_) | Self::AttnV(_) => vec![c.kv_dim(), c.hidden_size],
            Self::AttnQBias(_) => vec![c.q_dim()],
            Self::AttnKBias(_) | Self::AttnVBias(_) => vec![c.kv_dim()],
            Self::AttnOutput(_) => vec![c.hidden_size, c.q_dim()],
            Self::FfnGate(_) | Self::FfnUp(_) => vec![c.intermediate_size, c.hidden_size],
            Self::FfnDown(_) => vec![c.hidden_size, c.intermediate_size],
        }
    }

    /// Every weight a model with this config needs, in load order.
    pub fn all_for(c: &ModelConfig) -> Vec<WeightKey> {
        let mut keys = vec![Self::TokenEmbedding];
        for l in 0..c.num_layers {
            keys.push(Self::AttnNorm(l));
            keys.extend([Self::AttnQ(l), Self::AttnK(l), Self::AttnV(l)]);
            if c.architecture.has_qkv_bias() {
                keys.extend([Self::AttnQBias(l), Self::AttnKBias(l), Self::AttnVBias(l)]);
            }
            keys.extend([
                Self::AttnOutput(l),
                Self::FfnNorm(l),
                Self::FfnGate(l),
                Self::FfnUp(l),
                Self::FfnDown(l),
            ]);
        }
        keys.push(Self::OutputNorm);
        if !c.tie_embeddings {
            keys.push(Self::Output);
        }
        keys
    }
}

/// Anything that can hand out a model's weights by role.
pub trait WeightSource {
    fn source_name(&self) -> &SourceName;
    /// The tensor in its stored type, or None if the file has no tensor under that role's name.
    fn find(&self, key: WeightKey) -> Result<Option<TensorData<'_>>>;

    /// The tensor, checked against the shape the config implies.
    fn get(&self, key: WeightKey, config: &ModelConfig) -> Result<TensorData<'_>> {
        let tensor = self.find(key)?.ok_or_else(|| Error::MissingTensor {
            source_name: self.source_name().clone(),
            tensor: self.name_of(key),
        })?;
        let expected = key.expected_shape(config);
        if tensor.shape != expected {
            return Err(Error::ShapeMismatch {
                source_name: self.source_name().clone(),
                tensor: tensor.name,
                expected,
                actual: tensor.shape,
            });
        }
        Ok(tensor)
    }

    /// The file's own name for a role, for error messages.
    fn name_of(&self, key: WeightKey) -> String;

    /// Checks that every weight the config needs is present with the right shape and type, so a
    /// backend can load without failing half-way.
    fn validate(&self, config: &ModelConfig) -> Result<()> {
        for key in WeightKey::all_for(config) {
            self.get(key, config)?;
        }
        Ok(())
    }
}

//! The model description: every number the forward pass needs, read from GGUF metadata or from a
//! Hugging Face `config.json`. Both backends are driven by this one struct.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SourceName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn parse(name: &str, source_name: &SourceName) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(Error::UnknownArchitecture {
                source_name: source_name.clone(),
                architecture: other.to_string(),
            }),
        }
    }

    /// The GGUF `general.architecture` name (also the prefix of its metadata keys).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Qwen2 has biases on the Q, K and V projections; LLaMA has none.
    pub fn has_qkv_bias(self) -> bool {
        matches!(self, Self::Qwen2)
    }
}

/// How the rotary embedding pairs the dimensions of a head.
///
/// llama.cpp's converter permutes the Q/K rows of `llama` GGUFs so that RoPE rotates adjacent
/// pairs (`Interleaved`); Hugging Face checkpoints and `qwen2` GGUFs keep the original layout, where
/// dimension i pairs with i + head_dim/2 (`Half`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    Interleaved,
    Half,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub context_length: usize,
    pub tie_embeddings: bool,
    pub rope_layout: RopeLayout,
}

impl ModelConfig {
    /// Checks the relations the forward pass relies on, so a bad file fails here and not deep in
    /// a matmul.
    pub fn validate(&self, source_name: &SourceName) -> Result<()> {
        let bad = |reason: String| Error::InvalidConfig {
            source_name: source_name.clone(),
            reason,
        };
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("context_length", self.context_length),
        ] {
            if value == 0 {
                return Err(bad(format!("{name} is 0")));
            }
            // Bounds that no real small model reaches but that stop absurd allocations.
            if value > 1 << 24 {
                return Err(bad(format!("{name} = {value} is implausibly large")));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(bad(format!(
                "rope_theta {} is not a positive number",
                self.rope_theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(bad(format!(
                "rms_norm_eps {} is not a positive number",
                self.rms_norm_eps
            )));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parses a Hugging Face `config.json` (LlamaForCausalLM or Qwen2ForCausalLM style).
    pub fn from_hf_json(json: &str, source_name: &SourceName) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(json).map_err(|e| Error::InvalidConfig {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?;
        let architecture_name = match (&raw.model_type, raw.architectures.as_deref()) {
            (Some(t), _) => t.clone(),
            (None, Some([first, ..])) => match first.as_str() {
                "LlamaForCausalLM" => "llama".to_string(),
                "Qwen2ForCausalLM" => "qwen2".to_string(),
                other => other.to_string(),
            },
            (None, _) => {
                return Err(Error::MissingField {
                    source_name: source_name.clone(),
                    field: "model_type".into(),
                });
            }
        };
        let architecture = Architecture::parse(&architecture_name, source_name)?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.num_attention_heads > 0 => raw.hidden_size / raw.num_attention_heads,
            None => 0,
        };
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            context_length: raw.max_position_embeddings.unwrap_or(2048),
            tie_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            rope_layout: RopeLayout::Half,
        };
        config.validate(source_name)?;
        Ok(config)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

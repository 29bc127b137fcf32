//! GGUF files, parsed with candle-core's reader: typed metadata look-ups with errors that name the
//! field, the model config, and tensor bytes by role.

use std::borrow::Cow;
use std::io::Cursor;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::config::{Architecture, ModelConfig, RopeLayout};
use crate::error::{Error, Result, SourceName};
use crate::weights::{TensorDType, TensorData, WeightKey, WeightSource};

/// A GGUF file held in memory (natively read from disk, in the browser fetched).
pub struct GgufFile {
    source_name: SourceName,
    content: Content,
    bytes: Vec<u8>,
}

impl GgufFile {
    pub fn from_bytes(source_name: impl Into<SourceName>, bytes: Vec<u8>) -> Result<Self> {
        let source_name = source_name.into();
        if bytes.len() < 4 || &bytes[..4] != b"GGUF" {
            let found = bytes
                .get(..4)
                .map(|m| format!("{m:02x?}"))
                .unwrap_or_else(|| format!("{} bytes", bytes.len()));
            return Err(Error::InvalidGguf {
                source_name,
                reason: format!("wrong magic: expected \"GGUF\", found {found}"),
            });
        }
        let content =
            Content::read(&mut Cursor::new(&bytes[..])).map_err(|e| Error::InvalidGguf {
                source_name: source_name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source_name,
            content,
            bytes,
        })
    }

    pub fn source_name(&self) -> &SourceName {
        &self.source_name
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// Every metadata entry, `general.*` first, then by key (a stable order for rewriting a file).
    pub fn metadata_entries(&self) -> Vec<(&str, &Value)> {
        let mut entries: Vec<(&str, &Value)> = self
            .content
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        entries.sort_by_key(|(k, _)| (!k.starts_with("general."), *k));
        entries
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingField {
            source_name: self.source_name.clone(),
            field: key.to_string(),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidField {
            source_name: self.source_name.clone(),
            field: key.to_string(),
            reason: reason.into(),
        }
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.metadata(key).ok_or_else(|| self.missing(key))
    }

    /// An integer field of any GGUF integer type.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let value = self.require(key)?;
        let n: i128 = match value {
            Value::U8(v) => (*v).into(),
            Value::I8(v) => (*v).into(),
            Value::U16(v) => (*v).into(),
            Value::I16(v) => (*v).into(),
            Value::U32(v) => (*v).into(),
            Value::I32(v) => (*v).into(),
            Value::U64(v) => (*v).into(),
            Value::I64(v) => (*v).into(),
            other => {
                return Err(self.invalid(
                    key,
                    format!("expected an integer, found {:?}", other.value_type()),
                ));
            }
        };
        usize::try_from(n).map_err(|_| self.invalid(key, format!("{n} is out of range")))
    }

    pub fn get_opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.metadata(key).is_none() {
            return Ok(None);
        }
        self.get_usize(key).map(Some)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(self.invalid(
                key,
                format!("expected a float, found {:?}", other.value_type()),
            )),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.invalid(
                key,
                format!("expected a string, found {:?}", other.value_type()),
            )),
        }
    }

    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>> {
        if self.metadata(key).is_none() {
            return Ok(None);
        }
        self.get_str(key).map(Some)
    }

    pub fn get_opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                key,
                format!("expected a bool, found {:?}", other.value_type()),
            )),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.invalid(
                key,
                format!("expected an array, found {:?}", other.value_type()),
            )),
        }
    }

    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.invalid(
                    key,
                    format!("item {i} is {:?}, expected a string", other.value_type()),
                )),
            })
            .collect()
    }

    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                Value::U32(x) => Ok(i64::from(*x)),
                Value::I8(x) => Ok(i64::from(*x)),
                Value::U8(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                other => Err(self.invalid(
                    key,
                    format!("item {i} is {:?}, expected an integer", other.value_type()),
                )),
            })
            .collect()
    }

    /// The model description from `general.architecture` and the `{arch}.*` fields.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch_name = self.get_str("general.architecture")?;
        let architecture = Architecture::parse(arch_name, &self.source_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = self.get_usize(&key("embedding_length"))?;
        let num_heads = self.get_usize(&key("attention.head_count"))?;
        let num_kv_heads = self
            .get_opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        let head_dim = match self.get_opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => return Err(self.invalid(&key("attention.head_count"), "is 0")),
        };
        let embedding = self.tensor_info_shape(WeightKey::TokenEmbedding)?;
        let vocab_size = match embedding.as_slice() {
            [vocab, _] => *vocab,
            other => {
                return Err(Error::ShapeMismatch {
                    source_name: self.source_name.clone(),
                    tensor: WeightKey::TokenEmbedding.gguf_name(),
                    expected: vec![0, hidden_size],
                    actual: other.to_vec(),
                });
            }
        };
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.get_usize(&key("feed_forward_length"))?,
            num_layers: self.get_usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: match self.metadata(&key("rope.freq_base")) {
                Some(_) => self.get_f32(&key("rope.freq_base"))?,
                None => 10_000.0,
            },
            rms_norm_eps: self.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: self.get_usize(&key("context_length"))?,
            tie_embeddings: !self
                .content
                .tensor_infos
                .contains_key(&WeightKey::Output.gguf_name()),
            // llama.cpp permutes Q/K rows only for the `llama` architecture.
            rope_layout: match architecture {
                Architecture::Llama => RopeLayout::Interleaved,
                Architecture::Qwen2 => RopeLayout::Half,
            },
        };
        config.validate(&self.source_name)?;
        Ok(config)
    }

    fn tensor_info_shape(&self, key: WeightKey) -> Result<Vec<usize>> {
        let name = key.gguf_name();
        self.content
            .tensor_infos
            .get(&name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or(Error::MissingTensor {
                source_name: self.source_name.clone(),
                tensor: name,
            })
    }

    /// A tensor by its GGUF name, with bounds-checked bytes.
    pub fn tensor_by_name(&self, name: &str) -> Result<Option<TensorData<'_>>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let dtype = match info.ggml_dtype {
            GgmlDType::F32 => TensorDType::F32,
            GgmlDType::F16 => TensorDType::F16,
            GgmlDType::BF16 => TensorDType::BF16,
            GgmlDType::Q8_0 => TensorDType::Q8_0,
            GgmlDType::Q4_0 => TensorDType::Q4_0,
            GgmlDType::Q4_1 => TensorDType::Q4_1,
            GgmlDType::Q4K => TensorDType::Q4K,
            GgmlDType::Q6K => TensorDType::Q6K,
            other => {
                return Err(Error::UnsupportedDType {
                    source_name: self.source_name.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let shape = info.shape.dims().to_vec();
        let truncated = |reason: String| Error::TruncatedTensor {
            source_name: self.source_name.clone(),
            tensor: name.to_string(),
            reason,
        };
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| truncated(format!("shape {shape:?} overflows")))?;
        let len = dtype.bytes_for(elements).ok_or_else(|| {
            truncated(format!(
                "{elements} elements do not fill whole {dtype} blocks"
            ))
        })?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| truncated(format!("offset {} overflows", info.offset)))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| truncated("end offset overflows".into()))?;
        let bytes = self.bytes.get(start..end).ok_or_else(|| {
            truncated(format!(
                "needs bytes {start}..{end} but the file has {} bytes",
                self.bytes.len()
            ))
        })?;
        Ok(Some(TensorData {
            name: name.to_string(),
            dtype,
            shape,
            bytes: Cow::Borrowed(bytes),
        }))
    }
}

impl WeightSource for GgufFile {
    fn source_name(&self) -> &SourceName {
        &self.source_name
    }

    fn find(&self, key: WeightKey) -> Result<Option<TensorData<'_>>> {
        self.tensor_by_name(&key.gguf_name())
    }

    fn name_of(&self, key: WeightKey) -> String {
        key.gguf_name()
    }
}

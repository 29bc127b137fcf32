//! Hugging Face checkpoints: one or more `.safetensors` shards with HF tensor names, parsed with
//! the `safetensors` crate that candle-core uses.

use std::borrow::Cow;
use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result, SourceName};
use crate::weights::{TensorDType, TensorData, WeightKey, WeightSource};

struct Entry {
    shard: usize,
    dtype: TensorDType,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

pub struct SafetensorsFiles {
    source_name: SourceName,
    shards: Vec<Vec<u8>>,
    index: HashMap<String, Entry>,
}

impl SafetensorsFiles {
    /// `shards` are (name, bytes) pairs; `source_name` names the checkpoint as a whole.
    pub fn from_shards(
        source_name: impl Into<SourceName>,
        shards: Vec<(SourceName, Vec<u8>)>,
    ) -> Result<Self> {
        let source_name = source_name.into();
        let mut index = HashMap::new();
        let mut datas = Vec::with_capacity(shards.len());
        for (shard, (name, bytes)) in shards.into_iter().enumerate() {
            let parsed =
                SafeTensors::deserialize(&bytes).map_err(|e| Error::InvalidSafetensors {
                    source_name: name.clone(),
                    reason: e.to_string(),
                })?;
            let base = bytes.as_ptr() as usize;
            for (tensor_name, view) in parsed.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => TensorDType::F32,
                    Dtype::F16 => TensorDType::F16,
                    Dtype::BF16 => TensorDType::BF16,
                    other => {
                        return Err(Error::UnsupportedDType {
                            source_name: name.clone(),
                            tensor: tensor_name,
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                // The view borrows `bytes`; keep its position so the bytes can move into `self`.
                let start = view.data().as_ptr() as usize - base;
                let range = start..start + view.data().len();
                index.insert(
                    tensor_name,
                    Entry {
                        shard,
                        dtype,
                        shape: view.shape().to_vec(),
                        range,
                    },
                );
            }
            datas.push(bytes);
        }
        Ok(Self {
            source_name,
            shards: datas,
            index,
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
}

impl WeightSource for SafetensorsFiles {
    fn source_name(&self) -> &SourceName {
        &self.source_name
    }

    fn find(&self, key: WeightKey) -> Result<Option<TensorData<'_>>> {
        let name = key.hf_name();
        let Some(entry) = self.index.get(&name) else {
            return Ok(None);
        };
        let bytes = self
            .shards
            .get(entry.shard)
            .and_then(|b| b.get(entry.range.clone()))
            .ok_or_else(|| Error::TruncatedTensor {
                source_name: self.source_name.clone(),
                tensor: name.clone(),
                reason: "range outside its shard".into(),
            })?;
        Ok(Some(TensorData {
            name,
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            bytes: Cow::Borrowed(bytes),
        }))
    }

    fn name_of(&self, key: WeightKey) -> String {
        key.hf_name()
    }
}

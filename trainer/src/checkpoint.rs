//! Checkpoints: weights, optimiser moments and the trainer's position (step, data cursor, RNG,
//! the cloud's cached verdicts) in one safetensors file, written to a temporary name and renamed,
//! so a crash mid-write never leaves a half checkpoint under the real name.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerPosition {
    pub step: usize,
    pub cursor: usize,
    pub rng_state: u64,
    pub optimizer_step: u64,
    /// The [`crate::cloud::CloudOracle::identity`] of the cloud that gave `cloud_verdicts`. A run
    /// resumed with another cloud does not reuse them; checkpoints written before this field
    /// read as "" and match no cloud.
    #[serde(default)]
    pub cloud: String,
    /// (problem id, cloud correct) for every prompt the cloud was asked about.
    pub cloud_verdicts: Vec<(u64, bool)>,
}

pub struct Checkpoint {
    pub weights: HashMap<String, Tensor>,
    /// (name, first moment, second moment)
    pub moments: Vec<(String, Tensor, Tensor)>,
    pub position: TrainerPosition,
}

const POSITION_KEY: &str = "selfroute.trainer_position";

fn data_error(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Data {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    Ok(match t.dtype() {
        DType::F64 => (
            Dtype::F64,
            t.flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => (
            Dtype::F32,
            t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    })
}

pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = checkpoint
        .weights
        .iter()
        .map(|(k, v)| (format!("weight.{k}"), v.clone()))
        .collect();
    for (name, m, v) in &checkpoint.moments {
        named.push((format!("adam_m.{name}"), m.clone()));
        named.push((format!("adam_v.{name}"), v.clone()));
    }
    let buffers = named
        .iter()
        .map(|(name, t)| Ok((name.clone(), tensor_bytes(t)?, t.dims().to_vec())))
        .collect::<Result<Vec<_>>>()?;
    let views = buffers
        .iter()
        .map(|(name, (dtype, bytes), shape)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| data_error(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let position = serde_json::to_string(&checkpoint.position).map_err(|e| data_error(path, e))?;
    let metadata = HashMap::from([(POSITION_KEY.to_string(), position)]);
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| data_error(&tmp, e))?;
    // Flushed to disk before the rename makes it visible.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| data_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| data_error(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Best effort: persist the rename itself.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| data_error(path, e))?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| data_error(path, e))?;
    let position: TrainerPosition = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(POSITION_KEY))
        .ok_or_else(|| data_error(path, "not a selfroute-train checkpoint (no position)"))
        .and_then(|text| serde_json::from_str(text).map_err(|e| data_error(path, e)))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| data_error(path, e))?;
    let mut weights = HashMap::new();
    let mut first = HashMap::new();
    let mut second = HashMap::new();
    for (name, view) in file.tensors() {
        let source = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            other => return Err(data_error(path, format!("`{name}` has dtype {other:?}"))),
        };
        let t =
            Tensor::from_raw_buffer(view.data(), source, view.shape(), device)?.to_dtype(dtype)?;
        if let Some(k) = name.strip_prefix("weight.") {
            weights.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("adam_m.") {
            first.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("adam_v.") {
            second.insert(k.to_string(), t);
        }
    }
    let mut moments = Vec::with_capacity(first.len());
    for (name, m) in first {
        let v = second
            .remove(&name)
            .ok_or_else(|| data_error(path, format!("`{name}` has no second moment")))?;
        moments.push((name, m, v));
    }
    moments.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checkpoint {
        weights,
        moments,
        position,
    })
}

/// Sets every variable of `model` from `weights` (by name). Everything is checked before anything
/// is set, so a checkpoint that does not fit leaves the model as it was.
pub fn load_weights_into(
    model: &crate::model::TrainableModel,
    weights: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let vars = model.named_vars()?;
    if vars.len() != weights.len() {
        return Err(data_error(
            path,
            format!("{} weights for a model of {}", weights.len(), vars.len()),
        ));
    }
    let mut pairs = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let saved = weights
            .get(&name)
            .ok_or_else(|| data_error(path, format!("no weight `{name}`")))?;
        if saved.shape() != var.as_tensor().shape() {
            return Err(data_error(
                path,
                format!("`{name}` has the wrong shape (was it trained from another model?)"),
            ));
        }
        pairs.push((var, saved));
    }
    for (var, saved) in pairs {
        var.set(saved)?;
    }
    Ok(())
}

/// Makes `tmp` (fully written) visible as `path`: flushed to disk, renamed, and the rename itself
/// persisted where the platform allows, so a crash never leaves half a file under the real name.
pub fn commit_file(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| data_error(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| data_error(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Best effort.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Appends one line to `path` and flushes it (metrics survive a crash up to the last step).
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| data_error(path, e))?;
    writeln!(f, "{line}").map_err(|e| data_error(path, e))?;
    f.flush().map_err(|e| data_error(path, e))
}

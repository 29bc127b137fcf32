//! Reading the GGUF a subcommand starts from.

use anyhow::{Context, Result};
use selfroute_core::{GgufFile, ModelPackage};

/// The model as the engine sees it, and the raw file whose metadata an export keeps.
pub fn read_gguf(path: &std::path::Path) -> Result<(ModelPackage, GgufFile)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let package = ModelPackage::from_gguf(name.clone(), bytes.clone())?;
    Ok((package, GgufFile::from_bytes(name, bytes)?))
}

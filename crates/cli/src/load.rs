//! Finding and reading a model from disk: the CLI's I/O policy over selfroute-core's loaders.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use selfroute_core::{ChatTemplate, ModelConfig, ModelPackage, SourceName, Tokenizer};
use selfroute_engine::{Engine, EngineError, EngineOptions, GpuOptions, Selection, load_engine};

use crate::options::ModelArgs;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub struct LoadedModel {
    pub model: Engine,
    /// Which engine runs it, and why.
    pub selection: Selection,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub path: PathBuf,
    pub load_ms: f64,
}

/// Applies `--threads` before any pool exists. candle and rayon both read RAYON_NUM_THREADS.
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // SAFETY: called first thing in main, before any other thread is started.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring the thread pool")?;
    }
    Ok(())
}

pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SELFROUTE_MODEL") {
        return PathBuf::from(p);
    }
    let local = Path::new("models").join(DEFAULT_MODEL_FILE);
    if local.exists() {
        return local;
    }
    // Running from elsewhere: the workspace this binary was built in.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(DEFAULT_MODEL_FILE)
}

pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let path = args.model.clone().unwrap_or_else(default_model_path);
    let started = Instant::now();
    let package = read_package(&path)?;
    let ModelPackage {
        config,
        tokenizer,
        chat_template,
        weights,
    } = package;
    let options = EngineOptions {
        choice: args.device.choice(),
        gpu: GpuOptions {
            max_context: args.gpu_context,
            ..GpuOptions::default()
        },
    };
    let (model, selection) = match pollster::block_on(load_engine(&config, weights, &options)) {
        Err(e @ EngineError::NoAdapter(_)) => {
            return Err(anyhow::Error::new(e).context(
                "starting the GPU engine (try --device cpu, or --device auto to use the CPU when there is no GPU)",
            ));
        }
        loaded => loaded.with_context(|| format!("loading {}", path.display()))?,
    };
    Ok(LoadedModel {
        model,
        selection,
        config,
        tokenizer,
        chat_template,
        path,
        load_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

pub fn read_package(path: &Path) -> Result<ModelPackage> {
    if !path.exists() {
        if args_is_default(path) {
            bail!(
                "no model at {}: run `cargo xtask fetch-model` first, or pass --model PATH",
                path.display()
            );
        }
        bail!("no model at {}", path.display());
    }
    if path.is_dir() {
        return read_hf_folder(path);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ModelPackage::from_gguf(path.display().to_string(), bytes)?)
}

fn args_is_default(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == DEFAULT_MODEL_FILE)
}

fn read_hf_folder(dir: &Path) -> Result<ModelPackage> {
    let read_text = |name: &str| -> Result<Option<String>> {
        let p = dir.join(name);
        if !p.exists() {
            return Ok(None);
        }
        Ok(Some(
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        ))
    };
    let config = read_text("config.json")?
        .with_context(|| format!("{} has no config.json", dir.display()))?;
    let mut shard_paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shard_paths.sort();
    if shard_paths.is_empty() {
        bail!("{} has no .safetensors files", dir.display());
    }
    let mut shards = Vec::new();
    for p in shard_paths {
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        shards.push((SourceName(p.display().to_string()), bytes));
    }
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.exists() {
        Some(std::fs::read(&tokenizer_path)?)
    } else {
        None
    };
    let tokenizer_config = read_text("tokenizer_config.json")?;
    Ok(ModelPackage::from_hf_files(
        dir.display().to_string(),
        &config,
        shards,
        tokenizer.as_deref(),
        tokenizer_config.as_deref(),
    )?)
}

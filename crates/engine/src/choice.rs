//! Which engine runs the model: the caller's choice, or (`auto`) the GPU when a real adapter can
//! hold the model, else the CPU, with the reason said in words.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::{ModelConfig, WeightSource};
use selfroute_wgpu::{GpuContext, GpuError, GpuModel, GpuOptions};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::EngineError;

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when a hardware adapter can hold the model, else the CPU.
    #[default]
    Auto,
    /// The WGSL engine on any adapter, software ones included; an error when there is none.
    Gpu,
    /// candle on the CPU.
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gpu" | "webgpu" => Ok(Self::Gpu),
            "cpu" | "wasm" => Ok(Self::Cpu),
            other => Err(EngineError::Unsupported(format!(
                "backend `{other}` (expected auto, gpu/webgpu or cpu)"
            ))),
        }
    }
}

/// What runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Cpu,
    Gpu,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub choice: BackendChoice,
    pub gpu: GpuOptions,
}

/// The engine chosen, and why: what a status line or the browser's `backendReason` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    pub kind: EngineKind,
    /// The GPU adapter's name, when the GPU engine runs.
    pub adapter: Option<String>,
    pub reason: String,
}

/// Loads the model into the engine `options` choose. `weights` is kept only while the GPU runs,
/// to rebuild the model on the CPU if the device is lost; the CPU engine copies what it needs.
pub async fn load_engine(
    config: &ModelConfig,
    weights: Box<dyn WeightSource + Send + Sync>,
    options: &EngineOptions,
) -> Result<(Engine, Selection), EngineError> {
    match options.choice {
        BackendChoice::Cpu => {
            let engine = load_cpu(config, weights.as_ref())?;
            Ok((engine, cpu_selection("the CPU engine was asked for".into())))
        }
        BackendChoice::Gpu => {
            let context = GpuContext::new().await?;
            let adapter = context.adapter_name.clone();
            let model = GpuModel::load(context, config, weights.as_ref(), &options.gpu).await?;
            let selection = Selection {
                kind: EngineKind::Gpu,
                reason: format!("the GPU engine was asked for; adapter {adapter}"),
                adapter: Some(adapter),
            };
            Ok((Engine::gpu(model, config, weights), selection))
        }
        BackendChoice::Auto => {
            let why_not_gpu = match GpuContext::new().await {
                Err(e) => format!("no usable GPU adapter ({e})"),
                Ok(context) if context.is_cpu() => format!(
                    "the only GPU adapter, {}, is a software renderer, slower than the CPU engine",
                    context.adapter_name
                ),
                Ok(context) => {
                    let adapter = context.adapter_name.clone();
                    match GpuModel::load(context, config, weights.as_ref(), &options.gpu).await {
                        Ok(model) => {
                            let selection = Selection {
                                kind: EngineKind::Gpu,
                                reason: format!("GPU adapter {adapter} can hold the model"),
                                adapter: Some(adapter),
                            };
                            return Ok((Engine::gpu(model, config, weights), selection));
                        }
                        Err(e) => gpu_refusal(&adapter, &e),
                    }
                }
            };
            let engine = load_cpu(config, weights.as_ref())?;
            Ok((engine, cpu_selection(why_not_gpu)))
        }
    }
}

fn gpu_refusal(adapter: &str, e: &GpuError) -> String {
    format!("the GPU adapter {adapter} cannot run this model ({e})")
}

fn cpu_selection(reason: String) -> Selection {
    Selection {
        kind: EngineKind::Cpu,
        adapter: None,
        reason,
    }
}

fn load_cpu(config: &ModelConfig, weights: &dyn WeightSource) -> Result<Engine, EngineError> {
    let model = CandleModel::load(config, weights, &Device::Cpu)?;
    Ok(Engine::cpu(model, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_from_the_words_users_type() {
        assert_eq!(
            "auto".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Auto)
        );
        assert_eq!(
            "WebGPU".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Gpu)
        );
        assert_eq!(
            "cpu".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Cpu)
        );
        let err = "tpu".parse::<BackendChoice>().unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
    }
}

//! Flags shared by `generate` and `chat`.

use std::path::PathBuf;

use clap::Args;
use selfroute_core::{GenerationParams, SamplingParams};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, or a folder with config.json, *.safetensors and tokenizer.json.
    /// Default: $SELFROUTE_MODEL, else the SmolLM2 file `cargo xtask fetch-model` places in models/.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// CPU threads for the forward pass (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Where the forward pass runs: `cpu` (candle), `gpu` (WGSL on Vulkan, Metal or DX12;
    /// `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` pick among several), or `auto` (the GPU when a
    /// hardware adapter can hold the model, else the CPU; says which and why).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,

    /// With --device gpu: positions the GPU KV cache holds (the model's context if smaller).
    #[arg(long, default_value_t = 4096)]
    pub gpu_context: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
    Auto,
}

impl Device {
    pub fn choice(self) -> selfroute_engine::BackendChoice {
        match self {
            Self::Cpu => selfroute_engine::BackendChoice::Cpu,
            Self::Gpu => selfroute_engine::BackendChoice::Gpu,
            Self::Auto => selfroute_engine::BackendChoice::Auto,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Penalty for tokens seen in the last 64 (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repeat_penalty,
                seed: self.seed,
                ..SamplingParams::default()
            },
            ..GenerationParams::default()
        }
    }
}

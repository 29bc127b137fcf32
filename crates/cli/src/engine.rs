//! The forward-pass engine a command runs on, chosen with `--device`: candle on the CPU or the
//! WGSL engine on the GPU. Both implement the core `Backend`, so the generation loop, sampler
//! settings and offload detection are the same code either way.

use selfroute_candle::CandleModel;
use selfroute_core::{Backend, Logits, LogitsFor, ModelConfig, TokenPick};
use selfroute_wgpu::GpuModel;

pub enum Engine {
    Cpu(Box<CandleModel>),
    Gpu(Box<GpuModel>),
}

impl Engine {
    /// What runs the model, for status lines.
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu(_) => "CPU (candle)".into(),
            Self::Gpu(m) => format!("GPU: {}", m.adapter_name()),
        }
    }
}

impl Backend for Engine {
    fn config(&self) -> &ModelConfig {
        match self {
            Self::Cpu(m) => m.config(),
            Self::Gpu(m) => m.config(),
        }
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        match self {
            Self::Cpu(m) => m.forward(tokens, start_pos, want).await,
            Self::Gpu(m) => m.forward(tokens, start_pos, want).await,
        }
    }

    async fn forward_pick(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> selfroute_core::Result<u32> {
        match self {
            Self::Cpu(m) => m.forward_pick(tokens, start_pos, pick).await,
            Self::Gpu(m) => m.forward_pick(tokens, start_pos, pick).await,
        }
    }

    fn picks_on_device(&self) -> bool {
        match self {
            Self::Cpu(m) => m.picks_on_device(),
            Self::Gpu(m) => m.picks_on_device(),
        }
    }

    fn truncate_cache(&mut self, len: usize) {
        match self {
            Self::Cpu(m) => m.truncate_cache(len),
            Self::Gpu(m) => m.truncate_cache(len),
        }
    }
}

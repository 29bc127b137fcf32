//! [`Engine`]: the CPU or GPU model behind one [`Backend`], moving to the CPU if the GPU is lost.

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::backend::{BatchBackend, BatchStep, SeqId};
use selfroute_core::{
    Backend, BackendError, BackendErrorKind, Logits, LogitsFor, ModelConfig, TokenPick,
    WeightSource,
};
use selfroute_wgpu::GpuModel;

use crate::choice::EngineKind;

enum Active {
    Cpu(Box<CandleModel>),
    Gpu(Box<GpuModel>),
}

/// A loaded model on one engine.
///
/// On the GPU it keeps the weight source and the token ids in the KV cache, so that when the
/// device is lost (a driver reset, a browser reclaiming the GPU) the next call rebuilds the model
/// on the CPU, replays the cached tokens and carries on: the answer continues instead of failing.
pub struct Engine {
    active: Active,
    config: ModelConfig,
    reserve: Option<Box<dyn WeightSource + Send + Sync>>,
    cached: Vec<u32>,
    fell_back: Option<String>,
}

impl Engine {
    pub(crate) fn cpu(model: CandleModel, config: &ModelConfig) -> Self {
        Self {
            active: Active::Cpu(Box::new(model)),
            config: config.clone(),
            reserve: None,
            cached: Vec::new(),
            fell_back: None,
        }
    }

    pub(crate) fn gpu(
        model: GpuModel,
        config: &ModelConfig,
        weights: Box<dyn WeightSource + Send + Sync>,
    ) -> Self {
        Self {
            config: config.clone(),
            active: Active::Gpu(Box::new(model)),
            reserve: Some(weights),
            cached: Vec::new(),
            fell_back: None,
        }
    }

    pub fn kind(&self) -> EngineKind {
        match self.active {
            Active::Cpu(_) => EngineKind::Cpu,
            Active::Gpu(_) => EngineKind::Gpu,
        }
    }

    /// The GPU adapter's name while the GPU engine runs.
    pub fn adapter(&self) -> Option<&str> {
        match &self.active {
            Active::Gpu(m) => Some(m.adapter_name()),
            Active::Cpu(_) => None,
        }
    }

    /// What runs the model, for status lines.
    pub fn describe(&self) -> String {
        match (&self.active, &self.fell_back) {
            (Active::Gpu(m), _) => format!("GPU: {}", m.adapter_name()),
            (Active::Cpu(_), Some(why)) => format!("CPU (candle), after {why}"),
            (Active::Cpu(_), None) => "CPU (candle)".into(),
        }
    }

    /// Why the engine moved from the GPU to the CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fell_back.as_deref()
    }

    /// Frees the GPU now (see [`GpuModel::destroy_device`]); a later call then runs on the CPU.
    pub fn release_gpu(&self) {
        if let Active::Gpu(m) = &self.active {
            m.destroy_device();
        }
    }

    /// Rebuilds the model on the CPU from the kept weights and replays the first `keep` cached
    /// tokens, after `cause` (a lost device).
    async fn move_to_cpu(&mut self, keep: usize, cause: &selfroute_core::Error) -> bool {
        let Some(weights) = self.reserve.take() else {
            return false;
        };
        let Ok(model) = CandleModel::load(&self.config, weights.as_ref(), &Device::Cpu) else {
            return false;
        };
        let mut model = Box::new(model);
        self.cached.truncate(keep);
        if !self.cached.is_empty()
            && model
                .forward(&self.cached, 0, LogitsFor::Last)
                .await
                .is_err()
        {
            return false;
        }
        self.active = Active::Cpu(model);
        self.fell_back = Some(format!("the GPU was lost ({cause})"));
        true
    }

    /// Keeps the cached ids for a replay; only while there is a GPU to lose.
    fn record(&mut self, tokens: &[u32], start_pos: usize) {
        if self.reserve.is_none() {
            return;
        }
        self.cached.truncate(start_pos);
        self.cached.extend_from_slice(tokens);
    }
}

fn is_device_loss(e: &selfroute_core::Error) -> bool {
    e.backend_kind() == Some(BackendErrorKind::DeviceLost)
}

impl Backend for Engine {
    fn config(&self) -> &ModelConfig {
        match &self.active {
            Active::Cpu(m) => m.config(),
            Active::Gpu(m) => m.config(),
        }
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        let result = match &mut self.active {
            Active::Cpu(m) => m.forward(tokens, start_pos, want).await,
            Active::Gpu(m) => m.forward(tokens, start_pos, want).await,
        };
        let result = match result {
            Err(e) if is_device_loss(&e) && self.move_to_cpu(start_pos, &e).await => {
                match &mut self.active {
                    Active::Cpu(m) => m.forward(tokens, start_pos, want).await,
                    Active::Gpu(_) => Err(e),
                }
            }
            other => other,
        };
        if result.is_ok() {
            self.record(tokens, start_pos);
        }
        result
    }

    async fn forward_pick(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> selfroute_core::Result<u32> {
        let result = match &mut self.active {
            Active::Gpu(m) => m.forward_pick(tokens, start_pos, pick).await,
            Active::Cpu(_) => Err(not_on_device()),
        };
        let result = match result {
            Err(e) if is_device_loss(&e) && self.move_to_cpu(start_pos, &e).await => {
                // The pick the device would have made, made on the host from the same draw.
                match &mut self.active {
                    Active::Cpu(m) => {
                        let mut logits = m.forward(tokens, start_pos, LogitsFor::Last).await?;
                        let row = logits.last_row_mut().ok_or_else(no_logits)?;
                        pick.pick_from(row)
                    }
                    Active::Gpu(_) => Err(e),
                }
            }
            other => other,
        };
        if result.is_ok() {
            self.record(tokens, start_pos);
        }
        result
    }

    fn picks_on_device(&self) -> bool {
        matches!(self.active, Active::Gpu(_))
    }

    fn truncate_cache(&mut self, len: usize) {
        self.cached.truncate(len);
        match &mut self.active {
            Active::Cpu(m) => m.truncate_cache(len),
            Active::Gpu(m) => m.truncate_cache(len),
        }
    }
}

/// Batched decoding runs on the CPU engine; the GPU engine holds one sequence, so a caller that
/// gets `Unsupported` from `new_sequence` serves requests one at a time instead.
impl BatchBackend for Engine {
    fn batch_config(&self) -> &ModelConfig {
        &self.config
    }

    fn new_sequence(&mut self) -> selfroute_core::Result<SeqId> {
        match &mut self.active {
            Active::Cpu(m) => BatchBackend::new_sequence(m.as_mut()),
            Active::Gpu(_) => Err(no_batch()),
        }
    }

    fn drop_sequence(&mut self, seq: SeqId) {
        if let Active::Cpu(m) = &mut self.active {
            BatchBackend::drop_sequence(m.as_mut(), seq);
        }
    }

    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> selfroute_core::Result<()> {
        match &mut self.active {
            Active::Cpu(m) => BatchBackend::truncate_sequence(m.as_mut(), seq, len),
            Active::Gpu(_) => Err(no_batch()),
        }
    }

    fn prefill(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        start_pos: usize,
    ) -> selfroute_core::Result<Logits> {
        match &mut self.active {
            Active::Cpu(m) => m.prefill(seq, tokens, start_pos),
            Active::Gpu(_) => Err(no_batch()),
        }
    }

    fn decode(&mut self, steps: &[BatchStep]) -> selfroute_core::Result<Logits> {
        match &mut self.active {
            Active::Cpu(m) => m.decode(steps),
            Active::Gpu(_) => Err(no_batch()),
        }
    }
}

fn no_batch() -> selfroute_core::Error {
    selfroute_core::Error::Backend(BackendError::new(
        BackendErrorKind::Unsupported,
        "the GPU engine decodes one sequence at a time",
    ))
}

fn not_on_device() -> selfroute_core::Error {
    selfroute_core::Error::Backend(BackendError::new(
        BackendErrorKind::Unsupported,
        "the CPU engine picks tokens on the host",
    ))
}

fn no_logits() -> selfroute_core::Error {
    selfroute_core::Error::Backend(BackendError::new(
        BackendErrorKind::Failed,
        "the engine returned no logits",
    ))
}

//! Loading errors a caller can tell apart by variant: a missing adapter is not a corrupt file.

use selfroute_core::BackendErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The GPU engine was asked for and no usable adapter exists.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The model cannot run on the engine asked for (a weight format, a size past a limit).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The model file itself is wrong (it parsed, but a weight cannot be used).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("{0}")]
    Failed(String),
}

impl EngineError {
    /// The engine-independent kind, as the generation loop's errors carry it.
    pub fn kind(&self) -> BackendErrorKind {
        match self {
            Self::NoAdapter(_) => BackendErrorKind::NoAdapter,
            Self::DeviceLost(_) => BackendErrorKind::DeviceLost,
            Self::OutOfMemory(_) => BackendErrorKind::OutOfMemory,
            Self::Unsupported(_) => BackendErrorKind::Unsupported,
            Self::InvalidModel(_) => BackendErrorKind::InvalidInput,
            Self::Failed(_) => BackendErrorKind::Failed,
        }
    }
}

impl From<selfroute_wgpu::GpuError> for EngineError {
    fn from(e: selfroute_wgpu::GpuError) -> Self {
        let text = e.to_string();
        match e.kind() {
            BackendErrorKind::NoAdapter => Self::NoAdapter(text),
            BackendErrorKind::DeviceLost => Self::DeviceLost(text),
            BackendErrorKind::OutOfMemory => Self::OutOfMemory(text),
            BackendErrorKind::Unsupported => Self::Unsupported(text),
            BackendErrorKind::InvalidInput | BackendErrorKind::Failed => Self::Failed(text),
        }
    }
}

impl From<selfroute_candle::CandleError> for EngineError {
    fn from(e: selfroute_candle::CandleError) -> Self {
        match e {
            selfroute_candle::CandleError::Weight { .. } => Self::InvalidModel(e.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<selfroute_core::Error> for EngineError {
    fn from(e: selfroute_core::Error) -> Self {
        let text = e.to_string();
        match e.backend_kind() {
            Some(BackendErrorKind::NoAdapter) => Self::NoAdapter(text),
            Some(BackendErrorKind::DeviceLost) => Self::DeviceLost(text),
            Some(BackendErrorKind::OutOfMemory) => Self::OutOfMemory(text),
            Some(BackendErrorKind::Unsupported) => Self::Unsupported(text),
            Some(BackendErrorKind::Failed) => Self::Failed(text),
            Some(BackendErrorKind::InvalidInput) | None => Self::InvalidModel(text),
        }
    }
}

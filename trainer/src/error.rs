//! Errors of the trainer library.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Core(#[from] selfroute_core::Error),
    #[error(transparent)]
    Engine(#[from] selfroute_candle::CandleError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid task `{spec}`: {reason}")]
    InvalidTask { spec: String, reason: String },
    #[error("{path}: {reason}")]
    Data { path: String, reason: String },
    #[error("invalid training settings: {0}")]
    InvalidSettings(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

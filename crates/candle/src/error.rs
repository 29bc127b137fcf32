#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    #[error("position {pos} does not follow the {cached} cached positions")]
    CacheMismatch { pos: usize, cached: usize },
    #[error("forward pass over {end} positions exceeds the context of {context}")]
    ContextOverflow { end: usize, context: usize },
    #[error("no sequence {seq} (never made, or dropped)")]
    UnknownSequence { seq: u64 },
    #[error("sequence {seq} appears twice in one batched step")]
    RepeatedSequence { seq: u64 },
}

impl From<CandleError> for selfroute_core::Error {
    fn from(e: CandleError) -> Self {
        use selfroute_core::BackendErrorKind as Kind;
        let kind = match &e {
            CandleError::CacheMismatch { .. }
            | CandleError::ContextOverflow { .. }
            | CandleError::UnknownSequence { .. }
            | CandleError::RepeatedSequence { .. } => Kind::InvalidInput,
            CandleError::Weight { .. } => Kind::Unsupported,
            CandleError::Candle(_) => Kind::Failed,
        };
        selfroute_core::Error::Backend(selfroute_core::BackendError::new(kind, e))
    }
}

pub type Result<T, E = CandleError> = std::result::Result<T, E>;

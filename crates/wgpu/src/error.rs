//! What can go wrong on the GPU side, in words a user can act on.

#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter is available: {0}")]
    NoAdapter(String),
    #[error("the GPU adapter refused a device: {0}")]
    Device(String),
    #[error("the GPU device was lost or ran out of memory: {0}")]
    DeviceLost(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("the GPU rejected a command (a bug in selfroute-wgpu; please report it): {0}")]
    Validation(String),
    #[error("this model cannot run on the GPU engine: {0}")]
    Unsupported(String),
    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),
    #[error("{what} needs {needed} bytes, more than this device's limit of {limit}")]
    TooLarge {
        what: String,
        needed: u64,
        limit: u64,
    },
    #[error("invalid input: {0}")]
    Invalid(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl GpuError {
    /// The engine-independent kind, for callers that react to a lost device or missing adapter.
    pub fn kind(&self) -> selfroute_core::BackendErrorKind {
        use selfroute_core::BackendErrorKind as Kind;
        match self {
            Self::NoAdapter(_) | Self::Device(_) => Kind::NoAdapter,
            Self::DeviceLost(_) => Kind::DeviceLost,
            Self::OutOfMemory(_) => Kind::OutOfMemory,
            Self::Unsupported(_) | Self::TooLarge { .. } => Kind::Unsupported,
            Self::Invalid(_) => Kind::InvalidInput,
            Self::Validation(_) | Self::Readback(_) => Kind::Failed,
        }
    }
}

impl From<GpuError> for selfroute_core::Error {
    fn from(e: GpuError) -> Self {
        selfroute_core::Error::Backend(selfroute_core::BackendError::new(e.kind(), e))
    }
}

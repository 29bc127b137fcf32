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

impl From<GpuError> for selfroute_core::Error {
    fn from(e: GpuError) -> Self {
        selfroute_core::Error::Backend(Box::new(e))
    }
}

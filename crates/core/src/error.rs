//! The one error type of selfroute-core. Every loading error names the source (a file name or
//! label given by the caller) and the field or tensor at fault, so a user can act on it.

use std::fmt;

/// Where a model part came from: a file path natively, a URL or label in the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName(pub String);

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SourceName {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for SourceName {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{source_name}: not a GGUF file or corrupt header: {reason}")]
    InvalidGguf {
        source_name: SourceName,
        reason: String,
    },

    #[error("{source_name}: not a valid safetensors file: {reason}")]
    InvalidSafetensors {
        source_name: SourceName,
        reason: String,
    },

    #[error("{source_name}: invalid config: {reason}")]
    InvalidConfig {
        source_name: SourceName,
        reason: String,
    },

    #[error("{source_name}: missing metadata field `{field}`")]
    MissingField {
        source_name: SourceName,
        field: String,
    },

    #[error("{source_name}: metadata field `{field}` is invalid: {reason}")]
    InvalidField {
        source_name: SourceName,
        field: String,
        reason: String,
    },

    #[error("{source_name}: unknown architecture `{architecture}` (supported: llama, qwen2)")]
    UnknownArchitecture {
        source_name: SourceName,
        architecture: String,
    },

    #[error("{source_name}: tensor `{tensor}` is missing")]
    MissingTensor {
        source_name: SourceName,
        tensor: String,
    },

    #[error("{source_name}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        source_name: SourceName,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error(
        "{source_name}: tensor `{tensor}` uses unsupported type {dtype} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    UnsupportedDType {
        source_name: SourceName,
        tensor: String,
        dtype: String,
    },

    #[error("{source_name}: tensor `{tensor}` data is out of bounds or truncated: {reason}")]
    TruncatedTensor {
        source_name: SourceName,
        tensor: String,
        reason: String,
    },

    #[error("{source_name}: no tokenizer found: {reason}")]
    MissingTokenizer {
        source_name: SourceName,
        reason: String,
    },

    #[error("{source_name}: invalid tokenizer: {reason}")]
    InvalidTokenizer {
        source_name: SourceName,
        reason: String,
    },

    #[error("tokenizer error: {0}")]
    Tokenize(String),

    #[error("chat template error: {0}")]
    ChatTemplate(String),

    #[error(
        "the prompt has {prompt_tokens} tokens but the model's context holds {context} (with room for at least one new token)"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },

    #[error("the prompt is empty")]
    EmptyPrompt,

    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),

    #[error("invalid offload signal: {0}")]
    InvalidOffloadMarker(String),

    #[error("invalid routing settings: {0}")]
    InvalidRouting(String),

    #[error("no conversation to answer: {0}")]
    InvalidConversation(String),

    #[error("backend error: {0}")]
    Backend(#[from] BackendError),
}

/// What kind of failure an engine reported, so a caller can react (fall back to the CPU on a lost
/// device, tell the user to free memory) without downcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendErrorKind {
    /// No device of the kind asked for exists (no GPU adapter).
    NoAdapter,
    /// The device went away (driver reset, tab backgrounded, GPU removed); its state is gone.
    DeviceLost,
    /// The device or host ran out of memory.
    OutOfMemory,
    /// The model or request cannot run on this engine (a weight format, a size past a limit).
    Unsupported,
    /// The call's input is wrong (positions, token ids).
    InvalidInput,
    /// Anything else: a bug or an unexpected engine state.
    Failed,
}

/// An engine's error: its kind, and the engine's own error as the source.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct BackendError {
    pub kind: BackendErrorKind,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    pub fn new(
        kind: BackendErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }
}

impl Error {
    /// The engine failure's kind, when this is one.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Self::Backend(e) => Some(e.kind),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the OpenAI Chat Completions wire format (`crate::openai`): what a cloud endpoint
/// sent back could not be used. Kept apart from [`Error`] because it is about a network peer, not
/// a model file, and clients match on `Api` to show the provider's own message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The endpoint answered with an error object (`{"error": {...}}`).
    #[error("the API returned an error: {0}")]
    Api(crate::openai::ApiError),

    /// The body or a stream event is not the JSON expected; `excerpt` is its beginning.
    #[error("malformed {what}: {reason} (in `{excerpt}`)")]
    Malformed {
        what: &'static str,
        reason: String,
        excerpt: String,
    },

    /// A server-sent event grew past the parser's limit (a broken or hostile stream).
    #[error("a server-sent event exceeds the limit of {limit} bytes")]
    EventTooLarge { limit: usize },
}

//! Assembling a routing [`Assistant`] from a loaded model and routing options: the choice between
//! the `<|offload|>` token and prompt-only routing with a text marker, the budget and the bias.

use selfroute_core::assistant::default_offload_instruction;
use selfroute_core::budget::{DEFAULT_BUDGET_SHARE, DEFAULT_BUDGET_WINDOW};
use selfroute_core::{
    Assistant, Backend, ChatTemplate, CloudBudget, CloudClient, DEFAULT_OFFLOAD_MARKER,
    GenerationParams, OFFLOAD_TOKEN, OffloadSignal, RoutingConfig, Tokenizer,
};

/// How a front end wants its turns routed, independent of how it reads its flags.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingOptions {
    pub generation: GenerationParams,
    /// Most cloud calls as a share of the last `budget_window` requests.
    pub budget_share: f64,
    pub budget_window: usize,
    /// Added to the offload token's logit; positive offloads more.
    pub offload_bias: f32,
    /// A text marker for prompt-only routing; None uses the token when the model has it, else
    /// the paper's marker.
    pub offload_marker: Option<String>,
    /// The instruction that asks for the marker (prompt-only routing).
    pub offload_instruction: Option<String>,
    /// The `model` field of cloud requests.
    pub cloud_model: String,
    pub cloud_max_tokens: Option<u32>,
    pub send_local_draft: bool,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self {
            generation: GenerationParams::default(),
            budget_share: DEFAULT_BUDGET_SHARE,
            budget_window: DEFAULT_BUDGET_WINDOW,
            offload_bias: 0.0,
            offload_marker: None,
            offload_instruction: None,
            cloud_model: "default".into(),
            cloud_max_tokens: None,
            send_local_draft: false,
        }
    }
}

/// How the assembled assistant recognises an offload, for start-up messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffloadRouting {
    /// No cloud: every answer is on device.
    NoCloud,
    /// The model's own `<|offload|>` token.
    Token,
    /// Prompt-only routing: an instruction asks for this marker.
    Marker(String),
    /// A cloud is configured but the model has no way to ask for it.
    Impossible,
}

impl OffloadRouting {
    pub fn of<B: Backend, C: CloudClient>(assistant: &Assistant<B, C>) -> Self {
        if !assistant.has_cloud() {
            return Self::NoCloud;
        }
        match (assistant.signal().token_id, &assistant.signal().marker) {
            (Some(_), _) => Self::Token,
            (None, Some(m)) => Self::Marker(m.clone()),
            (None, None) => Self::Impossible,
        }
    }
}

/// The assistant over `backend`. Prompt-only routing (a marker and its instruction) is used when
/// a cloud is given and the model lacks the offload token, or when a marker is asked for.
pub fn build_assistant<B: Backend, C: CloudClient>(
    backend: B,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    cloud: Option<C>,
    options: &RoutingOptions,
) -> selfroute_core::Result<Assistant<B, C>> {
    let has_token = tokenizer.token_to_id(OFFLOAD_TOKEN).is_some();
    let prompt_only = cloud.is_some() && (!has_token || options.offload_marker.is_some());
    let marker = prompt_only.then(|| {
        options
            .offload_marker
            .clone()
            .unwrap_or_else(|| DEFAULT_OFFLOAD_MARKER.to_string())
    });
    let instruction = prompt_only.then(|| {
        options
            .offload_instruction
            .clone()
            .unwrap_or_else(default_offload_instruction)
    });
    let signal = OffloadSignal::from_tokenizer(&tokenizer, marker)?;
    let config = RoutingConfig {
        generation: options.generation.clone(),
        offload_bias: options.offload_bias,
        cloud_model: options.cloud_model.clone(),
        cloud_max_tokens: options.cloud_max_tokens,
        cloud_temperature: None,
        send_local_draft: options.send_local_draft,
        offload_instruction: instruction,
    };
    let budget = CloudBudget::new(options.budget_share, options.budget_window)?;
    Assistant::new(backend, tokenizer, template, signal, cloud, config, budget)
}

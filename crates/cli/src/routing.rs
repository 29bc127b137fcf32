//! Routing flags (`--cloud`, `--budget`, `--offload-bias`, ...) and the session they build.

use std::time::Duration;

use crate::engine::Engine;
use anyhow::{Context, Result};
use clap::Args;
use selfroute_cloud::{CloudConfig, HttpCloudClient};
use selfroute_core::assistant::default_offload_instruction;
use selfroute_core::{
    Assistant, CloudBudget, DEFAULT_OFFLOAD_MARKER, GenerationParams, OffloadSignal, RoutingConfig,
};

use crate::load::LoadedModel;

#[derive(Args, Debug, Clone)]
pub struct RoutingArgs {
    /// OpenAI-compatible endpoint for questions the model hands over (e.g.
    /// https://api.openai.com/v1, or a `selfroute serve` address). Without it every answer is
    /// local.
    #[arg(long, value_name = "URL")]
    pub cloud: Option<String>,

    /// The `model` field sent to the cloud.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub cloud_model: String,

    /// Environment variable holding the cloud's API key.
    #[arg(long, value_name = "NAME", default_value = "SELFROUTE_CLOUD_API_KEY")]
    pub cloud_key_env: String,

    /// Most new tokens the cloud may answer with.
    #[arg(long, value_name = "N")]
    pub cloud_max_tokens: Option<u32>,

    /// Longest silence from the cloud before answering locally, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub cloud_timeout: f64,

    /// Most cloud calls as a share of the last --budget-window requests (0 to 1).
    #[arg(long, value_name = "SHARE", default_value_t = selfroute_core::budget::DEFAULT_BUDGET_SHARE)]
    pub budget: f64,

    /// Requests in the budget's sliding window.
    #[arg(long, value_name = "N", default_value_t = selfroute_core::budget::DEFAULT_BUDGET_WINDOW)]
    pub budget_window: usize,

    /// Added to the offload token's logit; positive offloads more.
    #[arg(
        long,
        value_name = "LOGIT",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub offload_bias: f32,

    /// Text marker that means "offload" (prompt-only routing). Default for models without the
    /// <|offload|> token: the paper's marker.
    #[arg(long, value_name = "TEXT")]
    pub offload_marker: Option<String>,

    /// System instruction that asks the local model for the marker (prompt-only routing).
    #[arg(long, value_name = "TEXT")]
    pub offload_instruction: Option<String>,

    /// Also send the local model's partial answer to the cloud (default: the original
    /// conversation only, as in the paper).
    #[arg(long)]
    pub send_local_draft: bool,
}

pub type LocalAssistant = Assistant<Engine, HttpCloudClient>;

/// What kind of routing a session does, for the start-up message.
pub fn describe(assistant: &LocalAssistant) -> String {
    if !assistant.has_cloud() {
        return "no --cloud: every answer is on device".into();
    }
    let budget = assistant.budget();
    let signal = match (assistant.signal().token_id, &assistant.signal().marker) {
        (Some(_), _) => "the <|offload|> token".to_string(),
        (None, Some(m)) => format!("the marker `{m}` (prompt-only routing)"),
        (None, None) => "nothing (the model cannot offload)".into(),
    };
    format!(
        "offload on {signal}; cloud budget {} of every {} requests",
        budget.max_calls(),
        budget.window()
    )
}

pub fn build(
    loaded: LoadedModel,
    args: &RoutingArgs,
    generation: GenerationParams,
) -> Result<LocalAssistant> {
    let package = loaded.package;
    let template = package
        .chat_template
        .with_context(|| format!("{} has no chat template", loaded.path.display()))?;
    let has_token = package
        .tokenizer
        .token_to_id(selfroute_core::OFFLOAD_TOKEN)
        .is_some();
    // Prompt-only routing when the model lacks the token, or when a marker is asked for.
    let prompt_only = args.cloud.is_some() && (!has_token || args.offload_marker.is_some());
    let marker = prompt_only.then(|| {
        args.offload_marker
            .clone()
            .unwrap_or_else(|| DEFAULT_OFFLOAD_MARKER.to_string())
    });
    let instruction = prompt_only.then(|| {
        args.offload_instruction
            .clone()
            .unwrap_or_else(default_offload_instruction)
    });
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, marker)?;
    let cloud = match &args.cloud {
        Some(url) => {
            let mut config = CloudConfig::new(url.clone());
            config.api_key = std::env::var(&args.cloud_key_env)
                .ok()
                .filter(|k| !k.is_empty());
            if !(args.cloud_timeout > 0.0 && args.cloud_timeout.is_finite()) {
                anyhow::bail!("--cloud-timeout must be a positive number of seconds");
            }
            config.idle_timeout = Duration::from_secs_f64(args.cloud_timeout);
            Some(HttpCloudClient::new(config).context("--cloud")?)
        }
        None => None,
    };
    let config = RoutingConfig {
        generation,
        offload_bias: args.offload_bias,
        cloud_model: args.cloud_model.clone(),
        cloud_max_tokens: args.cloud_max_tokens,
        cloud_temperature: None,
        send_local_draft: args.send_local_draft,
        offload_instruction: instruction,
    };
    let budget = CloudBudget::new(args.budget, args.budget_window).context("--budget")?;
    Ok(Assistant::new(
        loaded.model,
        package.tokenizer,
        template,
        signal,
        cloud,
        config,
        budget,
    )?)
}

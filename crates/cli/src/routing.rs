//! Routing flags (`--cloud`, `--budget`, `--offload-bias`, ...) and the session they build.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use selfroute_cloud::{CloudConfig, HttpCloudClient};
use selfroute_core::{Assistant, GenerationParams};
use selfroute_engine::{Engine, OffloadRouting, RoutingOptions, build_assistant};

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
    let signal = match OffloadRouting::of(assistant) {
        OffloadRouting::NoCloud => return "no --cloud: every answer is on device".into(),
        OffloadRouting::Token => "the <|offload|> token".to_string(),
        OffloadRouting::Marker(m) => format!("the marker `{m}` (prompt-only routing)"),
        OffloadRouting::Impossible => "nothing (the model cannot offload)".into(),
    };
    let budget = assistant.budget();
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
    let template = loaded
        .chat_template
        .with_context(|| format!("{} has no chat template", loaded.path.display()))?;
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
    let options = RoutingOptions {
        generation,
        budget_share: args.budget,
        budget_window: args.budget_window,
        offload_bias: args.offload_bias,
        offload_marker: args.offload_marker.clone(),
        offload_instruction: args.offload_instruction.clone(),
        cloud_model: args.cloud_model.clone(),
        cloud_max_tokens: args.cloud_max_tokens,
        send_local_draft: args.send_local_draft,
    };
    build_assistant(loaded.model, loaded.tokenizer, template, cloud, &options)
        .context("routing options")
}

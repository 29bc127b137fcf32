//! The options objects JavaScript passes, with the defaults of `web/CONTRACT.md`.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadOptions {
    pub source_name: String,
    pub backend: String,
    pub cloud: Option<CloudOptions>,
    pub budget: BudgetOptions,
    pub offload_bias: f32,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            source_name: "model.gguf".into(),
            backend: "auto".into(),
            cloud: None,
            budget: BudgetOptions::default(),
            offload_bias: 0.0,
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 42,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudOptions {
    /// A base URL (`.../v1`) or the full `.../chat/completions` URL; absolute (the worker
    /// resolves a page-relative one against the page).
    pub endpoint: String,
    pub model: String,
    pub timeout_ms: u32,
    pub retries: u32,
}

impl Default for CloudOptions {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            model: "default".into(),
            timeout_ms: 30_000,
            retries: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct BudgetOptions {
    pub share: f64,
    pub window: usize,
}

impl Default for BudgetOptions {
    fn default() -> Self {
        Self {
            share: selfroute_core::budget::DEFAULT_BUDGET_SHARE,
            window: selfroute_core::budget::DEFAULT_BUDGET_WINDOW,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GenerateOptions {
    pub chat: bool,
    pub max_tokens: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            chat: true,
            max_tokens: 32,
        }
    }
}

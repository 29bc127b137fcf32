//! selfroute-cloud: the native cloud client. It speaks the OpenAI Chat Completions wire format
//! through `selfroute_core::openai` and `selfroute_core::cloud` (the same parser the browser
//! client uses) over reqwest with rustls, with timeouts, retries and cancellation.

mod client;
mod endpoint;

pub use client::{CloudConfig, HttpCloudClient};
pub use endpoint::chat_completions_url;

//! What a request may ask of this server, checked on the raw JSON so that every refusal names its
//! parameter (`param` in the OpenAI error body), and the mapping of an accepted request onto
//! selfroute-core's generation options. The sampling itself lives in core.
//!
//! Two policies: the local model refuses what it cannot do (tools, JSON mode, images, ...), while
//! the upstream proxy checks only this server's own limits and passes everything else through
//! unchanged, since the endpoint behind it may well support it.

use selfroute_core::logprobs::MAX_TOP_LOGPROBS;
use selfroute_core::openai::{ApiError, ChatRequest};
use selfroute_core::{GenerationParams, SamplingParams};
use serde_json::{Map, Value};

use super::api::Limits;

/// OpenAI's limit on stop strings.
const MAX_STOP_STRINGS: usize = 4;

/// Parameters the local model cannot honour, each with the reason given to the caller.
const UNSUPPORTED: [(&str, &str); 10] = [
    ("tools", "the local model has no tool calling"),
    ("functions", "the local model has no function calling"),
    ("function_call", "the local model has no function calling"),
    ("tool_choice", "the local model has no tool calling"),
    ("parallel_tool_calls", "the local model has no tool calling"),
    ("audio", "the local model produces text only"),
    ("prediction", "predicted outputs are not supported"),
    (
        "web_search_options",
        "the local model cannot search the web",
    ),
    (
        "reasoning_effort",
        "the local model is not a reasoning model",
    ),
    ("verbosity", "the local model has no verbosity setting"),
];

fn refuse(param: impl Into<String>, code: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, code, message)
}

/// The one refusal no single parameter is to blame for: `param` stays null, as OpenAI sends it.
fn not_an_object() -> ApiError {
    ApiError::new("the body must be a JSON object", "invalid_request_error")
        .with_code("invalid_type")
}

fn present<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// A request for the local model, checked: everything in it can be honoured.
pub struct LocalRequest {
    pub request: ChatRequest,
    pub choices: u32,
    pub include_usage: bool,
}

/// The checks of the proxy: this server's limits only; the upstream judges the rest.
pub fn check_forwarded(value: &Value, limits: &Limits) -> Result<(), ApiError> {
    let object = value.as_object().ok_or_else(not_an_object)?;
    check_message_count(object, limits)?;
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = present(object, name).and_then(Value::as_u64) {
            check_token_limit(name, n, limits)?;
        }
    }
    Ok(())
}

fn check_message_count(object: &Map<String, Value>, limits: &Limits) -> Result<(), ApiError> {
    let messages = match present(object, "messages") {
        None => {
            return Err(refuse(
                "messages",
                "missing_required_parameter",
                "`messages` is required",
            ));
        }
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(refuse(
                "messages",
                "invalid_type",
                "`messages` must be an array",
            ));
        }
    };
    if messages.is_empty() {
        return Err(refuse(
            "messages",
            "invalid_value",
            "`messages` must not be empty",
        ));
    }
    if messages.len() > limits.max_messages {
        return Err(refuse(
            "messages",
            "array_above_max_length",
            format!(
                "{} messages is more than this server's limit of {}",
                messages.len(),
                limits.max_messages
            ),
        ));
    }
    Ok(())
}

fn check_token_limit(name: &str, n: u64, limits: &Limits) -> Result<(), ApiError> {
    if n == 0 || n > u64::from(limits.max_tokens_limit) {
        return Err(refuse(
            name,
            "invalid_value",
            format!(
                "{name} {n} must be between 1 and this server's limit of {}",
                limits.max_tokens_limit
            ),
        ));
    }
    Ok(())
}

/// The checks for the local model. `vocab` bounds `logit_bias` token ids.
pub fn check_local(value: &Value, limits: &Limits, vocab: usize) -> Result<LocalRequest, ApiError> {
    let object = value.as_object().ok_or_else(not_an_object)?;
    check_unsupported(object)?;
    check_message_count(object, limits)?;
    check_messages(object)?;
    let request = typed(value, object)?;

    let choices = request.n.unwrap_or(1);
    if choices == 0 || choices > limits.max_choices {
        return Err(refuse(
            "n",
            "invalid_value",
            format!(
                "n {choices} must be between 1 and this server's limit of {}",
                limits.max_choices
            ),
        ));
    }
    for (name, n) in [
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ] {
        if let Some(n) = n {
            check_token_limit(name, u64::from(n), limits)?;
        }
    }
    check_range("temperature", request.temperature, 0.0, 2.0)?;
    check_range("top_p", request.top_p, 0.0, 1.0)?;
    check_range("presence_penalty", request.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", request.frequency_penalty, -2.0, 2.0)?;
    if let Some(stop) = &request.stop {
        let stops = stop.strings();
        if stops.len() > MAX_STOP_STRINGS {
            return Err(refuse(
                "stop",
                "array_above_max_length",
                format!(
                    "{} stop strings is more than the limit of {MAX_STOP_STRINGS}",
                    stops.len()
                ),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(refuse(
                "stop",
                "invalid_value",
                "a stop string must not be empty",
            ));
        }
    }
    if let Some(bias) = &request.logit_bias {
        for (token, value) in bias {
            let id_ok = token.parse::<u32>().is_ok_and(|id| (id as usize) < vocab);
            if !id_ok {
                return Err(refuse(
                    "logit_bias",
                    "invalid_value",
                    format!(
                        "logit_bias key {token:?} is not a token id of this model (0 to {})",
                        vocab.saturating_sub(1)
                    ),
                ));
            }
            if !(-100.0..=100.0).contains(value) {
                return Err(refuse(
                    "logit_bias",
                    "invalid_value",
                    format!("logit_bias value {value} for token {token} must be in -100..=100"),
                ));
            }
        }
    }
    if let Some(top) = request.top_logprobs {
        if top as usize > MAX_TOP_LOGPROBS {
            return Err(refuse(
                "top_logprobs",
                "invalid_value",
                format!("top_logprobs {top} must be between 0 and {MAX_TOP_LOGPROBS}"),
            ));
        }
        if top > 0 && request.logprobs != Some(true) {
            return Err(refuse(
                "top_logprobs",
                "invalid_value",
                "top_logprobs needs logprobs set to true",
            ));
        }
    }
    if request.stream_options.is_some() && !request.stream {
        return Err(refuse(
            "stream_options",
            "invalid_value",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    Ok(LocalRequest {
        request,
        choices,
        include_usage,
    })
}

fn check_unsupported(object: &Map<String, Value>) -> Result<(), ApiError> {
    for (name, why) in UNSUPPORTED {
        let Some(value) = present(object, name) else {
            continue;
        };
        // Asking for nothing is fine: no tools, or tool_choice "none".
        let harmless = match name {
            "tools" | "functions" => value.as_array().is_some_and(Vec::is_empty),
            "tool_choice" | "function_call" => value.as_str() == Some("none"),
            _ => false,
        };
        if !harmless {
            return Err(refuse(
                name,
                "unsupported_parameter",
                format!("`{name}` is not supported by this server: {why}"),
            ));
        }
    }
    if let Some(format) = present(object, "response_format") {
        let kind = format.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(refuse(
                "response_format",
                "unsupported_value",
                format!(
                    "response_format {} is not supported by this server: only {{\"type\": \"text\"}} (the local model has no JSON mode)",
                    kind.map_or_else(|| format.to_string(), |k| format!("{k:?}"))
                ),
            ));
        }
    }
    if let Some(modalities) = present(object, "modalities") {
        let text_only = modalities
            .as_array()
            .is_some_and(|m| m.iter().all(|x| x.as_str() == Some("text")));
        if !text_only {
            return Err(refuse(
                "modalities",
                "unsupported_value",
                format!(
                    "modalities {modalities} is not supported by this server: the local model produces text only"
                ),
            ));
        }
    }
    Ok(())
}

/// Each message: a role the template knows and text content (a string or text parts).
fn check_messages(object: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(Value::Array(messages)) = object.get("messages") else {
        return Ok(()); // check_message_count has refused this
    };
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages.[{i}]");
        let Some(message) = message.as_object() else {
            return Err(refuse(
                at,
                "invalid_type",
                format!("message {i} is not an object"),
            ));
        };
        match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant") => {}
            Some(role @ ("tool" | "function")) => {
                return Err(refuse(
                    format!("{at}.role"),
                    "unsupported_value",
                    format!(
                        "`{role}` messages are not supported: the local model has no tool calling"
                    ),
                ));
            }
            Some(other) => {
                return Err(refuse(
                    format!("{at}.role"),
                    "invalid_value",
                    format!(
                        "message {i} has role {other:?}; expected system, developer, user or assistant"
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    format!("{at}.role"),
                    "missing_required_parameter",
                    format!("message {i} has no role"),
                ));
            }
        }
        for name in ["tool_calls", "function_call", "audio"] {
            if present(message, name).is_some() {
                return Err(refuse(
                    format!("{at}.{name}"),
                    "unsupported_parameter",
                    format!("message {i}: `{name}` is not supported by this server"),
                ));
            }
        }
        match message.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let kind = part.get("type").and_then(Value::as_str);
                    match kind {
                        Some("text") if part.get("text").is_some_and(Value::is_string) => {}
                        Some("text") => {
                            return Err(refuse(
                                format!("{at}.content.[{j}].text"),
                                "invalid_type",
                                format!("message {i}, part {j}: a text part needs a `text` string"),
                            ));
                        }
                        Some(other) => {
                            return Err(refuse(
                                format!("{at}.content.[{j}].type"),
                                "unsupported_value",
                                format!(
                                    "message {i}, part {j}: `{other}` content parts are not supported: this model reads text only"
                                ),
                            ));
                        }
                        None => {
                            return Err(refuse(
                                format!("{at}.content.[{j}].type"),
                                "missing_required_parameter",
                                format!("message {i}, part {j} has no `type`"),
                            ));
                        }
                    }
                }
            }
            _ => {
                return Err(refuse(
                    format!("{at}.content"),
                    "invalid_type",
                    format!("message {i} needs `content`: a string or a list of text parts"),
                ));
            }
        }
    }
    Ok(())
}

/// The request as types; a field of the wrong type is found by reading it alone, so the refusal
/// names it.
fn typed(value: &Value, object: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    let error = match serde_json::from_value::<ChatRequest>(value.clone()) {
        Ok(request) => return Ok(request),
        Err(e) => e,
    };
    for (name, field) in object {
        if name == "messages" {
            continue;
        }
        let alone = serde_json::json!({ "messages": [], name.as_str(): field });
        if let Err(e) = serde_json::from_value::<ChatRequest>(alone) {
            return Err(refuse(
                name.as_str(),
                "invalid_type",
                format!("`{name}` has the wrong type: {e}"),
            ));
        }
    }
    Err(refuse(
        "messages",
        "invalid_value",
        format!("not a chat completion request: {error}"),
    ))
}

fn check_range(name: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(refuse(
            name,
            "invalid_value",
            format!("{name} {v} must be between {lo} and {hi}"),
        )),
        _ => Ok(()),
    }
}

/// The generation options for choice `index` of an accepted request. `base_bias` is the server's
/// own (the offload token masked); the request's bias adds to it, so a masked token stays masked.
pub fn generation_params(
    request: &ChatRequest,
    limits: &Limits,
    base_bias: &[(u32, f32)],
    index: u32,
) -> GenerationParams {
    // top_p 0 keeps the smallest nucleus, the most likely token: greedy, whatever the temperature.
    let greedy = request.top_p == Some(0.0);
    let mut logit_bias = base_bias.to_vec();
    if let Some(bias) = &request.logit_bias {
        // Keys were checked by check_local.
        logit_bias.extend(
            bias.iter()
                .filter_map(|(token, &b)| Some((token.parse::<u32>().ok()?, b))),
        );
    }
    GenerationParams {
        max_new_tokens: request.token_limit().unwrap_or(limits.default_max_tokens) as usize,
        sampling: SamplingParams {
            temperature: if greedy {
                0.0
            } else {
                request.temperature.unwrap_or(0.0)
            },
            top_p: if greedy {
                1.0
            } else {
                request.top_p.unwrap_or(1.0)
            },
            // Choices are independent samples: each its own seed, reproducible from the request's.
            seed: request.seed.unwrap_or(42).wrapping_add(u64::from(index)),
            presence_penalty: request.presence_penalty.unwrap_or(0.0),
            frequency_penalty: request.frequency_penalty.unwrap_or(0.0),
            ..SamplingParams::default()
        },
        logit_bias,
        stop: request
            .stop
            .as_ref()
            .map(|s| s.strings().to_vec())
            .unwrap_or_default(),
        logprobs: (request.logprobs == Some(true))
            .then(|| request.top_logprobs.unwrap_or(0) as usize),
        ..GenerationParams::default()
    }
}

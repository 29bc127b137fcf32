//! The OpenAI Chat Completions wire format: request, response and streaming chunk types, and an
//! incremental server-sent-events parser. One implementation for every side of the wire (the
//! native and browser cloud clients, and the local server), so they cannot drift apart. No I/O:
//! callers hand in the bytes they received.
//!
//! Deserialisation is lenient where providers differ (unknown fields are ignored, most response
//! fields may be missing, error `code`s may be strings or numbers); serialisation follows OpenAI.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::chat::{Message, Role};
use crate::error::WireError;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// May be missing: a server with one model answers with it.
    #[serde(default)]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// OpenAI's newer name for `max_tokens`; read, never written.
    #[serde(default, skip_serializing)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How many independent answers (choices) to give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopParam>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a decimal string, as JSON keys must be) to a bias in -100..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopParam {
    One(String),
    Many(Vec<String>),
}

impl StopParam {
    pub fn strings(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(list) => list,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]`, with no choices and the whole request's usage.
    #[serde(default)]
    pub include_usage: bool,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            stream: false,
            max_tokens: None,
            temperature: None,
            max_completion_tokens: None,
            top_p: None,
            seed: None,
            n: None,
            stop: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            logprobs: None,
            top_logprobs: None,
            stream_options: None,
        }
    }

    /// The token limit asked for, under either name (the smaller when both are given).
    pub fn token_limit(&self) -> Option<u32> {
        match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A non-streaming completion (`"object": "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// The first choice's text, if it has any.
    pub fn text(&self) -> Option<&str> {
        self.choices.first()?.message.content.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ResponseMessage,
    /// `stop`, `length`, `content_filter`, ...; kept as text because providers add their own.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Present (null unless asked for) as OpenAI sends it.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `choices[].logprobs`: one entry per generated token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    #[serde(default)]
    pub content: Vec<LogprobEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobEntry {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// The assistant's message in a response. Unlike [`Message`] its content may be null (OpenAI
/// sends null with refusals and tool calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

/// One streamed piece (`"object": "chat.completion.chunk"`). The last chunk of a stream that asked
/// for usage has no choices, only `usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatChunk {
    /// The first choice's new text, if any.
    pub fn text(&self) -> Option<&str> {
        self.choices.first()?.delta.content.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    /// Null until the choice's last chunk. Always serialised, as OpenAI does.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The log-probs of the tokens this chunk's text came from, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// An error body: `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    #[serde(default, deserialize_with = "scalar_text_or_empty")]
    pub message: String,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    #[serde(rename = "type", default, deserialize_with = "scalar_text")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    pub param: Option<String>,
    /// A string at OpenAI, a number at some other providers; kept as text.
    #[serde(default, deserialize_with = "scalar_text")]
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(message: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            error: ApiErrorDetail {
                message: message.into(),
                kind: Some(kind.into()),
                param: None,
                code: None,
            },
        }
    }

    /// An `invalid_request_error` about one request parameter, which it names in `param`.
    pub fn invalid_param(
        param: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            error: ApiErrorDetail {
                message: message.into(),
                kind: Some("invalid_request_error".into()),
                param: Some(param.into()),
                code: Some(code.into()),
            },
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.error.code = Some(code.into());
        self
    }

    /// Reads the value of an `error` field, which some providers send as a bare string.
    fn from_error_value(value: serde_json::Value) -> Self {
        let detail = match value {
            serde_json::Value::String(message) => ApiErrorDetail {
                message,
                ..ApiErrorDetail::default()
            },
            serde_json::Value::Object(_) => {
                let text = value.to_string();
                serde_json::from_value(value).unwrap_or_else(|_| ApiErrorDetail {
                    message: text,
                    ..ApiErrorDetail::default()
                })
            }
            other => ApiErrorDetail {
                message: other.to_string(),
                ..ApiErrorDetail::default()
            },
        };
        Self { error: detail }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.error;
        f.write_str(if e.message.is_empty() {
            "(no message)"
        } else {
            &e.message
        })?;
        match (&e.kind, &e.code) {
            (Some(kind), Some(code)) => write!(f, " ({kind}, code {code})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, Some(code)) => write!(f, " (code {code})"),
            (None, None) => Ok(()),
        }
    }
}

/// Any JSON scalar as text (null as None): providers disagree on these fields' types.
fn scalar_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

fn scalar_text_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(scalar_text(d)?.unwrap_or_default())
}

/// What one `data:` payload of a completion stream means.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Chunk(ChatChunk),
    /// `[DONE]`: the stream is complete.
    Done,
}

/// Interprets the data of one server-sent event of a streaming completion. An error object sent
/// mid-stream becomes [`WireError::Api`].
pub fn parse_stream_data(data: &str) -> Result<StreamItem, WireError> {
    if data.trim() == "[DONE]" {
        return Ok(StreamItem::Done);
    }
    parse_json(data, "stream chunk").map(StreamItem::Chunk)
}

/// Interprets a non-streaming response body (also an error body, whatever the HTTP status).
pub fn parse_response(body: &str) -> Result<ChatResponse, WireError> {
    parse_json(body, "response")
}

fn parse_json<T: DeserializeOwned>(text: &str, what: &'static str) -> Result<T, WireError> {
    let malformed = |e: serde_json::Error| WireError::Malformed {
        what,
        reason: e.to_string(),
        excerpt: excerpt(text),
    };
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(malformed)?;
    // An error object is checked first: it has none of the fields of `T`, and its message is
    // what the user needs to see.
    if let Some(error) = value
        .as_object_mut()
        .and_then(|o| o.remove("error"))
        .filter(|e| !e.is_null())
    {
        return Err(WireError::Api(ApiError::from_error_value(error)));
    }
    serde_json::from_value(value).map_err(malformed)
}

/// The start of a payload for an error message (whole characters, at most 80).
fn excerpt(text: &str) -> String {
    excerpt_chars(text, 80)
}

/// The first `max_chars` characters of `text`, with an ellipsis when something was cut.
pub(crate) fn excerpt_chars(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Default limit on one server-sent event; completion chunks are well under a kilobyte.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when there was none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far in the stream (per the spec it carries over to later events).
    pub id: Option<String>,
}

/// An incremental parser of `text/event-stream` (the WHATWG HTML "server-sent events" rules),
/// fed byte slices exactly as they arrive: a slice may end inside a line, inside a UTF-8
/// character or between `\r` and `\n`.
///
/// Memory is bounded: an event whose lines (data so far plus the current line) exceed the limit
/// fails with [`WireError::EventTooLarge`], after which the parser keeps failing (the stream is
/// unusable).
#[derive(Debug, Clone)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The current line's bytes; decoded once complete, so a split character is never seen.
    line: Vec<u8>,
    /// The last line ended with `\r`: a `\n` starting the next slice belongs to it.
    after_cr: bool,
    at_start: bool,
    /// Data lines so far, each followed by `\n` (the spec's data buffer).
    data: String,
    event_type: String,
    last_id: Option<String>,
    retry_ms: Option<u64>,
    failed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            event_type: String::new(),
            last_id: None,
            retry_ms: None,
            failed: false,
        }
    }

    /// Feeds received bytes; returns the events they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, WireError> {
        self.check_failed()?;
        let mut events = Vec::new();
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(rest) = bytes.strip_prefix(b"\n") {
                    bytes = rest;
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.append(&bytes[..end])?;
                    self.after_cr = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                    self.end_line(&mut events);
                }
                None => {
                    self.append(bytes)?;
                    break;
                }
            }
        }
        Ok(events)
    }

    /// End of the stream. The spec discards an event not closed by a blank line; this returns
    /// it instead (an unterminated last line included), so a server that closes right after its
    /// last `data:` line still delivers it, and a truncated one shows up as a malformed chunk
    /// rather than as silence.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, WireError> {
        self.check_failed()?;
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.after_cr = false;
        // An empty line: dispatch whatever is pending.
        self.end_line(&mut events);
        Ok(events.pop())
    }

    /// The last `retry:` the server asked for, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The last event id seen (what a reconnect would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn check_failed(&self) -> Result<(), WireError> {
        if self.failed {
            return Err(WireError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn append(&mut self, part: &[u8]) -> Result<(), WireError> {
        if self.data.len() + self.line.len() + part.len() > self.max_event_bytes {
            self.failed = true;
            self.line = Vec::new();
            self.data = String::new();
            return Err(WireError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let mut bytes = std::mem::take(&mut self.line);
        {
            let mut raw = &bytes[..];
            if self.at_start {
                // A byte-order mark may open the stream.
                self.at_start = false;
                raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
            }
            // The spec decodes the stream as UTF-8 with replacement characters.
            let line = String::from_utf8_lossy(raw);
            if line.is_empty() {
                self.dispatch(events);
            } else if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (&*line, ""),
                };
                self.field(field, value);
            }
            // Lines starting with ':' are comments (keep-alives).
        }
        bytes.clear();
        self.line = bytes;
    }

    fn field(&mut self, field: &str, value: &str) {
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event_type),
            "id" if !value.contains('\0') => {
                self.last_id = (!value.is_empty()).then(|| value.to_string());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let mut event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        if event_type.is_empty() {
            event_type.push_str("message");
        }
        events.push(SseEvent {
            event: event_type,
            data,
            id: self.last_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_whole_characters() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(100);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 81);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn field_without_colon_and_spaces_after_colon() {
        let mut p = SseParser::new();
        let events = p.feed(b"data\n\ndata:  two spaces\n\n").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "");
        assert_eq!(events[1].data, " two spaces");
    }

    #[test]
    fn id_and_retry_are_remembered() {
        let mut p = SseParser::new();
        let events = p
            .feed(b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\n")
            .unwrap();
        assert_eq!(events[1].id.as_deref(), Some("7"));
        assert_eq!(p.retry_ms(), Some(1500));
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let mut p = SseParser::new();
        let events = p.feed(b"\xEF\xBB\xBFdata: x\n\n").unwrap();
        assert_eq!(events[0].data, "x");
    }
}

//! Chat messages and the model's own Jinja chat template, rendered with minijinja the way Hugging
//! Face renders it (trim_blocks, lstrip_blocks, Python string methods).

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Also read from OpenAI's `developer`, its newer name for the same instructions.
    #[serde(alias = "developer")]
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// Read from a string or from OpenAI's list of content parts (text parts only, joined with
    /// newlines as vLLM joins them); always written as a string.
    #[serde(deserialize_with = "content_text")]
    pub content: String,
}

/// The kinds of content part a text model cannot read, named in the error.
fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<serde_json::Map<String, serde_json::Value>>),
    }
    match Content::deserialize(d)? {
        Content::Text(text) => Ok(text),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in &parts {
                match part.get("type").and_then(|t| t.as_str()) {
                    Some("text") => match part.get("text").and_then(|t| t.as_str()) {
                        Some(text) => texts.push(text),
                        None => return Err(D::Error::custom("a text part has no `text` string")),
                    },
                    Some(other) => {
                        return Err(D::Error::custom(format!(
                            "`{other}` content parts are not supported: this model reads text only"
                        )));
                    }
                    None => return Err(D::Error::custom("a content part has no `type`")),
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Brackets private-use characters around a message index; no chat template emits them.
const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';

pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        Ok(Self { env })
    }

    /// The template's text for these messages.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tokenizer: &Tokenizer,
    ) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages_value(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => tokenizer.bos_token().unwrap_or(""),
                eos_token => tokenizer.eos_token().unwrap_or(""),
            })
            .map_err(|e| Error::ChatTemplate(format!("{e:#}")))
    }

    /// Token ids for a conversation. The template's own text may contain special tokens; the
    /// message contents never do: they are encoded as literal text, so a user typing a control
    /// token's string gets that text, not the control token.
    pub fn encode(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tokenizer: &Tokenizer,
    ) -> Result<Vec<u32>> {
        let placeholders: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Message::new(
                    m.role.clone(),
                    format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}"),
                )
            })
            .collect();
        let skeleton = self.render(&placeholders, add_generation_prompt, tokenizer)?;
        let pieces = split_skeleton(&skeleton, messages).ok_or_else(|| {
            Error::ChatTemplate(
                "the template rewrites message contents; cannot keep user text literal".into(),
            )
        })?;
        let mut ids = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Template(text) => ids.extend(tokenizer.encode_with_special(text)?),
                Piece::Content(text) => ids.extend(tokenizer.encode_literal(text)?),
            }
        }
        Ok(ids)
    }
}

/// Messages as the template sees them: a list of `{role, content}` maps.
fn messages_value(messages: &[Message]) -> minijinja::Value {
    let items: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
        .collect();
    minijinja::Value::from(items)
}

enum Piece<'a> {
    Template(&'a str),
    Content(&'a str),
}

/// Splits a rendering of placeholder messages into template text and the real contents, or None
/// if a placeholder was altered or dropped-and-duplicated in a way we cannot map back.
fn split_skeleton<'a>(skeleton: &'a str, messages: &'a [Message]) -> Option<Vec<Piece<'a>>> {
    let mut pieces = Vec::new();
    let mut rest = skeleton;
    while let Some(open) = rest.find(SENTINEL_OPEN) {
        let after_open = &rest[open + SENTINEL_OPEN.len_utf8()..];
        let close = after_open.find(SENTINEL_CLOSE)?;
        let index: usize = after_open[..close].parse().ok()?;
        let content = &messages.get(index)?.content;
        // BPE merges never cross a template/content boundary in these templates (they end in a
        // special token or newline), so encoding the pieces one by one matches whole-text encoding.
        if open > 0 {
            pieces.push(Piece::Template(&rest[..open]));
        }
        pieces.push(Piece::Content(content));
        rest = &after_open[close + SENTINEL_CLOSE.len_utf8()..];
    }
    if rest.contains(SENTINEL_CLOSE) {
        return None;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Template(rest));
    }
    Some(pieces)
}

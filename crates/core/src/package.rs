//! A model package: config, weights, tokenizer and chat template, from one GGUF file or from a
//! Hugging Face folder's files. The caller reads the bytes (from disk, from a fetch); this module
//! only interprets them.

use serde::Deserialize;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{Error, Result, SourceName};
use crate::gguf::GgufFile;
use crate::safetensors::SafetensorsFiles;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;

pub struct ModelPackage {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// `Send + Sync` so an engine can keep the source for a later reload (a CPU fallback after a
    /// lost GPU) and still move between threads.
    pub weights: Box<dyn WeightSource + Send + Sync>,
}

impl ModelPackage {
    /// Everything from one GGUF file: config and tokenizer from its metadata, weights from its
    /// tensors (checked for presence and shape before anything is handed to a backend).
    pub fn from_gguf(source_name: impl Into<SourceName>, bytes: Vec<u8>) -> Result<Self> {
        let file = GgufFile::from_bytes(source_name, bytes)?;
        let config = file.config()?;
        file.validate(&config)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        check_vocab(&config, &tokenizer, file.source_name())?;
        let chat_template = file
            .get_opt_str("tokenizer.chat_template")?
            .map(ChatTemplate::new)
            .transpose()?;
        Ok(Self {
            config,
            tokenizer,
            chat_template,
            weights: Box::new(file),
        })
    }

    /// A Hugging Face checkpoint: `config.json`, safetensors shards, `tokenizer.json` and
    /// optionally `tokenizer_config.json` (bos/eos names and the chat template).
    pub fn from_hf_files(
        source_name: impl Into<SourceName>,
        config_json: &str,
        shards: Vec<(SourceName, Vec<u8>)>,
        tokenizer_json: Option<&[u8]>,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Self> {
        let source_name = source_name.into();
        let config = ModelConfig::from_hf_json(
            config_json,
            &SourceName(format!("{source_name}/config.json")),
        )?;
        let weights = SafetensorsFiles::from_shards(source_name.clone(), shards)?;
        weights.validate(&config)?;
        let tok_config_name = SourceName(format!("{source_name}/tokenizer_config.json"));
        let tok_config: TokenizerConfig = match tokenizer_config_json {
            Some(json) => serde_json::from_str(json).map_err(|e| Error::InvalidConfig {
                source_name: tok_config_name,
                reason: e.to_string(),
            })?,
            None => TokenizerConfig::default(),
        };
        let tokenizer_json = tokenizer_json.ok_or_else(|| Error::MissingTokenizer {
            source_name: source_name.clone(),
            reason: "the folder has no tokenizer.json".into(),
        })?;
        let tokenizer = Tokenizer::from_json(
            &SourceName(format!("{source_name}/tokenizer.json")),
            tokenizer_json,
            tok_config.bos_token.map(TokenName::into_string),
            tok_config.eos_token.map(TokenName::into_string),
        )?;
        check_vocab(&config, &tokenizer, &source_name)?;
        let chat_template = tok_config
            .chat_template
            .and_then(TemplateField::into_default)
            .map(|t| ChatTemplate::new(&t))
            .transpose()?;
        Ok(Self {
            config,
            tokenizer,
            chat_template,
            weights: Box::new(weights),
        })
    }
}

/// A tokenizer whose ids run past the embedding table would index out of bounds at run time.
fn check_vocab(
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    source_name: &SourceName,
) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::InvalidTokenizer {
            source_name: source_name.clone(),
            reason: format!(
                "the tokenizer has {} tokens but the embedding table only {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        });
    }
    Ok(())
}

#[derive(Default, Deserialize)]
struct TokenizerConfig {
    bos_token: Option<TokenName>,
    eos_token: Option<TokenName>,
    chat_template: Option<TemplateField>,
}

/// `"<s>"` or `{"content": "<s>", ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenName {
    Plain(String),
    Object { content: String },
}

impl TokenName {
    fn into_string(self) -> String {
        match self {
            Self::Plain(s) | Self::Object { content: s } => s,
        }
    }
}

/// A template string, or a list of named templates of which "default" is used.
#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

impl TemplateField {
    fn into_default(self) -> Option<String> {
        match self {
            Self::Single(s) => Some(s),
            Self::Named(list) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template),
        }
    }
}

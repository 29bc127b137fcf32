//! The tokenizer, built with the `tokenizers` crate from a GGUF's embedded vocabulary and merges or
//! from a `tokenizer.json`, plus incremental detokenisation for streaming.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result, SourceName};
use crate::gguf::GgufFile;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Split pattern of Qwen2's and LLaMA-3's byte-level BPE (digits single vs. in runs of up to 3).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// End-of-turn tokens that also stop generation when the vocabulary has them.
const KNOWN_STOP_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"];

#[derive(Clone)]
pub struct Tokenizer {
    /// Splits special-token strings out of the text: for chat-template scaffolding only.
    with_special: tokenizers::Tokenizer,
    /// Treats every string as plain text: for anything a user typed.
    literal: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    stop_token_ids: Vec<u32>,
}

impl Tokenizer {
    fn from_inner(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let mut stop_token_ids: Vec<u32> = Vec::new();
        for token in eos_token
            .iter()
            .map(String::as_str)
            .chain(KNOWN_STOP_TOKENS)
        {
            if let Some(id) = inner.token_to_id(token)
                && !stop_token_ids.contains(&id)
            {
                stop_token_ids.push(id);
            }
        }
        Self {
            with_special: inner,
            literal,
            bos_token,
            eos_token,
            stop_token_ids,
        }
    }

    /// Builds the byte-level BPE tokenizer a `gpt2`-type GGUF describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let source_name = file.source_name().clone();
        let invalid = |reason: String| Error::InvalidTokenizer {
            source_name: source_name.clone(),
            reason,
        };
        let model = match file.get_opt_str("tokenizer.ggml.model")? {
            Some(m) => m,
            None => {
                return Err(Error::MissingTokenizer {
                    source_name,
                    reason: "no `tokenizer.ggml.model` field; pass a tokenizer.json".into(),
                });
            }
        };
        if model != "gpt2" {
            return Err(invalid(format!(
                "tokenizer.ggml.model = `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = file.get_string_array("tokenizer.ggml.tokens")?;
        let merges = file.get_string_array("tokenizer.ggml.merges")?;
        let token_types = match file.metadata("tokenizer.ggml.token_type") {
            Some(_) => file.get_int_array("tokenizer.ggml.token_type")?,
            None => Vec::new(),
        };
        let mut vocab = Vocab::default();
        vocab.reserve(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| invalid("vocabulary too large".into()))?;
            vocab.entry((*token).to_string()).or_insert(id);
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        invalid(format!(
                            "merge {i} `{m}` is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| invalid(format!("building BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = file.get_opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        inner.with_pre_tokenizer(Some(pre_tokenizer_for(pre).map_err(invalid)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (id, kind) in token_types.iter().enumerate() {
            let Some(content) = tokens.get(id) else { break };
            match *kind {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(content.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    user_defined.push(AddedToken::from(content.to_string(), false))
                }
                _ => {}
            }
        }
        inner
            .add_special_tokens(special)
            .map_err(|e| invalid(e.to_string()))?;
        inner
            .add_tokens(user_defined)
            .map_err(|e| invalid(e.to_string()))?;

        let token_text = |key: &str| -> Result<Option<String>> {
            match file.get_opt_usize(key)? {
                Some(id) => tokens
                    .get(id)
                    .map(|t| Some((*t).to_string()))
                    .ok_or_else(|| {
                        invalid(format!(
                            "{key} = {id} is outside the vocabulary of {}",
                            tokens.len()
                        ))
                    }),
                None => Ok(None),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id")?;
        let eos = token_text("tokenizer.ggml.eos_token_id")?;
        Ok(Self::from_inner(inner, bos, eos))
    }

    /// Loads a Hugging Face `tokenizer.json`; bos/eos come from `tokenizer_config.json` when given.
    pub fn from_json(
        source_name: &SourceName,
        json: &[u8],
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::InvalidTokenizer {
                source_name: source_name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self::from_inner(inner, bos_token, eos_token))
    }

    /// Encodes text a person wrote: special-token strings in it are plain text, never control
    /// tokens (a user typing `<|im_end|>` must not end a turn).
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        encode(&self.literal, text)
    }

    /// Encodes trusted scaffolding (a rendered chat template) in which special-token strings are
    /// meant as the special tokens.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        encode(&self.with_special, text)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.with_special
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenize(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.with_special.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.with_special.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.with_special.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Token ids that end a generation: the eos token and the usual end-of-turn tokens.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// Writes the tokenizer as a `tokenizer.json`.
    pub fn to_json(&self) -> Result<String> {
        self.with_special
            .to_string(false)
            .map_err(|e| Error::Tokenize(e.to_string()))
    }
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Tokenize(e.to_string()))
}

/// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` names.
fn pre_tokenizer_for(pre: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = |pattern: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| e.to_string())?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into())
    };
    match pre {
        "default" | "gpt2" => Ok(ByteLevel::new(false, false, true).into()),
        // SmolLM: every digit on its own, then GPT-2's pattern.
        "smollm" => Ok(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, false, true).into(),
        ])
        .into()),
        "qwen2" => split(QWEN2_PATTERN),
        "llama3" | "llama-bpe" | "llama-v3" => split(LLAMA3_PATTERN),
        other => Err(format!(
            "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported"
        )),
    }
}

/// Turns a stream of token ids into text pieces that are always whole UTF-8 characters, without
/// re-decoding the whole output each step (the window grows only while a character is split).
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        let prefix_text =
            tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        self.ids.push(id);
        let new_text = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}') {
            let delta = new_text.get(prefix_text.len()..).map(str::to_string);
            if let Some(delta) = delta {
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(Some(delta));
            }
        }
        Ok(None)
    }

    /// Text still held back at the end of the stream (an incomplete character, shown as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let prefix_text =
            tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let new_text = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(new_text
            .get(prefix_text.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }
}

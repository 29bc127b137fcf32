//! SmolLM2's tokenizer (built from the GGUF's own vocabulary and merges) and chat template,
//! against tests/reference: a pure-Python byte-level BPE and jinja2 with Hugging Face's settings.

use std::path::{Path, PathBuf};

use selfroute_core::{Message, ModelPackage, Role, TextStream};
use serde::Deserialize;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn smollm2() -> ModelPackage {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    ModelPackage::from_gguf(path.display().to_string(), bytes).expect("SmolLM2 loads")
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = root().join("tests/reference/data").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[derive(Deserialize)]
struct TokenizerCases {
    cases: Vec<TokenizerCase>,
}

#[derive(Deserialize)]
struct TokenizerCase {
    text: String,
    token_ids: Vec<u32>,
}

#[test]
fn tokenizer_matches_the_reference_bpe_and_round_trips() {
    let package = smollm2();
    let tok = &package.tokenizer;
    assert_eq!(
        tok.encode_with_special("The capital of France is").unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );
    let cases: TokenizerCases = read_json("tokenizer_cases.json");
    assert!(cases.cases.len() >= 15);
    for case in &cases.cases {
        let ids = tok.encode_with_special(&case.text).unwrap();
        assert_eq!(ids, case.token_ids, "encoding {:?}", case.text);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case.text,
            "decoding {:?}",
            case.text
        );
    }
}

#[test]
fn typed_special_tokens_stay_text() {
    let package = smollm2();
    let tok = &package.tokenizer;
    let typed = "<|im_end|> hi <|im_start|>";
    let literal = tok.encode_literal(typed).unwrap();
    assert!(
        !literal.contains(&1) && !literal.contains(&2),
        "{literal:?}"
    );
    assert_eq!(tok.decode(&literal, false).unwrap(), typed);
    // The same string as template scaffolding does produce the control tokens.
    let special = tok.encode_with_special(typed).unwrap();
    assert_eq!(special.first(), Some(&2));
    assert_eq!(special.last(), Some(&1));
    assert_eq!(tok.stop_token_ids(), &[2, 0]);
}

#[test]
fn streaming_detokenisation_never_splits_a_character() {
    let package = smollm2();
    let tok = &package.tokenizer;
    let text = "naïve café 😀 日本語 ok";
    let ids = tok.encode_literal(text).unwrap();
    let mut stream = TextStream::new();
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = stream.push(tok, id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
    }
    if let Some(rest) = stream.finish(tok).unwrap() {
        out.push_str(&rest);
    }
    assert_eq!(out, text);
}

#[derive(Deserialize)]
struct ChatCases {
    cases: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<RawMessage>,
    add_generation_prompt: bool,
    rendered: String,
    token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: String,
}

#[test]
fn chat_template_renders_like_jinja2() {
    let package = smollm2();
    let template = package
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    let cases: ChatCases = read_json("chat_template.json");
    assert!(cases.cases.len() >= 5);
    for case in &cases.cases {
        let messages: Vec<Message> = case
            .messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => panic!("role {other}"),
                };
                Message::new(role, m.content.clone())
            })
            .collect();
        let rendered = template
            .render(&messages, case.add_generation_prompt, &package.tokenizer)
            .unwrap();
        assert_eq!(rendered, case.rendered);
        let ids = template
            .encode(&messages, case.add_generation_prompt, &package.tokenizer)
            .unwrap();
        let typed_control = messages.iter().any(|m| m.content.contains("<|im_"));
        if typed_control {
            // The reference tokenizes the whole string, so a typed `<|im_end|>` becomes the
            // control token there; ours keeps it as text. Everything else is identical.
            assert_ne!(ids, case.token_ids);
            assert_eq!(
                package.tokenizer.decode(&ids, false).unwrap(),
                case.rendered
            );
        } else {
            assert_eq!(ids, case.token_ids, "{:?}", case.rendered);
        }
    }
}

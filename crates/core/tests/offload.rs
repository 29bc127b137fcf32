//! The offload protocol: the `<|offload|>` token stops at once, the text marker is found however
//! the stream splits it, and no output text is lost or shown early.

mod common;

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use common::{CONTROL_TOKENS, GgufBuilder, byte_level_alphabet};
use selfroute_core::offload::{bias_offload, mask_offload};
use selfroute_core::{
    DEFAULT_OFFLOAD_MARKER, Detection, GgufFile, ModelPackage, OFFLOAD_TOKEN, OffloadDetector,
    OffloadReason, OffloadSignal, Tokenizer,
};

const OFFLOAD_ID: u32 = 9999;
const TEXT_ID: u32 = 1;

fn marker_signal() -> OffloadSignal {
    OffloadSignal {
        token_id: Some(OFFLOAD_ID),
        marker: Some(DEFAULT_OFFLOAD_MARKER.to_string()),
    }
}

/// Feeds text pieces; returns everything shown, and the offload if one happened. The result
/// after an offload includes no `finish()` text.
fn run(signal: &OffloadSignal, pieces: &[&str]) -> (String, Option<OffloadReason>) {
    let mut d = OffloadDetector::new(signal);
    let mut shown = String::new();
    for piece in pieces {
        match d.push(TEXT_ID, piece) {
            Detection::Continue { visible } => shown.push_str(&visible),
            Detection::Offload { reason, visible } => {
                shown.push_str(&visible);
                assert_eq!(d.finish(), "", "nothing is held after an offload");
                return (shown, Some(reason));
            }
        }
    }
    shown.push_str(&d.finish());
    (shown, None)
}

/// Every way of cutting `text` into two pieces, plus one character per piece.
fn splits(text: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .map(|i| vec![&text[..i], &text[i..]])
        .collect();
    out.push(
        text.char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect(),
    );
    out
}

#[test]
fn the_token_stops_at_once_and_releases_held_text() {
    let signal = marker_signal();
    let mut d = signal.detector();
    assert_eq!(
        d.push(TEXT_ID, "Let me think. <unk"),
        Detection::Continue {
            visible: "Let me think. ".into()
        }
    );
    assert_eq!(d.held_back(), "<unk");
    // The special token decodes to nothing; the held-back text can no longer become the marker.
    assert_eq!(
        d.push(OFFLOAD_ID, ""),
        Detection::Offload {
            reason: OffloadReason::Token,
            visible: "<unk".into()
        }
    );
    assert_eq!(d.offloaded(), Some(OffloadReason::Token));
    // Later events (the generation's trailing event repeats the last id) show nothing.
    assert_eq!(
        d.push(OFFLOAD_ID, "\u{FFFD}"),
        Detection::Offload {
            reason: OffloadReason::Token,
            visible: String::new()
        }
    );
    assert_eq!(
        d.push(TEXT_ID, "more"),
        Detection::Offload {
            reason: OffloadReason::Token,
            visible: String::new()
        }
    );
    assert_eq!(d.finish(), "");
}

#[test]
fn the_token_alone_needs_no_marker_and_holds_nothing_back() {
    let signal = OffloadSignal {
        token_id: Some(OFFLOAD_ID),
        marker: None,
    };
    let mut d = signal.detector();
    assert_eq!(
        d.push(TEXT_ID, "<unknown> I need external assistance </unknown>"),
        Detection::Continue {
            visible: DEFAULT_OFFLOAD_MARKER.into()
        }
    );
    // A vocabulary that added the token as plain text decodes it; that text is not shown.
    assert_eq!(
        d.push(OFFLOAD_ID, "ok <|offload|>"),
        Detection::Offload {
            reason: OffloadReason::Token,
            visible: "ok ".into()
        }
    );
}

#[test]
fn the_marker_is_found_at_every_split_point() {
    let signal = marker_signal();
    let before = "Hmm, 17 × 23 is hard. ";
    let after = " trailing text";
    let text = format!("{before}{DEFAULT_OFFLOAD_MARKER}{after}");
    let mut cases = 0;
    for pieces in splits(&text) {
        let (shown, reason) = run(&signal, &pieces);
        assert_eq!(reason, Some(OffloadReason::Marker), "pieces {pieces:?}");
        assert_eq!(shown, before, "pieces {pieces:?}");
        cases += 1;
    }
    // Three-way splits: the marker cut twice.
    let start = before.len();
    let end = start + DEFAULT_OFFLOAD_MARKER.len();
    for a in start..end {
        for b in a..=end {
            let pieces = [&text[..a], &text[a..b], &text[b..]];
            let (shown, reason) = run(&signal, &pieces);
            assert_eq!(reason, Some(OffloadReason::Marker), "pieces {pieces:?}");
            assert_eq!(shown, before);
            cases += 1;
        }
    }
    assert!(cases > 1000);
}

#[test]
fn marker_text_is_never_shown_before_it_completes() {
    let signal = marker_signal();
    let mut d = signal.detector();
    let text = format!("ok {DEFAULT_OFFLOAD_MARKER}");
    for (i, c) in text.char_indices() {
        let piece = &text[i..i + c.len_utf8()];
        match d.push(TEXT_ID, piece) {
            Detection::Continue { visible } => {
                assert!(!visible.contains('<'), "showed `{visible}` at byte {i}")
            }
            Detection::Offload { reason, visible } => {
                assert_eq!(reason, OffloadReason::Marker);
                assert_eq!(visible, "");
                assert_eq!(i + 1, text.len());
            }
        }
    }
}

#[test]
fn the_marker_and_text_in_one_piece() {
    let (shown, reason) = run(
        &marker_signal(),
        &[&format!("answer{DEFAULT_OFFLOAD_MARKER}junk")],
    );
    assert_eq!(shown, "answer");
    assert_eq!(reason, Some(OffloadReason::Marker));
    let (shown, reason) = run(&marker_signal(), &[DEFAULT_OFFLOAD_MARKER]);
    assert_eq!((shown.as_str(), reason), ("", Some(OffloadReason::Marker)));
}

#[test]
fn near_misses_are_released_in_full() {
    let signal = marker_signal();
    let near_misses = [
        "<unknown> I need externalXX assistance",
        "<unknown> I need external assistance </unknown",
        "<unknown>I need external assistance</unknown>",
        "<Unknown> I need external assistance </unknown>",
        "a < b and <u and <unk and <unknown> I",
        "<<<<unknown> I need",
        "ends with <unknown> I need external assistance </unknown",
        "unicode 🦀 <unknown> ünïcödé </unknown> €",
    ];
    for text in near_misses {
        for pieces in splits(text) {
            let (shown, reason) = run(&signal, &pieces);
            assert_eq!(reason, None, "{pieces:?}");
            assert_eq!(shown, text, "{pieces:?}");
        }
    }
}

#[test]
fn held_back_text_is_released_as_soon_as_it_is_ruled_out() {
    let signal = marker_signal();
    let mut d = signal.detector();
    assert_eq!(
        d.push(TEXT_ID, "x <unknown> I need"),
        Detection::Continue {
            visible: "x ".into()
        }
    );
    assert_eq!(
        d.push(TEXT_ID, " externalXX"),
        Detection::Continue {
            visible: "<unknown> I need externalXX".into()
        }
    );
    assert_eq!(d.held_back(), "");
    // A ruled-out prefix may contain the start of another possible marker.
    assert_eq!(
        d.push(TEXT_ID, "<unk<unkno"),
        Detection::Continue {
            visible: "<unk".into()
        }
    );
    assert_eq!(d.finish(), "<unkno");
}

#[test]
fn text_is_never_lost_without_an_offload() {
    let signal = marker_signal();
    let text = "Answer: <b>42</b> <unknown> is not <unknown> I need help </unknown> 🦀 <unk";
    // Deterministic pseudo-random piece lengths, 0 to 7 characters.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for seed in 0..200u64 {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut pieces = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = ((state >> 33) % 8) as usize;
            let end = (i + n).min(chars.len());
            let from = chars[i].0;
            let to = chars.get(end).map_or(text.len(), |c| c.0);
            pieces.push(&text[from..to]);
            i = end;
        }
        let (shown, reason) = run(&signal, &pieces);
        assert_eq!(reason, None);
        assert_eq!(shown, text, "seed {seed}: {pieces:?}");
    }
}

#[test]
fn a_custom_marker_and_no_token() {
    let signal = OffloadSignal {
        token_id: None,
        marker: Some("[[CLOUD]]".into()),
    };
    let (shown, reason) = run(&signal, &["a [", "[CL", "OUD", "]", "] b"]);
    assert_eq!(
        (shown.as_str(), reason),
        ("a ", Some(OffloadReason::Marker))
    );
    // Without a token id, no id triggers an offload.
    let mut d = signal.detector();
    assert!(matches!(
        d.push(OFFLOAD_ID, "x"),
        Detection::Continue { .. }
    ));
}

#[test]
fn masking_and_biasing_the_token() {
    let signal = marker_signal();
    let mut bias = vec![(5, 1.0), (OFFLOAD_ID, f32::INFINITY)];
    assert!(mask_offload(&mut bias, &signal));
    assert_eq!(bias, vec![(5, 1.0), (OFFLOAD_ID, f32::NEG_INFINITY)]);
    // A mask stays a mask.
    assert!(bias_offload(&mut bias, &signal, 3.0).unwrap());
    assert_eq!(bias, vec![(5, 1.0), (OFFLOAD_ID, f32::NEG_INFINITY)]);

    let mut bias = Vec::new();
    assert!(bias_offload(&mut bias, &signal, -2.5).unwrap());
    assert!(bias_offload(&mut bias, &signal, 1.0).unwrap());
    assert_eq!(bias, vec![(OFFLOAD_ID, -1.5)]);
    assert!(bias_offload(&mut bias, &signal, f32::NAN).is_err());
    assert!(bias_offload(&mut bias, &signal, f32::NEG_INFINITY).is_err());

    let text_only = OffloadSignal {
        token_id: None,
        marker: Some(DEFAULT_OFFLOAD_MARKER.into()),
    };
    let mut bias = Vec::new();
    assert!(!mask_offload(&mut bias, &text_only));
    assert!(!bias_offload(&mut bias, &text_only, 1.0).unwrap());
    assert!(bias.is_empty());
}

/// A tiny GGUF vocabulary with `<|offload|>` as a control token, as the trainer writes it.
fn tokenizer_with_offload_gguf() -> Tokenizer {
    let mut tokens: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.push(OFFLOAD_TOKEN.to_string());
    let controls = tokens.len();
    tokens.extend(byte_level_alphabet());
    let types = (0..tokens.len())
        .map(|i| Value::I32(if i < controls { 3 } else { 1 }))
        .collect();
    let mut builder = GgufBuilder::tiny_llama();
    builder
        .set_meta(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        )
        .set_meta("tokenizer.ggml.token_type", Value::Array(types));
    let file = GgufFile::from_bytes("offload.gguf", builder.bytes()).expect("gguf parses");
    Tokenizer::from_gguf(&file).expect("tokenizer builds")
}

#[test]
fn the_token_is_found_in_a_gguf_vocabulary() {
    let tok = tokenizer_with_offload_gguf();
    let signal = OffloadSignal::from_tokenizer(&tok, None).unwrap();
    let id = CONTROL_TOKENS.len() as u32;
    assert_eq!(signal.token_id, Some(id));
    assert_eq!(signal.marker, None);
    assert!(signal.is_enabled());
    // Only scaffolding can produce it; typed text never does.
    assert!(
        tok.encode_with_special("a<|offload|>")
            .unwrap()
            .contains(&id)
    );
    assert!(!tok.encode_literal("a<|offload|>").unwrap().contains(&id));
    // Streaming decodes it to nothing (special tokens are skipped).
    assert_eq!(tok.decode(&[id], true).unwrap(), "");
}

#[test]
fn the_token_is_found_in_tokenizer_json_added_tokens() {
    let file = GgufFile::from_bytes("tiny.gguf", GgufBuilder::tiny_llama().bytes()).unwrap();
    let base = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(base.token_to_id(OFFLOAD_TOKEN), None);
    let mut json: serde_json::Value = serde_json::from_str(&base.to_json().unwrap()).unwrap();
    // Appended after the vocabulary, as a trainer extending a tokenizer.json does.
    let id = base.vocab_size() as u32;
    let added = json["added_tokens"].as_array_mut().expect("added_tokens");
    added.push(serde_json::json!({
        "id": id, "content": OFFLOAD_TOKEN, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    }));
    let tok = Tokenizer::from_json(
        &"tokenizer.json".into(),
        json.to_string().as_bytes(),
        None,
        None,
    )
    .unwrap();
    let signal = OffloadSignal::from_tokenizer(&tok, Some(DEFAULT_OFFLOAD_MARKER.into())).unwrap();
    assert_eq!(signal.token_id, Some(id));
    assert_eq!(signal.marker.as_deref(), Some(DEFAULT_OFFLOAD_MARKER));
    assert!(!tok.encode_literal(OFFLOAD_TOKEN).unwrap().contains(&id));
}

#[test]
fn an_empty_marker_is_refused() {
    let tok = tokenizer_with_offload_gguf();
    let err = OffloadSignal::from_tokenizer(&tok, Some(String::new())).unwrap_err();
    assert!(err.to_string().contains("offload marker is empty"), "{err}");
}

#[test]
fn smollm2_has_no_offload_token_and_typing_it_gives_plain_text() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    let package = ModelPackage::from_gguf(path.display().to_string(), bytes).expect("loads");
    let tok = &package.tokenizer;
    assert_eq!(tok.token_to_id(OFFLOAD_TOKEN), None);
    let signal = OffloadSignal::from_tokenizer(tok, None).unwrap();
    assert_eq!(signal.token_id, None);
    assert!(!signal.is_enabled());

    let ids = tok.encode_literal(OFFLOAD_TOKEN).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    // Ordinary vocabulary entries: decoding keeps them even when skipping special tokens.
    assert_eq!(tok.decode(&ids, true).unwrap(), OFFLOAD_TOKEN);
    for id in ids {
        let piece = tok.id_to_token(id).unwrap();
        assert_ne!(piece, OFFLOAD_TOKEN);
        assert_eq!(
            tok.decode(&[id], true).unwrap(),
            tok.decode(&[id], false).unwrap()
        );
    }
}

//! The OpenAI Chat Completions wire format: streams parse the same however the bytes arrive,
//! errors are named, and requests serialise exactly as OpenAI expects.

use selfroute_core::openai::{
    ApiError, ChatChunk, ChatRequest, ChatResponse, Delta, SseEvent, SseParser, StreamItem,
    parse_response, parse_stream_data,
};
use selfroute_core::{Message, Role, WireError};

/// A stream as OpenAI sends it: role chunk, content chunks, finish chunk, `[DONE]`.
const STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n",
    "\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüße, \"},\"finish_reason\":null}]}\n",
    "\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"世界 🦀\\n\"},\"finish_reason\":null}]}\n",
    "\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n",
    "\n",
    "data: [DONE]\n",
    "\n",
);

/// Feeds `bytes` in pieces of `size`; returns the events and what `finish` left.
fn feed_in_pieces(parser: &mut SseParser, bytes: &[u8], size: usize) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for piece in bytes.chunks(size) {
        events.extend(parser.feed(piece).expect("feed"));
    }
    events.extend(parser.finish().expect("finish"));
    events
}

fn items(events: &[SseEvent]) -> Vec<Result<StreamItem, WireError>> {
    events.iter().map(|e| parse_stream_data(&e.data)).collect()
}

/// The text and finish reason a stream's items add up to, checking it ends with `[DONE]`.
fn assemble(items: Vec<Result<StreamItem, WireError>>) -> (Option<Role>, String, Option<String>) {
    let mut role = None;
    let mut text = String::new();
    let mut finish = None;
    let mut done = false;
    for item in items {
        match item.expect("item parses") {
            StreamItem::Chunk(chunk) => {
                assert!(!done, "chunk after [DONE]");
                for choice in chunk.choices {
                    role = role.or(choice.delta.role);
                    text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                    finish = finish.or(choice.finish_reason);
                }
            }
            StreamItem::Done => done = true,
        }
    }
    assert!(done, "no [DONE]");
    (role, text, finish)
}

#[test]
fn a_stream_parses_the_same_in_every_split_size() {
    let bytes = STREAM.as_bytes();
    let whole = feed_in_pieces(&mut SseParser::new(), bytes, bytes.len());
    assert_eq!(whole.len(), 5);
    assert!(whole.iter().all(|e| e.event == "message" && e.id.is_none()));
    let (role, text, finish) = assemble(items(&whole));
    assert_eq!(role, Some(Role::Assistant));
    assert_eq!(text, "Grüße, 世界 🦀\n");
    assert_eq!(finish.as_deref(), Some("stop"));

    for size in 1..=bytes.len() {
        let events = feed_in_pieces(&mut SseParser::new(), bytes, size);
        assert_eq!(events, whole, "pieces of {size} bytes");
    }
}

#[test]
fn crlf_and_cr_line_endings() {
    let crlf = STREAM.replace('\n', "\r\n");
    let cr = STREAM.replace('\n', "\r");
    let expected = feed_in_pieces(&mut SseParser::new(), STREAM.as_bytes(), STREAM.len());
    for (name, stream) in [("CRLF", &crlf), ("CR", &cr)] {
        for size in 1..=stream.len() {
            let events = feed_in_pieces(&mut SseParser::new(), stream.as_bytes(), size);
            assert_eq!(events, expected, "{name} in pieces of {size} bytes");
        }
    }
    // `\r` at the end of one piece and `\n` at the start of the next are one line end.
    let mut p = SseParser::new();
    assert!(p.feed(b"data: a\r").unwrap().is_empty());
    assert!(p.feed(b"\n").unwrap().is_empty());
    let events = p.feed(b"\r\n").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "a");
}

#[test]
fn comments_keep_alives_and_other_fields() {
    let stream = concat!(
        ": OPENROUTER PROCESSING\n",
        "\n",
        ":\n",
        "event: completion\n",
        "id: 42\n",
        "retry: 3000\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n",
        ": keep-alive in the middle of an event\n",
        "unknown-field: ignored\n",
        "\n",
        ": ping\n",
        "\n",
        "data: first line\n",
        "data:second line\n",
        "\n",
        "data: [DONE]\n",
        "\n",
    );
    for size in 1..=stream.len() {
        let mut p = SseParser::new();
        let events = feed_in_pieces(&mut p, stream.as_bytes(), size);
        assert_eq!(events.len(), 3, "pieces of {size}");
        assert_eq!(events[0].event, "completion");
        assert_eq!(events[0].id.as_deref(), Some("42"));
        let StreamItem::Chunk(chunk) = parse_stream_data(&events[0].data).unwrap() else {
            panic!("not a chunk");
        };
        assert_eq!(chunk.text(), Some("hi"));
        // The event type resets after dispatch; the id carries over.
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].id.as_deref(), Some("42"));
        assert_eq!(events[1].data, "first line\nsecond line");
        assert_eq!(
            parse_stream_data(&events[2].data).unwrap(),
            StreamItem::Done
        );
        assert_eq!(p.retry_ms(), Some(3000));
    }
}

#[test]
fn an_error_object_mid_stream_is_an_api_error() {
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n",
    );
    let events = feed_in_pieces(&mut SseParser::new(), stream.as_bytes(), 7);
    let parsed = items(&events);
    assert!(matches!(parsed[0], Ok(StreamItem::Chunk(_))));
    let Err(WireError::Api(error)) = &parsed[1] else {
        panic!("not an API error: {:?}", parsed[1]);
    };
    assert_eq!(error.error.message, "Rate limit reached");
    assert_eq!(error.error.kind.as_deref(), Some("rate_limit_error"));
    assert_eq!(error.error.code.as_deref(), Some("rate_limit_exceeded"));
    let message = parsed[1].as_ref().unwrap_err().to_string();
    assert_eq!(
        message,
        "the API returned an error: Rate limit reached (rate_limit_error, code rate_limit_exceeded)"
    );

    // Other providers' shapes: numeric codes, a bare string.
    let Err(WireError::Api(e)) =
        parse_stream_data(r#"{"error":{"message":"Overloaded","code":529}}"#)
    else {
        panic!()
    };
    assert_eq!(e.error.code.as_deref(), Some("529"));
    assert_eq!(e.to_string(), "Overloaded (code 529)");
    let Err(WireError::Api(e)) = parse_stream_data(r#"{"error":"upstream timed out"}"#) else {
        panic!()
    };
    assert_eq!(e.error.message, "upstream timed out");
}

#[test]
fn a_malformed_chunk_is_named_with_an_excerpt() {
    for data in [
        r#"{"choices":[{"index":0,"delta":{"content":"trunc"#,
        "not json at all",
        r#"{"choices":"not a list"}"#,
        "[DON",
    ] {
        match parse_stream_data(data) {
            Err(e @ WireError::Malformed { .. }) => {
                let message = e.to_string();
                assert!(message.starts_with("malformed stream chunk: "), "{message}");
                assert!(message.contains(&data[..data.len().min(10)]), "{message}");
            }
            other => panic!("{data}: {other:?}"),
        }
    }
    let long = format!("{{\"choices\": [{}", "x".repeat(10_000));
    let WireError::Malformed { excerpt, .. } = parse_stream_data(&long).unwrap_err() else {
        panic!()
    };
    assert!(
        excerpt.chars().count() <= 81 && excerpt.ends_with('…'),
        "{excerpt}"
    );
}

#[test]
fn an_oversize_event_is_refused_and_the_parser_stays_failed() {
    let mut p = SseParser::with_max_event_bytes(64);
    assert_eq!(p.feed(b"data: small\n\n").unwrap().len(), 1);
    // Many data lines that are each small still add up.
    let err = (0..100)
        .find_map(|_| p.feed(b"data: 0123456789\n").err())
        .expect("limit hit");
    assert_eq!(err, WireError::EventTooLarge { limit: 64 });
    assert!(err.to_string().contains("64 bytes"));
    assert_eq!(p.feed(b"\n"), Err(WireError::EventTooLarge { limit: 64 }));
    assert!(p.finish().is_err());

    // One endless line with no line end, fed a byte at a time.
    let mut p = SseParser::with_max_event_bytes(1000);
    let hit = (0..2000).position(|_| p.feed(b"x").is_err());
    assert_eq!(hit, Some(1000));

    // Endless comment lines count too (nothing is buffered without bound).
    let mut p = SseParser::with_max_event_bytes(100);
    let mut line = b":".to_vec();
    line.extend(std::iter::repeat_n(b'k', 200));
    assert!(p.feed(&line).is_err());

    // Exactly at the limit is fine.
    let mut p = SseParser::with_max_event_bytes(10);
    assert_eq!(p.feed(b"data: abcd\n\n").unwrap()[0].data, "abcd");
}

#[test]
fn finish_hands_over_an_unterminated_last_event() {
    let mut p = SseParser::new();
    assert!(p.feed(b"data: [DONE]").unwrap().is_empty());
    let event = p.finish().unwrap().expect("pending event");
    assert_eq!(parse_stream_data(&event.data).unwrap(), StreamItem::Done);
    assert_eq!(p.finish().unwrap(), None);

    // A truncated chunk shows up as malformed, not as silence.
    let mut p = SseParser::new();
    p.feed(b"data: {\"choices\":[{\"ind").unwrap();
    let event = p.finish().unwrap().unwrap();
    assert!(matches!(
        parse_stream_data(&event.data),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let mut p = SseParser::new();
    let events = p.feed(b"data: a\xFFb\n\n").unwrap();
    assert_eq!(events[0].data, "a\u{FFFD}b");
}

#[test]
fn request_serialisation_golden() {
    let mut request = ChatRequest::new(
        "gpt-4o-mini",
        vec![
            Message::system("You are terse."),
            Message::user("What is 17 × 23? \"Quote\"\n"),
            Message::assistant("391"),
        ],
    );
    assert_eq!(
        serde_json::to_string(&request).unwrap(),
        r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is 17 × 23? \"Quote\"\n"},{"role":"assistant","content":"391"}],"stream":false}"#
    );
    request.stream = true;
    request.max_tokens = Some(512);
    request.temperature = Some(0.2);
    let json = serde_json::to_string(&request).unwrap();
    assert!(
        json.ends_with(r#"],"stream":true,"max_tokens":512,"temperature":0.2}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<ChatRequest>(&json).unwrap(), request);
}

#[test]
fn a_request_with_unknown_fields_deserialises() {
    let json = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"bob"}],
        "top_p":0.9,"stream_options":{"include_usage":true},"user":"x"}"#;
    let request: ChatRequest = serde_json::from_str(json).unwrap();
    assert_eq!(request.messages, vec![Message::user("hi")]);
    assert!(!request.stream);
    assert_eq!(request.max_tokens, None);
    assert_eq!(request.temperature, None);
}

#[test]
fn a_response_with_unknown_extra_fields_parses() {
    let body = r#"{
      "id": "chatcmpl-abc",
      "object": "chat.completion",
      "created": 1741569952,
      "model": "gpt-4.1-2025-04-14",
      "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "391", "refusal": null, "annotations": [],
                    "reasoning_content": "17*23 = 391"},
        "logprobs": null,
        "finish_reason": "stop"
      }],
      "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0}},
      "service_tier": "default",
      "system_fingerprint": "fp_x"
    }"#;
    let response = parse_response(body).unwrap();
    assert_eq!(response.id, "chatcmpl-abc");
    assert_eq!(response.created, 1741569952);
    assert_eq!(response.text(), Some("391"));
    assert_eq!(response.choices[0].message.role, Role::Assistant);
    assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(response.usage.unwrap().total_tokens, 29);

    // Round trip through our own serialisation (the local server's side).
    let again: ChatResponse =
        serde_json::from_str(&serde_json::to_string(&response).unwrap()).unwrap();
    assert_eq!(again, response);

    // Null content and a missing usage are fine.
    let minimal = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}]}"#;
    let response = parse_response(minimal).unwrap();
    assert_eq!(response.text(), None);
    assert_eq!(response.usage, None);
}

#[test]
fn error_bodies_and_malformed_responses() {
    let body = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let Err(WireError::Api(e)) = parse_response(body) else {
        panic!()
    };
    assert_eq!(e.error.code.as_deref(), Some("invalid_api_key"));
    // Serialises the way OpenAI does, nulls included (the local server sends these).
    assert_eq!(serde_json::to_string(&e).unwrap(), body);
    let made = ApiError::new("Incorrect API key provided", "invalid_request_error");
    assert_eq!(made.error.message, e.error.message);

    let Err(e) = parse_response("<html>502 Bad Gateway</html>") else {
        panic!()
    };
    let message = e.to_string();
    assert!(message.starts_with("malformed response: "), "{message}");
    assert!(
        message.contains("<html>502 Bad Gateway</html>"),
        "{message}"
    );
    assert!(matches!(
        parse_response(r#"{"id":"x"}"#),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn chunk_serialisation_matches_openai() {
    let chunk = ChatChunk {
        id: "c".into(),
        object: "chat.completion.chunk".into(),
        created: 1,
        model: "m".into(),
        choices: vec![selfroute_core::openai::ChunkChoice {
            index: 0,
            delta: Delta {
                role: None,
                content: Some("hi".into()),
            },
            finish_reason: None,
            logprobs: None,
        }],
        usage: None,
    };
    assert_eq!(
        serde_json::to_string(&chunk).unwrap(),
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#
    );
    // A usage-only final chunk (stream_options.include_usage) has no choices.
    let StreamItem::Chunk(last) = parse_stream_data(
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(last.text(), None);
    assert_eq!(last.usage.map(|u| u.completion_tokens), Some(2));
}

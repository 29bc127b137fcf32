//! What current OpenAI clients send, read by selfroute-core's request types: content as a list of
//! parts, the `developer` role, no `model`, and the sampling options a server maps onto
//! `GenerationParams`.

use selfroute_core::openai::{ChatRequest, StopParam};
use selfroute_core::{Message, Role};

#[test]
fn text_parts_join_and_other_parts_are_refused_by_name() {
    let m: Message = serde_json::from_str(
        r#"{"role":"user","content":[{"type":"text","text":"Name a"},{"type":"text","text":"colour."}]}"#,
    )
    .unwrap();
    assert_eq!(m, Message::user("Name a\ncolour."));
    // Written back as a plain string, which every server reads.
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        r#"{"role":"user","content":"Name a\ncolour."}"#
    );
    let e = serde_json::from_str::<Message>(
        r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`image_url`"), "{e}");
    assert!(serde_json::from_str::<Message>(r#"{"role":"user","content":null}"#).is_err());
}

#[test]
fn developer_is_system() {
    let m: Message = serde_json::from_str(r#"{"role":"developer","content":"Be brief."}"#).unwrap();
    assert_eq!(m.role, Role::System);
}

#[test]
fn the_new_options_read_and_the_model_may_be_missing() {
    let r: ChatRequest = serde_json::from_str(
        r#"{"messages":[{"role":"user","content":"hi"}],"n":2,"stop":"END","presence_penalty":0.5,
            "frequency_penalty":-1,"logit_bias":{"42":-100},"logprobs":true,"top_logprobs":3,
            "stream":true,"stream_options":{"include_usage":true},"max_tokens":9,
            "max_completion_tokens":7}"#,
    )
    .unwrap();
    assert_eq!(r.model, "");
    assert_eq!(r.n, Some(2));
    assert_eq!(r.stop, Some(StopParam::One("END".into())));
    assert_eq!(r.stop.as_ref().unwrap().strings(), ["END"]);
    assert_eq!(r.logit_bias.as_ref().unwrap()["42"], -100.0);
    assert!(r.stream_options.unwrap().include_usage);
    assert_eq!(r.token_limit(), Some(7), "the smaller of the two limits");
    let many: ChatRequest = serde_json::from_str(r#"{"messages":[],"stop":["a","b"]}"#).unwrap();
    assert_eq!(many.stop.unwrap().strings(), ["a", "b"]);
    // Unset options are not written, so a request built in Rust stays as short as before.
    let json = serde_json::to_string(&ChatRequest::new("m", vec![Message::user("hi")])).unwrap();
    assert_eq!(
        json,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}"#
    );
}

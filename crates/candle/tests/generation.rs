//! The generation loop on a tiny random model: KV-cache consistency, prefix reuse, limits.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::{
    Control, Error, FinishReason, GenerationParams, Generator, LogitsFor, Message, ModelPackage,
    SamplingParams,
};

fn tiny() -> (ModelPackage, CandleModel) {
    let package = ModelPackage::from_gguf("tiny.gguf", common::GgufBuilder::tiny_llama().bytes())
        .expect("load");
    let model =
        CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).expect("model");
    (package, model)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn incremental_decoding_matches_one_full_pass() {
    let (_, mut model) = tiny();
    let tokens = [5u32, 77, 200, 13, 42, 9, 150, 3];
    let full = model
        .forward_tokens(&tokens, 0, LogitsFor::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    model.clear_cache();
    // Prefill 3, then one at a time: every row must equal the full pass's row.
    let first = model
        .forward_tokens(&tokens[..3], 0, LogitsFor::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, row) in first.iter().enumerate() {
        assert!(max_abs_diff(row, &full[i]) < 1e-4, "row {i}");
    }
    for i in 3..tokens.len() {
        let step = model
            .forward_tokens(&tokens[i..=i], i, LogitsFor::Last)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(
            max_abs_diff(&step[0], &full[i]) < 1e-4,
            "position {i}: {}",
            max_abs_diff(&step[0], &full[i])
        );
    }
    // A wrong start position is refused, not silently mixed into the cache.
    assert!(model.forward_tokens(&[1], 2, LogitsFor::Last).is_err());
}

#[test]
fn generation_reuses_the_cached_prefix_and_gives_the_same_tokens() {
    let (package, model) = tiny();
    let tokenizer = &package.tokenizer;
    let template = package.chat_template.as_ref().unwrap();
    let params = GenerationParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let mut generator = Generator::new(model);
    let turn1 = template
        .encode(&[Message::user("hello")], true, tokenizer)
        .unwrap();
    let a =
        pollster::block_on(generator.generate(tokenizer, &turn1, &params, |_| Control::Continue))
            .unwrap();
    assert_eq!(a.reused_prompt_tokens, 0);
    // Same prompt again: all but the last prompt token come from the cache, same greedy output.
    let b =
        pollster::block_on(generator.generate(tokenizer, &turn1, &params, |_| Control::Continue))
            .unwrap();
    assert_eq!(b.reused_prompt_tokens, turn1.len() - 1);
    assert_eq!(a.tokens, b.tokens);
    // A fresh generator (no cache) agrees too.
    let (_, fresh) = tiny();
    let c = pollster::block_on(
        Generator::new(fresh).generate(tokenizer, &turn1, &params, |_| Control::Continue),
    )
    .unwrap();
    assert_eq!(a.tokens, c.tokens);
}

#[test]
fn limits_and_cancellation() {
    let (package, model) = tiny();
    let tokenizer = &package.tokenizer;
    let mut generator = Generator::new(model);
    let prompt = tokenizer.encode_literal("abc").unwrap();
    let params = GenerationParams {
        max_new_tokens: 4,
        extra_stop_tokens: vec![],
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = pollster::block_on(generator.generate(tokenizer, &prompt, &params, |e| {
        streamed.push_str(e.text);
        Control::Continue
    }))
    .unwrap();
    assert!(g.tokens.len() <= 4);
    assert_eq!(streamed, g.text);
    if g.tokens.len() == 4 {
        assert_eq!(g.finish_reason, FinishReason::Length);
    }

    let mut calls = 0;
    let params = GenerationParams {
        max_new_tokens: 10,
        // Forbid the stop tokens so the run is long enough to cancel.
        logit_bias: tokenizer
            .stop_token_ids()
            .iter()
            .map(|&t| (t, f32::NEG_INFINITY))
            .collect(),
        ..Default::default()
    };
    let g = pollster::block_on(generator.generate(tokenizer, &prompt, &params, |_| {
        calls += 1;
        if calls == 2 {
            Control::Stop
        } else {
            Control::Continue
        }
    }))
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.tokens.len(), 2);

    // The context is 32: generation stops when it is full.
    let params = GenerationParams {
        max_new_tokens: 100,
        ..params
    };
    let g =
        pollster::block_on(generator.generate(tokenizer, &prompt, &params, |_| Control::Continue))
            .unwrap();
    assert_eq!(g.finish_reason, FinishReason::ContextFull);
    assert_eq!(g.prompt_tokens + g.tokens.len(), 32);
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let (package, model) = tiny();
    let mut generator = Generator::new(model);
    let long = vec![10u32; 40];
    let err = pollster::block_on(generator.generate(
        &package.tokenizer,
        &long,
        &GenerationParams::default(),
        |_| Control::Continue,
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                prompt_tokens: 40,
                context: 32
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("40 tokens") && err.to_string().contains("32"));
    let err = pollster::block_on(generator.generate(
        &package.tokenizer,
        &[],
        &GenerationParams::default(),
        |_| Control::Continue,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::EmptyPrompt));
    let err = pollster::block_on(generator.generate(
        &package.tokenizer,
        &[1_000_000],
        &GenerationParams::default(),
        |_| Control::Continue,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // Bad sampling parameters are refused before any work.
    let params = GenerationParams {
        sampling: SamplingParams {
            top_p: 2.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = pollster::block_on(
        generator.generate(&package.tokenizer, &[5], &params, |_| Control::Continue),
    )
    .unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
}

//! The generation loop's request options on a scripted backend: stop strings (held back while
//! streaming, caught across tokens), log-probabilities against a log-softmax computed here, and
//! the loop's unchanged behaviour with the options off.

mod common;

use selfroute_core::{
    Backend, Control, FinishReason, GenerationParams, Generator, Logits, LogitsFor, ModelConfig,
    ModelPackage, SamplingParams, Tokenizer,
};

/// A "model" whose k-th forward call favours `script[k]`: the loop's output is known in advance.
struct Scripted {
    config: ModelConfig,
    script: Vec<u32>,
    calls: usize,
}

/// The row the k-th call returns: a gentle slope over the vocabulary, the scripted token 8 above.
fn row(vocab: usize, favoured: u32, k: usize) -> Vec<f32> {
    (0..vocab)
        .map(|j| {
            let slope = ((j * 7 + k * 3) % 11) as f32 * 0.25;
            if j == favoured as usize {
                slope + 8.0
            } else {
                slope
            }
        })
        .collect()
}

impl Backend for Scripted {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    async fn forward(
        &mut self,
        _tokens: &[u32],
        _start_pos: usize,
        _want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        let vocab = self.config.vocab_size;
        let favoured = self.script.get(self.calls).copied().unwrap_or(2);
        let data = row(vocab, favoured, self.calls);
        self.calls += 1;
        Ok(Logits {
            rows: 1,
            vocab,
            data,
        })
    }

    fn truncate_cache(&mut self, _len: usize) {}
}

/// The tiny test vocabulary: three control tokens, then one token per byte (byte b is id 3 + b).
fn setup(text: &str) -> (Tokenizer, Generator<Scripted>) {
    let package = ModelPackage::from_gguf("tiny.gguf", common::GgufBuilder::tiny_llama().bytes())
        .expect("tiny model");
    let script = text.bytes().map(|b| 3 + u32::from(b)).collect();
    let backend = Scripted {
        config: package.config.clone(),
        script,
        calls: 0,
    };
    (package.tokenizer, Generator::new(backend))
}

struct Run {
    events: Vec<String>,
    text: String,
    finish: FinishReason,
    tokens: usize,
    logprobs: Vec<selfroute_core::TokenLogprobs>,
}

fn run(text: &str, params: &GenerationParams) -> Run {
    let (tokenizer, mut generator) = setup(text);
    let prompt = [3 + u32::from(b'>')];
    let mut events = Vec::new();
    let mut streamed_logprobs = Vec::new();
    let g = pollster::block_on(generator.generate(&tokenizer, &prompt, params, |e| {
        events.push(e.text.to_string());
        streamed_logprobs.extend(e.logprobs.cloned());
        Control::Continue
    }))
    .expect("generation");
    assert_eq!(events.concat(), g.text, "streamed text equals the answer");
    assert_eq!(
        streamed_logprobs, g.logprobs,
        "streamed log-probs equal the answer's"
    );
    Run {
        events,
        text: g.text,
        finish: g.finish_reason,
        tokens: g.tokens.len(),
        logprobs: g.logprobs,
    }
}

fn with_stop(stops: &[&str]) -> GenerationParams {
    GenerationParams {
        max_new_tokens: 20,
        stop: stops.iter().map(|s| s.to_string()).collect(),
        ..GenerationParams::default()
    }
}

#[test]
fn a_stop_string_split_over_tokens_ends_the_answer_and_is_never_streamed() {
    let r = run("Hi END more", &with_stop(&["END"]));
    assert_eq!(r.text, "Hi ");
    assert_eq!(r.finish, FinishReason::Stop);
    // "E" and "N" were held back, never sent, and the stop ended generation at "D".
    assert!(r.events.iter().all(|e| !e.contains('E')), "{:?}", r.events);
    assert_eq!(r.tokens, 6);
}

#[test]
fn a_false_start_is_streamed_late_but_complete() {
    let r = run("EN ENDx", &with_stop(&["END"]));
    assert_eq!(r.text, "EN ");
    assert_eq!(r.events[..3], ["", "", "EN "]);
    // Ending inside a possible stop string releases the held text as plain text.
    let r = run("abEN", &with_stop(&["END"]));
    assert_eq!(r.text, "abEN");
    assert_eq!(r.finish, FinishReason::Stop, "the scripted end token");
    assert_eq!(r.events.last().map(String::as_str), Some("EN"));
}

#[test]
fn a_stop_inside_a_multibyte_character_is_caught() {
    // "é" is two byte tokens; the stop is "é!" and must match across both.
    let r = run("caf\u{e9}! no", &with_stop(&["\u{e9}!"]));
    assert_eq!(r.text, "caf");
    assert_eq!(r.finish, FinishReason::Stop);
}

#[test]
fn without_options_every_token_streams_its_own_text() {
    let r = run("Hi END", &with_stop(&[]));
    assert_eq!(r.events, ["H", "i", " ", "E", "N", "D"]);
    assert!(r.logprobs.is_empty());
}

/// log-softmax by hand, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let sum: f64 = row.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    row.iter().map(|&l| f64::from(l) - max - sum.ln()).collect()
}

#[test]
fn log_probs_are_the_raw_model_distribution_whatever_the_bias_and_temperature() {
    let params = GenerationParams {
        max_new_tokens: 3,
        logprobs: Some(4),
        // The bias makes the scripted second token lose to token 3 + b'z'...
        logit_bias: vec![(3 + u32::from(b'z'), 100.0)],
        sampling: SamplingParams {
            temperature: 0.7,
            seed: 3,
            ..SamplingParams::default()
        },
        ..GenerationParams::default()
    };
    let r = run("abc", &params);
    assert_eq!(r.text, "zzz", "the bias decided the picks");
    let (tokenizer, _) = setup("");
    let vocab = tokenizer.vocab_size();
    assert_eq!(r.logprobs.len(), 3);
    for (k, lp) in r.logprobs.iter().enumerate() {
        let favoured = 3 + u32::from(b"abc"[k]);
        let expected = log_softmax(&row(vocab, favoured, k));
        // ...but the reported numbers are the model's, before bias and temperature.
        let z = (3 + b'z') as usize;
        assert!((f64::from(lp.chosen.logprob) - expected[z]).abs() < 1e-5);
        assert_eq!(lp.top.len(), 4);
        assert_eq!(lp.top[0].id, favoured);
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]).then(a.cmp(&b)));
        for (got, &want) in lp.top.iter().zip(&order) {
            assert_eq!(got.id as usize, want, "position {k}");
            assert!((f64::from(got.logprob) - expected[want]).abs() < 1e-5);
        }
    }
}

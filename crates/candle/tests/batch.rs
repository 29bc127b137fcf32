//! Batched decoding (several sequences, one forward pass per step) against the single-sequence
//! path, which the parity tests hold to independent references: every batched row must be what
//! that sequence's own one-at-a-time step gives, with sequences at different positions, one
//! joining mid-way and one leaving.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use candle_core::Device;
use selfroute_candle::CandleModel;
use selfroute_core::backend::{BatchStep, SeqId};
use selfroute_core::{LogitsFor, ModelPackage};

fn tiny() -> CandleModel {
    let package = ModelPackage::from_gguf("tiny.gguf", common::GgufBuilder::tiny_llama().bytes())
        .expect("load");
    CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).expect("model")
}

/// A sequence's prompt and the tokens it is fed afterwards, one per step.
struct Script {
    prompt: Vec<u32>,
    fed: Vec<u32>,
}

fn scripts() -> Vec<Script> {
    vec![
        Script {
            prompt: vec![5, 77, 200, 13],
            fed: vec![42, 9, 150, 3, 8, 19],
        },
        Script {
            prompt: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            fed: vec![100, 101, 102, 103, 104, 105],
        },
        Script {
            prompt: vec![250],
            fed: vec![7, 7, 7, 7],
        },
    ]
}

/// The one-at-a-time logits of each fed token: the single-sequence path, prompt then one step
/// at a time, the cache cleared between sequences.
fn reference(model: &mut CandleModel, script: &Script) -> Vec<Vec<f32>> {
    model.clear_cache();
    model
        .forward_tokens(&script.prompt, 0, LogitsFor::Last)
        .expect("prefill");
    let mut rows = Vec::new();
    for (i, token) in script.fed.iter().enumerate() {
        let logits = model
            .forward_tokens(&[*token], script.prompt.len() + i, LogitsFor::Last)
            .expect("step")
            .to_vec2::<f32>()
            .expect("logits");
        rows.push(logits.into_iter().next().expect("one row"));
    }
    model.clear_cache();
    rows
}

#[test]
fn batched_steps_equal_each_sequences_own_steps_with_joins_and_leaves() {
    let mut model = tiny();
    let scripts = scripts();
    let expected: Vec<_> = scripts.iter().map(|s| reference(&mut model, s)).collect();

    // Sequence 2 joins at step 2; sequence 0 leaves after step 3 (of its 6).
    let join_at = [0usize, 0, 2];
    let leave_after = [3usize, usize::MAX, usize::MAX];
    let mut ids: Vec<Option<SeqId>> = vec![None; scripts.len()];
    let mut fed = vec![0usize; scripts.len()];
    let mut compared = 0;
    for step in 0..8 {
        for (s, script) in scripts.iter().enumerate() {
            if join_at[s] == step && ids[s].is_none() {
                let id = model.new_sequence();
                model
                    .forward_sequence(id, &script.prompt, 0, LogitsFor::Last)
                    .expect("prefill");
                ids[s] = Some(id);
            }
        }
        let mut rows = Vec::new();
        let mut steps = Vec::new();
        for (s, script) in scripts.iter().enumerate() {
            let Some(id) = ids[s] else { continue };
            if fed[s] < script.fed.len() {
                steps.push(BatchStep {
                    seq: id,
                    token: script.fed[fed[s]],
                    pos: script.prompt.len() + fed[s],
                });
                rows.push((s, fed[s]));
            }
        }
        if steps.is_empty() {
            continue;
        }
        let logits = model
            .forward_batch(&steps)
            .expect("batched step")
            .to_vec2::<f32>()
            .expect("logits");
        assert_eq!(logits.len(), steps.len());
        for ((s, i), row) in rows.into_iter().zip(&logits) {
            // The batched path runs every row through the same kernels as a single step, so the
            // rows are equal, not just close; a tolerance would hide a row mixed with another.
            assert_eq!(
                row, &expected[s][i],
                "sequence {s}, fed token {i}, step {step}"
            );
            fed[s] += 1;
            compared += 1;
        }
        for (s, id) in ids.iter_mut().enumerate() {
            if leave_after[s] == step
                && let Some(gone) = id.take()
            {
                assert!(model.drop_sequence(gone));
                assert_eq!(model.sequence_len(gone), None);
            }
        }
    }
    // Sequence 0 left after 4 of its tokens; the others ran to the end.
    assert_eq!(fed, [4, 6, 4]);
    assert_eq!(compared, 14);
    // The single-sequence cache was not touched by the batch.
    assert_eq!(model.cached_len(), 0);
}

#[test]
fn a_bad_batched_step_is_refused_and_moves_no_cache() {
    let mut model = tiny();
    let a = model.new_sequence();
    let b = model.new_sequence();
    model
        .forward_sequence(a, &[1, 2, 3], 0, LogitsFor::Last)
        .expect("prefill a");
    model
        .forward_sequence(b, &[4], 0, LogitsFor::Last)
        .expect("prefill b");
    let step = |seq, pos| BatchStep { seq, token: 9, pos };
    // A wrong position in the second row: the first row's cache must not have grown.
    assert!(model.forward_batch(&[step(a, 3), step(b, 5)]).is_err());
    // The same sequence twice, and one never made.
    assert!(model.forward_batch(&[step(a, 3), step(a, 3)]).is_err());
    assert!(
        model
            .forward_batch(&[step(a, 3), step(SeqId(99), 0)])
            .is_err()
    );
    assert_eq!(model.sequence_len(a), Some(3));
    assert_eq!(model.sequence_len(b), Some(1));
    // And the sequences still work.
    let logits = model
        .forward_batch(&[step(b, 1), step(a, 3)])
        .expect("good step");
    assert_eq!(logits.dims2().expect("2-d").0, 2);
    assert_eq!(model.sequence_len(a), Some(4));
    let c = model.new_sequence();
    assert!(model.drop_sequence(c));
    assert!(!model.drop_sequence(c));
}

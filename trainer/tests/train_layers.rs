//! `train --train-layers`: training restricted to the top blocks, the final norm and the offload
//! token's head row. Checked against the full path: the restricted gradient of every weight that
//! still trains equals the full model's gradient of it (the offload row's is the head's row of
//! it), nothing below the top blocks gets one, and a training step moves exactly those weights.

mod support;

use candle_core::{DType, Tensor};
use selfroute_core::OffloadSignal;
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::cloud::SimulatedCloud;
use selfroute_train::model::TrainableModel;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::RolloutConfig;
use selfroute_train::tasks::{Split, Task};
use selfroute_train::train::{OffloadMode, TrainConfig, Trainer, prompt_ids};
use selfroute_train::update::{Scoring, UpdateConfig, accumulate_group};
use selfroute_train::warmup::calibrate_offload_row;

const EOS: u32 = 2;
const OFFLOAD: u32 = 3;

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn gradient_of(model: &TrainableModel) -> candle_core::backprop::GradStore {
    let prompt = vec![1, 45, 17, 92, 130, 9, 77, 200];
    let responses: Vec<Vec<u32>> = vec![
        vec![70, 81, 99, EOS],
        vec![OFFLOAD],
        vec![12, 250, 33, 64, 5, OFFLOAD],
    ];
    let pairs: Vec<(&[u32], f64)> = responses
        .iter()
        .map(Vec::as_slice)
        .zip([0.7, -0.3, 0.45])
        .collect();
    let config = UpdateConfig {
        algo: Algo::Gapg,
        max_new_tokens: 8,
        micro_batch: None,
        every_answer: false,
        scoring: Scoring::default(),
    };
    let mut grads = None;
    accumulate_group(model, &prompt, &pairs, &config, &mut grads).unwrap();
    grads.expect("a gradient")
}

#[test]
fn the_restricted_gradient_is_the_full_gradient_of_what_still_trains() {
    let package = support::tiny_with_offload(64);
    let full = support::trainable(&package, DType::F64);
    let mut top = support::trainable(&package, DType::F64);
    top.train_only(1, &[OFFLOAD]).unwrap();
    // The same function: restricting what trains changes no logit (the offload row's logit is
    // its own product, so only its float rounding may differ).
    let ids = Tensor::new(&[[1u32, 45, 17, 92, 130, 9]], full.device()).unwrap();
    let diff = max_abs_diff(
        &values(&full.forward(&ids).unwrap()),
        &values(&top.forward(&ids).unwrap()),
    );
    assert!(diff < 1e-12, "logits differ by {diff}");

    let full_grads = gradient_of(&full);
    let top_grads = gradient_of(&top);
    let full_vars = full.named_vars().unwrap();
    let full_grad = |name: &str| {
        let (_, var) = full_vars.iter().find(|(n, _)| n == name).unwrap();
        full_grads
            .get(var.as_tensor())
            .expect("a full gradient")
            .clone()
    };
    let trainable = top.trainable_vars().unwrap();
    let names: Vec<&str> = trainable.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("model.layers.1.")
        || *n == "model.norm.weight"
        || *n == "head_row.3"));
    assert!(names.contains(&"head_row.3") && names.contains(&"model.norm.weight"));
    assert!(
        names
            .iter()
            .filter(|n| n.starts_with("model.layers.1."))
            .count()
            >= 9
    );
    for (name, var) in &trainable {
        let ours = values(
            top_grads
                .get(var.as_tensor())
                .expect("a restricted gradient"),
        );
        let want = if name == "head_row.3" {
            // The offload token is never an input here, so the tied embedding's row 3 gets its
            // gradient from the head alone.
            values(
                &full_grad("model.embed_tokens.weight")
                    .narrow(0, 3, 1)
                    .unwrap(),
            )
        } else {
            values(&full_grad(name))
        };
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: no gradient in the full path");
        let d = max_abs_diff(&ours, &want);
        assert!(d <= 1e-10 * scale, "{name}: {d} (scale {scale})");
    }
    // Nothing below the trained block, and no other head row, receives a gradient.
    for (name, var) in top.named_vars().unwrap() {
        if !name.starts_with("model.layers.1.") && name != "model.norm.weight" {
            assert!(
                top_grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
    }
}

#[test]
fn bad_restrictions_are_refused() {
    let package = support::tiny_with_offload(64);
    let mut model = support::trainable(&package, DType::F32);
    for layers in [0, 3] {
        let err = model
            .train_only(layers, &[OFFLOAD])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--train-layers"), "{err}");
    }
    let vocab = package.config.vocab_size as u32;
    let err = model.train_only(1, &[vocab]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn a_restricted_step_moves_only_the_top_blocks_the_norm_and_the_offload_row() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let before: Vec<(String, Vec<f64>)> = model
        .named_vars()
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, values(v.as_tensor())))
        .collect();
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = support::EasyHard.problems(Split::Train, 8, 0).unwrap();
    let prompts: Vec<Vec<u32>> = problems[..2]
        .iter()
        .map(|p| prompt_ids(template, &package.tokenizer, &support::EasyHard, p).unwrap())
        .collect();
    calibrate_offload_row(&model, &prompts, OFFLOAD, 0.3).unwrap();
    let calibrated_row = values(&model.embedding().as_tensor().narrow(0, 3, 1).unwrap());
    let mut cloud = SimulatedCloud::new(1.0, 0).unwrap();
    let config = TrainConfig {
        prompts_per_step: 8,
        rollout: RolloutConfig {
            group: 8,
            max_new_tokens: 4,
            temperature: 1.0,
        },
        algo: Algo::Gapg,
        rho: None,
        reward: RewardConfig::default(),
        schedule: LrSchedule::constant(1e-2, 0),
        adamw: AdamWConfig::default(),
        seed: 3,
        micro_batch: None,
        train_layers: Some(1),
        offload: OffloadMode::Learn,
        every_answer: false,
    };
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        template,
        signal,
        &support::EasyHard,
        &mut cloud,
        problems,
        config,
    )
    .unwrap();
    let m = trainer.step().unwrap();
    assert!(m.grad_norm > 0.0, "the step had a signal: {m:?}");
    for (name, var) in trainer.model.named_vars().unwrap() {
        let now = values(var.as_tensor());
        let (_, was) = before.iter().find(|(n, _)| *n == name).unwrap();
        let moved = max_abs_diff(&now, was) > 0.0;
        if name == "model.embed_tokens.weight" {
            // Only the offload row, and through the policy gradient, not just the calibration.
            let hidden = package.config.hidden_size;
            let rows = now.len() / hidden;
            for r in (0..rows).filter(|&r| r != 3) {
                assert_eq!(
                    now[r * hidden..(r + 1) * hidden],
                    was[r * hidden..(r + 1) * hidden],
                    "embedding row {r} moved"
                );
            }
            let row = &now[3 * hidden..4 * hidden];
            assert!(
                max_abs_diff(row, &calibrated_row) > 0.0,
                "the offload row did not train"
            );
        } else if name.starts_with("model.layers.1.") || name == "model.norm.weight" {
            assert!(moved, "{name} did not move");
        } else {
            assert!(!moved, "{name} moved");
        }
    }
}

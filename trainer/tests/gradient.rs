//! The update's gradient against references computed another way: per sequence, without padding,
//! with the log-softmax written out here (and, for the formula itself, finite differences of a
//! plain-Rust objective). Covers what the learning tests cannot see: padding, the GAPG formula
//! (1/(G-1), local tokens only, no length normalisation), the rollout temperature in the loss,
//! micro-batching and that only the filtered prompts (D1 u D2) enter the update.

mod support;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use selfroute_core::OffloadSignal;
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig, is_zero_variance};
use selfroute_train::cloud::SimulatedCloud;
use selfroute_train::model::TrainableModel;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::RolloutConfig;
use selfroute_train::tasks::{Split, Task};
use selfroute_train::train::{OffloadMode, TrainConfig, Trainer, prompt_ids};
use selfroute_train::update::{
    GroupResponses, ScoredRow, Scoring, UpdateConfig, accumulate, accumulate_group,
    policy_gradient, response_log_probs,
};
use selfroute_train::warmup::calibrate_offload_row;

const EOS: u32 = 2;
const OFFLOAD: u32 = 3;

fn prompt() -> Vec<u32> {
    vec![1, 45, 17, 92, 130, 9, 77, 200]
}

/// A hand-made group: lengths 1 to 6, ended by the stop token, the offload token or the limit.
fn responses() -> Vec<Vec<u32>> {
    vec![
        vec![70, 81, 99, EOS],
        vec![OFFLOAD],
        vec![12, 250, 33, 64, 5, OFFLOAD],
        vec![140, 141],
    ]
}

/// log softmax(row / T)[target] over the tokens not in `masked`, in plain Rust.
fn plain_log_prob(row: &[f64], target: u32, temperature: f64, masked: &[u32]) -> f64 {
    let live = |i: usize| !masked.contains(&(i as u32));
    let max = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| live(i))
        .map(|(_, &l)| l / temperature)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| live(i))
        .map(|(_, &l)| (l / temperature - max).exp())
        .sum();
    row[target as usize] / temperature - max - z.ln()
}

fn one_sequence(model: &TrainableModel, prompt: &[u32], response: &[u32]) -> Tensor {
    let seq: Vec<u32> = prompt
        .iter()
        .chain(&response[..response.len() - 1])
        .copied()
        .collect();
    let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&ids).unwrap().squeeze(0).unwrap()
}

/// sum_t log pi(y_t | prompt, y_<t) at temperature `t`, from the unpadded sequence's logits, in
/// plain Rust.
fn plain_sequence_log_prob(
    model: &TrainableModel,
    prompt: &[u32],
    response: &[u32],
    t: f64,
    masked: &[u32],
) -> f64 {
    let logits = one_sequence(model, prompt, response)
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    response
        .iter()
        .enumerate()
        .map(|(j, &y)| plain_log_prob(&logits[prompt.len() - 1 + j], y, t, masked))
        .sum()
}

/// The same sum as a differentiable scalar, from ops written here (no padding, no
/// `token_log_probs`, no update code).
fn reference_sequence_log_prob(
    model: &TrainableModel,
    prompt: &[u32],
    response: &[u32],
    t: f64,
) -> Tensor {
    let logits = (one_sequence(model, prompt, response) / t).unwrap();
    let mut total: Option<Tensor> = None;
    for (j, &y) in response.iter().enumerate() {
        let row = logits.get(prompt.len() - 1 + j).unwrap();
        // A constant shift keeps exp() in range; it cancels out of the value and the gradient.
        let shift = row
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let log_z = ((((&row - shift).unwrap().exp().unwrap().sum_all().unwrap())
            .log()
            .unwrap())
            + shift)
            .unwrap();
        let lp = (row.get(y as usize).unwrap() - log_z).unwrap();
        total = Some(match total {
            Some(s) => (s + lp).unwrap(),
            None => lp,
        });
    }
    total.unwrap()
}

type Grads = Vec<(String, Vec<f64>)>;

/// A prompt with its responses, each with the factor on its summed log-probs.
type WeightedGroup = (Vec<u32>, Vec<(Vec<u32>, f64)>);

fn flatten(model: &TrainableModel, grads: &GradStore) -> Grads {
    model
        .named_vars()
        .unwrap()
        .into_iter()
        .map(|(name, var)| {
            let values = match grads.get(var.as_tensor()) {
                Some(g) => g
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                None => vec![0.0; var.as_tensor().elem_count()],
            };
            (name, values)
        })
        .collect()
}

/// The gradient of `-sum weight * log pi(response | prompt)`, one sequence at a time, summed here.
fn reference_gradient(model: &TrainableModel, groups: &[WeightedGroup], t: f64) -> Grads {
    let mut total: Option<Grads> = None;
    for (prompt, weighted) in groups {
        for (response, w) in weighted {
            let loss = (reference_sequence_log_prob(model, prompt, response, t) * -*w).unwrap();
            let g = flatten(model, &loss.backward().unwrap());
            total = Some(match total {
                None => g,
                Some(mut sum) => {
                    for ((_, s), (_, x)) in sum.iter_mut().zip(&g) {
                        s.iter_mut().zip(x).for_each(|(a, b)| *a += b);
                    }
                    sum
                }
            });
        }
    }
    total.unwrap()
}

/// Largest |a - b| over every entry, relative to the largest |b|.
fn relative_difference(a: &Grads, b: &Grads) -> f64 {
    let scale = b
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.abs()))
        .fold(0.0, f64::max);
    assert!(scale > 0.0, "the reference gradient is zero");
    let diff = a
        .iter()
        .zip(b)
        .flat_map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f64::max);
    diff / scale
}

fn update_config(algo: Algo, temperature: f32, micro_batch: Option<usize>) -> UpdateConfig {
    UpdateConfig {
        algo,
        max_new_tokens: 8,
        micro_batch,
        every_answer: false,
        scoring: Scoring {
            temperature,
            masked: Vec::new(),
        },
    }
}

#[test]
fn the_loss_scores_log_pi_at_the_rollout_temperature() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let prompt = prompt();
    // The masked case cannot hold the masked token (the rollouts never sampled it).
    let unmasked = responses();
    let masked_ok: Vec<Vec<u32>> = unmasked
        .iter()
        .filter(|r| !r.contains(&OFFLOAD))
        .cloned()
        .collect();
    for (masked, set) in [(vec![], &unmasked), (vec![OFFLOAD], &masked_ok)] {
        for t in [1.0f32, 0.6, 1.7] {
            let refs: Vec<&[u32]> = set.iter().map(Vec::as_slice).collect();
            let scoring = Scoring {
                temperature: t,
                masked: masked.clone(),
            };
            let ours = response_log_probs(&model, &prompt, &refs, &scoring)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for (r, got) in set.iter().zip(&ours) {
                let want = plain_sequence_log_prob(&model, &prompt, r, f64::from(t), &masked);
                assert!(
                    (got - want).abs() < 1e-9 * want.abs().max(1.0),
                    "T {t}, masked {masked:?}, response {r:?}: {got} vs {want}"
                );
            }
        }
    }
    // Greedy rollouts have no log-probability to follow.
    for t in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let scoring = Scoring {
            temperature: t,
            masked: Vec::new(),
        };
        let err = response_log_probs(&model, &prompt, &[&[5u32][..]], &scoring)
            .unwrap_err()
            .to_string();
        assert!(err.contains("temperature"), "{t}: {err}");
    }
}

#[test]
fn a_padded_batch_gradient_is_the_sum_of_one_at_a_time_gradients() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let prompt = prompt();
    let weighted: Vec<(Vec<u32>, f64)> = responses()
        .into_iter()
        .zip([0.7, -0.3, 0.45, -1.1])
        .collect();
    let pairs: Vec<(&[u32], f64)> = weighted.iter().map(|(r, w)| (r.as_slice(), *w)).collect();
    for t in [1.0f32, 0.8] {
        let mut grads = None;
        accumulate_group(
            &model,
            &prompt,
            &pairs,
            &update_config(Algo::Gapg, t, None),
            &mut grads,
        )
        .unwrap();
        let batched = flatten(&model, &grads.unwrap());
        let reference =
            reference_gradient(&model, &[(prompt.clone(), weighted.clone())], f64::from(t));
        let diff = relative_difference(&batched, &reference);
        assert!(diff < 1e-10, "T {t}: padded batch vs one at a time: {diff}");
    }
}

/// Rows of prompts of different lengths in one right-padded pass (and in passes of 3 rows that
/// mix them) give the sum of one-sequence-at-a-time gradients.
#[test]
fn rows_of_different_prompts_share_a_pass_and_give_the_same_gradient() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let long_prompt = prompt();
    let short_prompt = vec![1u32, 33, 8];
    let groups: Vec<WeightedGroup> = vec![
        (
            long_prompt,
            responses()
                .into_iter()
                .zip([0.7, -0.3, 0.45, -1.1])
                .collect(),
        ),
        (
            short_prompt,
            responses()
                .into_iter()
                .rev()
                .zip([-0.2, 0.9, 0.35, -0.6])
                .collect(),
        ),
    ];
    let reference = reference_gradient(&model, &groups, f64::from(0.8f32));
    for micro_batch in [None, Some(3)] {
        let rows: Vec<ScoredRow<'_>> = groups
            .iter()
            .flat_map(|(prompt, weighted)| {
                weighted.iter().map(move |(response, weight)| ScoredRow {
                    prompt,
                    response,
                    weight: *weight,
                })
            })
            .collect();
        let mut grads = None;
        accumulate(
            &model,
            rows,
            &update_config(Algo::Gapg, 0.8, micro_batch),
            &mut grads,
        )
        .unwrap();
        let diff = relative_difference(&flatten(&model, &grads.unwrap()), &reference);
        assert!(diff < 1e-10, "micro-batch {micro_batch:?}: {diff}");
    }
}

/// The GAPG objective of one group, -1/(G-1) sum_i (r_i - mean) sum_t log pi(y_i,t), in plain
/// Rust from the model's logits.
fn plain_gapg_loss(
    model: &TrainableModel,
    prompt: &[u32],
    group: &[Vec<u32>],
    rewards: &[f64],
) -> f64 {
    let g = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / g;
    -group
        .iter()
        .zip(rewards)
        .map(|(y, r)| (r - mean) / (g - 1.0) * plain_sequence_log_prob(model, prompt, y, 1.0, &[]))
        .sum::<f64>()
}

#[test]
fn the_gapg_gradient_of_a_hand_made_group_is_the_formula() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let prompt = prompt();
    let group = responses();
    // A local success, two cloud successes, a failure: mean 0.375.
    let rewards = [1.0, 0.25, 0.0, 0.25];
    let ours = policy_gradient(
        &model,
        &[GroupResponses {
            prompt: &prompt,
            responses: group.iter().map(Vec::as_slice).collect(),
            rewards: &rewards,
        }],
        &update_config(Algo::Gapg, 1.0, None),
    )
    .unwrap();
    assert_eq!(ours.zero_variance_groups, 0);
    let ours = flatten(&model, &ours.grads.unwrap());

    // g = 1/(G-1) sum_i grad log pi(y_i|x) (r_i - mean); the loss's gradient is -g.
    let weighted: Vec<(Vec<u32>, f64)> = group
        .iter()
        .zip(rewards)
        .map(|(y, r)| (y.clone(), (r - 0.375) / 3.0))
        .collect();
    let reference = reference_gradient(&model, &[(prompt.clone(), weighted)], 1.0);
    let diff = relative_difference(&ours, &reference);
    assert!(diff < 1e-10, "GAPG gradient vs the formula: {diff}");

    // The formula itself, by central differences of the plain-Rust objective, on entries of the
    // embedding (rows of prompt and response tokens), a norm, an attention and an MLP weight.
    let eps = 1e-5;
    let mut checked = 0;
    for (name, var) in model.named_vars().unwrap() {
        let entries: Vec<usize> = match name.as_str() {
            "model.embed_tokens.weight" => {
                let hidden = package.config.hidden_size;
                vec![45 * hidden + 3, 250 * hidden + 1, OFFLOAD as usize * hidden]
            }
            "model.norm.weight" | "model.layers.0.self_attn.q_proj.weight" => vec![0, 5],
            "model.layers.1.mlp.down_proj.weight" => vec![7],
            _ => continue,
        };
        let grad = &ours.iter().find(|(n, _)| *n == name).unwrap().1;
        let original = var.as_tensor().copy().unwrap();
        let values = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for idx in entries {
            let at = |delta: f64| {
                let mut v = values.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                plain_gapg_loss(&model, &prompt, &group, &rewards)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&original).unwrap();
            let analytic = grad[idx];
            assert!(
                (numeric - analytic).abs() < 1e-5 * numeric.abs().max(analytic.abs()) + 1e-9,
                "{name}[{idx}]: ours {analytic} vs finite difference {numeric}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "every chosen weight was found");
}

#[test]
fn micro_batches_give_the_unbatched_gradient() {
    let package = support::tiny_with_offload(64);
    // f32, as training runs.
    let model = support::trainable(&package, DType::F32);
    let first = prompt();
    let second: Vec<u32> = vec![1, 60, 61, 62];
    let mut long = responses();
    long.push(vec![8, 9, 10, 11, 12, 13, 14, EOS]);
    let rewards_a = [1.0, 0.25, 0.0, 0.25, 1.0];
    let rewards_b = [0.0, 0.25, 0.25, 0.0];
    let short = responses();
    let groups = [
        GroupResponses {
            prompt: &first,
            responses: long.iter().map(Vec::as_slice).collect(),
            rewards: &rewards_a,
        },
        GroupResponses {
            prompt: &second,
            responses: short.iter().map(Vec::as_slice).collect(),
            rewards: &rewards_b,
        },
    ];
    for algo in [Algo::Gapg, Algo::Grpo, Algo::DrGrpo] {
        let whole = policy_gradient(&model, &groups, &update_config(algo, 0.9, None)).unwrap();
        let whole = flatten(&model, &whole.grads.unwrap());
        for n in [1, 2, 3, 64] {
            let parts =
                policy_gradient(&model, &groups, &update_config(algo, 0.9, Some(n))).unwrap();
            let diff = relative_difference(&flatten(&model, &parts.grads.unwrap()), &whole);
            assert!(diff < 1e-5, "{algo:?}, micro-batch {n}: {diff}");
        }
    }
    let err = policy_gradient(&model, &groups, &update_config(Algo::Gapg, 1.0, Some(0)))
        .err()
        .expect("a micro-batch of 0 is refused")
        .to_string();
    assert!(err.contains("micro-batch"), "{err}");
}

/// `--update-every-answer` (for like-for-like benchmarks) scores the answers without a gradient
/// too, a zero-variance group's included, and leaves the gradient as it was.
#[test]
fn scoring_every_answer_does_the_work_and_keeps_the_gradient() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let first = prompt();
    let second: Vec<u32> = vec![1, 60, 61, 62];
    let answers = responses();
    // Two answers at the group's mean (0.5, a zero advantage); the second group has no variance.
    let rewards_a = [1.0, 0.5, 0.0, 0.5];
    let rewards_b = [0.25; 4];
    let groups = [
        GroupResponses {
            prompt: &first,
            responses: answers.iter().map(Vec::as_slice).collect(),
            rewards: &rewards_a,
        },
        GroupResponses {
            prompt: &second,
            responses: answers.iter().map(Vec::as_slice).collect(),
            rewards: &rewards_b,
        },
    ];
    let skipping = policy_gradient(&model, &groups, &update_config(Algo::Gapg, 1.0, None)).unwrap();
    let mut every = update_config(Algo::Gapg, 1.0, None);
    every.every_answer = true;
    let all = policy_gradient(&model, &groups, &every).unwrap();
    assert_eq!(
        skipping.scored_answers, 2,
        "zero-advantage answers and groups are skipped"
    );
    assert_eq!(all.scored_answers, 8, "every answer is scored");
    assert_eq!(all.zero_variance_groups, 1);
    let diff = relative_difference(
        &flatten(&model, &all.grads.unwrap()),
        &flatten(&model, &skipping.grads.unwrap()),
    );
    assert!(diff < 1e-10, "the gradient changed by {diff}");
}

#[test]
fn the_update_uses_only_the_filtered_prompts() {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F64);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = support::EasyHard.problems(Split::Train, 12, 0).unwrap();
    let prompts: Vec<Vec<u32>> = problems[..2]
        .iter()
        .map(|p| prompt_ids(template, &package.tokenizer, &support::EasyHard, p).unwrap())
        .collect();
    // Offloads on hard prompts make "needs the cloud" groups, more than rho * |D1| admits.
    calibrate_offload_row(&model, &prompts, OFFLOAD, 0.3).unwrap();
    let mut cloud = SimulatedCloud::new(1.0, 0).unwrap();
    let config = TrainConfig {
        prompts_per_step: 12,
        rollout: RolloutConfig {
            group: 8,
            max_new_tokens: 4,
            temperature: 1.0,
        },
        algo: Algo::Gapg,
        rho: Some(3.0 / 7.0),
        reward: RewardConfig::default(),
        schedule: LrSchedule {
            peak: 1e-3,
            warmup_steps: 0,
            total_steps: 1,
            final_fraction: 1.0,
        },
        adamw: AdamWConfig::default(),
        seed: 5,
        micro_batch: None,
        train_layers: None,
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
    let pending = trainer.prepare_update().unwrap();
    let kept = pending.filter.kept();
    let groups = &pending.groups;
    eprintln!(
        "D1 {:?} D2 {:?} dropped {:?}",
        pending.filter.d1, pending.filter.d2, pending.filter.dropped
    );
    // The test means something only if a dropped prompt would have moved the weights.
    assert!(
        pending
            .filter
            .dropped
            .iter()
            .any(|&i| !is_zero_variance(&groups[i].rewards)),
        "no dropped group with a signal; choose another seed"
    );
    assert!(!kept.is_empty() && !pending.filter.d2.is_empty());

    let gapg = |indices: &[usize]| -> Grads {
        let k = indices.len() as f64;
        let batch: Vec<WeightedGroup> = indices
            .iter()
            .map(|&i| {
                let g = &groups[i];
                let n = g.rewards.len() as f64;
                let mean = g.rewards.iter().sum::<f64>() / n;
                let weighted = g
                    .samples
                    .iter()
                    .zip(&g.rewards)
                    .map(|(s, r)| (s.tokens.clone(), (r - mean) / (n - 1.0) / k))
                    .collect();
                (g.prompt.clone(), weighted)
            })
            .collect();
        reference_gradient(&trainer.model, &batch, 1.0)
    };
    let ours = flatten(&trainer.model, pending.gradient.grads.as_ref().unwrap());
    let diff = relative_difference(&ours, &gapg(&kept));
    assert!(diff < 1e-10, "the update vs GAPG over D1 u D2: {diff}");
    let all: Vec<usize> = (0..groups.len()).collect();
    assert!(
        relative_difference(&ours, &gapg(&all)) > 1e-3,
        "the reference over every prompt should differ"
    );
    // The optimiser then takes exactly that gradient.
    let metrics = trainer.apply_update(pending).unwrap();
    assert!(metrics.grad_norm > 0.0 && metrics.dropped > 0);
}

//! Resume determinism: 4 steps straight and 2 steps, a checkpoint, a fresh process's worth of
//! state, and 2 more steps end with identical weights and metrics.

mod support;

use candle_core::DType;
use selfroute_core::OffloadSignal;
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::cloud::SimulatedCloud;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::RolloutConfig;
use selfroute_train::tasks::{Problem, Split, Task, Verdict};
use selfroute_train::train::{OffloadMode, StepMetrics, TrainConfig, Trainer};

/// Correct when the answer has a lowercase letter: rewards vary from the first step.
struct AnyLetter;

impl Task for AnyLetter {
    fn name(&self) -> &str {
        "any-letter"
    }
    fn problems(&self, _: Split, n: usize, _: u64) -> selfroute_train::Result<Vec<Problem>> {
        Ok((0..n)
            .map(|i| Problem {
                id: i as u64,
                question: format!("question {i}"),
                answer: String::new(),
                difficulty: 0,
                system: None,
                subset: String::new(),
            })
            .collect())
    }
    fn verify(&self, _: &Problem, response: &str) -> Verdict {
        if response.chars().any(|c| c.is_ascii_lowercase()) {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }
    fn answer_format(&self) -> &str {
        ""
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        prompts_per_step: 4,
        rollout: RolloutConfig {
            group: 4,
            max_new_tokens: 4,
            temperature: 1.0,
        },
        algo: Algo::Gapg,
        rho: Some(3.0 / 7.0),
        reward: RewardConfig::default(),
        schedule: LrSchedule {
            peak: 1e-2,
            warmup_steps: 1,
            total_steps: 4,
            final_fraction: 0.1,
        },
        adamw: AdamWConfig::default(),
        seed: 11,
        micro_batch: None,
        train_layers: None,
        offload: OffloadMode::Learn,
        every_answer: false,
    }
}

/// Runs `steps` steps (after restoring `resume_from` if given), optionally saving at the end;
/// returns the weights and the metrics.
fn run(
    steps: usize,
    resume_from: Option<&std::path::Path>,
    save_to: Option<&std::path::Path>,
) -> (Vec<(String, Vec<f32>)>, Vec<StepMetrics>) {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.unwrap();
    let task = AnyLetter;
    let mut cloud = SimulatedCloud::new(0.5, 1).unwrap();
    let problems = task.problems(Split::Train, 16, 0).unwrap();
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        &template,
        signal,
        &task,
        &mut cloud,
        problems,
        config(),
    )
    .unwrap();
    if let Some(path) = resume_from {
        trainer.restore_checkpoint(path).unwrap();
    }
    let metrics = (0..steps).map(|_| trainer.step().unwrap()).collect();
    if let Some(path) = save_to {
        trainer.save_checkpoint(path).unwrap();
    }
    let weights = trainer
        .model
        .named_vars()
        .unwrap()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    (weights, metrics)
}

fn strip_timings(m: &StepMetrics) -> StepMetrics {
    StepMetrics {
        tokens_per_s: 0.0,
        rollout_s: 0.0,
        forward_backward_s: 0.0,
        optimizer_s: 0.0,
        update_s: 0.0,
        step_s: 0.0,
        ..m.clone()
    }
}

#[test]
fn four_steps_equal_two_steps_a_checkpoint_and_two_more() {
    let dir = std::env::temp_dir().join(format!("selfroute-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");

    let (initial, _) = run(0, None, None);
    let (straight, straight_metrics) = run(4, None, None);
    let (_, first_half) = run(2, None, Some(&ckpt));
    assert!(ckpt.exists());
    assert!(!dir.join("checkpoint.safetensors.partial").exists());
    let (resumed, second_half) = run(2, Some(&ckpt), None);

    assert_ne!(initial, straight, "training changed the weights");
    assert!(straight_metrics.iter().any(|m| m.grad_norm > 0.0));
    assert_eq!(straight, resumed, "resumed weights differ");
    let joined: Vec<StepMetrics> = first_half
        .iter()
        .chain(&second_half)
        .map(strip_timings)
        .collect();
    let expected: Vec<StepMetrics> = straight_metrics.iter().map(strip_timings).collect();
    assert_eq!(joined, expected);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_corrupt_checkpoint_is_a_clear_error_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("selfroute-badckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.unwrap();
    let mut cloud = SimulatedCloud::new(0.5, 1).unwrap();
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        &template,
        signal,
        &AnyLetter,
        &mut cloud,
        AnyLetter.problems(Split::Train, 4, 0).unwrap(),
        config(),
    )
    .unwrap();
    let err = trainer.restore_checkpoint(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
    assert_eq!(trainer.steps_done(), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_restores_only_its_own_clouds_verdicts() {
    use selfroute_train::checkpoint::TrainerPosition;
    use selfroute_train::cloud::CloudOracle;

    let dir = std::env::temp_dir().join(format!("selfroute-ckpt-cloud-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let package = support::tiny_with_offload(64);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = AnyLetter.problems(Split::Train, 6, 0).unwrap();
    // Saves a checkpoint whose cloud (accuracy 0.5, seed 1) has judged every problem, then
    // resumes with `cloud` and returns how many verdicts it holds.
    let resume_with = |mut cloud: SimulatedCloud| -> usize {
        let mut judged = SimulatedCloud::new(0.5, 1).unwrap();
        for p in &problems {
            judged.is_correct(&AnyLetter, p).unwrap();
        }
        let trainer = Trainer::new(
            support::trainable(&package, DType::F32),
            &package.tokenizer,
            template,
            signal.clone(),
            &AnyLetter,
            &mut judged,
            problems.clone(),
            config(),
        )
        .unwrap();
        trainer.save_checkpoint(&ckpt).unwrap();
        drop(trainer);
        let mut resumed = Trainer::new(
            support::trainable(&package, DType::F32),
            &package.tokenizer,
            template,
            signal.clone(),
            &AnyLetter,
            &mut cloud,
            problems.clone(),
            config(),
        )
        .unwrap();
        resumed.restore_checkpoint(&ckpt).unwrap();
        drop(resumed);
        cloud.calls()
    };
    assert_eq!(resume_with(SimulatedCloud::new(0.5, 1).unwrap()), 6);
    // Another seed or accuracy draws other verdicts: none is reused.
    assert_eq!(resume_with(SimulatedCloud::new(0.5, 2).unwrap()), 0);
    assert_eq!(resume_with(SimulatedCloud::new(0.6, 1).unwrap()), 0);

    // A checkpoint written before verdicts named their cloud still reads; its verdicts match no
    // cloud.
    let old: TrainerPosition = serde_json::from_str(
        r#"{"step":2,"cursor":8,"rng_state":5,"optimizer_step":2,"cloud_verdicts":[[3,true]]}"#,
    )
    .unwrap();
    assert_eq!(old.cloud, "");
    assert_eq!(old.cloud_verdicts, vec![(3, true)]);
    std::fs::remove_dir_all(&dir).ok();
}

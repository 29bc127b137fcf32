//! Training options: greedy rollouts are refused, a prompt too long for the context is skipped
//! and counted, `--no-offload` (the task-tuning-only baseline) never samples the offload token
//! nor asks the cloud, and `--algo collab-aware` is Dr. GRPO without filtering.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::DType;
use selfroute_core::OffloadSignal;
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::cloud::CloudOracle;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::RolloutConfig;
use selfroute_train::tasks::{Problem, Split, Task, Verdict};
use selfroute_train::train::{OffloadMode, StepMetrics, TrainConfig, Trainer, prompt_ids};
use selfroute_train::warmup::calibrate_offload_row;

/// Correct when the answer has a lowercase letter. Odd problems have a question far longer than
/// the tiny model's context of 64 tokens (the byte-level tokenizer makes one token per byte).
struct SomeTooLong;

impl Task for SomeTooLong {
    fn name(&self) -> &str {
        "some-too-long"
    }
    fn problems(&self, _: Split, n: usize, _: u64) -> selfroute_train::Result<Vec<Problem>> {
        Ok((0..n)
            .map(|i| Problem {
                id: i as u64,
                question: if i % 2 == 0 {
                    format!("short {i}")
                } else {
                    format!("long {i} {}", "word ".repeat(40))
                },
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

/// Always right; counts the questions.
struct CountingCloud(Arc<AtomicUsize>);

impl CloudOracle for CountingCloud {
    fn is_correct(&mut self, _: &dyn Task, _: &Problem) -> selfroute_train::Result<bool> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn describe(&self) -> String {
        "counting cloud".into()
    }
    fn verdicts(&self) -> Vec<(u64, bool)> {
        Vec::new()
    }
    fn restore_verdicts(&mut self, _: &[(u64, bool)]) {}
}

fn config(offload: OffloadMode) -> TrainConfig {
    TrainConfig {
        prompts_per_step: 4,
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
            total_steps: 2,
            final_fraction: 1.0,
        },
        adamw: AdamWConfig::default(),
        seed: 2,
        micro_batch: None,
        train_layers: None,
        offload,
        every_answer: false,
    }
}

/// What [`two_steps`] saw.
struct TwoSteps {
    metrics: Vec<StepMetrics>,
    /// Every sampled response's tokens and reward.
    samples: Vec<(Vec<u32>, f64)>,
    /// Questions the cloud got.
    asked: usize,
}

/// Two steps on the tiny model, its offload token raised to half the first-token mass.
fn two_steps(config: TrainConfig) -> TwoSteps {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = SomeTooLong.problems(Split::Train, 8, 0).unwrap();
    let short: Vec<Vec<u32>> = problems
        .iter()
        .step_by(2)
        .map(|p| prompt_ids(template, &package.tokenizer, &SomeTooLong, p).unwrap())
        .collect();
    calibrate_offload_row(&model, &short, signal.token_id.unwrap(), 0.5).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let mut cloud = CountingCloud(asked.clone());
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        template,
        signal,
        &SomeTooLong,
        &mut cloud,
        problems,
        config,
    )
    .unwrap();
    let mut metrics = Vec::new();
    let mut samples = Vec::new();
    for _ in 0..2 {
        let pending = trainer.prepare_update().unwrap();
        for g in &pending.groups {
            for (s, &r) in g.samples.iter().zip(&g.rewards) {
                samples.push((s.tokens.clone(), r));
            }
        }
        metrics.push(trainer.apply_update(pending).unwrap());
    }
    TwoSteps {
        metrics,
        samples,
        asked: asked.load(Ordering::SeqCst),
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_skipped_and_counted() {
    let TwoSteps {
        metrics, samples, ..
    } = two_steps(config(OffloadMode::Learn));
    for m in &metrics {
        assert_eq!(m.skipped_prompts, 2, "{m:?}");
        assert_eq!(
            m.d1 + m.d2 + m.dropped,
            2,
            "the short prompts were trained on"
        );
    }
    assert_eq!(samples.len(), 2 * 2 * 8);
    // metrics.jsonl lines written before the field existed still read back.
    let mut old = serde_json::to_value(&metrics[0]).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("skipped_prompts");
    fields.remove("cloud_failures");
    let read: StepMetrics = serde_json::from_value(old).unwrap();
    assert_eq!((read.skipped_prompts, read.cloud_failures), (0, 0));
}

#[test]
fn no_offload_never_samples_the_offload_token_and_never_asks_the_cloud() {
    const OFFLOAD: u32 = 3;
    // Control: with offloading allowed, this model offloads about half the time.
    let learn = two_steps(config(OffloadMode::Learn));
    assert!(
        learn.metrics.iter().all(|m| m.offload_rate > 0.2),
        "{:?}",
        learn.metrics
    );
    assert!(learn.samples.iter().any(|(t, _)| t.contains(&OFFLOAD)));
    assert!(learn.asked > 0);

    let TwoSteps {
        metrics: never,
        samples,
        asked,
    } = two_steps(config(OffloadMode::Never));
    assert!(
        samples.iter().all(|(t, _)| !t.contains(&OFFLOAD)),
        "the offload token was sampled"
    );
    assert!(never.iter().all(|m| m.offload_rate == 0.0 && m.d2 == 0));
    assert_eq!(asked, 0, "the cloud was asked");
    // Only alpha_local (1) or nothing.
    assert!(samples.iter().all(|&(_, r)| r == 0.0 || r == 1.0));
    assert!(samples.iter().any(|&(_, r)| r == 1.0));
}

#[test]
fn training_refuses_greedy_rollouts_and_an_empty_micro_batch() {
    let package = support::tiny_with_offload(64);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.as_ref().unwrap();
    let problems = SomeTooLong.problems(Split::Train, 2, 0).unwrap();
    let mut bad = Vec::new();
    for t in [0.0f32, -0.5, f32::NAN] {
        let mut c = config(OffloadMode::Learn);
        c.rollout.temperature = t;
        bad.push((c, "temperature"));
    }
    let mut c = config(OffloadMode::Learn);
    c.micro_batch = Some(0);
    bad.push((c, "micro-batch"));
    for (c, word) in bad {
        let mut cloud = CountingCloud(Arc::new(AtomicUsize::new(0)));
        let err = Trainer::new(
            support::trainable(&package, DType::F32),
            &package.tokenizer,
            template,
            signal.clone(),
            &SomeTooLong,
            &mut cloud,
            problems.clone(),
            c,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(err.contains(word), "{err}");
    }
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(args)
        .output()
        .expect("selfroute-train runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn metrics(dir: &std::path::Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_command_line_offers_the_baselines() {
    let dir = std::env::temp_dir().join(format!("selfroute-train-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(
        &model,
        support::gguf::GgufBuilder::tiny_llama_with_offload(256).bytes(),
    )
    .unwrap();
    let model = model.to_str().unwrap().to_string();

    let (ok, help) = cli(&["train", "--help"]);
    assert!(ok);
    for needle in [
        "collab-aware",
        "collaboration-aware",
        "--no-offload",
        "--micro-batch",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }

    let train = |name: &str, extra: &[&str]| -> (bool, String, std::path::PathBuf) {
        let out = dir.join(name);
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--task",
            "arith:1",
            "--steps",
            "2",
            "--prompts-per-step",
            "4",
            "--group",
            "4",
            "--max-new-tokens",
            "4",
            "--lr",
            "1e-3",
        ];
        let out_str = out.to_str().unwrap().to_string();
        args.extend_from_slice(&["--out", &out_str]);
        args.extend_from_slice(extra);
        let (ok, text) = cli(&args);
        (ok, text, out)
    };
    // The random model solves nothing: filtering drops every prompt, no filtering keeps them all.
    let (ok, text, out) = train("dr-grpo", &["--algo", "dr-grpo"]);
    assert!(ok, "{text}");
    assert!(metrics(&out).iter().all(|m| m.dropped == 4));
    let (ok, text, out) = train("collab", &["--algo", "collab-aware"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Dr. GRPO") && text.contains("no filtering"),
        "{text}"
    );
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    assert!(
        m.iter().all(|m| m.dropped == 0 && m.d1 + m.d2 == 4),
        "{m:?}"
    );

    let (ok, text, out) = train("never", &["--no-offload", "--micro-batch", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("no offloading"), "{text}");
    assert!(
        metrics(&out)
            .iter()
            .all(|m| m.offload_rate == 0.0 && m.cloud_calls == 0)
    );

    let (ok, text, _) = train("greedy", &["--temperature", "0"]);
    assert!(!ok && text.contains("temperature"), "{text}");
    let (ok, text, _) = train("empty", &["--micro-batch", "0"]);
    assert!(!ok && text.contains("--micro-batch"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

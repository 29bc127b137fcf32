//! The trainer learns: on a tiny random model and a synthetic task whose right policy is known
//! (answer the easy prompt yourself, hand the hard one to the cloud), GAPG with adaptive filtering
//! finds that policy, and GRPO without filtering collapses to offloading everything, as the paper
//! reports.
//!
//! The controls say which change collapses. At the paper's alpha_c = 0.25, GRPO without filtering
//! collapses, while GAPG without filtering (the same filter setting) and GRPO with filtering (the
//! same algorithm) both learn: GRPO's std scaling drives the collapse and filtering stops it. At
//! alpha_c = 0.9 every rule offloads nearly everything, GAPG with filtering included: there the
//! reward itself, a cloud answer worth almost a local one, is the cause, not the algorithm.
//! (Measured once for all eight combinations: at 0.9, GRPO filtered 0.87, GAPG unfiltered 1.00
//! and GAPG filtered 0.97 offload rate over the last 10 steps.)

mod support;

use candle_core::DType;
use selfroute_core::OffloadSignal;
use selfroute_train::algo::{Algo, LrSchedule, RewardConfig};
use selfroute_train::cloud::SimulatedCloud;
use selfroute_train::optim::AdamWConfig;
use selfroute_train::rollout::{RolloutConfig, rollout_group};
use selfroute_train::tasks::{Problem, Split, Task, Verdict};
use selfroute_train::train::{OffloadMode, StepMetrics, TrainConfig, Trainer, prompt_ids};
use selfroute_train::warmup::{calibrate_offload_row, offload_probability};

/// "easy": any answer with a lowercase ASCII letter is correct (the random model starts out right
/// about a third of the time, as a base model is on prompts within its reach). "hard": no local
/// answer is ever correct; the (simulated, always right) cloud is.
struct EasyHard;

const EASY: &str = "EASY easy easy: answer now";
const HARD: &str = "HARD hard hard: ask the cloud";

impl Task for EasyHard {
    fn name(&self) -> &str {
        "easy-hard"
    }

    fn problems(
        &self,
        _split: Split,
        n: usize,
        _seed: u64,
    ) -> selfroute_train::Result<Vec<Problem>> {
        Ok((0..n)
            .map(|i| Problem {
                id: i as u64,
                // Many differing tokens, so a 2-layer random model can tell the two apart.
                question: if i % 2 == 0 { EASY } else { HARD }.into(),
                answer: "7".into(),
                difficulty: (i % 2) as u32,
                system: None,
                subset: String::new(),
            })
            .collect())
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        if problem.question == EASY && response.chars().any(|c| c.is_ascii_lowercase()) {
            Verdict::Correct
        } else {
            Verdict::Wrong
        }
    }

    fn answer_format(&self) -> &str {
        ""
    }
}

struct Run {
    metrics: Vec<StepMetrics>,
    /// Greedy behaviour after training: (easy offloads, easy correct, hard offloads).
    greedy: (bool, bool, bool),
}

fn train(algo: Algo, alpha_cloud: f64, rho: Option<f64>, steps: usize) -> Run {
    let package = support::tiny_with_offload(64);
    let model = support::trainable(&package, DType::F32);
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    let template = package.chat_template.unwrap();
    let task = EasyHard;
    let mut cloud = SimulatedCloud::new(1.0, 7).unwrap();
    let problems = task.problems(Split::Train, 64, 0).unwrap();
    let config = TrainConfig {
        prompts_per_step: 16,
        rollout: RolloutConfig {
            group: 8,
            max_new_tokens: 4,
            temperature: 1.0,
        },
        algo,
        rho,
        reward: RewardConfig {
            alpha_local: 1.0,
            alpha_cloud,
            format_bonus: None,
        },
        schedule: LrSchedule {
            peak: 3e-3,
            warmup_steps: 0,
            total_steps: steps,
            final_fraction: 1.0,
        },
        adamw: AdamWConfig::default(),
        seed: 3,
        micro_batch: None,
        train_layers: None,
        offload: OffloadMode::Learn,
        every_answer: false,
    };
    // As `prepare` will: raise the offload token from ~1/260 to a share RL can work with, the
    // same for both prompts, so telling them apart is left to RL.
    let prompts: Vec<Vec<u32>> = problems[..2]
        .iter()
        .map(|p| prompt_ids(&template, &package.tokenizer, &task, p).unwrap())
        .collect();
    let offload_id = signal.token_id.unwrap();
    let target = 0.15;
    let warm = calibrate_offload_row(&model, &prompts, offload_id, target).unwrap();
    eprintln!("warm-up: {warm:?}");
    assert!(
        (warm.final_rate - target).abs() < 1e-6 && warm.initial_rate < 0.02,
        "{warm:?}"
    );
    // The fitted rate is the model's true first-token probability, measured the slow way.
    let measured = offload_probability(&model, &prompts, offload_id).unwrap();
    assert!((measured - target).abs() < 1e-4, "{measured}");
    let mut trainer = Trainer::new(
        model,
        &package.tokenizer,
        &template,
        signal.clone(),
        &task,
        &mut cloud,
        problems.clone(),
        config,
    )
    .unwrap();
    let metrics: Vec<StepMetrics> = (0..steps)
        .map(|_| {
            let m = trainer.step().unwrap();
            if std::env::var_os("LEARNING_TRACE").is_some() {
                eprintln!(
                    "{:>3} r {:.3} acc {:.3} off {:.3} d1 {} d2 {} drop {} zv {}",
                    m.step,
                    m.reward_mean,
                    m.local_accuracy,
                    m.offload_rate,
                    m.d1,
                    m.d2,
                    m.dropped,
                    m.zero_variance_groups
                );
            }
            m
        })
        .collect();
    let greedy_cfg = RolloutConfig {
        group: 1,
        max_new_tokens: 4,
        temperature: 0.0,
    };
    let greedy = |p: &Problem| {
        let ids = trainer.prompt_ids(p).unwrap();
        rollout_group(
            &trainer.model,
            &package.tokenizer,
            &signal,
            &ids,
            &greedy_cfg,
            0,
        )
        .unwrap()
        .remove(0)
    };
    let easy = greedy(&problems[0]);
    let hard = greedy(&problems[1]);
    Run {
        greedy: (
            easy.offloaded(),
            task.verify(&problems[0], &easy.text) == Verdict::Correct,
            hard.offloaded(),
        ),
        metrics,
    }
}

fn mean(metrics: &[StepMetrics], f: impl Fn(&StepMetrics) -> f64) -> f64 {
    metrics.iter().map(f).sum::<f64>() / metrics.len() as f64
}

const RHO: Option<f64> = Some(3.0 / 7.0);

/// The right policy: offloads about half the time, greedy answers easy itself and offloads hard.
fn assert_learns(run: &Run, what: &str) {
    let last = &run.metrics[run.metrics.len() - 10..];
    let off = mean(last, |m| m.offload_rate);
    eprintln!(
        "{what}: final offload rate {off:.3}, greedy {:?}",
        run.greedy
    );
    assert!((0.3..0.7).contains(&off), "{what}: offload rate {off}");
    assert_eq!(
        run.greedy,
        (false, true, true),
        "{what}: greedy policy (easy offloads, easy correct, hard offloads)"
    );
}

/// Collapse: (nearly) every response offloads, the easy prompt included.
fn assert_offloads_everything(run: &Run, what: &str, rate: f64) {
    let last = &run.metrics[run.metrics.len() - 10..];
    let off = mean(last, |m| m.offload_rate);
    eprintln!(
        "{what}: final offload rate {off:.3}, greedy {:?}",
        run.greedy
    );
    assert!(off > rate, "{what}: offload rate {off}");
    assert!(
        run.greedy.0 && run.greedy.2,
        "{what}: both prompts offload: {:?}",
        run.greedy
    );
}

#[test]
fn gapg_with_filtering_learns_to_answer_easy_and_offload_hard() {
    let run = train(Algo::Gapg, 0.25, RHO, 120);
    let first = &run.metrics[..10];
    let last = &run.metrics[run.metrics.len() - 10..];
    let (r0, r1) = (
        mean(first, |m| m.reward_mean),
        mean(last, |m| m.reward_mean),
    );
    eprintln!("reward {r0:.3} -> {r1:.3}");
    eprintln!(
        "offload {:.3} -> {:.3}, local accuracy {:.3} -> {:.3}",
        mean(first, |m| m.offload_rate),
        mean(last, |m| m.offload_rate),
        mean(first, |m| m.local_accuracy),
        mean(last, |m| m.local_accuracy)
    );
    // The best policy earns (1 + 0.25) / 2 = 0.625 per response.
    assert!(r1 > r0 + 0.3, "reward {r0} -> {r1}");
    // Half the prompts need the cloud: the offload rate moves toward 0.5.
    let off = mean(last, |m| m.offload_rate);
    assert!((0.3..0.7).contains(&off), "offload rate {off}");
    assert_eq!(
        run.greedy,
        (false, true, true),
        "greedy policy (easy offloads, easy correct, hard offloads)"
    );
    // D2's quota, rho |D1|, is rounded at random, up with the probability of its fraction: a
    // step may keep one more than rho |D1|, never more than that, and the run keeps rho |D1|
    // on average (within three standard deviations of the roundings; fewer when fewer
    // prompts qualify).
    let rho = 3.0 / 7.0;
    assert!(
        run.metrics
            .iter()
            .all(|m| m.d2 as f64 <= (rho * m.d1 as f64 - 1e-9).ceil())
    );
    let d1: usize = run.metrics.iter().map(|m| m.d1).sum();
    let d2: usize = run.metrics.iter().map(|m| m.d2).sum();
    let slack = 3.0 * (0.25 * run.metrics.len() as f64).sqrt();
    assert!(
        d2 as f64 <= rho * d1 as f64 + slack,
        "D2 {d2} over the run, rho |D1| = {}",
        rho * d1 as f64
    );
}

#[test]
fn grpo_without_filtering_collapses_at_the_papers_alpha_cloud() {
    let run = train(Algo::Grpo, 0.25, None, 120);
    assert_offloads_everything(&run, "GRPO, alpha_c 0.25, no filter", 0.9);
}

/// Control: the same reward and filter setting, GAPG's update rule.
#[test]
fn gapg_without_filtering_does_not_collapse() {
    let run = train(Algo::Gapg, 0.25, None, 120);
    assert_learns(&run, "GAPG, alpha_c 0.25, no filter");
}

/// Control: the same reward and update rule, with filtering.
#[test]
fn grpo_with_filtering_does_not_collapse() {
    let run = train(Algo::Grpo, 0.25, RHO, 120);
    assert_learns(&run, "GRPO, alpha_c 0.25, filtered");
}

#[test]
fn grpo_with_alpha_cloud_near_alpha_local_collapses_to_offloading() {
    let run = train(Algo::Grpo, 0.9, None, 120);
    assert_offloads_everything(&run, "GRPO, alpha_c 0.9, no filter", 0.9);
}

/// Control for the test above: the same alpha_c with both of its other changes undone (GAPG,
/// filtering) offloads nearly everything too, so at 0.9 the reward is the cause.
#[test]
fn near_alpha_local_even_gapg_with_filtering_offloads_nearly_everything() {
    let run = train(Algo::Gapg, 0.9, RHO, 120);
    assert_offloads_everything(&run, "GAPG, alpha_c 0.9, filtered", 0.85);
}

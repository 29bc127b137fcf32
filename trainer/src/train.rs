//! One training step: roll out G responses per prompt, score them with the hierarchical reward,
//! filter the prompts, and take one policy-gradient step.

use std::time::Instant;

use selfroute_core::rng::SplitMix64;
use selfroute_core::{ChatTemplate, Message, OffloadSignal, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::algo::{
    Algo, GroupSummary, LrSchedule, ResponseOutcome, RewardConfig, adaptive_filter, advantages,
    is_zero_variance,
};
use crate::cloud::CloudOracle;
use crate::error::{Result, TrainError};
use crate::model::TrainableModel;
use crate::optim::{AdamW, AdamWConfig};
use crate::rollout::{RolloutConfig, Sample, rollout_group};
use crate::tasks::{Problem, Task, Verdict};
use crate::update::{accumulate_group, response_weight};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub prompts_per_step: usize,
    pub rollout: RolloutConfig,
    pub algo: Algo,
    /// `Some(rho)`: adaptive prompt filtering; None: `--no-filter`.
    pub rho: Option<f64>,
    pub reward: RewardConfig,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub seed: u64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Correct local answers over all responses.
    pub local_accuracy: f64,
    pub offload_rate: f64,
    /// Of the offloading responses, the share whose cloud answer is correct.
    pub cloud_correct_rate: f64,
    pub d1: usize,
    pub d2: usize,
    pub dropped: usize,
    /// Kept groups whose rewards are all equal (no gradient).
    pub zero_variance_groups: usize,
    pub grad_norm: f64,
    /// Mean entropy (nats) per sampled token.
    pub entropy: f64,
    pub response_tokens_mean: f64,
    pub learning_rate: f64,
    /// Which cloud scored the offloads ("simulated cloud (...)" when simulated).
    pub cloud: String,
    pub cloud_calls: usize,
    pub tokens_per_s: f64,
    pub rollout_s: f64,
    /// Log-prob forward and backward passes of the kept groups.
    pub forward_backward_s: f64,
    pub optimizer_s: f64,
    /// forward_backward_s + optimizer_s.
    pub update_s: f64,
    pub step_s: f64,
}

/// The chat prompt for a problem: one user message with its question and the task's answer
/// format. Training, `prepare` and evaluation all format prompts this way.
pub fn prompt_ids(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    task: &dyn Task,
    problem: &Problem,
) -> Result<Vec<u32>> {
    Ok(template.encode(
        &[Message::user(prompt_text(task, problem))],
        true,
        tokenizer,
    )?)
}

/// The user message for a problem: its question and the task's answer format. The cloud gets the
/// same text the local model does.
pub fn prompt_text(task: &dyn Task, problem: &Problem) -> String {
    format!("{} {}", problem.question, task.answer_format())
        .trim_end()
        .to_string()
}

pub struct Trainer<'a> {
    pub model: TrainableModel,
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    signal: OffloadSignal,
    task: &'a dyn Task,
    cloud: &'a mut dyn CloudOracle,
    config: TrainConfig,
    optimizer: AdamW,
    problems: Vec<Problem>,
    cursor: usize,
    rng: SplitMix64,
    step: usize,
}

impl<'a> Trainer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: TrainableModel,
        tokenizer: &'a Tokenizer,
        template: &'a ChatTemplate,
        signal: OffloadSignal,
        task: &'a dyn Task,
        cloud: &'a mut dyn CloudOracle,
        problems: Vec<Problem>,
        config: TrainConfig,
    ) -> Result<Self> {
        config.reward.validate()?;
        if problems.is_empty() || config.prompts_per_step == 0 || config.rollout.group < 2 {
            return Err(TrainError::InvalidSettings(
                "training needs problems, at least one prompt per step and a group of 2 or more"
                    .into(),
            ));
        }
        let optimizer = AdamW::new(model.named_vars()?, config.adamw)?;
        Ok(Self {
            model,
            tokenizer,
            template,
            signal,
            task,
            cloud,
            rng: SplitMix64::new(config.seed),
            config,
            optimizer,
            problems,
            cursor: 0,
            step: 0,
        })
    }

    /// The chat prompt for a problem (see [`prompt_ids`]).
    pub fn prompt_ids(&self, problem: &Problem) -> Result<Vec<u32>> {
        prompt_ids(self.template, self.tokenizer, self.task, problem)
    }

    fn next_batch(&mut self) -> Vec<Problem> {
        (0..self.config.prompts_per_step)
            .map(|_| {
                let p = self.problems[self.cursor % self.problems.len()].clone();
                self.cursor += 1;
                p
            })
            .collect()
    }

    fn score(&mut self, problem: &Problem, sample: &Sample) -> Result<(f64, bool)> {
        if sample.offloaded() {
            let cloud_correct = self.cloud.is_correct(self.task, problem)?;
            let r = self
                .config
                .reward
                .reward(ResponseOutcome::Offload { cloud_correct });
            return Ok((r, false));
        }
        let verdict = self.task.verify(problem, &sample.text);
        let correct = verdict == Verdict::Correct;
        let r = self.config.reward.reward(ResponseOutcome::Local {
            correct,
            well_formed: verdict != Verdict::Malformed,
        });
        Ok((r, correct))
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Writes everything needed to continue exactly where this trainer is.
    pub fn save_checkpoint(&self, path: &std::path::Path) -> Result<()> {
        let weights = self
            .model
            .named_vars()?
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        let (moments, optimizer_step) = self.optimizer.state();
        crate::checkpoint::save(
            path,
            &crate::checkpoint::Checkpoint {
                weights,
                moments,
                position: crate::checkpoint::TrainerPosition {
                    step: self.step,
                    cursor: self.cursor,
                    rng_state: self.rng.state(),
                    optimizer_step,
                    cloud_verdicts: self.cloud.verdicts(),
                },
            },
        )
    }

    /// Continues from a checkpoint written by [`Self::save_checkpoint`] for the same model.
    pub fn restore_checkpoint(&mut self, path: &std::path::Path) -> Result<()> {
        let checkpoint = crate::checkpoint::load(path, self.model.dtype(), self.model.device())?;
        crate::checkpoint::load_weights_into(&self.model, &checkpoint.weights, path)?;
        let p = checkpoint.position;
        self.optimizer
            .restore(checkpoint.moments, p.optimizer_step)?;
        self.step = p.step;
        self.cursor = p.cursor;
        self.rng = SplitMix64::new(p.rng_state);
        self.cloud.restore_verdicts(&p.cloud_verdicts);
        Ok(())
    }

    pub fn step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let batch = self.next_batch();
        let mut prompts = batch
            .iter()
            .map(|p| Ok((p.clone(), self.prompt_ids(p)?)))
            .collect::<Result<Vec<_>>>()?;
        // Longest first, so a batch that does not fit fails at its first rollout.
        prompts.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));

        let mut groups = Vec::with_capacity(prompts.len());
        let mut all_rewards = Vec::new();
        let (mut local_correct, mut offloads, mut offload_cloud_correct) = (0usize, 0usize, 0usize);
        let (mut tokens, mut entropy) = (0usize, 0.0f64);
        for (problem, ids) in &prompts {
            let seed = self.rng.next_u64();
            let samples = rollout_group(
                &self.model,
                self.tokenizer,
                &self.signal,
                ids,
                &self.config.rollout,
                seed,
            )?;
            let mut rewards = Vec::with_capacity(samples.len());
            let mut summary = GroupSummary {
                local_correct: 0,
                offloaded: 0,
                cloud_correct: false,
            };
            for sample in &samples {
                let (r, correct) = self.score(problem, sample)?;
                rewards.push(r);
                tokens += sample.tokens.len();
                entropy += sample.entropy_sum;
                if correct {
                    summary.local_correct += 1;
                }
                if sample.offloaded() {
                    summary.offloaded += 1;
                    summary.cloud_correct = self.cloud.is_correct(self.task, problem)?;
                    offload_cloud_correct += usize::from(summary.cloud_correct);
                }
            }
            local_correct += summary.local_correct;
            offloads += summary.offloaded;
            all_rewards.extend_from_slice(&rewards);
            groups.push((summary, samples, rewards));
        }
        let rollout_s = started.elapsed().as_secs_f64();

        let update_started = Instant::now();
        let summaries: Vec<GroupSummary> = groups.iter().map(|g| g.0).collect();
        let filtered = adaptive_filter(&summaries, self.config.rho, &mut self.rng);
        let kept = filtered.kept();
        let g = self.config.rollout.group;
        let mut grads = None;
        let mut zero_variance = 0;
        for &i in &kept {
            let (_, samples, rewards) = &groups[i];
            if is_zero_variance(rewards) {
                zero_variance += 1;
                continue;
            }
            let adv = advantages(self.config.algo, rewards);
            let weighted: Vec<(&[u32], f64)> = samples
                .iter()
                .zip(&adv)
                .map(|(s, &a)| {
                    let w = response_weight(
                        self.config.algo,
                        a,
                        s.tokens.len(),
                        g,
                        kept.len(),
                        self.config.rollout.max_new_tokens,
                    );
                    (s.tokens.as_slice(), w)
                })
                .collect();
            accumulate_group(&self.model, &prompts[i].1, &weighted, &mut grads)?;
        }
        let backward_s = update_started.elapsed().as_secs_f64();
        let lr = self.config.schedule.at(self.step);
        let optimizer_started = Instant::now();
        let grad_norm = match &grads {
            Some(grads) => self.optimizer.step(grads, lr)?.grad_norm,
            None => 0.0,
        };
        let optimizer_s = optimizer_started.elapsed().as_secs_f64();
        let update_s = update_started.elapsed().as_secs_f64();

        let n = all_rewards.len().max(1) as f64;
        let mean = all_rewards.iter().sum::<f64>() / n;
        let std = (all_rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let step_s = started.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            step: self.step,
            reward_mean: mean,
            reward_std: std,
            local_accuracy: local_correct as f64 / n,
            offload_rate: offloads as f64 / n,
            cloud_correct_rate: if offloads > 0 {
                offload_cloud_correct as f64 / offloads as f64
            } else {
                0.0
            },
            d1: filtered.d1.len(),
            d2: filtered.d2.len(),
            dropped: filtered.dropped.len(),
            zero_variance_groups: zero_variance,
            grad_norm,
            entropy: entropy / tokens.max(1) as f64,
            response_tokens_mean: tokens as f64 / n,
            learning_rate: lr,
            cloud: self.cloud.describe(),
            cloud_calls: self.cloud.calls(),
            tokens_per_s: tokens as f64 / rollout_s.max(1e-9),
            rollout_s,
            forward_backward_s: backward_s,
            optimizer_s,
            update_s,
            step_s,
        };
        self.step += 1;
        Ok(metrics)
    }
}

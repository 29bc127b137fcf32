//! One training step: roll out G responses per prompt, score them with the hierarchical reward,
//! filter the prompts, and take one policy-gradient step.

use std::collections::HashMap;
use std::time::Instant;

use selfroute_core::rng::SplitMix64;
use selfroute_core::{ChatTemplate, Message, OffloadSignal, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::algo::{
    Algo, FilterOutcome, GroupSummary, LrSchedule, ResponseOutcome, RewardConfig, adaptive_filter,
};
use crate::cloud::CloudOracle;
use crate::error::{Result, TrainError};
use crate::model::TrainableModel;
use crate::optim::{AdamW, AdamWConfig};
use crate::rollout::{RolloutConfig, RolloutEngine, Sample, fits_context, rollout_groups};
use crate::tasks::{Problem, Task, Verdict};
use crate::update::{GroupResponses, PolicyGradient, Scoring, UpdateConfig, policy_gradient};

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
    /// Sequences per forward/backward pass of the update; None: a whole group at once. The
    /// passes' gradients are summed, so only memory and speed change.
    pub micro_batch: Option<usize>,
    /// `Some(k)`: only the top k blocks, the final norm and the offload token's head row train
    /// ([`TrainableModel::train_only`]); None: every weight.
    pub train_layers: Option<usize>,
    pub offload: OffloadMode,
    /// [`UpdateConfig::every_answer`].
    pub every_answer: bool,
}

/// Whether the model may offload while it trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffloadMode {
    /// It may: an offload whose cloud answer is correct earns alpha_cloud.
    #[default]
    Learn,
    /// `--no-offload`, the paper's task-tuning-only baseline: the offload token is masked in the
    /// rollouts (never sampled), the cloud is never asked and only a correct local answer earns
    /// a reward (alpha_local). A text-marker offload (a model without the token) earns 0.
    Never,
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
    /// Answers whose log-probabilities the update's forward/backward passes computed.
    #[serde(default)]
    pub updated_answers: usize,
    pub grad_norm: f64,
    /// Mean entropy (nats) per sampled token.
    pub entropy: f64,
    pub response_tokens_mean: f64,
    pub learning_rate: f64,
    /// Prompts of the batch left out because prompt + max_new_tokens exceeds the context.
    #[serde(default)]
    pub skipped_prompts: usize,
    /// Cloud calls of this step that failed (each scored as a wrong cloud answer).
    #[serde(default)]
    pub cloud_failures: usize,
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
    Ok(template.encode(&prompt_messages(task, problem), true, tokenizer)?)
}

/// The conversation for a problem: its system prompt, if it has one, then the user message.
/// The cloud is sent the same conversation.
pub fn prompt_messages(task: &dyn Task, problem: &Problem) -> Vec<Message> {
    let system = problem.system.as_deref().map(Message::system);
    system
        .into_iter()
        .chain([Message::user(prompt_text(task, problem))])
        .collect()
}

/// The user message for a problem: its question and the task's answer format. The cloud gets the
/// same text the local model does.
pub fn prompt_text(task: &dyn Task, problem: &Problem) -> String {
    format!("{} {}", problem.question, task.answer_format())
        .trim_end()
        .to_string()
}

/// One prompt's rollouts, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredGroup {
    pub problem: Problem,
    pub prompt: Vec<u32>,
    pub samples: Vec<Sample>,
    /// One per sample.
    pub rewards: Vec<f64>,
    pub summary: GroupSummary,
}

/// A step up to the optimiser: what was sampled and scored, what the filter kept and the
/// gradient of the loss over the kept prompts ([`Trainer::prepare_update`]).
pub struct PendingUpdate {
    /// The batch's prompts that fit the context, in rollout order (longest first).
    pub groups: Vec<ScoredGroup>,
    /// D1, D2 and the dropped prompts, as indices into `groups`.
    pub filter: FilterOutcome,
    pub gradient: PolicyGradient,
    pub skipped_prompts: usize,
    pub cloud_failures: usize,
    started: Instant,
    rollout_s: f64,
    forward_backward_s: f64,
}

pub struct Trainer<'a> {
    pub model: TrainableModel,
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    signal: OffloadSignal,
    task: &'a dyn Task,
    cloud: &'a mut dyn CloudOracle,
    config: TrainConfig,
    /// Tokens the rollouts never sample (the offload token under [`OffloadMode::Never`]).
    masked: Vec<u32>,
    optimizer: AdamW,
    problems: Vec<Problem>,
    cursor: usize,
    rng: SplitMix64,
    step: usize,
    engine: RolloutEngine,
}

impl<'a> Trainer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut model: TrainableModel,
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
        let masked = match config.offload {
            OffloadMode::Learn => Vec::new(),
            OffloadMode::Never => signal.token_id.into_iter().collect(),
        };
        if let Some(top) = config.train_layers {
            // The offload token's logit trains through the policy gradient whenever the model
            // may offload; a masked token has nothing to learn.
            let rows: Vec<u32> = match config.offload {
                OffloadMode::Learn => signal.token_id.into_iter().collect(),
                OffloadMode::Never => Vec::new(),
            };
            model.train_only(top, &rows)?;
        }
        let trainer = Self {
            optimizer: AdamW::new(model.trainable_vars()?, config.adamw)?,
            model,
            tokenizer,
            template,
            signal,
            task,
            cloud,
            rng: SplitMix64::new(config.seed),
            config,
            masked,
            problems,
            cursor: 0,
            step: 0,
            engine: RolloutEngine::default(),
        };
        // Greedy rollouts and an empty micro-batch are refused before any work.
        trainer.update_config().validate()?;
        Ok(trainer)
    }

    /// Generates the rollouts with `engine` (default [`RolloutEngine::Fast`]).
    pub fn with_rollout_engine(mut self, engine: RolloutEngine) -> Self {
        self.engine = engine;
        self
    }

    /// The chat prompt for a problem (see [`prompt_ids`]).
    pub fn prompt_ids(&self, problem: &Problem) -> Result<Vec<u32>> {
        prompt_ids(self.template, self.tokenizer, self.task, problem)
    }

    fn update_config(&self) -> UpdateConfig {
        UpdateConfig {
            algo: self.config.algo,
            max_new_tokens: self.config.rollout.max_new_tokens,
            micro_batch: self.config.micro_batch,
            every_answer: self.config.every_answer,
            scoring: Scoring {
                temperature: self.config.rollout.temperature,
                masked: self.masked.clone(),
            },
        }
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

    /// The cloud's verdict on `problem` for this step. Asked at most once per prompt per step
    /// (`verdicts` holds the step's answers), so every offload of a prompt in a step gets the same
    /// reward: a failed call stands as "cloud wrong" for the whole step, and a retry that would
    /// succeed cannot contradict rewards already given. `--no-offload` never asks.
    fn cloud_verdict(
        &mut self,
        problem: &Problem,
        verdicts: &mut HashMap<u64, bool>,
    ) -> Result<bool> {
        if self.config.offload == OffloadMode::Never {
            return Ok(false);
        }
        if let Some(&v) = verdicts.get(&problem.id) {
            return Ok(v);
        }
        let v = self.cloud.is_correct(self.task, problem)?;
        verdicts.insert(problem.id, v);
        Ok(v)
    }

    fn score_group(
        &mut self,
        problem: Problem,
        prompt: Vec<u32>,
        samples: Vec<Sample>,
        verdicts: &mut HashMap<u64, bool>,
    ) -> Result<ScoredGroup> {
        let mut rewards = Vec::with_capacity(samples.len());
        let mut summary = GroupSummary {
            local_correct: 0,
            offloaded: 0,
            cloud_correct: false,
        };
        for sample in &samples {
            if sample.offloaded() {
                let cloud_correct = self.cloud_verdict(&problem, verdicts)?;
                summary.offloaded += 1;
                summary.cloud_correct = cloud_correct;
                rewards.push(
                    self.config
                        .reward
                        .reward(ResponseOutcome::Offload { cloud_correct }),
                );
                continue;
            }
            let verdict = self.task.verify(&problem, &sample.text);
            let correct = verdict == Verdict::Correct;
            summary.local_correct += usize::from(correct);
            rewards.push(self.config.reward.reward(ResponseOutcome::Local {
                correct,
                well_formed: verdict != Verdict::Malformed,
            }));
        }
        Ok(ScoredGroup {
            problem,
            prompt,
            samples,
            rewards,
            summary,
        })
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
        let (moments, optimizer_step) = self.optimizer.state()?;
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
                    cloud: self.cloud.identity(),
                    cloud_verdicts: self.cloud.verdicts(),
                },
            },
        )
    }

    /// Continues from a checkpoint written by [`Self::save_checkpoint`] for the same model. The
    /// cloud's verdicts are restored only when the checkpoint's cloud is this one.
    pub fn restore_checkpoint(&mut self, path: &std::path::Path) -> Result<()> {
        let checkpoint = crate::checkpoint::load(path, self.model.dtype(), self.model.device())?;
        crate::checkpoint::load_weights_into(&self.model, &checkpoint.weights, path)?;
        self.model.reload_head_rows()?;
        let p = checkpoint.position;
        self.optimizer
            .restore(checkpoint.moments, p.optimizer_step)?;
        self.step = p.step;
        self.cursor = p.cursor;
        self.rng = SplitMix64::new(p.rng_state);
        if p.cloud == self.cloud.identity() {
            self.cloud.restore_verdicts(&p.cloud_verdicts);
        }
        Ok(())
    }

    /// One step: rollouts, scores, filter, update.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let pending = self.prepare_update()?;
        self.apply_update(pending)
    }

    /// The first part of [`Self::step`]: rolls out and scores the next batch, filters it and
    /// computes the gradient over the kept prompts, without moving the weights.
    pub fn prepare_update(&mut self) -> Result<PendingUpdate> {
        let started = Instant::now();
        let failures_before = self.cloud.failures();
        let context = self.model.config().context_length;
        let max_new_tokens = self.config.rollout.max_new_tokens;
        let mut prompts = Vec::with_capacity(self.config.prompts_per_step);
        let mut skipped_prompts = 0;
        for problem in self.next_batch() {
            let ids = self.prompt_ids(&problem)?;
            // A prompt with no room for a full response is left out, not the run.
            if fits_context(ids.len(), max_new_tokens, context) {
                prompts.push((problem, ids));
            } else {
                skipped_prompts += 1;
            }
        }
        // Longest first, so a step that runs out of memory does so at its first rollout.
        prompts.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));

        // One seed per prompt, drawn in rollout order whichever engine runs them.
        let seeds: Vec<u64> = prompts.iter().map(|_| self.rng.next_u64()).collect();
        let ids: Vec<&[u32]> = prompts.iter().map(|(_, ids)| ids.as_slice()).collect();
        let rolled = rollout_groups(
            self.engine,
            &self.model,
            self.tokenizer,
            &self.signal,
            &ids,
            &self.config.rollout,
            &self.masked,
            &seeds,
        )?;
        drop(ids);
        let mut groups = Vec::with_capacity(prompts.len());
        let mut verdicts = HashMap::new();
        for ((problem, ids), samples) in prompts.into_iter().zip(rolled) {
            groups.push(self.score_group(problem, ids, samples, &mut verdicts)?);
        }
        let rollout_s = started.elapsed().as_secs_f64();

        let update_started = Instant::now();
        let summaries: Vec<GroupSummary> = groups.iter().map(|g| g.summary).collect();
        let filter = adaptive_filter(&summaries, self.config.rho, &mut self.rng);
        // Only the kept prompts (D1 u D2) enter the loss; |K| is their count.
        let kept: Vec<GroupResponses<'_>> = filter
            .kept()
            .into_iter()
            .map(|i| {
                let g = &groups[i];
                GroupResponses {
                    prompt: &g.prompt,
                    responses: g.samples.iter().map(|s| s.tokens.as_slice()).collect(),
                    rewards: &g.rewards,
                }
            })
            .collect();
        let gradient = policy_gradient(&self.model, &kept, &self.update_config())?;
        drop(kept);
        Ok(PendingUpdate {
            groups,
            filter,
            gradient,
            skipped_prompts,
            cloud_failures: self.cloud.failures().saturating_sub(failures_before),
            started,
            rollout_s,
            forward_backward_s: update_started.elapsed().as_secs_f64(),
        })
    }

    /// The second part of [`Self::step`]: the optimiser step with `pending`'s gradient, and the
    /// step's metrics.
    pub fn apply_update(&mut self, pending: PendingUpdate) -> Result<StepMetrics> {
        let lr = self.config.schedule.at(self.step);
        let optimizer_started = Instant::now();
        let grad_norm = match &pending.gradient.grads {
            Some(grads) => self.optimizer.step(grads, lr)?.grad_norm,
            None => 0.0,
        };
        self.model.commit_head_rows()?;
        let optimizer_s = optimizer_started.elapsed().as_secs_f64();

        let mut all_rewards = Vec::new();
        let (mut local_correct, mut offloads, mut offload_cloud_correct) = (0usize, 0usize, 0usize);
        let (mut tokens, mut entropy) = (0usize, 0.0f64);
        for g in &pending.groups {
            all_rewards.extend_from_slice(&g.rewards);
            local_correct += g.summary.local_correct;
            offloads += g.summary.offloaded;
            if g.summary.cloud_correct {
                offload_cloud_correct += g.summary.offloaded;
            }
            for s in &g.samples {
                tokens += s.tokens.len();
                entropy += s.entropy_sum;
            }
        }
        let n = all_rewards.len().max(1) as f64;
        let mean = all_rewards.iter().sum::<f64>() / n;
        let std = (all_rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
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
            d1: pending.filter.d1.len(),
            d2: pending.filter.d2.len(),
            dropped: pending.filter.dropped.len(),
            zero_variance_groups: pending.gradient.zero_variance_groups,
            updated_answers: pending.gradient.scored_answers,
            grad_norm,
            entropy: entropy / tokens.max(1) as f64,
            response_tokens_mean: tokens as f64 / n,
            learning_rate: lr,
            skipped_prompts: pending.skipped_prompts,
            cloud_failures: pending.cloud_failures,
            cloud: self.cloud.describe(),
            cloud_calls: self.cloud.calls(),
            tokens_per_s: tokens as f64 / pending.rollout_s.max(1e-9),
            rollout_s: pending.rollout_s,
            forward_backward_s: pending.forward_backward_s,
            optimizer_s,
            update_s: pending.forward_backward_s + optimizer_s,
            step_s: pending.started.elapsed().as_secs_f64(),
        };
        self.step += 1;
        Ok(metrics)
    }
}

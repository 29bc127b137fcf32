//! Evaluation as the paper's protocol asks, through the path users run: the exported model in the
//! inference engine, a routing [`Assistant`] with the offload signal and bias, greedy decoding
//! (or sampling, seeded per problem), and a hard cap of `floor(budget * N)` cloud calls over the N problems; a problem the cap
//! refuses is answered locally with the offload token masked.
//!
//! The cap is the Assistant's own [`selfroute_core::CloudBudget`] with a window of N requests: it
//! counts the calls among the last `window - 1` decisions, which over N problems are all earlier
//! decisions, so the sliding window is exactly a cap over the whole run.
//!
//! Routes other than the model's own token (random, a probe, cloud only) decide before the model
//! runs; their cloud calls go to the same client with the same request the Assistant would send
//! (the original conversation only), and their local answers come from an Assistant without a
//! cloud, which masks the offload token.

pub mod cloud;
pub mod compare;
pub mod report;

use selfroute_core::budget::CloudBudget;
use selfroute_core::openai::ChatRequest;
use selfroute_core::{
    Assistant, Backend, ChatTemplate, CloudClient, Control, GenerationParams, LocalReason, Route,
    RouteEvent, Tokenizer,
};
use selfroute_engine::{RoutingOptions, build_assistant};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub use report::{RunLabels, Summary, markdown, summarize};

use crate::error::{Result, TrainError};
use crate::tasks::{Problem, Task, Verdict};
use crate::train::prompt_messages;

/// Who decides where a problem goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// The model itself, by emitting `<|offload|>` (with `offload_bias` added to its logit).
    Token { offload_bias: f32 },
    /// Every problem locally, the offload token masked.
    Local,
    /// Every problem to the cloud (no cap: the cloud-only baseline spends 100%).
    Cloud,
    /// A decision made before the model runs, per problem (true = to the cloud), within the cap:
    /// random offload or a prompt router.
    Decided(Vec<bool>),
}

/// What one evaluation run needs besides the model and the cloud.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Most cloud calls as a share of the problems (floor(budget * N) calls).
    pub budget: f64,
    /// Local generation (greedy for the paper's protocol). When sampling, each problem is
    /// sampled from its own seed, mixed from `generation.sampling.seed` and the problem's id.
    pub generation: GenerationParams,
    /// The `model` field of cloud requests.
    pub cloud_model: String,
    pub cloud_max_tokens: Option<u32>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            budget: 0.3,
            generation: GenerationParams {
                max_new_tokens: 128,
                ..GenerationParams::default()
            },
            cloud_model: "default".into(),
            cloud_max_tokens: None,
        }
    }
}

/// Where a problem's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalRoute {
    Local,
    Cloud,
    /// Sent to the cloud, which failed; answered locally.
    Fallback,
}

/// One problem's line in `problems.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemRecord {
    pub index: usize,
    pub id: u64,
    pub difficulty: u32,
    /// The part of the task's mix the problem is from; empty for single-part tasks (and in lines
    /// written before subsets existed).
    #[serde(default)]
    pub subset: String,
    /// Whether the conversation began with a system prompt.
    #[serde(default)]
    pub system_prompt: bool,
    pub question: String,
    pub reference: String,
    pub route: EvalRoute,
    /// The policy asked for the cloud but the cap was spent (token route: the cap was spent when
    /// the problem came, so the model could not ask).
    pub over_budget: bool,
    /// Everything the local model showed (a draft before an offload, or the local answer).
    pub local_text: String,
    /// The answer the user got.
    pub answer: String,
    pub correct: bool,
    pub local_tokens: usize,
    pub cloud_tokens: u32,
    pub latency_ms: f64,
    pub first_token_ms: Option<f64>,
}

/// Evaluates `problems` of `task`. `cloud` is required by every policy but [`Policy::Local`].
/// `on_problem` sees each record as it is made (for progress).
#[allow(clippy::too_many_arguments)]
pub async fn evaluate<B: Backend, C: CloudClient>(
    backend: B,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    cloud: Option<C>,
    task: &dyn Task,
    problems: &[Problem],
    policy: &Policy,
    config: &EvalConfig,
    mut on_problem: impl FnMut(&ProblemRecord),
) -> Result<Vec<ProblemRecord>> {
    let n = problems.len();
    if n == 0 {
        return Err(TrainError::InvalidSettings(
            "there are no problems to evaluate".into(),
        ));
    }
    if !(0.0..=1.0).contains(&config.budget) {
        return Err(TrainError::InvalidSettings(format!(
            "the budget {} must be a share between 0 and 1",
            config.budget
        )));
    }
    if let Policy::Decided(wants) = policy
        && wants.len() != n
    {
        return Err(TrainError::InvalidSettings(format!(
            "{} routing decisions for {n} problems",
            wants.len()
        )));
    }
    if cloud.is_none() && *policy != Policy::Local {
        return Err(TrainError::InvalidSettings(
            "this route needs a cloud".into(),
        ));
    }
    let mut records = Vec::with_capacity(n);
    match policy {
        Policy::Token { offload_bias } => {
            let options = RoutingOptions {
                generation: config.generation.clone(),
                budget_share: config.budget,
                // A window of N: the sliding budget is a hard cap over the whole run.
                budget_window: n,
                offload_bias: *offload_bias,
                cloud_model: config.cloud_model.clone(),
                cloud_max_tokens: config.cloud_max_tokens,
                ..RoutingOptions::default()
            };
            let mut assistant = build_assistant(backend, tokenizer, template, cloud, &options)?;
            for (index, problem) in problems.iter().enumerate() {
                seed_for(&mut assistant, config, problem);
                let record = ask_assistant(&mut assistant, task, problem, index).await?;
                on_problem(&record);
                records.push(record);
            }
        }
        Policy::Local | Policy::Cloud | Policy::Decided(_) => {
            let options = RoutingOptions {
                generation: config.generation.clone(),
                cloud_model: config.cloud_model.clone(),
                cloud_max_tokens: config.cloud_max_tokens,
                ..RoutingOptions::default()
            };
            // Without a cloud the Assistant masks the offload token: a plain local answer.
            let mut local = build_assistant::<B, C>(backend, tokenizer, template, None, &options)?;
            let share = if *policy == Policy::Cloud {
                1.0
            } else {
                config.budget
            };
            let mut budget = CloudBudget::new(share, n)?;
            for (index, problem) in problems.iter().enumerate() {
                let wants = match policy {
                    Policy::Local => false,
                    Policy::Cloud => true,
                    Policy::Decided(w) => w.get(index).copied().unwrap_or(false),
                    Policy::Token { .. } => unreachable!("handled above"),
                };
                let allowed = wants && budget.allows_cloud();
                budget.record(allowed);
                seed_for(&mut local, config, problem);
                let record = match (&cloud, allowed) {
                    (Some(c), true) => {
                        ask_cloud(c, &mut local, task, problem, index, config).await?
                    }
                    _ => {
                        let mut r = ask_assistant(&mut local, task, problem, index).await?;
                        r.over_budget = wants;
                        r
                    }
                };
                on_problem(&record);
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// Seeds the Assistant's sampler for `problem`. The sampler restarts from its seed on every
/// generation, so one seed for all would draw the same random numbers for every problem; a seed
/// per problem id keeps the problems' draws apart, makes an answer independent of the problem's
/// position, and gives every method the same draws on the same problem (which the paired
/// comparison of methods profits from).
fn seed_for<B: Backend, C: CloudClient>(
    assistant: &mut Assistant<B, C>,
    config: &EvalConfig,
    problem: &Problem,
) {
    assistant.config_mut().generation.sampling.seed =
        problem_seed(config.generation.sampling.seed, problem.id);
}

/// The sampling seed of problem `id` under the run's `seed`.
pub fn problem_seed(seed: u64, id: u64) -> u64 {
    // One SplitMix64 step over the combination: nearby seeds or ids give unrelated streams.
    selfroute_core::rng::SplitMix64::new(seed ^ id.rotate_left(32)).next_u64()
}

fn record_for(problem: &Problem, index: usize) -> ProblemRecord {
    ProblemRecord {
        index,
        id: problem.id,
        difficulty: problem.difficulty,
        subset: problem.subset.clone(),
        system_prompt: problem.system.is_some(),
        question: problem.question.clone(),
        reference: problem.answer.clone(),
        route: EvalRoute::Local,
        over_budget: false,
        local_text: String::new(),
        answer: String::new(),
        correct: false,
        local_tokens: 0,
        cloud_tokens: 0,
        latency_ms: 0.0,
        first_token_ms: None,
    }
}

/// One problem through the Assistant (which decides, or answers locally when it has no cloud).
async fn ask_assistant<B: Backend, C: CloudClient>(
    assistant: &mut Assistant<B, C>,
    task: &dyn Task,
    problem: &Problem,
    index: usize,
) -> Result<ProblemRecord> {
    let messages = prompt_messages(task, problem);
    let mut local_text = String::new();
    let outcome = assistant
        .chat(&messages, |event| {
            if let RouteEvent::LocalText(piece) = event {
                local_text.push_str(piece);
            }
            Control::Continue
        })
        .await?;
    let mut record = record_for(problem, index);
    record.route = match outcome.route {
        Route::Local => EvalRoute::Local,
        Route::Cloud => EvalRoute::Cloud,
        Route::Fallback => EvalRoute::Fallback,
    };
    record.over_budget = outcome.local_reason == Some(LocalReason::BudgetExhausted);
    record.correct = task.verify(problem, &outcome.answer) == Verdict::Correct;
    record.local_text = local_text;
    record.answer = outcome.answer;
    record.local_tokens = outcome.local_tokens;
    record.cloud_tokens = outcome.cloud_tokens;
    record.latency_ms = outcome.latency_ms;
    record.first_token_ms = outcome.time_to_first_token_ms;
    Ok(record)
}

/// One problem sent straight to the cloud with the request the Assistant would send (the
/// original conversation only); a failed call is answered by `local` (offload masked).
async fn ask_cloud<B: Backend, C: CloudClient, L: CloudClient>(
    cloud: &C,
    local: &mut Assistant<B, L>,
    task: &dyn Task,
    problem: &Problem,
    index: usize,
    config: &EvalConfig,
) -> Result<ProblemRecord> {
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut request = ChatRequest::new(config.cloud_model.clone(), prompt_messages(task, problem));
    request.stream = true;
    request.max_tokens = config.cloud_max_tokens;
    let reply = cloud
        .stream_chat(&request, &mut |_| {
            first.get_or_insert_with(Instant::now);
            Control::Continue
        })
        .await;
    match reply.result {
        Ok(completion) => {
            let mut record = record_for(problem, index);
            record.route = EvalRoute::Cloud;
            record.correct = task.verify(problem, &completion.text) == Verdict::Correct;
            record.answer = completion.text;
            record.cloud_tokens = completion.completion_tokens;
            record.latency_ms = started.elapsed().as_secs_f64() * 1e3;
            record.first_token_ms = first.map(|t| (t - started).as_secs_f64() * 1e3);
            Ok(record)
        }
        Err(_) => {
            let mut record = ask_assistant(local, task, problem, index).await?;
            record.route = EvalRoute::Fallback;
            record.latency_ms = started.elapsed().as_secs_f64() * 1e3;
            Ok(record)
        }
    }
}

/// `k = floor(share * n)` problems of `n` chosen uniformly at random (seeded): the random-offload
/// baseline spends exactly its share.
pub fn random_decisions(n: usize, share: f64, seed: u64) -> Result<Vec<bool>> {
    if !(0.0..=1.0).contains(&share) {
        return Err(TrainError::InvalidSettings(format!(
            "--share {share} must be between 0 and 1"
        )));
    }
    let k = ((share * n as f64) + 1e-9).floor() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = selfroute_core::rng::SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut wants = vec![false; n];
    for &i in order.iter().take(k) {
        wants[i] = true;
    }
    Ok(wants)
}

/// The model's greedy local answers to `problems` (offload masked, as [`Policy::Local`] gives
/// them), as token ids: what the folded router's row must not interrupt.
pub async fn greedy_answer_ids<B: Backend>(
    backend: B,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    task: &dyn Task,
    problems: &[Problem],
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let config = EvalConfig {
        generation: GenerationParams {
            max_new_tokens,
            ..EvalConfig::default().generation
        },
        ..EvalConfig::default()
    };
    let records = evaluate(
        backend,
        tokenizer.clone(),
        template,
        None::<selfroute_core::NoCloud>,
        task,
        problems,
        &Policy::Local,
        &config,
        |_| {},
    )
    .await?;
    // Re-encoded from the text: the generated ids are not kept by the Assistant; the text's own
    // encoding is what the model reads at those positions in all but rare merge differences.
    records
        .iter()
        .map(|r| Ok(tokenizer.encode_literal(&r.local_text)?))
        .collect()
}

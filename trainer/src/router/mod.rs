//! Prompt routers: the probe baseline ([`probe`]) and the probe folded into the model's own
//! `<|offload|>` head row ([`fold`]).

pub mod fold;
mod linalg;
pub mod probe;

use sha2::{Digest, Sha256};

pub use fold::{FoldReport, fold_router};
pub use probe::ProbeRouter;

use crate::error::{Result, TrainError};
use crate::model::TrainableModel;

/// Lower-case hex SHA-256 of a model file's bytes: how a router names the model it belongs to.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the probe's training data and the file it names come from.
pub struct ProbeSource<'a> {
    pub model_name: &'a str,
    pub model_sha256: &'a str,
    pub task: &'a str,
}

/// Fits a probe on `prompts` with `wrong[i]` = the model's greedy local answer to prompt i is
/// wrong, its threshold calibrated so the share `budget` of the prompts is predicted wrong.
pub fn train_probe(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    wrong: &[bool],
    budget: f64,
    source: &ProbeSource<'_>,
) -> Result<ProbeRouter> {
    if prompts.len() != wrong.len() || prompts.is_empty() {
        return Err(TrainError::InvalidSettings(
            "the probe needs one label per prompt and at least one prompt".into(),
        ));
    }
    if !(0.0..=1.0).contains(&budget) {
        return Err(TrainError::InvalidSettings(format!(
            "the budget {budget} must be a share between 0 and 1"
        )));
    }
    let states = model.answer_states(prompts)?;
    let (fit, l2, cv_auc) = probe::fit_probe(&states, wrong)?;
    let scores: Vec<f64> = states
        .iter()
        .map(|h| linalg::dot(&fit.weights, h) + fit.bias)
        .collect();
    let threshold = probe::calibrate_threshold(&scores, budget);
    Ok(ProbeRouter {
        weights: fit.weights,
        bias: fit.bias,
        threshold,
        hidden_size: model.config().hidden_size,
        model_name: source.model_name.to_string(),
        model_sha256: source.model_sha256.to_string(),
        task: source.task.to_string(),
        budget,
        train_problems: prompts.len(),
        train_wrong_share: wrong.iter().filter(|&&w| w).count() as f64 / wrong.len() as f64,
        l2,
        cv_auc,
    })
}

/// The probe's decisions (true = to the cloud) for `prompts`.
pub fn probe_decisions(
    model: &TrainableModel,
    probe: &ProbeRouter,
    prompts: &[Vec<u32>],
) -> Result<Vec<bool>> {
    Ok(model
        .answer_states(prompts)?
        .iter()
        .map(|h| probe.predicts_wrong(h))
        .collect())
}

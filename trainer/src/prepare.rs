//! `prepare`: adds `<|offload|>` to a model and fits its output row, so RL has offloads to
//! reinforce ([`add_offload_token`]) or so the model offloads what a prompt router would
//! ([`add_routed_offload_token`]).
//!
//! The token is appended to the vocabulary as a control token (GGUF `token_type` 3), which is
//! where the inference side looks for it (`OffloadSignal::from_tokenizer`). Its embedding row
//! starts as the mean embedding of the paper's marker text, `<unknown> I need external assistance
//! </unknown>`, so the model sees something meaning "I need help"; with a tied head that is also
//! its output row. Then [`calibrate_offload_row`] fits the output row to the target rate, or
//! [`fold_router`] to a probe's decisions.

use selfroute_core::{DEFAULT_OFFLOAD_MARKER, Tokenizer};

use crate::error::{Result, TrainError};
use crate::model::TrainableModel;
use crate::router::{FoldReport, ProbeRouter, fold_router};
use crate::warmup::{WarmupReport, calibrate_offload_row, mean_embedding};

/// Appends `<|offload|>` with its row initialised from the marker text; returns its id.
pub fn append_offload_token(model: &mut TrainableModel, tokenizer: &Tokenizer) -> Result<u32> {
    if tokenizer
        .token_to_id(selfroute_core::OFFLOAD_TOKEN)
        .is_some()
    {
        return Err(TrainError::InvalidSettings(format!(
            "the model already has {}",
            selfroute_core::OFFLOAD_TOKEN
        )));
    }
    if tokenizer.vocab_size() != model.config().vocab_size {
        // Padded vocabularies would put the new token at a different id than the tokenizer's.
        return Err(TrainError::InvalidSettings(format!(
            "the tokenizer has {} tokens but the model {} rows; cannot append a token",
            tokenizer.vocab_size(),
            model.config().vocab_size
        )));
    }
    let marker_ids = tokenizer.encode_literal(DEFAULT_OFFLOAD_MARKER)?;
    let init = mean_embedding(model, &marker_ids)?;
    model.add_token(&init)
}

/// Adds the token and warms it up: its mean first-token probability over `prompts` becomes
/// `target_rate`, the same on every prompt.
pub fn add_offload_token(
    model: &mut TrainableModel,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    target_rate: f64,
) -> Result<(u32, WarmupReport)> {
    let id = append_offload_token(model, tokenizer)?;
    let report = calibrate_offload_row(model, prompts, id, target_rate)?;
    Ok((id, report))
}

/// Adds the token with its row fitted so greedy decoding offloads, at the first answer token,
/// the prompts `probe` sends to the cloud and not later along `answers` (the model's greedy answers
/// to `prompts`, token ids; see [`crate::router::fold`]). `margin`: the offload logit's margin, in
/// logits, at the median probe margin and below the best token along the answers.
pub fn add_routed_offload_token(
    model: &mut TrainableModel,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    answers: &[Vec<u32>],
    probe: &ProbeRouter,
    margin: f64,
) -> Result<(u32, FoldReport)> {
    let id = append_offload_token(model, tokenizer)?;
    let report = fold_router(model, prompts, answers, id, probe, margin)?;
    Ok((id, report))
}

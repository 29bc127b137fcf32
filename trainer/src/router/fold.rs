//! The probe router folded into the model: the `<|offload|>` output-head row `r` is fitted so that
//! under greedy decoding the model emits the token as its first answer token exactly on the
//! prompts the probe sends to the cloud.
//!
//! Greedy decoding offloads at the first answer token when `r . h > m(h)`, with `h` the final
//! hidden state at the answer position and `m(h)` the largest other logit. Both `h` and `m(h)` are
//! independent of `r` (the token never occurs in a prompt), so the fit needs one forward pass per
//! prompt and no backward pass. The probe's decision is `w . h + b > t`. `r` is fitted by ridge
//! regression so that `r . h_i ~ m_i + kappa (w . h_i + b - t)`: the offload margin follows the
//! probe's margin, scaled to `margin` logits. The head has no bias, so a final shift along the mean
//! hidden state (which every `h_i` has a positive component on) sets the offload share to the
//! probe's share exactly on the fitting prompts.
//!
//! The same row is read at every later position of an answer, where it must stay below the best
//! token, or the model would offload halfway through answers the probe keeps local (on SmolLM2 it
//! did, spending the budget on the first problems). So the states along the model's own greedy
//! answers join the regression with the target `m_t - margin`, weighted to count as much, in
//! total, as the first-token states.

use candle_core::{DType, Tensor};

use super::linalg::{dot, solve_spd};
use super::probe::ProbeRouter;
use crate::error::{Result, TrainError};
use crate::model::TrainableModel;

/// The answer position of one prompt, as the fit sees it.
#[derive(Debug, Clone)]
pub struct AnswerState {
    pub hidden: Vec<f64>,
    /// The largest logit of any token but `<|offload|>`.
    pub max_other: f64,
    /// The logit of `<|offload|>` with the model's current row.
    pub offload: f64,
}

impl AnswerState {
    /// Whether greedy decoding emits `<|offload|>` as the first answer token.
    pub fn offloads(&self) -> bool {
        self.offload > self.max_other
    }
}

/// Hidden states and largest other logits at the answer position of `prompts`.
pub fn answer_states(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    offload_id: u32,
) -> Result<Vec<AnswerState>> {
    let states = model.answer_states(prompts)?;
    with_logits(model, states, offload_id)
}

/// The states at every position of `answers[i]` after `prompts[i]` (each predicts the token after
/// an answer token: where a later offload would happen).
pub fn continuation_states(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    answers: &[Vec<u32>],
    offload_id: u32,
) -> Result<Vec<AnswerState>> {
    let mut states = Vec::new();
    for (prompt, answer) in prompts.iter().zip(answers) {
        if answer.is_empty() {
            continue;
        }
        let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        let ids = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
        let hidden = model
            .final_hidden(&ids)?
            .detach()
            .squeeze(0)?
            .narrow(0, prompt.len(), answer.len())?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        states.extend(hidden);
    }
    with_logits(model, states, offload_id)
}

/// The largest other logit and the offload logit for each state. All states of a call go through
/// the head as one matrix product, in the model's dtype: a matrix-vector product per state over a
/// 49k-token head was most of the fold's time on SmolLM2.
fn with_logits(
    model: &TrainableModel,
    states: Vec<Vec<f64>>,
    offload_id: u32,
) -> Result<Vec<AnswerState>> {
    let Some(d) = states.first().map(Vec::len) else {
        return Ok(Vec::new());
    };
    let head = model.head().as_tensor();
    let mut out = Vec::with_capacity(states.len());
    // Chunks bound the [rows, vocab] logits buffer.
    for chunk in states.chunks(256) {
        let flat: Vec<f64> = chunk.iter().flatten().copied().collect();
        let h = Tensor::from_vec(flat, (chunk.len(), d), model.device())?.to_dtype(head.dtype())?;
        let logits = h
            .matmul(&head.t()?)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        for (hidden, row) in chunk.iter().zip(logits) {
            let max_other = row
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != offload_id as usize)
                .map(|(_, l)| *l)
                .fold(f64::NEG_INFINITY, f64::max);
            let offload = row
                .get(offload_id as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY);
            out.push(AnswerState {
                hidden: hidden.clone(),
                max_other,
                offload,
            });
        }
    }
    Ok(out)
}

/// Later positions are kept this many `margin`s below the best token: an answer has tens of them,
/// each a chance to offload by mistake on a prompt the fit never saw, against one first token.
const LATER_MARGINS: f64 = 2.0;
/// Ridge strength as a share of the mean diagonal of the normal equations: enough to keep the row
/// from fitting the fitting prompts' noise (a large row fires on unseen answers).
const RIDGE: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq)]
pub struct FoldReport {
    pub prompts: usize,
    /// Share of the fitting prompts the probe sends out, and the folded model's share.
    pub probe_share: f64,
    pub offload_share: f64,
    /// Share of fitting prompts where the folded model and the probe decide alike.
    pub agreement: f64,
    /// Share of later answer positions where the fitted row would still offload.
    pub later_offload_share: f64,
    pub later_positions: usize,
}

/// The fitted row for `states` (see the module comment). `margin`: the offload-logit margin, in
/// logits, of a prompt whose probe margin is the median one.
/// `later`: states along the model's answers, where the row must stay `margin` below the best
/// token.
pub fn fit_offload_row(
    states: &[AnswerState],
    later: &[AnswerState],
    probe: &ProbeRouter,
    margin: f64,
) -> Result<(Vec<f64>, FoldReport)> {
    let n = states.len();
    let d = probe.hidden_size;
    if n == 0 || states.iter().chain(later).any(|s| s.hidden.len() != d) {
        return Err(TrainError::InvalidSettings(format!(
            "folding the router needs prompts with hidden states of size {d}"
        )));
    }
    let probe_margin: Vec<f64> = states
        .iter()
        .map(|s| probe.score(&s.hidden) - probe.threshold)
        .collect();
    let wants: Vec<bool> = probe_margin.iter().map(|m| *m > 0.0).collect();
    let mut abs: Vec<f64> = probe_margin.iter().map(|m| m.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let median = abs[n / 2].max(1e-12);
    let kappa = margin / median;
    let mut rows: Vec<(&[f64], f64, f64)> = states
        .iter()
        .zip(&probe_margin)
        .map(|(s, m)| (s.hidden.as_slice(), s.max_other + kappa * m, 1.0))
        .collect();
    // The later positions together weigh as much as the first-token ones.
    let later_weight = n as f64 / later.len().max(1) as f64;
    rows.extend(later.iter().map(|s| {
        (
            s.hidden.as_slice(),
            s.max_other - LATER_MARGINS * margin,
            later_weight,
        )
    }));

    // Weighted ridge: (H^T W H + mu I) r = H^T W target, mu a small fraction of the mean diagonal
    // so the system is well posed when there are fewer rows than dimensions.
    let mut gram = vec![0.0; d * d];
    let mut rhs = vec![0.0; d];
    for &(h, t, w) in &rows {
        for i in 0..d {
            let wh = w * h[i];
            rhs[i] += wh * t;
            for j in 0..=i {
                gram[i * d + j] += wh * h[j];
            }
        }
    }
    let trace: f64 = (0..d).map(|i| gram[i * d + i]).sum();
    let mu = RIDGE * trace / d as f64 + 1e-12;
    for i in 0..d {
        gram[i * d + i] += mu;
        for j in 0..i {
            gram[j * d + i] = gram[i * d + j];
        }
    }
    let mut row = solve_spd(&mut gram, &rhs)?;

    // The shift: along u (the mean hidden state), s_i(alpha) = r.h_i + alpha u.h_i - m_i. When every
    // u.h_i > 0, prompt i offloads exactly when alpha > c_i = (m_i - r.h_i) / u.h_i, so placing
    // alpha between the k-th and (k+1)-th smallest c_i offloads exactly k prompts.
    let mut u = vec![0.0; d];
    for s in states {
        for (a, b) in u.iter_mut().zip(&s.hidden) {
            *a += b / n as f64;
        }
    }
    let k = wants.iter().filter(|&&w| w).count();
    let along: Vec<f64> = states.iter().map(|s| dot(&u, &s.hidden)).collect();
    if along.iter().all(|a| *a > 0.0) {
        let mut crossings: Vec<f64> = states
            .iter()
            .zip(&along)
            .map(|(s, a)| (s.max_other - dot(&row, &s.hidden)) / a)
            .collect();
        crossings.sort_by(f64::total_cmp);
        let alpha = match k {
            0 => crossings[0] - 1.0,
            k if k == n => crossings[n - 1] + 1.0,
            k => 0.5 * (crossings[k - 1] + crossings[k]),
        };
        for (r, a) in row.iter_mut().zip(&u) {
            *r += alpha * a;
        }
    }

    let offloads: Vec<bool> = states
        .iter()
        .map(|s| dot(&row, &s.hidden) > s.max_other)
        .collect();
    let agree = offloads.iter().zip(&wants).filter(|(a, b)| a == b).count();
    let later_offloads = later
        .iter()
        .filter(|s| dot(&row, &s.hidden) > s.max_other)
        .count();
    let report = FoldReport {
        prompts: n,
        probe_share: k as f64 / n as f64,
        offload_share: offloads.iter().filter(|&&o| o).count() as f64 / n as f64,
        agreement: agree as f64 / n as f64,
        later_offload_share: later_offloads as f64 / later.len().max(1) as f64,
        later_positions: later.len(),
    };
    Ok((row, report))
}

/// Fits the offload row of `model` (which already has the token, at `offload_id`) to `probe` on
/// `prompts`, kept below the best token along `answers` (the model's greedy answers to them,
/// token ids, possibly empty), and writes it into the head (with a tied head, also the token's
/// embedding row, which no prompt reads).
pub fn fold_router(
    model: &TrainableModel,
    prompts: &[Vec<u32>],
    answers: &[Vec<u32>],
    offload_id: u32,
    probe: &ProbeRouter,
    margin: f64,
) -> Result<FoldReport> {
    let states = answer_states(model, prompts, offload_id)?;
    let later = continuation_states(model, prompts, answers, offload_id)?;
    let (row, report) = fit_offload_row(&states, &later, probe, margin)?;
    let tensor = Tensor::from_vec(row, probe.hidden_size, model.device())?;
    model.set_head_row(offload_id, &tensor)?;
    Ok(report)
}

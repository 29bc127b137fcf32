//! Choosing the next token from logits: greedy, or temperature with top-k / top-p, with an optional
//! repetition penalty (Hugging Face's) and presence / frequency penalties (OpenAI's), from a seeded
//! RNG so runs are reproducible on every platform.

use serde::{Deserialize, Serialize};

use crate::backend::TokenPick;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 1.0 means no penalty (HF semantics: positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
    /// OpenAI's `presence_penalty`: subtracted once from the logit of every token this sampler has
    /// already picked. 0 means off.
    pub presence_penalty: f32,
    /// OpenAI's `frequency_penalty`: subtracted from a token's logit once per time this sampler has
    /// already picked it. 0 means off.
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 42,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidSampling(format!(
                "temperature {} must be >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidSampling(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidSampling(format!(
                "repetition_penalty {} must be > 0",
                self.repetition_penalty
            )));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !value.is_finite() {
                return Err(Error::InvalidSampling(format!(
                    "{name} {value} must be a finite number"
                )));
            }
        }
        Ok(())
    }

    /// Whether picking needs the tokens picked so far (so it cannot happen on a device that only
    /// holds the logits).
    fn needs_history(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    fn counts_picks(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Reused between calls so sampling allocates nothing per token.
    candidates: Vec<(u32, f32)>,
    /// How often each token was picked, sorted by id; kept only while a presence or frequency
    /// penalty is on. The penalties count generated tokens, not the prompt (OpenAI's semantics),
    /// and the sampler sees exactly the generated tokens: each is one of its picks.
    picked: Vec<(u32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = SplitMix64::new(params.seed);
        Ok(Self {
            params,
            rng,
            candidates: Vec::new(),
            picked: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The same choice as [`Sampler::sample`], expressed for a device that holds the logits: the
    /// random draw is taken here, exactly as `sample` would take it, so the RNG stream (and so
    /// every later token) is the same on either path. None when the settings need the history on
    /// the host (a repetition penalty).
    pub fn device_pick<'a>(&mut self, logit_bias: &'a [(u32, f32)]) -> Option<TokenPick<'a>> {
        if self.params.needs_history() {
            return None;
        }
        let uniform = if self.params.temperature == 0.0 {
            0.0
        } else {
            self.rng.next_f64()
        };
        Some(TokenPick {
            temperature: self.params.temperature,
            top_k: self.params.top_k,
            top_p: self.params.top_p,
            uniform,
            logit_bias,
        })
    }

    /// Picks the next token. `logits` may be modified (penalties are applied in place).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidSampling("empty logits".into()));
        }
        self.apply_repetition_penalty(logits, history);
        if !self.params.counts_picks() {
            return self.pick(logits);
        }
        self.apply_openai_penalties(logits);
        let id = self.pick(logits)?;
        match self.picked.binary_search_by_key(&id, |&(t, _)| t) {
            Ok(i) => self.picked[i].1 += 1,
            Err(i) => self.picked.insert(i, (id, 1)),
        }
        Ok(id)
    }

    fn pick(&mut self, logits: &[f32]) -> Result<u32> {
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let uniform = self.rng.next_f64();
        choose(
            logits,
            &Cut {
                temperature: self.params.temperature,
                top_k: self.params.top_k,
                top_p: self.params.top_p,
            },
            uniform,
            &mut self.candidates,
        )
    }

    /// `logit -= presence * [count > 0] + frequency * count`, over this sampler's own picks.
    fn apply_openai_penalties(&self, logits: &mut [f32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        for &(id, count) in &self.picked {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= presence + frequency * count as f32;
            }
        }
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 {
            return;
        }
        let start = history.len().saturating_sub(self.params.repetition_window);
        let mut seen: Vec<u32> = history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// The temperature and the cuts of a sampled pick.
struct Cut {
    temperature: f32,
    top_k: usize,
    top_p: f32,
}

/// A sampled pick: scale by the temperature, cut to the top k and the nucleus, then walk the
/// remaining mass with `uniform` in [0, 1). Shared by the sampler and [`TokenPick::pick_from`], so
/// a pick on the host after a device fallback is the pick the device would have made.
fn choose(
    logits: &[f32],
    cut: &Cut,
    uniform: f64,
    candidates: &mut Vec<(u32, f32)>,
) -> Result<u32> {
    let inv_t = 1.0 / cut.temperature;
    candidates.clear();
    candidates.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l * inv_t)),
    );
    if candidates.is_empty() {
        return Err(Error::InvalidSampling("all logits are NaN".into()));
    }
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    if cut.top_k > 0 && cut.top_k < candidates.len() {
        let k = cut.top_k;
        candidates.select_nth_unstable_by(k - 1, cmp);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(cmp);
    let max = candidates[0].1;
    let mut total = 0.0f64;
    for c in candidates.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += f64::from(c.1);
    }
    if cut.top_p < 1.0 {
        let mut kept = 0.0f64;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter().enumerate() {
            kept += f64::from(c.1) / total;
            if kept >= f64::from(cut.top_p) {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep);
        total = candidates.iter().map(|c| f64::from(c.1)).sum();
    }
    let mut target = uniform * total;
    for c in candidates.iter() {
        target -= f64::from(c.1);
        if target <= 0.0 {
            return Ok(c.0);
        }
    }
    Ok(candidates[candidates.len() - 1].0)
}

impl TokenPick<'_> {
    /// The pick on the host, from a row of logits (before the bias, which this adds): what an
    /// engine that lost its device does with a pick it was handed.
    pub fn pick_from(&self, logits: &mut [f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidSampling("empty logits".into()));
        }
        for &(id, bias) in self.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if self.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let cut = Cut {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        };
        choose(logits, &cut, self.uniform, &mut Vec::new())
    }
}

/// Index of the largest logit (the first on ties, as numpy's argmax); NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -5.0, -4.0], &[]).unwrap(), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let draw = |n: usize| {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..n)
                .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(4000);
        assert_eq!(a, draw(4000));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!(
            (ones - 0.75).abs() < 0.03,
            "P(token 1) = {ones}, expected 0.75"
        );
        assert!(!a.contains(&2));
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [5.0f32, 4.0, 3.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..200 {
            assert!(s.sample(&mut logits.clone(), &[]).unwrap() < 2);
        }
        // softmax of [5,4,3,2] = [0.644, 0.237, 0.087, 0.032]: top_p 0.7 keeps the first two.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.7,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..200 {
            assert!(s.sample(&mut logits.clone(), &[]).unwrap() < 2);
        }
    }

    #[test]
    fn repetition_penalty_follows_hf_semantics() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        let mut logits = [4.0f32, 3.0, -1.0];
        // token 0 seen: 4.0 -> 2.0, so token 1 wins; token 2 seen: -1 -> -2.
        assert_eq!(s.sample(&mut logits, &[0, 2]).unwrap(), 1);
        assert_eq!(logits, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai_semantics() {
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 1.0,
            frequency_penalty: 0.4,
            ..Default::default()
        })
        .unwrap();
        let logits = [4.0f32, 3.5, 3.0];
        // By hand, logit - (1.0 * [picked] + 0.4 * times picked), greedy:
        // 4.0 3.5 3.0 -> 0; 2.6 3.5 3.0 -> 1; 2.6 2.1 3.0 -> 2; 2.6 2.1 1.6 -> 0;
        // 2.2 2.1 1.6 -> 0; 1.8 2.1 1.6 -> 1. The prompt (history) does not count.
        let picks: Vec<u32> = (0..6)
            .map(|_| s.sample(&mut logits.clone(), &[2, 2, 2]).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 0, 1]);
        let mut row = logits;
        s.sample(&mut row, &[]).unwrap();
        // Now 0 was picked 3 times, 1 twice, 2 once.
        let expected = [4.0 - 1.0 - 1.2, 3.5 - 1.0 - 0.8, 3.0 - 1.0 - 0.4];
        for (got, want) in row.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{row:?} vs {expected:?}");
        }
        // With the penalties on, a device cannot pick: it lacks the counts.
        assert!(s.device_pick(&[]).is_none());
        assert!(
            Sampler::new(SamplingParams::default())
                .unwrap()
                .device_pick(&[])
                .is_some()
        );
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(
            Sampler::new(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..Default::default()
            })
            .is_err()
        );
    }
}

//! The cloud during training: asked at most once per prompt, its verdict cached and reused (the
//! paper treats the cloud as deterministic).

use std::collections::HashMap;

use crate::error::{Result, TrainError};
use crate::tasks::{Problem, Task, Verdict};

pub trait CloudOracle {
    /// Whether the cloud answers `problem` correctly.
    fn is_correct(&mut self, task: &dyn Task, problem: &Problem) -> Result<bool>;
    /// Distinct prompts sent to the cloud so far.
    fn calls(&self) -> usize;
    /// How outputs should name this cloud (a simulated one says so).
    fn describe(&self) -> String;
    /// Every verdict so far, for checkpoints, sorted by problem id.
    fn verdicts(&self) -> Vec<(u64, bool)>;
    /// Restores verdicts saved by [`Self::verdicts`].
    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]);
}

/// A simulated cloud, correct with probability `accuracy`, fixed per prompt by a seeded hash.
pub struct SimulatedCloud {
    accuracy: f64,
    seed: u64,
    asked: HashMap<u64, bool>,
}

impl SimulatedCloud {
    pub fn new(accuracy: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&accuracy) {
            return Err(TrainError::InvalidSettings(format!(
                "simulated cloud accuracy {accuracy} must be between 0 and 1"
            )));
        }
        Ok(Self {
            accuracy,
            seed,
            asked: HashMap::new(),
        })
    }

    /// Parses `simulated:ACC`.
    pub fn parse(spec: &str, seed: u64) -> Result<Option<Self>> {
        let Some(acc) = spec.strip_prefix("simulated:") else {
            return Ok(None);
        };
        let accuracy: f64 = acc.parse().map_err(|_| {
            TrainError::InvalidSettings(format!("`{spec}`: the accuracy must be a number"))
        })?;
        Self::new(accuracy, seed).map(Some)
    }
}

impl CloudOracle for SimulatedCloud {
    fn is_correct(&mut self, _task: &dyn Task, problem: &Problem) -> Result<bool> {
        let (accuracy, seed) = (self.accuracy, self.seed);
        Ok(*self.asked.entry(problem.id).or_insert_with(|| {
            let mut rng = selfroute_core::rng::SplitMix64::new(seed ^ problem.id);
            rng.next_f64() < accuracy
        }))
    }

    fn calls(&self) -> usize {
        self.asked.len()
    }

    fn describe(&self) -> String {
        format!("simulated cloud (accuracy {})", self.accuracy)
    }

    fn verdicts(&self) -> Vec<(u64, bool)> {
        let mut all: Vec<(u64, bool)> = self.asked.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort_unstable();
        all
    }

    fn restore_verdicts(&mut self, verdicts: &[(u64, bool)]) {
        self.asked = verdicts.iter().copied().collect();
    }
}

/// A verdict of the task's verifier as "correct".
pub fn is_correct(verdict: Verdict) -> bool {
    verdict == Verdict::Correct
}

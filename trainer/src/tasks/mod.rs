//! Tasks for RL post-training: seeded problem generators (or a problem file) paired with verifiers
//! that judge a model's free-text response.
//!
//! Every task assigns a problem to the train or test split by a hash of its canonical content, so
//! the same problem can never land in both splits whatever seed or count a caller asks for.

pub mod answer;
pub mod arith;
pub mod countdown;
pub mod expr;
pub mod jsonl;
pub mod mix;
mod split;

use std::fmt;

pub use answer::{extract_final_answer, parse_integer, parse_number};
pub use arith::ArithTask;
pub use countdown::CountdownTask;
pub use jsonl::JsonlTask;
pub use mix::MixTask;

use crate::{Result, TrainError};

/// One prompt with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Hash of the problem's canonical content; equal ids mean the same problem.
    pub id: u64,
    /// The question alone; callers append [`Task::answer_format`].
    pub question: String,
    /// A reference answer (for countdown: one valid equation).
    pub answer: String,
    /// Arith: the level (1..=7); countdown: the number count; jsonl: the file's optional
    /// `difficulty` field, else 0.
    pub difficulty: u32,
    /// A system prompt sent before the question (the model must route the same with or
    /// without one); None: no system message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Which part of a task's mix the problem belongs to (for example a held-out phrasing or
    /// the everyday questions), reported separately by evaluation; empty for single-part tasks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
}

/// What a verifier makes of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Correct,
    /// An answer was found and understood, but it is not right.
    Wrong,
    /// No answer could be found or understood.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

pub trait Task: Send + Sync {
    /// The canonical spec of the task (e.g. `arith:1-7`, `countdown:3`, `jsonl:PATH`);
    /// `parse_task(task.name())` rebuilds the same task.
    fn name(&self) -> &str;
    /// `n` problems of `split`, reproducible from `seed`; the same problem never appears in both splits.
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>>;
    /// Judges a model response (free text) against the problem.
    fn verify(&self, problem: &Problem, response: &str) -> Verdict;
    /// One sentence appended to the question telling the model how to format its answer.
    fn answer_format(&self) -> &str;
}

/// Parses a task spec: "arith", "arith:1-3" (difficulty levels), "countdown", "countdown:3" or
/// "countdown:4" (number count), "mix" (arithmetic in several phrasings and everyday questions),
/// "jsonl:PATH". A jsonl file is read and checked here, so a bad
/// file fails before training starts.
pub fn parse_task(spec: &str) -> Result<Box<dyn Task>> {
    let trimmed = spec.trim();
    let (kind, arg) = match trimmed.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (trimmed, None),
    };
    match kind {
        "arith" => Ok(Box::new(ArithTask::from_arg(spec, arg)?)),
        "countdown" => Ok(Box::new(CountdownTask::from_arg(spec, arg)?)),
        "mix" => match arg {
            None => Ok(Box::new(MixTask::new())),
            Some(_) => Err(invalid(spec, "`mix` takes no argument")),
        },
        "jsonl" => match arg {
            Some(path) if !path.trim().is_empty() => Ok(Box::new(JsonlTask::load(path.trim())?)),
            _ => Err(invalid(spec, "expected `jsonl:PATH`")),
        },
        _ => Err(invalid(
            spec,
            "unknown task; expected `arith[:LO-HI]`, `countdown[:3|4]`, `mix` or `jsonl:PATH`",
        )),
    }
}

pub(crate) fn invalid(spec: &str, reason: impl Into<String>) -> TrainError {
    TrainError::InvalidTask {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_specs() {
        for (spec, name) in [
            ("arith", "arith:1-7"),
            ("arith:2-4", "arith:2-4"),
            ("arith:5", "arith:5"),
            (" arith:1-7 ", "arith:1-7"),
            ("countdown", "countdown:3"),
            ("countdown:3", "countdown:3"),
            ("countdown:4", "countdown:4"),
            ("mix", "mix"),
            (" mix ", "mix"),
        ] {
            let task = parse_task(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(task.name(), name);
            // The canonical name must round-trip.
            assert_eq!(parse_task(task.name()).unwrap().name(), name);
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in [
            "",
            "arith:",
            "arith:0",
            "arith:8",
            "arith:4-2",
            "arith:1-",
            "arith:-3",
            "arith:x",
            "arith:1-2-3",
            "countdown:",
            "countdown:2",
            "countdown:5",
            "countdown:three",
            "mix:",
            "mix:1-3",
            "Mix",
            "jsonl",
            "jsonl:",
            "jsonl:   ",
            "sudoku",
            "Arith",
        ] {
            match parse_task(spec) {
                Err(TrainError::InvalidTask { spec: s, .. }) => assert_eq!(s, spec),
                Err(other) => panic!("{spec:?}: unexpected error {other}"),
                Ok(task) => panic!("{spec:?} parsed as {}", task.name()),
            }
        }
    }

    #[test]
    fn missing_jsonl_file_is_a_data_error() {
        let path = "/nonexistent/selfroute/problems.jsonl";
        match parse_task(&format!("jsonl:{path}")) {
            Err(TrainError::Data { path: p, .. }) => assert_eq!(p, path),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a missing file must not load"),
        }
    }
}

//! Problems from a JSON Lines file: one `{"question": ..., "answer": ...}` object per line, with
//! an optional non-negative integer `difficulty`; other fields are ignored and blank lines skipped.
//! Answers are judged numerically when the reference reads as a number, else by normalised text.

use selfroute_core::rng::SplitMix64;
use serde_json::Value;

use super::answer::{extract_final_answer, numbers_match, parse_number};
use super::split::{content_hash, split_of};
use super::{Problem, Split, Task, Verdict};
use crate::{Result, TrainError};

const FORMAT: &str = "Give the final answer as <answer>NUMBER</answer>.";

#[derive(Debug, Clone)]
pub struct JsonlTask {
    name: String,
    path: String,
    /// Every distinct problem, in file order.
    problems: Vec<Problem>,
}

impl JsonlTask {
    /// Reads and checks the whole file now, so a bad line fails before any training.
    pub fn load(path: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| data_error(path, e.to_string()))?;
        Self::parse(path, &text)
    }

    /// Parses file contents; `path` names the source in errors and in the task name.
    pub fn parse(path: &str, text: &str) -> Result<Self> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line = if index == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                line
            };
            if line.trim().is_empty() {
                continue;
            }
            let problem = parse_line(line)
                .map_err(|reason| data_error(path, format!("line {}: {reason}", index + 1)))?;
            // A repeated question is one problem; the first occurrence wins.
            if seen.insert(problem.id) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            return Err(data_error(path, "no problems in the file"));
        }
        Ok(Self {
            name: format!("jsonl:{path}"),
            path: path.to_string(),
            problems,
        })
    }

    /// How many distinct problems the file holds in `split`.
    pub fn available(&self, split: Split) -> usize {
        self.problems
            .iter()
            .filter(|p| split_of(p.id) == split)
            .count()
    }
}

fn data_error(path: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn parse_line(line: &str) -> std::result::Result<Problem, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("expected a JSON object".into());
    };
    let question = match object.get("question") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.trim().to_string(),
        Some(_) => return Err("`question` must be a non-empty string".into()),
        None => return Err("missing `question`".into()),
    };
    let answer = match object.get("answer") {
        Some(Value::String(a)) if !a.trim().is_empty() => a.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`answer` must be a non-empty string or a number".into()),
        None => return Err("missing `answer`".into()),
    };
    let difficulty = match object.get("difficulty") {
        None | Some(Value::Null) => 0,
        Some(d) => d
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .ok_or("`difficulty` must be a non-negative integer")?,
    };
    Ok(Problem {
        id: content_hash(&question),
        question,
        answer,
        difficulty,
        system: None,
        subset: String::new(),
    })
}

impl Task for JsonlTask {
    fn name(&self) -> &str {
        &self.name
    }

    /// A seeded shuffle of the file's problems in `split`, cut to `n`. A file holds a fixed
    /// number of problems, so asking for more returns all of them (min(n, available)) rather
    /// than failing; only a split with none at all is an error.
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut chosen: Vec<Problem> = self
            .problems
            .iter()
            .filter(|p| split_of(p.id) == split)
            .cloned()
            .collect();
        if chosen.is_empty() {
            return Err(data_error(
                &self.path,
                format!(
                    "no {split} problems among the file's {} (one problem in ten goes to test, \
                     by a hash of its question)",
                    self.problems.len()
                ),
            ));
        }
        let mut rng = SplitMix64::new(seed);
        // Fisher-Yates over the whole split, then a prefix: a smaller n gives a prefix of a larger.
        for i in (1..chosen.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            chosen.swap(i, j);
        }
        chosen.truncate(n);
        Ok(chosen)
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        verify_answer(&problem.answer, response)
    }

    fn answer_format(&self) -> &str {
        FORMAT
    }
}

/// Judges a response against a reference answer. A numeric reference (anything `parse_number`
/// reads) is compared as a number within tolerance, and an unreadable response answer is
/// Malformed. Any other reference is compared as text, ignoring whitespace, `$` and a final
/// period; case matters (it does in math).
pub fn verify_answer(reference: &str, response: &str) -> Verdict {
    let Some(answer) = extract_final_answer(response) else {
        return Verdict::Malformed;
    };
    if let Some(expected) = parse_number(reference) {
        return match parse_number(&answer) {
            Some(value) if numbers_match(expected, value) => Verdict::Correct,
            Some(_) => Verdict::Wrong,
            None => Verdict::Malformed,
        };
    }
    let answer = normalize_text(&answer);
    if answer.is_empty() {
        Verdict::Malformed
    } else if answer == normalize_text(reference) {
        Verdict::Correct
    } else {
        Verdict::Wrong
    }
}

fn normalize_text(text: &str) -> String {
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    trimmed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A file under the system temp dir, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "selfroute-tasks-{}-{name}.jsonl",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn many_lines(count: usize) -> String {
        (0..count)
            .map(|i| {
                format!(
                    "{{\"question\": \"What is {i} + {i}?\", \"answer\": {}}}\n",
                    2 * i
                )
            })
            .collect()
    }

    #[test]
    fn loads_a_file_and_splits_it() {
        let file = TempFile::new("good", &many_lines(1000));
        let task = JsonlTask::load(file.path()).unwrap();
        assert_eq!(task.name(), format!("jsonl:{}", file.path()));
        let train = task.problems(Split::Train, 200, 1).unwrap();
        let test = task.problems(Split::Test, 50, 1).unwrap();
        assert_eq!((train.len(), test.len()), (200, 50));
        let train_q: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
        assert!(test.iter().all(|p| !train_q.contains(p.question.as_str())));
        assert_eq!(
            task.available(Split::Train) + task.available(Split::Test),
            1000
        );
        // Reproducible, seed-dependent, and a smaller n is a prefix of a larger one.
        assert_eq!(train, task.problems(Split::Train, 200, 1).unwrap());
        assert_ne!(train, task.problems(Split::Train, 200, 2).unwrap());
        assert_eq!(
            &train[..20],
            &task.problems(Split::Train, 20, 1).unwrap()[..]
        );
        // Asking for more than exists returns everything there is.
        let all_test = task.problems(Split::Test, 10_000, 1).unwrap();
        assert_eq!(all_test.len(), task.available(Split::Test));
        for p in &train {
            let response = format!("<answer>{}</answer>", p.answer);
            assert_eq!(task.verify(p, &response), Verdict::Correct);
        }
    }

    #[test]
    fn accepts_string_answers_blank_lines_and_extra_fields() {
        let text = "\u{feff}{\"question\": \"Q1\", \"answer\": \"3/4\", \"difficulty\": 2}\n\n   \n\
                    {\"question\": \"Q2\", \"answer\": 1.5, \"source\": \"x\"}\r\n\
                    {\"question\": \"Q1\", \"answer\": \"9\"}\n";
        let task = JsonlTask::parse("mem.jsonl", text).unwrap();
        assert_eq!(task.problems.len(), 2, "the repeated question is dropped");
        assert_eq!(task.problems[0].answer, "3/4");
        assert_eq!(task.problems[0].difficulty, 2);
        assert_eq!(task.problems[1].answer, "1.5");
        assert_eq!(task.problems[1].difficulty, 0);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_file_and_line() {
        let mut text = many_lines(3);
        text.push('\n');
        text.push_str("{\"question\": \"broken\", \"answer\": \n");
        let file = TempFile::new("bad", &text);
        match JsonlTask::load(file.path()) {
            Err(TrainError::Data { path, reason }) => {
                assert_eq!(path, file.path());
                assert!(reason.starts_with("line 5:"), "{reason}");
            }
            other => panic!("expected a data error, got {other:?}"),
        }
        for (line, why) in [
            ("[1, 2]", "object"),
            ("{\"answer\": 1}", "missing `question`"),
            ("{\"question\": \"q\"}", "missing `answer`"),
            ("{\"question\": \"\", \"answer\": 1}", "question"),
            ("{\"question\": \"q\", \"answer\": [1]}", "answer"),
            ("{\"question\": \"q\", \"answer\": \" \"}", "answer"),
            (
                "{\"question\": \"q\", \"answer\": 1, \"difficulty\": -1}",
                "difficulty",
            ),
        ] {
            let err = JsonlTask::parse("p.jsonl", line).unwrap_err().to_string();
            assert!(
                err.starts_with("p.jsonl: line 1:") && err.contains(why),
                "{err}"
            );
        }
        assert!(JsonlTask::parse("empty.jsonl", "\n\n").is_err());
    }

    #[test]
    fn an_empty_split_is_an_error() {
        // One problem lands in one split; the other split has none.
        let task = JsonlTask::parse("one.jsonl", "{\"question\": \"Q\", \"answer\": 1}").unwrap();
        let empty = if task.available(Split::Test) == 0 {
            Split::Test
        } else {
            Split::Train
        };
        assert!(task.problems(empty, 1, 0).is_err());
        assert!(task.problems(empty, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn verifies_numeric_and_text_answers() {
        let cases = [
            ("72", "<answer>72</answer>", Verdict::Correct),
            ("72", "<answer>$72.00</answer>", Verdict::Correct),
            ("1234", "so the total is 1,234.", Verdict::Correct),
            ("0.75", "<answer>3/4</answer>", Verdict::Correct),
            ("3/4", "\\boxed{\\frac{3}{4}}", Verdict::Correct),
            ("3/4", "<answer>0.75</answer>", Verdict::Correct),
            ("25", "<answer>25%</answer>", Verdict::Correct),
            ("-2", "The answer is -2", Verdict::Correct),
            ("0.3333333", "<answer>1/3</answer>", Verdict::Correct),
            ("72", "<answer>71</answer>", Verdict::Wrong),
            (
                "72",
                "<answer>72</answer> wait <answer>70</answer>",
                Verdict::Wrong,
            ),
            ("0.75", "<answer>0.7501</answer>", Verdict::Wrong),
            ("72", "<answer>seventy-two</answer>", Verdict::Malformed),
            ("72", "", Verdict::Malformed),
            ("72", "no number here", Verdict::Malformed),
            ("x^2 + 1", "<answer>x^2+1</answer>", Verdict::Correct),
            ("x^2 + 1", "<answer>$x^2 + 1$.</answer>", Verdict::Correct),
            ("x^2 + 1", "<answer>x^2 + 2</answer>", Verdict::Wrong),
            ("x^2 + 1", "<answer> </answer>", Verdict::Malformed),
        ];
        for (reference, response, want) in cases {
            assert_eq!(
                verify_answer(reference, response),
                want,
                "{reference:?} vs {response:?}"
            );
        }
    }
}

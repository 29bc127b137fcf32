//! Integer arithmetic in seven levels, graded so a ~135M model solves the low ones and not the
//! high ones: 1: 1-digit + 1-digit, 2: 2-digit + 2-digit, 3: 2-digit − 2-digit (may be negative),
//! 4: 1-digit × 2-digit, 5: 2-digit × 2-digit, 6: 3-digit × 2-digit, 7: 3-digit × 3-digit.

use selfroute_core::rng::SplitMix64;

use super::answer::{extract_final_answer, parse_integer, parse_number};
use super::split::{collect, content_hash};
use super::{Problem, Split, Task, Verdict, invalid};
use crate::Result;

pub const MAX_LEVEL: u32 = 7;

const FORMAT: &str = "Give the final answer as <answer>NUMBER</answer>.";

#[derive(Debug, Clone)]
pub struct ArithTask {
    name: String,
    min_level: u32,
    max_level: u32,
}

impl ArithTask {
    /// Levels `min_level..=max_level`, each problem's level drawn uniformly.
    pub fn new(min_level: u32, max_level: u32) -> Result<Self> {
        let name = if min_level == max_level {
            format!("arith:{min_level}")
        } else {
            format!("arith:{min_level}-{max_level}")
        };
        if min_level < 1 || max_level > MAX_LEVEL || min_level > max_level {
            return Err(invalid(
                &name,
                format!("levels must satisfy 1 <= low <= high <= {MAX_LEVEL}"),
            ));
        }
        Ok(Self {
            name,
            min_level,
            max_level,
        })
    }

    /// `arg` is what follows `arith:` in a spec: none, `LEVEL` or `LOW-HIGH`.
    pub(crate) fn from_arg(spec: &str, arg: Option<&str>) -> Result<Self> {
        let Some(arg) = arg else {
            return Self::new(1, MAX_LEVEL);
        };
        let level = |s: &str| {
            s.trim().parse::<u32>().map_err(|_| {
                invalid(
                    spec,
                    format!("expected a level 1..={MAX_LEVEL} or a range LOW-HIGH"),
                )
            })
        };
        let (low, high) = match arg.split_once('-') {
            Some((low, high)) => (level(low)?, level(high)?),
            None => {
                let l = level(arg)?;
                (l, l)
            }
        };
        // Report the spec as the user wrote it, not the normalised name.
        Self::new(low, high).map_err(|e| match e {
            crate::TrainError::InvalidTask { reason, .. } => invalid(spec, reason),
            other => other,
        })
    }

    fn generate(&self, rng: &mut SplitMix64) -> Problem {
        let span = u64::from(self.max_level - self.min_level) + 1;
        // `below(span)` < span <= 7, so the sum stays within the levels.
        let level = self.min_level + rng.below(span) as u32;
        let operation = Operation::draw(rng, level);
        let Operation { a, op, b } = operation;
        Problem {
            id: content_hash(&format!("arith:{}", operation.canonical())),
            question: format!("What is {a} {op} {b}?"),
            answer: operation.value().to_string(),
            difficulty: level,
            system: None,
            subset: String::new(),
        }
    }
}

/// One binary operation `a op b`, `op` one of `+`, `-`, `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Operation {
    pub a: i64,
    pub op: char,
    pub b: i64,
}

impl Operation {
    /// The operands of a `level` (1..=7; higher reads as 7), drawn from `rng`. Other tasks phrase
    /// the same levels differently, so the level table lives here once.
    pub(crate) fn draw(rng: &mut SplitMix64, level: u32) -> Self {
        let (a, op, b) = match level {
            1 => (digits(rng, 1), '+', digits(rng, 1)),
            2 => (digits(rng, 2), '+', digits(rng, 2)),
            3 => (digits(rng, 2), '-', digits(rng, 2)),
            4 => {
                let (x, y) = (digits(rng, 1), digits(rng, 2));
                shuffled(rng, x, y)
            }
            5 => (digits(rng, 2), '*', digits(rng, 2)),
            6 => {
                let (x, y) = (digits(rng, 3), digits(rng, 2));
                shuffled(rng, x, y)
            }
            _ => (digits(rng, 3), '*', digits(rng, 3)),
        };
        Self { a, op, b }
    }

    pub(crate) fn value(&self) -> i64 {
        match self.op {
            '+' => self.a + self.b,
            '-' => self.a - self.b,
            _ => self.a * self.b,
        }
    }

    /// The operation's content for a hash: "37 + 45" and "45 + 37" are one problem, so they must
    /// share a split and a batch should not hold both.
    pub(crate) fn canonical(&self) -> String {
        let Self { a, op, b } = *self;
        if op == '-' {
            format!("{a}-{b}")
        } else {
            format!("{}{op}{}", a.min(b), a.max(b))
        }
    }
}

/// A uniform number with exactly `n` digits (1..=9 for one digit).
fn digits(rng: &mut SplitMix64, n: u32) -> i64 {
    let low = if n == 1 { 1 } else { 10i64.pow(n - 1) };
    rng.range_inclusive(low, 10i64.pow(n) - 1)
}

/// A product of the two operands, in random order so the shorter is not always first.
fn shuffled(rng: &mut SplitMix64, x: i64, y: i64) -> (i64, char, i64) {
    if rng.below(2) == 0 {
        (x, '*', y)
    } else {
        (y, '*', x)
    }
}

impl Task for ArithTask {
    fn name(&self) -> &str {
        &self.name
    }

    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        collect(&self.name, split, n, seed, |rng| Some(self.generate(rng)))
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        // A problem whose reference is not an integer cannot be matched; never reward it.
        let Ok(expected) = problem.answer.trim().parse::<i64>() else {
            return Verdict::Wrong;
        };
        verify_integer(expected, response)
    }

    fn answer_format(&self) -> &str {
        FORMAT
    }
}

/// An integer answer must match exactly; a non-integer number is wrong; no number is malformed.
pub(crate) fn verify_integer(expected: i64, response: &str) -> Verdict {
    let Some(answer) = extract_final_answer(response) else {
        return Verdict::Malformed;
    };
    match parse_integer(&answer) {
        Some(value) if value == expected => Verdict::Correct,
        Some(_) => Verdict::Wrong,
        None if parse_number(&answer).is_some() => Verdict::Wrong,
        None => Verdict::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn task(lo: u32, hi: u32) -> ArithTask {
        ArithTask::new(lo, hi).unwrap()
    }

    /// Recomputes a question "What is A OP B?" independently of the generator.
    fn solve(question: &str) -> (i64, char, i64, i64) {
        let body = question
            .strip_prefix("What is ")
            .and_then(|q| q.strip_suffix('?'))
            .unwrap();
        let parts: Vec<&str> = body.split(' ').collect();
        assert_eq!(parts.len(), 3, "{question}");
        let a: i64 = parts[0].parse().unwrap();
        let b: i64 = parts[2].parse().unwrap();
        let op = parts[1].chars().next().unwrap();
        let value = match op {
            '+' => a + b,
            '-' => a - b,
            '*' => a * b,
            _ => panic!("{question}"),
        };
        (a, op, b, value)
    }

    #[test]
    fn same_seed_same_problems_other_seed_others() {
        let t = task(1, 7);
        let a = t.problems(Split::Train, 100, 42).unwrap();
        assert_eq!(a, t.problems(Split::Train, 100, 42).unwrap());
        assert_ne!(a, t.problems(Split::Train, 100, 43).unwrap());
        // Fewer problems from the same seed are a prefix of more.
        assert_eq!(&a[..40], &t.problems(Split::Train, 40, 42).unwrap()[..]);
    }

    #[test]
    fn splits_are_disjoint_and_deduplicated() {
        let t = task(1, 7);
        let train = t.problems(Split::Train, 200, 1).unwrap();
        let test = t.problems(Split::Test, 50, 1).unwrap();
        assert_eq!((train.len(), test.len()), (200, 50));
        let train_ids: HashSet<u64> = train.iter().map(|p| p.id).collect();
        let test_ids: HashSet<u64> = test.iter().map(|p| p.id).collect();
        assert_eq!((train_ids.len(), test_ids.len()), (200, 50));
        assert!(train_ids.is_disjoint(&test_ids));
        let train_q: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
        assert!(test.iter().all(|p| !train_q.contains(p.question.as_str())));
        // Another seed's test problems never show up in this seed's train split either.
        let other_test = t.problems(Split::Test, 50, 2).unwrap();
        assert!(other_test.iter().all(|p| !train_ids.contains(&p.id)));
    }

    #[test]
    fn answers_are_correct_and_levels_shape_the_operands() {
        let t = task(1, 7);
        let mut levels = HashSet::new();
        for p in t.problems(Split::Train, 700, 3).unwrap() {
            let (a, op, b, value) = solve(&p.question);
            assert_eq!(p.answer, value.to_string(), "{}", p.question);
            let (short, long) = (a.min(b).to_string().len(), a.max(b).to_string().len());
            let shape = match p.difficulty {
                1 => op == '+' && (short, long) == (1, 1),
                2 => op == '+' && (short, long) == (2, 2),
                3 => op == '-' && a.to_string().len() == 2 && b.to_string().len() == 2,
                4 => op == '*' && (short, long) == (1, 2),
                5 => op == '*' && (short, long) == (2, 2),
                6 => op == '*' && (short, long) == (2, 3),
                7 => op == '*' && (short, long) == (3, 3),
                _ => false,
            };
            assert!(shape, "level {} got {}", p.difficulty, p.question);
            levels.insert(p.difficulty);
        }
        assert_eq!(levels.len(), 7);
        assert!(
            task(5, 5)
                .problems(Split::Train, 50, 3)
                .unwrap()
                .iter()
                .all(|p| p.difficulty == 5)
        );
        let negatives = task(3, 3).problems(Split::Train, 100, 3).unwrap();
        assert!(negatives.iter().any(|p| p.answer.starts_with('-')));
    }

    #[test]
    fn too_many_problems_from_a_small_level_is_an_error() {
        // Level 1 has 45 distinct problems (addition commutes).
        assert!(task(1, 1).problems(Split::Train, 100, 1).is_err());
        assert_eq!(task(1, 1).problems(Split::Train, 30, 1).unwrap().len(), 30);
        assert!(task(1, 1).problems(Split::Train, 0, 1).unwrap().is_empty());
    }

    #[test]
    fn verifies_responses() {
        let t = task(1, 7);
        let p = Problem {
            id: 0,
            question: "What is 617 * 45?".into(),
            answer: "27765".into(),
            difficulty: 6,
            system: None,
            subset: String::new(),
        };
        let cases = [
            ("<answer>27765</answer>", Verdict::Correct),
            ("<answer>27,765</answer>", Verdict::Correct),
            ("<answer>+27765.</answer>", Verdict::Correct),
            ("<answer> 27765.0 </answer>", Verdict::Correct),
            ("617 * 45 = 27765", Verdict::Correct),
            ("Answer: 27765", Verdict::Correct),
            ("\\boxed{27765}", Verdict::Correct),
            (
                "First 600*45=27000. <answer>27765</answer> I am confident.",
                Verdict::Correct,
            ),
            (
                "<answer>27000</answer> no wait <answer>27765</answer>",
                Verdict::Correct,
            ),
            (
                "<answer>27765</answer> no wait <answer>27000</answer>",
                Verdict::Wrong,
            ),
            ("<answer>27764</answer>", Verdict::Wrong),
            ("<answer>-27765</answer>", Verdict::Wrong),
            ("<answer>27765.5</answer>", Verdict::Wrong),
            ("<answer>The answer is 27765</answer>", Verdict::Malformed),
            ("<answer>27765 or 27764</answer>", Verdict::Malformed),
            ("<answer></answer>", Verdict::Malformed),
            ("", Verdict::Malformed),
            ("I do not know.", Verdict::Malformed),
            ("@@#!((", Verdict::Malformed),
            ("<answer>99999999999999999999999</answer>", Verdict::Wrong),
        ];
        for (response, want) in cases {
            assert_eq!(t.verify(&p, response), want, "{response:?}");
        }
        let negative = Problem {
            answer: "-22".into(),
            ..p.clone()
        };
        assert_eq!(
            t.verify(&negative, "<answer>-22</answer>"),
            Verdict::Correct
        );
        assert_eq!(
            t.verify(&negative, "<answer>\u{2212}22</answer>"),
            Verdict::Correct
        );
        assert_eq!(t.verify(&negative, "<answer>22</answer>"), Verdict::Wrong);
        let broken = Problem {
            answer: "not a number".into(),
            ..p
        };
        assert_eq!(t.verify(&broken, "<answer>1</answer>"), Verdict::Wrong);
    }

    #[test]
    fn generated_answers_verify() {
        let t = task(1, 7);
        for p in t.problems(Split::Test, 50, 9).unwrap() {
            let response = format!("<answer>{}</answer>", p.answer);
            assert_eq!(t.verify(&p, &response), Verdict::Correct);
        }
    }
}

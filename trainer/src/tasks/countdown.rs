//! Countdown, TinyZero-style: reach a target by combining 3 or 4 given numbers with `+ - * /`,
//! each used exactly once. Targets are built from a random expression over the numbers, so every
//! problem has a solution; the stored answer is that expression.

use selfroute_core::rng::SplitMix64;

use super::answer::answer_tag_content;
use super::expr::{Rational, evaluate};
use super::split::{collect, content_hash};
use super::{Problem, Split, Task, Verdict, invalid};
use crate::Result;

const MIN_NUMBER: i64 = 1;
const MAX_NUMBER: i64 = 99;
const MIN_TARGET: i64 = 1;
const MAX_TARGET: i64 = 999;

const FORMAT: &str = "Give the equation as <answer>EQUATION</answer>.";

#[derive(Debug, Clone)]
pub struct CountdownTask {
    name: String,
    count: usize,
}

impl CountdownTask {
    /// Problems with `count` numbers; 3 or 4.
    pub fn new(count: usize) -> Result<Self> {
        let name = format!("countdown:{count}");
        if !(3..=4).contains(&count) {
            return Err(invalid(&name, "the number count must be 3 or 4"));
        }
        Ok(Self { name, count })
    }

    /// `arg` is what follows `countdown:` in a spec.
    pub(crate) fn from_arg(spec: &str, arg: Option<&str>) -> Result<Self> {
        match arg.map(str::trim) {
            None => Self::new(3),
            Some("3") => Self::new(3),
            Some("4") => Self::new(4),
            Some(_) => Err(invalid(spec, "the number count must be 3 or 4")),
        }
    }

    /// One candidate, or `None` when the random expression lands outside the target range.
    fn generate(&self, rng: &mut SplitMix64) -> Option<Problem> {
        let numbers: Vec<i64> = (0..self.count)
            .map(|_| rng.range_inclusive(MIN_NUMBER, MAX_NUMBER))
            .collect();
        let mut parts: Vec<Part> = numbers.iter().map(|&n| Part::number(n)).collect();
        // Combining two random parts at a time gives every tree shape and operand order.
        while parts.len() > 1 {
            let i = rng.below(parts.len() as u64) as usize;
            let a = parts.swap_remove(i);
            let j = rng.below(parts.len() as u64) as usize;
            let b = parts.swap_remove(j);
            parts.push(Part::combine(a, b, rng.below(4)));
        }
        let solution = parts.pop()?;
        if !(MIN_TARGET..=MAX_TARGET).contains(&solution.value) {
            return None;
        }
        let target = solution.value;
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        let listed: Vec<String> = numbers.iter().map(i64::to_string).collect();
        Some(Problem {
            // The order the numbers are shown in does not make a different problem.
            id: content_hash(&format!("countdown:{sorted:?}={target}")),
            question: format!(
                "Using the numbers [{}], create an equation that equals {target}. \
                 You can use + - * / and parentheses, and each number exactly once.",
                listed.join(", ")
            ),
            answer: solution.text,
            difficulty: self.count as u32,
            system: None,
            subset: String::new(),
        })
    }
}

/// A sub-expression of a generated solution; values stay positive integers.
struct Part {
    value: i64,
    text: String,
    compound: bool,
}

impl Part {
    fn number(n: i64) -> Self {
        Self {
            value: n,
            text: n.to_string(),
            compound: false,
        }
    }

    /// Combines with operator `op` (0..4: + - * /). Subtraction puts the larger part first and
    /// division the multiple first; where either would not give a positive integer, addition is
    /// used instead, so a draw is never wasted.
    fn combine(a: Part, b: Part, op: u64) -> Part {
        let (big, small) = if a.value >= b.value {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let (left, symbol, right, value) = match op {
            1 if big.value > small.value => (big, '-', small, big.value - small.value),
            2 => (&a, '*', &b, a.value * b.value),
            3 if big.value.checked_rem(small.value) == Some(0) => {
                (big, '/', small, big.value / small.value)
            }
            _ => (&a, '+', &b, a.value + b.value),
        };
        Part {
            value,
            text: format!("{} {symbol} {}", left.operand(), right.operand()),
            compound: true,
        }
    }

    fn operand(&self) -> String {
        if self.compound {
            format!("({})", self.text)
        } else {
            self.text.clone()
        }
    }
}

impl Task for CountdownTask {
    fn name(&self) -> &str {
        &self.name
    }

    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        collect(&self.name, split, n, seed, |rng| self.generate(rng))
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        // The numbers and target are read back from the question, so a problem needs no side
        // table; a question that is not ours cannot be solved, and is never rewarded.
        match parse_question(&problem.question) {
            Some((numbers, target)) => verify_equation(&numbers, target, response),
            None => Verdict::Wrong,
        }
    }

    fn answer_format(&self) -> &str {
        FORMAT
    }
}

/// Reads `[a, b, c]` and the target after "equals" from a countdown question.
pub fn parse_question(question: &str) -> Option<(Vec<u64>, i64)> {
    let open = question.find('[')?;
    let close = open + question[open..].find(']')?;
    let numbers = question[open + 1..close]
        .split(',')
        .map(|n| n.trim().parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let after = &question[close..];
    let rest = after[after.find("equals ")? + "equals ".len()..].trim_start();
    let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let target = rest[..digits_len].parse().ok()?;
    Some((numbers, target))
}

/// Judges a response against the given numbers and target: Malformed when no equation can be
/// found or evaluated (bad syntax, division by zero, overflow); Wrong when it evaluates but uses
/// other numbers than exactly the given ones or misses the target.
pub fn verify_equation(numbers: &[u64], target: i64, response: &str) -> Verdict {
    let Some(equation) = extract_equation(response) else {
        return Verdict::Malformed;
    };
    let Some(expression) = strip_result(&equation) else {
        return Verdict::Malformed;
    };
    let Ok(evaluation) = evaluate(expression) else {
        return Verdict::Malformed;
    };
    let mut used = evaluation.numbers;
    let mut given = numbers.to_vec();
    used.sort_unstable();
    given.sort_unstable();
    if used == given && evaluation.value == Rational::integer(i128::from(target)) {
        Verdict::Correct
    } else {
        Verdict::Wrong
    }
}

/// The content of the last `<answer>` pair, else the last line that looks like an equation.
fn extract_equation(response: &str) -> Option<String> {
    if let Some(content) = answer_tag_content(response) {
        return Some(normalize(content));
    }
    response
        .lines()
        .rev()
        .map(normalize)
        .find(|line| looks_like_equation(line))
}

/// Rewrites LaTeX and markdown that models wrap equations in into plain operators.
fn normalize(text: &str) -> String {
    let mut s = text.to_string();
    for (from, to) in [
        ("\\times", "*"),
        ("\\cdot", "*"),
        ("\\div", "/"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("$", ""),
        ("**", ""),
    ] {
        s = s.replace(from, to);
    }
    let trimmed = s.trim();
    trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .trim()
        .to_string()
}

fn looks_like_equation(line: &str) -> bool {
    const OPERATORS: &str = "+-*/×÷−·";
    line.chars().all(|c| {
        c.is_ascii_digit() || c.is_whitespace() || "()=".contains(c) || OPERATORS.contains(c)
    }) && line.chars().any(|c| c.is_ascii_digit())
        && line.chars().any(|c| OPERATORS.contains(c))
}

/// Drops a stated result: "EXPR = 33" or "33 = EXPR" gives EXPR. More than one `=`, or two sides
/// that are both expressions, is malformed.
fn strip_result(equation: &str) -> Option<&str> {
    let is_integer = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut sides = equation.split('=');
    let left = sides.next()?.trim();
    let Some(right) = sides.next().map(str::trim) else {
        return Some(left);
    };
    if sides.next().is_some() {
        return None;
    }
    if is_integer(right) || right.is_empty() {
        Some(left)
    } else if is_integer(left) {
        Some(right)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfroute_core::rng::SplitMix64;
    use std::collections::HashSet;

    fn problem(numbers: &[u64], target: i64) -> Problem {
        let listed: Vec<String> = numbers.iter().map(u64::to_string).collect();
        Problem {
            id: 0,
            question: format!(
                "Using the numbers [{}], create an equation that equals {target}. \
                 You can use + - * / and parentheses, and each number exactly once.",
                listed.join(", ")
            ),
            answer: String::new(),
            difficulty: numbers.len() as u32,
            system: None,
            subset: String::new(),
        }
    }

    #[test]
    fn reproducible_and_seed_dependent() {
        let t = CountdownTask::new(3).unwrap();
        let a = t.problems(Split::Train, 50, 7).unwrap();
        assert_eq!(a, t.problems(Split::Train, 50, 7).unwrap());
        assert_ne!(a, t.problems(Split::Train, 50, 8).unwrap());
    }

    #[test]
    fn splits_are_disjoint() {
        for count in [3, 4] {
            let t = CountdownTask::new(count).unwrap();
            let train = t.problems(Split::Train, 200, 11).unwrap();
            let test = t.problems(Split::Test, 50, 11).unwrap();
            let train_ids: HashSet<u64> = train.iter().map(|p| p.id).collect();
            assert_eq!(train_ids.len(), 200);
            assert_eq!(test.iter().map(|p| p.id).collect::<HashSet<_>>().len(), 50);
            assert!(test.iter().all(|p| !train_ids.contains(&p.id)));
            let train_q: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
            assert!(test.iter().all(|p| !train_q.contains(p.question.as_str())));
        }
    }

    #[test]
    fn every_stored_answer_verifies() {
        for count in [3, 4] {
            let t = CountdownTask::new(count).unwrap();
            let mut problems = t.problems(Split::Train, 300, 21).unwrap();
            problems.extend(t.problems(Split::Test, 50, 21).unwrap());
            for p in &problems {
                let (numbers, target) = parse_question(&p.question).unwrap();
                assert_eq!(numbers.len(), count);
                assert_eq!(p.difficulty as usize, count);
                assert!(
                    numbers.iter().all(|&n| (1..=99).contains(&n)),
                    "{}",
                    p.question
                );
                assert!((1..=999).contains(&target), "{}", p.question);
                // The stored answer alone must reproduce the target with exactly these numbers.
                let e = evaluate(&p.answer).unwrap();
                assert_eq!(e.value, Rational::integer(i128::from(target)));
                for response in [
                    format!("<answer>{}</answer>", p.answer),
                    format!(
                        "<think>try things</think>\n<answer>{} = {target}</answer>",
                        p.answer
                    ),
                    format!("Let me see.\n{} = {target}", p.answer),
                    p.answer.clone(),
                ] {
                    assert_eq!(t.verify(p, &response), Verdict::Correct, "{response}");
                }
            }
        }
    }

    #[test]
    fn all_operators_appear() {
        let t = CountdownTask::new(4).unwrap();
        let answers: String = t
            .problems(Split::Train, 200, 5)
            .unwrap()
            .into_iter()
            .map(|p| p.answer)
            .collect();
        for op in ['+', '-', '*', '/', '('] {
            assert!(answers.contains(op), "no {op} in 200 answers");
        }
    }

    #[test]
    fn verifies_responses() {
        let t = CountdownTask::new(3).unwrap();
        let p = problem(&[12, 7, 3], 57);
        let cases = [
            ("<answer>(12 + 7) * 3</answer>", Verdict::Correct),
            ("<answer>3 * (7 + 12)</answer>", Verdict::Correct),
            ("<answer>(12+7)*3 = 57</answer>", Verdict::Correct),
            ("<answer>57 = (12 + 7) × 3</answer>", Verdict::Correct),
            ("<answer>$(12 + 7) \\times 3$</answer>", Verdict::Correct),
            ("<answer>-(-(12 + 7)) * 3</answer>", Verdict::Correct),
            (
                "I tried a lot. <answer>(12 + 7) * 3</answer> Done!",
                Verdict::Correct,
            ),
            (
                "<answer>12 + 7 + 3</answer> hmm <answer>(12 + 7) * 3</answer>",
                Verdict::Correct,
            ),
            (
                "<answer>(12 + 7) * 3</answer> hmm <answer>12 + 7 + 3</answer>",
                Verdict::Wrong,
            ),
            ("Work:\n12 + 7 = 19\n(12 + 7) * 3 = 57.", Verdict::Correct),
            ("<answer>(12 + 7) * 3 = 33</answer>", Verdict::Correct),
            ("<answer>12 + 7 + 3</answer>", Verdict::Wrong),
            ("<answer>(12 + 7) * 3 + 0</answer>", Verdict::Wrong),
            ("<answer>(12 + 12) * 3</answer>", Verdict::Wrong),
            ("<answer>(12 + 7) * 3 * 1</answer>", Verdict::Wrong),
            ("<answer>19 * 3</answer>", Verdict::Wrong),
            ("<answer>12 * 7 - 3</answer>", Verdict::Wrong),
            (
                "<answer>99999999 * 99999999 - 12 - 7 - 3</answer>",
                Verdict::Wrong,
            ),
            (
                "<answer>99999999999999999999999 * 12 * 7 * 3</answer>",
                Verdict::Malformed,
            ),
            ("<answer>(12 + 7 * 3</answer>", Verdict::Malformed),
            ("<answer>(12 + 7)) * 3</answer>", Verdict::Malformed),
            ("<answer>12 / (7 - 7) * 3</answer>", Verdict::Malformed),
            (
                "<answer>The equation is (12 + 7) * 3</answer>",
                Verdict::Malformed,
            ),
            (
                "<answer>(12 + 7) * 3 = 57 = 57</answer>",
                Verdict::Malformed,
            ),
            ("<answer>12 + 7 = 3 * 2</answer>", Verdict::Malformed),
            ("<answer></answer>", Verdict::Malformed),
            ("", Verdict::Malformed),
            ("no idea, sorry", Verdict::Malformed),
            ("%%%((((", Verdict::Malformed),
            ("<answer>1.5 * 2</answer>", Verdict::Malformed),
        ];
        for (response, want) in cases {
            assert_eq!(t.verify(&p, response), want, "{response:?}");
        }
        // Exact fractions: 7 / 2 * 2 is 7, not 6 or 6.999...
        let p = problem(&[7, 2, 2], 7);
        assert_eq!(t.verify(&p, "<answer>7 / 2 * 2</answer>"), Verdict::Correct);
        // Duplicated numbers must be used as often as given.
        let p = problem(&[5, 5, 3], 13);
        assert_eq!(t.verify(&p, "<answer>5 + 5 + 3</answer>"), Verdict::Correct);
        assert_eq!(
            t.verify(&p, "<answer>5 + 5 * 3 - 7</answer>"),
            Verdict::Wrong
        );
        // A question that is not a countdown question cannot be solved.
        let foreign = Problem {
            question: "What is 2 + 2?".into(),
            ..problem(&[1, 2, 3], 6)
        };
        assert_eq!(
            t.verify(&foreign, "<answer>1 + 2 + 3</answer>"),
            Verdict::Wrong
        );
    }

    #[test]
    fn verifier_never_panics() {
        const PIECES: [&str; 20] = [
            "<answer>",
            "</answer>",
            "(",
            ")",
            "+",
            "-",
            "*",
            "/",
            "12",
            "7",
            "3",
            "=",
            " ",
            "\n",
            "÷",
            "$",
            "\\times",
            "0",
            "99999999999",
            "é",
        ];
        let t = CountdownTask::new(3).unwrap();
        let p = problem(&[12, 7, 3], 57);
        let mut rng = SplitMix64::new(17);
        for _ in 0..500 {
            let len = rng.below(40) as usize;
            let text: String = (0..len)
                .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
                .collect();
            let _ = t.verify(&p, &text);
        }
    }

    #[test]
    fn parses_questions() {
        assert_eq!(
            parse_question(&problem(&[12, 7, 3, 99], 850).question),
            Some((vec![12, 7, 3, 99], 850))
        );
        assert_eq!(parse_question("What is 2 + 2?"), None);
        assert_eq!(parse_question("Using [1, x] ... equals 3"), None);
        assert_eq!(parse_question("Using [1, 2] ... equals"), None);
    }
}

//! `mix`: a task that tells routing methods apart. Arithmetic in several phrasings, some held out
//! of training entirely, plus "everyday" questions the base model answers well and must keep on
//! the device; a third of the problems carry an ordinary system prompt.
//!
//! Subsets (`Problem::subset`): `trained-phrasing` (train and test), `held-out-phrasing` (test
//! only: phrasings the train split never uses), `everyday` (train and test, different questions).
//! Arithmetic reuses [`arith`](super::arith)'s levels, weighted toward the easy ones so the base
//! model solves about half; `difficulty` is the arith level, 0 for everyday questions.
//!
//! Measured (SmolLM2-135M-Instruct Q4_1, greedy, 48 answer tokens, all local, 300 test problems,
//! seed 0: `selfroute-train eval --task mix --route local --problems 300 --max-new-tokens 48`):
//! 45.7% overall; arithmetic 39.2% (trained phrasings 42.9% of 133, held-out 35.4% of 130),
//! everyday 91.9% of 37. By level: 1: 68% (118), 2: 14% (42), 3: 0% (12), 4: 22% (76),
//! 5: 0% (15). Phrasings: bare 64%, symbolic 43%, compute 44%, story 39%, instruction 26%,
//! scene 21% (level 1 alone: bare 100%, instruction 22%; word problems are often cut off at 48
//! tokens). A system prompt costs accuracy: 34% with one (91 problems), 51% without.
//! Everyday questions were kept only where the base model answered right in a screen of 140.
//!
//! Splits: an arithmetic question goes to train or test by the hash of its phrasing and numbers
//! (not the names in a word problem), so no question text is in both splits, whatever seed or
//! count. Everyday questions are split by a fixed flag (half of them test only), so test asks
//! facts training never saw. System prompts are given out after collection, so their share holds
//! however many problems are asked. The everyday pool is finite (56 questions per split): past
//! about 250 problems its share falls below [`EVERYDAY_PER_MILLE`] as the questions run out,
//! and level 1 (45 sums) thins the same way in a large test split.

use selfroute_core::rng::SplitMix64;

use super::answer::marked_answer;
use super::arith::{Operation, verify_integer};
use super::split::{collect_assigned, content_hash, split_of};
use super::{Problem, Split, Task, Verdict};
use crate::Result;

pub const NAME: &str = "mix";

pub const TRAINED_PHRASING: &str = "trained-phrasing";
pub const HELD_OUT_PHRASING: &str = "held-out-phrasing";
pub const EVERYDAY: &str = "everyday";

/// One format sentence for numbers and words alike ("NUMBER" would misdirect a capital).
const FORMAT: &str = "Give the final answer as <answer>...</answer>.";

/// Everyday questions per thousand problems, in both splits.
const EVERYDAY_PER_MILLE: u64 = 200;

/// Arith levels and their weights: the base model solves level 1 about two times in three, 2 and
/// 4 one in five, 3 and 5 almost never (see the module doc), so the weights set its accuracy.
const LEVELS: [(u32, u64); 5] = [(1, 50), (2, 15), (3, 5), (4, 25), (5, 5)];

/// Draws of numbers for one arithmetic problem before giving up on its phrasing and level (a
/// level-1 phrasing has only a handful of test problems).
const MAX_REDRAWS: usize = 1000;

/// Seeds the system-prompt stream apart from the problem stream.
const SYSTEM_STREAM: u64 = 0x5157_5052_4f4d_5054;

/// Ordinary system prompts; one in three problems carries one of these.
const SYSTEM_PROMPTS: [&str; 4] = [
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep your answers short.",
    "You are SmolLM, an AI assistant. Answer the user's questions accurately.",
    "You are a patient tutor who helps students with their questions.",
];

/// Who a word problem is about, with the pronoun it needs.
const PEOPLE: [(&str, &str); 6] = [
    ("Ana", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Leo", "he"),
    ("Sara", "she"),
    ("Tom", "he"),
];

const THINGS: [&str; 5] = ["stickers", "marbles", "apples", "stamps", "cards"];

/// A way of asking for `a op b`. `Scene` carries the names a word problem draws, which are not
/// part of the problem's content (a split key ignores them).
struct Phrasing {
    key: &'static str,
    held_out: bool,
    render: fn(Operation, Scene) -> String,
}

#[derive(Clone, Copy)]
struct Scene {
    name: &'static str,
    pronoun: &'static str,
    things: &'static str,
}

const PHRASINGS: [Phrasing; 6] = [
    Phrasing {
        key: "bare",
        held_out: false,
        render: |Operation { a, op, b }, _| format!("What is {a} {op} {b}?"),
    },
    Phrasing {
        key: "instruction",
        held_out: false,
        render: |Operation { a, op, b }, _| match op {
            '+' => format!("Add {a} and {b}."),
            '-' => format!("Subtract {b} from {a}."),
            _ => format!("Multiply {a} by {b}."),
        },
    },
    Phrasing {
        key: "story",
        held_out: false,
        render: |Operation { a, op, b }, s| match op {
            '+' => format!(
                "{} has {a} {} and gets {b} more. How many {} does {} have now?",
                s.name, s.things, s.things, s.pronoun
            ),
            // Level 3 can go below zero; a temperature can too.
            '-' => format!(
                "The temperature was {a} degrees and then fell by {b} degrees. \
                 What is the temperature now?"
            ),
            _ => format!(
                "{} buys {a} bags with {b} {} in each bag. How many {} does {} buy in all?",
                s.name, s.things, s.things, s.pronoun
            ),
        },
    },
    Phrasing {
        key: "symbolic",
        held_out: true,
        render: |Operation { a, op, b }, _| format!("{a} {op} {b} = ?"),
    },
    Phrasing {
        key: "compute",
        held_out: true,
        render: |Operation { a, op, b }, _| {
            let word = match op {
                '+' => "plus",
                '-' => "minus",
                _ => "times",
            };
            format!("Compute {a} {word} {b}.")
        },
    },
    Phrasing {
        key: "scene",
        held_out: true,
        render: |Operation { a, op, b }, s| match op {
            '+' => format!(
                "A bus has {a} passengers and {b} more get on. How many passengers are on the \
                 bus now?"
            ),
            '-' => format!(
                "{}'s score was {a} points and then {} lost {b} points. What is the score now?",
                s.name, s.pronoun
            ),
            _ => format!(
                "A hall has {a} rows with {b} chairs in each row. How many chairs are there?"
            ),
        },
    },
];

/// An everyday question: its text, the reference answer and other answers that count as right.
struct Everyday {
    question: &'static str,
    answer: &'static str,
    also: &'static [&'static str],
    /// Test only: training never sees this question.
    held_out: bool,
}

const fn fact(question: &'static str, answer: &'static str, held_out: bool) -> Everyday {
    Everyday {
        question,
        answer,
        also: &[],
        held_out,
    }
}

const EVERYDAY_QUESTIONS: &[Everyday] = &[
    fact("What is the capital of France?", "Paris", false),
    fact("What is the capital of Germany?", "Berlin", true),
    fact("What is the capital of Italy?", "Rome", false),
    fact("What is the capital of Spain?", "Madrid", true),
    fact("What is the capital of Japan?", "Tokyo", false),
    fact("What is the capital of Russia?", "Moscow", true),
    fact("What is the capital of China?", "Beijing", false),
    fact("What is the capital of Egypt?", "Cairo", true),
    fact("What is the capital of Greece?", "Athens", false),
    fact("What is the capital of Ireland?", "Dublin", true),
    fact("What is the capital of Austria?", "Vienna", false),
    fact("What is the capital of Norway?", "Oslo", true),
    fact("What is the capital of Sweden?", "Stockholm", false),
    fact("What is the capital of Finland?", "Helsinki", true),
    fact("What is the capital of Poland?", "Warsaw", false),
    fact("What is the capital of Hungary?", "Budapest", true),
    fact("What is the capital of Canada?", "Ottawa", false),
    fact("What is the capital of Mexico?", "Mexico City", true),
    fact("What is the capital of Argentina?", "Buenos Aires", false),
    fact("What is the capital of Peru?", "Lima", true),
    fact("What is the capital of Kenya?", "Nairobi", false),
    fact("What is the capital of Thailand?", "Bangkok", true),
    fact("What is the capital of South Korea?", "Seoul", false),
    fact("What is the capital of Iran?", "Tehran", true),
    fact("What is the capital of Indonesia?", "Jakarta", false),
    fact("What is the capital of the Philippines?", "Manila", true),
    fact(
        "What is the capital of the Czech Republic?",
        "Prague",
        false,
    ),
    fact("What is the capital of Vietnam?", "Hanoi", true),
    fact("What is the capital of Saudi Arabia?", "Riyadh", false),
    fact("What is the capital of Morocco?", "Rabat", true),
    fact("What is the capital of Iceland?", "Reykjavik", false),
    fact("What is the capital of Scotland?", "Edinburgh", true),
    fact("What is the capital of Pakistan?", "Islamabad", false),
    fact("What is the capital of Malaysia?", "Kuala Lumpur", true),
    fact("What is the capital of Romania?", "Bucharest", false),
    fact("What is the capital of Bulgaria?", "Sofia", true),
    fact("What is the capital of Serbia?", "Belgrade", false),
    fact("What is the capital of Croatia?", "Zagreb", true),
    fact("What is the capital of Chile?", "Santiago", false),
    fact("What is the capital of Ethiopia?", "Addis Ababa", true),
    fact("What is the capital of Afghanistan?", "Kabul", false),
    fact("What is the capital of Iraq?", "Baghdad", true),
    fact("What is the capital of Syria?", "Damascus", false),
    fact("What is the capital of Lebanon?", "Beirut", true),
    fact("What is the capital of Nepal?", "Kathmandu", false),
    fact("What is the capital of North Korea?", "Pyongyang", true),
    fact("What is the capital of Taiwan?", "Taipei", false),
    fact("What is the capital of Ghana?", "Accra", true),
    fact("What is the capital of Senegal?", "Dakar", false),
    fact("What is the capital of Sudan?", "Khartoum", true),
    fact("What is the capital of Uganda?", "Kampala", false),
    fact("What is the capital of Zimbabwe?", "Harare", true),
    fact("What is the capital of Latvia?", "Riga", false),
    Everyday {
        question: "What is the capital of Ukraine?",
        answer: "Kyiv",
        also: &["Kiev"],
        held_out: true,
    },
    fact("Which city is the capital of France?", "Paris", false),
    fact("Which city is the capital of Italy?", "Rome", true),
    fact("Which city is the capital of Japan?", "Tokyo", false),
    fact("Which city is the capital of Germany?", "Berlin", true),
    fact("Which city is the capital of Spain?", "Madrid", false),
    fact("Which city is the capital of Greece?", "Athens", true),
    fact("Which city is the capital of Russia?", "Moscow", false),
    fact("Which city is the capital of China?", "Beijing", true),
    fact("Which city is the capital of Egypt?", "Cairo", false),
    fact("How many days are there in a week?", "7", true),
    fact("How many months are there in a year?", "12", false),
    fact("How many hours are there in a day?", "24", true),
    fact("How many minutes are there in an hour?", "60", false),
    fact("How many seconds are there in a minute?", "60", true),
    fact("How many legs does a spider have?", "8", false),
    fact("How many sides does a triangle have?", "3", true),
    fact("How many sides does a square have?", "4", false),
    fact("How many wheels does a bicycle have?", "2", true),
    fact("What colour is snow?", "white", false),
    fact("What is the opposite of hot?", "cold", true),
    fact("What is the opposite of up?", "down", false),
    fact("What is the opposite of day?", "night", true),
    fact("What language is spoken in France?", "French", false),
    fact("What language is spoken in Spain?", "Spanish", true),
    fact("What is the chemical formula of water?", "H2O", false),
    fact("What is the opposite of big?", "small", true),
    fact("What is the opposite of left?", "right", false),
    fact("What is the opposite of black?", "white", true),
    fact("What is the opposite of yes?", "no", false),
    fact("What is the opposite of fast?", "slow", true),
    fact("What is the opposite of happy?", "sad", false),
    fact("What is the opposite of north?", "south", true),
    fact("What is the opposite of east?", "west", false),
    fact("What is the opposite of wet?", "dry", true),
    fact("What is the opposite of full?", "empty", false),
    fact("What is the opposite of early?", "late", true),
    fact("What is the opposite of tall?", "short", false),
    fact("What is the opposite of rich?", "poor", true),
    fact("What language is spoken in Russia?", "Russian", false),
    fact("What language is spoken in Brazil?", "Portuguese", true),
    fact(
        "What language is spoken in the Netherlands?",
        "Dutch",
        false,
    ),
    fact("What language is spoken in Turkey?", "Turkish", true),
    fact("How many sides does a hexagon have?", "6", false),
    fact("How many sides does an octagon have?", "8", true),
    fact("How many fingers are there on one hand?", "5", false),
    fact("How many cents are there in a dollar?", "100", true),
    fact("How many centimetres are there in a metre?", "100", false),
    fact("How many grams are there in a kilogram?", "1000", true),
    fact("How many years are there in a century?", "100", false),
    Everyday {
        question: "What is the largest ocean on Earth?",
        answer: "Pacific",
        also: &["Pacific Ocean"],
        held_out: true,
    },
];

/// The `mix` task (no arguments).
#[derive(Debug, Clone, Default)]
pub struct MixTask;

impl MixTask {
    pub fn new() -> Self {
        Self
    }

    /// One candidate for `split`, without a system prompt, or None when the draw belongs to the
    /// other split.
    fn generate(&self, split: Split, rng: &mut SplitMix64) -> Option<Problem> {
        if rng.below(1000) < EVERYDAY_PER_MILLE {
            everyday(split, rng)
        } else {
            arithmetic(split, rng)
        }
    }
}

/// Gives about a third of `problems` a system prompt, from a stream of its own so that the
/// first problems of a seed stay the same whatever the count. Assigned after the problems are
/// collected, not drawn with them: collection drops repeats, and a small space (level 1, the
/// everyday questions) would otherwise run out of plain variants first and skew the share.
fn add_system_prompts(problems: &mut [Problem], seed: u64) {
    let mut rng = SplitMix64::new(seed ^ SYSTEM_STREAM);
    for problem in problems {
        if rng.below(3) != 0 {
            continue;
        }
        let system = SYSTEM_PROMPTS[rng.below(SYSTEM_PROMPTS.len() as u64) as usize];
        // Still unique: the ids were unique before and the prompt is hashed in.
        problem.id = content_hash(&format!("{:016x}:{system}", problem.id));
        problem.system = Some(system.to_string());
    }
}

fn everyday(split: Split, rng: &mut SplitMix64) -> Option<Problem> {
    let pool: Vec<&Everyday> = EVERYDAY_QUESTIONS
        .iter()
        .filter(|e| e.held_out == (split == Split::Test))
        .collect();
    let chosen = pool[rng.below(pool.len() as u64) as usize];
    Some(Problem {
        id: content_hash(&format!("mix:everyday:{}", chosen.question)),
        question: chosen.question.to_string(),
        answer: chosen.answer.to_string(),
        difficulty: 0,
        system: None,
        subset: EVERYDAY.to_string(),
    })
}

fn arithmetic(split: Split, rng: &mut SplitMix64) -> Option<Problem> {
    // Training never draws a held-out phrasing; the test split draws trained and held-out ones
    // equally often.
    let held_out = split == Split::Test && rng.below(2) == 0;
    let phrasings: Vec<&Phrasing> = PHRASINGS
        .iter()
        .filter(|p| p.held_out == held_out)
        .collect();
    let phrasing = phrasings[rng.below(phrasings.len() as u64) as usize];
    let level = draw_level(rng);
    // Numbers are redrawn until they fall in `split`, so that the split's 1-in-10 hash does not
    // thin arithmetic against the everyday questions (or one level against another).
    let (operation, content) = (0..MAX_REDRAWS).find_map(|_| {
        let operation = Operation::draw(rng, level);
        let content = format!("mix:{}:{}", phrasing.key, operation.canonical());
        (split_of(content_hash(&content)) == split).then_some((operation, content))
    })?;
    let (name, pronoun) = PEOPLE[rng.below(PEOPLE.len() as u64) as usize];
    let things = THINGS[rng.below(THINGS.len() as u64) as usize];
    let scene = Scene {
        name,
        pronoun,
        things,
    };
    Some(Problem {
        // The names and things are in the id but not in the split key: "Ana has 3 stickers"
        // and "Ben has 3 cards" are two problems of one split.
        id: content_hash(&format!("{content}:{name}:{things}")),
        question: (phrasing.render)(operation, scene),
        answer: operation.value().to_string(),
        difficulty: level,
        system: None,
        subset: if held_out {
            HELD_OUT_PHRASING
        } else {
            TRAINED_PHRASING
        }
        .to_string(),
    })
}

fn draw_level(rng: &mut SplitMix64) -> u32 {
    let total: u64 = LEVELS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.below(total);
    for (level, weight) in LEVELS {
        if pick < weight {
            return level;
        }
        pick -= weight;
    }
    // Unreachable: `pick` < the sum of the weights.
    LEVELS[0].0
}

impl Task for MixTask {
    fn name(&self) -> &str {
        NAME
    }

    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        let mut problems = collect_assigned(NAME, split, n, seed, |rng| self.generate(split, rng))?;
        add_system_prompts(&mut problems, seed);
        Ok(problems)
    }

    fn verify(&self, problem: &Problem, response: &str) -> Verdict {
        if problem.subset == EVERYDAY {
            return verify_words(problem, response);
        }
        // A problem whose reference is not an integer cannot be matched; never reward it.
        match problem.answer.trim().parse::<i64>() {
            Ok(expected) => verify_integer(expected, response),
            Err(_) => Verdict::Wrong,
        }
    }

    fn answer_format(&self) -> &str {
        FORMAT
    }
}

/// An everyday answer matches the reference (or one of its alternatives) after [`normalize`].
/// The answer is the marked one (tags, `\boxed{}`, "Answer:"), else what the first sentence
/// says something "is": the base model states what it knows as "The capital of France is
/// Paris." and ignores the tags, and this subset measures whether routing keeps that knowledge.
/// A number reference also takes the arithmetic reading (the last number).
fn verify_words(problem: &Problem, response: &str) -> Verdict {
    if let Ok(expected) = problem.answer.trim().parse::<i64>() {
        let by_number = verify_integer(expected, response);
        // Malformed may still be a number in words ("<answer>seven</answer>").
        if by_number != Verdict::Malformed {
            return by_number;
        }
    }
    let Some(found) = marked_answer(response).or_else(|| stated_answer(response)) else {
        return Verdict::Malformed;
    };
    let found = normalize(found);
    if found.is_empty() {
        return Verdict::Malformed;
    }
    let also = EVERYDAY_QUESTIONS
        .iter()
        .find(|e| e.question == problem.question)
        .map_or(&[][..], |e| e.also);
    let right = std::iter::once(problem.answer.as_str())
        .chain(also.iter().copied())
        .any(|accepted| normalize(accepted) == found);
    if right {
        Verdict::Correct
    } else {
        Verdict::Wrong
    }
}

/// What the first sentence says its subject is or are: "The capital of France is Paris." gives
/// "Paris.".
fn stated_answer(response: &str) -> Option<&str> {
    let line = response.trim_start().lines().next()?;
    let end = [". ", "! ", "? "]
        .iter()
        .filter_map(|stop| line.find(stop))
        .min()
        .map_or(line.len(), |at| at + 1);
    let sentence = &line[..end];
    // ASCII lowercasing keeps byte offsets, so a position in `lower` slices `sentence`.
    let lower = sentence.to_ascii_lowercase();
    let (at, verb) = [" is ", " are "]
        .iter()
        .filter_map(|verb| lower.rfind(verb).map(|at| (at, verb.len())))
        .max()?;
    Some(&sentence[at + verb..])
}

/// Lowercase words without punctuation or articles, number words as digits: "The Pacific
/// Ocean." and "pacific ocean" agree, as do "Seven" and "7".
fn normalize(text: &str) -> String {
    const NUMBERS: [&str; 25] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "twenty one",
        "twenty two",
        "twenty three",
        "twenty four",
    ];
    let lower: String = text
        .chars()
        .flat_map(|c| {
            let keep = if c.is_alphanumeric() { c } else { ' ' };
            keep.to_lowercase()
        })
        .collect();
    let words: Vec<&str> = lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect();
    let joined = words.join(" ");
    match NUMBERS.iter().position(|n| *n == joined) {
        Some(value) => value.to_string(),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The phrasing a question was written in, read from its text alone (not from the subset
    /// the generator claims), with the arithmetic it asks for: (key, a, op, b).
    fn read(question: &str) -> Option<(&'static str, i64, char, i64)> {
        let numbers: Vec<i64> = question
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let op_symbol = || {
            ['+', '-', '*']
                .into_iter()
                .find(|op| question.contains(&format!(" {op} ")))
        };
        let (key, op) = if let Some(rest) = question.strip_prefix("What is ")
            && rest.ends_with('?')
            && op_symbol().is_some()
        {
            ("bare", op_symbol()?)
        } else if question.ends_with(" = ?") {
            ("symbolic", op_symbol()?)
        } else if question.starts_with("Add ") {
            ("instruction", '+')
        } else if question.starts_with("Subtract ") {
            // "Subtract B from A": the operands come reversed.
            return Some(("instruction", numbers[1], '-', numbers[0]));
        } else if question.starts_with("Multiply ") {
            ("instruction", '*')
        } else if question.starts_with("Compute ") {
            let op = if question.contains(" plus ") {
                '+'
            } else if question.contains(" minus ") {
                '-'
            } else {
                '*'
            };
            ("compute", op)
        } else if question.contains(" more. How many ") {
            ("story", '+')
        } else if question.starts_with("The temperature was ") {
            ("story", '-')
        } else if question.contains(" bags with ") {
            ("story", '*')
        } else if question.starts_with("A bus has ") {
            ("scene", '+')
        } else if question.contains("'s score was ") {
            ("scene", '-')
        } else if question.starts_with("A hall has ") {
            ("scene", '*')
        } else {
            return None;
        };
        Some((key, numbers[0], op, numbers[1]))
    }

    fn held_out_keys() -> HashSet<&'static str> {
        PHRASINGS
            .iter()
            .filter(|p| p.held_out)
            .map(|p| p.key)
            .collect()
    }

    fn held_out_everyday() -> HashSet<&'static str> {
        EVERYDAY_QUESTIONS
            .iter()
            .filter(|e| e.held_out)
            .map(|e| e.question)
            .collect()
    }

    #[test]
    fn held_out_phrasings_and_questions_never_train() {
        let task = MixTask::new();
        let (phrasings, everyday) = (held_out_keys(), held_out_everyday());
        for seed in [0, 1, 7, 12_345] {
            for n in [1, 10, 300, 3000] {
                for p in task.problems(Split::Train, n, seed).unwrap() {
                    assert_ne!(p.subset, HELD_OUT_PHRASING, "{p:?}");
                    if p.subset == EVERYDAY {
                        assert!(!everyday.contains(p.question.as_str()), "{p:?}");
                    } else {
                        let (key, ..) = read(&p.question).expect(&p.question);
                        assert!(!phrasings.contains(key), "{p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn subsets_say_what_the_text_is() {
        let task = MixTask::new();
        let held_out = held_out_keys();
        let everyday: HashSet<&str> = EVERYDAY_QUESTIONS.iter().map(|e| e.question).collect();
        for p in task.problems(Split::Test, 1000, 5).unwrap() {
            match p.subset.as_str() {
                EVERYDAY => assert!(everyday.contains(p.question.as_str()), "{p:?}"),
                subset => {
                    let (key, ..) = read(&p.question).expect(&p.question);
                    let want = if held_out.contains(key) {
                        HELD_OUT_PHRASING
                    } else {
                        TRAINED_PHRASING
                    };
                    assert_eq!(subset, want, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn splits_are_disjoint_whatever_the_seed() {
        let task = MixTask::new();
        let train = task.problems(Split::Train, 3000, 1).unwrap();
        let train_ids: HashSet<u64> = train.iter().map(|p| p.id).collect();
        let train_questions: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
        assert_eq!(train_ids.len(), train.len());
        for seed in [1, 2, 3] {
            let test = task.problems(Split::Test, 500, seed).unwrap();
            let test_ids: HashSet<u64> = test.iter().map(|p| p.id).collect();
            assert_eq!(test_ids.len(), test.len());
            assert!(train_ids.is_disjoint(&test_ids));
            // Not even the same question under another system prompt or another name.
            for p in &test {
                assert!(!train_questions.contains(p.question.as_str()), "{p:?}");
            }
        }
    }

    #[test]
    fn answers_match_the_text() {
        let task = MixTask::new();
        let problems = [
            task.problems(Split::Train, 1000, 2).unwrap(),
            task.problems(Split::Test, 1000, 2).unwrap(),
        ];
        for p in problems.iter().flatten() {
            if p.subset == EVERYDAY {
                assert_eq!(p.difficulty, 0);
                continue;
            }
            let (_, a, op, b) = read(&p.question).expect(&p.question);
            let value = match op {
                '+' => a + b,
                '-' => a - b,
                _ => a * b,
            };
            assert_eq!(p.answer, value.to_string(), "{p:?}");
            assert!(LEVELS.iter().any(|(level, _)| *level == p.difficulty));
        }
    }

    #[test]
    fn shares_of_system_prompts_and_everyday() {
        let task = MixTask::new();
        let share = |problems: &[Problem], f: &dyn Fn(&Problem) -> bool| {
            problems.iter().filter(|p| f(p)).count() as f64 / problems.len() as f64
        };
        for split in [Split::Train, Split::Test] {
            // Large enough that level 1 and the everyday questions run short: the system
            // prompt share must not move with that.
            let problems = task.problems(split, 2000, 4).unwrap();
            let system = share(&problems, &|p| p.system.is_some());
            assert!((0.30..0.37).contains(&system), "{split}: system {system}");
            for subset in [TRAINED_PHRASING, EVERYDAY] {
                let of: Vec<Problem> = problems
                    .iter()
                    .filter(|p| p.subset == subset)
                    .cloned()
                    .collect();
                let system = share(&of, &|p| p.system.is_some());
                assert!(
                    (0.2..0.45).contains(&system),
                    "{split} {subset}: system {system}"
                );
            }
            for p in &problems {
                if let Some(s) = &p.system {
                    assert!(SYSTEM_PROMPTS.contains(&s.as_str()), "{s}");
                }
            }
            // While the everyday questions last, they are a fifth of the problems.
            let few = task.problems(split, 100, 4).unwrap();
            let everyday = share(&few, &|p| p.subset == EVERYDAY);
            assert!(
                (0.12..0.28).contains(&everyday),
                "{split}: everyday {everyday}"
            );
        }
    }

    #[test]
    fn test_split_holds_every_subset_and_phrasing() {
        let task = MixTask::new();
        let test = task.problems(Split::Test, 300, 0).unwrap();
        for subset in [TRAINED_PHRASING, HELD_OUT_PHRASING, EVERYDAY] {
            assert!(test.iter().any(|p| p.subset == subset), "no {subset}");
        }
        let keys: HashSet<&str> = test
            .iter()
            .filter_map(|p| read(&p.question))
            .map(|r| r.0)
            .collect();
        assert_eq!(keys.len(), PHRASINGS.len(), "{keys:?}");
        let with_system: HashSet<&str> = test
            .iter()
            .filter(|p| p.system.is_some())
            .map(|p| p.subset.as_str())
            .collect();
        assert_eq!(with_system.len(), 3, "every subset carries system prompts");
    }

    #[test]
    fn reproducible_from_the_seed() {
        let task = MixTask::new();
        for split in [Split::Train, Split::Test] {
            let a = task.problems(split, 300, 42).unwrap();
            assert_eq!(a, task.problems(split, 300, 42).unwrap());
            assert_ne!(a, task.problems(split, 300, 43).unwrap());
            assert_eq!(&a[..50], &task.problems(split, 50, 42).unwrap()[..]);
        }
    }

    fn problem(question: &str, answer: &str, subset: &str) -> Problem {
        Problem {
            id: 0,
            question: question.into(),
            answer: answer.into(),
            difficulty: 0,
            system: None,
            subset: subset.into(),
        }
    }

    #[test]
    fn verifies_arithmetic_in_any_phrasing() {
        let task = MixTask::new();
        let story = problem(
            "Ana has 37 stickers and gets 48 more. How many stickers does she have now?",
            "85",
            TRAINED_PHRASING,
        );
        let symbolic = problem("37 - 48 = ?", "-11", HELD_OUT_PHRASING);
        let cases = [
            (&story, "<answer>85</answer>", Verdict::Correct),
            (&story, "She has 37 + 48 = 85 stickers.", Verdict::Correct),
            (&story, "<answer>85 stickers</answer>", Verdict::Malformed),
            (&story, "<answer>84</answer>", Verdict::Wrong),
            (&story, "<answer>85.5</answer>", Verdict::Wrong),
            (&story, "I cannot tell.", Verdict::Malformed),
            (&story, "", Verdict::Malformed),
            (&symbolic, "<answer>-11</answer>", Verdict::Correct),
            (&symbolic, "<answer>11</answer>", Verdict::Wrong),
            (&symbolic, "<answer></answer>", Verdict::Malformed),
        ];
        for (p, response, want) in cases {
            assert_eq!(
                task.verify(p, response),
                want,
                "{}: {response:?}",
                p.question
            );
        }
        let broken = problem("What is 1 + 1?", "two", TRAINED_PHRASING);
        assert_eq!(task.verify(&broken, "<answer>2</answer>"), Verdict::Wrong);
    }

    #[test]
    fn verifies_everyday_answers_by_normalised_match() {
        let task = MixTask::new();
        let capital = problem("What is the capital of France?", "Paris", EVERYDAY);
        let days = problem("How many days are there in a week?", "7", EVERYDAY);
        let ocean = problem("What is the largest ocean on Earth?", "Pacific", EVERYDAY);
        let cases = [
            (&capital, "<answer>Paris</answer>", Verdict::Correct),
            (&capital, "<answer> PARIS. </answer>", Verdict::Correct),
            (&capital, "Answer: paris", Verdict::Correct),
            (&capital, "<answer>Paris, France</answer>", Verdict::Wrong),
            (&capital, "<answer>Lyon</answer>", Verdict::Wrong),
            (
                &capital,
                "<answer>Paris</answer> no, <answer>Lyon</answer>",
                Verdict::Wrong,
            ),
            (
                &capital,
                "The capital of France is Paris.",
                Verdict::Correct,
            ),
            (
                &capital,
                "The capital of France is Lyon. Paris is bigger.",
                Verdict::Wrong,
            ),
            (
                &capital,
                "France is a country in Europe, and its capital is Paris.",
                Verdict::Correct,
            ),
            (&capital, "France has many cities.", Verdict::Malformed),
            (&capital, "<answer>...</answer>", Verdict::Malformed),
            (&capital, "", Verdict::Malformed),
            (&days, "<answer>7</answer>", Verdict::Correct),
            (&days, "<answer>Seven</answer>", Verdict::Correct),
            (&days, "A week has 7 days.", Verdict::Correct),
            (&days, "<answer>8</answer>", Verdict::Wrong),
            (&days, "The answer is 12.", Verdict::Wrong),
            (&days, "I am not sure.", Verdict::Malformed),
            (
                &ocean,
                "<answer>The Pacific Ocean</answer>",
                Verdict::Correct,
            ),
            (&ocean, "<answer>pacific</answer>", Verdict::Correct),
            (&ocean, "<answer>Atlantic Ocean</answer>", Verdict::Wrong),
        ];
        for (p, response, want) in cases {
            assert_eq!(
                task.verify(p, response),
                want,
                "{}: {response:?}",
                p.question
            );
        }
    }

    #[test]
    fn normalises_case_punctuation_articles_and_number_words() {
        assert_eq!(normalize("The Sun."), "sun");
        assert_eq!(normalize("  a  LION! "), "lion");
        assert_eq!(normalize("Twenty-four"), "24");
        assert_eq!(normalize("Mexico City"), "mexico city");
        assert_eq!(normalize("H2O"), "h2o");
        assert_eq!(normalize("?!"), "");
    }

    #[test]
    fn everyday_pool_is_sound() {
        let questions: HashSet<&str> = EVERYDAY_QUESTIONS.iter().map(|e| e.question).collect();
        assert_eq!(
            questions.len(),
            EVERYDAY_QUESTIONS.len(),
            "a question twice"
        );
        for e in EVERYDAY_QUESTIONS {
            assert!(!normalize(e.answer).is_empty(), "{}", e.question);
        }
        let held_out = held_out_everyday().len();
        assert!(held_out >= 10 && EVERYDAY_QUESTIONS.len() - held_out >= 10);
    }
}

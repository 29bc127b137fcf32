//! The tasks module as the trainer uses it: specs in, trait objects out.

use std::collections::HashSet;

use selfroute_train::TrainError;
use selfroute_train::tasks::{Split, Task, Verdict, parse_task};

fn disjoint_and_self_verifying(task: &dyn Task, seed: u64) {
    let train = task.problems(Split::Train, 200, seed).unwrap();
    let test = task.problems(Split::Test, 50, seed).unwrap();
    let train_questions: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
    assert!(
        test.iter()
            .all(|p| !train_questions.contains(p.question.as_str()))
    );
    for p in train.iter().chain(&test) {
        let response = format!("Thinking...\n<answer>{}</answer>", p.answer);
        assert_eq!(
            task.verify(p, &response),
            Verdict::Correct,
            "{}: {p:?}",
            task.name()
        );
        assert_eq!(task.verify(p, ""), Verdict::Malformed);
    }
}

#[test]
fn generated_tasks_through_specs() {
    for spec in ["arith", "arith:4-7", "countdown", "countdown:4", "mix"] {
        let task = parse_task(spec).unwrap();
        disjoint_and_self_verifying(task.as_ref(), 3);
    }
    assert_eq!(
        parse_task("countdown").unwrap().answer_format(),
        "Give the equation as <answer>EQUATION</answer>."
    );
    assert_eq!(
        parse_task("arith").unwrap().answer_format(),
        "Give the final answer as <answer>NUMBER</answer>."
    );
    assert_eq!(
        parse_task("mix").unwrap().answer_format(),
        "Give the final answer as <answer>...</answer>."
    );
}

/// What evaluation reports per subset: the test split holds all three, training only the
/// trained phrasings and everyday questions, and a third of each carries a system prompt.
#[test]
fn mix_subsets_and_system_prompts_through_a_spec() {
    let task = parse_task("mix").unwrap();
    assert_eq!(parse_task(task.name()).unwrap().name(), "mix");
    let subsets = |split, n| {
        let problems = task.problems(split, n, 11).unwrap();
        let names: HashSet<String> = problems.iter().map(|p| p.subset.clone()).collect();
        let system = problems.iter().filter(|p| p.system.is_some()).count();
        (names, system as f64 / n as f64)
    };
    let (test, test_system) = subsets(Split::Test, 400);
    let (train, train_system) = subsets(Split::Train, 1500);
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert_eq!(
        test,
        set(&["trained-phrasing", "held-out-phrasing", "everyday"])
    );
    assert_eq!(train, set(&["trained-phrasing", "everyday"]));
    for share in [test_system, train_system] {
        assert!((0.27..0.40).contains(&share), "system prompt share {share}");
    }
    // A word problem and an everyday answer stated in a sentence, through the trait object.
    let word = task
        .problems(Split::Test, 400, 11)
        .unwrap()
        .into_iter()
        .find(|p| p.question.contains(" How many "))
        .expect("a word problem");
    let right = format!("So the total is {}.", word.answer);
    assert_eq!(task.verify(&word, &right), Verdict::Correct);
    assert_eq!(
        task.verify(&word, "So the total is 1000001."),
        Verdict::Wrong
    );
    assert_eq!(task.verify(&word, "I cannot say."), Verdict::Malformed);
}

#[test]
fn jsonl_through_a_spec() {
    let path =
        std::env::temp_dir().join(format!("selfroute-tasks-it-{}.jsonl", std::process::id()));
    let lines: String = (0..600)
        .map(|i| {
            format!(
                "{{\"question\": \"How many legs do {i} spiders have?\", \"answer\": {}}}\n",
                8 * i
            )
        })
        .collect();
    std::fs::write(&path, &lines).unwrap();
    let spec = format!("jsonl:{}", path.display());
    let task = parse_task(&spec).unwrap();
    assert_eq!(task.name(), spec);
    disjoint_and_self_verifying(task.as_ref(), 4);

    std::fs::write(&path, format!("{lines}\nnot json\n")).unwrap();
    let result = parse_task(&spec);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(TrainError::Data { reason, .. }) => {
            assert!(reason.starts_with("line 602:"), "{reason}")
        }
        Err(other) => panic!("expected a data error, got {other}"),
        Ok(_) => panic!("a bad line must not load"),
    }
}

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
    for spec in ["arith", "arith:4-7", "countdown", "countdown:4"] {
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

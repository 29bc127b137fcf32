//! `eval`'s instruments on the tiny model: the table adds up, every problem has a line, the cap
//! is a hard cap over the run with over-budget problems answered locally, cloud only scores
//! what the simulated cloud does, sampled answers are reproducible, and each line says which
//! subset its problem is from.

mod support;

use selfroute_core::{ModelPackage, NoCloud};
use selfroute_engine::{BackendChoice, Engine, EngineOptions, load_engine};
use selfroute_train::cloud::{CloudOracle, SimulatedCloud};
use selfroute_train::eval::cloud::{EvalCloud, SimulatedCloudClient};
use selfroute_train::eval::report::{RunLabels, Summary, markdown, summarize};
use selfroute_train::eval::{
    EvalConfig, EvalRoute, Policy, ProblemRecord, evaluate, random_decisions,
};
use selfroute_train::tasks::{Problem, Split, parse_task};

const TASK: &str = "arith:1-2";

fn engine(package: &ModelPackage) -> Engine {
    let (engine, _) = pollster::block_on(load_engine(
        &package.config,
        support::tiny_with_offload(256).weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))
    .expect("cpu engine");
    engine
}

fn config(budget: f64) -> EvalConfig {
    let mut config = EvalConfig {
        budget,
        ..EvalConfig::default()
    };
    // The tiny model's answers are noise; a few tokens show the path without the wait.
    config.generation.max_new_tokens = 4;
    config
}

fn cloud(accuracy: f64, seed: u64, problems: &[Problem]) -> EvalCloud {
    EvalCloud::Simulated(Box::new(
        SimulatedCloudClient::new(accuracy, seed, parse_task(TASK).unwrap(), problems).unwrap(),
    ))
}

fn run(problems: &[Problem], policy: &Policy, budget: f64, cloud_acc: f64) -> Vec<ProblemRecord> {
    let cloud = (*policy != Policy::Local).then(|| cloud(cloud_acc, 7, problems));
    run_with(problems, policy, budget, cloud)
}

fn run_with(
    problems: &[Problem],
    policy: &Policy,
    budget: f64,
    cloud: Option<EvalCloud>,
) -> Vec<ProblemRecord> {
    run_config(problems, policy, cloud, &config(budget))
}

fn run_config(
    problems: &[Problem],
    policy: &Policy,
    cloud: Option<EvalCloud>,
    config: &EvalConfig,
) -> Vec<ProblemRecord> {
    let package = support::tiny_with_offload(256);
    let task = parse_task(TASK).unwrap();
    let engine = engine(&package);
    let mut seen = 0;
    let records = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(evaluate(
            engine,
            package.tokenizer,
            package.chat_template.expect("template"),
            cloud,
            task.as_ref(),
            problems,
            policy,
            config,
            |_| seen += 1,
        ))
        .expect("evaluate");
    assert_eq!(seen, problems.len(), "progress sees every problem");
    records
}

fn summary(records: &[ProblemRecord], budget: f64) -> Summary {
    summarize(
        records,
        &RunLabels {
            method: "test",
            model: "tiny",
            task: TASK,
            cloud: "simulated",
            budget,
            max_cloud_calls: (budget * records.len() as f64 + 1e-9).floor() as usize,
            temperature: 0.0,
            seed: 0,
        },
    )
}

fn problems(n: usize) -> Vec<Problem> {
    parse_task(TASK)
        .unwrap()
        .problems(Split::Test, n, 3)
        .unwrap()
}

/// Every problem has one line, in order, and the summary's fields are consistent with the lines.
fn assert_adds_up(records: &[ProblemRecord], problems: &[Problem], s: &Summary) {
    assert_eq!(records.len(), problems.len());
    for (i, (r, p)) in records.iter().zip(problems).enumerate() {
        assert_eq!((r.index, r.id), (i, p.id), "one line per problem, in order");
    }
    let n = records.len() as f64;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(s.accuracy, s.local_accuracy + s.cloud_accuracy_share));
    assert!(close(
        s.accuracy * n,
        records.iter().filter(|r| r.correct).count() as f64
    ));
    assert!(close(
        s.conditional_local_accuracy * s.kept_local.max(1) as f64,
        s.correct_local as f64
    ));
    assert!(close(s.cloud_call_ratio * n, s.cloud_calls as f64));
    assert_eq!(
        s.kept_local
            + records
                .iter()
                .filter(|r| r.route == EvalRoute::Cloud)
                .count(),
        records.len()
    );
    assert_eq!(
        s.by_difficulty.iter().map(|l| l.n).sum::<usize>(),
        records.len()
    );
    let table = markdown(s);
    assert!(table.contains(&format!("| {} |", s.n)), "{table}");
}

#[test]
fn the_cap_is_exact_over_the_run_and_over_budget_problems_stay_local() {
    // A huge bias: the model asks for the cloud on every problem it may. With 30 problems and a
    // 30% budget the run may spend exactly 9 calls; a 20-request sliding window would allow 12.
    let problems = problems(30);
    let records = run(
        &problems,
        &Policy::Token {
            offload_bias: 1000.0,
        },
        0.3,
        0.9,
    );
    let s = summary(&records, 0.3);
    assert_adds_up(&records, &problems, &s);
    assert_eq!(s.cloud_calls, 9, "{s:#?}");
    for r in &records {
        if r.index < 9 {
            assert_eq!(r.route, EvalRoute::Cloud, "problem {}", r.index);
        } else {
            // Answered locally, offload masked: the model generated an answer of its own.
            assert_eq!(r.route, EvalRoute::Local, "problem {}", r.index);
            assert!(r.over_budget, "problem {}", r.index);
            assert!(r.local_tokens > 0, "problem {}", r.index);
            assert_eq!(r.answer, r.local_text);
        }
    }
    assert_eq!(s.over_budget, 21);
}

#[test]
fn routers_decided_outside_the_model_stay_within_the_cap() {
    let problems = problems(30);
    // Random at 50% wants 15 problems out; the 30% cap lets 9 go, in problem order.
    let wants = random_decisions(30, 0.5, 11).unwrap();
    assert_eq!(wants.iter().filter(|&&w| w).count(), 15);
    let records = run(&problems, &Policy::Decided(wants.clone()), 0.3, 0.9);
    let s = summary(&records, 0.3);
    assert_adds_up(&records, &problems, &s);
    assert_eq!(s.cloud_calls, 9);
    assert_eq!(s.over_budget, 6);
    let mut sent = 0;
    for (r, want) in records.iter().zip(&wants) {
        let cloud = r.route == EvalRoute::Cloud;
        assert!(!cloud || *want, "only wanted problems go out");
        sent += usize::from(cloud);
        if *want && !cloud {
            assert!(sent == 9 && r.over_budget && r.local_tokens > 0);
        }
    }
    // The same seed picks the same problems.
    assert_eq!(random_decisions(30, 0.5, 11).unwrap(), wants);

    let local = run(&problems, &Policy::Local, 0.3, 0.9);
    let s = summary(&local, 0.3);
    assert_adds_up(&local, &problems, &s);
    assert_eq!((s.cloud_calls, s.kept_local), (0, 30));
    assert!(
        local
            .iter()
            .all(|r| r.route == EvalRoute::Local && !r.over_budget)
    );
}

#[test]
fn a_failed_cloud_call_is_answered_locally_and_still_counts_as_a_call() {
    let problems = problems(10);
    // A simulated cloud that knows none of the problems fails every call.
    let broken = cloud(0.9, 7, &[]);
    let wants = vec![true; 10];
    let records = run_with(&problems, &Policy::Decided(wants), 0.3, Some(broken));
    let s = summary(&records, 0.3);
    assert_adds_up(&records, &problems, &s);
    assert_eq!((s.cloud_calls, s.fallbacks, s.kept_local), (3, 3, 10));
    for r in &records[..3] {
        assert_eq!(r.route, EvalRoute::Fallback);
        assert!(r.local_tokens > 0 && r.cloud_tokens == 0);
    }
}

#[test]
fn cloud_only_scores_what_the_simulated_cloud_does() {
    let problems = problems(300);
    let records = run(&problems, &Policy::Cloud, 1.0, 0.7);
    let s = summary(&records, 1.0);
    assert_adds_up(&records, &problems, &s);
    assert_eq!(s.cloud_calls, 300);
    // 3 sigma of a binomial(300, 0.7) share is 0.079.
    assert!((s.accuracy - 0.7).abs() < 0.08, "accuracy {}", s.accuracy);
    // And problem by problem, the verdicts training's simulated cloud gives with the same seed.
    let task = parse_task(TASK).unwrap();
    let mut oracle = SimulatedCloud::new(0.7, 7).unwrap();
    for (r, p) in records.iter().zip(&problems) {
        assert_eq!(r.correct, oracle.is_correct(task.as_ref(), p).unwrap());
    }
}

#[test]
fn a_route_that_needs_a_cloud_refuses_to_run_without_one() {
    let package = support::tiny_with_offload(256);
    let task = parse_task(TASK).unwrap();
    let problems = problems(2);
    let result = pollster::block_on(evaluate(
        engine(&package),
        package.tokenizer,
        package.chat_template.expect("template"),
        None::<NoCloud>,
        task.as_ref(),
        &problems,
        &Policy::Cloud,
        &config(0.3),
        |_| {},
    ));
    assert!(result.is_err());
}

#[test]
fn the_summary_of_known_lines() {
    // 10 problems: 4 local (3 right), 4 cloud (2 right), 2 fallbacks (1 right), 1 over budget.
    let routes = [
        (EvalRoute::Local, true),
        (EvalRoute::Local, true),
        (EvalRoute::Local, true),
        (EvalRoute::Local, false),
        (EvalRoute::Cloud, true),
        (EvalRoute::Cloud, true),
        (EvalRoute::Cloud, false),
        (EvalRoute::Cloud, false),
        (EvalRoute::Fallback, true),
        (EvalRoute::Fallback, false),
    ];
    let records: Vec<ProblemRecord> = routes
        .iter()
        .enumerate()
        .map(|(index, &(route, correct))| ProblemRecord {
            index,
            id: index as u64,
            difficulty: 1 + (index % 2) as u32,
            subset: String::new(),
            system_prompt: false,
            question: String::new(),
            reference: String::new(),
            route,
            over_budget: index == 3,
            local_text: String::new(),
            answer: String::new(),
            correct,
            local_tokens: if route == EvalRoute::Cloud { 0 } else { 10 },
            cloud_tokens: if route == EvalRoute::Cloud { 20 } else { 0 },
            latency_ms: 100.0,
            first_token_ms: Some(50.0),
        })
        .collect();
    let s = summary(&records, 0.6);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(s.accuracy, 0.6), "{s:#?}");
    assert!(close(s.local_accuracy, 0.4));
    assert!(close(s.cloud_accuracy_share, 0.2));
    assert!(close(s.conditional_local_accuracy, 4.0 / 6.0));
    assert!(close(s.cloud_call_ratio, 0.6));
    assert_eq!(
        (s.kept_local, s.cloud_calls, s.fallbacks, s.over_budget),
        (6, 6, 2, 1)
    );
    assert!(close(s.mean_local_tokens, 6.0) && close(s.mean_cloud_tokens, 8.0));
    assert!(close(s.mean_latency_ms, 100.0) && close(s.mean_first_token_ms, 50.0));
    assert_eq!(s.max_cloud_calls, 6);
    let levels: Vec<(u32, usize)> = s
        .by_difficulty
        .iter()
        .map(|l| (l.difficulty, l.n))
        .collect();
    assert_eq!(levels, [(1, 5), (2, 5)]);
    let table = markdown(&s);
    assert!(
        table.contains("| test | 10 | 60.0 | 40.0 | 66.7 | 60.0 |"),
        "{table}"
    );
}

/// Local answers sampled at `temperature` from `seed`, as (id, text).
fn sampled(problems: &[Problem], temperature: f32, seed: u64) -> Vec<(u64, String)> {
    let mut config = config(0.3);
    config.generation.sampling.temperature = temperature;
    config.generation.sampling.seed = seed;
    run_config(problems, &Policy::Local, None, &config)
        .into_iter()
        .map(|r| (r.id, r.local_text))
        .collect()
}

#[test]
fn sampled_answers_follow_the_seed_and_the_problem_not_its_place() {
    let problems = problems(8);
    let first = sampled(&problems, 1.0, 5);
    // The same seed, the same answers; another seed, other answers.
    assert_eq!(sampled(&problems, 1.0, 5), first);
    assert_ne!(sampled(&problems, 1.0, 6), first);
    // An answer depends on its problem, not on where the problem stands in the run.
    let reversed: Vec<Problem> = problems.iter().rev().cloned().collect();
    let mut back = sampled(&reversed, 1.0, 5);
    back.reverse();
    assert_eq!(back, first);
    // Problems of the same text but other ids are drawn apart: one seed for all would give
    // every copy the same answer.
    let copies: Vec<Problem> = (0..8)
        .map(|i| Problem {
            id: 1000 + i,
            ..problems[0].clone()
        })
        .collect();
    let answers: std::collections::HashSet<String> = sampled(&copies, 1.0, 5)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert!(answers.len() > 1, "{answers:?}");
    // Greedy answers do not depend on the seed.
    assert_eq!(sampled(&problems, 0.0, 5), sampled(&problems, 0.0, 6));
}

#[test]
fn lines_carry_the_subset_and_the_system_prompt() {
    let mut problems = problems(6);
    for (i, p) in problems.iter_mut().enumerate() {
        p.subset = if i < 4 {
            "everyday"
        } else {
            "held-out-phrasing"
        }
        .into();
        p.system = (i % 2 == 0).then(|| "You are a helpful assistant.".to_string());
    }
    let records = run(&problems, &Policy::Local, 0.3, 0.9);
    for (r, p) in records.iter().zip(&problems) {
        assert_eq!(r.subset, p.subset);
        assert_eq!(r.system_prompt, p.system.is_some());
    }
    let line = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(line["subset"], "everyday");
    assert_eq!(line["system_prompt"], true);
    assert_eq!(line["difficulty"], problems[0].difficulty);
    let s = summary(&records, 0.3);
    let parts: Vec<(&str, usize)> = s
        .by_subset
        .iter()
        .map(|p| (p.subset.as_str(), p.n))
        .collect();
    assert_eq!(parts, [("everyday", 4), ("held-out-phrasing", 2)]);
    // Single-part tasks have no subset rows, in the summary or its table.
    let plain = run(
        &problems[..2]
            .iter()
            .map(|p| Problem {
                subset: String::new(),
                ..p.clone()
            })
            .collect::<Vec<_>>(),
        &Policy::Local,
        0.3,
        0.9,
    );
    let s = summary(&plain, 0.3);
    assert!(s.by_subset.is_empty());
    assert!(!markdown(&s).contains("| subset |"));
}

#[test]
fn the_subset_rows_of_known_lines() {
    // everyday: 3 problems, 2 right locally, 1 wrong from the cloud; held-out: 1 right from the
    // cloud, 1 right after a failed call (local), 1 wrong locally.
    let lines = [
        ("everyday", EvalRoute::Local, true),
        ("everyday", EvalRoute::Local, true),
        ("everyday", EvalRoute::Cloud, false),
        ("held-out-phrasing", EvalRoute::Cloud, true),
        ("held-out-phrasing", EvalRoute::Fallback, true),
        ("held-out-phrasing", EvalRoute::Local, false),
    ];
    let records: Vec<ProblemRecord> = lines
        .iter()
        .enumerate()
        .map(|(index, &(subset, route, correct))| ProblemRecord {
            index,
            id: index as u64,
            difficulty: 1,
            subset: subset.into(),
            system_prompt: false,
            question: String::new(),
            reference: String::new(),
            route,
            over_budget: false,
            local_text: String::new(),
            answer: String::new(),
            correct,
            local_tokens: 1,
            cloud_tokens: 0,
            latency_ms: 1.0,
            first_token_ms: None,
        })
        .collect();
    let s = summary(&records, 1.0);
    let rows: Vec<(&str, usize, f64, f64, f64)> = s
        .by_subset
        .iter()
        .map(|p| {
            (
                p.subset.as_str(),
                p.n,
                p.accuracy,
                p.local_accuracy,
                p.cloud_call_ratio,
            )
        })
        .collect();
    let third = 1.0 / 3.0;
    assert_eq!(
        rows,
        [
            ("everyday", 3, 2.0 * third, 2.0 * third, third),
            ("held-out-phrasing", 3, 2.0 * third, third, 2.0 * third)
        ]
    );
    let table = markdown(&s);
    assert!(
        table.contains("| held-out-phrasing | 3 | 66.7 | 33.3 | 66.7 |"),
        "{table}"
    );
    assert!(table.contains("greedy decoding"), "{table}");
}

/// `eval --sweep` as a user runs it: one evaluation per setting plus the all-local and all-cloud
/// references, written as curve.json in the cost-quality curve's format.
#[test]
fn a_sweep_writes_the_cost_quality_curve() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("selfroute-eval-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(
        &model,
        support::gguf::GgufBuilder::tiny_llama_with_offload(256).bytes(),
    )
    .unwrap();
    let out = dir.join("sweep");
    let status = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(["eval", "--model"])
        .arg(&model)
        .args([
            "--task",
            TASK,
            "--problems",
            "10",
            "--max-new-tokens",
            "2",
            "--route",
            "random",
            "--sweep",
            "0,0.5,1",
            "--budget",
            "1",
            "--cloud",
            "simulated:0.8",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let curve = selfroute_train::curve::Curve::read(&out.join("curve.json")).unwrap();
    let shares: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.setting, p.cloud_share))
        .collect();
    assert_eq!(shares, [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]);
    assert!(curve.points.iter().all(|p| p.method == "random"));
    // All-cloud random routing scores what the cloud-only reference does.
    assert_eq!(curve.points[2].accuracy, curve.cloud_accuracy);
    assert_eq!(curve.points[0].accuracy, curve.local_accuracy);
    let table = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + 2 + 3, "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval --temperature` as a user runs it: the temperature reaches the model (other answers than
/// greedy), the same --seed gives the same answers, and the summary records how it decoded.
#[test]
fn eval_samples_at_the_temperature_asked_for() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("selfroute-eval-temp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(
        &model,
        support::gguf::GgufBuilder::tiny_llama_with_offload(256).bytes(),
    )
    .unwrap();
    let eval = |temperature: &str, out: &str| {
        let out = dir.join(out);
        let run = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
            .args(["eval", "--model"])
            .arg(&model)
            .args([
                "--task",
                TASK,
                "--problems",
                "8",
                "--max-new-tokens",
                "4",
                "--route",
                "local",
                "--seed",
                "4",
                "--temperature",
                temperature,
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        (run.status.success(), stderr, out)
    };
    let answers = |out: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(out.join("problems.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<ProblemRecord>(l).unwrap().local_text)
            .collect()
    };
    let (ok, stderr, hot) = eval("1", "hot");
    assert!(ok, "{stderr}");
    let (ok, stderr, again) = eval("1", "again");
    assert!(ok, "{stderr}");
    let (ok, stderr, greedy) = eval("0", "greedy");
    assert!(ok, "{stderr}");
    assert_eq!(answers(&hot), answers(&again));
    assert_ne!(answers(&hot), answers(&greedy));
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(hot.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary.temperature, summary.seed), (1.0, 4));
    let table = std::fs::read_to_string(hot.join("summary.md")).unwrap();
    assert!(
        table.contains("sampled at temperature 1 (seed 4)"),
        "{table}"
    );
    let (ok, stderr, _) = eval("-1", "cold");
    assert!(!ok && stderr.contains("--temperature"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

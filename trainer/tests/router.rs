//! The prompt router and its fold into the `<|offload|>` row, on the tiny model and a synthetic
//! easy/hard task whose right policy is known: send the hard problems (3-digit x 3-digit) out,
//! keep the easy ones (2-digit + 2-digit). Hard problems are 30% of each set, the budget 30%.

mod support;

use candle_core::DType;
use selfroute_core::{GgufFile, ModelPackage, OFFLOAD_TOKEN};
use selfroute_engine::{BackendChoice, EngineOptions, load_engine};
use selfroute_train::eval::cloud::{EvalCloud, SimulatedCloudClient};
use selfroute_train::eval::{EvalConfig, EvalRoute, Policy, evaluate, greedy_answer_ids};
use selfroute_train::export::{ExportType, gguf_bytes};
use selfroute_train::router::{ProbeSource, fold_router, probe_decisions, train_probe};
use selfroute_train::tasks::{ArithTask, Problem, Split, Task};
use selfroute_train::train::prompt_ids;

const BUDGET: f64 = 0.3;
/// Long enough that a row which also fires later in answers would show it.
const ANSWER_TOKENS: usize = 8;

/// `n` problems, 30% of them hard (level 7), the rest easy (level 2), interleaved.
fn easy_hard(split: Split, n: usize, seed: u64) -> Vec<Problem> {
    let hard_n = (n as f64 * BUDGET).round() as usize;
    let easy = ArithTask::new(2, 2)
        .unwrap()
        .problems(split, n - hard_n, seed)
        .unwrap();
    let hard = ArithTask::new(7, 7)
        .unwrap()
        .problems(split, hard_n, seed)
        .unwrap();
    let mut all: Vec<Problem> = easy.into_iter().chain(hard).collect();
    // A fixed interleaving so hard problems are not all at the end (the cap acts in order).
    all.sort_by_key(|p| p.id);
    all
}

fn is_hard(p: &Problem) -> bool {
    p.difficulty == 7
}

fn agreement(a: &[bool], b: &[bool]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn probe_and_folded_router_send_the_hard_problems_out() {
    let package = support::tiny_with_offload(256);
    let template = package.chat_template.as_ref().expect("template");
    let task = ArithTask::new(1, 7).unwrap();
    let prompts_of = |problems: &[Problem]| -> Vec<Vec<u32>> {
        problems
            .iter()
            .map(|p| prompt_ids(template, &package.tokenizer, &task, p).unwrap())
            .collect()
    };
    let train = easy_hard(Split::Train, 200, 1);
    let test = easy_hard(Split::Test, 60, 2);
    let (train_prompts, test_prompts) = (prompts_of(&train), prompts_of(&test));
    let model = support::trainable(&package, DType::F32);

    // The probe, labelled with the known right policy (the tiny model's own answers are noise).
    let wrong: Vec<bool> = train.iter().map(is_hard).collect();
    let probe = train_probe(
        &model,
        &train_prompts,
        &wrong,
        BUDGET,
        &ProbeSource {
            model_name: "tiny",
            model_sha256: "-",
            task: "easy/hard",
        },
    )
    .unwrap();
    let train_says = probe_decisions(&model, &probe, &train_prompts).unwrap();
    assert_eq!(
        train_says.iter().filter(|&&w| w).count(),
        60,
        "the threshold spends exactly the budget on the training prompts"
    );
    let truth: Vec<bool> = test.iter().map(is_hard).collect();
    let probe_says = probe_decisions(&model, &probe, &test_prompts).unwrap();
    let probe_right = agreement(&probe_says, &truth);
    assert!(
        probe_right >= 0.9,
        "the probe routes {probe_right} of held-out problems right"
    );

    // Folded into the model's own row, exported, and run through the engine and Assistant.
    let offload_id = package.tokenizer.token_to_id(OFFLOAD_TOKEN).unwrap();
    // Along the model's own greedy answers the row must stay below the best token.
    let (engine, _) = pollster::block_on(load_engine(
        &package.config,
        support::tiny_with_offload(256).weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))
    .unwrap();
    let answers = pollster::block_on(greedy_answer_ids(
        engine,
        package.tokenizer.clone(),
        support::tiny_with_offload(256)
            .chat_template
            .expect("template"),
        &task,
        &train,
        ANSWER_TOKENS,
    ))
    .unwrap();
    let report = fold_router(&model, &train_prompts, &answers, offload_id, &probe, 4.0).unwrap();
    assert!(report.agreement >= 0.95, "{report:?}");
    assert!(
        report.later_positions >= 200 && report.later_offload_share < 0.01,
        "{report:?}"
    );
    let source = GgufFile::from_bytes(
        "tiny.gguf",
        support::gguf::GgufBuilder::tiny_llama_with_offload(256).bytes(),
    )
    .unwrap();
    let bytes = gguf_bytes(&model, &source, &[], ExportType::F32).unwrap();
    let folded = ModelPackage::from_gguf("folded.gguf", bytes).unwrap();
    let (engine, _) = pollster::block_on(load_engine(
        &folded.config,
        folded.weights,
        &EngineOptions {
            choice: BackendChoice::Cpu,
            ..EngineOptions::default()
        },
    ))
    .unwrap();
    let cloud = EvalCloud::Simulated(Box::new(
        SimulatedCloudClient::new(1.0, 0, Box::new(task.clone()), &test).unwrap(),
    ));
    let mut config = EvalConfig {
        // No cap: the model's own decisions, unclipped, are compared with the probe's.
        budget: 1.0,
        ..EvalConfig::default()
    };
    config.generation.max_new_tokens = ANSWER_TOKENS;
    let records = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(evaluate(
            engine,
            folded.tokenizer,
            folded.chat_template.expect("template"),
            Some(cloud),
            &task,
            &test,
            &Policy::Token { offload_bias: 0.0 },
            &config,
            |_| {},
        ))
        .unwrap();
    let model_says: Vec<bool> = records
        .iter()
        .map(|r| r.route == EvalRoute::Cloud)
        .collect();
    // Offloads happen at the first answer token: nothing local was generated before the signal.
    let late = records
        .iter()
        .filter(|r| r.route == EvalRoute::Cloud && r.local_tokens > 1)
        .count();
    assert_eq!(late, 0, "offloads after the first answer token");
    let folded_vs_probe = agreement(&model_says, &probe_says);
    let folded_right = agreement(&model_says, &truth);
    assert!(
        folded_vs_probe >= 0.9 && folded_right >= 0.85,
        "folded model agrees with the probe on {folded_vs_probe}, with the right policy on \
         {folded_right} of held-out problems"
    );
    eprintln!(
        "probe right on {probe_right}, fold report {report:?}, folded vs probe {folded_vs_probe}, \
         folded right {folded_right}"
    );
    let share = model_says.iter().filter(|&&c| c).count() as f64 / model_says.len() as f64;
    assert!(
        (share - BUDGET).abs() <= 0.1,
        "the folded model offloads {share} of held-out problems"
    );
}

/// As a user runs them: `router` on a base model, `prepare --router` folds it in, `eval` reads
/// both back and writes its three files.
#[test]
fn router_prepare_and_eval_from_the_command_line() {
    use candle_core::quantized::gguf_file::Value;
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("selfroute-router-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("tiny.gguf");
    let mut builder = support::gguf::GgufBuilder::tiny_llama();
    builder.set_meta("llama.context_length", Value::U32(256));
    std::fs::write(&base, builder.bytes()).unwrap();
    let run = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
            .args(args)
            .output()
            .expect("selfroute-train runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}\n{stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = |path: &std::path::Path| path.to_str().expect("utf-8 path").to_string();
    let router = dir.join("out").join("router.json");
    let routed = dir.join("routed.gguf");
    let out = run(&[
        "router",
        "--model",
        &p(&base),
        "--task",
        "arith:1-2",
        "--problems",
        "16",
        "--max-new-tokens",
        "2",
        "--out",
        &p(&router),
    ]);
    assert!(out.contains("probe on 16 prompts"), "{out}");
    let probe: selfroute_train::router::ProbeRouter =
        serde_json::from_str(&std::fs::read_to_string(&router).unwrap()).unwrap();
    assert_eq!((probe.hidden_size, probe.weights.len()), (64, 64));
    assert_eq!(
        probe.model_sha256,
        selfroute_train::router::sha256_hex(&std::fs::read(&base).unwrap())
    );
    let out = run(&[
        "prepare",
        "--model",
        &p(&base),
        "--out",
        &p(&routed),
        "--task",
        "arith:1-2",
        "--prompts",
        "16",
        "--router",
        &p(&router),
    ]);
    assert!(out.contains("folded the probe"), "{out}");
    for (route, extra) in [("token", None), ("probe", Some(&router))] {
        let eval_dir = dir.join(format!("eval-{route}"));
        let model = if route == "token" { &routed } else { &base };
        let mut args = vec![
            "eval".to_string(),
            "--model".into(),
            p(model),
            "--task".into(),
            "arith:1-2".into(),
            "--problems".into(),
            "6".into(),
            "--max-new-tokens".into(),
            "2".into(),
            "--route".into(),
            route.into(),
            "--out".into(),
            p(&eval_dir),
        ];
        if let Some(r) = extra {
            args.extend(["--router".to_string(), p(r)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let table = run(&args);
        assert!(table.contains("| method |"), "{table}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(eval_dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["n"], 6);
        assert!(
            summary["cloud_calls"].as_u64().unwrap() <= 1,
            "floor(0.3 * 6) = 1"
        );
        let lines = std::fs::read_to_string(eval_dir.join("problems.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 6);
        assert!(
            std::fs::read_to_string(eval_dir.join("summary.md"))
                .unwrap()
                .contains("| 6 |")
        );
    }
    // A router fitted on another model is refused.
    let other = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args([
            "eval",
            "--model",
            &p(&routed),
            "--task",
            "arith:1-2",
            "--problems",
            "2",
            "--route",
            "probe",
            "--router",
            &p(&router),
            "--out",
            &p(&dir.join("x")),
        ])
        .output()
        .unwrap();
    assert!(!other.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

//! `selfroute-train` as a user runs it: prepare -> train -> resume -> export on a tiny model.

mod support;

use support::gguf;

use std::path::Path;
use std::process::Command;

use candle_core::quantized::gguf_file::Value;
use selfroute_core::{ModelPackage, OFFLOAD_TOKEN};

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(args)
        .output()
        .expect("selfroute-train runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}\n{stderr}");
    (stdout, stderr)
}

/// The `step` of every line of a metrics.jsonl.
fn logged_steps(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn prepare_train_resume_export() {
    let dir = std::env::temp_dir().join(format!("selfroute-train-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("tiny.gguf");
    let mut builder = gguf::GgufBuilder::tiny_llama();
    builder.set_meta("llama.context_length", Value::U32(128));
    std::fs::write(&base, builder.bytes()).unwrap();
    // Outputs in folders that do not exist yet, as in the README (`--out runs/...`).
    let prepared = dir.join("runs").join("prepared.gguf");
    let run_dir = dir.join("run");
    let trained = dir.join("exports").join("q8").join("trained.gguf");

    for sub in ["prepare", "train", "export"] {
        let (help, _) = run(&[sub, "--help"]);
        assert!(help.contains("--model"), "{sub} --help");
    }

    let (out, _) = run(&[
        "prepare",
        "--model",
        path(&base),
        "--out",
        path(&prepared),
        "--task",
        "arith:1",
        "--prompts",
        "4",
        "--target-rate",
        "0.2",
        "--sample-tokens",
        "4",
    ]);
    assert!(
        out.contains("0.2000") && out.contains("initial offload rate"),
        "{out}"
    );
    let package = ModelPackage::from_gguf("prepared", std::fs::read(&prepared).unwrap()).unwrap();
    assert!(package.tokenizer.token_to_id(OFFLOAD_TOKEN).is_some());

    let train = |steps: &str, resume: bool| {
        let mut args = vec![
            "train",
            "--model",
            path(&prepared),
            "--task",
            "arith:1",
            "--steps",
            steps,
            "--prompts-per-step",
            "2",
            "--group",
            "2",
            "--max-new-tokens",
            "4",
            "--lr",
            "1e-3",
            "--out",
            path(&run_dir),
        ];
        if resume {
            args.push("--resume");
        }
        run(&args)
    };
    train("2", false);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(
        metrics.lines().all(|l| l.contains("simulated cloud")),
        "{metrics}"
    );
    let (_, err) = train("3", true);
    assert!(err.contains("resumed at step 2"), "{err}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let steps = logged_steps(&metrics);
    assert_eq!(steps, vec![0, 1, 2]);

    // A run stopped after logging steps it had not checkpointed yet: resuming takes them again
    // and their old lines go, so every step appears once.
    let lines: Vec<&str> = metrics.lines().collect();
    let stale = [3, 4].map(|step| lines[2].replace("\"step\":2", &format!("\"step\":{step}")));
    std::fs::write(
        run_dir.join("metrics.jsonl"),
        format!("{metrics}{}\n{}\n", stale[0], stale[1]),
    )
    .unwrap();
    let (_, err) = train("4", true);
    assert!(err.contains("dropped 2 line(s)"), "{err}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let steps = logged_steps(&metrics);
    assert_eq!(steps, vec![0, 1, 2, 3]);

    run(&[
        "export",
        "--model",
        path(&prepared),
        "--checkpoint",
        path(&run_dir.join("checkpoint.safetensors")),
        "--out",
        path(&trained),
        "--type",
        "q8_0",
        "--hf",
        path(&dir.join("hf")),
    ]);
    let exported = ModelPackage::from_gguf("trained", std::fs::read(&trained).unwrap()).unwrap();
    assert_eq!(
        exported.tokenizer.token_to_id(OFFLOAD_TOKEN),
        package.tokenizer.token_to_id(OFFLOAD_TOKEN)
    );
    assert!(dir.join("hf/model.safetensors").exists() && dir.join("hf/tokenizer.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unwritable_output_is_refused_before_any_work() {
    let dir = std::env::temp_dir().join(format!("selfroute-train-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("tiny.gguf");
    std::fs::write(&base, gguf::GgufBuilder::tiny_llama().bytes()).unwrap();
    // A regular file where a folder should be: no folder can be created under it.
    let blocker = dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("prepared.gguf");
    let started = std::time::Instant::now();
    let result = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args([
            "prepare",
            "--model",
            path(&base),
            "--out",
            path(&out),
            "--prompts",
            "64",
        ])
        .output()
        .expect("selfroute-train runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write") && stderr.contains("prepared.gguf"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("adding"),
        "work started before the output was checked: {stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).ok();
}

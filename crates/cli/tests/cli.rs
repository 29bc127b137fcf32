//! The `selfroute` binary as a user runs it, on the real SmolLM2 file.

mod support;

use support::{model, selfroute};

#[test]
fn generate_continues_the_capital_of_france_with_paris() {
    let out = selfroute()
        .args([
            "generate",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--json",
            "--threads",
            "2",
        ])
        .arg("--model")
        .arg(model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let text = json["text"].as_str().unwrap();
    assert!(text.starts_with(" Paris"), "continuation was {text:?}");
    assert_eq!(json["prompt_tokens"], 5);
    assert_eq!(json["completion_tokens"], 8);
    assert_eq!(json["finish_reason"], "length");
}

#[test]
fn generate_streams_plain_text_and_applies_the_chat_template() {
    let out = selfroute()
        .args([
            "generate",
            "--chat",
            "--prompt",
            "What is 7 + 5? Answer with just the number.",
            "--max-tokens",
            "8",
        ])
        .arg("--model")
        .arg(model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // llama.cpp's greedy answer on this file is "7 + 5 = 12" too.
    assert!(text.starts_with("7 + 5 = 12"), "answer was {text:?}");
    // Special tokens never leak into the printed answer.
    assert!(!text.contains("<|im_"), "{text:?}");
}

#[test]
fn chat_answers_each_line_and_keeps_the_conversation() {
    use std::io::Write;
    let mut child = selfroute()
        .args(["chat", "--max-tokens", "16"])
        .arg("--model")
        .arg(model())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nAnd of Germany?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let answers: Vec<&str> = stdout
        .split("> ")
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    // The second turn extends the first, so its prompt is mostly served from the KV cache.
    let reused: Vec<usize> = stderr
        .lines()
        .filter_map(|l| {
            l.split(" · ")
                .find_map(|p| p.strip_suffix(" prompt tokens reused]"))
        })
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(reused.len(), 2, "{stderr}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 30, "{stderr}");
}

#[test]
fn a_missing_or_corrupt_model_is_a_clear_error() {
    let out = selfroute()
        .args([
            "generate",
            "--prompt",
            "hi",
            "--model",
            "/nonexistent/model.gguf",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no model at /nonexistent/model.gguf"), "{err}");

    let dir = std::env::temp_dir().join(format!("selfroute-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("truncated.gguf");
    let bytes = std::fs::read(model()).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out = selfroute()
        .args(["generate", "--prompt", "hi", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_hugging_face_folder_loads_and_generates() {
    let data =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/data");
    let dir = std::env::temp_dir().join(format!("selfroute-cli-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(data.join("tiny_llama_f16").join(name), dir.join(name)).unwrap();
    }
    let run = |dir: &std::path::Path| {
        selfroute()
            .args([
                "generate",
                "--prompt",
                "the cat",
                "--max-tokens",
                "3",
                "--json",
                "--model",
            ])
            .arg(dir)
            .output()
            .unwrap()
    };
    // Without a tokenizer the folder is refused with a reason.
    let out = run(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no tokenizer.json"), "{err}");

    // The tiny GGUF's 256-token tokenizer fits this model's 256-row embedding.
    let gguf = selfroute_core::GgufFile::from_bytes(
        "tiny_llama.gguf",
        std::fs::read(data.join("tiny_llama.gguf")).unwrap(),
    )
    .unwrap();
    let json = selfroute_core::Tokenizer::from_gguf(&gguf)
        .unwrap()
        .to_json()
        .unwrap();
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let out = run(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["completion_tokens"], 3);
    std::fs::remove_dir_all(&dir).ok();
}

/// `--device gpu` runs the WGSL engine (lavapipe in CI) with its sampler on the GPU; with the same
/// seed it must give the CPU engine's tokens, sampled as well as greedy.
#[test]
fn generate_on_the_gpu_gives_the_cpu_engines_tokens() {
    let run = |device: &str, sampling: &[&str]| {
        let out = selfroute()
            .args([
                "generate",
                "--chat",
                "--prompt",
                "Name three colours.",
                "--max-tokens",
                "16",
                "--json",
                "--device",
                device,
            ])
            .args(sampling)
            .arg("--model")
            .arg(model())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), out.stdout, stderr)
    };
    let greedy: &[&str] = &[];
    let sampled: &[&str] = &[
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--seed",
        "7",
    ];
    for sampling in [greedy, sampled] {
        let (ok, stdout, stderr) = run("gpu", sampling);
        if !ok
            && stderr.contains("no GPU adapter")
            && std::env::var_os("SELFROUTE_REQUIRE_GPU").is_none()
        {
            eprintln!("skipping: {stderr}");
            return;
        }
        assert!(ok, "{stderr}");
        let gpu: serde_json::Value = serde_json::from_slice(&stdout).expect("one JSON object");
        assert!(gpu["engine"].as_str().unwrap().starts_with("GPU"), "{gpu}");
        let (ok, stdout, stderr) = run("cpu", sampling);
        assert!(ok, "{stderr}");
        let cpu: serde_json::Value = serde_json::from_slice(&stdout).expect("one JSON object");
        assert_eq!(gpu["token_ids"], cpu["token_ids"], "sampling {sampling:?}");
        assert_eq!(gpu["completion_tokens"], 16);
    }
}

/// No adapter (here: only DX12 allowed on Linux) is a clear error that points at the CPU engine.
#[test]
fn no_gpu_adapter_is_a_clear_error() {
    let out = selfroute()
        .args(["generate", "--prompt", "Hi", "--device", "gpu"])
        .arg("--model")
        .arg(model())
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no GPU adapter"), "{stderr}");
    assert!(stderr.contains("--device cpu"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

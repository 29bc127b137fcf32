//! `cargo xtask bench web`: selfroute's browser engine beside wllama (llama.cpp in wasm) in one
//! headless Chromium run, same GGUF, same raw-text prompt: the CPU path on one thread, our WebGPU
//! path, page load to ready (cold and cached) and download sizes. The browser side is
//! `bench/web/bench.mjs`; it writes `target/bench-web.json` and this prints the table from it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fetch_model::fetch_default_model;
use crate::setup::{self, step};
use crate::web::{self, WasmBuild};
use crate::{browser_tests, node};

const REPEATS: u32 = 5;
const SUMMARY: &str = "target/bench-web.json";
/// The continuations should agree at least this far (characters); see `print_table`.
const FIRST_WORDS: u64 = 20;

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let repeats = match args {
        [] => REPEATS,
        ["--repeats", n] => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--repeats takes a positive number, got {n:?}"))?,
        other => bail!("`bench web` takes only --repeats N, got {other:?}"),
    };
    node::ensure_node()?;
    let chromium = browser_tests::ensure_chromium()?;
    let model = fetch_default_model(root)?;
    // The size build is what the demo ships, so it is the one to measure (load time and sizes).
    let site = web::build_engine_files(root, WasmBuild::Size)?;
    node::install_harness(root)?;
    node::install_bench_web(root)?;

    let summary = root.join(SUMMARY);
    // A failed run must not leave an old summary to be read as this one's.
    let _ = std::fs::remove_file(&summary);
    step(&format!(
        "measuring in headless Chromium: load cold and cached, CPU on one thread (median of {repeats}) beside wllama, our WebGPU path, sizes"
    ));
    setup::timed("bench web", || {
        setup::run(
            Command::new("node")
                .arg(root.join("bench/web/bench.mjs"))
                .env("SELFROUTE_CHROMIUM", &chromium)
                .env("SELFROUTE_SITE_DIR", &site)
                .env("SELFROUTE_MODEL", &model)
                .env("SELFROUTE_BENCH_REPEATS", repeats.to_string())
                .env("SELFROUTE_BENCH_OUT", &summary)
                .current_dir(root),
        )
        .context("the browser bench failed")
    })?;
    let text = std::fs::read_to_string(&summary)
        .with_context(|| format!("reading {}", summary.display()))?;
    let v: Value = serde_json::from_str(&text).context("parsing the bench summary")?;
    print_table(&v)?;
    println!("JSON summary: {SUMMARY}");
    Ok(())
}

fn num(v: &Value, pointer: &str) -> Result<f64> {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number at {pointer} in the bench summary"))
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("?")
}

/// One row: our figure, wllama's (if it has one) and how many times better ours is.
struct Row {
    label: &'static str,
    ours: f64,
    theirs: Option<f64>,
    higher_is_better: bool,
    decimals: usize,
}

impl Row {
    fn print(&self) {
        let d = self.decimals;
        let (theirs, ratio) = match self.theirs {
            Some(t) => {
                // "Times better": for times and sizes, theirs over ours.
                let r = if self.higher_is_better {
                    self.ours / t
                } else {
                    t / self.ours
                };
                (format!("{t:.d$}"), format!("{r:.2}x"))
            }
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {:<32} | {:>9.d$} | {theirs:>9} | {ratio:>6} |",
            self.label, self.ours
        );
    }
}

fn print_table(v: &Value) -> Result<()> {
    let speed = |label, key: &str| -> Result<Row> {
        Ok(Row {
            label,
            ours: num(v, &format!("/cpu/selfroute/{key}"))?,
            theirs: Some(num(v, &format!("/cpu/wllama/{key}"))?),
            higher_is_better: key.ends_with("TokS"),
            decimals: if key.ends_with("TokS") { 1 } else { 0 },
        })
    };
    let load = |label, key: &str| -> Result<Row> {
        Ok(Row {
            label,
            ours: num(v, &format!("/load/selfroute/{key}"))?,
            theirs: Some(num(v, &format!("/load/wllama/{key}"))?),
            higher_is_better: false,
            decimals: 0,
        })
    };
    // Sizes in kB (1000 bytes); wllama inlines its workers in its module, so it has no worker row.
    let size = |label, part: &str, kind: &str| -> Result<Row> {
        let theirs = match v.pointer(&format!("/sizes/wllama/{part}")) {
            Some(Value::Null) => None,
            _ => Some(num(v, &format!("/sizes/wllama/{part}/{kind}"))? / 1e3),
        };
        Ok(Row {
            label,
            ours: num(v, &format!("/sizes/selfroute/{part}/{kind}"))? / 1e3,
            theirs,
            higher_is_better: false,
            decimals: 0,
        })
    };
    let total = |who: &str, kind: &str| -> f64 {
        ["wasm", "js", "worker"]
            .iter()
            .filter_map(|part| {
                v.pointer(&format!("/sizes/{who}/{part}/{kind}"))
                    .and_then(Value::as_f64)
            })
            .sum::<f64>()
            / 1e3
    };
    let rows = [
        speed("CPU prefill (tok/s)", "prefillTokS")?,
        speed("CPU decode (tok/s)", "decodeTokS")?,
        speed("CPU first token (ms)", "firstTokenMs")?,
        load("page load to ready, cold (ms)", "coldMs")?,
        load("page load to ready, cached (ms)", "cachedMs")?,
        size("wasm (kB)", "wasm", "raw")?,
        size("wasm, gzip (kB)", "wasm", "gzip")?,
        size("JS: page + wasm glue (kB)", "js", "raw")?,
        size("JS: page + wasm glue, gzip (kB)", "js", "gzip")?,
        size("worker (kB)", "worker", "raw")?,
        size("worker, gzip (kB)", "worker", "gzip")?,
        Row {
            label: "all code, gzip (kB)",
            ours: total("selfroute", "gzip"),
            theirs: Some(total("wllama", "gzip")),
            higher_is_better: false,
            decimals: 0,
        },
    ];

    let env = |key: &str| text(v, &format!("/environment/{key}"));
    let chromium = env("chromium")
        .split_whitespace()
        .find(|w| w.starts_with("HeadlessChrome/") || w.starts_with("Chrome/"))
        .unwrap_or("Chromium");
    println!(
        "\nselfroute {} vs wllama {} in {chromium}: {}, one run",
        env("selfroute"),
        env("wllama"),
        env("model"),
    );
    println!(
        "CPU: one thread each (wllama n_threads 1, n_gpu_layers 0; no COOP/COEP), the same raw-text prompt of {} tokens (wllama counts {}), {} greedy tokens, median of {}",
        num(v, "/tokenization/selfroutePromptTokens")?,
        num(v, "/tokenization/wllamaPromptTokens")?,
        num(v, "/environment/decodeTokens")?,
        num(v, "/environment/repeats")?,
    );
    println!("| figure                           | selfroute |    wllama |  ratio |");
    println!("|----------------------------------|-----------|-----------|--------|");
    for row in &rows {
        row.print();
    }
    println!("ratio: how many times better selfroute is (for times and sizes, wllama's over ours)");
    println!("wllama's workers are inlined in its JS module: it has no worker figure");

    let mut warnings = Vec::new();
    match v
        .pointer("/tokenization/continuationsDifferAt")
        .and_then(Value::as_u64)
    {
        None => println!("continuations: identical"),
        Some(at) => {
            println!(
                "continuations: identical for the first {at} characters, then apart (llama.cpp rounds activations to 8 bits, we keep f32: ARCHITECTURE.md)"
            );
            // Rounding moves a greedy answer after a while, not from its first words: parting
            // at once means one engine computes something else, and its speed means nothing.
            if at < FIRST_WORDS {
                warnings.push(format!(
                    "the continuations part within {FIRST_WORDS} characters: one engine's output is wrong (both are in {SUMMARY})"
                ));
            }
        }
    }
    let same_gpu_tokens = v.pointer("/webgpu/sameTokensAsCpu") == Some(&Value::Bool(true));
    println!(
        "\nWebGPU (selfroute only) on \"{}\": {} tokens of prompt, {} generated: prefill {:.2} tok/s, decode {:.2} tok/s, first token {:.0} ms, load {:.0} ms, same tokens as our CPU path: {}",
        text(v, "/webgpu/adapter"),
        num(v, "/webgpu/promptTokens")?,
        num(v, "/webgpu/generatedTokens")?,
        num(v, "/webgpu/prefillTokS")?,
        num(v, "/webgpu/decodeTokS")?,
        num(v, "/webgpu/firstTokenMs")?,
        num(v, "/webgpu/loadMs")?,
        if same_gpu_tokens { "yes" } else { "NO" },
    );
    if !same_gpu_tokens {
        warnings
            .push("our WebGPU path gave other tokens than our CPU path for the same prompt".into());
    }
    if text(v, "/webgpu/adapter")
        .to_lowercase()
        .contains("swiftshader")
    {
        println!(
            "  SwiftShader is Chromium's software adapter (WebGPU on the CPU): this shows the path works in a browser, not GPU speed"
        );
    }
    let load: Vec<String> = v
        .pointer("/environment/loadAverage")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|l| format!("{l:.1}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "\nOne run on this machine ({} CPUs, load average {} at the end): absolute figures move with other work; compare the ratios",
        num(v, "/environment/cpus")?,
        load.join(" "),
    );
    if let Some(problems) = v.pointer("/pageProblems").and_then(Value::as_array) {
        for p in problems {
            warnings.push(format!("a page reported: {}", p.as_str().unwrap_or("?")));
        }
    }
    for w in &warnings {
        println!("WARNING: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// The summary's shape as bench/web/bench.mjs writes it (figures from a run on this machine):
    /// the table reads every figure it prints from it.
    #[test]
    fn prints_a_summary() {
        let files = |raw: u64, gzip: u64| json!({"files": ["f"], "raw": raw, "gzip": gzip});
        let cpu = |prefill: f64, decode: f64, first: f64| {
            json!({"prefillTokS": prefill, "decodeTokS": decode, "firstTokenMs": first,
                   "promptTokens": 126, "generatedTokens": 64, "runs": []})
        };
        let summary = json!({
            "environment": {
                "chromium": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0.0.0 Safari/537.36",
                "selfroute": "0.1.0", "wllama": "3.13.0", "model": "m.gguf", "cpus": 2,
                "loadAverage": [5.9, 5.3, 3.9], "repeats": 5, "decodeTokens": 64,
            },
            "tokenization": {"selfroutePromptTokens": 126, "wllamaPromptTokens": 126,
                             "continuationsDifferAt": 71},
            "cpu": {"selfroute": cpu(107.8, 9.8, 1169.0), "wllama": cpu(19.0, 12.7, 6712.0)},
            "webgpu": {"adapter": "google swiftshader (software fallback)", "loadMs": 12416.0,
                       "prefillTokS": 1.2, "decodeTokS": 0.65, "firstTokenMs": 19857.0,
                       "promptTokens": 22, "generatedTokens": 8, "sameTokensAsCpu": true},
            "load": {"selfroute": {"coldMs": 2123.5, "cachedMs": 663.9},
                     "wllama": {"coldMs": 2827.1, "cachedMs": 2192.4}},
            "sizes": {
                "selfroute": {"wasm": files(3459458, 1249156), "js": files(116267, 28303),
                              "worker": files(20646, 6224)},
                "wllama": {"wasm": files(10244628, 2876784), "js": files(275466, 66342),
                           "worker": null},
            },
            "pageProblems": [],
        });
        super::print_table(&summary).unwrap();
    }
}

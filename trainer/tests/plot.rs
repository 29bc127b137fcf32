//! `selfroute-train plot` and the charts behind it: both figures written as SVG and PNG, every
//! series drawn and named, titles and axes labelled, bad inputs named. Needs `--features plot`:
//! `cargo test -p selfroute-train --features plot --test plot` (CI runs it).
#![cfg(feature = "plot")]

use std::path::{Path, PathBuf};
use std::process::Command;

use selfroute_train::curve::{Curve, CurvePoint};
use selfroute_train::plot::{
    CURVE_SIZE, PlotError, Plotter, SERIES_COLORS, TRAINING_SIZE, read_run, run_labels,
};
use serde_json::json;

/// A fresh folder per test (tests run in parallel threads of one process).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfroute-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `metrics.jsonl` line as `train` writes it (StepMetrics' field names; a few fields the
/// charts do not read are included to show they are ignored). Runs differ by `run`, so no
/// run's line hides behind another's.
fn metrics_line(run: usize, step: usize) -> String {
    let (r, s) = (run as f64, step as f64);
    json!({
        "step": step,
        "reward_mean": 0.2 + 0.05 * s + 0.1 * r,
        "reward_std": 0.3,
        "local_accuracy": 0.1 + 0.04 * s + 0.1 * r,
        "offload_rate": 0.5 - 0.03 * s - 0.1 * r,
        "cloud_correct_rate": 0.9,
        "d1": 4 + step + 3 * run,
        "d2": 2 + run,
        "dropped": 1,
        "grad_norm": 1.5,
        "response_tokens_mean": 100.0 - 2.0 * s + 20.0 * r,
        "cloud": "simulated cloud (oracle)",
    })
    .to_string()
}

fn write_run(root: &Path, name: &str, run: usize, steps: usize) -> PathBuf {
    let dir = root.join("runs").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.jsonl");
    let text: String = (0..steps).map(|s| metrics_line(run, s) + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn curve() -> Curve {
    let p = |method: &str, cloud_share: f64, accuracy: f64| CurvePoint {
        method: method.to_string(),
        setting: 0.0,
        cloud_share,
        accuracy,
    };
    Curve {
        // Listed out of order on purpose: the chart sorts by share.
        points: vec![
            p("selfroute", 0.3, 0.7),
            p("selfroute", 0.0, 0.5),
            p("selfroute", 0.1, 0.6),
            p("router", 0.5, 0.6),
            p("router", 0.2, 0.48),
            p("router", 0.8, 0.72),
            p("router", 0.0, 0.4),
        ],
        local_accuracy: 0.4,
        cloud_accuracy: 0.8,
    }
}

/// The texts of the SVG's `<text>` elements (plotters writes each on a line of its own).
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim())
        })
        .collect()
}

#[track_caller]
fn assert_text(svg: &str, text: &str) {
    let all = texts(svg);
    assert!(all.contains(&text), "no text {text:?} in the SVG: {all:?}");
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02X}{g:02X}{b:02X}")
}

/// The `<polyline>`s of one colour with exactly `points` vertices: a data series (a legend
/// sample has two vertices; axes and grid are other colours).
fn polylines(svg: &str, color: (u8, u8, u8), points: usize) -> usize {
    let stroke = format!("stroke=\"{}\"", hex(color));
    svg.split("<polyline")
        .skip(1)
        .map(|tag| &tag[..tag.find("/>").unwrap_or(tag.len())])
        .filter(|tag| tag.contains(&stroke))
        .filter(|tag| {
            tag.split("points=\"")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .is_some_and(|p| p.split_whitespace().count() == points)
        })
        .count()
}

/// Decodes a PNG and returns its size and RGB pixels.
fn decode_png(path: &Path) -> ((u32, u32), Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    ((info.width, info.height), buf)
}

fn pixels_of(rgb: &[u8], color: (u8, u8, u8)) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| (p[0], p[1], p[2]) == color)
        .count()
}

/// Near-black pixels: text (titles, labels) was rasterised.
fn dark_pixels(rgb: &[u8]) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| p[0] < 60 && p[1] < 60 && p[2] < 60)
        .count()
}

#[test]
fn the_training_figure_draws_every_run_in_every_panel() {
    let dir = temp_dir("training");
    let paths = vec![
        write_run(&dir, "alpha", 0, 5),
        write_run(&dir, "beta", 1, 7),
    ];
    let labels = run_labels(&paths);
    assert_eq!(labels, ["alpha", "beta"]);
    let runs: Vec<_> = paths
        .iter()
        .zip(labels)
        .map(|(p, l)| read_run(p, l).unwrap())
        .collect();
    let plotter = Plotter::new(None).unwrap();
    let out = dir.join("plots");
    std::fs::create_dir_all(&out).unwrap();
    let written = plotter.training(&runs, &out).unwrap();
    assert_eq!(
        written,
        [out.join("training.svg"), out.join("training.png")]
    );

    let svg = std::fs::read_to_string(&written[0]).unwrap();
    for text in [
        "selfroute-train: training curves (2 runs, 12 steps in all)",
        "Reward (mean over responses)",
        "Local accuracy",
        "Offload rate",
        "|D1|: prompts with a correct local answer",
        "|D2|: prompts only the cloud solved",
        "Response length (local part)",
        "training step",
        "correct local answers (% of responses)",
        "offloaded (% of responses)",
        "prompts per step",
        "tokens per response (mean)",
        "alpha (5 steps)",
        "beta (7 steps)",
    ] {
        assert_text(&svg, text);
    }
    // One line per run in each of the six panels, each through all of the run's steps.
    assert_eq!(polylines(&svg, SERIES_COLORS[0], 5), 6);
    assert_eq!(polylines(&svg, SERIES_COLORS[1], 7), 6);

    let (size, rgb) = decode_png(&written[1]);
    assert_eq!(size, TRAINING_SIZE);
    for color in &SERIES_COLORS[..2] {
        assert!(
            pixels_of(&rgb, *color) > 500,
            "run colour {color:?} barely in the PNG"
        );
    }
    assert!(dark_pixels(&rgb) > 2000, "no text in the PNG");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cost_quality_figure_draws_every_method_and_both_references() {
    let dir = temp_dir("curve");
    let plotter = Plotter::new(None).unwrap();
    let c = curve();
    let written = plotter.cost_quality(&c, &dir).unwrap();
    assert_eq!(
        written,
        [dir.join("cost_quality.svg"), dir.join("cost_quality.png")]
    );

    let svg = std::fs::read_to_string(&written[0]).unwrap();
    for text in [
        "Cost-quality: accuracy against cloud calls",
        "cloud calls (% of queries)",
        "accuracy (% of queries correct)",
        // tests/curve.rs works this curve out by hand: APGR 0.775, CPT 10% and 44%.
        "selfroute: APGR 0.775, CPT(50%) 10%, CPT(80%) 44%",
        "router: APGR 0.500, CPT(50%) 50%, CPT(80%) 80%",
        "cloud only: 80.0%",
        "all local: 40.0%",
    ] {
        assert_text(&svg, text);
    }
    // Each method one line through its measured points.
    assert_eq!(polylines(&svg, SERIES_COLORS[0], 3), 1);
    assert_eq!(polylines(&svg, SERIES_COLORS[1], 4), 1);

    let (size, rgb) = decode_png(&written[1]);
    assert_eq!(size, CURVE_SIZE);
    for color in &SERIES_COLORS[..2] {
        assert!(
            pixels_of(&rgb, *color) > 200,
            "method colour {color:?} barely in the PNG"
        );
    }
    assert!(dark_pixels(&rgb) > 1000, "no text in the PNG");

    // No gap to recover: the chart is still drawn, its legend without the numbers.
    let mut flat = curve();
    flat.cloud_accuracy = flat.local_accuracy;
    plotter.cost_quality(&flat, &dir).unwrap();
    let svg = std::fs::read_to_string(&written[0]).unwrap();
    assert_text(&svg, "selfroute");
    assert!(!texts(&svg).iter().any(|t| t.starts_with("selfroute:")));

    // An invalid curve is refused before anything is drawn.
    let mut bad = curve();
    bad.points[2].cloud_share = 1.5;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let e = plotter.cost_quality(&bad, &dir).unwrap_err().to_string();
    assert!(e.contains("cloud_share is 1.5"), "{e}");
    assert!(!dir.join("cost_quality.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_metrics_line_is_named() {
    let dir = temp_dir("bad-line");
    let path = dir.join("metrics.jsonl");
    let text = format!(
        "{}\n{}\n{{\"step\": 2, \"reward_mean\": \"high\"}}\n{}\n",
        metrics_line(0, 0),
        metrics_line(0, 1),
        metrics_line(0, 3)
    );
    std::fs::write(&path, text).unwrap();
    let e = read_run(&path, "x").unwrap_err();
    assert!(matches!(e, PlotError::MetricsLine { line: 3, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("metrics.jsonl:3: not a metrics line"), "{e}");
    assert!(e.contains("reward_mean"), "{e}");

    // The same bad line last, but finished with a newline: still an error.
    let text = format!("{}\n{{\"step\": 1}}\n", metrics_line(0, 0));
    std::fs::write(&path, text).unwrap();
    let e = read_run(&path, "x").unwrap_err().to_string();
    assert!(
        e.contains("metrics.jsonl:2:") && e.contains("missing field"),
        "{e}"
    );

    // A last line still being written (no newline yet) is skipped with a warning.
    let partial = &metrics_line(0, 2)[..30];
    let text = format!("{}\n{}\n{partial}", metrics_line(0, 0), metrics_line(0, 1));
    std::fs::write(&path, text).unwrap();
    let run = read_run(&path, "x").unwrap();
    assert_eq!(run.steps(), 2);
    assert_eq!(run.warnings.len(), 1);
    assert!(run.warnings[0].contains("metrics.jsonl:3: skipped an unfinished last line"));

    // No steps at all.
    std::fs::write(&path, "\n").unwrap();
    let e = read_run(&path, "x").unwrap_err().to_string();
    assert!(e.contains("has no steps"), "{e}");
    let e = read_run(&dir.join("missing.jsonl"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jsonl"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_in_folders_of_one_name_keep_apart() {
    let paths = [
        PathBuf::from("runs/a/seed1/metrics.jsonl"),
        PathBuf::from("runs/b/seed1/metrics.jsonl"),
        PathBuf::from("runs/gapg/metrics.jsonl"),
    ];
    assert_eq!(run_labels(&paths), ["runs/a/seed1", "runs/b/seed1", "gapg"]);
}

#[test]
fn a_missing_or_broken_font_is_a_clear_error() {
    let dir = temp_dir("font");
    let missing = dir.join("nope.ttf");
    let e = Plotter::new(Some(&missing)).err().unwrap().to_string();
    assert!(
        e.contains("reading the font") && e.contains("nope.ttf"),
        "{e}"
    );
    let broken = dir.join("broken.ttf");
    std::fs::write(&broken, b"not a font").unwrap();
    let e = Plotter::new(Some(&broken)).err().unwrap().to_string();
    assert!(
        e.contains("broken.ttf is not a TrueType or OpenType font"),
        "{e}"
    );
    // What a machine without any of the usual fonts is told.
    let e = PlotError::NoFont(vec!["/usr/share/fonts/x.ttf".into()]).to_string();
    assert!(
        e.contains("apt-get install fonts-dejavu-core") && e.contains("--font"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_plot_command_writes_both_figures_and_the_metrics_table() {
    let dir = temp_dir("cli");
    let a = write_run(&dir, "gapg", 0, 4);
    let b = write_run(&dir, "no-filter", 1, 3);
    let curve_path = dir.join("curve.json");
    curve().write(&curve_path).unwrap();
    let out = dir.join("plots/nested");
    let output = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .arg("plot")
        .arg("--metrics")
        .arg(&a)
        .arg("--metrics")
        .arg(&b)
        .arg("--curve")
        .arg(&curve_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for name in [
        "training.svg",
        "training.png",
        "cost_quality.svg",
        "cost_quality.png",
    ] {
        let len = std::fs::metadata(out.join(name)).unwrap().len();
        assert!(len > 1000, "{name}: {len} bytes");
        assert!(stderr.contains(&format!("wrote {}", out.join(name).display())));
    }
    let svg = std::fs::read_to_string(out.join("training.svg")).unwrap();
    assert_text(&svg, "gapg (4 steps)");
    assert_text(&svg, "no-filter (3 steps)");
    assert!(
        stdout.contains("local only 40.0%, cloud only 80.0%"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("selfroute") && l.contains("0.775") && l.contains("44.0%")),
        "{stdout}"
    );

    // A bad line fails the command before anything is drawn, and says where.
    std::fs::write(&b, "{not json\n").unwrap();
    let out2 = dir.join("plots2");
    let output = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(["plot", "--metrics"])
        .arg(&b)
        .arg("--out")
        .arg(&out2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no-filter/metrics.jsonl:1: not a metrics line"),
        "{stderr}"
    );
    assert!(!out2.exists());

    // Nothing to plot.
    let output = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args(["plot", "--out"])
        .arg(&out2)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to plot"));
    std::fs::remove_dir_all(&dir).unwrap();
}

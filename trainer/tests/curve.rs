//! The cost-quality curve's metrics on curves whose APGR and CPT were worked out by hand
//! (RouteLLM's definitions; the module docs of `selfroute_train::curve` say which choices were
//! made where RouteLLM leaves room).

use selfroute_train::curve::{Curve, CurveError, CurvePoint};

const LOCAL: f64 = 0.4;
const CLOUD: f64 = 0.8;

fn point(method: &str, cloud_share: f64, accuracy: f64) -> CurvePoint {
    CurvePoint {
        method: method.to_string(),
        setting: cloud_share * 10.0,
        cloud_share,
        accuracy,
    }
}

fn curve(points: &[(&str, f64, f64)]) -> Curve {
    Curve {
        points: points.iter().map(|&(m, s, a)| point(m, s, a)).collect(),
        local_accuracy: LOCAL,
        cloud_accuracy: CLOUD,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[track_caller]
fn assert_close(got: f64, want: f64) {
    assert!(close(got, want), "got {got}, want {want}");
}

#[track_caller]
fn assert_cpt(got: Option<f64>, want: f64) {
    match got {
        Some(got) => assert_close(got, want),
        None => panic!("no CPT, want {want}"),
    }
}

#[test]
fn a_straight_line_from_local_to_cloud_recovers_half_the_gap() {
    // Measured endpoints and collinear points between them: PGR(c) = c, area 1/2.
    let c = curve(&[
        ("line", 0.0, 0.4),
        ("line", 0.25, 0.5),
        ("line", 0.5, 0.6),
        ("line", 1.0, 0.8),
    ]);
    assert_close(c.apgr("line").unwrap(), 0.5);
    // Half the gap (0.6) at share 0.5; 80% (0.72) at share 0.8.
    assert_cpt(c.cpt("line", 0.5).unwrap(), 0.5);
    assert_cpt(c.cpt("line", 0.8).unwrap(), 0.8);
    // The same line from the two added endpoints alone: one point in the middle.
    let c = curve(&[("line", 0.5, 0.6)]);
    assert_close(c.apgr("line").unwrap(), 0.5);
    assert_cpt(c.cpt("line", 0.8).unwrap(), 0.8);
}

#[test]
fn a_router_that_recovers_the_gap_at_a_quarter_of_the_calls() {
    // (0, 0.4) added, (0.25, 0.8) measured, (1, 0.8) added. PGR rises 0 -> 1 over [0, 0.25]
    // (area 0.125) and stays 1 over [0.25, 1] (area 0.75): APGR 0.875.
    let c = curve(&[("oracle", 0.25, 0.8)]);
    assert_close(c.apgr("oracle").unwrap(), 0.875);
    assert_cpt(c.cpt("oracle", 0.5).unwrap(), 0.125);
    assert_cpt(c.cpt("oracle", 0.8).unwrap(), 0.2);
}

#[test]
fn a_steep_step_has_its_area() {
    // Flat at the local accuracy to share 0.3, up to the cloud's at 0.4, flat after:
    // PGR area = 0.1 * 1/2 + 0.6 * 1 = 0.65.
    let c = curve(&[("step", 0.3, 0.4), ("step", 0.4, 0.8)]);
    assert_close(c.apgr("step").unwrap(), 0.65);
    // The crossings are on the steep segment: 0.3 + 0.5 * 0.1 and 0.3 + 0.8 * 0.1.
    assert_cpt(c.cpt("step", 0.5).unwrap(), 0.35);
    assert_cpt(c.cpt("step", 0.8).unwrap(), 0.38);
}

#[test]
fn a_measured_point_at_share_zero_wins_over_the_local_reference() {
    // selfroute under a 30% budget: its own all-local accuracy (0.5) beats the untrained local
    // model (0.4), and nothing is measured above share 0.3, so (1, 0.8) is added.
    // PGR: 0.25, 0.5, 0.75 at 0, 0.1, 0.3, then 1 at share 1:
    // 0.1 * 0.375 + 0.2 * 0.625 + 0.7 * 0.875 = 0.775.
    let c = curve(&[
        ("selfroute", 0.3, 0.7),
        ("selfroute", 0.0, 0.5),
        ("selfroute", 0.1, 0.6),
    ]);
    assert_eq!(
        c.curve_of("selfroute").unwrap(),
        vec![(0.0, 0.5), (0.1, 0.6), (0.3, 0.7), (1.0, 0.8)]
    );
    assert_close(c.apgr("selfroute").unwrap(), 0.775);
    // Already half way with 10% of the calls; 80% (0.72) only on the added segment to share 1:
    // 0.3 + 0.2 * 0.7.
    assert_cpt(c.cpt("selfroute", 0.5).unwrap(), 0.1);
    assert_cpt(c.cpt("selfroute", 0.8).unwrap(), 0.44);
    // Level 0 is the local accuracy, which this curve has from the start.
    assert_cpt(c.cpt("selfroute", 0.0).unwrap(), 0.0);
}

#[test]
fn a_non_monotone_curve_takes_the_first_crossing_and_its_whole_area() {
    // Up to 0.7 at share 0.2, down to 0.5 at 0.4, up to 0.75 at 0.6, the cloud's 0.8 at 1.
    // PGR: 0, 0.75, 0.25, 0.875, 1; area 0.075 + 0.1 + 0.1125 + 0.375 = 0.6625.
    let c = curve(&[("wavy", 0.4, 0.5), ("wavy", 0.2, 0.7), ("wavy", 0.6, 0.75)]);
    assert_close(c.apgr("wavy").unwrap(), 0.6625);
    // 0.6 is first reached on the first segment: 0.2 * (0.2 / 0.3). (np.interp over the
    // unsorted accuracies would answer something else.)
    assert_cpt(c.cpt("wavy", 0.5).unwrap(), 0.2 * 2.0 / 3.0);
    // 0.72 is above the first peak, so the crossing is on the climb from 0.4: 0.4 + 0.88 * 0.2.
    assert_cpt(c.cpt("wavy", 0.8).unwrap(), 0.576);
}

#[test]
fn a_curve_that_never_reaches_the_target_has_no_cpt() {
    // Measured at share 1 below the cloud reference: (0, 0.4) -> (1, 0.6), PGR 0 -> 0.5.
    let c = curve(&[("weak-cloud", 1.0, 0.6)]);
    assert_close(c.apgr("weak-cloud").unwrap(), 0.25);
    assert_cpt(c.cpt("weak-cloud", 0.5).unwrap(), 1.0);
    assert_eq!(c.cpt("weak-cloud", 0.8).unwrap(), None);
}

#[test]
fn points_at_one_share_are_merged_whatever_their_order() {
    // 0.5 and 0.7 at share 0.5 merge to 0.6: the straight line again.
    for points in [
        [("m", 0.5, 0.5), ("m", 0.5, 0.7)],
        [("m", 0.5, 0.7), ("m", 0.5, 0.5)],
    ] {
        let c = curve(&points);
        assert_eq!(
            c.curve_of("m").unwrap(),
            vec![(0.0, 0.4), (0.5, 0.6), (1.0, 0.8)]
        );
        assert_close(c.apgr("m").unwrap(), 0.5);
        assert_cpt(c.cpt("m", 0.5).unwrap(), 0.5);
    }
}

#[test]
fn methods_are_measured_apart_and_summarised_in_order() {
    let c = curve(&[
        ("random", 0.5, 0.6),
        ("oracle", 0.25, 0.8),
        ("random", 0.2, 0.48),
    ]);
    assert_eq!(c.methods(), vec!["random", "oracle"]);
    let summary = c.summary().unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!(summary[0].method, "random");
    assert_close(summary[0].apgr, 0.5);
    assert_cpt(summary[0].cpt50, 0.5);
    assert_cpt(summary[0].cpt80, 0.8);
    assert_eq!(summary[1].method, "oracle");
    assert_close(summary[1].apgr, 0.875);
    assert_cpt(summary[1].cpt50, 0.125);
    assert_cpt(summary[1].cpt80, 0.2);
}

#[test]
fn bad_input_is_a_clear_error() {
    let bad = |points: &[(&str, f64, f64)]| curve(points).apgr("m").unwrap_err().to_string();

    let e = bad(&[("m", f64::NAN, 0.5)]);
    assert!(e.contains("cloud_share") && e.contains("NaN"), "{e}");
    let e = bad(&[("m", 1.5, 0.5)]);
    assert!(e.contains("point 0 (m) cloud_share is 1.5"), "{e}");
    let e = bad(&[("m", 0.5, 0.6), ("m", -0.1, 0.5)]);
    assert!(e.contains("point 1 (m) cloud_share is -0.1"), "{e}");
    let e = bad(&[("m", 0.5, 60.0)]);
    assert!(e.contains("accuracy is 60"), "{e}");
    let e = bad(&[("m", 0.5, f64::INFINITY)]);
    assert!(e.contains("accuracy is inf"), "{e}");
    let e = bad(&[]);
    assert!(e.contains("no points"), "{e}");
    let e = bad(&[(" ", 0.5, 0.5)]);
    assert!(e.contains("empty method name"), "{e}");
    let e = bad(&[("other", 0.5, 0.5)]);
    assert!(e.contains("no points for method \"m\""), "{e}");

    let mut c = curve(&[("m", 0.5, 0.5)]);
    c.local_accuracy = f64::NAN;
    assert!(matches!(c.apgr("m"), Err(CurveError::OutOfRange { .. })));
    for cloud in [LOCAL, 0.3] {
        let mut c = curve(&[("m", 0.5, 0.5)]);
        c.cloud_accuracy = cloud;
        let e = c.apgr("m").unwrap_err().to_string();
        assert!(e.contains("no performance gap"), "{e}");
        assert!(matches!(c.cpt("m", 0.5), Err(CurveError::NoGap { .. })));
        // The curve itself is still valid: it can be drawn.
        c.validate().unwrap();
    }
    let c = curve(&[("m", 0.5, 0.5)]);
    for level in [1.5, -0.1, f64::NAN] {
        assert!(matches!(c.cpt("m", level), Err(CurveError::BadLevel(_))));
    }
}

#[test]
fn curve_json_round_trips_and_bad_files_are_named() {
    let dir = std::env::temp_dir().join(format!("selfroute-curve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("curve.json");
    let c = curve(&[("selfroute", 0.1, 0.6), ("router", 0.3, 0.65)]);
    c.write(&path).unwrap();
    assert_eq!(Curve::read(&path).unwrap(), c);

    // An invalid curve is not written.
    let bad = curve(&[("m", 2.0, 0.5)]);
    assert!(matches!(
        bad.write(&dir.join("bad.json")),
        Err(CurveError::OutOfRange { .. })
    ));
    assert!(!dir.join("bad.json").exists());

    // JSON has no NaN: a null share is a parse error naming the file and the expected shape.
    let text = r#"{"points": [{"method": "m", "setting": 0, "cloud_share": null, "accuracy": 0.5}],
                   "local_accuracy": 0.4, "cloud_accuracy": 0.8}"#;
    std::fs::write(&path, text).unwrap();
    let e = Curve::read(&path).unwrap_err().to_string();
    assert!(
        e.contains("curve.json") && e.contains("is not a curve.json"),
        "{e}"
    );
    // Valid JSON, invalid curve.
    let text = r#"{"points": [], "local_accuracy": 0.4, "cloud_accuracy": 0.8}"#;
    std::fs::write(&path, text).unwrap();
    assert!(matches!(Curve::read(&path), Err(CurveError::Empty)));
    let missing = dir.join("missing.json");
    let e = Curve::read(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `selfroute-train curve` on two sweeps' files: the merged curve keeps both methods over the
/// first file's references (b's own references would give b an APGR of 0.583, not 0.5), and a
/// method already merged is refused.
#[test]
fn the_curve_command_merges_methods_over_the_first_files_references() {
    let dir = std::env::temp_dir().join(format!("selfroute-curve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    curve(&[("a", 0.25, 0.8)]).write(&a).unwrap();
    Curve {
        local_accuracy: 0.2,
        ..curve(&[("b", 0.5, 0.6)])
    }
    .write(&b)
    .unwrap();
    let merged = dir.join("out").join("merged.json");
    let run = |inputs: &[&std::path::Path]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_selfroute-train"));
        cmd.arg("curve");
        for input in inputs {
            cmd.arg("--curve").arg(input);
        }
        cmd.arg("--out").arg(&merged).output().unwrap()
    };
    let out = run(&[&a, &b]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curve = Curve::read(&merged).unwrap();
    assert_eq!(curve.methods(), vec!["a", "b"]);
    assert_close(curve.local_accuracy, LOCAL);
    assert_close(curve.apgr("a").unwrap(), 0.875);
    assert_close(curve.apgr("b").unwrap(), 0.5);
    let table = std::fs::read_to_string(merged.with_extension("md")).unwrap();
    assert!(
        table.contains("| a | 0.875 |") && table.contains("| b | 0.500 |"),
        "{table}"
    );

    let out = run(&[&a, &a]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("method `a`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

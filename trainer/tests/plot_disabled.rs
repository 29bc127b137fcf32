//! Without the `plot` feature, `selfroute-train plot` says how to get a build that plots.
#![cfg(not(feature = "plot"))]

use std::process::Command;

#[test]
fn plot_without_the_feature_says_how_to_build_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_selfroute-train"))
        .args([
            "plot",
            "--metrics",
            "runs/x/metrics.jsonl",
            "--out",
            "plots",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("built without plotting")
            && stderr.contains("cargo run -p selfroute-train --features plot -- plot"),
        "{stderr}"
    );
}

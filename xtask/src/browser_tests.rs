//! The browser tests (`tests/browser`, Node's test runner driving Debian's Chromium through
//! playwright-core) against `target/site`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup::{self, step};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium (with SwiftShader, the WebGPU adapter the tests get), installed with apt
/// when missing.
pub fn ensure_chromium() -> Result<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if !path.exists() {
        setup::apt_install(
            &["chromium"],
            "Chromium for the browser tests (WebGPU on SwiftShader, no GPU needed)",
        )?;
    }
    Ok(path)
}

/// What the harness needs to find (see tests/browser/harness.mjs).
pub struct BrowserTestEnv<'a> {
    pub chromium: &'a Path,
    pub site: &'a Path,
    pub model: &'a Path,
    pub demo_model: &'a Path,
    /// The `selfroute` binary the demo test serves the site with.
    pub selfroute: &'a Path,
}

pub fn run(root: &Path, env: &BrowserTestEnv) -> Result<()> {
    crate::node::install_harness(root)?;
    let dir = root.join("tests/browser");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.mjs"))
    });
    files.sort();
    step(&format!(
        "browser tests: node --test on {} file(s) in tests/browser, headless Chromium",
        files.len()
    ));
    setup::timed("browser tests", || {
        setup::run(
            Command::new("node")
                .arg("--test")
                // One Chromium at a time: on 2 cores, parallel browsers each loading a model
                // make every test slower and timing-dependent tests flaky.
                .arg("--test-concurrency=1")
                .args(&files)
                .env("SELFROUTE_CHROMIUM", env.chromium)
                .env("SELFROUTE_SITE_DIR", env.site)
                .env("SELFROUTE_MODEL", env.model)
                .env("SELFROUTE_DEMO_MODEL", env.demo_model)
                .env("SELFROUTE_BIN", env.selfroute)
                .current_dir(root),
        )
        .context("browser tests failed")
    })
}

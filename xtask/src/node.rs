//! Node.js tools: the browser test harness (`tests/browser`, playwright-core), the web bench's
//! peer (`bench/web`, wllama) and binaryen's `wasm-opt`, all from npm. Debian's `wasm-opt`
//! (binaryen 108) is not used: its `-Oz` output fails to load in Chromium (environment.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{self, step};

/// binaryen compiled to wasm, so it runs wherever Node does; 132 makes modules Chromium loads.
const BINARYEN: &str = "binaryen@132.0.0";
/// playwright-core 1.65 needs it.
const NODE_MAJOR: u32 = 20;

/// Node.js and npm, at least version 20.
pub fn ensure_node() -> Result<()> {
    let version = setup::output(Command::new("node").arg("--version")).with_context(|| {
        format!(
            "Node.js {NODE_MAJOR} or newer (with npm) is needed for the browser build and tests"
        )
    })?;
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unexpected `node --version`: {version}"))?;
    if major < NODE_MAJOR {
        bail!(
            "Node.js {} is too old: {NODE_MAJOR} or newer is needed",
            version.trim()
        );
    }
    setup::output(Command::new("npm").arg("--version"))
        .context("npm is missing (it comes with Node.js)")?;
    Ok(())
}

/// binaryen's `wasm-opt`, installed with npm into target/xtask/node on first use.
pub fn wasm_opt(root: &Path) -> Result<PathBuf> {
    ensure_node()?;
    let prefix = root.join("target/xtask/node");
    let bin = prefix.join("node_modules/.bin/wasm-opt");
    let marker = prefix.join(".selfroute-installed");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(BINARYEN) {
        return Ok(bin);
    }
    step(&format!(
        "installing {BINARYEN} from npm into {} (wasm-opt, which shrinks the browser's wasm module)",
        prefix.display()
    ));
    std::fs::create_dir_all(&prefix)?;
    setup::run(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(BINARYEN),
    )
    .context("npm install failed: is the npm registry reachable?")?;
    std::fs::write(&marker, BINARYEN)?;
    Ok(bin)
}

/// The browser test harness's packages (`tests/browser/package-lock.json`), installed with
/// `npm ci` when the lock file changed since the last install.
pub fn install_harness(root: &Path) -> Result<()> {
    npm_ci(
        &root.join("tests/browser"),
        "the browser test harness's npm packages (tests/browser: playwright-core without browsers)",
    )
}

/// `bench web`'s packages (`bench/web/package-lock.json`: wllama, the peer it measures).
pub fn install_bench_web(root: &Path) -> Result<()> {
    npm_ci(
        &root.join("bench/web"),
        "the web bench's npm packages (bench/web: @wllama/wllama)",
    )
}

/// `npm ci` in `dir` when its lock file changed since the last install there.
fn npm_ci(dir: &Path, what: &str) -> Result<()> {
    ensure_node()?;
    let lock = setup::sha256_file(&dir.join("package-lock.json"))?;
    let marker = dir.join("node_modules/.selfroute-lock-sha256");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(lock.as_str()) {
        return Ok(());
    }
    step(&format!("installing {what} with npm ci"));
    setup::timed("npm ci", || {
        setup::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                // playwright-core downloads nothing, but say so in case a later version would.
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
                .current_dir(dir),
        )
        .context("npm ci failed: is the npm registry reachable?")
    })?;
    std::fs::write(&marker, lock)?;
    Ok(())
}

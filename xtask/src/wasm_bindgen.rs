//! The `wasm-bindgen` CLI, at exactly the version of the `wasm-bindgen` crate in Cargo.lock: the
//! CLI refuses modules built by another version of the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup::{self, step};

/// `wasm-bindgen` on PATH at the locked version, installed with cargo (once, ~6 minutes on 2
/// cores) when it is missing or another version.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let version = locked_version(root, "wasm-bindgen")?;
    let wanted = format!("wasm-bindgen {version}");
    let installed = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(wanted.as_str()) {
        return Ok(PathBuf::from("wasm-bindgen"));
    }
    step(&format!(
        "installing wasm-bindgen-cli {version} (found {}): it must match the wasm-bindgen crate in Cargo.lock; once, about 6 minutes",
        installed.as_deref().unwrap_or("none")
    ));
    // Not `--locked`: the CLI's own lock file names a dependency version the registry no longer
    // serves, and the install fails with it (environment.md).
    setup::run(Command::new(env!("CARGO")).args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        &version,
    ]))?;
    Ok(PathBuf::from("wasm-bindgen"))
}

/// The version of `package` (from crates.io) in the workspace's Cargo.lock.
pub fn locked_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let name_line = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name_line {
            let version = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'));
            if let Some(v) = version {
                return Ok(v.to_string());
            }
        }
    }
    anyhow::bail!("Cargo.lock has no package {package}: does crates/wasm depend on it?")
}

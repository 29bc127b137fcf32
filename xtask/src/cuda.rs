//! `cargo xtask check-cuda`: the trainer's `cuda` feature compiled (`cargo check`) on a machine
//! without a GPU or a CUDA install. NVIDIA's CUDA 13.4 compiler, runtime headers and CCCL come
//! from PyPI into a venv; candle's build scripts then compile its kernels with that `nvcc`, so a
//! change that breaks the CUDA build fails here rather than on the first GPU machine.
//!
//! The venv and the check's own target directory live in the user's cache
//! (`$XDG_CACHE_HOME/selfroute/cuda-check`, else `~/.cache/selfroute/cuda-check`), outside the
//! checkout: CI runs in a fresh clone each time, and a cold check (candle's kernels through
//! nvcc, the `cuda` feature's crates; ~21 CPU-minutes, 28 minutes on a busy 2-core machine) is
//! paid once per machine, not once per clone. Warm, it is under a second in the same checkout and
//! ~25 s in a fresh clone (our crates are checked again). A separate target directory also keeps
//! the check from waiting on, or mixing its `cuda` feature set into, `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{self, step};

/// The CUDA 13.4 toolkit's pieces that `nvcc` needs, pinned together. The `-cu12` nvcc wheels
/// ship no `nvcc` binary; 13.5 is newer than cudarc 0.19 knows. `nvidia-nvvm` (cicc, libdevice)
/// is pinned too: nvcc's wheel asks for it unpinned. CCCL (`cuda/std/...`, which candle's
/// `reduce.cu` includes) is released on its own numbering; 13.3.5.0.6 is CCCL 3.5.0.
pub const REQUIREMENTS: &[&str] = &[
    "nvidia-cuda-nvcc==13.4.92",
    "nvidia-cuda-crt==13.4.92",
    "nvidia-cuda-runtime==13.4.92",
    "nvidia-nvvm==13.4.92",
    "nvidia-cuda-cccl==13.3.5.0.6",
];

/// cudarc's name for the toolkit version above (it would also read it from `nvcc --version`).
const CUDARC_CUDA_VERSION: &str = "13040";

/// candle's kernels are compiled for one GPU architecture; with no GPU to ask, sm_80 (A100), the
/// lowest for which candle builds every kernel (below 8.0 it leaves out the bf16 WMMA ones).
const COMPUTE_CAP: &str = "80";

/// Variables that would point the build at another CUDA install than the venv's.
const FOREIGN_CUDA_VARS: &[&str] = &[
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_TOOLKIT_ROOT_DIR",
    "CUDNN_LIB",
    "NVCC",
];

/// Installs the toolkit (once) and runs `cargo check -p selfroute-train --features cuda` with it.
pub fn check(root: &Path) -> Result<()> {
    let dir = cache_dir(root);
    let toolkit = setup::timed("CUDA toolkit venv", || ensure_toolkit(&dir.join("venv")))?;
    let target = dir.join("target");
    step(&format!(
        "cargo check -p selfroute-train --features cuda: candle's CUDA kernels compiled by the venv's nvcc (CUDA 13.4, sm_{COMPUTE_CAP}), no GPU needed; target directory {} (the first run on a machine takes 10-30 minutes on 2 cores)",
        target.display()
    ));
    let bin = toolkit.join("bin");
    let path = match std::env::var_os("PATH") {
        Some(rest) => {
            std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&rest)))
                .with_context(|| format!("adding {} to PATH", bin.display()))?
        }
        None => bin.clone().into_os_string(),
    };
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["check", "-p", "selfroute-train", "--features", "cuda"])
        .env("CARGO_TARGET_DIR", &target)
        .env("PATH", path)
        .env("CUDA_ROOT", &toolkit)
        .env("CUDA_COMPUTE_CAP", COMPUTE_CAP)
        .env("CUDARC_CUDA_VERSION", CUDARC_CUDA_VERSION)
        .current_dir(root);
    for var in FOREIGN_CUDA_VARS {
        cargo.env_remove(var);
    }
    setup::timed("cuda check", || setup::run(&mut cargo))
}

/// Where the venv and the check's target directory live (see the module's documentation); the
/// workspace's `target/cuda-check` when there is no home directory.
fn cache_dir(root: &Path) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    match cache {
        Some(cache) => cache.join("selfroute/cuda-check"),
        None => root.join("target/cuda-check"),
    }
}

/// The venv with [`REQUIREMENTS`] (created when missing or made with other pins) and the
/// toolkit's root inside it, `site-packages/nvidia/cu13`, whose `bin/` holds `nvcc`.
fn ensure_toolkit(venv: &Path) -> Result<PathBuf> {
    if find_toolkit(venv).is_none() {
        // A venv whose marker matches but whose nvcc is gone must be made again.
        let marker = venv.join(".selfroute-requirements");
        if marker.exists() {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
        }
    }
    setup::python_venv_at(venv, REQUIREMENTS, &[]).with_context(|| {
        format!(
            "installing the CUDA toolkit from PyPI into {} ({})",
            venv.display(),
            REQUIREMENTS.join(" ")
        )
    })?;
    match find_toolkit(venv) {
        Some(toolkit) => Ok(toolkit),
        None => bail!(
            "{} has no lib/python*/site-packages/nvidia/cu13/bin/nvcc after installing {}",
            venv.display(),
            REQUIREMENTS.join(" ")
        ),
    }
}

fn find_toolkit(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|python| python.path().join("site-packages/nvidia/cu13"))
        .find(|toolkit| toolkit.join("bin/nvcc").is_file())
}

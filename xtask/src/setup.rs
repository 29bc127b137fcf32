//! Shared helpers: locating the workspace, running commands loudly, installing prerequisites.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Announces a step, so a newcomer sees what is happening and why it takes time.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).args(args).current_dir(root))
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    step(&format!("installing the Rust target {target} (rustup)"));
    run(Command::new("rustup").args(["target", "add", target]))
}

/// A Python virtual environment under target/xtask with the given requirements installed.
pub fn python_venv(
    root: &Path,
    name: &str,
    requirements: &[&str],
    env: &[(&str, &str)],
) -> Result<PathBuf> {
    python_venv_at(&root.join("target/xtask").join(name), requirements, env)
}

/// A Python virtual environment at `venv` with the given requirements installed; reused as it is
/// when it was made with the same requirements.
pub fn python_venv_at(venv: &Path, requirements: &[&str], env: &[(&str, &str)]) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let marker = venv.join(".selfroute-requirements");
    let wanted = requirements.join("\n");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str())
    {
        return Ok(python);
    }
    step(&format!(
        "creating the Python environment {} ({})",
        venv.display(),
        requirements.join(", ")
    ));
    let parent = venv.parent().context("venv path")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(requirements);
    for (k, v) in env {
        pip.env(k, v);
    }
    run(&mut pip).context("pip install failed: is PyPI reachable?")?;
    std::fs::write(&marker, wanted).with_context(|| format!("writing {}", marker.display()))?;
    Ok(python)
}

/// Mesa's lavapipe (Vulkan on the CPU) for the GPU tests: Debian's `mesa-vulkan-drivers` and
/// `libvulkan1`, installed with apt when its driver manifest is missing.
pub fn ensure_lavapipe() -> Result<()> {
    let manifest = Path::new("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json");
    if manifest.exists() || std::env::consts::OS != "linux" {
        return Ok(());
    }
    apt_install(
        &["mesa-vulkan-drivers", "libvulkan1"],
        "Mesa's lavapipe Vulkan driver for the GPU tests",
    )
}

/// A TrueType font for `selfroute-train plot`'s text (DejaVu Sans, Debian's `fonts-dejavu-core`),
/// installed with apt when missing: plotters draws text with a font read at run time.
pub fn ensure_plot_font() -> Result<()> {
    let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    if font.exists() || std::env::consts::OS != "linux" {
        return Ok(());
    }
    apt_install(&["fonts-dejavu-core"], "a font for the plot tests")
}

/// Debian's `chromium-driver`: wasm-bindgen-test-runner drives headless Chromium through it for
/// the wasm32 kernel tests. Installed with apt when missing; returns its path.
pub fn ensure_chromedriver() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/chromedriver");
    if !path.exists() {
        apt_install(
            &["chromium-driver"],
            "chromedriver for the wasm32 kernel tests in headless Chromium",
        )?;
    }
    Ok(path)
}

/// Installs Debian packages with apt (through sudo unless root), announcing why.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    step(&format!("installing {why} (apt: {})", packages.join(" ")));
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        run(cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend_from_slice(packages);
    apt(&install).with_context(|| {
        format!("installing {why} failed: is this a Debian-based machine with apt?")
    })
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f` and reports how long it took: CI has a time budget, and each step's share of it
/// should be visible in the log.
pub fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let value = f()?;
    eprintln!("({what}: {:.1} s)", started.elapsed().as_secs_f64());
    Ok(value)
}

//! `cargo xtask web`: builds `target/site/`, the folder the browser is served. It mirrors the
//! repository root, so the page's relative URLs are the same in the repository and on the server:
//!
//! ```text
//! target/site/index.html                      repo index.html, model hash and size filled in
//! target/site/web/*.js, *.css                 the page, its element and the Web Worker
//! target/site/web/pkg/selfroute_wasm.js       wasm-bindgen's loader (--target web)
//! target/site/web/pkg/selfroute_wasm_bg.wasm  crates/wasm
//! target/site/models/selfroute-demo.gguf      the demo model (a hard link)
//! ```
//!
//! Cargo rebuilds the wasm only when its sources change; wasm-bindgen and wasm-opt rerun only when
//! the module they start from changed; copying the web files is cheap and always done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::demo_model::{self, DemoModel, TrainerBuild};
use crate::fetch_model::fetch_default_model;
use crate::setup::{self, cargo, step};
use crate::{node, wasm_bindgen};

pub const SITE: &str = "target/site";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
const CRATE: &str = "selfroute-wasm";
/// The name wasm-bindgen gives its outputs (`selfroute_wasm.js`, `selfroute_wasm_bg.wasm`), as
/// web/CONTRACT.md expects.
const OUT_NAME: &str = "selfroute_wasm";

/// How the wasm module is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmBuild {
    /// Profile `wasm` (opt-level s, no LTO): a few minutes on 2 cores; what the tests use.
    Quick,
    /// Profile `wasm-size` (fat LTO, one codegen unit) then `wasm-opt -Oz`: the smallest download,
    /// for the demo and `bench web`.
    Size,
}

impl WasmBuild {
    fn profile(self) -> &'static str {
        match self {
            Self::Quick => "wasm",
            Self::Size => "wasm-size",
        }
    }
}

/// `cargo xtask web [--release-size]`.
pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let build = match args {
        [] => WasmBuild::Quick,
        ["--release-size"] => WasmBuild::Size,
        other => bail!("`web` takes only --release-size, got {other:?}"),
    };
    let base = fetch_default_model(root)?;
    let model = demo_model::ensure(root, &base, TrainerBuild::Release)?;
    let site = build_site(root, &model, build)?;
    eprintln!(
        "\nsite: {} (serve it with `selfroute serve --static {SITE}`)",
        site.display()
    );
    Ok(())
}

/// Builds the site around an already made demo model; returns its folder.
pub fn build_site(root: &Path, model: &DemoModel, build: WasmBuild) -> Result<PathBuf> {
    let site = build_engine_files(root, build)?;
    step(
        "copying the demo page into the site (index.html with the demo model's SHA-256 and size) and linking the demo model",
    );
    copy_page(root, &site, model)?;
    link_model(&model.path, &site.join(demo_model::DEMO_MODEL))?;
    Ok(site)
}

/// The engine's part of the site: the wasm, its glue and `web/*.js`, without the demo page and
/// model. `bench web` needs only this (it serves the default model itself), so it does not make
/// the demo model. Returns the site's folder.
pub fn build_engine_files(root: &Path, build: WasmBuild) -> Result<PathBuf> {
    let site = root.join(SITE);
    let wasm = build_wasm(root, build)?;
    bind_wasm(root, &wasm, &site.join("web/pkg"), build)?;
    step("copying the scripts into the site (web/*.js)");
    copy_web_files(&root.join("web"), &site.join("web"))?;
    Ok(site)
}

/// The cargo build of crates/wasm; returns the module it wrote.
fn build_wasm(root: &Path, build: WasmBuild) -> Result<PathBuf> {
    setup::ensure_rust_target(WASM_TARGET)?;
    let profile = build.profile();
    step(&format!(
        "building {CRATE} for {WASM_TARGET} (profile {profile}): the engine the browser runs"
    ));
    setup::timed("wasm build", || {
        cargo(
            root,
            &[
                "build",
                "--profile",
                profile,
                "--target",
                WASM_TARGET,
                "-p",
                CRATE,
            ],
        )
    })?;
    Ok(root
        .join("target")
        .join(WASM_TARGET)
        .join(profile)
        .join(format!("{}.wasm", CRATE.replace('-', "_"))))
}

/// wasm-bindgen (and wasm-opt for `WasmBuild::Size`) from `wasm` into `out`, skipped when `out`
/// already holds the result for this very module.
fn bind_wasm(root: &Path, wasm: &Path, out: &Path, build: WasmBuild) -> Result<()> {
    let bindgen = wasm_bindgen::ensure(root)?;
    let meta = std::fs::metadata(wasm).with_context(|| format!("{}", wasm.display()))?;
    let stamp = json!({
        "input": wasm.display().to_string(),
        "input_size": meta.len(),
        "input_modified": meta.modified()?.duration_since(std::time::UNIX_EPOCH)?.as_nanos().to_string(),
        "wasm_bindgen": wasm_bindgen::locked_version(root, "wasm-bindgen")?,
        "build": format!("{build:?}"),
    })
    .to_string();
    // Outside the site, which is served as it is.
    let stamp_path = root.join("target/xtask/site-wasm.stamp");
    let module = out.join(format!("{OUT_NAME}_bg.wasm"));
    if module.exists() && std::fs::read_to_string(&stamp_path).ok() == Some(stamp.clone()) {
        eprintln!("site: {} is up to date", module.display());
        return Ok(());
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    step("wasm-bindgen --target web: the JS glue the worker imports");
    setup::timed("wasm-bindgen", || {
        setup::run(
            Command::new(&bindgen)
                .args(["--target", "web", "--no-typescript", "--out-name", OUT_NAME])
                .arg("--out-dir")
                .arg(out)
                .arg(wasm),
        )
    })?;
    if build == WasmBuild::Size {
        optimize(root, &module)?;
    }
    report_size(&module)?;
    std::fs::create_dir_all(stamp_path.parent().context("stamp path")?)?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(())
}

/// `wasm-opt -Oz` in place. binaryen takes the features the module may use (bulk memory,
/// reference types, ...) from the module's own `target_features` section, which rustc writes and
/// wasm-bindgen keeps.
fn optimize(root: &Path, module: &Path) -> Result<()> {
    let wasm_opt = node::wasm_opt(root)?;
    step("wasm-opt -Oz (binaryen from npm): a smaller download for the page");
    let optimized = module.with_extension("opt.wasm");
    setup::timed("wasm-opt", || {
        setup::run(
            Command::new(&wasm_opt)
                .arg("-Oz")
                .arg(module)
                .arg("-o")
                .arg(&optimized),
        )
    })?;
    std::fs::rename(&optimized, module)?;
    Ok(())
}

fn report_size(module: &Path) -> Result<()> {
    let size = std::fs::metadata(module)?.len();
    eprintln!(
        "site: {} is {:.2} MB",
        module
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module"),
        size as f64 / 1e6
    );
    Ok(())
}

/// index.html with `__MODEL_SHA256__` and `__MODEL_SIZE__` replaced, so the page can check the
/// model it downloads (and caches) without a second request.
fn copy_page(root: &Path, site: &Path, model: &DemoModel) -> Result<()> {
    let source = root.join("index.html");
    let page = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}: the demo page is missing", source.display()))?;
    let page = page
        .replace("__MODEL_SHA256__", &model.sha256)
        .replace("__MODEL_SIZE__", &model.size.to_string());
    std::fs::create_dir_all(site)?;
    std::fs::write(site.join("index.html"), page)?;
    Ok(())
}

/// `web/*.js` and `web/*.css` (not the contract or other notes), and nothing stale: a script
/// deleted from web/ disappears from the site too.
fn copy_web_files(from: &Path, to: &Path) -> Result<()> {
    let shipped = |p: &Path| {
        p.is_file()
            && p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "js" | "mjs" | "css"))
    };
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(to)? {
        let path = entry?.path();
        if shipped(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if shipped(&path) {
            std::fs::copy(&path, to.join(path.file_name().context("file name")?))?;
        }
    }
    Ok(())
}

/// A hard link (no copy of ~140 MB), or a copy where links are impossible (another file system).
/// Always remade: a rebuilt model is a new file, and an old link would still show the old one.
fn link_model(model: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.parent().context("model path")?)?;
    if to.exists() {
        std::fs::remove_file(to)?;
    }
    if std::fs::hard_link(model, to).is_err() {
        std::fs::copy(model, to)
            .with_context(|| format!("copying {} to {}", model.display(), to.display()))?;
    }
    Ok(())
}

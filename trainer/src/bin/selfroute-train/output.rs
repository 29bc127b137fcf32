//! Output paths are checked before any work starts, so a typo costs nothing.

use std::path::Path;

use anyhow::{Context, Result};

/// Creates `path`'s parent folder and proves it writable by creating and removing a probe file
/// beside `path`: an output that cannot be written is reported before minutes of work, not after.
pub fn prepare_output_file(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    prepare_output_dir(parent).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the folder `dir` (and its parents) and proves it writable.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = dir.join(format!(".selfroute-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
    // The probe is ours; failing to remove it changes nothing about the run.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

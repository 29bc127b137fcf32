//! Reading `metrics.jsonl` (one `StepMetrics` per line, written by `train`) for the charts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{PlotError, Result};

/// The fields of `crate::train::StepMetrics` the charts draw, by the same names. Only these are
/// read, so a run logged before a field was added to StepMetrics still plots.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Row {
    pub step: usize,
    pub reward_mean: f64,
    pub local_accuracy: f64,
    pub offload_rate: f64,
    pub d1: usize,
    pub d2: usize,
    pub response_tokens_mean: f64,
}

/// One training run's metrics, with the name its series carries in the legend.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    pub path: PathBuf,
    pub(super) rows: Vec<Row>,
    /// Said to the user, not fatal: an unfinished last line of a run still being written.
    pub warnings: Vec<String>,
}

impl Run {
    pub fn steps(&self) -> usize {
        self.rows.len()
    }
}

/// Reads a `metrics.jsonl`. A line that is not a metrics line is an error naming the file and
/// the line, except an unterminated last line: `train` appends a line per step, so that is a
/// step being written while we read (plotting a live run), skipped with a warning.
pub fn read_run(path: &Path, label: impl Into<String>) -> Result<Run> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(line) {
            Ok(row) => rows.push(row),
            // The piece after the last '\n' is the only line without a terminator.
            Err(_) if i + 1 == lines.len() => warnings.push(format!(
                "{}:{}: skipped an unfinished last line (a run still writing?)",
                path.display(),
                i + 1
            )),
            Err(source) => {
                return Err(PlotError::MetricsLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    excerpt: excerpt(line),
                    source,
                });
            }
        }
    }
    if rows.is_empty() {
        return Err(PlotError::NoSteps(path.to_path_buf()));
    }
    Ok(Run {
        label: label.into(),
        path: path.to_path_buf(),
        rows,
        warnings,
    })
}

/// The start of a bad line, enough to recognise it without pasting a kilobyte into the error.
fn excerpt(line: &str) -> String {
    const MAX: usize = 80;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

/// Legend labels for runs: the name of the folder each `metrics.jsonl` is in (`runs/x/...` is
/// "x"), as TRL and W&B users know runs by. Two runs in folders of the same name get their
/// folder paths as written instead, so no two series share a label.
pub fn run_labels(paths: &[PathBuf]) -> Vec<String> {
    let folder = |path: &Path| -> PathBuf {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let short = |path: &Path| -> String {
        let dir = folder(path);
        // "." or "..": the folder's real name, if the path resolves.
        let named = dir.file_name().map(PathBuf::from).or_else(|| {
            std::fs::canonicalize(&dir)
                .ok()
                .and_then(|d| d.file_name().map(PathBuf::from))
        });
        match named {
            Some(name) => name.to_string_lossy().into_owned(),
            None => dir.display().to_string(),
        }
    };
    let shorts: Vec<String> = paths.iter().map(|p| short(p)).collect();
    paths
        .iter()
        .zip(&shorts)
        .map(|(path, name)| {
            if shorts.iter().filter(|s| *s == name).count() > 1 {
                folder(path).display().to_string()
            } else {
                name.clone()
            }
        })
        .collect()
}

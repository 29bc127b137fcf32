//! The evaluation's summary (summary.json) and its Markdown table (summary.md).

use serde::{Deserialize, Serialize};

use super::{EvalRoute, ProblemRecord};

/// The paper's metrics over one run. Shares are of all N problems unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: String,
    pub model: String,
    pub task: String,
    pub cloud: String,
    pub n: usize,
    /// The budget share and the cap it gives, floor(budget * N) (N for cloud only).
    pub budget: f64,
    pub max_cloud_calls: usize,
    /// The local model's sampling temperature (0: greedy, the paper's protocol) and the seed each
    /// problem's sampling seed is mixed from.
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub seed: u64,
    /// Correct answers / N.
    pub accuracy: f64,
    /// Correct local answers / N (fallbacks count as local: the local model answered).
    pub local_accuracy: f64,
    /// Correct cloud answers / N; `accuracy = local_accuracy + cloud_accuracy_share`.
    pub cloud_accuracy_share: f64,
    /// Correct local answers / problems kept local.
    pub conditional_local_accuracy: f64,
    /// Cloud calls made (failed ones included) / N.
    pub cloud_call_ratio: f64,
    pub kept_local: usize,
    pub cloud_calls: usize,
    pub correct_local: usize,
    pub correct_cloud: usize,
    pub fallbacks: usize,
    /// Problems the policy would have sent out but the cap kept local.
    pub over_budget: usize,
    pub mean_local_tokens: f64,
    pub mean_cloud_tokens: f64,
    pub mean_latency_ms: f64,
    /// Over the problems that showed any text.
    pub mean_first_token_ms: f64,
    /// Accuracy and cloud share per difficulty level, lowest first.
    pub by_difficulty: Vec<LevelSummary>,
    /// The same per part of the task's mix, by name; empty for single-part tasks.
    #[serde(default)]
    pub by_subset: Vec<SubsetSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    pub difficulty: u32,
    pub n: usize,
    pub accuracy: f64,
    pub cloud_call_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetSummary {
    /// Empty for problems outside any named part (in a task that mixes named and unnamed ones).
    pub subset: String,
    pub n: usize,
    pub accuracy: f64,
    /// Correct local answers / the subset's problems.
    pub local_accuracy: f64,
    /// Problems sent to the cloud (failed calls included) / the subset's problems.
    pub cloud_call_ratio: f64,
}

/// Who ran and how, for the summary's header fields.
pub struct RunLabels<'a> {
    pub method: &'a str,
    pub model: &'a str,
    pub task: &'a str,
    pub cloud: &'a str,
    pub budget: f64,
    pub max_cloud_calls: usize,
    pub temperature: f32,
    pub seed: u64,
}

fn share(count: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

pub fn summarize(records: &[ProblemRecord], labels: &RunLabels<'_>) -> Summary {
    let n = records.len();
    let is_cloud = |r: &&ProblemRecord| r.route == EvalRoute::Cloud;
    let cloud_answered = records.iter().filter(is_cloud).count();
    let kept_local = n - cloud_answered;
    let fallbacks = records
        .iter()
        .filter(|r| r.route == EvalRoute::Fallback)
        .count();
    let correct_cloud = records
        .iter()
        .filter(is_cloud)
        .filter(|r| r.correct)
        .count();
    let correct_local = records
        .iter()
        .filter(|r| r.route != EvalRoute::Cloud && r.correct)
        .count();
    let first: Vec<f64> = records.iter().filter_map(|r| r.first_token_ms).collect();
    let mean = |f: &dyn Fn(&ProblemRecord) -> f64| -> f64 {
        if n == 0 {
            0.0
        } else {
            records.iter().map(f).sum::<f64>() / n as f64
        }
    };
    let mut levels: Vec<u32> = records.iter().map(|r| r.difficulty).collect();
    levels.sort_unstable();
    levels.dedup();
    let by_difficulty = levels
        .into_iter()
        .map(|d| {
            let at: Vec<&ProblemRecord> = records.iter().filter(|r| r.difficulty == d).collect();
            LevelSummary {
                difficulty: d,
                n: at.len(),
                accuracy: share(at.iter().filter(|r| r.correct).count(), at.len()),
                cloud_call_ratio: share(
                    at.iter().filter(|r| r.route != EvalRoute::Local).count(),
                    at.len(),
                ),
            }
        })
        .collect();
    Summary {
        method: labels.method.to_string(),
        model: labels.model.to_string(),
        task: labels.task.to_string(),
        cloud: labels.cloud.to_string(),
        n,
        budget: labels.budget,
        max_cloud_calls: labels.max_cloud_calls,
        temperature: labels.temperature,
        seed: labels.seed,
        accuracy: share(correct_local + correct_cloud, n),
        local_accuracy: share(correct_local, n),
        cloud_accuracy_share: share(correct_cloud, n),
        conditional_local_accuracy: share(correct_local, kept_local),
        cloud_call_ratio: share(cloud_answered + fallbacks, n),
        kept_local,
        cloud_calls: cloud_answered + fallbacks,
        correct_local,
        correct_cloud,
        fallbacks,
        over_budget: records.iter().filter(|r| r.over_budget).count(),
        mean_local_tokens: mean(&|r| r.local_tokens as f64),
        mean_cloud_tokens: mean(&|r| f64::from(r.cloud_tokens)),
        mean_latency_ms: mean(&|r| r.latency_ms),
        mean_first_token_ms: if first.is_empty() {
            0.0
        } else {
            first.iter().sum::<f64>() / first.len() as f64
        },
        by_difficulty,
        by_subset: by_subset(records),
    }
}

/// Per subset, in name order; none when every problem's subset is empty (a single-part task).
fn by_subset(records: &[ProblemRecord]) -> Vec<SubsetSummary> {
    if records.iter().all(|r| r.subset.is_empty()) {
        return Vec::new();
    }
    let mut names: Vec<&str> = records.iter().map(|r| r.subset.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let at: Vec<&ProblemRecord> = records.iter().filter(|r| r.subset == name).collect();
            let count =
                |keep: &dyn Fn(&ProblemRecord) -> bool| at.iter().filter(|r| keep(r)).count();
            SubsetSummary {
                subset: name.to_string(),
                n: at.len(),
                accuracy: share(count(&|r| r.correct), at.len()),
                local_accuracy: share(
                    count(&|r| r.correct && r.route != EvalRoute::Cloud),
                    at.len(),
                ),
                cloud_call_ratio: share(count(&|r| r.route != EvalRoute::Local), at.len()),
            }
        })
        .collect()
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// The header of the Markdown table; [`markdown_row`] gives one method's row, so several runs
/// can share one table.
pub const MARKDOWN_HEADER: &str = "| method | N | accuracy % | local acc. % | cond. local acc. % | cloud calls % | local tokens | cloud tokens | latency ms | first token ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

pub fn markdown_row(s: &Summary) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
        // A pipe in a name (`<|offload|>`) would end the cell.
        s.method.replace('|', "\\|"),
        s.n,
        pct(s.accuracy),
        pct(s.local_accuracy),
        pct(s.conditional_local_accuracy),
        pct(s.cloud_call_ratio),
        s.mean_local_tokens,
        s.mean_cloud_tokens,
        s.mean_latency_ms,
        s.mean_first_token_ms
    )
}

/// How the local answers were decoded, for the Markdown's header.
fn decoding(s: &Summary) -> String {
    if s.temperature > 0.0 {
        format!("sampled at temperature {} (seed {})", s.temperature, s.seed)
    } else {
        "greedy decoding".to_string()
    }
}

/// summary.md: the table, what was run, and accuracy and cloud share per difficulty level and
/// per subset.
pub fn markdown(s: &Summary) -> String {
    let mut out = format!(
        "# {} on {}\n\nModel `{}`, cloud: {}, {}, at most {} cloud calls \
         (budget {}% of {} problems); problems over the cap answered locally with \
         `<|offload|>` masked ({} were).\n\n",
        s.method,
        s.task,
        s.model,
        s.cloud,
        decoding(s),
        s.max_cloud_calls,
        pct(s.budget),
        s.n,
        s.over_budget
    );
    out.push_str(MARKDOWN_HEADER);
    out.push_str(&markdown_row(s));
    out.push_str("\n| difficulty | N | accuracy % | cloud calls % |\n|---:|---:|---:|---:|\n");
    for level in &s.by_difficulty {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            level.difficulty,
            level.n,
            pct(level.accuracy),
            pct(level.cloud_call_ratio)
        ));
    }
    if !s.by_subset.is_empty() {
        out.push_str(
            "\n| subset | N | accuracy % | local acc. % | cloud calls % |\n|---|---:|---:|---:|---:|\n",
        );
        for part in &s.by_subset {
            let name = if part.subset.is_empty() {
                "(none)".to_string()
            } else {
                part.subset.replace('|', "\\|")
            };
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                part.n,
                pct(part.accuracy),
                pct(part.local_accuracy),
                pct(part.cloud_call_ratio)
            ));
        }
    }
    out
}

//! Several evaluations of the same problems side by side, with bootstrap intervals: is one
//! method's accuracy really above another's, or within what a different draw of problems would
//! give? Problems are matched by id, so the evaluations must cover the same problems; every
//! method is resampled on the same problems at once (see [`crate::stats`]).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EvalRoute, ProblemRecord};
use crate::error::{Result, TrainError};
use crate::stats::{Bootstrap, Interval, MeanDraws};

/// One method's evaluation: its name in the tables, the folder it was read from (for messages),
/// and its problems.jsonl lines.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub name: String,
    pub dir: String,
    pub records: Vec<ProblemRecord>,
}

/// Reads an evaluation's problems.jsonl.
pub fn read_records(path: &Path) -> Result<Vec<ProblemRecord>> {
    let data_error = |reason: String| TrainError::Data {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| data_error(e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| data_error(format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// One method's metrics over a group of problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodStats {
    pub name: String,
    /// Correct answers / problems.
    pub accuracy: Interval,
    /// Correct local answers (fallbacks included, as in summary.json) / all problems.
    pub local_accuracy: Interval,
    /// Problems sent to the cloud (failed calls included) / problems.
    pub offload_share: Interval,
}

/// A difference of two methods' means and its paired interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// 0 lies outside the interval: the difference holds at the interval's level.
    pub excludes_zero: bool,
}

impl From<Interval> for Delta {
    fn from(i: Interval) -> Self {
        Self {
            estimate: i.estimate,
            low: i.low,
            high: i.high,
            excludes_zero: i.excludes_zero(),
        }
    }
}

/// `method` minus `versus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub method: String,
    pub versus: String,
    pub accuracy: Delta,
    pub offload_share: Delta,
}

/// Every method over one group of problems (all, one difficulty level or one subset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupComparison {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub difficulty: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subset: Option<String>,
    pub n: usize,
    pub methods: Vec<MethodStats>,
    /// Every other method minus the baseline.
    pub against_baseline: Vec<Difference>,
    /// Every pair: the later method (in the order given) minus the earlier one.
    pub pairs: Vec<Difference>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSource {
    pub name: String,
    pub dir: String,
}

/// compare.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub methods: Vec<MethodSource>,
    pub baseline: String,
    pub resamples: usize,
    pub seed: u64,
    pub level: f64,
    pub overall: GroupComparison,
    pub by_difficulty: Vec<GroupComparison>,
    /// Empty when no problem names a subset.
    pub by_subset: Vec<GroupComparison>,
}

/// Compares `evals` (at least two) against `evals[baseline]`.
pub fn compare(evals: &[Evaluation], baseline: usize, bootstrap: &Bootstrap) -> Result<Comparison> {
    if evals.len() < 2 {
        return Err(TrainError::InvalidSettings(
            "a comparison needs at least two evaluations".into(),
        ));
    }
    let Some(base) = evals.get(baseline) else {
        return Err(TrainError::InvalidSettings(format!(
            "the baseline is evaluation {} of {}",
            baseline + 1,
            evals.len()
        )));
    };
    let rows = align(evals)?;
    // The first evaluation's records describe each problem (difficulty, subset).
    let described: Vec<&ProblemRecord> = rows.iter().map(|r| r[0]).collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let mut group_seed = bootstrap.seed;
    let mut next = |members: &[usize]| {
        let settings = Bootstrap {
            seed: group_seed,
            ..*bootstrap
        };
        // Each group its own stream, so adding a group does not move the others' intervals.
        group_seed = group_seed.wrapping_add(1);
        group(evals, &rows, members, baseline, &settings)
    };
    let overall = next(&all)?;

    let mut levels: Vec<u32> = described.iter().map(|r| r.difficulty).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut by_difficulty = Vec::with_capacity(levels.len());
    for level in levels {
        let members = members_where(&described, |r| r.difficulty == level);
        let mut g = next(&members)?;
        g.difficulty = Some(level);
        by_difficulty.push(g);
    }

    let mut by_subset = Vec::new();
    if described.iter().any(|r| !r.subset.is_empty()) {
        let mut names: Vec<&str> = described.iter().map(|r| r.subset.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let members = members_where(&described, |r| r.subset == name);
            let mut g = next(&members)?;
            g.subset = Some(name.to_string());
            by_subset.push(g);
        }
    }

    Ok(Comparison {
        methods: evals
            .iter()
            .map(|e| MethodSource {
                name: e.name.clone(),
                dir: e.dir.clone(),
            })
            .collect(),
        baseline: base.name.clone(),
        resamples: bootstrap.resamples,
        seed: bootstrap.seed,
        level: bootstrap.level,
        overall,
        by_difficulty,
        by_subset,
    })
}

fn members_where(
    described: &[&ProblemRecord],
    keep: impl Fn(&ProblemRecord) -> bool,
) -> Vec<usize> {
    (0..described.len())
        .filter(|&i| keep(described[i]))
        .collect()
}

/// The records of every evaluation per problem, in the first evaluation's order. A problem is
/// its id and, for ids a test set holds more than once, which occurrence it is.
fn align(evals: &[Evaluation]) -> Result<Vec<Vec<&ProblemRecord>>> {
    let keyed = |e: &Evaluation| -> Vec<((u64, usize), usize)> {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        e.records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let k = seen.entry(r.id).or_insert(0);
                *k += 1;
                ((r.id, *k), i)
            })
            .collect()
    };
    let first = &evals[0];
    if first.records.is_empty() {
        return Err(TrainError::Data {
            path: first.dir.clone(),
            reason: "the evaluation has no problems".into(),
        });
    }
    let order = keyed(first);
    let mut rows: Vec<Vec<&ProblemRecord>> = order
        .iter()
        .map(|&(_, i)| vec![&first.records[i]])
        .collect();
    for e in &evals[1..] {
        let index: HashMap<(u64, usize), usize> = keyed(e).into_iter().collect();
        let missing: Vec<u64> = order
            .iter()
            .filter(|(key, _)| !index.contains_key(key))
            .map(|((id, _), _)| *id)
            .collect();
        // Same length and none of the first's missing: the same problems.
        if !missing.is_empty() || e.records.len() != first.records.len() {
            let example = missing
                .first()
                .map(|id| format!(" (the first missing: id {id})"))
                .unwrap_or_default();
            return Err(TrainError::Data {
                path: e.dir.clone(),
                reason: format!(
                    "`{}` covers other problems than `{}` ({}): {} problems, {} of `{}`'s {} \
                     missing{example}; compare evaluations of the same problems (the same \
                     --task, --split, --problems and --seed)",
                    e.name,
                    first.name,
                    first.dir,
                    e.records.len(),
                    missing.len(),
                    first.name,
                    first.records.len()
                ),
            });
        }
        for ((key, _), row) in order.iter().zip(&mut rows) {
            if let Some(&i) = index.get(key) {
                row.push(&e.records[i]);
            }
        }
    }
    Ok(rows)
}

/// The per-problem values the statistics average: accuracy, local accuracy, offload share.
const METRICS: usize = 3;

fn values(r: &ProblemRecord) -> [f64; METRICS] {
    let one = |b: bool| f64::from(u8::from(b));
    [
        one(r.correct),
        one(r.correct && r.route != EvalRoute::Cloud),
        one(r.route != EvalRoute::Local),
    ]
}

/// One group's statistics: every method's metrics drawn jointly over the group's problems.
fn group(
    evals: &[Evaluation],
    rows: &[Vec<&ProblemRecord>],
    members: &[usize],
    baseline: usize,
    bootstrap: &Bootstrap,
) -> Result<GroupComparison> {
    // Column m * METRICS + k: method m's metric k on each of the group's problems.
    let columns: Vec<Vec<f64>> = (0..evals.len())
        .flat_map(|m| {
            (0..METRICS).map(move |k| members.iter().map(|&i| values(rows[i][m])[k]).collect())
        })
        .collect();
    let draws = bootstrap.means(&columns)?;
    let col = |m: usize, k: usize| m * METRICS + k;
    let methods = evals
        .iter()
        .enumerate()
        .map(|(m, e)| MethodStats {
            name: e.name.clone(),
            accuracy: draws.interval(col(m, 0)),
            local_accuracy: draws.interval(col(m, 1)),
            offload_share: draws.interval(col(m, 2)),
        })
        .collect();
    let difference = |a: usize, b: usize, draws: &MeanDraws| Difference {
        method: evals[a].name.clone(),
        versus: evals[b].name.clone(),
        accuracy: draws.difference(col(a, 0), col(b, 0)).into(),
        offload_share: draws.difference(col(a, 2), col(b, 2)).into(),
    };
    let against_baseline = (0..evals.len())
        .filter(|&m| m != baseline)
        .map(|m| difference(m, baseline, &draws))
        .collect();
    let pairs = (0..evals.len())
        .flat_map(|a| (a + 1..evals.len()).map(move |b| (b, a)))
        .map(|(later, earlier)| difference(later, earlier, &draws))
        .collect();
    Ok(GroupComparison {
        difficulty: None,
        subset: None,
        n: members.len(),
        methods,
        against_baseline,
        pairs,
    })
}

fn cell(name: &str) -> String {
    // A pipe in a name (`<|offload|>`) would end the cell.
    name.replace('|', "\\|")
}

fn pct(i: &Interval) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * i.estimate,
        100.0 * i.low,
        100.0 * i.high
    )
}

fn points(d: &Delta) -> String {
    format!(
        "{:+.1} [{:+.1}, {:+.1}]{}",
        100.0 * d.estimate,
        100.0 * d.low,
        100.0 * d.high,
        if d.excludes_zero { " *" } else { "" }
    )
}

fn methods_table(g: &GroupComparison, out: &mut String) {
    out.push_str("| method | accuracy % | local acc. % | offload % |\n|---|---:|---:|---:|\n");
    for m in &g.methods {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(&m.name),
            pct(&m.accuracy),
            pct(&m.local_accuracy),
            pct(&m.offload_share)
        ));
    }
}

fn differences_table(differences: &[Difference], out: &mut String) {
    out.push_str("| difference | accuracy (points) | offload (points) |\n|---|---:|---:|\n");
    for d in differences {
        out.push_str(&format!(
            "| {} − {} | {} | {} |\n",
            cell(&d.method),
            cell(&d.versus),
            points(&d.accuracy),
            points(&d.offload_share)
        ));
    }
}

/// compare.md: the methods with their intervals, the differences against the baseline and
/// between every pair, then the same per difficulty level and per subset (against the baseline).
pub fn markdown(c: &Comparison) -> String {
    let level = 100.0 * c.level;
    let mut out = format!(
        "# {} methods on the same {} problems\n\n\
         Bootstrap over problems ({} resamples, seed {}), {level:.0}% percentile intervals. \
         Differences are paired: every resample scores all methods on the same problems. \
         `*`: the difference's interval excludes 0. Local accuracy is correct local answers over \
         all problems.\n\n",
        c.methods.len(),
        c.overall.n,
        c.resamples,
        c.seed
    );
    methods_table(&c.overall, &mut out);
    out.push_str(&format!("\n## Against {}\n\n", cell(&c.baseline)));
    differences_table(&c.overall.against_baseline, &mut out);
    if c.methods.len() > 2 {
        out.push_str("\n## Every pair\n\n");
        differences_table(&c.overall.pairs, &mut out);
    }
    let sections = [("difficulty", &c.by_difficulty), ("subset", &c.by_subset)];
    for (what, groups) in sections {
        if groups.is_empty() {
            continue;
        }
        out.push_str(&format!("\n## By {what}\n"));
        for g in groups.iter() {
            let name = match (&g.difficulty, &g.subset) {
                (Some(d), _) => d.to_string(),
                (_, Some(s)) if s.is_empty() => "(none)".to_string(),
                (_, Some(s)) => s.clone(),
                _ => String::new(),
            };
            out.push_str(&format!("\n### {what} {} (N = {})\n\n", cell(&name), g.n));
            methods_table(g, &mut out);
            out.push('\n');
            differences_table(&g.against_baseline, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        id: u64,
        difficulty: u32,
        subset: &str,
        route: EvalRoute,
        correct: bool,
    ) -> ProblemRecord {
        ProblemRecord {
            index: 0,
            id,
            difficulty,
            subset: subset.into(),
            system_prompt: false,
            question: String::new(),
            reference: String::new(),
            route,
            over_budget: false,
            local_text: String::new(),
            answer: String::new(),
            correct,
            local_tokens: 0,
            cloud_tokens: 0,
            latency_ms: 0.0,
            first_token_ms: None,
        }
    }

    fn eval(name: &str, records: Vec<ProblemRecord>) -> Evaluation {
        Evaluation {
            name: name.into(),
            dir: format!("runs/{name}"),
            records,
        }
    }

    const QUICK: Bootstrap = Bootstrap {
        resamples: 500,
        seed: 1,
        level: 0.95,
    };

    #[test]
    fn problems_are_matched_by_id_not_by_line() {
        // b lists the same problems in another order: a's first problem is b's last.
        let a = eval(
            "a",
            vec![
                record(1, 1, "", EvalRoute::Local, true),
                record(2, 1, "", EvalRoute::Local, false),
                record(3, 2, "", EvalRoute::Local, false),
            ],
        );
        let b = eval(
            "b",
            vec![
                record(3, 2, "", EvalRoute::Cloud, true),
                record(2, 1, "", EvalRoute::Local, false),
                record(1, 1, "", EvalRoute::Local, true),
            ],
        );
        let c = compare(&[a, b], 0, &QUICK).unwrap();
        // Per level: level 2 is problem 3 alone, wrong for a and right (from the cloud) for b.
        let level2 = &c.by_difficulty[1];
        assert_eq!((level2.difficulty, level2.n), (Some(2), 1));
        assert_eq!(level2.methods[0].accuracy.estimate, 0.0);
        assert_eq!(level2.methods[1].accuracy.estimate, 1.0);
        assert_eq!(level2.methods[1].local_accuracy.estimate, 0.0);
        assert_eq!(level2.against_baseline[0].offload_share.estimate, 1.0);
        assert!(c.by_subset.is_empty());
    }

    #[test]
    fn other_problems_are_refused_naming_the_folder() {
        let a = eval("a", vec![record(1, 1, "", EvalRoute::Local, true)]);
        let b = eval("b", vec![record(2, 1, "", EvalRoute::Local, true)]);
        let err = compare(&[a.clone(), b], 0, &QUICK).unwrap_err().to_string();
        assert!(err.contains("runs/b") && err.contains("id 1"), "{err}");
        // A superset is not the same problems either.
        let more = eval(
            "more",
            vec![
                record(1, 1, "", EvalRoute::Local, true),
                record(2, 1, "", EvalRoute::Local, true),
            ],
        );
        let err = compare(&[a.clone(), more], 0, &QUICK)
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs/more"), "{err}");
        // One evaluation is not a comparison.
        assert!(compare(&[a], 0, &QUICK).is_err());
    }

    #[test]
    fn subsets_get_their_own_groups() {
        let records = |right: bool| {
            vec![
                record(1, 1, "everyday", EvalRoute::Local, right),
                record(2, 1, "held-out-phrasing", EvalRoute::Cloud, true),
                record(3, 1, "everyday", EvalRoute::Local, false),
            ]
        };
        let c = compare(
            &[eval("a", records(true)), eval("b", records(false))],
            0,
            &QUICK,
        )
        .unwrap();
        let names: Vec<(Option<&str>, usize)> = c
            .by_subset
            .iter()
            .map(|g| (g.subset.as_deref(), g.n))
            .collect();
        assert_eq!(
            names,
            [(Some("everyday"), 2), (Some("held-out-phrasing"), 1)]
        );
        assert_eq!(c.by_subset[0].against_baseline[0].accuracy.estimate, -0.5);
        let md = markdown(&c);
        assert!(md.contains("### subset everyday (N = 2)"), "{md}");
    }
}

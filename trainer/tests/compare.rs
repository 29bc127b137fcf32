//! `selfroute-train compare` as a user runs it, on hand-written evaluation folders whose
//! bootstrap distributions are known exactly: a method's resampled accuracy over N problems of
//! which K are right is Binomial(N, K/N)/N, and so is a paired difference on D discordant
//! problems that all favour one method.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const N: usize = 20;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfroute-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// problems.jsonl lines as `eval` writes them, from (id, difficulty, subset, route, correct).
fn write_eval(dir: &Path, lines: &[(u64, u32, &str, &str, bool)]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(index, &(id, difficulty, subset, route, correct))| {
            json!({
                "index": index, "id": id, "difficulty": difficulty, "subset": subset,
                "system_prompt": false, "question": "q", "reference": "r", "route": route,
                "over_budget": false, "local_text": "", "answer": "", "correct": correct,
                "local_tokens": 3, "cloud_tokens": 0, "latency_ms": 1.0, "first_token_ms": null
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("problems.jsonl"), text).unwrap();
}

/// Problem i: id 100 + i, difficulty 1 for the first half and 2 for the second, subset
/// "everyday" for even i and "held-out-phrasing" for odd.
fn problem(i: usize) -> (u64, u32, &'static str) {
    let subset = if i.is_multiple_of(2) {
        "everyday"
    } else {
        "held-out-phrasing"
    };
    (100 + i as u64, 1 + u32::from(i >= N / 2), subset)
}

/// local: right on i % 4 == 0 (5 of 20), never offloads. routed: the same, and sends i % 4 == 1
/// (5 more) to the cloud, which gets them right. cloud: everything out, right but on i % 10 == 9.
fn methods(root: &Path) -> [PathBuf; 3] {
    let local: Vec<_> = (0..N)
        .map(|i| {
            let (id, d, s) = problem(i);
            (id, d, s, "local", i % 4 == 0)
        })
        .collect();
    // Listed backwards: problems are matched by id, not by line.
    let routed: Vec<_> = (0..N)
        .rev()
        .map(|i| {
            let (id, d, s) = problem(i);
            let route = if i % 4 == 1 { "cloud" } else { "local" };
            (id, d, s, route, i % 4 <= 1)
        })
        .collect();
    let cloud: Vec<_> = (0..N)
        .map(|i| {
            let (id, d, s) = problem(i);
            (id, d, s, "cloud", i % 10 != 9)
        })
        .collect();
    let dirs = [root.join("local"), root.join("routed"), root.join("cloud")];
    write_eval(&dirs[0], &local);
    write_eval(&dirs[1], &routed);
    write_eval(&dirs[2], &cloud);
    dirs
}

fn compare(evals: &[(&str, &Path)], extra: &[&str], out: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfroute-train"));
    cmd.arg("compare");
    for (name, dir) in evals {
        cmd.arg("--eval").arg(format!("{name}={}", dir.display()));
    }
    cmd.args(extra).arg("--out").arg(out);
    cmd.output().expect("selfroute-train runs")
}

/// P(X <= k) for X ~ Binomial(n, p), summed term by term.
fn binomial_cdf(n: usize, p: f64, k: usize) -> f64 {
    let mut term = (1.0 - p).powi(n as i32); // P(X = 0)
    let mut total = term;
    for j in 1..=k {
        term *= (n - j + 1) as f64 / j as f64 * p / (1.0 - p);
        total += term;
    }
    total
}

/// The q-quantile of Binomial(n, p)/n: the smallest k/n whose cumulative probability reaches q.
fn binomial_quantile(n: usize, p: f64, q: f64) -> f64 {
    (0..=n)
        .find(|&k| binomial_cdf(n, p, k) >= q)
        .map_or(1.0, |k| k as f64 / n as f64)
}

/// A bound from R = 10000 resamples sits where the exact distribution puts its share, give or
/// take the sampling error of a quantile (sd sqrt(q(1-q)/R) ~ 0.0016).
fn assert_bound(value: &Value, q: f64, n: usize, p: f64, what: &str) {
    let got = value.as_f64().unwrap();
    let lo = binomial_quantile(n, p, q - 0.008);
    let hi = binomial_quantile(n, p, q + 0.008);
    assert!(
        got >= lo - 1e-12 && got <= hi + 1e-12,
        "{what}: {got} outside the exact [{lo}, {hi}]"
    );
}

fn assert_interval(interval: &Value, estimate: f64, n: usize, what: &str) {
    assert!(
        (interval["estimate"].as_f64().unwrap() - estimate).abs() < 1e-12,
        "{what}: {interval}"
    );
    assert_bound(&interval["low"], 0.025, n, estimate, what);
    assert_bound(&interval["high"], 0.975, n, estimate, what);
}

fn method<'a>(group: &'a Value, name: &str) -> &'a Value {
    group["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no method {name} in {group}"))
}

#[test]
fn compare_writes_intervals_and_paired_differences() {
    let root = dir("ok");
    let [local, routed, cloud] = methods(&root);
    let out = root.join("out");
    let run = compare(
        &[("local", &local), ("routed", &routed), ("cloud", &cloud)],
        &["--resamples", "10000", "--seed", "3"],
        &out,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["baseline"], "local");
    assert_eq!(c["resamples"], 10000);
    let all = &c["overall"];
    assert_eq!(all["n"], N);

    // Each method's accuracy: K right of 20 resamples as Binomial(20, K/20)/20.
    assert_interval(&method(all, "local")["accuracy"], 0.25, N, "local accuracy");
    assert_interval(
        &method(all, "routed")["accuracy"],
        0.5,
        N,
        "routed accuracy",
    );
    assert_interval(&method(all, "cloud")["accuracy"], 0.9, N, "cloud accuracy");
    assert_interval(
        &method(all, "routed")["local_accuracy"],
        0.25,
        N,
        "routed local",
    );
    assert_interval(
        &method(all, "routed")["offload_share"],
        0.25,
        N,
        "routed offload",
    );
    assert_eq!(method(all, "cloud")["local_accuracy"]["high"], 0.0);
    assert_eq!(method(all, "cloud")["offload_share"]["low"], 1.0);

    // routed − local: 5 discordant problems, all for routed. Paired, the difference is
    // Binomial(20, 0.25)/20 and never below 0; resampled apart it would reach well below.
    let against = all["against_baseline"].as_array().unwrap();
    let names: Vec<(&str, &str)> = against
        .iter()
        .map(|d| (d["method"].as_str().unwrap(), d["versus"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("routed", "local"), ("cloud", "local")]);
    let routed_vs_local = &against[0];
    assert_interval(&routed_vs_local["accuracy"], 0.25, N, "routed - local");
    assert_interval(
        &routed_vs_local["offload_share"],
        0.25,
        N,
        "offload difference",
    );
    assert_eq!(routed_vs_local["accuracy"]["excludes_zero"], true);

    let pairs: Vec<(&str, &str)> = all["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["method"].as_str().unwrap(), d["versus"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [("routed", "local"), ("cloud", "local"), ("cloud", "routed")]
    );

    // Per difficulty: level 1 is problems 0-9 (local right on 0, 4, 8; routed also on 1, 5, 9).
    let levels = c["by_difficulty"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(
        (&levels[0]["difficulty"], &levels[0]["n"]),
        (&json!(1), &json!(10))
    );
    assert_interval(
        &method(&levels[0], "local")["accuracy"],
        0.3,
        10,
        "level 1 local",
    );
    assert_interval(
        &method(&levels[1], "routed")["accuracy"],
        0.4,
        10,
        "level 2 routed",
    );

    // Per subset: routed offloads only odd problems, so on the even ("everyday") ones it is
    // local itself, and their difference is exactly 0 in every resample.
    let subsets = c["by_subset"].as_array().unwrap();
    let everyday = &subsets[0];
    assert_eq!(
        (&everyday["subset"], &everyday["n"]),
        (&json!("everyday"), &json!(10))
    );
    let same = &everyday["against_baseline"][0]["accuracy"];
    assert_eq!((&same["low"], &same["high"]), (&json!(0.0), &json!(0.0)));
    assert_eq!(same["excludes_zero"], false);
    assert_eq!(subsets[1]["subset"], "held-out-phrasing");
    assert_interval(
        &method(&subsets[1], "routed")["offload_share"],
        0.5,
        10,
        "held-out offload",
    );

    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| routed − local | +25.0 ["), "{md}");
    assert!(md.contains("### subset held-out-phrasing (N = 10)"), "{md}");

    // --baseline picks another reference; the same seed gives the same numbers.
    let again = root.join("again");
    let run = compare(
        &[("local", &local), ("routed", &routed), ("cloud", &cloud)],
        &["--resamples", "10000", "--seed", "3", "--baseline", "cloud"],
        &again,
    );
    assert!(run.status.success());
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("compare.json")).unwrap())
            .unwrap();
    assert_eq!(d["baseline"], "cloud");
    assert_eq!(d["overall"]["methods"], c["overall"]["methods"]);
    assert_eq!(d["overall"]["pairs"], c["overall"]["pairs"]);
    assert_eq!(d["overall"]["against_baseline"][0]["versus"], "cloud");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn evaluations_of_other_problems_are_refused() {
    let root = dir("mismatch");
    let [local, routed, _] = methods(&root);
    // One problem replaced by another.
    let other = root.join("other");
    let lines: Vec<_> = (0..N)
        .map(|i| {
            let (id, d, s) = problem(i);
            (if i == 7 { 999 } else { id }, d, s, "local", true)
        })
        .collect();
    write_eval(&other, &lines);
    // One problem short.
    let fewer = root.join("fewer");
    let lines: Vec<_> = (1..N)
        .map(|i| {
            let (id, d, s) = problem(i);
            (id, d, s, "local", true)
        })
        .collect();
    write_eval(&fewer, &lines);
    for bad in [&other, &fewer] {
        let run = compare(
            &[("local", &local), ("routed", &routed), ("bad", bad)],
            &["--resamples", "100"],
            &root.join("out"),
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(
            stderr.contains(&bad.display().to_string()) && stderr.contains("other problems"),
            "{stderr}"
        );
        assert!(!root.join("out").join("compare.json").exists());
    }
    // A baseline that is none of the methods, and a lone evaluation.
    let run = compare(
        &[("local", &local), ("routed", &routed)],
        &["--baseline", "nope"],
        &root.join("out"),
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--baseline nope"));
    let run = compare(&[("local", &local)], &[], &root.join("out"));
    assert!(!run.status.success());
    let _ = std::fs::remove_dir_all(&root);
}

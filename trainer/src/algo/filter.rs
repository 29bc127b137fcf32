//! Adaptive prompt filtering (the paper's guard against policy collapse): keep prompts the model
//! can solve locally (D1) and at most rho * |D1| prompts it can only solve with the cloud (D2).

use selfroute_core::rng::SplitMix64;

/// What one prompt's group of responses achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSummary {
    /// Local responses whose answer is correct.
    pub local_correct: usize,
    /// Responses that offloaded.
    pub offloaded: usize,
    /// The cloud's (cached) answer to this prompt is correct.
    pub cloud_correct: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterOutcome {
    /// Indices of the prompts with at least one correct local response.
    pub d1: Vec<usize>,
    /// Indices of the kept "needs the cloud" prompts, in ascending order.
    pub d2: Vec<usize>,
    pub dropped: Vec<usize>,
}

impl FilterOutcome {
    /// The prompts the update uses, ascending.
    pub fn kept(&self) -> Vec<usize> {
        let mut kept: Vec<usize> = self.d1.iter().chain(&self.d2).copied().collect();
        kept.sort_unstable();
        kept
    }
}

/// Splits a batch into D1, D2 (a seeded random subset of at most `rho * |D1|` of the qualifying
/// prompts, that quota rounded stochastically) and the dropped rest. `rho = None` is `--no-filter`: everything is kept
/// (in D1 if locally solved, else D2).
pub fn adaptive_filter(
    groups: &[GroupSummary],
    rho: Option<f64>,
    rng: &mut SplitMix64,
) -> FilterOutcome {
    let mut out = FilterOutcome::default();
    let mut candidates = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if g.local_correct > 0 {
            out.d1.push(i);
        } else if rho.is_none() {
            out.d2.push(i);
        } else if g.cloud_correct && g.offloaded > 0 {
            candidates.push(i);
        } else {
            out.dropped.push(i);
        }
    }
    let Some(rho) = rho else {
        return out;
    };
    let cap = d2_quota(rho * out.d1.len() as f64, rng);
    // Partial Fisher-Yates: the first `cap` entries become a uniform random subset.
    let take = cap.min(candidates.len());
    for i in 0..take {
        let j = i + rng.below((candidates.len() - i) as u64) as usize;
        candidates.swap(i, j);
    }
    out.dropped.extend_from_slice(&candidates[take..]);
    candidates.truncate(take);
    candidates.sort_unstable();
    out.d2 = candidates;
    out.dropped.sort_unstable();
    out
}

/// `quota` rounded down or up at random, up with the probability of its fractional part, so
/// that rho holds on average: rounded down alone, a step with |D1| <= 2 would keep no "needs the
/// cloud" prompt at all (3/7 * 2 < 1), and small batches would only ever push offloading down.
fn d2_quota(quota: f64, rng: &mut SplitMix64) -> usize {
    let quota = quota.max(0.0);
    // The epsilon keeps e.g. 3/7 * 7 at exactly 3 whatever the float rounding.
    let whole = (quota + 1e-9).floor();
    let fraction = quota - whole;
    let up = fraction > 1e-9 && rng.next_f64() < fraction;
    whole as usize + usize::from(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solved() -> GroupSummary {
        GroupSummary {
            local_correct: 2,
            offloaded: 1,
            cloud_correct: true,
        }
    }
    fn needs_cloud() -> GroupSummary {
        GroupSummary {
            local_correct: 0,
            offloaded: 3,
            cloud_correct: true,
        }
    }
    fn hopeless() -> GroupSummary {
        GroupSummary {
            local_correct: 0,
            offloaded: 3,
            cloud_correct: false,
        }
    }

    #[test]
    fn d2_is_capped_at_rho_times_d1() {
        let mut groups = vec![solved(); 7];
        groups.extend(vec![needs_cloud(); 10]);
        groups.push(hopeless());
        // A prompt the cloud would solve but no response offloaded: nothing to reinforce.
        groups.push(GroupSummary {
            local_correct: 0,
            offloaded: 0,
            cloud_correct: true,
        });
        let out = adaptive_filter(&groups, Some(3.0 / 7.0), &mut SplitMix64::new(1));
        assert_eq!(out.d1, (0..7).collect::<Vec<_>>());
        assert_eq!(out.d2.len(), 3);
        assert!(out.d2.iter().all(|&i| (7..17).contains(&i)));
        assert_eq!(out.dropped.len(), 7 + 2);
        assert!(out.dropped.contains(&17) && out.dropped.contains(&18));
        assert_eq!(out.kept().len(), 10);
        // At most 30% of the update is "needs the cloud".
        assert!(out.d2.len() as f64 / out.kept().len() as f64 <= 0.3 + 1e-12);
    }

    #[test]
    fn the_subset_is_seeded_and_uniform() {
        let mut groups = vec![solved(); 7];
        groups.extend(vec![needs_cloud(); 10]);
        let a = adaptive_filter(&groups, Some(3.0 / 7.0), &mut SplitMix64::new(5));
        let b = adaptive_filter(&groups, Some(3.0 / 7.0), &mut SplitMix64::new(5));
        assert_eq!(a, b);
        let mut counts = [0usize; 10];
        let mut rng = SplitMix64::new(9);
        for _ in 0..3000 {
            for i in adaptive_filter(&groups, Some(3.0 / 7.0), &mut rng).d2 {
                counts[i - 7] += 1;
            }
        }
        // Each candidate is picked with probability 3/10: ~900 of 3000.
        assert!(
            counts.iter().all(|&c| (780..1020).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_d2_quota_holds_rho_on_average_for_small_d1() {
        let rho = 3.0 / 7.0;
        for d1 in 1..=4usize {
            let mut groups = vec![solved(); d1];
            groups.extend(vec![needs_cloud(); 10]);
            let mut rng = SplitMix64::new(d1 as u64);
            let runs = 20_000;
            let mut kept = 0usize;
            for _ in 0..runs {
                let n = adaptive_filter(&groups, Some(rho), &mut rng).d2.len();
                let exact = rho * d1 as f64;
                assert!(
                    n == exact.floor() as usize || n == exact.ceil() as usize,
                    "|D1| = {d1}: {n} is not a rounding of {exact}"
                );
                kept += n;
            }
            let mean = kept as f64 / runs as f64;
            // The binomial standard error of the rounding is under 0.004 at 20k runs.
            assert!(
                (mean - rho * d1 as f64).abs() < 0.015,
                "|D1| = {d1}: mean D2 {mean}, rho |D1| = {}",
                rho * d1 as f64
            );
        }
    }

    #[test]
    fn no_d1_means_no_d2_and_no_filter_keeps_everything() {
        let groups = vec![needs_cloud(), hopeless()];
        let out = adaptive_filter(&groups, Some(3.0 / 7.0), &mut SplitMix64::new(1));
        assert!(out.d1.is_empty() && out.d2.is_empty());
        assert_eq!(out.dropped, vec![0, 1]);
        let all = adaptive_filter(&groups, None, &mut SplitMix64::new(1));
        assert_eq!(all.kept(), vec![0, 1]);
        assert!(all.dropped.is_empty());
    }
}

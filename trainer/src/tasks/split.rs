//! Content-hash split assignment and the seeded collection loop shared by the generated tasks.

use std::collections::HashSet;

use selfroute_core::rng::SplitMix64;

use super::{Problem, Split, invalid};
use crate::Result;

/// One problem in this many goes to the test split.
const TEST_ONE_IN: u64 = 10;

/// FNV-1a, 64-bit: stable across platforms and releases (unlike `DefaultHasher`), so a problem's
/// id and split never change under a caller's feet.
pub(crate) fn content_hash(content: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in content.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The split a problem belongs to. FNV's low bits follow the last bytes closely (questions that
/// differ in one digit would fall in the same residue class), so the hash is mixed first.
pub(crate) fn split_of(id: u64) -> Split {
    let mut z = id;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z.is_multiple_of(TEST_ONE_IN) {
        Split::Test
    } else {
        Split::Train
    }
}

/// Draws candidates from a generator seeded with `seed` until `n` distinct problems of `split` are
/// found. Draws are sequential, so the first `k` problems for a seed are the same whatever `n` is.
/// Gives up after a bounded number of draws: a small problem space cannot loop forever.
pub(crate) fn collect(
    spec: &str,
    split: Split,
    n: usize,
    seed: u64,
    mut generate: impl FnMut(&mut SplitMix64) -> Option<Problem>,
) -> Result<Vec<Problem>> {
    collect_assigned(spec, split, n, seed, |rng| {
        generate(rng).filter(|problem| split_of(problem.id) == split)
    })
}

/// [`collect`] for a generator that assigns splits itself and yields only problems of `split`
/// (a task with questions reserved for the test split, which the id's hash cannot express).
pub(crate) fn collect_assigned(
    spec: &str,
    split: Split,
    n: usize,
    seed: u64,
    mut generate: impl FnMut(&mut SplitMix64) -> Option<Problem>,
) -> Result<Vec<Problem>> {
    // Enough for the 1-in-10 test split plus duplicates in any space that can hold n problems;
    // exhausting it means the space is (nearly) too small.
    let max_draws = 20_000usize.saturating_add(n.saturating_mul(200));
    let mut rng = SplitMix64::new(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n.min(1 << 16));
    let mut draws = 0usize;
    while out.len() < n {
        if draws >= max_draws {
            return Err(invalid(
                spec,
                format!(
                    "found only {} distinct {split} problems in {draws} draws, {n} asked; \
                     the task has too few problems for that",
                    out.len()
                ),
            ));
        }
        draws += 1;
        let Some(problem) = generate(&mut rng) else {
            continue;
        };
        if seen.insert(problem.id) {
            out.push(problem);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(content_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn about_one_in_ten_goes_to_test() {
        let tests = (0..10_000)
            .filter(|i| split_of(content_hash(&format!("What is {i} + 1?"))) == Split::Test)
            .count();
        assert!((800..1200).contains(&tests), "{tests} of 10000 in test");
    }

    #[test]
    fn too_small_a_space_errors_instead_of_looping() {
        let result = collect("tiny", Split::Train, 50, 1, |rng| {
            let q = format!("q{}", rng.below(5));
            Some(Problem {
                id: content_hash(&q),
                question: q,
                answer: String::new(),
                difficulty: 0,
                system: None,
                subset: String::new(),
            })
        });
        assert!(result.is_err());
    }
}

//! The cloud budget: a cap on the share of requests that go to the cloud, over a sliding window.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// At most `floor(share * window)` cloud calls in any `window` consecutive requests.
///
/// The cap is checked against the last `window - 1` decisions plus the new one, so it holds for
/// every window, including the first requests of a session (which may use the whole allowance).
#[derive(Debug, Clone)]
pub struct CloudBudget {
    max_calls: usize,
    window: usize,
    /// The last `window - 1` decisions, oldest first; true = went to the cloud.
    recent: VecDeque<bool>,
}

pub const DEFAULT_BUDGET_SHARE: f64 = 0.3;
pub const DEFAULT_BUDGET_WINDOW: usize = 20;

impl Default for CloudBudget {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET_SHARE, DEFAULT_BUDGET_WINDOW).expect("valid default budget")
    }
}

impl CloudBudget {
    pub fn new(share: f64, window: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::InvalidRouting(format!(
                "cloud budget {share} must be a share between 0 and 1"
            )));
        }
        if window == 0 {
            return Err(Error::InvalidRouting(
                "the cloud budget window must hold at least one request".into(),
            ));
        }
        // The epsilon keeps e.g. 0.3 * 20 at 6 whatever the rounding of 0.3.
        let max_calls = ((share * window as f64) + 1e-9).floor() as usize;
        Ok(Self {
            max_calls,
            window,
            recent: VecDeque::with_capacity(window),
        })
    }

    /// No cap.
    pub fn unlimited() -> Self {
        Self::new(1.0, 1).expect("valid budget")
    }

    /// Whether the next request may go to the cloud.
    pub fn allows_cloud(&self) -> bool {
        self.calls_in_window() < self.max_calls
    }

    /// Records where a request went.
    pub fn record(&mut self, went_to_cloud: bool) {
        if self.window == 1 {
            return;
        }
        if self.recent.len() == self.window - 1 {
            self.recent.pop_front();
        }
        self.recent.push_back(went_to_cloud);
    }

    /// Cloud calls among the last `window - 1` requests.
    pub fn calls_in_window(&self) -> usize {
        self.recent.iter().filter(|&&c| c).count()
    }

    pub fn max_calls(&self) -> usize {
        self.max_calls
    }

    pub fn window(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every window of `window` consecutive decisions has at most `max` cloud calls.
    fn holds(decisions: &[bool], window: usize, max: usize) -> bool {
        decisions
            .windows(window.min(decisions.len()))
            .all(|w| w.iter().filter(|&&c| c).count() <= max)
    }

    #[test]
    fn the_default_allows_six_in_twenty() {
        let mut b = CloudBudget::default();
        assert_eq!(b.max_calls(), 6);
        let mut decisions = Vec::new();
        for _ in 0..100 {
            let cloud = b.allows_cloud();
            b.record(cloud);
            decisions.push(cloud);
        }
        assert_eq!(decisions.iter().take(20).filter(|&&c| c).count(), 6);
        assert!(holds(&decisions, 20, 6));
        assert_eq!(decisions.iter().filter(|&&c| c).count(), 30);
    }

    #[test]
    fn the_cap_holds_for_mixed_demand() {
        let mut b = CloudBudget::new(0.25, 8).unwrap();
        let mut decisions = Vec::new();
        let mut state = 7u64;
        for _ in 0..500 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let wants = (state >> 33).is_multiple_of(3);
            let cloud = wants && b.allows_cloud();
            b.record(cloud);
            decisions.push(cloud);
        }
        assert!(holds(&decisions, 8, 2));
        assert!(decisions.iter().any(|&c| c));
    }

    #[test]
    fn zero_and_one() {
        assert!(!CloudBudget::new(0.0, 10).unwrap().allows_cloud());
        let mut all = CloudBudget::unlimited();
        for _ in 0..10 {
            assert!(all.allows_cloud());
            all.record(true);
        }
        assert!(CloudBudget::new(1.5, 10).is_err());
        assert!(CloudBudget::new(f64::NAN, 10).is_err());
        assert!(CloudBudget::new(0.3, 0).is_err());
    }
}

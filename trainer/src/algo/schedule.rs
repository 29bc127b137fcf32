//! Linear warmup, then a constant rate or a cosine decay to a floor.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The rate at the end, as a fraction of `peak`.
    pub final_fraction: f64,
}

impl LrSchedule {
    /// `peak` after a linear warmup, held to the end: a short run (the paper's 2e-6 is paired
    /// with 800 steps) spends its whole budget of steps at the rate a pilot sweep chose.
    pub fn constant(peak: f64, warmup_steps: usize) -> Self {
        Self {
            peak,
            warmup_steps,
            total_steps: warmup_steps,
            final_fraction: 1.0,
        }
    }

    /// A linear warmup, then a cosine decay to a tenth of `peak` at `total_steps`.
    pub fn cosine(peak: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            peak,
            warmup_steps,
            total_steps,
            final_fraction: 0.1,
        }
    }

    /// The rate for `step` (counting from 0).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = self.peak * self.final_fraction;
        floor + 0.5 * (self.peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = LrSchedule {
            peak: 1e-5,
            warmup_steps: 4,
            total_steps: 104,
            final_fraction: 0.1,
        };
        assert!((s.at(0) - 2.5e-6).abs() < 1e-18);
        assert!((s.at(3) - 1e-5).abs() < 1e-18);
        assert!((s.at(4) - 1e-5).abs() < 1e-18);
        assert!((s.at(54) - 0.55e-5).abs() < 1e-12, "{}", s.at(54));
        assert!((s.at(104) - 1e-6).abs() < 1e-15);
        assert!((s.at(500) - 1e-6).abs() < 1e-15);
        assert!((1..200).all(|i| s.at(i + 4) <= s.at(i + 3) + 1e-18));
        assert_eq!(LrSchedule::cosine(1e-5, 4, 104), s);
    }

    #[test]
    fn constant_holds_the_peak_after_warmup() {
        let s = LrSchedule::constant(3e-5, 2);
        assert!((s.at(0) - 1.5e-5).abs() < 1e-18);
        for step in 1..500 {
            assert!(
                (s.at(step) - 3e-5).abs() < 1e-18,
                "step {step}: {}",
                s.at(step)
            );
        }
        let no_warmup = LrSchedule::constant(3e-5, 0);
        assert!((no_warmup.at(0) - 3e-5).abs() < 1e-18);
    }
}

//! Linear warmup, then cosine decay to a floor.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The rate at the end, as a fraction of `peak`.
    pub final_fraction: f64,
}

impl LrSchedule {
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
    }
}

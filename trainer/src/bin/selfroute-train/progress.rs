//! The training progress display.

/// The progress line on a terminal (a bar with the key figures, each step's line above it), or
/// one plain line per step when stderr is a file or pipe.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(steps: usize, done: usize) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_position(done as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar }
    }

    pub fn step(&self, m: &selfroute_train::train::StepMetrics) {
        let mut line = format!(
            "step {:>4} · reward {:.3}±{:.3} · local acc {:.2} · offload {:.2} · D1 {} D2 {} dropped {} · grad {:.3} · {:.1} tok/s · {:.1} s (rollout {:.1}, fwd/bwd {:.1}, optimiser {:.1})",
            m.step,
            m.reward_mean,
            m.reward_std,
            m.local_accuracy,
            m.offload_rate,
            m.d1,
            m.d2,
            m.dropped,
            m.grad_norm,
            m.tokens_per_s,
            m.step_s,
            m.rollout_s,
            m.forward_backward_s,
            m.optimizer_s
        );
        // Rare events, shown only when they happen.
        if m.skipped_prompts > 0 {
            line.push_str(&format!(
                " · {} prompts skipped (longer than the context)",
                m.skipped_prompts
            ));
        }
        if m.cloud_failures > 0 {
            line.push_str(&format!(
                " · {} cloud calls failed (scored as wrong)",
                m.cloud_failures
            ));
        }
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.set_message(format!(
                    "reward {:.3} · offload {:.2} · {:.1} s/step",
                    m.reward_mean, m.offload_rate, m.step_s
                ));
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

//! The training figure: six panels of per-step metrics, one line per run, one legend for all.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::metrics::Row;
use super::{Figure, Result, Run, TRAINING_SIZE, draw_err, padded_range, series_color};

pub(super) struct Training<'a> {
    pub runs: &'a [Run],
}

/// What a panel shows: its title, its y axis with unit, and how to read the value from a step.
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    value: fn(&Row) -> f64,
    /// Half-height of the y range when every value is equal (counts want whole units).
    flat_pad: f64,
    /// Percentages stay within 0..100.
    percent: bool,
    /// Decimals on the y labels (counts are whole).
    decimals: usize,
}

const PANELS: [Panel; 6] = [
    Panel {
        title: "Reward (mean over responses)",
        y_desc: "reward",
        value: |r| r.reward_mean,
        flat_pad: 0.1,
        percent: false,
        decimals: 2,
    },
    Panel {
        title: "Local accuracy",
        y_desc: "correct local answers (% of responses)",
        value: |r| 100.0 * r.local_accuracy,
        flat_pad: 5.0,
        percent: true,
        decimals: 0,
    },
    Panel {
        title: "Offload rate",
        y_desc: "offloaded (% of responses)",
        value: |r| 100.0 * r.offload_rate,
        flat_pad: 5.0,
        percent: true,
        decimals: 0,
    },
    Panel {
        title: "|D1|: prompts with a correct local answer",
        y_desc: "prompts per step",
        value: |r| r.d1 as f64,
        flat_pad: 1.0,
        percent: false,
        decimals: 0,
    },
    Panel {
        title: "|D2|: prompts only the cloud solved",
        y_desc: "prompts per step",
        value: |r| r.d2 as f64,
        flat_pad: 1.0,
        percent: false,
        decimals: 0,
    },
    Panel {
        title: "Response length (local part)",
        y_desc: "tokens per response (mean)",
        value: |r| r.response_tokens_mean,
        flat_pad: 1.0,
        percent: false,
        decimals: 0,
    },
];

const FONT: &str = "sans-serif";

impl Figure for Training<'_> {
    const STEM: &'static str = "training";
    const SIZE: (u32, u32) = TRAINING_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let err = || draw_err("the training figure");
        let steps: usize = self.runs.iter().map(Run::steps).sum();
        let title = format!(
            "selfroute-train: training curves ({} run{}, {steps} steps in all)",
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" }
        );
        let body = root
            .margin(10, 10, 10, 10)
            .titled(&title, (FONT, 26))
            .map_err(err())?;
        let (header, body) = body.split_vertically(44);
        legend(&header, self.runs)?;

        let (x_lo, x_hi) = self
            .runs
            .iter()
            .flat_map(|r| r.rows.iter().map(|row| row.step as f64))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
                (lo.min(s), hi.max(s))
            });
        // One step still gets an axis of width 1 to sit in.
        let x_range = if x_hi > x_lo {
            x_lo..x_hi
        } else {
            x_lo - 0.5..x_lo + 0.5
        };

        for (panel, area) in PANELS.iter().zip(body.split_evenly((2, 3))) {
            let values = self
                .runs
                .iter()
                .flat_map(|r| r.rows.iter().map(panel.value));
            let bounds = panel.percent.then_some((0.0, 100.0));
            let y_range = padded_range(values, panel.flat_pad, bounds);
            let mut chart = ChartBuilder::on(&area)
                .caption(panel.title, (FONT, 18))
                .margin(12)
                .x_label_area_size(42)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range.clone(), y_range)
                .map_err(err())?;
            chart
                .configure_mesh()
                .x_desc("training step")
                .y_desc(panel.y_desc)
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.*}", panel.decimals))
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err())?;
            for (i, run) in self.runs.iter().enumerate() {
                let color = series_color(i);
                let points = run.rows.iter().map(|r| (r.step as f64, (panel.value)(r)));
                // A one-step run has no line to draw: mark its point instead.
                let marker = if run.rows.len() == 1 { 4 } else { 0 };
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(marker))
                    .map_err(err())?;
            }
        }
        Ok(())
    }
}

/// One legend for the whole figure, in a row under the title: the runs are the same in every
/// panel, and a legend per panel would cover data in six places.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[Run]) -> Result<()> {
    let err = || draw_err("the training legend");
    let style = (FONT, 16).into_font().color(&BLACK);
    let (width, _) = area.dim_in_pixel();
    let (mut x, mut y) = (20i32, 12i32);
    for (i, run) in runs.iter().enumerate() {
        let label = format!("{} ({} steps)", run.label, run.steps());
        let (text_w, _) = area.estimate_text_size(&label, &style).map_err(err())?;
        let entry_w = 36 + text_w as i32 + 28;
        // Wrap to a second row rather than run off the figure.
        if x > 20 && x + entry_w > width as i32 {
            x = 20;
            y += 20;
        }
        let color = series_color(i);
        area.draw(&PathElement::new(
            vec![(x, y + 8), (x + 28, y + 8)],
            color.stroke_width(3),
        ))
        .map_err(err())?;
        area.draw(&Text::new(label, (x + 36, y), style.clone()))
            .map_err(err())?;
        x += entry_w;
    }
    Ok(())
}

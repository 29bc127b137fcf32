//! The cost-quality figure: accuracy against the share of queries sent to the cloud, as
//! RouteLLM draws it (one line per method, the weak and strong models as dashed lines), with
//! each method's APGR and CPT in its legend entry.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{CURVE_SIZE, Figure, Result, draw_err, padded_range, series_color};
use crate::curve::Curve;

pub(super) struct CostQuality<'a> {
    pub curve: &'a Curve,
}

const FONT: &str = "sans-serif";
const CLOUD_COLOR: RGBColor = RGBColor(200, 0, 0);
const LOCAL_COLOR: RGBColor = RGBColor(90, 90, 90);

/// A legend entry: the method and, when the curve has a gap to recover, its RouteLLM numbers.
fn method_label(curve: &Curve, method: &str) -> String {
    let pct = |share: Option<f64>| match share {
        Some(s) => format!("{:.0}%", 100.0 * s),
        None => "never".to_string(),
    };
    match (
        curve.apgr(method),
        curve.cpt(method, 0.5),
        curve.cpt(method, 0.8),
    ) {
        (Ok(apgr), Ok(cpt50), Ok(cpt80)) => format!(
            "{method}: APGR {apgr:.3}, CPT(50%) {}, CPT(80%) {}",
            pct(cpt50),
            pct(cpt80)
        ),
        // No gap (the cloud no better than local): the line is still worth seeing.
        _ => method.to_string(),
    }
}

impl Figure for CostQuality<'_> {
    const STEM: &'static str = "cost_quality";
    const SIZE: (u32, u32) = CURVE_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let err = || draw_err("the cost-quality figure");
        let curve = self.curve;
        let accuracies = curve
            .points
            .iter()
            .map(|p| p.accuracy)
            .chain([curve.local_accuracy, curve.cloud_accuracy])
            .map(|a| 100.0 * a);
        let y_range = padded_range(accuracies, 5.0, Some((0.0, 100.0)));
        // A footnote spells out the legend's metrics, so the figure reads on its own.
        let (_, height) = root.dim_in_pixel();
        let (plot_area, footnote) = root.split_vertically(height.saturating_sub(30));
        footnote
            .draw(&Text::new(
                "APGR: average performance gap recovered, 0 = all local, 1 = cloud accuracy at \
                 no cost (RouteLLM). CPT(x%): cloud calls needed to recover x% of the gap.",
                (20, 4),
                (FONT, 13).into_font().color(&LOCAL_COLOR),
            ))
            .map_err(err())?;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption("Cost-quality: accuracy against cloud calls", (FONT, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..100.0, y_range)
            .map_err(err())?;
        chart
            .configure_mesh()
            .x_desc("cloud calls (% of queries)")
            .y_desc("accuracy (% of queries correct)")
            .x_labels(11)
            .y_labels(10)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(err())?;

        for (i, method) in curve.methods().into_iter().enumerate() {
            let color = series_color(i);
            let points = curve
                .measured(method)
                .into_iter()
                .map(|p| (100.0 * p.cloud_share, 100.0 * p.accuracy));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(4))
                .map_err(err())?
                .label(method_label(curve, method))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        for (name, accuracy, color) in [
            ("cloud only", curve.cloud_accuracy, CLOUD_COLOR),
            ("all local", curve.local_accuracy, LOCAL_COLOR),
        ] {
            let y = 100.0 * accuracy;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, y), (100.0, y)],
                    8,
                    6,
                    color.stroke_width(2),
                ))
                .map_err(err())?
                .label(format!("{name}: {y:.1}%"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .margin(12)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(err())?;
        Ok(())
    }
}

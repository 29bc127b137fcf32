//! `selfroute-train plot`: training curves from `metrics.jsonl` files and the cost-quality curve
//! from `curve.json`, as SVG and PNG. Needs the `plot` feature, so the default build carries no
//! plotting code.

#[cfg(feature = "plot")]
pub use with_plot::{PlotArgs, run};
#[cfg(not(feature = "plot"))]
pub use without_plot::{PlotArgs, run};

#[cfg(feature = "plot")]
mod with_plot {
    use std::path::PathBuf;

    use anyhow::{Result, bail};
    use clap::Args;
    use selfroute_train::curve::Curve;
    use selfroute_train::plot::{Plotter, read_run, run_labels};

    use crate::output::prepare_output_dir;

    #[derive(Args)]
    pub struct PlotArgs {
        /// A run's metrics.jsonl (written by `train`); repeat to compare runs on one chart, each
        /// labelled by its folder's name.
        #[arg(long, value_name = "PATH")]
        metrics: Vec<PathBuf>,
        /// A curve.json (written by `eval`): accuracy against cloud-call share per method.
        #[arg(long, value_name = "PATH")]
        curve: Option<PathBuf>,
        /// Folder for training.{svg,png} and cost_quality.{svg,png} (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A .ttf or .otf font for the text [default: DejaVu Sans or Liberation Sans where
        /// the system has them].
        #[arg(long, value_name = "PATH")]
        font: Option<PathBuf>,
    }

    pub fn run(args: PlotArgs) -> Result<()> {
        if args.metrics.is_empty() && args.curve.is_none() {
            bail!(
                "nothing to plot: give --metrics runs/NAME/metrics.jsonl (repeatable) and/or \
                 --curve curve.json"
            );
        }
        // Every input is read before anything is drawn, so a bad file costs no half-written
        // output folder.
        let labels = run_labels(&args.metrics);
        let runs = args
            .metrics
            .iter()
            .zip(labels)
            .map(|(path, label)| read_run(path, label))
            .collect::<Result<Vec<_>, _>>()?;
        let curve = args.curve.as_deref().map(Curve::read).transpose()?;
        let plotter = Plotter::new(args.font.as_deref())?;
        prepare_output_dir(&args.out)?;

        let mut written = Vec::new();
        if !runs.is_empty() {
            for run in &runs {
                for warning in &run.warnings {
                    eprintln!("warning: {warning}");
                }
            }
            written.extend(plotter.training(&runs, &args.out)?);
        }
        if let Some(curve) = &curve {
            written.extend(plotter.cost_quality(curve, &args.out)?);
            print_summary(curve);
        }
        for path in written {
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    /// RouteLLM's numbers as a table on stdout, for a log or a README.
    fn print_summary(curve: &Curve) {
        match curve.summary() {
            Ok(summary) => {
                let pct = |share: Option<f64>| match share {
                    Some(s) => format!("{:.1}%", 100.0 * s),
                    None => "never".to_string(),
                };
                println!(
                    "local only {:.1}%, cloud only {:.1}%",
                    100.0 * curve.local_accuracy,
                    100.0 * curve.cloud_accuracy
                );
                println!(
                    "{:<24} {:>7} {:>10} {:>10}",
                    "method", "APGR", "CPT(50%)", "CPT(80%)"
                );
                for m in summary {
                    println!(
                        "{:<24} {:>7.3} {:>10} {:>10}",
                        m.method,
                        m.apgr,
                        pct(m.cpt50),
                        pct(m.cpt80)
                    );
                }
            }
            // The chart is drawn all the same; only the numbers are undefined.
            Err(e) => eprintln!("note: no APGR or CPT: {e}"),
        }
    }
}

#[cfg(not(feature = "plot"))]
mod without_plot {
    use anyhow::{Result, bail};
    use clap::Args;

    #[derive(Args)]
    pub struct PlotArgs {
        /// (The arguments of a build with the `plot` feature.)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    }

    pub fn run(_args: PlotArgs) -> Result<()> {
        bail!(
            "this selfroute-train was built without plotting. Build it with the `plot` feature, \
             e.g. `cargo run -p selfroute-train --features plot -- plot --metrics \
             runs/NAME/metrics.jsonl --curve curve.json --out plots`"
        )
    }
}

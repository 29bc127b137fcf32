//! `selfroute-train curve`: several methods' cost-quality curves (each `eval --sweep`'s
//! curve.json) as one curve over shared references, with RouteLLM's APGR and CPT per method.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use selfroute_train::curve::Curve;

use crate::output::prepare_output_file;

#[derive(Args)]
pub struct CurveArgs {
    /// A curve.json from `eval --sweep` (repeat for more methods). The all-local and all-cloud
    /// references of the first one are the shared ones.
    #[arg(long = "curve", value_name = "PATH", required = true)]
    curves: Vec<PathBuf>,
    /// The merged curve.json; a markdown table of APGR and CPT is written beside it (.md).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

pub fn run(args: CurveArgs) -> Result<()> {
    prepare_output_file(&args.out)?;
    let mut merged: Option<Curve> = None;
    for path in &args.curves {
        let curve = Curve::read(path).with_context(|| format!("reading {}", path.display()))?;
        match &mut merged {
            None => merged = Some(curve),
            Some(all) => {
                let earlier: HashSet<String> =
                    all.methods().into_iter().map(String::from).collect();
                for point in curve.points {
                    if earlier.contains(&point.method) {
                        bail!(
                            "method `{}` of {} is already in an earlier curve: name the sweeps \
                             apart with eval --method",
                            point.method,
                            path.display()
                        );
                    }
                    all.points.push(point);
                }
            }
        }
    }
    let merged = merged.context("no --curve given")?;
    merged.write(&args.out)?;
    let table = markdown(&merged)?;
    let table_path = args.out.with_extension("md");
    std::fs::write(&table_path, &table)
        .with_context(|| format!("writing {}", table_path.display()))?;
    print!("{table}");
    eprintln!("wrote {} and {}", args.out.display(), table_path.display());
    Ok(())
}

fn markdown(curve: &Curve) -> Result<String> {
    let mut out = format!(
        "References: all local {:.1}%, all cloud {:.1}%.\n\n\
         | method | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---:|---:|\n",
        100.0 * curve.local_accuracy,
        100.0 * curve.cloud_accuracy
    );
    let share = |x: Option<f64>| x.map_or("never".to_string(), |x| format!("{:.1}%", 100.0 * x));
    for s in curve.summary()? {
        out.push_str(&format!(
            "| {} | {:.3} | {} | {} |\n",
            s.method,
            s.apgr,
            share(s.cpt50),
            share(s.cpt80)
        ));
    }
    Ok(out)
}

//! The cost-quality curve: accuracy against the share of queries sent to the cloud, one series
//! per method (selfroute's sweep of the offload bias, a prompt router's threshold, random
//! offloading, ...), and RouteLLM's summary numbers for it (arXiv:2406.18665, its metrics
//! section, and `routellm/evals/evaluate.py` in lm-sys/RouteLLM):
//!
//! - PGR(c) = (accuracy(c) - local) / (cloud - local): the performance gap recovered at cloud-call
//!   share c, where `local` is the all-local model's accuracy and `cloud` the cloud-only one.
//! - APGR = the area under PGR(c) for c from 0 to 1. RouteLLM computes it as
//!   `(AUC - AUC_weak) / (AUC_strong - AUC_weak)` with trapezoids (`np.trapz`) over the measured
//!   points; on a curve spanning shares 0 to 1 that is exactly the integral of the piecewise-linear
//!   PGR. A straight line from local to cloud scores 0.5, a router that recovers the whole gap at
//!   once scores 1, random routing about 0.5.
//! - CPT(x) = the smallest cloud-call share at which the curve reaches local + x * (cloud - local).
//!   RouteLLM reports CPT(50%) and CPT(80%).
//!
//! Choices where RouteLLM's code leaves room, made explicit here:
//! - Endpoints: RouteLLM's thresholds always include "everything to the weak model" and
//!   "everything to the strong model", so its curves run from share 0 (weak accuracy) to share 1
//!   (strong accuracy). A method here need not measure them (selfroute's evaluation caps the cloud
//!   share at its budget), so the curve gets (0, local) and (1, cloud) added where it has no
//!   measured point at that share. A measured point wins: selfroute kept fully local is the
//!   trained model, whose own accuracy may beat the untrained local model's.
//! - Several points at one share (several settings that all kept every query local) are merged
//!   into their mean accuracy, so the curve is a function of the share and does not depend on
//!   the order the points were listed in.
//! - Between points the curve is linear, as `np.trapz` and `np.interp` assume.
//! - CPT walks the curve from share 0 and returns the first crossing. RouteLLM's
//!   `np.interp(target, accuracy, share)` needs accuracy increasing with share and returns
//!   nonsense otherwise; on an increasing curve both agree, and the first crossing is the
//!   paper's "minimum percentage of calls" on any curve. A curve that never reaches the target
//!   (possible only when a measured point at share 1 falls short of it) has no CPT: `None`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One evaluation of one method at one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The series this point belongs to ("selfroute", "router", "random", ...).
    pub method: String,
    /// The knob that produced the point (offload-logit bias, router threshold, offload rate):
    /// kept for the record, not used by the metrics.
    pub setting: f64,
    /// Share of the evaluated queries sent to the cloud, in [0, 1].
    pub cloud_share: f64,
    /// Share of the evaluated queries answered correctly, local and cloud answers together, in
    /// [0, 1].
    pub accuracy: f64,
}

/// `curve.json`: every method's points and the two references they are measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub points: Vec<CurvePoint>,
    /// Accuracy of the local model answering everything itself, in [0, 1].
    pub local_accuracy: f64,
    /// Accuracy of the cloud model answering everything, in [0, 1].
    pub cloud_accuracy: f64,
}

/// One method's RouteLLM numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    pub apgr: f64,
    /// Cloud-call share needed to recover half the gap; None if the curve never does.
    pub cpt50: Option<f64>,
    /// Cloud-call share needed to recover 80% of the gap; None if the curve never does.
    pub cpt80: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not a curve.json (points: [{{method, setting, cloud_share, accuracy}}], \
         local_accuracy, cloud_accuracy): {source}",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the curve has no points")]
    Empty,
    #[error("point {index} has an empty method name")]
    EmptyMethod { index: usize },
    #[error("{what} is {value}, which is not a share in [0, 1]")]
    OutOfRange { what: String, value: f64 },
    #[error("the curve has no points for method {0:?}")]
    UnknownMethod(String),
    #[error(
        "the cloud's accuracy ({cloud}) is not above the local model's ({local}): there is no \
         performance gap to recover, so APGR and CPT are undefined"
    )]
    NoGap { local: f64, cloud: f64 },
    #[error("CPT level {0} is not a fraction of the gap in [0, 1]")]
    BadLevel(f64),
}

pub type Result<T, E = CurveError> = std::result::Result<T, E>;

/// How far below a CPT target an accuracy may be and still reach it: far above rounding error,
/// far below one answer in a billion.
const TOLERANCE: f64 = 1e-9;

/// A share must be a finite number in [0, 1]; NaN fails the range test too.
fn check_share(what: impl FnOnce() -> String, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(CurveError::OutOfRange {
            what: what(),
            value,
        })
    }
}

impl Curve {
    /// Reads and validates `curve.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CurveError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let curve: Curve = serde_json::from_str(&text).map_err(|source| CurveError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        curve.validate()?;
        Ok(curve)
    }

    /// Validates, then writes `curve.json` (pretty, so a reader can diff two evaluations). An
    /// invalid curve is refused here rather than when someone reads it back.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.validate()?;
        // Serialising plain numbers and strings does not fail; should it, it is a write error.
        let text = serde_json::to_string_pretty(self).map_err(|e| CurveError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| CurveError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Every point names a method and has its share and accuracy in [0, 1], as do the two
    /// references. Whether there is a gap to recover is checked by the metrics, not here: such
    /// a curve can still be drawn.
    pub fn validate(&self) -> Result<()> {
        if self.points.is_empty() {
            return Err(CurveError::Empty);
        }
        check_share(|| "local_accuracy".into(), self.local_accuracy)?;
        check_share(|| "cloud_accuracy".into(), self.cloud_accuracy)?;
        for (index, p) in self.points.iter().enumerate() {
            if p.method.trim().is_empty() {
                return Err(CurveError::EmptyMethod { index });
            }
            check_share(
                || format!("point {index} ({}) cloud_share", p.method),
                p.cloud_share,
            )?;
            check_share(
                || format!("point {index} ({}) accuracy", p.method),
                p.accuracy,
            )?;
        }
        Ok(())
    }

    /// The methods, in the order they first appear (the order a legend lists them).
    pub fn methods(&self) -> Vec<&str> {
        let mut methods: Vec<&str> = Vec::new();
        for p in &self.points {
            if !methods.contains(&p.method.as_str()) {
                methods.push(&p.method);
            }
        }
        methods
    }

    /// A method's measured points sorted by cloud share, as they are drawn (no added endpoints,
    /// no merging).
    pub fn measured(&self, method: &str) -> Vec<&CurvePoint> {
        let mut points: Vec<&CurvePoint> =
            self.points.iter().filter(|p| p.method == method).collect();
        // total_cmp: validated shares are never NaN, and an unvalidated NaN must not panic.
        points.sort_by(|a, b| a.cloud_share.total_cmp(&b.cloud_share));
        points
    }

    /// The curve the metrics integrate: `(share, accuracy)` pairs with strictly increasing
    /// shares from 0 to 1, points at one share merged into their mean, and (0, local) and
    /// (1, cloud) added where nothing was measured at that share (see the module docs).
    pub fn curve_of(&self, method: &str) -> Result<Vec<(f64, f64)>> {
        self.validate()?;
        let measured = self.measured(method);
        if measured.is_empty() {
            return Err(CurveError::UnknownMethod(method.to_string()));
        }
        let mut merged: Vec<(f64, f64, usize)> = Vec::with_capacity(measured.len() + 2);
        for p in measured {
            match merged.last_mut() {
                Some((share, sum, n)) if *share == p.cloud_share => {
                    *sum += p.accuracy;
                    *n += 1;
                }
                _ => merged.push((p.cloud_share, p.accuracy, 1)),
            }
        }
        let mut curve: Vec<(f64, f64)> = merged
            .into_iter()
            .map(|(share, sum, n)| (share, sum / n as f64))
            .collect();
        if curve.first().is_none_or(|&(share, _)| share > 0.0) {
            curve.insert(0, (0.0, self.local_accuracy));
        }
        if curve.last().is_none_or(|&(share, _)| share < 1.0) {
            curve.push((1.0, self.cloud_accuracy));
        }
        Ok(curve)
    }

    /// The gap between the references, refused when the cloud is not the better of the two
    /// (a zero gap would divide by zero; a negative one turns "recovering" upside down).
    fn gap(&self) -> Result<f64> {
        let gap = self.cloud_accuracy - self.local_accuracy;
        if gap > 0.0 {
            Ok(gap)
        } else {
            Err(CurveError::NoGap {
                local: self.local_accuracy,
                cloud: self.cloud_accuracy,
            })
        }
    }

    /// Average performance gap recovered: the trapezoid area under PGR over shares 0 to 1.
    /// Can leave [0, 1]: below 0 for a method worse than the local model, above 1 for one that
    /// beats the cloud.
    pub fn apgr(&self, method: &str) -> Result<f64> {
        let curve = self.curve_of(method)?;
        let gap = self.gap()?;
        let auc: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum();
        // The curve spans shares 0 to 1, so the local model's own area is `local` and the gap's
        // is `gap`: RouteLLM's (AUC - AUC_weak) / (AUC_strong - AUC_weak).
        Ok((auc - self.local_accuracy) / gap)
    }

    /// Call-performance threshold: the smallest cloud share at which the method's accuracy
    /// reaches local + `level` * (cloud - local), `level` in [0, 1] (0.5 for CPT(50%)). None
    /// when the curve never gets there.
    pub fn cpt(&self, method: &str, level: f64) -> Result<Option<f64>> {
        if !(0.0..=1.0).contains(&level) {
            return Err(CurveError::BadLevel(level));
        }
        let curve = self.curve_of(method)?;
        let gap = self.gap()?;
        let target = self.local_accuracy + level * gap;
        // Accuracies are ratios of counts: 0.4 + 0.5 * (0.8 - 0.4) comes out an ulp above 0.6,
        // and a point that hits the target exactly must count as reaching it.
        let reaches = |accuracy: f64| accuracy >= target - TOLERANCE;
        for (i, &(share, accuracy)) in curve.iter().enumerate() {
            if reaches(accuracy) {
                let Some(&(share0, accuracy0)) = i.checked_sub(1).and_then(|j| curve.get(j)) else {
                    return Ok(Some(share));
                };
                // The previous point falls short (else the walk had stopped there), so
                // accuracy > accuracy0 and the division is safe: the crossing on this segment,
                // clamped because the tolerance can put the target an ulp past this point.
                let t = ((target - accuracy0) / (accuracy - accuracy0)).clamp(0.0, 1.0);
                return Ok(Some(share0 + t * (share - share0)));
            }
        }
        Ok(None)
    }

    /// APGR, CPT(50%) and CPT(80%) for every method, in legend order.
    pub fn summary(&self) -> Result<Vec<MethodSummary>> {
        self.methods()
            .into_iter()
            .map(|method| {
                Ok(MethodSummary {
                    method: method.to_string(),
                    apgr: self.apgr(method)?,
                    cpt50: self.cpt(method, 0.5)?,
                    cpt80: self.cpt(method, 0.8)?,
                })
            })
            .collect()
    }
}

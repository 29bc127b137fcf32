//! Charts for `selfroute-train plot` (feature `plot`): training curves from `metrics.jsonl`
//! and the cost-quality curve from `curve.json`, each written as SVG and PNG.
//!
//! Pure Rust: plotters draws, ab_glyph lays out text from a TrueType file read at run time (no
//! fontconfig, no FreeType), `png` encodes the bitmap. The font is the one system file needed;
//! [`Plotter::new`] finds DejaVu Sans or Liberation Sans where distributions install them, or
//! takes a path, and says which package to install when there is none.

mod cost_quality;
mod metrics;
mod training;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::curve::{Curve, CurveError};

pub use metrics::{Run, read_run, run_labels};

/// Size in pixels of the training figure (six panels) and of the cost-quality figure.
pub const TRAINING_SIZE: (u32, u32) = (1500, 900);
pub const CURVE_SIZE: (u32, u32) = (1000, 700);

/// Series colours, in order (matplotlib's "tab10", which readers of TRL and W&B charts know):
/// run or method i is drawn in `SERIES_COLORS[i % 10]`.
pub const SERIES_COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn series_color(i: usize) -> RGBColor {
    let (r, g, b) = SERIES_COLORS[i % SERIES_COLORS.len()];
    RGBColor(r, g, b)
}

/// Where distributions put a sans-serif TrueType font, most common first.
pub const FONT_CANDIDATES: &[&str] = &[
    // Debian and Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    // Fedora: dejavu-sans-fonts
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    // Arch: ttf-dejavu
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    // Debian and Ubuntu: fonts-liberation
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "no font for the charts' text: none of {} exists. Install one (Debian/Ubuntu: \
         `apt-get install fonts-dejavu-core`) or pass --font PATH to a .ttf file",
        .0.join(", ")
    )]
    NoFont(Vec<String>),
    #[error("reading the font {}: {source}", path.display())]
    FontRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a TrueType or OpenType font", .0.display())]
    FontInvalid(PathBuf),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: not a metrics line ({source}): {excerpt}", path.display())]
    MetricsLine {
        path: PathBuf,
        line: usize,
        excerpt: String,
        source: serde_json::Error,
    },
    #[error("{} has no steps", .0.display())]
    NoSteps(PathBuf),
    #[error("nothing to plot: no metrics runs")]
    NoRuns,
    #[error(transparent)]
    Curve(#[from] CurveError),
    #[error("drawing {what}: {message}")]
    Draw { what: String, message: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {}: {source}", path.display())]
    Png {
        path: PathBuf,
        source: png::EncodingError,
    },
}

pub type Result<T, E = PlotError> = std::result::Result<T, E>;

/// plotters' errors carry the backend's error type; the message is all a user can act on.
fn draw_err<E: std::error::Error + Send + Sync>(
    what: &str,
) -> impl FnOnce(DrawingAreaErrorKind<E>) -> PlotError + '_ {
    move |e| PlotError::Draw {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// The font plotters' ab_glyph backend uses. Its registry is global and wants `'static` bytes,
/// so a font is read and leaked once per path per process (a few hundred KB, once).
static REGISTERED_FONT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn register_font(path: &Path) -> Result<()> {
    // A poisoned lock only means another thread panicked mid-registration; the path it holds
    // is still the last font registered successfully (or None).
    let mut registered = REGISTERED_FONT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if registered.as_deref() == Some(path) {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|source| PlotError::FontRead {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::FontInvalid(path.to_path_buf()))?;
    *registered = Some(path.to_path_buf());
    Ok(())
}

/// Draws the charts. Holding one means a font is registered, so no chart fails half-drawn for
/// want of one.
pub struct Plotter {
    font: PathBuf,
}

impl Plotter {
    /// Uses `font` if given, else the first of [`FONT_CANDIDATES`] that exists.
    pub fn new(font: Option<&Path>) -> Result<Self> {
        let font = match font {
            Some(path) => path.to_path_buf(),
            None => FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    PlotError::NoFont(FONT_CANDIDATES.iter().map(|s| s.to_string()).collect())
                })?,
        };
        register_font(&font)?;
        Ok(Self { font })
    }

    /// The font the text is drawn with.
    pub fn font(&self) -> &Path {
        &self.font
    }

    /// `training.svg` and `training.png` in `out_dir`: reward, local accuracy, offload rate,
    /// |D1|, |D2| and response length per step, one line per run.
    pub fn training(&self, runs: &[Run], out_dir: &Path) -> Result<Vec<PathBuf>> {
        if runs.is_empty() {
            return Err(PlotError::NoRuns);
        }
        // Registered again in case another Plotter switched fonts since (tests do).
        register_font(&self.font)?;
        write_figure(&training::Training { runs }, out_dir)
    }

    /// `cost_quality.svg` and `cost_quality.png` in `out_dir`: accuracy against cloud-call
    /// share, one line per method, the all-local and cloud-only accuracies as reference lines.
    pub fn cost_quality(&self, curve: &Curve, out_dir: &Path) -> Result<Vec<PathBuf>> {
        curve.validate()?;
        register_font(&self.font)?;
        write_figure(&cost_quality::CostQuality { curve }, out_dir)
    }
}

/// A figure drawn on either backend. A trait, not a closure: the drawing code is generic over
/// the backend, and a closure has one signature.
trait Figure {
    const STEM: &'static str;
    const SIZE: (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws `figure` twice, as `<stem>.svg` and `<stem>.png` in `out_dir`.
fn write_figure<F: Figure>(figure: &F, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let stem = F::STEM;
    let svg_path = out_dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, F::SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err(stem))?;
        figure.draw(&root)?;
        root.present().map_err(draw_err(stem))?;
    }
    std::fs::write(&svg_path, svg).map_err(|source| PlotError::Write {
        path: svg_path.clone(),
        source,
    })?;

    let png_path = out_dir.join(format!("{stem}.png"));
    let (w, h) = F::SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, F::SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err(stem))?;
        figure.draw(&root)?;
        root.present().map_err(draw_err(stem))?;
    }
    write_png(&png_path, F::SIZE, &rgb)?;
    Ok(vec![svg_path, png_path])
}

fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let write_err = |source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let png_err = |source| PlotError::Png {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(write_err)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// An axis range around `values` with a margin, so lines do not run along the frame; a flat
/// series gets `flat_pad` either side, and `bounds` clips percentages to 0..100.
fn padded_range(
    values: impl Iterator<Item = f64>,
    flat_pad: f64,
    bounds: Option<(f64, f64)>,
) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (mut lo, mut hi) = if lo > hi {
        // Nothing finite to show: any range draws the empty frame.
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - flat_pad, hi + flat_pad)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    };
    if let Some((min, max)) = bounds {
        lo = lo.max(min);
        hi = hi.min(max);
    }
    lo..hi
}

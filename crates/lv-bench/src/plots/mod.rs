//! PNG plots for the `lv` command: samples over the target density, 2-d marginals against
//! reference samples, training curves from `metrics.jsonl`, and a grid composing existing PNGs.
//!
//! Everything here is plain Rust (plotters + image); no tch. Text is drawn with DejaVu Sans,
//! compiled into the binary (`assets/DejaVuSans.ttf`), so no font is read from the system.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, ensure, Context, Result};
use ndarray::Array2;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Bitstream Vera licence, see `assets/README.md`.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

/// Heat-map resolution of [`plot_samples_2d`] (cells per axis).
pub const GRID_CELLS: usize = 150;
/// At most this many samples are drawn as dots.
pub const MAX_DOTS: usize = 2000;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const RED: RGBColor = RGBColor(214, 39, 40);

/// Registers the embedded font under the family name `sans-serif` (once per process).
fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Cannot fail for the bundled file; the unit tests render text, so a broken font is caught there.
        let _ = plotters::style::register_font(SANS, FontStyle::Normal, FONT);
    });
}

/// Turns a plotters error (not `Send + Sync` in general) into an `anyhow::Error`.
fn perr<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// Renders into an RGB buffer of `size` with `draw`, then writes it to `path` as PNG
/// (whatever the extension), creating the parent directory if needed.
fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    ensure_font();
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        draw(&root)?;
        root.present().map_err(perr)?;
    }
    save_rgb_png(path, &buf, size)
}

fn save_rgb_png(path: &Path, buf: &[u8], (w, h): (u32, u32)) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    image::save_buffer_with_format(
        path,
        buf,
        w,
        h,
        image::ColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn check_domain(domain: &[(f64, f64); 2]) -> Result<()> {
    for (i, &(lo, hi)) in domain.iter().enumerate() {
        ensure!(
            lo.is_finite() && hi.is_finite() && lo < hi,
            "plot domain for coordinate {i} must be finite with lo < hi, got ({lo}, {hi})"
        );
    }
    Ok(())
}

/// Row indices of at most `max` rows spread evenly over `n` (deterministic).
fn subsample(n: usize, max: usize) -> impl Iterator<Item = usize> {
    let k = n.min(max);
    (0..k).map(move |i| i * n / k.max(1))
}

/// First two coordinates of (a deterministic subsample of) `samples`, finite and inside `domain`.
fn points_in(samples: &Array2<f64>, domain: &[(f64, f64); 2]) -> Vec<(f64, f64)> {
    let inside = |v: f64, (lo, hi): (f64, f64)| v.is_finite() && v >= lo && v <= hi;
    subsample(samples.nrows(), MAX_DOTS)
        .map(|i| (samples[[i, 0]], samples[[i, 1]]))
        .filter(|&(x, y)| inside(x, domain[0]) && inside(y, domain[1]))
        .collect()
}

/// White → light blue → dark navy; `t` in [0, 1].
fn heat_color(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 4] = [
        (0.0, [255.0, 255.0, 255.0]),
        (0.3, [198.0, 219.0, 239.0]),
        (0.65, [66.0, 146.0, 198.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let j = STOPS.iter().position(|s| s.0 >= t).unwrap_or(3).max(1);
    let (t0, c0) = STOPS[j - 1];
    let (t1, c1) = STOPS[j];
    let a = (t - t0) / (t1 - t0);
    let c = |k: usize| (c0[k] + a * (c1[k] - c0[k])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

mod curves;
mod grid;
mod samples;

pub use curves::plot_curves;
pub use grid::plot_grid;
pub use samples::{plot_marginals, plot_samples_2d};

/// Reads back a PNG and returns its dimensions (used by the tests and handy for callers).
#[cfg(test)]
pub fn png_dimensions(path: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        anyhow::bail!("{} is not a PNG", path.display());
    }
    let im = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .with_context(|| format!("decoding {}", path.display()))?;
    Ok((im.width(), im.height()))
}

#[cfg(test)]
mod tests;

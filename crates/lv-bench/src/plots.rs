//! PNG plots for the `lv` command: samples over the target density, 2-d marginals against
//! reference samples, training curves from `metrics.jsonl`, and a grid composing existing PNGs.
//!
//! Everything here is plain Rust (plotters + image); no tch. Text is drawn with DejaVu Sans,
//! compiled into the binary (`assets/DejaVuSans.ttf`), so no font is read from the system.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, ensure, Context, Result};
use ndarray::Array2;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Bitstream Vera licence, see `assets/README.md`.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
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

/// Samples over the target density, for 2-d targets.
///
/// The background is a heat map of `exp(log ρ)` normalised to its maximum on a
/// [`GRID_CELLS`]² grid over `domain` (one batched call of `log_density` on an `[m, 2]` array of
/// cell centres; non-finite values count as zero density; the colour scale is the square root of
/// the normalised density so that minor modes stay visible). At most [`MAX_DOTS`] samples are drawn
/// on top as small semi-transparent red dots; samples outside `domain` or non-finite are not drawn
/// (their count is given in the caption). Only the first two columns of `samples` are used. 600×600.
pub fn plot_samples_2d(
    path: &Path,
    samples: &Array2<f64>,
    log_density: &dyn Fn(&Array2<f64>) -> Vec<f64>,
    domain: [(f64, f64); 2],
    title: &str,
) -> Result<()> {
    ensure!(
        samples.ncols() >= 2,
        "plot_samples_2d needs samples with at least 2 coordinates, got shape [{}, {}]",
        samples.nrows(),
        samples.ncols()
    );
    check_domain(&domain)?;
    let [(x0, x1), (y0, y1)] = domain;
    let n = GRID_CELLS;
    let (dx, dy) = ((x1 - x0) / n as f64, (y1 - y0) / n as f64);
    let grid = Array2::from_shape_fn((n * n, 2), |(k, c)| {
        let (i, j) = (k % n, k / n);
        if c == 0 {
            x0 + (i as f64 + 0.5) * dx
        } else {
            y0 + (j as f64 + 0.5) * dy
        }
    });
    let logp = log_density(&grid);
    ensure!(
        logp.len() == n * n,
        "log_density returned {} values for {} grid points",
        logp.len(),
        n * n
    );
    let max = logp
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let level = |v: f64| {
        if v.is_finite() && max.is_finite() {
            (v - max).exp().sqrt()
        } else {
            0.0
        }
    };
    let pts = points_in(samples, &domain);
    let shown = subsample(samples.nrows(), MAX_DOTS).count();
    let caption_note = if pts.len() < shown {
        format!(
            "{} of {shown} shown dots outside the domain or non-finite",
            shown - pts.len()
        )
    } else {
        format!("{} samples", samples.nrows())
    };

    render_png(path, (600, 600), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (SANS, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(format!("x₁    ({caption_note})"))
            .y_desc("x₂")
            .label_style((SANS, 13))
            .axis_desc_style((SANS, 14))
            .draw()
            .map_err(perr)?;
        chart
            .draw_series(logp.iter().enumerate().map(|(k, &v)| {
                let (i, j) = ((k % n) as f64, (k / n) as f64);
                Rectangle::new(
                    [
                        (x0 + i * dx, y0 + j * dy),
                        (x0 + (i + 1.0) * dx, y0 + (j + 1.0) * dy),
                    ],
                    heat_color(level(v)).filled(),
                )
            }))
            .map_err(perr)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|&p| Circle::new(p, 2, RED.mix(0.45).filled())),
            )
            .map_err(perr)?;
        Ok(())
    })
}

/// Scatter of the first two coordinates of model samples (blue) against reference samples
/// (orange, drawn underneath), for targets with d > 2. At most [`MAX_DOTS`] of each are drawn;
/// points outside `domain` are not drawn. 600×600.
pub fn plot_marginals(
    path: &Path,
    samples: &Array2<f64>,
    reference: Option<&Array2<f64>>,
    domain: [(f64, f64); 2],
    title: &str,
) -> Result<()> {
    ensure!(
        samples.ncols() >= 2,
        "plot_marginals needs samples with at least 2 coordinates, got shape [{}, {}]",
        samples.nrows(),
        samples.ncols()
    );
    if let Some(r) = reference {
        ensure!(
            r.ncols() >= 2,
            "plot_marginals needs reference samples with at least 2 coordinates, got shape [{}, {}]",
            r.nrows(),
            r.ncols()
        );
    }
    check_domain(&domain)?;
    let [(x0, x1), (y0, y1)] = domain;
    let model = points_in(samples, &domain);
    let refs = reference.map(|r| points_in(r, &domain));

    render_png(path, (600, 600), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (SANS, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .x_desc("x₁")
            .y_desc("x₂")
            .label_style((SANS, 13))
            .axis_desc_style((SANS, 14))
            .draw()
            .map_err(perr)?;
        if let Some(refs) = &refs {
            chart
                .draw_series(
                    refs.iter()
                        .map(|&p| Circle::new(p, 2, ORANGE.mix(0.45).filled())),
                )
                .map_err(perr)?
                .label(format!(
                    "reference (n={})",
                    reference.map_or(0, |r| r.nrows())
                ))
                .legend(|(x, y)| Circle::new((x, y), 4, ORANGE.filled()));
        }
        chart
            .draw_series(
                model
                    .iter()
                    .map(|&p| Circle::new(p, 2, BLUE.mix(0.45).filled())),
            )
            .map_err(perr)?
            .label(format!("model (n={})", samples.nrows()))
            .legend(|(x, y)| Circle::new((x, y), 4, BLUE.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((SANS, 13))
            .draw()
            .map_err(perr)?;
        Ok(())
    })
}

/// The series read from a `metrics.jsonl`, keyed by step (a later line for the same step wins,
/// as after a resume). Non-finite or missing values are left out.
#[derive(Debug, Default)]
struct Curves {
    loss: BTreeMap<u64, f64>,
    log_z_is: BTreeMap<u64, f64>,
    log_z_elbo: BTreeMap<u64, f64>,
    malformed: usize,
}

fn read_curves(metrics_jsonl: &Path) -> Result<Curves> {
    let file = std::fs::File::open(metrics_jsonl)
        .with_context(|| format!("cannot open metrics file {}", metrics_jsonl.display()))?;
    let mut c = Curves::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", metrics_jsonl.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // A run killed mid-write can leave a truncated last line: skip, don't fail.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            c.malformed += 1;
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            c.malformed += 1;
            continue;
        };
        if !(step.is_finite() && step >= 0.0) {
            c.malformed += 1;
            continue;
        }
        let step = step as u64;
        let finite =
            |x: Option<&serde_json::Value>| x.and_then(|x| x.as_f64()).filter(|x| x.is_finite());
        if let Some(l) = finite(v.get("loss")) {
            c.loss.insert(step, l);
        }
        if let Some(ev) = v.get("eval") {
            if let Some(z) = finite(ev.get("log_z_is")) {
                c.log_z_is.insert(step, z);
            }
            if let Some(z) = finite(ev.get("log_z_elbo")) {
                c.log_z_elbo.insert(step, z);
            }
        }
    }
    Ok(c)
}

/// `(lo, hi)` of `vals` with a little padding; a degenerate range is widened.
fn padded_range(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return if log { (0.1, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (l, h) = (lo.ln(), hi.ln());
        let pad = ((h - l) * 0.05).max(0.05);
        ((l - pad).exp(), (h + pad).exp())
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-9_f64.max(hi.abs().max(lo.abs()) * 1e-3));
        (lo - pad, hi + pad)
    }
}

fn step_range<'a>(series: impl Iterator<Item = &'a BTreeMap<u64, f64>>) -> (f64, f64) {
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for s in series {
        if let (Some((&a, _)), Some((&b, _))) = (s.first_key_value(), s.last_key_value()) {
            lo = lo.min(a);
            hi = hi.max(b);
        }
    }
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo as f64 - 1.0, hi as f64 + 1.0)
    } else {
        let pad = (hi - lo) as f64 * 0.02;
        (lo as f64 - pad, hi as f64 + pad)
    }
}

/// Decimals for tick labels of a linear axis spanning `(lo, hi)`: about three significant digits
/// of the span.
fn decimals(lo: f64, hi: f64) -> usize {
    let span = (hi - lo).abs().max(1e-12);
    (2.0 - span.log10().floor()).clamp(0.0, 8.0) as usize
}

/// Tick positions for a log axis over `(lo, hi)` (`0 < lo < hi`): 1-2-5 per decade, or every
/// integer mantissa when that gives fewer than three, or evenly spaced in log when even that does.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = |mantissas: &[f64]| {
        let mut out = Vec::new();
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for k in k0..=k1 {
            for &m in mantissas {
                let v = m * 10f64.powi(k);
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
        }
        out
    };
    let t = decades(&[1.0, 2.0, 5.0]);
    if t.len() >= 3 {
        return t;
    }
    let t = decades(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if t.len() >= 3 {
        return t;
    }
    let (a, b) = (lo.ln(), hi.ln());
    (1..=4)
        .map(|i| {
            let v = (a + (b - a) * i as f64 / 5.0).exp();
            let e = 10f64.powi(v.log10().floor() as i32 - 1);
            (v / e).round() * e
        })
        .collect()
}

/// Tick label of a log axis.
fn log_tick(v: f64) -> String {
    if (1e-3..1e4).contains(&v.abs()) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// Linear tick label with `dec` decimals, without "-0.000".
fn tick(v: f64, dec: usize) -> String {
    let s = format!("{v:.dec$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

fn no_data(area: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str, msg: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2 - 60, 15),
        (SANS, 18).into_font(),
    ))
    .map_err(perr)?;
    area.draw(&Text::new(
        msg.to_string(),
        (w as i32 / 2 - 80, h as i32 / 2),
        (SANS, 15).into_font().color(&BLACK.mix(0.6)),
    ))
    .map_err(perr)
}

/// Training curves from a run's `metrics.jsonl`: loss against step on the left (log-scale y when
/// every loss is > 0), log Ẑ (IS and ELBO) against step on the right (a "no evaluations" note when
/// the file has no eval lines). Non-finite values and malformed lines are skipped. 1000×400.
pub fn plot_curves(path: &Path, metrics_jsonl: &Path) -> Result<()> {
    let c = read_curves(metrics_jsonl)?;
    render_png(path, (1000, 400), |root| {
        let (left, right) = root.split_horizontally(500);
        // Both panels share the step axis.
        let xr = step_range([&c.loss, &c.log_z_is, &c.log_z_elbo].into_iter());
        draw_loss(&left, &c.loss, xr)?;
        draw_log_z(&right, &c, xr)?;
        if c.malformed > 0 {
            root.draw(&Text::new(
                format!("{} malformed line(s) skipped", c.malformed),
                (5, 388),
                (SANS, 11).into_font().color(&RED),
            ))
            .map_err(perr)?;
        }
        Ok(())
    })
}

fn draw_loss(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    loss: &BTreeMap<u64, f64>,
    xr: (f64, f64),
) -> Result<()> {
    if loss.is_empty() {
        return no_data(area, "training loss", "no training lines");
    }
    let pts: Vec<(f64, f64)> = loss.iter().map(|(&s, &l)| (s as f64, l)).collect();
    let builder = |area| {
        let mut b = ChartBuilder::on(area);
        b.caption("training loss", (SANS, 18))
            .margin(10)
            .margin_right(25)
            .x_label_area_size(35)
            .y_label_area_size(65);
        b
    };
    let style = BLUE.stroke_width(1);
    if loss.values().all(|&l| l > 0.0) {
        let (y0, y1) = padded_range(loss.values().copied(), true);
        let mut chart = builder(area)
            .build_cartesian_2d(
                xr.0..xr.1,
                (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
            )
            .map_err(perr)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.15))
            .y_desc("loss (log scale)")
            .y_label_formatter(&|v| log_tick(*v))
            .label_style((SANS, 12))
            .axis_desc_style((SANS, 13))
            .draw()
            .map_err(perr)?;
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(perr)?;
    } else {
        let (y0, y1) = padded_range(loss.values().copied(), false);
        let dec = decimals(y0, y1);
        let mut chart = builder(area)
            .build_cartesian_2d(xr.0..xr.1, y0..y1)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.15))
            .y_desc("loss")
            .y_label_formatter(&|v| tick(*v, dec))
            .label_style((SANS, 12))
            .axis_desc_style((SANS, 13))
            .draw()
            .map_err(perr)?;
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(perr)?;
    }
    Ok(())
}

fn draw_log_z(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    c: &Curves,
    xr: (f64, f64),
) -> Result<()> {
    if c.log_z_is.is_empty() && c.log_z_elbo.is_empty() {
        return no_data(area, "log Ẑ", "no evaluations");
    }
    let (y0, y1) = padded_range(
        c.log_z_is.values().chain(c.log_z_elbo.values()).copied(),
        false,
    );
    let dec = decimals(y0, y1);
    let mut chart = ChartBuilder::on(area)
        .caption("log Ẑ during training", (SANS, 18))
        .margin(10)
        .margin_right(25)
        .x_label_area_size(35)
        .y_label_area_size(65)
        .build_cartesian_2d(xr.0..xr.1, y0..y1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.15))
        .y_desc("log Ẑ")
        .y_label_formatter(&|v| tick(*v, dec))
        .label_style((SANS, 12))
        .axis_desc_style((SANS, 13))
        .draw()
        .map_err(perr)?;
    for (series, name, color) in [
        (&c.log_z_is, "log Ẑ (IS)", BLUE),
        (&c.log_z_elbo, "log Ẑ (ELBO)", ORANGE),
    ] {
        if series.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = series.iter().map(|(&s, &z)| (s as f64, z)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(perr)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(perr)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((SANS, 12))
        .draw()
        .map_err(perr)?;
    Ok(())
}

/// Composes existing PNG images into one grid (up to 4 columns, row-major), each under its title.
/// Every cell is as large as the largest image; smaller images are centred. `panels` is
/// `(title, png path)`; an empty list or an unreadable image is an error.
pub fn plot_grid(path: &Path, panels: &[(String, PathBuf)]) -> Result<()> {
    const TITLE_H: u32 = 32;
    const PAD: u32 = 6;
    ensure!(!panels.is_empty(), "plot_grid needs at least one panel");
    let images = panels
        .iter()
        .map(|(_, p)| {
            image::open(p)
                .with_context(|| format!("cannot read panel image {}", p.display()))
                .map(|im| im.to_rgb8())
        })
        .collect::<Result<Vec<_>>>()?;
    let cw = images.iter().map(|im| im.width()).max().unwrap_or(1) + 2 * PAD;
    let ch = images.iter().map(|im| im.height()).max().unwrap_or(1) + TITLE_H + PAD;
    let cols = panels.len().min(4) as u32;
    let rows = (panels.len() as u32).div_ceil(cols);
    let (w, h) = (cols * cw, rows * ch);
    ensure!(
        u64::from(w) * u64::from(h) <= 400_000_000,
        "plot_grid: a {w}×{h} image is too large"
    );
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let origin = |k: usize| ((k as u32 % cols) * cw, (k as u32 / cols) * ch);
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = origin(k);
        let x = ox + (cw - im.width()) / 2;
        let y = oy + TITLE_H + (ch - TITLE_H - PAD - im.height()) / 2;
        image::imageops::replace(&mut canvas, im, i64::from(x), i64::from(y));
    }
    ensure_font();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style =
            TextStyle::from((SANS, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        for (k, (title, _)) in panels.iter().enumerate() {
            let (ox, oy) = origin(k);
            root.draw(&Text::new(
                title.clone(),
                ((ox + cw / 2) as i32, (oy + TITLE_H / 2 + 2) as i32),
                style.clone(),
            ))
            .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    save_rgb_png(path, &buf, (w, h))
}

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
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lv-plots-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Two-mode Gaussian mixture in 2-d (unnormalised log density, batched).
    fn two_modes(x: &Array2<f64>) -> Vec<f64> {
        x.rows()
            .into_iter()
            .map(|r| {
                let a = -0.5 * ((r[0] - 1.5).powi(2) + (r[1] - 1.0).powi(2)) / 0.25;
                let b = -0.5 * ((r[0] + 1.5).powi(2) + (r[1] + 1.0).powi(2)) / 0.5;
                let m = a.max(b);
                m + ((a - m).exp() + 0.5 * (b - m).exp()).ln()
            })
            .collect()
    }

    /// Deterministic pseudo-samples around the two modes (and a few outliers).
    fn fake_samples(n: usize, d: usize) -> Array2<f64> {
        let mut s = 12345u64;
        let mut u = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        Array2::from_shape_fn((n, d), |(i, j)| {
            let g = (-2.0 * u().max(1e-12).ln()).sqrt() * (std::f64::consts::TAU * u()).cos();
            let centre = if i % 3 == 0 { -1.0 } else { 1.0 } * if j == 0 { 1.5 } else { 1.0 };
            if i == 7 {
                100.0
            } else {
                centre + 0.6 * g
            }
        })
    }

    #[test]
    fn samples_2d_png() {
        let p = tmp("samples.png");
        plot_samples_2d(
            &p,
            &fake_samples(3000, 2),
            &two_modes,
            [(-4.0, 4.0), (-4.0, 4.0)],
            "GMM2 — LV",
        )
        .unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (600, 600));
    }

    #[test]
    fn samples_2d_rejects_1d_and_bad_density() {
        let p = tmp("bad.png");
        let e = plot_samples_2d(
            &p,
            &Array2::zeros((10, 1)),
            &two_modes,
            [(-1.0, 1.0); 2],
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 2 coordinates"), "{e}");
        let short = |_: &Array2<f64>| vec![0.0; 3];
        let e = plot_samples_2d(&p, &Array2::zeros((10, 2)), &short, [(-1.0, 1.0); 2], "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("returned 3 values"), "{e}");
        let e = plot_samples_2d(
            &p,
            &Array2::zeros((10, 2)),
            &two_modes,
            [(1.0, -1.0), (0.0, 1.0)],
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lo < hi"), "{e}");
        // All -inf density and no samples is still a plot.
        let flat = |x: &Array2<f64>| vec![f64::NEG_INFINITY; x.nrows()];
        plot_samples_2d(&p, &Array2::zeros((0, 2)), &flat, [(-1.0, 1.0); 2], "empty").unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (600, 600));
    }

    #[test]
    fn marginals_png() {
        let p = tmp("marginals.png");
        let model = fake_samples(1500, 5);
        let reference = fake_samples(4000, 5);
        plot_marginals(
            &p,
            &model,
            Some(&reference),
            [(-4.0, 4.0), (-4.0, 4.0)],
            "Funnel d=5",
        )
        .unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (600, 600));
        let q = tmp("marginals_noref.png");
        plot_marginals(&q, &model, None, [(-4.0, 4.0), (-4.0, 4.0)], "no reference").unwrap();
        assert_eq!(png_dimensions(&q).unwrap(), (600, 600));
        let e = plot_marginals(
            &p,
            &model,
            Some(&Array2::zeros((3, 1))),
            [(-1.0, 1.0); 2],
            "x",
        );
        assert!(e.unwrap_err().to_string().contains("reference"));
    }

    fn write_metrics(name: &str, lines: &[String]) -> PathBuf {
        let p = tmp(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    }

    #[test]
    fn curves_png() {
        let mut lines = Vec::new();
        for step in (10..=2000).step_by(10) {
            let loss = 50.0 * (-(step as f64) / 400.0).exp() + 0.05;
            lines.push(
                serde_json::json!({"step": step, "loss": loss, "skipped": false}).to_string(),
            );
            if step % 250 == 0 {
                let lz = -0.5 * (-(step as f64) / 500.0).exp();
                let ev =
                    serde_json::json!({"log_z_is": lz, "log_z_elbo": 3.0 * lz - 0.05, "ess": 0.5});
                lines.push(serde_json::json!({"step": step, "eval": ev}).to_string());
            }
        }
        lines.push(r#"{"step": 2010, "loss": null}"#.to_string());
        lines.push(r#"{"step": 20"#.to_string()); // truncated last line
        let m = write_metrics("metrics.jsonl", &lines);
        let c = read_curves(&m).unwrap();
        assert_eq!((c.loss.len(), c.log_z_is.len(), c.malformed), (200, 8, 1));
        let p = tmp("curves.png");
        plot_curves(&p, &m).unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));

        // Negative losses (linear scale) and no evaluations.
        let lines: Vec<String> = (1..50)
            .map(|s| serde_json::json!({"step": s, "loss": (s as f64 * 0.3).sin()}).to_string())
            .collect();
        let m = write_metrics("metrics_neg.jsonl", &lines);
        let p = tmp("curves_neg.png");
        plot_curves(&p, &m).unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));

        // Positive losses within less than a decade (log scale).
        let lines: Vec<String> = (1..50)
            .map(|s| serde_json::json!({"step": s * 100, "loss": 1.0 + 0.5 / s as f64}).to_string())
            .collect();
        let m = write_metrics("metrics_narrow.jsonl", &lines);
        let p = tmp("curves_narrow.png");
        plot_curves(&p, &m).unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));

        // Empty file: still a plot.
        let m = write_metrics("metrics_empty.jsonl", &[]);
        let p = tmp("curves_empty.png");
        plot_curves(&p, &m).unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));
    }

    #[test]
    fn curves_missing_file_is_clear_error() {
        let e =
            plot_curves(&tmp("c.png"), Path::new("/nonexistent/run/metrics.jsonl")).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot open metrics file /nonexistent/run/metrics.jsonl"),
            "{e:#}"
        );
    }

    #[test]
    fn grid_png() {
        let a = tmp("grid_a.png");
        let b = tmp("grid_b.png");
        plot_samples_2d(&a, &fake_samples(500, 2), &two_modes, [(-4.0, 4.0); 2], "a").unwrap();
        plot_marginals(&b, &fake_samples(500, 3), None, [(-4.0, 4.0); 2], "b").unwrap();
        let panels: Vec<(String, PathBuf)> = (0..5)
            .map(|k| {
                (
                    format!("panel {k}"),
                    if k % 2 == 0 { a.clone() } else { b.clone() },
                )
            })
            .collect();
        let p = tmp("grid.png");
        plot_grid(&p, &panels).unwrap();
        assert_eq!(png_dimensions(&p).unwrap(), (4 * 612, 2 * 638));
        assert!(plot_grid(&p, &[]).is_err());
        let e = plot_grid(&p, &[("x".into(), tmp("missing.png"))]).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read panel image"),
            "{e:#}"
        );
    }
}

//! Training curves from a run's `metrics.jsonl`: the loss and the log Z estimates against the step.

use super::{perr, render_png, BLUE, ORANGE, RED, SANS};
use anyhow::{Context, Result};
use lv_core::driver::CurveLine;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// The series read from a `metrics.jsonl`, keyed by step (a later line for the same step wins,
/// as after a resume). Non-finite or missing values are left out.
#[derive(Debug, Default)]
pub(super) struct Curves {
    pub(super) loss: BTreeMap<u64, f64>,
    pub(super) log_z_is: BTreeMap<u64, f64>,
    pub(super) log_z_elbo: BTreeMap<u64, f64>,
    pub(super) malformed: usize,
}

pub(super) fn read_curves(metrics_jsonl: &Path) -> Result<Curves> {
    let file = std::fs::File::open(metrics_jsonl)
        .with_context(|| format!("cannot open metrics file {}", metrics_jsonl.display()))?;
    let mut c = Curves::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", metrics_jsonl.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // A run killed mid-write can leave a truncated last line: skip, don't fail.
        let Some(rec) = CurveLine::parse(&line) else {
            c.malformed += 1;
            continue;
        };
        let step = rec.step() as u64;
        let finite = |x: f64| Some(x).filter(|x| x.is_finite());
        match rec {
            CurveLine::Step(s) => {
                if let Some(l) = finite(s.loss) {
                    c.loss.insert(step, l);
                }
            }
            CurveLine::Eval(e) => {
                if let Some(z) = finite(e.eval.log_z_is) {
                    c.log_z_is.insert(step, z);
                }
                if let Some(z) = finite(e.eval.log_z_elbo) {
                    c.log_z_elbo.insert(step, z);
                }
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

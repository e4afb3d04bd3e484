//! Sample plots: samples over a 2-d target density, and 2-d marginals against reference samples.

use super::{
    check_domain, heat_color, perr, points_in, render_png, subsample, BLUE, GRID_CELLS, MAX_DOTS,
    ORANGE, RED, SANS,
};
use anyhow::{ensure, Result};
use ndarray::Array2;
use plotters::prelude::*;
use std::path::Path;

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

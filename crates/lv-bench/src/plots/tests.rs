//! Tests of the plots: sizes of the PNGs written, and clear errors for bad input.

use super::curves::read_curves;
use super::{plot_curves, plot_grid, plot_marginals, plot_samples_2d, png_dimensions};
use ndarray::Array2;
use std::path::{Path, PathBuf};

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

/// A `metrics.jsonl` step line as the trainer writes it.
fn step_line(step: usize, loss: f64) -> String {
    let r = lv_core::driver::StepRecord {
        step,
        loss,
        skipped: false,
        kept: 100.0,
        grad_norm: 1.0,
        lr: 1e-3,
        seconds: step as f64,
        skipped_steps: 0,
        filtered_samples: 0,
    };
    serde_json::to_string(&r).unwrap()
}

/// A `metrics.jsonl` evaluation line as the trainer writes it.
fn eval_line(step: usize, log_z_is: f64, log_z_elbo: f64) -> String {
    let eval = lv_core::estimate::Evaluation {
        log_z_is,
        log_z_lb_ito: log_z_elbo,
        log_z_elbo,
        ess: 0.5,
        lv: 1.0,
        n: 100,
        non_finite: 0,
        sample_seconds: 0.1,
    };
    serde_json::to_string(&lv_core::driver::EvalRecord { step, eval }).unwrap()
}

#[test]
fn curves_png() {
    let mut lines = Vec::new();
    for step in (10..=2000).step_by(10) {
        let loss = 50.0 * (-(step as f64) / 400.0).exp() + 0.05;
        lines.push(step_line(step, loss));
        if step % 250 == 0 {
            let lz = -0.5 * (-(step as f64) / 500.0).exp();
            lines.push(eval_line(step, lz, 3.0 * lz - 0.05));
        }
    }
    // A diverged step (NaN loss, written as null) is read and left out of the curve.
    lines.push(step_line(2010, f64::NAN));
    lines.push(r#"{"step": 20"#.to_string()); // truncated last line
    let m = write_metrics("metrics.jsonl", &lines);
    let c = read_curves(&m).unwrap();
    assert_eq!((c.loss.len(), c.log_z_is.len(), c.malformed), (200, 8, 1));
    let p = tmp("curves.png");
    plot_curves(&p, &m).unwrap();
    assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));

    // Negative losses (linear scale) and no evaluations.
    let lines: Vec<String> = (1..50)
        .map(|s| step_line(s, (s as f64 * 0.3).sin()))
        .collect();
    let m = write_metrics("metrics_neg.jsonl", &lines);
    let p = tmp("curves_neg.png");
    plot_curves(&p, &m).unwrap();
    assert_eq!(png_dimensions(&p).unwrap(), (1000, 400));

    // Positive losses within less than a decade (log scale).
    let lines: Vec<String> = (1..50)
        .map(|s| step_line(s * 100, 1.0 + 0.5 / s as f64))
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
    let e = plot_curves(&tmp("c.png"), Path::new("/nonexistent/run/metrics.jsonl")).unwrap_err();
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

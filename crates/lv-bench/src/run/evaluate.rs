//! The final evaluation of a run: log Z (IS, ELBO), ESS, sample metrics on the sizes their
//! keys name, Δstd against the target's stds, mode coverage, results.json and the plots.

use super::build::{annealed_trainer, controls_of, Built, Sampler};
use super::folder::read_sample_metrics;
use super::folder::write_atomic;
use super::protocol::{summarise, FixedReference, Protocol};
use super::results::{RunResults, SmcSummary};
use crate::config::{Resolved, RunConfig};
use anyhow::{Context, Result};
use lv_core::driver::step_seed;
use lv_core::train::Counters;
use lv_core::Target;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Converts a `[n, d]` tensor to an f64 ndarray.
pub fn to_array(t: &Tensor) -> Result<Array2<f64>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
    let (n, d) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f64>::try_from(&t.view([-1]))?;
    Ok(Array2::from_shape_vec((n, d), v)?)
}

/// Reference samples of a target: fresh exact samples, or the shipped set.
pub fn reference_samples(target: &dyn Target, n: usize) -> Option<Result<Array2<f64>>> {
    if let Some(s) = target.sampler() {
        return Some(to_array(&s.sample(n as i64 as usize, Device::Cpu)));
    }
    target
        .reference_samples()
        .map(|r| r.and_then(|t| to_array(&t)))
}

/// The final evaluation of a run with the weights currently in the VarStore (the caller
/// swaps the EMA weights in): log Z (IS, ELBO), ESS, sample metrics; with `write`, writes
/// results.json, samples.npy and the plots into `dir`.
pub(crate) fn evaluate_run(
    res: &Resolved,
    b: &Built,
    dir: &Path,
    seconds: f64,
    counters: &Counters,
    write: bool,
) -> Result<RunResults> {
    let cfg = &res.cfg;
    let seed = res.runtime.seed;
    tch::manual_seed(step_seed(seed, usize::MAX >> 1));
    let log_z = b.target.log_z();
    let (ev, samples, smc, grid_steps) = match &b.sampler {
        Sampler::Diffusion(method) => {
            let out = lv_core::estimate::evaluate(
                method,
                b.target.as_ref(),
                controls_of(b),
                cfg.eval.n,
                cfg.eval.chunk,
                b.device,
                cfg.train.native_eval,
            );
            (out.estimates, out.samples, None, method.grid.steps())
        }
        Sampler::Annealed { parts, betas } => {
            let tr = annealed_trainer(b, parts, betas, res.loss)?;
            let e = tr.evaluate_full(cfg.eval.n, cfg.eval.chunk);
            let smc = e.smc.map(|s| SmcSummary {
                log_z: s.log_z,
                elbo: s.elbo,
                log_z_error: log_z.map(|z| (s.log_z - z).abs()),
                resamples: s.resamples,
                acceptance: s.acceptance,
            });
            (e.model, e.samples, smc, parts.sampler.steps)
        }
    };
    let all = to_array(&samples)?;
    if write {
        ndarray_npy::write_npy(dir.join("samples.npy"), &all.mapv(|v| v as f32))
            .with_context(|| format!("writing {}", dir.join("samples.npy").display()))?;
    }
    // Sample metrics use the finite samples only; the count of the others is reported.
    let finite: Vec<usize> = (0..all.nrows())
        .filter(|&i| all.row(i).iter().all(|v| v.is_finite()))
        .collect();
    let non_finite_samples = all.nrows() - finite.len();
    let x = all.select(ndarray::Axis(0), &finite);
    // Absolute and relative errors of an estimate (spec §4):
    // abs = |p − log Z_ref|, rel = abs / (|log Z_ref| + 1e-8).
    let abs = |p: f64| log_z.map(|z| (p - z).abs());
    let rel = |p: f64| log_z.map(|z| (p - z).abs() / (z.abs() + 1e-8));
    let mut out = RunResults {
        method: cfg.method,
        loss: cfg.loss,
        target: cfg.target.clone(),
        seed: cfg.seed,
        steps: counters.step,
        batch: cfg.train.batch,
        grid_steps,
        log_z_is: ev.log_z_is,
        log_z_elbo: ev.log_z_elbo,
        log_z_lb_ito: ev.log_z_lb_ito,
        ess: ev.ess,
        lv: ev.lv,
        eval_n: ev.n,
        eval_non_finite: ev.non_finite,
        seconds,
        skipped_steps: counters.skipped,
        filtered_samples: counters.filtered,
        target_evals: counters.target_evals,
        log_z_ref: log_z,
        log_z_error_is: abs(ev.log_z_is),
        log_z_error_elbo: abs(ev.log_z_elbo),
        log_z_error_lb_ito: abs(ev.log_z_lb_ito),
        rel_error_is: rel(ev.log_z_is),
        rel_error_elbo: rel(ev.log_z_elbo),
        rel_error_lb_ito: rel(ev.log_z_lb_ito),
        non_finite_samples,
        metrics: Default::default(),
        avg_marginal_stddev: None,
        avg_stddev: None,
        stddev_error_per_coordinate: None,
        stddev_reference: None,
        mode_coverage: None,
        periodic: None,
        smc,
    };
    if x.nrows() >= 2 {
        match cfg.eval.protocol {
            Protocol::Fresh => {
                if let Some(m) = sample_metrics(b.target.as_ref(), &x, &cfg.eval, seed)? {
                    out.metrics = m;
                }
            }
            Protocol::FixedReference => {
                let fixed = FixedReference::new(b.target.as_ref(), cfg.eval.n_metrics)?;
                let n = x.nrows().min(fixed.len());
                out.metrics = fixed.metrics_of(&x.slice(ndarray::s![..n, ..]).to_owned())?;
                let during: Vec<_> = read_sample_metrics(dir)
                    .into_iter()
                    .filter(|r| r.step < counters.step)
                    .map(|r| r.metrics)
                    .collect();
                let floor = fixed.noise_floor(b.target.as_ref())?;
                out.periodic = Some(summarise(&during, &out.metrics, floor));
            }
        }
        if let Some((stds, source)) = reference_stds(b.target.as_ref())? {
            let se = lv_metrics::std_errors(x.view(), &stds)?;
            out.avg_marginal_stddev = Some(se.avg_marginal_stddev);
            out.avg_stddev = Some(se.avg_stddev);
            out.stddev_error_per_coordinate = Some(se.per_coordinate);
            out.stddev_reference = Some(source);
        }
    }
    if let Some(centres) = b.target.mode_centres().filter(|_| x.nrows() > 0) {
        let c = Array2::from_shape_vec(
            (centres.len(), centres[0].len()),
            centres.iter().flatten().cloned().collect(),
        )?;
        out.mode_coverage = Some(lv_metrics::mode_coverage(x.view(), c.view(), None)?);
    }
    if write {
        write_atomic(
            &dir.join("results.json"),
            serde_json::to_string_pretty(&out)?.as_bytes(),
        )?;
        if x.nrows() > 0 {
            write_plots(cfg, b, &x, dir)?;
        }
    }
    Ok(out)
}

/// The sample metrics of model samples `x` against the target's reference (fresh exact
/// samples, or the shipped set), each on the number of samples its config key names: W2,
/// the debiased Sinkhorn divergence and the MMDs on `eval.n_metrics`, the sde_sampler
/// Sinkhorn on `eval.n_sinkhorn_sde` (spec §10: 1e5 against 1e5 fresh exact samples; the
/// streaming solver needs O(n·d) memory). Fresh reference samples number
/// max(n_metrics, n_sinkhorn_sde); each metric subsamples both sets (seeded, without
/// replacement) to its size, so a set smaller than the key gives a smaller size, which the
/// `metric_sizes` entry of the result records. `None` when the target has no reference.
pub fn sample_metrics(
    target: &dyn Target,
    x: &Array2<f64>,
    eval: &crate::config::EvalConfig,
    seed: u64,
) -> Result<Option<lv_metrics::MetricsReport>> {
    let n_ref = eval.n_metrics.max(eval.n_sinkhorn_sde);
    let Some(reference) = reference_samples(target, n_ref) else {
        return Ok(None);
    };
    let reference = reference?;
    let opts = lv_metrics::ReportOptions {
        max_exact: eval.n_metrics,
        max_sinkhorn_div: eval.n_metrics,
        max_mmd: eval.n_metrics,
        max_sinkhorn_sde: eval.n_sinkhorn_sde,
        seed,
        particles: target.zero_com().map(|z| z.particles),
        ..Default::default()
    };
    Ok(Some(lv_metrics::compute_report(x, &reference, &opts)?))
}

/// Where the s_k of the Δstd metrics come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StdReference {
    /// The target's exact stds ([`Target::marginal_stds`]).
    Exact,
    /// The unbiased std of `n` reference samples (exact samples with a fixed seed, or the
    /// whole shipped set).
    Samples { n: usize },
}

/// Exact samples drawn for the Δstd reference when the target knows no exact stds (spec §9:
/// 1e6), with a fixed seed so every run of a target compares against the same s_k.
pub const STD_REFERENCE_SAMPLES: usize = 1_000_000;

pub(crate) const STD_REFERENCE_SEED: i64 = 0x5EED_0057D;

/// The s_k of the Δstd metrics (spec §10): exact where the target knows them, else the
/// unbiased std of [`STD_REFERENCE_SAMPLES`] exact samples (fixed seed, drawn in chunks,
/// accumulated in f64), else of the shipped reference set; `None` when the target has none
/// of these (a user's target known only through log ρ: the Δstd metrics are then absent).
pub fn reference_stds(target: &dyn Target) -> Result<Option<(Vec<f64>, StdReference)>> {
    if let Some(s) = target.marginal_stds() {
        return Ok(Some((s, StdReference::Exact)));
    }
    let d = target.dim();
    if let Some(sampler) = target.sampler() {
        tch::manual_seed(STD_REFERENCE_SEED);
        let (mut sum, mut sq) = (vec![0.0f64; d], vec![0.0f64; d]);
        // Shifted sums (by the first chunk's mean) keep the variance accurate in f64.
        let mut shift: Option<Vec<f64>> = None;
        let chunk = 100_000;
        let mut done = 0;
        while done < STD_REFERENCE_SAMPLES {
            let m = chunk.min(STD_REFERENCE_SAMPLES - done);
            let x = to_array(&sampler.sample(m, Device::Cpu))?;
            let c = shift.get_or_insert_with(|| {
                x.mean_axis(ndarray::Axis(0))
                    .map(|v| v.to_vec())
                    .unwrap_or_else(|| vec![0.0; d])
            });
            for row in x.rows() {
                for k in 0..d {
                    let v = row[k] - c[k];
                    sum[k] += v;
                    sq[k] += v * v;
                }
            }
            done += m;
        }
        let n = STD_REFERENCE_SAMPLES as f64;
        let s = (0..d)
            .map(|k| ((sq[k] - sum[k] * sum[k] / n) / (n - 1.0)).max(0.0).sqrt())
            .collect();
        return Ok(Some((
            s,
            StdReference::Samples {
                n: STD_REFERENCE_SAMPLES,
            },
        )));
    }
    match target.reference_samples() {
        Some(r) => {
            let r = to_array(&r?)?;
            let s = lv_metrics::marginals::unbiased_std(r.view())?.to_vec();
            Ok(Some((s, StdReference::Samples { n: r.nrows() })))
        }
        None => Ok(None),
    }
}

/// The sample plot (`samples.png`: density and samples for 2-D targets, first two marginals
/// against the reference otherwise) and the training curves (`curves.png`).
pub(crate) fn write_plots(cfg: &RunConfig, b: &Built, x: &Array2<f64>, dir: &Path) -> Result<()> {
    let title = format!(
        "{}-{}-{} seed {}",
        cfg.method, cfg.loss, cfg.target, cfg.seed
    );
    let dom = b.target.domain();
    if dom.len() >= 2 {
        let domain = [dom[0], dom[1]];
        if b.target.dim() == 2 {
            let target = b.target.as_ref();
            let log_density = |g: &Array2<f64>| -> Vec<f64> {
                let flat: Vec<f64> = g.iter().cloned().collect();
                let t = Tensor::from_slice(&flat)
                    .view([g.nrows() as i64, 2])
                    .to_kind(Kind::Float)
                    .to_device(b.device);
                let lp = tch::no_grad(|| target.log_density(&t))
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu);
                Vec::<f64>::try_from(&lp).unwrap_or_default()
            };
            crate::plots::plot_samples_2d(
                &dir.join("samples.png"),
                x,
                &log_density,
                domain,
                &title,
            )?;
        } else {
            let reference = match reference_samples(b.target.as_ref(), 2000) {
                Some(r) => Some(r?),
                None => None,
            };
            crate::plots::plot_marginals(
                &dir.join("samples.png"),
                x,
                reference.as_ref(),
                domain,
                &title,
            )?;
        }
    }
    let metrics = dir.join("metrics.jsonl");
    if metrics.exists() {
        crate::plots::plot_curves(&dir.join("curves.png"), &metrics)?;
    }
    Ok(())
}

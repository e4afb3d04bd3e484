//! The evaluation protocol of the later benchmarks (RSMC, SCLD, Beyond-ELBOs; spec
//! benchmarks §5.1): sample metrics of `eval.n_metrics` model samples against one reference
//! set per target drawn with a fixed seed, at every evaluation during training and at the
//! end; the last value and the mean over the last 5 evaluations; and the noise floor, the
//! mean metric between that reference set and 5 other reference draws (what 0 means).
//!
//! The metrics are the benchmark conventions: the debiased Sinkhorn divergence of ott-jax
//! (`sinkhorn_div`, squared cost, ε = 0.05·mean C_xy), the MMD with the median heuristic
//! (`mmd_median`) and, for particle systems, the geometric W2 (`w2_geometric`).

use super::evaluate::to_array;
use anyhow::{bail, Result};
use lv_core::Target;
use lv_metrics::MetricsReport;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Seed of the fixed reference set (RSMC draws it with JAX key 0).
pub const REFERENCE_SET_SEED: i64 = 0;

/// Evaluations averaged for the `mean_last` summary (RSMC's moving-average window).
pub const MEAN_WINDOW: usize = 5;

/// Reference draws of the noise floor (seeds 1 … 5, as RSMC's `sd_target`).
pub const NOISE_FLOOR_DRAWS: usize = 5;

/// How the final sample metrics of a run are computed (`eval.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The LV paper's: every metric against fresh exact samples (or the shipped set), at the
    /// end of training only.
    #[default]
    Fresh,
    /// The later benchmarks' (module doc): a fixed reference set, the benchmark metrics at
    /// every evaluation, their last value, the mean of the last 5, and the noise floor.
    FixedReference,
}

/// One line of `sample_metrics.jsonl`: the benchmark metrics of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleMetricsRecord {
    pub step: usize,
    #[serde(flatten)]
    pub metrics: MetricsReport,
}

/// The summary of the periodic evaluations in results.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeriodicMetrics {
    /// Evaluations with sample metrics (the final one included).
    pub evaluations: usize,
    /// Mean of each metric over the last [`MEAN_WINDOW`] evaluations (or all, if fewer).
    pub mean_last: MetricsReport,
    /// Mean of each metric between the reference set and [`NOISE_FLOOR_DRAWS`] other draws.
    pub noise_floor: MetricsReport,
}

/// The fixed reference set of a target and the metrics against it.
pub struct FixedReference {
    reference: Array2<f64>,
    particles: Option<usize>,
}

impl FixedReference {
    /// Draws `n` reference samples with [`REFERENCE_SET_SEED`] (exact sampler), or takes the
    /// first `n` rows of the shipped set. Torch's generator is left re-seeded; callers seed
    /// it before they draw.
    pub fn new(target: &dyn Target, n: usize) -> Result<Self> {
        let reference = reference_draw(target, n, 0)?;
        Ok(Self {
            reference,
            particles: target.zero_com().map(|z| z.particles),
        })
    }

    /// Rows of the reference set.
    pub fn len(&self) -> usize {
        self.reference.nrows()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.reference.nrows() == 0
    }

    /// The benchmark metrics of `samples` (their first rows, as many as the reference set
    /// has; rows with a non-finite coordinate left out) against the reference set.
    pub fn metrics(&self, samples: &Tensor) -> Result<MetricsReport> {
        let x = finite_rows(&to_array(samples)?);
        let x = x
            .slice(ndarray::s![..x.nrows().min(self.len()), ..])
            .to_owned();
        self.metrics_of(&x)
    }

    /// The benchmark metrics of finite model samples `x` against the reference set.
    pub fn metrics_of(&self, x: &Array2<f64>) -> Result<MetricsReport> {
        if x.nrows() < 2 {
            bail!("the benchmark metrics need at least 2 finite model samples");
        }
        let y = self.reference.view();
        let opts = lv_metrics::DivergenceOptions::default();
        let mut r = MetricsReport {
            sinkhorn_div: Some(lv_metrics::sinkhorn_divergence(x.view(), y, &opts)?.divergence),
            mmd_median: Some(lv_metrics::mmd_median(x.view(), y)?.mmd),
            ..Default::default()
        };
        if let Some(p) = self.particles {
            if x.nrows() == self.len() {
                r.w2_geometric = Some(lv_metrics::geometric_w2(x.view(), y, p)?);
            }
        }
        Ok(r)
    }

    /// The noise floor: the mean of the metrics between the reference set and
    /// [`NOISE_FLOOR_DRAWS`] other reference draws of the same size (exact samples with
    /// seeds 1 …; for a shipped set, its next disjoint blocks of rows where it has them,
    /// else seeded random subsets, which overlap the reference set).
    pub fn noise_floor(&self, target: &dyn Target) -> Result<MetricsReport> {
        let mut all = Vec::new();
        for k in 1..=NOISE_FLOOR_DRAWS {
            let other = reference_draw(target, self.len(), k)?;
            all.push(self.metrics_of(&other)?);
        }
        Ok(mean_report(&all))
    }
}

/// Draw `k` of a target's reference samples (k = 0: the reference set).
fn reference_draw(target: &dyn Target, n: usize, k: usize) -> Result<Array2<f64>> {
    if let Some(s) = target.sampler() {
        tch::manual_seed(REFERENCE_SET_SEED + k as i64);
        return to_array(&s.sample(n, Device::Cpu));
    }
    let Some(shipped) = target.reference_samples() else {
        bail!(
            "target `{}` has neither an exact sampler nor reference samples",
            target.name()
        );
    };
    let all = to_array(&shipped?)?;
    if all.nrows() < n {
        bail!(
            "target `{}` ships {} reference samples, fewer than eval.n_metrics = {n}",
            target.name(),
            all.nrows()
        );
    }
    if all.nrows() >= (k + 1) * n {
        return Ok(all.slice(ndarray::s![k * n..(k + 1) * n, ..]).to_owned());
    }
    Ok(lv_metrics::report::subsample(&all, n, k as u64))
}

fn finite_rows(a: &Array2<f64>) -> Array2<f64> {
    let keep: Vec<usize> = (0..a.nrows())
        .filter(|&i| a.row(i).iter().all(|v| v.is_finite()))
        .collect();
    a.select(ndarray::Axis(0), &keep)
}

/// The mean of each metric over the reports that have it.
pub fn mean_report(all: &[MetricsReport]) -> MetricsReport {
    let mean = |f: &dyn Fn(&MetricsReport) -> Option<f64>| {
        let v: Vec<f64> = all.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    MetricsReport {
        w2: mean(&|r| r.w2),
        sinkhorn_sde: mean(&|r| r.sinkhorn_sde),
        sinkhorn_div: mean(&|r| r.sinkhorn_div),
        mmd_median: mean(&|r| r.mmd_median),
        mmd_unbiased: mean(&|r| r.mmd_unbiased),
        w2_geometric: mean(&|r| r.w2_geometric),
        metric_sizes: None,
    }
}

/// The summary of the periodic metrics `during` (in step order) and the final ones.
pub fn summarise(
    during: &[MetricsReport],
    last: &MetricsReport,
    noise_floor: MetricsReport,
) -> PeriodicMetrics {
    let mut all: Vec<MetricsReport> = during.to_vec();
    all.push(last.clone());
    let tail = &all[all.len().saturating_sub(MEAN_WINDOW)..];
    PeriodicMetrics {
        evaluations: all.len(),
        mean_last: mean_report(tail),
        noise_floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(s: f64) -> MetricsReport {
        MetricsReport {
            sinkhorn_div: Some(s),
            mmd_median: Some(2.0 * s),
            ..Default::default()
        }
    }

    #[test]
    fn mean_over_the_last_five_including_the_final() {
        let during: Vec<MetricsReport> = (1..=7).map(|k| rep(k as f64)).collect();
        let s = summarise(&during, &rep(8.0), rep(0.5));
        assert_eq!(s.evaluations, 8);
        // last five: 4, 5, 6, 7, 8
        assert_eq!(s.mean_last.sinkhorn_div, Some(6.0));
        assert_eq!(s.mean_last.mmd_median, Some(12.0));
        assert_eq!(s.mean_last.w2_geometric, None);
        let short = summarise(&during[..1], &rep(3.0), rep(0.5));
        assert_eq!(short.mean_last.sinkhorn_div, Some(2.0));
    }

    #[test]
    fn noise_floor_of_a_target_against_itself_is_small_and_positive() {
        let _g = lv_core::testing::rng_lock();
        let target = lv_targets::by_name("gmm9").unwrap();
        let fixed = FixedReference::new(target.as_ref(), 500).unwrap();
        let floor = fixed.noise_floor(target.as_ref()).unwrap();
        let sd = floor.sinkhorn_div.unwrap();
        let mmd = floor.mmd_median.unwrap();
        // Two draws of the same law: positive (finite samples) and far below the metric of
        // a wrong law (the same set shifted by 3 in every coordinate: S = |shift|² = 18).
        let shifted = fixed.reference.mapv(|v| v + 3.0);
        let off = fixed.metrics_of(&shifted).unwrap();
        assert!(sd > 0.0 && mmd > 0.0, "{floor:?}");
        assert!(sd < 0.1 * off.sinkhorn_div.unwrap(), "{floor:?} vs {off:?}");
        assert!(mmd < 0.5 * off.mmd_median.unwrap(), "{floor:?} vs {off:?}");
        // The reference set is the same in every call.
        let again = FixedReference::new(target.as_ref(), 500).unwrap();
        assert_eq!(again.reference, fixed.reference);
    }
}

//! `results.json`: the final evaluation of a run as one typed struct, written by `lv train`
//! and `lv eval` and read by the tables ([`RunResults::read`]). Scalar columns of a table
//! are named by [`Metric`], parsed from the table file.

use super::evaluate::StdReference;
use super::protocol::PeriodicMetrics;
use anyhow::{Context, Result};
use lv_core::json::f64_or_nan;
use lv_core::loss::LossName;
use lv_core::method::MethodKind;
use lv_metrics::{MetricsReport, ModeCoverage};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The contents of `results.json`. Non-finite numbers are written as `null` and read back as
/// NaN (estimates) or `None` (optional metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub method: MethodKind,
    pub loss: LossName,
    /// Registry name of the target.
    pub target: String,
    pub seed: u64,
    /// Training steps attempted.
    pub steps: usize,
    pub batch: usize,
    pub grid_steps: usize,
    /// log Ẑ_IS (pass 1, with Itô term).
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_is: f64,
    /// The ELBO (pass 2, no Itô term).
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_elbo: f64,
    /// mean(−R) of pass 1 (the Itô lower bound).
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_lb_ito: f64,
    /// Normalised ESS of the pass-1 weights.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ess: f64,
    /// Var(R) of pass 1.
    #[serde(deserialize_with = "f64_or_nan")]
    pub lv: f64,
    /// Trajectories of the final evaluation and those with non-finite R.
    pub eval_n: usize,
    pub eval_non_finite: usize,
    /// Training seconds (over all invocations of a resumed run).
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
    pub skipped_steps: usize,
    pub filtered_samples: u64,
    pub target_evals: u64,
    /// The target's log Z, where known.
    pub log_z_ref: Option<f64>,
    /// |estimate − log Z| per estimate, and the relative error |·| / (|log Z| + 1e-8).
    pub log_z_error_is: Option<f64>,
    pub log_z_error_elbo: Option<f64>,
    pub log_z_error_lb_ito: Option<f64>,
    pub rel_error_is: Option<f64>,
    pub rel_error_elbo: Option<f64>,
    pub rel_error_lb_ito: Option<f64>,
    /// Terminal samples with a non-finite coordinate (left out of the sample metrics).
    pub non_finite_samples: usize,
    /// The sample metrics against the target's reference (keys of `lv metrics --json`).
    #[serde(flatten)]
    pub metrics: MetricsReport,
    /// mean_k |ŝ_k − s_k| and |mean_k ŝ_k − mean_k s_k| (spec §10), per coordinate, and where
    /// the s_k come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_marginal_stddev: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_stddev: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stddev_error_per_coordinate: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stddev_reference: Option<StdReference>,
    /// Mode coverage for targets with known mode centres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_coverage: Option<ModeCoverage>,
    /// With `eval.protocol = "fixed_reference"`: the mean of the last 5 evaluations and the
    /// noise floor (the top-level metrics are then the last evaluation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic: Option<PeriodicMetrics>,
    /// Annealed runs with resampling or MCMC: the SMC rollout's estimates (the top-level
    /// log Z, ESS and samples are the plain importance-sampling rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smc: Option<SmcSummary>,
}

/// The SMC evaluation of an annealed run (lv_core::anneal::smc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmcSummary {
    /// log Ẑ_SMC = Σ_j lnZ_j.
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z: f64,
    /// Σ_j ELBO_j.
    #[serde(deserialize_with = "f64_or_nan")]
    pub elbo: f64,
    /// |log Ẑ_SMC − log Z| where log Z is known.
    pub log_z_error: Option<f64>,
    /// Resampling events over the K pieces.
    pub resamples: usize,
    /// Mean MCMC acceptance rate, with MCMC.
    pub acceptance: Option<f64>,
}

impl RunResults {
    /// Reads a run's `results.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("missing results {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    fn periodic(&self) -> Option<&PeriodicMetrics> {
        self.periodic.as_ref()
    }

    /// The value of a scalar table column; `None` where the run has none (or it is not
    /// finite).
    pub fn value(&self, m: Metric) -> Option<f64> {
        let v = match m {
            Metric::LogZIs => Some(self.log_z_is),
            Metric::LogZElbo => Some(self.log_z_elbo),
            Metric::LogZErrorIs => self.log_z_error_is,
            Metric::LogZErrorElbo => self.log_z_error_elbo,
            Metric::SmcLogZError => self.smc.as_ref().and_then(|s| s.log_z_error),
            Metric::LogZErrorLbIto => self.log_z_error_lb_ito,
            Metric::RelErrorIs => self.rel_error_is,
            Metric::RelErrorElbo => self.rel_error_elbo,
            Metric::Ess => Some(self.ess),
            Metric::Lv => Some(self.lv),
            Metric::AvgMarginalStddev => self.avg_marginal_stddev,
            Metric::AvgStddev => self.avg_stddev,
            Metric::W2 => self.metrics.w2,
            Metric::SinkhornSde => self.metrics.sinkhorn_sde,
            Metric::SinkhornDiv => self.metrics.sinkhorn_div,
            Metric::MmdMedian => self.metrics.mmd_median,
            Metric::MmdUnbiased => self.metrics.mmd_unbiased,
            Metric::W2Geometric => self.metrics.w2_geometric,
            Metric::ModeCoverageFraction => self.mode_coverage.as_ref().map(|c| c.fraction),
            Metric::SinkhornDivMean5 => self.periodic()?.mean_last.sinkhorn_div,
            Metric::MmdMedianMean5 => self.periodic()?.mean_last.mmd_median,
            Metric::W2GeometricMean5 => self.periodic()?.mean_last.w2_geometric,
            Metric::SinkhornDivFloor => self.periodic()?.noise_floor.sinkhorn_div,
            Metric::MmdMedianFloor => self.periodic()?.noise_floor.mmd_median,
            Metric::W2GeometricFloor => self.periodic()?.noise_floor.w2_geometric,
            Metric::Seconds => Some(self.seconds),
            Metric::SkippedSteps => Some(self.skipped_steps as f64),
        };
        v.filter(|x| x.is_finite())
    }
}

/// A scalar column of a results table (the `metrics` list of `configs/tables/*.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    LogZIs,
    LogZElbo,
    LogZErrorIs,
    LogZErrorElbo,
    LogZErrorLbIto,
    RelErrorIs,
    RelErrorElbo,
    Ess,
    Lv,
    AvgMarginalStddev,
    AvgStddev,
    W2,
    SinkhornSde,
    SinkhornDiv,
    MmdMedian,
    MmdUnbiased,
    W2Geometric,
    ModeCoverageFraction,
    /// The mean of the last 5 evaluations (benchmark protocol).
    SinkhornDivMean5,
    MmdMedianMean5,
    W2GeometricMean5,
    /// The noise floor (benchmark protocol).
    SinkhornDivFloor,
    MmdMedianFloor,
    W2GeometricFloor,
    /// |log Ẑ_SMC − log Z| of an annealed run's SMC rollout (`smc.log_z_error`).
    SmcLogZError,
    Seconds,
    SkippedSteps,
}

impl Metric {
    /// The column's name (its key in the table file and in results.json).
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }
}

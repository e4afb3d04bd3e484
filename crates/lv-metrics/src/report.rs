//! The `lv metrics A B` report: every sample-based metric of A (model
//! samples) against B (reference samples), each in its own convention.

use anyhow::{bail, Result};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::exact::w2_exact;
use crate::mmd::{mmd_median, mmd_unbiased};
use crate::particles::geometric_w2;
use crate::sinkhorn::{sinkhorn_divergence, sinkhorn_sde, DivergenceOptions, SdeSinkhornOptions};

/// Options of [`compute_report`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Overrides ε of both Sinkhorn metrics (default: 1e-3 for
    /// `sinkhorn_sde`, 0.05·mean(C_xy) for `sinkhorn_div`).
    pub eps: Option<f64>,
    /// Number of particles `P`; enables `w2_geometric` (requires
    /// `d % P == 0`).
    pub particles: Option<usize>,
    /// Samples per set for `w2` and `w2_geometric` (default 2000).
    pub max_exact: usize,
    /// Samples per set for `sinkhorn_div` (default 2000).
    pub max_sinkhorn_div: usize,
    /// Samples per set for `sinkhorn_sde` (default 10 000; the paper uses
    /// 100 000, which the streaming solver supports but takes long).
    pub max_sinkhorn_sde: usize,
    /// Samples per set for the MMDs (default 2000).
    pub max_mmd: usize,
    /// Seed of the subsampling shuffle.
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            eps: None,
            particles: None,
            max_exact: 2000,
            max_sinkhorn_div: 2000,
            max_sinkhorn_sde: 10_000,
            max_mmd: 2000,
            seed: 0,
        }
    }
}

/// All metrics of A (model) against B (reference). `None` fields are
/// skipped in JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Exact W2 ([`crate::w2_exact`]); both sets subsampled to
    /// `min(n_a, n_b, max_exact)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w2: Option<f64>,
    /// Richter–Berner Sinkhorn ([`crate::sinkhorn_sde`]), Euclidean cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinkhorn_sde: Option<f64>,
    /// Debiased Sinkhorn divergence ([`crate::sinkhorn_divergence`]),
    /// squared cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinkhorn_div: Option<f64>,
    /// MMD, median heuristic, SCLD/RSMC convention ([`crate::mmd_median`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmd_median: Option<f64>,
    /// Unbiased MMD² ([`crate::mmd_unbiased`], median bandwidth over
    /// distinct pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmd_unbiased: Option<f64>,
    /// Geometric W2 for particle systems ([`crate::geometric_w2`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w2_geometric: Option<f64>,
    /// The samples per set (A, B) each metric used after subsampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_sizes: Option<MetricSizes>,
}

/// Samples `[from A, from B]` each metric of a [`MetricsReport`] used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSizes {
    /// `w2` and `w2_geometric` (equal sizes by construction).
    pub w2: [usize; 2],
    pub sinkhorn_sde: [usize; 2],
    pub sinkhorn_div: [usize; 2],
    /// `mmd_median` and `mmd_unbiased`.
    pub mmd: [usize; 2],
}

/// SplitMix64 step.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rows of `a` subsampled without replacement to at most `k` rows
/// (Fisher–Yates with a seeded SplitMix64; the identity when `k ≥ n`).
pub fn subsample(a: &Array2<f64>, k: usize, seed: u64) -> Array2<f64> {
    let n = a.nrows();
    if k >= n {
        return a.clone();
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let mut st = seed;
    for i in 0..k {
        let j = i + (splitmix(&mut st) % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut chosen = idx[..k].to_vec();
    chosen.sort_unstable();
    a.select(Axis(0), &chosen)
}

/// Computes every metric of `a` (model samples) against `b` (reference
/// samples). Sets are subsampled (seeded, without replacement) to the
/// per-metric maxima of `opts`; `w2` and `w2_geometric` use the same number
/// of samples from both sets (`min(n_a, n_b, max_exact)`), so they are
/// always reported. MMDs need at least 2 samples per set (else `None`).
///
/// Errors: dimension mismatch, empty sets, `d % particles != 0`, invalid ε.
pub fn compute_report(
    a: &Array2<f64>,
    b: &Array2<f64>,
    opts: &ReportOptions,
) -> Result<MetricsReport> {
    if a.ncols() != b.ncols() {
        bail!(
            "metrics: dimension mismatch: A has d = {}, B has d = {}",
            a.ncols(),
            b.ncols()
        );
    }
    if a.nrows() == 0 || b.nrows() == 0 {
        bail!(
            "metrics: empty sample set (A has {} rows, B has {})",
            a.nrows(),
            b.nrows()
        );
    }
    if let Some(p) = opts.particles {
        if p == 0 || !a.ncols().is_multiple_of(p) {
            bail!(
                "metrics: dimension {} is not divisible by the number of particles {p}",
                a.ncols()
            );
        }
    }
    let (sa, sb) = (opts.seed, opts.seed ^ 0x5555_5555_5555_5555);
    let mut r = MetricsReport::default();
    let mut sizes = MetricSizes::default();

    let k = a.nrows().min(b.nrows()).min(opts.max_exact);
    let (ea, eb) = (subsample(a, k, sa), subsample(b, k, sb));
    r.w2 = Some(w2_exact(ea.view(), eb.view())?);
    sizes.w2 = [k, k];
    if let Some(p) = opts.particles {
        r.w2_geometric = Some(geometric_w2(ea.view(), eb.view(), p)?);
    }

    let (xa, xb) = (
        subsample(a, opts.max_sinkhorn_sde, sa),
        subsample(b, opts.max_sinkhorn_sde, sb),
    );
    let mut sde = SdeSinkhornOptions::default();
    if let Some(e) = opts.eps {
        sde.eps = e;
    }
    r.sinkhorn_sde = Some(sinkhorn_sde(xa.view(), xb.view(), &sde)?.value);
    sizes.sinkhorn_sde = [xa.nrows(), xb.nrows()];

    let (xa, xb) = (
        subsample(a, opts.max_sinkhorn_div, sa),
        subsample(b, opts.max_sinkhorn_div, sb),
    );
    let div = DivergenceOptions {
        eps: opts.eps,
        ..Default::default()
    };
    r.sinkhorn_div = Some(sinkhorn_divergence(xa.view(), xb.view(), &div)?.divergence);
    sizes.sinkhorn_div = [xa.nrows(), xb.nrows()];

    let (xa, xb) = (
        subsample(a, opts.max_mmd, sa),
        subsample(b, opts.max_mmd, sb),
    );
    if xa.nrows() >= 2 && xb.nrows() >= 2 {
        r.mmd_median = Some(mmd_median(xa.view(), xb.view())?.mmd);
        r.mmd_unbiased = Some(mmd_unbiased(xa.view(), xb.view(), None)?.mmd2);
        sizes.mmd = [xa.nrows(), xb.nrows()];
    }
    r.metric_sizes = Some(sizes);
    Ok(r)
}

/// Human-readable table of a report (absent metrics are omitted), one
/// metric per line with its convention.
pub fn render_table(r: &MetricsReport) -> String {
    let rows: [(&str, Option<f64>, &str); 6] = [
        ("w2", r.w2, "exact W2, sqrt(mean assigned ‖x−y‖²)"),
        (
            "sinkhorn_sde",
            r.sinkhorn_sde,
            "sde_sampler: Σ P·‖x−y‖, ε=1e-3, ≤100 it",
        ),
        (
            "sinkhorn_div",
            r.sinkhorn_div,
            "debiased S_ε, ‖x−y‖², ε=0.05·mean C (ott)",
        ),
        (
            "mmd_median",
            r.mmd_median,
            "MMD, median bw incl. diag (SCLD/RSMC)",
        ),
        ("mmd_unbiased", r.mmd_unbiased, "unbiased MMD², median bw"),
        (
            "w2_geometric",
            r.w2_geometric,
            "W2 after Hungarian + Kabsch (AS/ASBS)",
        ),
    ];
    let mut out = format!("{:<14} {:>14}  {}\n", "metric", "value", "convention");
    out.push_str(&format!("{}\n", "-".repeat(72)));
    for (name, v, conv) in rows {
        if let Some(v) = v {
            out.push_str(&format!("{name:<14} {v:>14.6e}  {conv}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.sample::<f64, _>(StandardNormal) + shift)
    }

    #[test]
    fn report_fields_and_json() {
        let a = cloud(60, 4, 1, 0.5);
        let b = cloud(50, 4, 2, 0.0);
        let opts = ReportOptions {
            particles: Some(2),
            ..Default::default()
        };
        let r = compute_report(&a, &b, &opts).unwrap();
        for v in [
            r.w2,
            r.sinkhorn_sde,
            r.sinkhorn_div,
            r.mmd_median,
            r.mmd_unbiased,
            r.w2_geometric,
        ] {
            assert!(v.unwrap().is_finite());
        }
        assert!(r.w2.unwrap() > 0.0 && r.sinkhorn_div.unwrap() > 0.0);
        let json = serde_json::to_string(&r).unwrap();
        for key in [
            "\"w2\"",
            "\"sinkhorn_sde\"",
            "\"sinkhorn_div\"",
            "\"mmd_median\"",
            "\"mmd_unbiased\"",
            "\"w2_geometric\"",
        ] {
            assert!(json.contains(key), "{json}");
        }
        let sizes = r.metric_sizes.clone().unwrap();
        assert_eq!(sizes.w2, [50, 50]);
        assert_eq!(sizes.sinkhorn_sde, [60, 50]);
        let table = render_table(&r);
        assert!(table.contains("sinkhorn_div") && table.contains("w2_geometric"));
        // Without particles the field is skipped in JSON.
        let r = compute_report(&a, &b, &ReportOptions::default()).unwrap();
        assert!(r.w2_geometric.is_none());
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("w2_geometric"), "{json}");
        assert!(json.contains("metric_sizes"), "{json}");
        // Each metric uses the size its option names.
        let opts = ReportOptions {
            max_exact: 20,
            max_sinkhorn_sde: 40,
            max_sinkhorn_div: 30,
            max_mmd: 10,
            ..Default::default()
        };
        let s = compute_report(&a, &b, &opts).unwrap().metric_sizes.unwrap();
        assert_eq!(
            (s.w2, s.sinkhorn_sde, s.sinkhorn_div, s.mmd),
            ([20, 20], [40, 40], [30, 30], [10, 10])
        );
        let back: MetricsReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn report_errors() {
        let a = cloud(10, 4, 1, 0.0);
        let b = cloud(10, 3, 2, 0.0);
        let e = compute_report(&a, &b, &ReportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("dimension mismatch"), "{e}");
        let b = cloud(10, 4, 2, 0.0);
        let opts = ReportOptions {
            particles: Some(3),
            ..Default::default()
        };
        let e = compute_report(&a, &b, &opts).unwrap_err().to_string();
        assert!(e.contains("not divisible"), "{e}");
    }

    #[test]
    fn subsample_is_seeded_subset() {
        let a = Array2::from_shape_fn((100, 2), |(i, j)| (i * 2 + j) as f64);
        let s1 = subsample(&a, 10, 3);
        let s2 = subsample(&a, 10, 3);
        assert_eq!(s1, s2);
        assert_eq!(s1.nrows(), 10);
        let mut rows: Vec<usize> = s1.rows().into_iter().map(|r| r[0] as usize / 2).collect();
        rows.dedup();
        assert_eq!(rows.len(), 10);
        assert_eq!(subsample(&a, 200, 3), a);
    }
}

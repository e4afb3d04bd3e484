//! Marginal standard-deviation errors (`method.md` §10) and mode coverage
//! for mixture targets.

use anyhow::{bail, Result};
use ndarray::{Array1, ArrayView2, Axis};
use serde::Serialize;

use crate::cost::check_pair;

/// Standard-deviation errors of the Richter–Berner code (`method.md` §10).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StdErrors {
    /// `mean_k |ŝ_k − s_k|` (the paper's Δstd, most likely).
    pub avg_marginal_stddev: f64,
    /// `|mean_k ŝ_k − mean_k s_k|`.
    pub avg_stddev: f64,
    /// `|ŝ_k − s_k|` per coordinate (the paper logs coordinates 0 and 1).
    pub per_coordinate: Vec<f64>,
}

/// Unbiased (divisor `n − 1`) per-coordinate standard deviations.
/// Errors for fewer than two samples.
pub fn unbiased_std(x: ArrayView2<f64>) -> Result<Array1<f64>> {
    if x.nrows() < 2 {
        bail!("unbiased_std: need at least 2 samples, got {}", x.nrows());
    }
    Ok(x.std_axis(Axis(0), 1.0))
}

/// Std errors of model samples against known target stds `s_k`:
/// `ŝ_k` is the unbiased (`n − 1`) std of `model` per coordinate;
/// `avg_marginal_stddev = mean_k |ŝ_k − s_k|`,
/// `avg_stddev = |mean_k ŝ_k − mean_k s_k|` (`method.md` §10).
pub fn std_errors(model: ArrayView2<f64>, target_std: &[f64]) -> Result<StdErrors> {
    if model.ncols() != target_std.len() {
        bail!(
            "std_errors: model dimension {} != target std length {}",
            model.ncols(),
            target_std.len()
        );
    }
    if model.ncols() == 0 {
        bail!("std_errors: dimension 0");
    }
    let s_hat = unbiased_std(model)?;
    let per: Vec<f64> = s_hat
        .iter()
        .zip(target_std)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let d = per.len() as f64;
    let mean_hat = s_hat.sum() / d;
    let mean_ref = target_std.iter().sum::<f64>() / d;
    Ok(StdErrors {
        avg_marginal_stddev: per.iter().sum::<f64>() / d,
        avg_stddev: (mean_hat - mean_ref).abs(),
        per_coordinate: per,
    })
}

/// [`std_errors`] with `s_k` estimated as the unbiased std of reference
/// samples.
pub fn std_errors_vs_samples(
    model: ArrayView2<f64>,
    reference: ArrayView2<f64>,
) -> Result<StdErrors> {
    check_pair(&model, &reference, "std_errors")?;
    let s = unbiased_std(reference)?;
    std_errors(model, s.as_slice().expect("fresh array"))
}

/// Result of [`mode_coverage`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ModeCoverage {
    /// Fraction of modes covered, in `[0, 1]`.
    pub fraction: f64,
    /// Number of covered modes.
    pub covered: usize,
    /// Samples assigned to each mode (nearest centre, Euclidean).
    pub counts: Vec<usize>,
    /// Share threshold used: a mode is covered when
    /// `count ≥ min_share · n_samples`.
    pub min_share: f64,
}

/// Mode coverage for mixture targets: each sample is assigned to its nearest
/// centre (Euclidean; ties to the lower index), and a mode counts as covered
/// when it receives at least `min_share · n_samples` samples.
///
/// `min_share = None` uses `1/(4·K)` for `K` modes: a quarter of the share
/// an equal-weight mixture would give each mode (no published convention;
/// the paper's code defines no mode-counting metric, `method.md` §10).
pub fn mode_coverage(
    samples: ArrayView2<f64>,
    centres: ArrayView2<f64>,
    min_share: Option<f64>,
) -> Result<ModeCoverage> {
    check_pair(&samples, &centres, "mode_coverage")?;
    let k = centres.nrows();
    let share = min_share.unwrap_or(1.0 / (4.0 * k as f64));
    if !(0.0..=1.0).contains(&share) {
        bail!("mode_coverage: min_share must be in [0, 1], got {share}");
    }
    let mut counts = vec![0usize; k];
    for s in samples.rows() {
        let mut best = f64::INFINITY;
        let mut bi = 0;
        for (ci, c) in centres.rows().into_iter().enumerate() {
            let d: f64 = s.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < best {
                best = d;
                bi = ci;
            }
        }
        counts[bi] += 1;
    }
    let need = share * samples.nrows() as f64;
    let covered = counts
        .iter()
        .filter(|&&c| c as f64 >= need && c > 0)
        .count();
    Ok(ModeCoverage {
        fraction: covered as f64 / k as f64,
        covered,
        counts,
        min_share: share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn std_errors_hand_case() {
        // column 0: 1,2,3 → unbiased std 1; column 1: 0,0,6 → mean 2,
        // deviations -2,-2,4 → var (4+4+16)/2 = 12 → std sqrt(12)
        let m = array![[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]];
        let e = std_errors(m.view(), &[2.0, 1.0]).unwrap();
        let s1 = 12f64.sqrt();
        assert!((e.per_coordinate[0] - 1.0).abs() < 1e-15);
        assert!((e.per_coordinate[1] - (s1 - 1.0)).abs() < 1e-15);
        assert!((e.avg_marginal_stddev - (1.0 + s1 - 1.0) / 2.0).abs() < 1e-15);
        assert!((e.avg_stddev - ((1.0 + s1) / 2.0 - 1.5).abs()).abs() < 1e-15);
        assert!(std_errors(m.view(), &[1.0]).is_err());
    }

    #[test]
    fn mode_coverage_counts() {
        let centres = array![[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        // 8 samples near mode 0, 2 near mode 1, none elsewhere.
        let mut rows = vec![];
        for i in 0..8 {
            rows.push([0.1 * i as f64, 0.0]);
        }
        rows.push([9.0, 0.5]);
        rows.push([10.5, -0.5]);
        let s = ndarray::Array2::from_shape_fn((10, 2), |(i, j)| rows[i][j]);
        // default share 1/16 → need ≥ 0.625 samples → modes 0, 1 covered
        let c = mode_coverage(s.view(), centres.view(), None).unwrap();
        assert_eq!(c.counts, vec![8, 2, 0, 0]);
        assert_eq!(c.covered, 2);
        assert_eq!(c.fraction, 0.5);
        // share 0.25 → need ≥ 2.5 → only mode 0
        let c = mode_coverage(s.view(), centres.view(), Some(0.25)).unwrap();
        assert_eq!(c.covered, 1);
    }
}

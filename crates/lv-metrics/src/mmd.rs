//! Maximum mean discrepancy with a Gaussian kernel.

use anyhow::{bail, Result};
use ndarray::{concatenate, ArrayView2, Axis};
use rayon::prelude::*;

use crate::cost::{check_pair, contig, transpose_contig};
use crate::fastmath;

/// Result of an MMD computation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdOutput {
    /// The MMD² estimate (may be negative for the unbiased estimator).
    pub mmd2: f64,
    /// The reported MMD: `sqrt(max(1e-20, mmd2))`.
    pub mmd: f64,
    /// Kernel bandwidth `h` in `k(x, y) = exp(−‖x − y‖² / (2h²))`.
    pub bandwidth: f64,
}

/// Median of a slice (NumPy semantics: mean of the two middle values for an
/// even count). Reorders the slice. Panics on an empty slice.
fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    assert!(n > 0);
    let (left, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        hi
    } else {
        let lo = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// Euclidean distances of all pairs `i < j` (or `i ≤ j` with
/// `include_diagonal`) of the rows of `z`.
fn pair_distances(z: ArrayView2<f64>, include_diagonal: bool) -> Vec<f64> {
    let n = z.nrows();
    let zc = contig(z);
    let zt = transpose_contig(z);
    let d = z.ncols();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut buf = vec![0.0; n];
            fastmath::dist_row(&zc[i * d..(i + 1) * d], &zt, n, &mut buf, true);
            let start = if include_diagonal { i } else { i + 1 };
            buf[start..].to_vec()
        })
        .flatten()
        .collect()
}

/// Median-heuristic bandwidth: the median (NumPy convention) of the pairwise
/// Euclidean distances of the pooled sample `Z = [x; y]`.
///
/// `include_diagonal = true` takes the upper triangle **including** the zero
/// diagonal (pairs `i ≤ j`, `jnp.triu_indices`), as in `mmd_median.py`
/// (`benchmarks.md` §4.6); `false` takes distinct pairs `i < j` only.
pub fn median_bandwidth(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    include_diagonal: bool,
) -> Result<f64> {
    check_pair(&x, &y, "median_bandwidth")?;
    let z = concatenate(Axis(0), &[x.view(), y.view()])?;
    let mut dists = pair_distances(z.view(), include_diagonal);
    if dists.is_empty() {
        bail!("median_bandwidth: need at least two points");
    }
    Ok(median_in_place(&mut dists))
}

/// `Σ_ij exp(−‖a_i − b_j‖² · scale)` over all pairs (diagonals included). Rows are
/// computed in parallel and their sums added in row order, so the result does not depend on
/// rayon's scheduling (a parallel `sum()` does).
fn kernel_sum(a: ArrayView2<f64>, b: ArrayView2<f64>, scale: f64) -> f64 {
    let d = a.ncols();
    let m = b.nrows();
    let ac = contig(a);
    let bt = transpose_contig(b);
    let zeros = vec![0.0; m];
    (0..a.nrows())
        .into_par_iter()
        .map_init(
            || vec![0.0; m],
            |buf, i| {
                fastmath::dist_row(&ac[i * d..(i + 1) * d], &bt, m, buf, false);
                fastmath::plan_row(0.0, &zeros, buf, scale).1
            },
        )
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

fn check_sizes(x: &ArrayView2<f64>, y: &ArrayView2<f64>, what: &str) -> Result<()> {
    check_pair(x, y, what)?;
    if x.nrows() < 2 || y.nrows() < 2 {
        bail!(
            "{what}: need at least 2 samples per set (got {} and {})",
            x.nrows(),
            y.nrows()
        );
    }
    Ok(())
}

/// MMD with the median heuristic exactly as `eval/mmd_median.py`
/// (SCLD / RSMC, adapted from MMD-FUSE; `benchmarks.md` §4.6):
///
/// 1. `h` = median of the Euclidean distances of the pooled `n + m` points
///    over pairs `i ≤ j`, **including the zero diagonal**;
/// 2. `k(x, y) = exp(−‖x − y‖²/(2h²))`;
/// 3. `MMD² = ΣK_XX/(n(n−1)) + ΣK_YY/(m(m−1)) − 2·mean(K_XY)` where the XX
///    and YY sums **include their unit diagonals** (biased up by
///    `1/(n−1) + 1/(m−1)`);
/// 4. report `sqrt(max(1e-20, MMD²))`.
///
/// `n = |x|`, `m = |y|` as in the spec. (The reference code divides ΣK_XX by
/// `|y|(|y|−1)` and ΣK_YY by `|x|(|x|−1)`, which only matters for unequal
/// sizes; all published uses have `n = m`.)
pub fn mmd_median(x: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<MmdOutput> {
    check_sizes(&x, &y, "mmd_median")?;
    let h = median_bandwidth(x, y, true)?;
    if h <= 0.0 {
        bail!("mmd_median: median pairwise distance is 0 (more than half the pairs coincide)");
    }
    let scale = 1.0 / (2.0 * h * h);
    let (n, m) = (x.nrows() as f64, y.nrows() as f64);
    let kxx = kernel_sum(x, x, scale);
    let kyy = kernel_sum(y, y, scale);
    let kxy = kernel_sum(x, y, scale);
    let mmd2 = kxx / (n * (n - 1.0)) + kyy / (m * (m - 1.0)) - 2.0 * kxy / (n * m);
    Ok(MmdOutput {
        mmd2,
        mmd: mmd2.max(1e-20).sqrt(),
        bandwidth: h,
    })
}

/// Standard unbiased MMD² estimator (Gretton et al. 2012, `MMD²_u`):
/// `Σ_{i≠j} k(x_i,x_j)/(n(n−1)) + Σ_{i≠j} k(y_i,y_j)/(m(m−1)) − 2·mean(K_XY)`
/// (diagonals excluded) with `k(x, y) = exp(−‖x − y‖²/(2h²))`.
///
/// `bandwidth = None` uses the median of the pooled pairwise distances over
/// distinct pairs `i < j` (zero diagonal **excluded**, unlike
/// [`mmd_median`]). `mmd` in the output is `sqrt(max(1e-20, mmd2))`; the
/// unbiased `mmd2` itself can be slightly negative.
pub fn mmd_unbiased(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    bandwidth: Option<f64>,
) -> Result<MmdOutput> {
    check_sizes(&x, &y, "mmd_unbiased")?;
    let h = match bandwidth {
        Some(h) => h,
        None => median_bandwidth(x, y, false)?,
    };
    if !(h > 0.0 && h.is_finite()) {
        bail!("mmd_unbiased: bandwidth must be positive and finite, got {h}");
    }
    let scale = 1.0 / (2.0 * h * h);
    let (n, m) = (x.nrows() as f64, y.nrows() as f64);
    // k(x, x) = 1 exactly, so removing the diagonal subtracts n (resp. m).
    let kxx = kernel_sum(x, x, scale) - n;
    let kyy = kernel_sum(y, y, scale) - m;
    let kxy = kernel_sum(x, y, scale);
    let mmd2 = kxx / (n * (n - 1.0)) + kyy / (m * (m - 1.0)) - 2.0 * kxy / (n * m);
    Ok(MmdOutput {
        mmd2,
        mmd: mmd2.max(1e-20).sqrt(),
        bandwidth: h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.sample::<f64, _>(StandardNormal) + shift)
    }

    #[test]
    fn kernel_sum_is_bitwise_reproducible_and_ordered() {
        // Rayon's parallel sum depends on scheduling; ours adds row sums in order.
        let (a, b) = (cloud(700, 3, 1, 0.0), cloud(600, 3, 2, 0.5));
        let first = kernel_sum(a.view(), b.view(), 0.7);
        for _ in 0..20 {
            assert_eq!(
                kernel_sum(a.view(), b.view(), 0.7).to_bits(),
                first.to_bits()
            );
        }
        let serial: f64 = (0..a.nrows())
            .map(|i| kernel_sum(a.slice(ndarray::s![i..i + 1, ..]), b.view(), 0.7))
            .sum();
        assert_eq!(serial.to_bits(), first.to_bits(), "{serial} vs {first}");
    }

    #[test]
    fn median_bandwidth_hand_case() {
        // Points 0, 1, 3 on a line: x = {0, 1}, y = {3}... need ≥1 each.
        let x = array![[0.0], [1.0]];
        let y = array![[3.0]];
        // i ≤ j distances: 0,0,0 (diagonal), 1, 3, 2 → sorted 0,0,0,1,2,3 → median 0.5
        assert_eq!(median_bandwidth(x.view(), y.view(), true).unwrap(), 0.5);
        // i < j only: 1, 2, 3 → median 2
        assert_eq!(median_bandwidth(x.view(), y.view(), false).unwrap(), 2.0);
    }

    #[test]
    fn mmd_median_hand_case_and_diagonal_quirk() {
        // x = {0, 1}, y = {0, 3}: pooled 0,1,0,3; i ≤ j distances:
        // diag 0×4; pairs: 1,0,3,1,2,3 → sorted 0,0,0,0,0,1,1,2,3,3 → median 0.5
        let x = array![[0.0], [1.0]];
        let y = array![[0.0], [3.0]];
        let out = mmd_median(x.view(), y.view()).unwrap();
        let h: f64 = 0.5;
        assert_eq!(out.bandwidth, h);
        let k = |d: f64| (-d * d / (2.0 * h * h)).exp();
        // XX sum includes diagonal: 2 + 2k(1); YY: 2 + 2k(3); XY: k(0)+k(3)+k(1)+k(2)
        let want = (2.0 + 2.0 * k(1.0)) / 2.0 + (2.0 + 2.0 * k(3.0)) / 2.0
            - 2.0 * (k(0.0) + k(3.0) + k(1.0) + k(2.0)) / 4.0;
        assert!((out.mmd2 - want).abs() < 1e-14, "{} vs {want}", out.mmd2);
        assert!((out.mmd - want.sqrt()).abs() < 1e-14);
        // The unbiased estimator at the same bandwidth differs by exactly the
        // diagonal terms n/(n(n−1)) + m/(m(m−1)) = 1 + 1.
        let u = mmd_unbiased(x.view(), y.view(), Some(h)).unwrap();
        assert!((out.mmd2 - u.mmd2 - 2.0).abs() < 1e-14);
    }

    #[test]
    fn mmd_symmetric() {
        let x = cloud(60, 3, 1, 0.0);
        let y = cloud(80, 3, 2, 0.5);
        let a = mmd_median(x.view(), y.view()).unwrap();
        let b = mmd_median(y.view(), x.view()).unwrap();
        assert!((a.mmd2 - b.mmd2).abs() < 1e-12);
        let a = mmd_unbiased(x.view(), y.view(), None).unwrap();
        let b = mmd_unbiased(y.view(), x.view(), None).unwrap();
        assert!((a.mmd2 - b.mmd2).abs() < 1e-12);
    }

    #[test]
    fn mmd_small_for_same_distribution() {
        // n = m = 500 from N(0, I_2). For the unbiased estimator the standard
        // deviation under H0 is O(1/n) ≈ 2e-3 for a bounded kernel, so
        // |MMD²_u| < 0.01 is a > 4σ bound. The median version carries the
        // diagonal bias 2/(n−1) ≈ 4.0e-3 plus the (biased-V-statistic-like)
        // off-diagonal term, so MMD² ∈ (0, 0.01).
        let x = cloud(500, 2, 3, 0.0);
        let y = cloud(500, 2, 4, 0.0);
        let u = mmd_unbiased(x.view(), y.view(), None).unwrap();
        assert!(u.mmd2.abs() < 0.01, "{}", u.mmd2);
        let med = mmd_median(x.view(), y.view()).unwrap();
        assert!(med.mmd2 > 0.0 && med.mmd2 < 0.01, "{}", med.mmd2);
        // A shifted distribution is clearly detected.
        let z = cloud(500, 2, 5, 1.0);
        let s = mmd_unbiased(x.view(), z.view(), None).unwrap();
        assert!(s.mmd2 > 0.05, "{}", s.mmd2);
    }

    #[test]
    fn mmd_errors() {
        let x = cloud(1, 2, 1, 0.0);
        let y = cloud(5, 2, 2, 0.0);
        assert!(mmd_median(x.view(), y.view()).is_err());
        let y3 = cloud(5, 3, 2, 0.0);
        let x5 = cloud(5, 2, 2, 0.0);
        assert!(mmd_median(x5.view(), y3.view()).is_err());
    }
}

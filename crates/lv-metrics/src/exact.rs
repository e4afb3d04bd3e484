//! Exact optimal transport between equal-size uniform clouds (linear
//! assignment) and 1-D Wasserstein distances.

use anyhow::{bail, Result};
use ndarray::ArrayView2;

use crate::cost::{check_pair, cost_matrix, CostKind};

/// Optimal assignment for a square cost matrix: returns `perm` with row `i`
/// assigned to column `perm[i]`, minimising `Σ_i C[i, perm[i]]`.
///
/// Uses [`crate::lap::solve`]: the shortest-augmenting-path algorithm of
/// SciPy's `linear_sum_assignment` (Jonker–Volgenant/Crouse) with column
/// reduction and a SIMD relaxation sweep; its prices certify optimality
/// (tested against brute force and against the `lsap` port of SciPy).
pub fn assignment(cost: ArrayView2<f64>) -> Result<Vec<usize>> {
    let (n, m) = cost.dim();
    if n != m {
        bail!(
            "assignment: cost matrix must be square for uniform equal-size clouds, got {n} × {m}"
        );
    }
    let owned;
    let flat = match cost.as_slice() {
        Some(s) => s,
        None => {
            owned = cost.iter().copied().collect::<Vec<f64>>();
            &owned
        }
    };
    Ok(crate::lap::solve(n, flat)?.col_for_row)
}

/// Exact OT cost between two uniform-weight clouds of equal size `n` for an
/// arbitrary `n × n` cost matrix: `min_P Σ_ij P_ij C_ij` with `P` having
/// marginals `1/n`, i.e. `(1/n) Σ_i C[i, σ*(i)]` for the optimal
/// permutation σ* (Birkhoff: an optimal plan is a permutation). Equals POT's
/// `emd2(a, b, C)` with uniform `a = b = 1/n`.
///
/// Errors for non-square matrices (unequal sizes) and non-finite entries.
pub fn exact_ot_cost(cost: ArrayView2<f64>) -> Result<f64> {
    let (n, m) = cost.dim();
    if n != m {
        bail!(
            "exact OT with uniform weights needs equal sample sizes (got {n} and {m}); \
             subsample one set to the other's size"
        );
    }
    if n == 0 {
        bail!("exact OT: empty cost matrix");
    }
    let perm = assignment(cost)?;
    let total: f64 = perm.iter().enumerate().map(|(i, &j)| cost[[i, j]]).sum();
    Ok(total / n as f64)
}

/// Exact squared 2-Wasserstein distance between equal-size uniform clouds:
/// `W2² = min_σ (1/n) Σ_i ‖x_i − y_σ(i)‖²` (Sendera et al.; `benchmarks.md`
/// §4.3).
pub fn w2_squared_exact(x: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<f64> {
    check_pair(&x, &y, "w2_exact")?;
    if x.nrows() != y.nrows() {
        bail!(
            "w2_exact: exact W2 needs equal sample sizes, got {} and {}",
            x.nrows(),
            y.nrows()
        );
    }
    exact_ot_cost(cost_matrix(x, y, CostKind::SqEuclidean).view())
}

/// Exact 2-Wasserstein distance `W2 = sqrt(mean of assigned squared
/// distances)` between equal-size uniform clouds (AS/ASBS: `sqrt(emd2(D²))`
/// with Euclidean `D`; Sendera: report `W2²` via [`w2_squared_exact`]).
/// Unequal sizes → error.
pub fn w2_exact(x: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<f64> {
    Ok(w2_squared_exact(x, y)?.max(0.0).sqrt())
}

/// 1-D 2-Wasserstein distance between two uniform empirical measures
/// (POT `emd2_1d` with squared cost, square-rooted; `benchmarks.md` §4.5).
///
/// For equal sizes this is `sqrt(mean_i (a_(i) − b_(i))²)` over the sorted
/// values; unequal sizes use the monotone (quantile) coupling.
pub fn w2_1d(a: &[f64], b: &[f64]) -> Result<f64> {
    if a.is_empty() || b.is_empty() {
        bail!("w2_1d: empty input (sizes {} and {})", a.len(), b.len());
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        bail!(
            "w2_1d: first array has non-finite value {} at index {i}",
            a[i]
        );
    }
    if let Some(i) = b.iter().position(|v| !v.is_finite()) {
        bail!(
            "w2_1d: second array has non-finite value {} at index {i}",
            b[i]
        );
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    if a.len() == b.len() {
        let s: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        return Ok((s / a.len() as f64).sqrt());
    }
    // Quantile coupling with masses 1/n and 1/m, merged on a common grid of
    // breakpoints k/n and l/m (exact integer arithmetic on the grid n·m).
    let (n, m) = (a.len() as u128, b.len() as u128);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut ra, mut rb) = (m, n); // remaining mass of a[i], b[j] in units 1/(n·m)
    let mut total = 0.0;
    while i < a.len() && j < b.len() {
        let w = ra.min(rb);
        let d = a[i] - b[j];
        total += (w as f64) * d * d;
        ra -= w;
        rb -= w;
        if ra == 0 {
            i += 1;
            ra = m;
        }
        if rb == 0 {
            j += 1;
            rb = n;
        }
    }
    Ok((total / (n * m) as f64).sqrt())
}

/// Energy W2 (E-W2, AS/ASBS; `benchmarks.md` §4.5): the 1-D W2 between the
/// energies of the model samples and those of the reference samples. Same as
/// [`w2_1d`].
pub fn energy_w2(model_energies: &[f64], reference_energies: &[f64]) -> Result<f64> {
    w2_1d(model_energies, reference_energies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn cloud(n: usize, d: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.sample(StandardNormal))
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn translate_gives_norm_of_shift() {
        let x = cloud(200, 3, 1);
        let v = [0.3, -1.2, 2.0];
        let mut y = x.clone();
        for mut r in y.rows_mut() {
            for k in 0..3 {
                r[k] += v[k];
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let w = w2_exact(x.view(), y.view()).unwrap();
        assert!((w - norm).abs() < 1e-12, "{w} vs {norm}");
    }

    #[test]
    fn identical_clouds_zero() {
        let x = cloud(100, 5, 2);
        assert_eq!(w2_exact(x.view(), x.view()).unwrap(), 0.0);
    }

    #[test]
    fn matches_brute_force_small() {
        for n in 1..=7 {
            for seed in 0..3 {
                let x = cloud(n, 2, 10 + seed);
                let y = cloud(n, 2, 100 + seed);
                let c = cost_matrix(x.view(), y.view(), CostKind::SqEuclidean);
                let best = permutations(n)
                    .iter()
                    .map(|p| p.iter().enumerate().map(|(i, &j)| c[[i, j]]).sum::<f64>())
                    .fold(f64::INFINITY, f64::min)
                    / n as f64;
                let w = w2_exact(x.view(), y.view()).unwrap();
                assert!((w * w - best).abs() < 1e-12, "n={n}: {} vs {best}", w * w);
            }
        }
    }

    #[test]
    fn unequal_sizes_error() {
        let x = cloud(5, 2, 0);
        let y = cloud(6, 2, 1);
        let e = w2_exact(x.view(), y.view()).unwrap_err().to_string();
        assert!(e.contains("equal sample sizes"), "{e}");
        let c = Array2::<f64>::zeros((3, 4));
        assert!(exact_ot_cost(c.view()).is_err());
    }

    #[test]
    fn dimension_mismatch_error() {
        let x = cloud(5, 2, 0);
        let y = cloud(5, 3, 1);
        let e = w2_exact(x.view(), y.view()).unwrap_err().to_string();
        assert!(e.contains("dimension mismatch"), "{e}");
    }

    #[test]
    fn energy_w2_hand_case() {
        // sorted: [1,2,3] vs [2,4,6] → diffs 1,2,3 → sqrt(14/3)
        let w = energy_w2(&[3.0, 1.0, 2.0], &[6.0, 2.0, 4.0]).unwrap();
        assert!((w - (14.0f64 / 3.0).sqrt()).abs() < 1e-15);
        // unequal sizes: [0, 1] vs [0, 0.5, 1] (masses 1/2 and 1/3):
        // couplings 0–0 (1/3), 0–0.5 (1/6), 1–0.5 (1/6), 1–1 (1/3)
        let w = w2_1d(&[0.0, 1.0], &[0.0, 0.5, 1.0]).unwrap();
        let want = ((0.25 / 6.0) * 2.0f64).sqrt();
        assert!((w - want).abs() < 1e-15, "{w} vs {want}");
    }
}

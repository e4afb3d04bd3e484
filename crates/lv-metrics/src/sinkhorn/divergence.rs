//! The debiased Sinkhorn divergence of ott-jax 0.4.6 ([`sinkhorn_divergence`],
//! [`reg_ot_cost`], [`default_epsilon`]).

use anyhow::{bail, Result};
use ndarray::ArrayView2;

use super::solver::{lse_update, Side};
use super::{SinkhornOutput, DEFAULT_CACHE_MAX_ENTRIES, DEFAULT_CHUNK_ROWS};
use crate::cost::{check_pair, CostKind, CostOp};

/// Options of the ott-style solver behind [`reg_ot_cost`] and
/// [`sinkhorn_divergence`]; defaults are ott-jax 0.4.6 defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DivergenceOptions {
    /// ε; `None` means `0.05 × mean(C_xy)` ([`default_epsilon`]), shared by
    /// the three terms of the divergence.
    pub eps: Option<f64>,
    /// Convergence threshold on the L1 column-marginal error (1e-3).
    pub threshold: f64,
    /// Maximum iterations (2000).
    pub max_iter: usize,
    /// The error is checked every `check_every` iterations (ott's
    /// `inner_iterations`, default 10), so the iteration count of a
    /// converged solve is a multiple of it.
    pub check_every: usize,
    /// Solve the self terms OT(x,x), OT(y,y) with ott's symmetric scheme
    /// (parallel updates with momentum ½, i.e. `f ← (f + T(f))/2`), as
    /// ott's `sinkhorn_divergence(symmetric_sinkhorn=True)` does. With
    /// `false` they use the plain alternating updates. Both converge to the
    /// same fixed point; the values differ only within the tolerance.
    pub symmetric_self_terms: bool,
    /// Rows per parallel task.
    pub chunk_rows: usize,
    /// Cache the dense cost matrix when `n·m` is at most this.
    pub cache_max_entries: usize,
}

impl Default for DivergenceOptions {
    fn default() -> Self {
        DivergenceOptions {
            eps: None,
            threshold: 1e-3,
            max_iter: 2000,
            check_every: 10,
            symmetric_self_terms: true,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES,
        }
    }
}

/// ott-jax's default ε for a `PointCloud` with squared Euclidean cost:
/// `0.05 × mean_ij ‖x_i − y_j‖²` (`benchmarks.md` §4.1).
///
/// Uses the exact identity `mean_ij ‖x_i − y_j‖² = tr Σ̂_x + tr Σ̂_y + ‖x̄ − ȳ‖²`
/// (population covariances), `O((n + m)·d)`.
pub fn default_epsilon(x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
    0.05 * mean_sq_cost(x, y)
}

/// `mean_ij ‖x_i − y_j‖²` in `O((n + m)·d)`.
pub fn mean_sq_cost(x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
    let xm = x.mean_axis(ndarray::Axis(0)).expect("non-empty x");
    let ym = y.mean_axis(ndarray::Axis(0)).expect("non-empty y");
    let var = |a: ArrayView2<f64>, mu: &ndarray::Array1<f64>| {
        a.rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .zip(mu)
                    .map(|(v, m)| (v - m) * (v - m))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / a.nrows() as f64
    };
    let dm: f64 = xm.iter().zip(&ym).map(|(a, b)| (a - b) * (a - b)).sum();
    var(x, &xm) + var(y, &ym) + dm
}

/// L1 column-marginal error and total mass, from the column potential `g`
/// and its Sinkhorn update `g_next` (column sums are `b_j e^{(g_j − g_next_j)/ε}`).
fn col_marginal_stats(g: &[f64], g_next: &[f64], b: f64, eps: f64) -> (f64, f64) {
    let mut err = 0.0;
    let mut mass = 0.0;
    for (&gj, &gn) in g.iter().zip(g_next) {
        let s = b * ((gj - gn) / eps).exp();
        err += (s - b).abs();
        mass += s;
    }
    (err, mass)
}

/// Entropic OT cost `OT_ε(x, y) = ⟨P, C⟩ + ε·KL(P ‖ a⊗b)` with squared
/// Euclidean cost and uniform weights, as ott-jax 0.4.6's `reg_ot_cost`.
///
/// Solver (ott defaults, log domain): potentials `f = g = 0`; each
/// iteration updates `g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε)` then
/// `f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε)`; every `check_every`
/// iterations the L1 error of the column marginal is compared to
/// `threshold`; at most `max_iter` iterations.
///
/// **Value computed**: ott's dual formula
/// `Σ_i a_i (f_i − ε log a_i) + Σ_j b_j (g_j − ε log b_j) + ε (1 − Σ_ij P_ij)`,
/// which at the Sinkhorn solution equals the primal `⟨P,C⟩ + ε·KL(P‖a⊗b)`.
/// `eps = None` uses [`default_epsilon`].
pub fn reg_ot_cost(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    opts: &DivergenceOptions,
) -> Result<SinkhornOutput> {
    check_pair(&x, &y, "reg_ot_cost")?;
    let eps = opts.eps.unwrap_or_else(|| default_epsilon(x, y));
    check_eps(eps)?;
    let cache = x.nrows().saturating_mul(y.nrows()) <= opts.cache_max_entries;
    let op = CostOp::new(x, y, CostKind::SqEuclidean, cache);
    Ok(solve_alternating(&op, eps, opts))
}

fn check_eps(eps: f64) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        bail!(
            "Sinkhorn: eps must be positive and finite, got {eps} \
             (the default 0.05·mean cost is 0 when all points coincide)"
        );
    }
    Ok(())
}

fn solve_alternating(op: &CostOp, eps: f64, opts: &DivergenceOptions) -> SinkhornOutput {
    let (n, m) = (op.n, op.m);
    let (log_a, log_b) = (-(n as f64).ln(), -(m as f64).ln());
    let (a, b) = (1.0 / n as f64, 1.0 / m as f64);
    let check = opts.check_every.max(1);
    let mut f = vec![0.0; n];
    let mut g = vec![0.0; m];
    let mut g_next = lse_update(op, Side::Cols, &f, eps, log_b, opts.chunk_rows);
    let mut iterations = 0;
    let mut converged = false;
    let mut error = f64::NAN;
    loop {
        if iterations > 0 && iterations % check == 0 {
            error = col_marginal_stats(&g, &g_next, b, eps).0;
            if error < opts.threshold {
                converged = true;
                break;
            }
        }
        if iterations >= opts.max_iter {
            break;
        }
        g = g_next;
        f = lse_update(op, Side::Rows, &g, eps, log_a, opts.chunk_rows);
        iterations += 1;
        g_next = lse_update(op, Side::Cols, &f, eps, log_b, opts.chunk_rows);
    }
    let (_, mass) = col_marginal_stats(&g, &g_next, b, eps);
    let fa: f64 = f.iter().map(|&v| a * (v - eps * log_a)).sum();
    let gb: f64 = g.iter().map(|&v| b * (v - eps * log_b)).sum();
    SinkhornOutput {
        value: fa + gb + eps * (1.0 - mass),
        eps,
        iterations,
        converged,
        error,
        cached: op.is_cached(),
    }
}

/// Symmetric problem (x against itself): `f ← (f + T(f))/2`.
fn solve_symmetric(op: &CostOp, eps: f64, opts: &DivergenceOptions) -> SinkhornOutput {
    let n = op.n;
    let log_a = -(n as f64).ln();
    let a = 1.0 / n as f64;
    let check = opts.check_every.max(1);
    let mut f = vec![0.0; n];
    let mut tf = lse_update(op, Side::Rows, &f, eps, log_a, opts.chunk_rows);
    let mut iterations = 0;
    let mut converged = false;
    let mut error = f64::NAN;
    loop {
        if iterations > 0 && iterations % check == 0 {
            error = col_marginal_stats(&f, &tf, a, eps).0;
            if error < opts.threshold {
                converged = true;
                break;
            }
        }
        if iterations >= opts.max_iter {
            break;
        }
        for (fi, ti) in f.iter_mut().zip(&tf) {
            *fi = 0.5 * (*fi + ti);
        }
        iterations += 1;
        tf = lse_update(op, Side::Rows, &f, eps, log_a, opts.chunk_rows);
    }
    let (_, mass) = col_marginal_stats(&f, &tf, a, eps);
    let fa: f64 = f.iter().map(|&v| a * (v - eps * log_a)).sum();
    SinkhornOutput {
        value: 2.0 * fa + eps * (1.0 - mass),
        eps,
        iterations,
        converged,
        error,
        cached: op.is_cached(),
    }
}

/// Result of [`sinkhorn_divergence`].
#[derive(Debug, Clone, PartialEq)]
pub struct DivergenceOutput {
    /// `S_ε = OT_ε(x,y) − ½OT_ε(x,x) − ½OT_ε(y,y)` (distance² units).
    pub divergence: f64,
    /// Shared ε.
    pub eps: f64,
    /// `OT_ε(x, y)`.
    pub xy: SinkhornOutput,
    /// `OT_ε(x, x)`.
    pub xx: SinkhornOutput,
    /// `OT_ε(y, y)`.
    pub yy: SinkhornOutput,
}

/// Debiased Sinkhorn divergence of Beyond-ELBOs / SCLD / RSMC
/// (`SD.compute_SD` on ott-jax 0.4.6; `benchmarks.md` §4.1):
/// `S_ε = OT_ε(x,y) − ½OT_ε(x,x) − ½OT_ε(y,y)` with [`reg_ot_cost`]
/// semantics, squared Euclidean cost, uniform weights, and
/// ε = 0.05 × mean(C_xy) (computed on the cross term only and shared by the
/// three terms) unless `opts.eps` is given. Result in distance² units.
pub fn sinkhorn_divergence(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    opts: &DivergenceOptions,
) -> Result<DivergenceOutput> {
    check_pair(&x, &y, "sinkhorn_divergence")?;
    let eps = opts.eps.unwrap_or_else(|| default_epsilon(x, y));
    check_eps(eps)?;
    let cache_ok = |p: usize, q: usize| p.saturating_mul(q) <= opts.cache_max_entries;
    let xy = {
        let op = CostOp::new(x, y, CostKind::SqEuclidean, cache_ok(x.nrows(), y.nrows()));
        solve_alternating(&op, eps, opts)
    };
    let self_term = |z: ArrayView2<f64>| {
        let op = CostOp::new(z, z, CostKind::SqEuclidean, cache_ok(z.nrows(), z.nrows()));
        if opts.symmetric_self_terms {
            solve_symmetric(&op, eps, opts)
        } else {
            solve_alternating(&op, eps, opts)
        }
    };
    let xx = self_term(x);
    let yy = self_term(y);
    Ok(DivergenceOutput {
        divergence: xy.value - 0.5 * xx.value - 0.5 * yy.value,
        eps,
        xy,
        xx,
        yy,
    })
}

#[cfg(test)]
mod tests {
    use super::{default_epsilon, reg_ot_cost, sinkhorn_divergence, DivergenceOptions};
    use crate::cost::{cost_matrix, CostKind};
    use crate::sinkhorn::tests::cloud;

    #[test]
    fn divergence_zero_for_identical_positive_otherwise() {
        let x = cloud(120, 2, 7, 0.0);
        let d = sinkhorn_divergence(x.view(), x.view(), &DivergenceOptions::default()).unwrap();
        assert!(
            d.divergence.abs() < 1e-3 * d.eps,
            "{} (eps {})",
            d.divergence,
            d.eps
        );
        let y = cloud(100, 2, 8, 1.0);
        let d = sinkhorn_divergence(x.view(), y.view(), &DivergenceOptions::default()).unwrap();
        assert!(d.xy.converged && d.xx.converged && d.yy.converged);
        assert_eq!(d.xy.iterations % 10, 0);
        // Roughly the squared mean shift (1² + 1² = 2) for unit Gaussians.
        assert!(d.divergence > 1.0 && d.divergence < 3.0, "{}", d.divergence);
        // Plain alternating updates for the self terms agree within tolerance.
        let d2 = sinkhorn_divergence(
            x.view(),
            y.view(),
            &DivergenceOptions {
                symmetric_self_terms: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!((d.divergence - d2.divergence).abs() < 1e-2 * d.divergence);
    }

    #[test]
    fn default_eps_is_five_percent_of_mean_cost() {
        let x = cloud(30, 3, 9, 0.0);
        let y = cloud(20, 3, 10, 2.0);
        let c = cost_matrix(x.view(), y.view(), CostKind::SqEuclidean);
        let want = 0.05 * c.mean().unwrap();
        assert!((default_epsilon(x.view(), y.view()) - want).abs() < 1e-12 * want);
        let d = sinkhorn_divergence(x.view(), y.view(), &DivergenceOptions::default()).unwrap();
        assert!((d.eps - want).abs() < 1e-12 * want);
        assert_eq!(d.xx.eps, d.eps);
        assert_eq!(d.yy.eps, d.eps);
    }

    #[test]
    fn reg_ot_cost_matches_primal() {
        // At convergence, the dual value equals ⟨P,C⟩ + ε KL(P‖a⊗b).
        let x = cloud(25, 2, 11, 0.0);
        let y = cloud(30, 2, 12, 0.5);
        let eps = 0.3;
        let opts = DivergenceOptions {
            eps: Some(eps),
            threshold: 1e-12,
            max_iter: 100_000,
            check_every: 1,
            ..Default::default()
        };
        let out = reg_ot_cost(x.view(), y.view(), &opts).unwrap();
        assert!(out.converged);
        // Recompute P from scratch by a long dense Sinkhorn in the scaling domain.
        let c = cost_matrix(x.view(), y.view(), CostKind::SqEuclidean);
        let (n, m) = c.dim();
        let k = c.mapv(|v| (-v / eps).exp());
        let (mut u, mut v) = (vec![1.0; n], vec![1.0; m]);
        for _ in 0..20_000 {
            for i in 0..n {
                u[i] = (1.0 / n as f64) / (0..m).map(|j| k[[i, j]] * v[j]).sum::<f64>();
            }
            for j in 0..m {
                v[j] = (1.0 / m as f64) / (0..n).map(|i| k[[i, j]] * u[i]).sum::<f64>();
            }
        }
        let ab = 1.0 / (n * m) as f64;
        let mut primal = 0.0;
        for i in 0..n {
            for j in 0..m {
                let p = u[i] * k[[i, j]] * v[j];
                if p > 0.0 {
                    primal += p * c[[i, j]] + eps * (p * (p / ab).ln() - p + ab);
                }
            }
        }
        assert!(
            (out.value - primal).abs() < 1e-9 * primal.abs().max(1.0),
            "{} vs {primal}",
            out.value
        );
    }
}

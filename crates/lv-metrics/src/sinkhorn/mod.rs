//! Entropic optimal transport in two published conventions.
//!
//! * [`sinkhorn_sde`]: the Richter–Berner `sde_sampler` metric
//!   (`method.md` §10, `benchmarks.md` §4.2): Euclidean cost, fixed ε,
//!   transport term only.
//! * [`sinkhorn_divergence`]: the debiased Sinkhorn divergence of
//!   Beyond-ELBOs / SCLD / RSMC built on ott-jax 0.4.6 (`benchmarks.md` §4.1):
//!   squared Euclidean cost, ε = 0.05·mean(C_xy), `reg_ot_cost`.
//!
//! Both run log-domain Sinkhorn with uniform weights. Rows of the cost matrix
//! are either read from a cached dense matrix (small problems) or recomputed
//! on the fly (streaming), in chunks of rows processed in parallel by rayon;
//! the streaming path needs `O((n + m)·d + threads·max(n, m))` memory.
//!
//! Layout: `sde.rs` holds the `sde_sampler` convention, `divergence.rs` the
//! ott-jax one, and `solver.rs` the log-domain machinery both share (soft-min
//! updates over rows or columns, pruned live sets, plan sums).

mod divergence;
mod sde;
mod solver;

pub use divergence::{
    default_epsilon, mean_sq_cost, reg_ot_cost, sinkhorn_divergence, DivergenceOptions,
    DivergenceOutput,
};
pub use sde::{sinkhorn_sde, SdeSinkhornOptions};

/// Default maximum number of cost entries (`n·m`) for which the dense cost
/// matrix and its transpose are cached (2 × 36 MB at the default).
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 4_500_000;

/// Default number of rows per rayon task.
pub const DEFAULT_CHUNK_ROWS: usize = 32;

/// Result of one entropic OT solve.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkhornOutput {
    /// The reported value (its meaning depends on the function).
    pub value: f64,
    /// ε actually used.
    pub eps: f64,
    /// Iterations performed (one iteration = one update of each potential).
    pub iterations: usize,
    /// Whether the stopping criterion was met before `max_iter`.
    pub converged: bool,
    /// Last convergence measure computed (sde: `max(max|Δu|, max|Δv|)`;
    /// debiased: L1 column-marginal error). NaN if never computed.
    pub error: f64,
    /// Whether the dense cost matrix was cached.
    pub cached: bool,
}

/// Tests across both conventions, and the sample clouds all tests share.
#[cfg(test)]
mod tests {
    use super::{sinkhorn_divergence, sinkhorn_sde, DivergenceOptions, SdeSinkhornOptions};
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    pub(super) fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.sample::<f64, _>(StandardNormal) + shift)
    }

    #[test]
    fn streaming_equals_cached() {
        let x = cloud(301, 3, 5, 0.0);
        let y = cloud(257, 3, 6, 0.5);
        let base = SdeSinkhornOptions {
            eps: 0.05,
            max_iter: 30,
            ..Default::default()
        };
        let cached = sinkhorn_sde(x.view(), y.view(), &base).unwrap();
        let streamed = sinkhorn_sde(
            x.view(),
            y.view(),
            &SdeSinkhornOptions {
                cache_max_entries: 0,
                chunk_rows: 7,
                ..base.clone()
            },
        )
        .unwrap();
        assert!(cached.cached && !streamed.cached);
        assert_eq!(cached.iterations, streamed.iterations);
        assert!((cached.value - streamed.value).abs() < 1e-10 * cached.value.abs().max(1.0));
        // Same for the debiased divergence.
        let d1 = sinkhorn_divergence(x.view(), y.view(), &DivergenceOptions::default()).unwrap();
        let d2 = sinkhorn_divergence(
            x.view(),
            y.view(),
            &DivergenceOptions {
                cache_max_entries: 0,
                chunk_rows: 5,
                ..Default::default()
            },
        )
        .unwrap();
        assert!((d1.divergence - d2.divergence).abs() < 1e-10 * d1.divergence.abs().max(1.0));
    }

    #[test]
    fn sinkhorn_errors() {
        let x = cloud(5, 2, 1, 0.0);
        let y = cloud(5, 3, 2, 0.0);
        assert!(sinkhorn_sde(x.view(), y.view(), &SdeSinkhornOptions::default()).is_err());
        assert!(sinkhorn_divergence(x.view(), y.view(), &DivergenceOptions::default()).is_err());
        let z = Array2::<f64>::zeros((4, 2));
        let e = sinkhorn_divergence(z.view(), z.view(), &DivergenceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("eps"), "{e}");
    }
}

//! The [`Target`] trait: an unnormalised density ρ on R^d, known only through log ρ.
//!
//! Conventions:
//! - Batches are `[n, d]` tensors; `log_density` returns `[n]` in the kind of the input.
//! - `log_density` is *unnormalised*: log p_target = log ρ − log Z.
//! - Capabilities (exact sampling, shipped reference samples) are separate traits reached
//!   through [`Target::sampler`] and [`Target::reference_samples`], so a target without a
//!   sampler says so by returning `None`, never by panicking.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// An unnormalised target density ρ on R^d.
pub trait Target: Send + Sync {
    /// Registry name (used by configs, tables and `lv targets`).
    fn name(&self) -> &str;

    /// Dimension d.
    fn dim(&self) -> usize;

    /// log ρ(x) for a batch `x: [n, d]`, returning `[n]`.
    ///
    /// Precondition: `x` has shape `[n, self.dim()]`; use [`check_batch`] on untrusted input.
    fn log_density(&self, x: &Tensor) -> Tensor;

    /// ∇ log ρ(x), shape `[n, d]`. Default: autograd of [`Target::log_density`], detached from
    /// the graph of `x` (the "generic autograd score" of spec §6.6).
    fn score(&self, x: &Tensor) -> Tensor {
        autograd_score(|y| self.log_density(y), x)
    }

    /// Whether [`Target::score`] stays in the autograd graph of `x` (analytic scores, spec §6.6).
    /// Only relevant for KL training, where gradients flow through the trajectory.
    fn score_in_graph(&self) -> bool {
        false
    }

    /// H_{log ρ}(x)·v, the Hessian of log ρ at each row of `x: [n, d]` times the row of
    /// `v: [n, d]` (= (∂score/∂x)ᵀv, the Hessian being symmetric), where the target has it in
    /// closed form; values only, no graph. Used by the KL adjoint for targets whose score
    /// stays in the graph of x ([`Target::score_in_graph`]). Default: `None`, and the caller
    /// differentiates [`Target::score`] by autograd.
    fn score_hvp(&self, _x: &Tensor, _v: &Tensor) -> Option<Tensor> {
        None
    }

    /// log Z = log ∫ ρ, exactly or by quadrature, where known.
    fn log_z(&self) -> Option<f64>;

    /// A box `(lo, hi)` per coordinate used for plots and the sub-trajectory domain.
    fn domain(&self) -> Vec<(f64, f64)>;

    /// The exact standard deviation of each coordinate under ρ/Z (analytic or by quadrature),
    /// where the target knows it: the s_k of the Δstd metrics (spec §10). Default: none (the
    /// evaluation then estimates s_k from a large fixed reference sample).
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        None
    }

    /// Centres of the target's modes (component means or locations of a mixture), for the
    /// mode-coverage metric; none for targets without a list of modes.
    fn mode_centres(&self) -> Option<Vec<Vec<f64>>> {
        None
    }

    /// The exact sampler, when the target has one.
    fn sampler(&self) -> Option<&dyn ExactSampler> {
        None
    }

    /// Shipped reference samples (e.g. MCMC sets from the benchmark papers), `[n, d]` float64
    /// on the CPU, when the target has them.
    fn reference_samples(&self) -> Option<Result<Tensor>> {
        None
    }

    /// For translation-invariant particle systems: the zero-centre-of-mass subspace in which
    /// samplers keep their states ([`crate::subspace`]). Default: none (all of R^d).
    fn zero_com(&self) -> Option<crate::subspace::ZeroCom> {
        None
    }
}

/// Exact sampling from p_target = ρ/Z, using torch's global generator (seed it with
/// `tch::manual_seed` for reproducibility).
pub trait ExactSampler {
    /// `n` independent samples `[n, d]` (float32) on `device`.
    fn sample(&self, n: usize, device: Device) -> Tensor;
}

/// Checks that `x` is a `[n, d]` batch for `target`, with a clear error otherwise.
pub fn check_batch(target: &dyn Target, x: &Tensor) -> Result<()> {
    let size = x.size();
    if size.len() != 2 {
        bail!(
            "target `{}` expects a batch of shape [n, {}], got a tensor of shape {:?}",
            target.name(),
            target.dim(),
            size
        );
    }
    if size[1] as usize != target.dim() {
        bail!(
            "target `{}` has dimension {}, but the batch has dimension {} (shape {:?})",
            target.name(),
            target.dim(),
            size[1],
            size
        );
    }
    Ok(())
}

/// log ρ with the shape checked first (for user-facing entry points).
pub fn checked_log_density(target: &dyn Target, x: &Tensor) -> Result<Tensor> {
    check_batch(target, x)?;
    Ok(target.log_density(x))
}

/// ∇ₓ f(x) by autograd for a batch function `f: [n, d] -> [n]`; detached from the graph of `x`.
///
/// Works inside `tch::no_grad` blocks (gradients are re-enabled locally).
pub fn autograd_score(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Tensor {
    tch::with_grad(|| {
        let xg = x.detach().set_requires_grad(true);
        let y = f(&xg).sum(Kind::Float);
        let g = Tensor::run_backward(&[y], &[&xg], false, false);
        g.into_iter().next().expect("one gradient").detach()
    })
}

/// Gradient of `f` that stays in the graph (`create_graph = true`), for double backward
/// (potential controls, exact divergences). `x` must require grad.
pub fn autograd_grad_in_graph(y: &Tensor, x: &Tensor) -> Tensor {
    let g = Tensor::run_backward(&[y.sum(Kind::Float)], &[x], true, true);
    g.into_iter().next().expect("one gradient")
}

/// Wraps a target and counts evaluations of log ρ and of the score, per sample, so that
/// "same number of target evaluations" comparisons come for free.
pub struct CountingTarget<T> {
    pub inner: T,
    density_evals: std::sync::atomic::AtomicU64,
    score_evals: std::sync::atomic::AtomicU64,
}

impl<T: Target> CountingTarget<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            density_evals: 0.into(),
            score_evals: 0.into(),
        }
    }
    /// (log ρ evaluations, score evaluations), counted per sample.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.density_evals.load(Relaxed),
            self.score_evals.load(Relaxed),
        )
    }
}

impl<T: Target> Target for CountingTarget<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        self.density_evals
            .fetch_add(x.size()[0] as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.log_density(x)
    }
    fn score(&self, x: &Tensor) -> Tensor {
        self.score_evals
            .fetch_add(x.size()[0] as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.score(x)
    }
    fn score_in_graph(&self) -> bool {
        self.inner.score_in_graph()
    }
    fn score_hvp(&self, x: &Tensor, v: &Tensor) -> Option<Tensor> {
        self.inner.score_hvp(x, v)
    }
    fn log_z(&self) -> Option<f64> {
        self.inner.log_z()
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.inner.domain()
    }
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        self.inner.marginal_stds()
    }
    fn mode_centres(&self) -> Option<Vec<Vec<f64>>> {
        self.inner.mode_centres()
    }
    fn sampler(&self) -> Option<&dyn ExactSampler> {
        self.inner.sampler()
    }
    fn reference_samples(&self) -> Option<Result<Tensor>> {
        self.inner.reference_samples()
    }
    fn zero_com(&self) -> Option<crate::subspace::ZeroCom> {
        self.inner.zero_com()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScaledGauss;

    #[test]
    fn counting_wrapper_counts_per_sample() {
        let t = CountingTarget::new(ScaledGauss {
            dim: 2,
            mean: 0.0,
            std: 1.0,
            log_z: 0.0,
        });
        let x = Tensor::zeros([5, 2], (Kind::Float, Device::Cpu));
        let _ = t.log_density(&x);
        let _ = t.score(&x);
        let _ = t.score(&x);
        assert_eq!(t.counts(), (5, 10));
        let bad = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        let e = checked_log_density(&t, &bad).unwrap_err().to_string();
        assert!(
            e.contains("dimension 2") && e.contains("dimension 3"),
            "{e}"
        );
    }
}

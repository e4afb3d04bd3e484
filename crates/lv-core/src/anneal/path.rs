//! The geometric annealing path π_k ∝ γ_k = p_prior^(1−β_k) ρ^(β_k) between a Gaussian prior
//! N(0, s² I) and the target ρ (CMCD, SCLD): the one place every annealed method takes
//! log γ_k and ∇log γ_k from.

use crate::prior::gauss_log_prob;
use tch::Tensor;

/// The path at one rollout: the prior scale and the β values (a tensor, in the graph of a
/// learnt schedule, so that gradients reach β through log γ and ∇log γ).
pub struct GeometricPath {
    /// s of the prior N(0, s² I).
    pub prior_std: f64,
    /// β_0 … β_N, `[N + 1]`.
    pub betas: Tensor,
}

/// What the path needs of the target at one state: log ρ (only at piece boundaries) and
/// ∇log ρ (every step).
pub struct TargetAt {
    pub log_rho: Option<Tensor>,
    pub score: Tensor,
}

impl GeometricPath {
    fn beta(&self, k: usize) -> Tensor {
        self.betas.get(k as i64)
    }

    /// log γ_k(x) = (1 − β_k) log N(x; 0, s² I) + β_k log ρ(x), `[n]` (γ_0 is the normalised
    /// prior, γ_N = ρ).
    pub fn log_gamma(&self, k: usize, x: &Tensor, log_rho: &Tensor) -> Tensor {
        let b = self.beta(k);
        let lp = gauss_log_prob(x, self.prior_std);
        (-&b + 1.0) * lp + b * log_rho
    }

    /// ∇log γ_k(x) = β_k ∇log ρ(x) − (1 − β_k) x/s², `[n, d]`.
    pub fn score(&self, k: usize, x: &Tensor, score_rho: &Tensor) -> Tensor {
        let b = self.beta(k);
        let prior_score = x / (-self.prior_std * self.prior_std);
        prior_score * (-&b + 1.0) + score_rho * b
    }
}

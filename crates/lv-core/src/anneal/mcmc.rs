//! MCMC refresh moves after resampling, targeting an annealed density γ_k of the path.

use super::path::GeometricPath;
use crate::target::Target;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The kernel of a refresh move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McmcKind {
    /// Unadjusted Langevin x' = x + ε∇log γ(x) + √(2ε)ξ (biased: leaves γ invariant only
    /// as ε → 0, so SMC log Z is no longer exactly unbiased).
    Ula,
    /// Metropolis-adjusted Langevin: the ULA proposal accepted with probability
    /// min(1, γ(x')q(x|x')/(γ(x)q(x'|x))), q(y|x) = N(y; x + ε∇log γ(x), 2ε I); leaves γ
    /// invariant.
    Mala,
}

impl std::str::FromStr for McmcKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ula" => Self::Ula,
            "mala" => Self::Mala,
            other => bail!("unknown MCMC kernel `{other}`: expected ula, mala"),
        })
    }
}

/// `steps` moves of `kind` with step size ε.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mcmc {
    pub kind: McmcKind,
    pub steps: usize,
    pub step_size: f64,
}

impl Mcmc {
    /// Checks ε > 0 and steps ≥ 1.
    pub fn new(kind: McmcKind, steps: usize, step_size: f64) -> Result<Self> {
        if steps == 0 {
            bail!("an MCMC refresh needs at least one step");
        }
        if !(step_size.is_finite() && step_size > 0.0) {
            bail!("the MCMC step size must be positive and finite (got {step_size})");
        }
        Ok(Self {
            kind,
            steps,
            step_size,
        })
    }
}

/// The result of a refresh: the moved particles and the mean acceptance rate (1 for ULA).
pub struct Refreshed {
    pub x: Tensor,
    pub acceptance: f64,
}

/// Applies the moves to `x` (no graph), targeting γ_k of `path`.
pub fn refresh(
    mcmc: &Mcmc,
    path: &GeometricPath,
    k: usize,
    target: &dyn Target,
    x: &Tensor,
) -> Refreshed {
    tch::no_grad(|| {
        let eps = mcmc.step_size;
        let mut x = x.detach();
        let mut accepted = 0.0;
        let log_gamma = |y: &Tensor| path.log_gamma(k, y, &target.log_density(y));
        let grad = |y: &Tensor| path.score(k, y, &target.score(y));
        let mut lg = log_gamma(&x);
        let mut g = grad(&x);
        for _ in 0..mcmc.steps {
            let mean = &x + &g * eps;
            let y = &mean + x.randn_like() * (2.0 * eps).sqrt();
            match mcmc.kind {
                McmcKind::Ula => {
                    x = y;
                    g = grad(&x);
                    accepted += 1.0;
                }
                McmcKind::Mala => {
                    let lg_y = log_gamma(&y);
                    let g_y = grad(&y);
                    let q = |to: &Tensor, from_mean: &Tensor| {
                        (to - from_mean).square().sum_dim_intlist(
                            [1i64].as_slice(),
                            false,
                            to.kind(),
                        ) / (-4.0 * eps)
                    };
                    let log_ratio = &lg_y - &lg + q(&x, &(&y + &g_y * eps)) - q(&y, &mean);
                    let u = lg.rand_like().log();
                    // NaN ratios (a proposal where log γ is not finite) are rejected.
                    let acc = u.lt_tensor(&log_ratio).logical_and(&log_ratio.isfinite());
                    accepted += acc
                        .to_kind(Kind::Double)
                        .mean(Kind::Double)
                        .double_value(&[]);
                    let a2 = acc.unsqueeze(1);
                    x = y.where_self(&a2, &x);
                    g = g_y.where_self(&a2, &g);
                    lg = lg_y.where_self(&acc, &lg);
                }
            }
        }
        Refreshed {
            x,
            acceptance: accepted / mcmc.steps as f64,
        }
    })
}

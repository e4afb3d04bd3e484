//! The per-step coefficients of each RND form, written once for the tensor simulation, the
//! fused host update and the batched replay.
//!
//! Every form has one shape per step k. With the driving control w_k, the generative control
//! u_k, a *reference control* r_k and a standard normal ξ_k:
//!
//! - state:   X_{k+1} = advance(X_k, w_k, ΔŴ'_k), the Euler–Maruyama step
//!   X_k + (a_k X_k + σ_k w_k)Δ_k + σ_k λ√Δ_k ξ_k (forms 3.2, 3.3) or the exponential
//!   integrator √(1−β_k²) X_k + β_k²s² w_k + sβ_kλ ξ_k (form 3.4), or RSMC's OU kernel
//!   √(1−a_k) X_k + a_k w_k + √a_k σ₀λ ξ_k (`ou_dds`);
//! - log-RND: R += q_k (u_k − r_k)·(w_k − ½(u_k + r_k)) + (u_k − r_k)·ΔŴ_k, with
//!   q_k = Δ_k and ΔŴ_k = λ√Δ_k ξ_k (forms 3.2, 3.3), or q_k = β_k²s² and
//!   ΔŴ_k = sβ_kλ ξ_k (form 3.4), or q_k = a_k/σ₀² and ΔŴ_k = (√a_k λ/σ₀) ξ_k (`ou_dds`);
//!   the KL modes use ½|u_k − r_k|² q_k instead of the first
//!   term (w = u);
//! - the reference control: r_k = rs(t_k)·X_k for form 3.3 (PIS: the reference SDE's own
//!   control), r_k = −v(t_k, X_k) for form 3.2 with an inference control (bridge; then also
//!   R += λ²σ_k(∇·v)Δ_k, see the module doc of `sim`), r_k = 0 for DIS and form 3.4.
//!
//! ΔŴ_k is written as `ito_noise(ξ) · ito_scale` (ξ√Δ_k · λ, or ξ · sβ_kλ): the Itô term is
//! rowdot(u − r, ito_noise)·ito_scale in the step code, ∂R/∂u_k = ito_noise·ito_scale in the
//! kept-controls path, and the recording stores ito_noise·ito_scale for the replay.

use crate::method::{ou_dds_alpha, Method, RndForm};
use tch::Tensor;

/// The scalars of one step of one RND form (module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StepKernel {
    /// Forms 3.2 and 3.3: Euler–Maruyama with drift a·x, diffusion σ, step Δ, off-policy
    /// noise scale λ and reference-control scale rs (0 for form 3.2).
    Euler {
        dt: f64,
        sigma: f64,
        a: f64,
        lam: f64,
        rs: f64,
    },
    /// Form 3.4: the exponential integrator with β = clamp(α√Δ, 0, 1), prior scale s and
    /// off-policy noise scale λ.
    Exp { beta: f64, s: f64, lam: f64 },
    /// RSMC's discrete-time OU kernel ([`RndForm::OuDds`]) with step coefficient a_n, prior
    /// std σ₀ and off-policy noise scale λ: X' = √(1−a)X + a w + √a σ₀λ ξ;
    /// R += (a/σ₀²) u·(w − ½u) + (√a λ/σ₀) u·ξ.
    Discrete { a: f64, sigma0: f64, lam: f64 },
}

impl StepKernel {
    /// The kernel of the step from t to t + dt of `method` with off-policy noise scale `lam`
    /// (for [`RndForm::OuDds`], t = n/N names the step n).
    pub(crate) fn new(method: &Method, t: f64, dt: f64, lam: f64) -> Self {
        let euler = |rs: f64| StepKernel::Euler {
            dt,
            sigma: method.sde.sigma(t),
            a: method.sde.drift_coef(t),
            lam,
            rs,
        };
        match method.form {
            RndForm::Reference { .. } => euler(method.ref_scale(t)),
            RndForm::TimeReversal => euler(0.0),
            RndForm::ExpIntegrator { alpha, sigma } => StepKernel::Exp {
                beta: (alpha * dt.sqrt()).clamp(0.0, 1.0),
                s: sigma,
                lam,
            },
            RndForm::OuDds {
                sigma0,
                noise_scale,
                steps,
            } => StepKernel::Discrete {
                a: ou_dds_alpha((t * steps as f64).round() as usize, steps, noise_scale),
                sigma0,
                lam,
            },
        }
    }

    /// (decay, gain, noise) of the linear forms: X' = decay·X + gain·w + noise·ξ (`None` for
    /// the Euler forms, whose step also has the drift a·X·Δ).
    pub(crate) fn linear(&self) -> Option<(f64, f64, f64)> {
        match *self {
            StepKernel::Euler { .. } => None,
            StepKernel::Exp { beta, s, lam } => Some((
                (1.0 - beta * beta).sqrt(),
                beta * beta * s * s,
                s * beta * lam,
            )),
            StepKernel::Discrete { a, sigma0, lam } => {
                Some(((1.0 - a).sqrt(), a, a.sqrt() * sigma0 * lam))
            }
        }
    }

    /// (∂X_{k+1}/∂X_k, ∂X_{k+1}/∂w_k) of [`StepKernel::advance`], both multiples of the
    /// identity: (1 + a_kΔ_k, σ_kΔ_k) for the Euler forms, (decay, gain) for the linear ones.
    pub(crate) fn state_derivatives(&self) -> (f64, f64) {
        match *self {
            StepKernel::Euler { dt, sigma, a, .. } => (1.0 + a * dt, sigma * dt),
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => {
                let (decay, gain, _) = self.linear().expect("a linear form");
                (decay, gain)
            }
        }
    }

    /// q_k, the multiplier of the quadratic term: Δ_k, or β_k²s².
    pub(crate) fn quad(&self) -> f64 {
        match *self {
            StepKernel::Euler { dt, .. } => dt,
            StepKernel::Exp { beta, s, .. } => beta * beta * s * s,
            StepKernel::Discrete { a, sigma0, .. } => a / (sigma0 * sigma0),
        }
    }

    /// The scale rs of the reference control r = rs·X (0 where the form has none).
    pub(crate) fn ref_scale(&self) -> f64 {
        match *self {
            StepKernel::Euler { rs, .. } => rs,
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => 0.0,
        }
    }

    /// The noise part of the Itô increment: ξ√Δ_k, or ξ.
    pub(crate) fn ito_noise(&self, xi: &Tensor) -> Tensor {
        match *self {
            StepKernel::Euler { dt, .. } => xi * dt.sqrt(),
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => xi.shallow_clone(),
        }
    }

    /// The scalar part of the Itô increment: λ, or sβ_kλ.
    pub(crate) fn ito_scale(&self) -> f64 {
        match *self {
            StepKernel::Euler { lam, .. } => lam,
            StepKernel::Exp { beta, s, lam } => s * beta * lam,
            StepKernel::Discrete { a, sigma0, lam } => a.sqrt() * lam / sigma0,
        }
    }

    /// σ_k of forms 3.2 and 3.3 (0 for form 3.4, which has no ∇·v term).
    pub(crate) fn sigma(&self) -> f64 {
        match *self {
            StepKernel::Euler { sigma, .. } => sigma,
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => 0.0,
        }
    }

    /// The coefficient of ∇·v in R: λ²σ_kΔ_k (forms 3.2, 3.3; only the bridge has a v).
    pub(crate) fn div_coef(&self) -> f64 {
        match *self {
            StepKernel::Euler { dt, sigma, lam, .. } => sigma * lam * lam * dt,
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => 0.0,
        }
    }

    /// X_{k+1} from X_k, the driving control w_k and `noise` = [`StepKernel::ito_noise`].
    pub(crate) fn advance(&self, xk: &Tensor, w: &Tensor, noise: &Tensor) -> Tensor {
        match *self {
            StepKernel::Euler {
                dt, sigma, a, lam, ..
            } => xk + (xk * a + w * sigma) * dt + noise * (sigma * lam),
            StepKernel::Exp { .. } | StepKernel::Discrete { .. } => {
                let (decay, gain, scale) = self.linear().expect("a linear form");
                xk * decay + w * gain + noise * scale
            }
        }
    }
}

//! Euler–Maruyama simulation of the generative SDE with accumulation of the log-RND
//! R = log dP_{X^u}/dP_{Y^v}(X^w) − log Z (spec §3), step by step or as a batched replay.
//!
//! Conventions:
//! - Left-point (Itô) evaluation at (t_k, X_k); one ΔW_k = √Δ_k ξ_k per step drives both the
//!   state and the Itô term.
//! - The trajectory is driven by w: w = u (KL, evaluation; gradient through X), or
//!   w = stopgrad(u) (LV; X carries no graph and the loss sees the live u at X_k).
//! - **Off-policy behaviour** (LV only): the state may be driven by a wider noise,
//!   X_{k+1} = X_k + (μ_k + σ_k w_k)Δ_k + λσ_k ΔW_k with λ ≥ 1. R stays the log-ratio of the
//!   generative and the inference (or reference) transition kernels, both with variance
//!   σ_k²Δ_k, now evaluated on such a path; it is the usual LV expression with ΔW_k replaced
//!   by the *implied* generative increment ΔŴ_k = (X_{k+1} − X_k − (μ_k + σ_k w_k)Δ_k)/σ_k
//!   = λΔW_k, and, for the bridge, with the ∇·v term scaled by λ²:
//!   - form 3.3 (two forward kernels at X_k):
//!     Σ_k (u_k − r_k)·(w_k − ½(u_k + r_k))Δ_k + (u_k − r_k)·ΔŴ_k, exactly;
//!   - form 3.4: β_k²σ² and σβ_k λξ_k in place of Δ_k and ΔW_k, exactly;
//!   - form 3.2: Σ_k (u_k + v_k)·(w_k − ½(u_k − v_k))Δ_k + (u_k + v_k)·ΔŴ_k plus
//!     λ²σ_k(∇·v)(t_k, X_k)Δ_k, to first order in Δ. The inference kernel runs backwards,
//!     X_k ~ N(X_{k+1} + (σ_{k+1}v(t_{k+1}, X_{k+1}) − μ_{k+1})Δ_k, σ_{k+1}²Δ_k), so for
//!     constant σ (μ-terms aside) log p_fwd − log q_bwd is
//!     ΔX_k·(u_k + v(X_{k+1}))/σ + ½(|v(X_{k+1})|² − |u_k|²)Δ_k. Expanding
//!     v(X_{k+1}) = v_k + J_v ΔX_k + … leaves the left-point expression plus
//!     ΔX_kᵀ J_v ΔX_k/σ, whose sum tends to the quadratic variation
//!     Σ λ²σ_k²Δ_k tr J_v/σ_k = Σ λ²σ_k(∇·v)Δ_k, the behaviour increment having covariance
//!     λ²σ_k²Δ_k I. With λ = 1 this is the on-policy σ_k(∇·v)Δ_k. (The ∇·μ term D_k scales
//!     alike but enters evaluation only, where λ = 1.) With the on-policy coefficient instead,
//!     the per-path error would tend to (λ² − 1)∫σ∇·v dt, not to 0.
//!
//!   LV is a valid divergence for any such path measure (spec §2, "off-policy view"); KL is
//!   not.

mod adjoint;
mod fused;
mod kernel;
mod replay;
mod step;

pub use adjoint::AdjointRecord;
pub use replay::{replay_lv, replay_lv_steps};
pub use step::simulate_with_noise;

use crate::control::Control;
use crate::method::{Method, RndForm};
use crate::prior::{gauss_log_prob, Prior};
use crate::subspace::ZeroCom;
use crate::target::Target;
use tch::{Kind, Tensor};

/// Which terms enter R, and how the trajectory is driven (spec §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reverse KL training: w = u, gradient through X; no prior, ∇·μ or Itô terms.
    Kl,
    /// As `Kl` with the Itô term kept.
    KlIto,
    /// LV training: w = stopgrad(u); prior and Itô terms kept; no ∇·μ term.
    Lv,
    /// Evaluation pass 1: every term, including Itô (IS, ESS, LV diagnostic).
    EvalIto,
    /// Evaluation pass 2: every term except Itô (ELBO).
    EvalNoIto,
}

impl Mode {
    fn ito(self) -> bool {
        matches!(self, Mode::KlIto | Mode::Lv | Mode::EvalIto)
    }
    fn lv_cost(self) -> bool {
        self == Mode::Lv
    }
    fn grad_through_x(self) -> bool {
        matches!(self, Mode::Kl | Mode::KlIto)
    }
    fn prior_term(self) -> bool {
        matches!(self, Mode::Lv | Mode::EvalIto | Mode::EvalNoIto)
    }
    fn eval(self) -> bool {
        matches!(self, Mode::EvalIto | Mode::EvalNoIto)
    }
}

/// How the divergence ∇·v of the inference control is computed in training (bridge only);
/// evaluation is always exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DivMode {
    /// d vector–Jacobian products with the graph kept.
    #[default]
    Exact,
    /// One Rademacher probe per step (later sde_sampler code).
    Hutchinson,
}

/// The controls of a method: the generative u and, for the bridge, the inference v.
#[derive(Clone, Copy)]
pub struct Controls<'a> {
    pub u: &'a dyn Control,
    pub v: Option<&'a dyn Control>,
    pub div: DivMode,
}

impl<'a> Controls<'a> {
    pub fn new(u: &'a dyn Control) -> Self {
        Self {
            u,
            v: None,
            div: DivMode::Exact,
        }
    }
    pub fn with_v(u: &'a dyn Control, v: &'a dyn Control) -> Self {
        Self {
            u,
            v: Some(v),
            div: DivMode::Exact,
        }
    }
}

/// Options of one simulation.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    pub mode: Mode,
    /// λ ≥ 1 of the off-policy behaviour process (1 = on-policy). Only valid with `Mode::Lv`.
    pub noise_scale: f64,
    /// Keep states, noises and scores for the batched LV replay.
    pub record: bool,
    /// Add the boundary terms (log p_prior(X_0) and the terminal term). Sub-trajectory
    /// training switches them off and adds its own learned boundary densities.
    pub boundary_terms: bool,
    /// LV only (no inference control): keep each live control value u_k with its graph and
    /// the derivative ∂R/∂u_k, and accumulate R without a graph ([`KeptControls`]).
    pub keep_controls: bool,
    /// KL modes only (no inference control, no subspace): simulate without a graph, with
    /// the control in tape mode, and keep what the adjoint backward needs
    /// ([`AdjointRecord`]).
    pub adjoint: bool,
    /// Evaluation modes on CPU float32 without an inference control or subspace: update X
    /// and R in one host pass per step instead of the tensor code (the same terms, rounded
    /// differently; [`crate::train::TrainSettings::native_eval`]).
    pub fused_eval: bool,
}

impl SimOptions {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            noise_scale: 1.0,
            record: false,
            boundary_terms: true,
            keep_controls: false,
            adjoint: false,
            fused_eval: false,
        }
    }
}

/// The live controls of an LV simulation and the derivatives of R with respect to them, for
/// a backward pass without replay ([`SimOptions::keep_controls`]).
///
/// With w = stopgrad(u), each step's contribution to R has ∂/∂u_k = w_k − u_k = 0 from the
/// quadratic part (forms 3.2 and 3.3: ∂/∂u[(u−r)·(w − ½(u+r))] = w − u; form 3.4 likewise)
/// and the Itô part's coefficient: the implied increment λΔW_k (forms 3.2, 3.3) or
/// σβ_kλξ_k (form 3.4). So ∂R/∂θ = Σ_k ⟨coef_k, ∂u_k/∂θ⟩ per trajectory, and for a loss L(R)
/// ∇_θ L = ∂/∂θ Σ_k ⟨u_k, stopgrad(coef_k · ∂L/∂R)⟩: one backward pass through the N
/// network evaluations of the simulation, no second forward pass. Only for methods without
/// an inference control (asserted): v and its λ²σ(∇·v)Δ term would need their own graphs.
pub struct KeptControls {
    /// u_k with its graph, `[n, d]` each.
    pub us: Vec<Tensor>,
    /// ∂R/∂u_k (detached), `[n, d]` each.
    pub coefs: Vec<Tensor>,
}

impl KeptControls {
    /// Backpropagates Σ_k ⟨u_k, stopgrad(∂R/∂u_k · g)⟩ for g = ∂L/∂R (`[n]`, detached): the
    /// parameters receive ∂L/∂θ. One small product per step (no `[N·n, d]` concatenations).
    pub fn backward(&self, g: &Tensor) {
        let g = g.detach().unsqueeze(1);
        let terms: Vec<Tensor> = self
            .us
            .iter()
            .zip(&self.coefs)
            .map(|(u, c)| (u * (c * &g)).sum(Kind::Float))
            .collect();
        if terms.is_empty() {
            return;
        }
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
    }
}

/// What a replay needs: everything but the live controls.
pub struct Recording {
    /// Times t_0 … t_{N−1}.
    pub ts: Vec<f64>,
    /// X_0 … X_{N−1} stacked time-major, `[N·n, d]`, detached.
    pub xs: Tensor,
    /// ∇ log ρ(X_k), same layout, when the control needs it.
    pub scores: Option<Tensor>,
    /// The driving control values w_k, same layout (detached).
    pub ws: Tensor,
    /// The implied generative noise increments ΔŴ_k (or λξ_k for form 3.4), same layout.
    pub dws: Tensor,
    /// The parameter-free part of R per trajectory `[n]` (prior, terminal terms).
    pub constant: Tensor,
    /// λ of the behaviour process ([`SimOptions::noise_scale`]): the replayed ∇·v term of
    /// the bridge is λ²σ_k(∇·v)Δ_k, as in the simulation (the noise terms are already in
    /// `dws`).
    pub noise_scale: f64,
    /// Batch size n.
    pub n: i64,
    /// The zero-centre-of-mass subspace of the target, if any: replayed controls are
    /// projected onto it as in the simulation.
    pub zero_com: Option<ZeroCom>,
}

/// The output of one simulation.
pub struct SimOutput {
    /// R per trajectory, `[n]`.
    pub rnd: Tensor,
    /// X_N, `[n, d]`.
    pub x_final: Tensor,
    /// The recording for the replay, when asked for.
    pub recording: Option<Recording>,
    /// The live controls and ∂R/∂u_k, when asked for.
    pub kept: Option<KeptControls>,
    /// The record for the adjoint backward, when asked for ([`SimOptions::adjoint`]).
    pub adjoint: Option<AdjointRecord>,
}

fn rowdot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum_dim_intlist([1i64].as_slice(), false, a.kind())
}

/// Simulates the generative SDE from `x0` on the method's grid (or the grid `grid` given),
/// accumulating R (spec §3.2–3.4). Target scores are computed only if a control needs them.
pub fn simulate(
    method: &Method,
    target: &dyn Target,
    controls: Controls<'_>,
    x0: &Tensor,
    opts: SimOptions,
) -> SimOutput {
    simulate_on(method, &method.grid, target, controls, x0, opts)
}

/// [`simulate`] on an explicit (sub-)grid; times stay absolute.
pub fn simulate_on(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    target: &dyn Target,
    controls: Controls<'_>,
    x0: &Tensor,
    opts: SimOptions,
) -> SimOutput {
    simulate_with_noise(method, grid, target, controls, x0, opts, None)
}

/// The terminal part of R: log p_ref(X_N) − log ρ(X_N) (forms 3.3, 3.4, ou_dds), with
/// p_ref the reference's terminal marginal, or −log ρ(X_N) (form 3.2).
fn terminal_term(method: &Method, target: &dyn Target, x: &Tensor, zc: Option<ZeroCom>) -> Tensor {
    let log_rho = target.log_density(x);
    // Reference marginals N(0, std² I) of the subspace when states live in one.
    let gauss = |std: f64| match zc {
        Some(z) => gauss_log_prob(x, std) + z.gauss_log_norm_correction(std),
        None => gauss_log_prob(x, std),
    };
    match method.form {
        RndForm::TimeReversal => -log_rho,
        RndForm::Reference { dds } => {
            // PIS: the Brownian reference from δ₀ ends at N(0, σ²T I) (σ²T = 1 for the
            // paper's σ = √0.2, T = 5); Euler DDS: the VP's N(0, I).
            let std = match (dds, method.sde) {
                (false, crate::sde::Sde::Bm { sigma, t_end }) => sigma * t_end.sqrt(),
                _ => 1.0,
            };
            gauss(std) - log_rho
        }
        RndForm::ExpIntegrator { sigma, .. } => gauss(sigma) - log_rho,
        RndForm::OuDds { sigma0, .. } => gauss(sigma0) - log_rho,
    }
}

/// log p_prior(x), of the subspace's Gaussian when states live in the zero-CoM subspace.
fn prior_log_prob(prior: &Prior, x: &Tensor, zc: Option<ZeroCom>) -> Tensor {
    let lp = prior.log_prob(x);
    match (zc, *prior) {
        (Some(z), Prior::Gauss { std } | Prior::TruncGauss { std, .. }) => {
            lp + z.gauss_log_norm_correction(std)
        }
        _ => lp,
    }
}

/// Finite-and-below-`max_rnd` mask of R (spec §3.6), as a float tensor (1 = kept).
pub fn kept_mask(rnd: &Tensor, max_rnd: Option<f64>) -> Tensor {
    let mut m = rnd.isfinite();
    if let Some(mx) = max_rnd {
        m = m.logical_and(&rnd.lt(mx));
    }
    m.to_kind(Kind::Float)
}

#[cfg(test)]
mod tests;

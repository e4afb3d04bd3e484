//! The annealed sampler (CMCD; SCLD is the same dynamics cut into K pieces) and the
//! simulation of one piece with its incremental log-weight.
//!
//! Step k = 0 … N − 1, Δ = 1/N, σ_k from [`Diffusion`], g_k = ∇log γ_k
//! ([`GeometricPath`]), u the learned control evaluated at time t = k/N with the detached
//! g_k as its Langevin input:
//! - forward kernel F_k(x'|x) = N(x'; m_F, ς_k² I), m_F = x + σ_k²(g_k(x) + u(t_k, x))Δ,
//!   ς_k = σ_k√(2Δ);
//! - backward kernel B_k(x|x') = N(x; m_B, ς_k² I), m_B = x' + σ_k²(g_j(x') − u(t_{k+1}, x'))Δ,
//!   with j = k (SCLD's code, [`BackwardLevel::Same`]) or j = k + 1
//!   ([`BackwardLevel::Next`], whose u(t_{k+1}, x') with input g_{k+1} is the next forward
//!   step's evaluation, so a piece of L steps costs L + 1 network calls instead of 2L);
//! - ℓ_k = log B_k(x_k|x_{k+1}) − log F_k(x_{k+1}|x_k)
//!   = (|x_{k+1} − m_F|² − |x_k − m_B|²)/(2ς_k²) (equal scales: the constants cancel);
//! - the piece from a to b has incremental log-weight
//!   Δ_{a→b} = Σ_{k=a}^{b−1} ℓ_k + log γ_b(x_b) − log γ_a(x_a); over the whole path
//!   Δ_{0→N} = −R with R = log p_prior(x_0) + Σ log F − Σ log B − log ρ(x_N), the
//!   library's log-RND, so E[e^{−R}] = Z for any control (both kernels are normalised).
//!
//! Gradient modes ([`Grad`]): `Pathwise` (KL) keeps x_{k+1} = m_F + ς ξ in the graph;
//! `Detached` (LV) draws x_{k+1} = stopgrad(m_F) + λς ξ (λ ≥ 1 the exploration scale), so
//! Δ depends on θ only through u in m_F and m_B and through β in log γ and g; `None`
//! evaluates without a graph.

use super::path::{GeometricPath, TargetAt};
use super::schedule::Diffusion;
use crate::control::Control;
use crate::target::{autograd_grad_in_graph, Target};
use anyhow::{bail, Result};
use tch::Tensor;

/// Which annealing level the backward kernel's drift uses at x_{k+1} (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackwardLevel {
    /// g_k(x_{k+1}) and a separate network call with that input (SCLD's code).
    Same,
    /// g_{k+1}(x_{k+1}), shared with the next forward step.
    #[default]
    Next,
}

impl std::str::FromStr for BackwardLevel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "same" => Self::Same,
            "next" => Self::Next,
            other => bail!("unknown backward level `{other}`: expected same, next"),
        })
    }
}

/// How gradients flow through a piece (module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Grad {
    /// No graph (evaluation).
    None,
    /// Reparametrised through the states (KL).
    Pathwise,
    /// States detached, behaviour noise scale λ ≥ 1 (LV).
    Detached { noise_scale: f64 },
}

/// An annealed Langevin sampler: N steps on [0, 1], prior N(0, s² I), diffusion schedule,
/// K pieces of L = N/K steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Annealed {
    pub steps: usize,
    pub prior_std: f64,
    pub diffusion: Diffusion,
    pub backward: BackwardLevel,
    /// K ≥ 1; K = 1 is CMCD.
    pub pieces: usize,
}

impl Annealed {
    /// Checks the settings: N ≥ 1, K ≥ 1 dividing N, s > 0, a valid diffusion.
    pub fn new(
        steps: usize,
        prior_std: f64,
        diffusion: Diffusion,
        backward: BackwardLevel,
        pieces: usize,
    ) -> Result<Self> {
        if steps == 0 {
            bail!("an annealed sampler needs at least one step");
        }
        if pieces == 0 || !steps.is_multiple_of(pieces) {
            bail!("the number of pieces ({pieces}) must be ≥ 1 and divide the steps ({steps})");
        }
        if !(prior_std.is_finite() && prior_std > 0.0) {
            bail!("the prior std must be positive and finite (got {prior_std})");
        }
        diffusion.validate()?;
        Ok(Self {
            steps,
            prior_std,
            diffusion,
            backward,
            pieces,
        })
    }

    /// The step boundaries of piece j: (jL, (j + 1)L).
    pub fn piece(&self, j: usize) -> (usize, usize) {
        let l = self.steps / self.pieces;
        (j * l, (j + 1) * l)
    }

    /// t_k = k/N, the control's time input.
    pub fn time(&self, k: usize) -> f64 {
        k as f64 / self.steps as f64
    }
}

/// The output of one piece.
pub struct Piece {
    /// Δ_{a→b} per particle, `[n]` (with the graph of the mode).
    pub delta: Tensor,
    /// x_b, `[n, d]` (detached unless pathwise).
    pub x: Tensor,
}

/// ∇log ρ at `x`, in the graph of `x` when pathwise gradients need it.
fn target_score(target: &dyn Target, x: &Tensor, grad: Grad) -> Tensor {
    if grad == Grad::Pathwise && x.requires_grad() && !target.score_in_graph() {
        autograd_grad_in_graph(&target.log_density(x), x)
    } else {
        target.score(x)
    }
}

fn target_at(target: &dyn Target, x: &Tensor, grad: Grad, log_rho: bool) -> TargetAt {
    TargetAt {
        log_rho: log_rho.then(|| target.log_density(x)),
        score: target_score(target, x, grad),
    }
}

fn sq_norm(x: &Tensor) -> Tensor {
    x.square()
        .sum_dim_intlist([1i64].as_slice(), false, x.kind())
}

/// Simulates piece (a, b) from `x_a` ([`Annealed::piece`]), returning Δ_{a→b} and x_b.
pub fn run_piece(
    sampler: &Annealed,
    path: &GeometricPath,
    target: &dyn Target,
    control: &dyn Control,
    x_a: &Tensor,
    (a, b): (usize, usize),
    grad: Grad,
) -> Piece {
    let run = || {
        let dt = 1.0 / sampler.steps as f64;
        let needs_score = control.needs_target_score();
        let lam = match grad {
            Grad::Detached { noise_scale } => noise_scale,
            _ => 1.0,
        };
        let x0 = match grad {
            Grad::Pathwise => x_a.shallow_clone(),
            _ => x_a.detach(),
        };
        let at0 = target_at(target, &x0, grad, true);
        let mut log_w = -path.log_gamma(a, &x0, at0.log_rho.as_ref().expect("log ρ"));
        let mut x = x0;
        let mut g = path.score(a, &x, &at0.score);
        let mut u = control.eval(
            sampler.time(a),
            &x,
            needs_score.then(|| g.detach()).as_ref(),
        );
        for k in a..b {
            let sigma = sampler.diffusion.sigma(k, sampler.steps);
            let var = 2.0 * sigma * sigma * dt;
            let m_f = &x + (&g + &u) * (sigma * sigma * dt);
            let xi = x.randn_like();
            let x_next = match grad {
                Grad::Pathwise => &m_f + &xi * var.sqrt(),
                _ => m_f.detach() + &xi * (lam * var.sqrt()),
            };
            let last = k + 1 == b;
            let at = target_at(target, &x_next, grad, last);
            let g_next = path.score(k + 1, &x_next, &at.score);
            let input = |g: &Tensor| needs_score.then(|| g.detach());
            let t_next = sampler.time(k + 1);
            let u_next = control.eval(t_next, &x_next, input(&g_next).as_ref());
            let (g_b, u_b) = match sampler.backward {
                BackwardLevel::Next => (g_next.shallow_clone(), u_next.shallow_clone()),
                BackwardLevel::Same => {
                    let g_same = path.score(k, &x_next, &at.score);
                    let u_same = control.eval(t_next, &x_next, input(&g_same).as_ref());
                    (g_same, u_same)
                }
            };
            let m_b = &x_next + (g_b - u_b) * (sigma * sigma * dt);
            log_w = &log_w + (sq_norm(&(&x_next - &m_f)) - sq_norm(&(&x - &m_b))) / (2.0 * var);
            if last {
                log_w = &log_w + path.log_gamma(b, &x_next, at.log_rho.as_ref().expect("log ρ"));
            }
            x = x_next;
            g = g_next;
            u = u_next;
        }
        Piece {
            delta: log_w,
            x: if grad == Grad::Pathwise {
                x
            } else {
                x.detach()
            },
        }
    };
    if grad == Grad::None {
        tch::no_grad(run)
    } else {
        run()
    }
}

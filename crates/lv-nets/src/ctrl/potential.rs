//! The potential control u = σ∇ₓclip(Φ) (sub-trajectory training, spec §5.5).

use super::{clip, per_row, rows_per_time, Clips, CtrlConfig, SigmaFn};
use crate::fourier::{grad_mode_enabled, FourierMlp};
use lv_core::Control;
use tch::{nn, Kind, Tensor};

/// Potential parametrisation (sub-trajectory training, spec §5.5):
/// u(t, x) = σ(t) ∇_x clip_m(Φ(t, x)), with Φ a one-output [`FourierMlp`] (so u = 0 where
/// the clamp is active). The learned unnormalised log-density at time t is clip_m(Φ(t, x))
/// ([`PotentialCtrl::potential`]).
///
/// The x-gradient is taken inside `tch::with_grad` with `create_graph = true` (double
/// backward), so the parameters receive gradients through u. If `x` already requires grad
/// (KL mode) it is differentiated as is, keeping the path to x; otherwise a detached copy is
/// used. When the caller has autograd disabled (evaluation), the gradient is computed without
/// a graph and returned detached.
pub struct PotentialCtrl {
    net: FourierMlp,
    clips: Clips,
    sigma: SigmaFn,
}

impl std::fmt::Debug for PotentialCtrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PotentialCtrl")
            .field("net", &self.net)
            .field("clips", &self.clips)
            .finish_non_exhaustive()
    }
}

impl PotentialCtrl {
    /// Φ under `p / "net"`; `sigma` = σ(t) of the SDE. Uses `cfg.clip_model`.
    /// Errors name the invalid setting ([`CtrlConfig::check`], `dim` ≥ 1).
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig, sigma: SigmaFn) -> anyhow::Result<Self> {
        cfg.check("")?;
        Ok(Self {
            net: FourierMlp::new(&(p / "net"), dim, 1, &cfg.mlp)?,
            clips: Clips::new(cfg),
            sigma,
        })
    }

    /// The network Φ.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }

    /// σ(t).
    pub fn sigma(&self, t: f64) -> f64 {
        (self.sigma)(t)
    }

    /// Learned log-density clip_m(Φ(t, x)) at one raw time: `[n]`.
    pub fn potential(&self, t: f64, x: &Tensor) -> Tensor {
        clip(&self.net.forward_t(t, x), self.clips.m()).squeeze_dim(1)
    }

    /// clip_m(Φ) with times per block as in [`Control::eval_many`]: `[K·n]`.
    pub fn potential_many(&self, ts: &[f64], x: &Tensor) -> Tensor {
        let n = rows_per_time(ts, x);
        clip(&self.net.forward_many(ts, x, n), self.clips.m()).squeeze_dim(1)
    }

    /// ∇_x clip_m(Φ) for a closure evaluating clip_m(Φ) on an x that requires grad.
    fn grad_x(&self, x: &Tensor, phi: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        let create = grad_mode_enabled();
        tch::with_grad(|| {
            let xin = if x.requires_grad() {
                x.shallow_clone()
            } else {
                x.detach().set_requires_grad(true)
            };
            let out = phi(&xin).sum(Kind::Float);
            let g = Tensor::run_backward(&[out], &[&xin], create, create)
                .into_iter()
                .next()
                .expect("one gradient");
            if create {
                g
            } else {
                g.detach()
            }
        })
    }
}

impl Control for PotentialCtrl {
    fn eval(&self, t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        self.grad_x(x, |xin| self.potential(t, xin)) * self.sigma(t)
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        let n = rows_per_time(ts, x);
        let sigma = per_row(ts, n, x.device(), |t| self.sigma(t));
        self.grad_x(x, |xin| self.potential_many(ts, xin)) * sigma
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.net.parameters()
    }
    fn set_clip_factor(&self, factor: f64) {
        self.clips.set(factor)
    }
}

/// Φ(t, ·) = clip_m(NN_Φ(t, ·)) is the learned log-density used by sub-trajectory training.
impl lv_core::control::Potential for PotentialCtrl {
    fn log_density_at(&self, t: f64, x: &Tensor) -> Tensor {
        self.potential(t, x)
    }
}

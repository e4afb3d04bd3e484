//! The DIS and bridge controls: interpolations between the prior and the target score.

use super::{
    clip, per_row, require_score, rows_per_time, Clips, CtrlConfig, SigmaFn, LERP_SCALE_INIT,
};
use crate::fourier::{times_tensor, FourierMlp, HeadArgs, TimeCache, TimeNet};
use lv_core::Control;
use tch::{nn, Tensor};

/// Which score terms a Lerp control interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LerpTerms {
    /// (1 − t/T) ∇ log p_prior(x) + (t/T) ∇ log ρ(x) (DIS).
    Both,
    /// (t/T) ∇ log ρ(x) only (the Bridge's u).
    Target,
    /// (1 − t/T) ∇ log p_prior(x) only (the Bridge's v).
    Prior,
}

/// Control of DIS:
/// u(t, x) = clip_m(NN(t, x)) + σ(t)·clip_s((1 − t/T) ∇ log p_prior(x) + (t/T) ∇ log ρ(x))
///           ⊙ clip_m(s(t)),
/// the clamp applied after interpolating; ∇ log p_prior(x) = −x / std² (Gaussian prior
/// N(0, std² I)), σ(t) the diffusion coefficient of the SDE at raw time t, T the horizon.
/// s(t) starts at 1 (default), so at initialisation u = σ(t)·clip_s(lerp).
///
/// The Bridge variants keep one term only: [`LerpTargetCtrl`], [`LerpPriorCtrl`].
pub struct LerpCtrl {
    net: FourierMlp,
    scale: TimeNet,
    clips: Clips,
    sigma: SigmaFn,
    horizon: f64,
    prior_var: f64,
    terms: LerpTerms,
    /// clip_m(s(t_k))·σ(t_k) `[K, out]` at the prepared times (with its graph).
    head: TimeCache,
}

impl LerpCtrl {
    /// A copy for another thread (see [`lv_core::Control::fork`]).
    fn forked(&self) -> Self {
        Self {
            net: self.net.fork(),
            scale: self.scale.fork(),
            clips: self.clips.clone(),
            sigma: self.sigma.clone(),
            horizon: self.horizon,
            prior_var: self.prior_var,
            terms: self.terms,
            head: TimeCache::default(),
        }
    }

    /// clip_m(s(t))·σ(t) `[1, out]`: from the prepared times, or computed.
    fn scaled_sigma(&self, t: f64) -> Tensor {
        self.head
            .lookup(t)
            .unwrap_or_else(|| clip(&self.scale.forward_t(t), self.clips.m()) * self.sigma(t))
    }
}

impl std::fmt::Debug for LerpCtrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LerpCtrl")
            .field("net", &self.net)
            .field("scale", &self.scale)
            .field("clips", &self.clips)
            .field("horizon", &self.horizon)
            .field("prior_var", &self.prior_var)
            .field("terms", &self.terms)
            .finish_non_exhaustive()
    }
}

impl LerpCtrl {
    /// DIS control (both terms). NN under `p / "net"`, s(t) under `p / "scale"`;
    /// `sigma` = σ(t), `horizon` = T, `prior_std` = std of the Gaussian prior (1 for
    /// gauss_truncate, whose log-density is the untruncated N(0, I)).
    pub fn new(
        p: &nn::Path,
        dim: i64,
        cfg: &CtrlConfig,
        sigma: SigmaFn,
        horizon: f64,
        prior_std: f64,
    ) -> anyhow::Result<Self> {
        Self::with_terms(p, dim, cfg, sigma, horizon, prior_std, LerpTerms::Both)
    }

    /// A Lerp control with the given score terms.
    pub fn with_terms(
        p: &nn::Path,
        dim: i64,
        cfg: &CtrlConfig,
        sigma: SigmaFn,
        horizon: f64,
        prior_std: f64,
        terms: LerpTerms,
    ) -> anyhow::Result<Self> {
        cfg.check("")?;
        lv_core::check::positive("horizon", horizon)?;
        lv_core::check::positive("prior std", prior_std)?;
        let init = cfg.scale_init.unwrap_or(LERP_SCALE_INIT);
        Ok(Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp)?,
            scale: TimeNet::new(&(p / "scale"), cfg.scale_dim(dim), init, &cfg.mlp)?,
            clips: Clips::new(cfg),
            sigma,
            horizon,
            prior_var: prior_std * prior_std,
            terms,
            head: TimeCache::default(),
        })
    }

    /// Which terms are interpolated.
    pub fn terms(&self) -> LerpTerms {
        self.terms
    }

    /// σ(t).
    pub fn sigma(&self, t: f64) -> f64 {
        (self.sigma)(t)
    }

    /// The base network NN.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }

    /// The time network s(t).
    pub fn scale(&self) -> &TimeNet {
        &self.scale
    }

    /// The interpolated score term with weights w = t/T given per row (`[n, 1]`) or as a
    /// scalar tensor.
    fn lerp(&self, w: &Tensor, x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let prior = || (x / -self.prior_var) * (1.0 - w);
        let target = || require_score(score, "LerpCtrl (target term)") * w;
        match self.terms {
            LerpTerms::Both => prior() + target(),
            LerpTerms::Target => target(),
            LerpTerms::Prior => prior(),
        }
    }

    fn combine(&self, nn_out: Tensor, sigma: &Tensor, lerp: Tensor, s: Tensor) -> Tensor {
        let (cm, cs) = (self.clips.m(), self.clips.s());
        clip(&nn_out, cm) + clip(&lerp, cs) * clip(&s, cm) * sigma
    }

    /// clip_m(s(t_k))·σ(t_k) `[K, out]` at times `ts`, in the current autograd mode.
    fn head_at(&self, ts: &[f64]) -> Tensor {
        let dev = self.net.device();
        let s = self.scale.forward(&times_tensor(ts, dev));
        let sig: Vec<f64> = ts.iter().map(|&t| self.sigma(t)).collect();
        let sig = times_tensor(&sig, dev).view([-1, 1]);
        clip(&s, self.clips.m()) * sig
    }
}

impl Control for LerpCtrl {
    fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
        // Scalar weights: no host-to-device tensors per step.
        let w = t / self.horizon;
        let (with_prior, with_target) = match self.terms {
            LerpTerms::Both => (true, true),
            LerpTerms::Target => (false, true),
            LerpTerms::Prior => (true, false),
        };
        let head = HeadArgs {
            // The factors as the tensor code below rounds them (f64 scalars, used in f32).
            x_coef: with_prior.then_some((-(1.0 - w) / self.prior_var) as f32),
            score: if with_target {
                Some(require_score(score, "LerpCtrl (target term)"))
            } else {
                None
            },
            score_coef: Some(w as f32),
            clip_s: self.clips.s(),
        };
        let cm = self.clips.m();
        if let Some(u) = self
            .net
            .taped_control(t, x, cm, head, &|| self.head.values())
        {
            return u;
        }
        let prior = || x * (-(1.0 - w) / self.prior_var);
        let target = || require_score(score, "LerpCtrl (target term)") * w;
        let lerp = match self.terms {
            LerpTerms::Both => prior() + target(),
            LerpTerms::Target => target(),
            LerpTerms::Prior => prior(),
        };
        let (cm, cs) = (self.clips.m(), self.clips.s());
        self.net.forward_t_clipped(t, x, cm) + clip(&lerp, cs) * self.scaled_sigma(t)
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let n = rows_per_time(ts, x);
        let dev = x.device();
        let w = per_row(ts, n, dev, |t| t / self.horizon);
        let sigma = per_row(ts, n, dev, |t| self.sigma(t));
        self.combine(
            self.net.forward_many(ts, x, n),
            &sigma,
            self.lerp(&w, x, score),
            self.scale.forward_many(ts, n),
        )
    }
    fn needs_target_score(&self) -> bool {
        self.terms != LerpTerms::Prior
    }
    fn parameters(&self) -> Vec<Tensor> {
        let mut ps = self.net.parameters();
        ps.extend(self.scale.parameters());
        ps
    }
    fn set_clip_factor(&self, factor: f64) {
        self.clips.set(factor)
    }
    fn prepare_times(&self, ts: &[f64]) {
        self.net.prepare_times(ts);
        self.head.set(ts, self.head_at(ts));
    }
    fn clear_times(&self) {
        self.net.clear_times();
        self.head.clear();
    }
    net_tape!(head);
    fn fork(&self) -> Option<Box<dyn Control + Send>> {
        Some(Box::new(self.forked()))
    }
}

/// The Bridge's forward control u: [`LerpCtrl`] with only the target term,
/// u = clip_m(NN) + σ(t)·clip_s((t/T) ∇ log ρ(x)) ⊙ clip_m(s(t)). Needs the score.
#[derive(Debug)]
pub struct LerpTargetCtrl(pub LerpCtrl);

impl LerpTargetCtrl {
    /// See [`LerpCtrl::new`] (the prior std is irrelevant here).
    pub fn new(
        p: &nn::Path,
        dim: i64,
        cfg: &CtrlConfig,
        sigma: SigmaFn,
        horizon: f64,
    ) -> anyhow::Result<Self> {
        Ok(Self(LerpCtrl::with_terms(
            p,
            dim,
            cfg,
            sigma,
            horizon,
            1.0,
            LerpTerms::Target,
        )?))
    }
}

/// The Bridge's inference control v: [`LerpCtrl`] with only the prior term,
/// v = clip_m(NN) + σ(t)·clip_s((1 − t/T)(−x/std²)) ⊙ clip_m(s(t)). Needs no score; keeps
/// the graph to x (for the divergence ∇·v).
#[derive(Debug)]
pub struct LerpPriorCtrl(pub LerpCtrl);

impl LerpPriorCtrl {
    /// See [`LerpCtrl::new`].
    pub fn new(
        p: &nn::Path,
        dim: i64,
        cfg: &CtrlConfig,
        sigma: SigmaFn,
        horizon: f64,
        prior_std: f64,
    ) -> anyhow::Result<Self> {
        Ok(Self(LerpCtrl::with_terms(
            p,
            dim,
            cfg,
            sigma,
            horizon,
            prior_std,
            LerpTerms::Prior,
        )?))
    }
}

macro_rules! delegate_control {
    ($t:ty) => {
        impl Control for $t {
            fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
                self.0.eval(t, x, score)
            }
            fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
                self.0.eval_many(ts, x, score)
            }
            fn needs_target_score(&self) -> bool {
                self.0.needs_target_score()
            }
            fn parameters(&self) -> Vec<Tensor> {
                self.0.parameters()
            }
            fn set_clip_factor(&self, factor: f64) {
                self.0.set_clip_factor(factor)
            }
            fn prepare_times(&self, ts: &[f64]) {
                self.0.prepare_times(ts)
            }
            fn clear_times(&self) {
                self.0.clear_times()
            }
            fn start_tape(&self) -> bool {
                self.0.start_tape()
            }
            fn tape_supported(&self) -> bool {
                self.0.tape_supported()
            }
            fn finish_tape(&self) {
                self.0.finish_tape()
            }
            fn drop_tape(&self) {
                self.0.drop_tape()
            }
            fn tape_vjp(&self, delta: &Tensor) -> Option<lv_core::control::TapeVjp> {
                self.0.tape_vjp(delta)
            }
            fn tape_vjp_supported(&self) -> bool {
                self.0.tape_vjp_supported()
            }
            fn start_inference(&self) -> bool {
                self.0.start_inference()
            }
            fn end_inference(&self) {
                self.0.end_inference()
            }
            fn fork(&self) -> Option<Box<dyn Control + Send>> {
                Some(Box::new(Self(self.0.forked())))
            }
        }
    };
}

delegate_control!(LerpTargetCtrl);
delegate_control!(LerpPriorCtrl);

//! Control parametrisations (spec §6.4) implementing [`lv_core::Control`].
//!
//! Notation: NN(t, x) is a [`FourierMlp`], s(t) a [`TimeNet`], clip_m and clip_s are
//! **elementwise** clamps to [−c_m, c_m] and [−c_s, c_s] (not norm clipping), with
//! c = base clip × clip factor (the ×5 schedule of spec §6.5 is applied by the trainer through
//! [`Control::set_clip_factor`]). Every network sees the raw time t ∈ [0, T].
//!
//! `eval_many` is overridden everywhere: the time embeddings and s(t) are computed once per
//! time and repeated over the rows of each block, so one trunk call serves all times.

use crate::fourier::{
    grad_mode_enabled, times_tensor, FourierMlp, HeadArgs, MlpConfig, TimeCache, TimeNet,
};
use lv_core::Control;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use tch::{nn, Device, Kind, Tensor};

/// The diffusion coefficient σ(t) of the SDE, at raw generative time t.
pub type SigmaFn = std::sync::Arc<dyn Fn(f64) -> f64 + Send + Sync>;

/// Settings shared by the control parametrisations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtrlConfig {
    /// The base network NN(t, x) (and the width and features of s(t)).
    pub mlp: MlpConfig,
    /// Base clip c_m of the network outputs NN and s(t) (default 10).
    pub clip_model: f64,
    /// Base clip c_s of the score term (default 10).
    pub clip_score: f64,
    /// `*_dim` variant: s(t) outputs d values (per-dimension scaling) instead of one.
    pub scale_per_dim: bool,
    /// Initial constant output of s(t); `None` uses the method default
    /// (0.01 for [`ScoreCtrl`], 1.0 for the Lerp controls).
    pub scale_init: Option<f64>,
}

impl Default for CtrlConfig {
    fn default() -> Self {
        Self {
            mlp: MlpConfig::default(),
            clip_model: 10.0,
            clip_score: 10.0,
            scale_per_dim: false,
            scale_init: None,
        }
    }
}

impl CtrlConfig {
    /// Checks the settings; errors name the key as `{prefix}clip_model` etc.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        use lv_core::check::positive;
        self.mlp.check(&format!("{prefix}mlp."))?;
        positive(&format!("{prefix}clip_model"), self.clip_model)?;
        positive(&format!("{prefix}clip_score"), self.clip_score)?;
        if let Some(s) = self.scale_init {
            if !s.is_finite() {
                anyhow::bail!("key `{prefix}scale_init` must be finite (got {s})");
            }
        }
        Ok(())
    }

    fn scale_dim(&self, dim: i64) -> i64 {
        if self.scale_per_dim {
            dim
        } else {
            1
        }
    }
}

/// Which parametrisation of the control u a run uses (`control = "…"` in a config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// The method's own: [`ScoreCtrl`] for PIS and DDS, [`LerpCtrl`] for DIS, the
    /// lerp-target / lerp-prior pair for the bridge.
    #[default]
    Default,
    /// Score-free u = clip(NN) ([`ClippedCtrl`]).
    Clipped,
    /// u = σ∇ₓclip(Φ) ([`PotentialCtrl`], DIS only; needed by sub-trajectory training).
    Potential,
}

/// Default initial output of s(t) for [`ScoreCtrl`] (PIS, DDS).
pub const SCORE_SCALE_INIT: f64 = 0.01;
/// Default initial output of s(t) for the Lerp controls (DIS, Bridge).
pub const LERP_SCALE_INIT: f64 = 1.0;

/// Elementwise clamp to [−c, c].
fn clip(x: &Tensor, c: f64) -> Tensor {
    x.clamp(-c, c)
}

/// The elementwise clip values c_m and c_s, with a shared multiplicative factor.
#[derive(Clone, Debug)]
struct Clips {
    model: f64,
    score: f64,
    factor: Cell<f64>,
}

impl Clips {
    fn new(cfg: &CtrlConfig) -> Self {
        assert!(
            cfg.clip_model > 0.0 && cfg.clip_score > 0.0,
            "clip values must be positive, got clip_model = {}, clip_score = {}",
            cfg.clip_model,
            cfg.clip_score
        );
        Self {
            model: cfg.clip_model,
            score: cfg.clip_score,
            factor: Cell::new(1.0),
        }
    }
    fn m(&self) -> f64 {
        self.model * self.factor.get()
    }
    fn s(&self) -> f64 {
        self.score * self.factor.get()
    }
    fn set(&self, f: f64) {
        assert!(f > 0.0, "clip factor must be positive, got {f}");
        self.factor.set(f);
    }
}

fn require_score<'a>(score: Option<&'a Tensor>, who: &str) -> &'a Tensor {
    score.unwrap_or_else(|| {
        panic!(
            "{who} needs the target score ∇ log ρ(x) (needs_target_score() is true), \
             but eval was called with score = None"
        )
    })
}

fn rows_per_time(ts: &[f64], x: &Tensor) -> i64 {
    assert!(!ts.is_empty(), "eval_many called with no times");
    let k = ts.len() as i64;
    let rows = x.size()[0];
    assert_eq!(
        rows % k,
        0,
        "eval_many: {rows} rows of x are not divisible into {k} time blocks"
    );
    rows / k
}

/// A per-row column `[K·n, 1]` holding `f(ts[k])` for the rows of block k.
fn per_row(ts: &[f64], n: i64, device: Device, f: impl Fn(f64) -> f64) -> Tensor {
    let vals: Vec<f64> = ts.iter().map(|&t| f(t)).collect();
    times_tensor(&vals, device)
        .repeat_interleave_self_int(n, 0, ts.len() as i64 * n)
        .unsqueeze(1)
}

/// The tape-mode methods of [`Control`] for a control whose base network is `self.net`
/// (a [`FourierMlp`], which does the work). `net_tape!(head)`: the control's taped
/// evaluations include a head (`FourierMlp::taped_control`), recomputed by `self.head_at(ts)`
/// when the tape ends.
macro_rules! net_tape {
    () => {
        net_tape!(@common);
        fn finish_tape(&self) {
            self.net.finish_tape()
        }
    };
    (head) => {
        net_tape!(@common);
        fn finish_tape(&self) {
            self.net
                .finish_tape_with_head(Some(&|ts: &[f64]| self.head_at(ts)))
        }
    };
    (@common) => {
        fn start_tape(&self) -> bool {
            self.net.start_tape()
        }
        fn tape_supported(&self) -> bool {
            self.net.tape_supported()
        }
        fn drop_tape(&self) {
            self.net.drop_tape()
        }
    };
}

/// Score-free control u(t, x) = clip_m(NN(t, x)).
#[derive(Debug)]
pub struct ClippedCtrl {
    net: FourierMlp,
    clips: Clips,
}

impl ClippedCtrl {
    /// NN under `p / "net"`.
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig) -> Self {
        Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp),
            clips: Clips::new(cfg),
        }
    }

    /// The base network.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }
}

impl Control for ClippedCtrl {
    fn eval(&self, t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        self.net.forward_t_clipped(t, x, self.clips.m())
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        let n = rows_per_time(ts, x);
        clip(&self.net.forward_many(ts, x, n), self.clips.m())
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.net.parameters()
    }
    fn set_clip_factor(&self, factor: f64) {
        self.clips.set(factor)
    }
    fn prepare_times(&self, ts: &[f64]) {
        self.net.prepare_times(ts)
    }
    fn clear_times(&self) {
        self.net.clear_times()
    }
    net_tape!();
    fn fork(&self) -> Option<Box<dyn Control + Send>> {
        Some(Box::new(Self {
            net: self.net.fork(),
            clips: self.clips.clone(),
        }))
    }
}

/// Langevin-preconditioned control of PIS and DDS:
/// u(t, x) = clip_m(NN(t, x)) + clip_s(∇ log ρ(x)) ⊙ clip_m(s(t)), with **no σ factor**;
/// s(t) starts at 0.01 (default). The score is the `score` argument of `eval`.
#[derive(Debug)]
pub struct ScoreCtrl {
    net: FourierMlp,
    scale: TimeNet,
    clips: Clips,
    /// clip_m(s(t_k)) `[K, out]` at the prepared times (with its graph).
    head: TimeCache,
}

impl ScoreCtrl {
    /// NN under `p / "net"`, s(t) under `p / "scale"`.
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig) -> Self {
        let init = cfg.scale_init.unwrap_or(SCORE_SCALE_INIT);
        Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp),
            scale: TimeNet::new(&(p / "scale"), cfg.scale_dim(dim), init, &cfg.mlp),
            clips: Clips::new(cfg),
            head: TimeCache::default(),
        }
    }

    /// The base network NN.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }

    /// The time network s(t).
    pub fn scale(&self) -> &TimeNet {
        &self.scale
    }

    /// clip_m(s(t)) `[1, out]`: from the prepared times, or computed.
    fn clipped_scale(&self, t: f64) -> Tensor {
        self.head
            .lookup(t)
            .unwrap_or_else(|| clip(&self.scale.forward_t(t), self.clips.m()))
    }

    fn combine(&self, nn_out: Tensor, score: &Tensor, s: Tensor) -> Tensor {
        let (cm, cs) = (self.clips.m(), self.clips.s());
        clip(&nn_out, cm) + clip(score, cs) * clip(&s, cm)
    }

    /// clip_m(s(t_k)) `[K, out]` at times `ts`, in the current autograd mode.
    fn head_at(&self, ts: &[f64]) -> Tensor {
        let s = self.scale.forward(&times_tensor(ts, self.net.device()));
        clip(&s, self.clips.m())
    }
}

impl Control for ScoreCtrl {
    fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let score = require_score(score, "ScoreCtrl");
        let (cm, cs) = (self.clips.m(), self.clips.s());
        let head = HeadArgs {
            x_coef: None,
            score: Some(score),
            score_coef: None,
            clip_s: cs,
        };
        if let Some(u) = self
            .net
            .taped_control(t, x, cm, head, &|| self.head.values())
        {
            return u;
        }
        self.net.forward_t_clipped(t, x, cm) + clip(score, cs) * self.clipped_scale(t)
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let score = require_score(score, "ScoreCtrl");
        let n = rows_per_time(ts, x);
        self.combine(
            self.net.forward_many(ts, x, n),
            score,
            self.scale.forward_many(ts, n),
        )
    }
    fn needs_target_score(&self) -> bool {
        true
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
        Some(Box::new(Self {
            net: self.net.fork(),
            scale: self.scale.fork(),
            clips: self.clips.clone(),
            head: TimeCache::default(),
        }))
    }
}

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
    ) -> Self {
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
    ) -> Self {
        assert!(horizon > 0.0, "horizon T must be positive, got {horizon}");
        assert!(
            prior_std > 0.0,
            "prior std must be positive, got {prior_std}"
        );
        let init = cfg.scale_init.unwrap_or(LERP_SCALE_INIT);
        Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp),
            scale: TimeNet::new(&(p / "scale"), cfg.scale_dim(dim), init, &cfg.mlp),
            clips: Clips::new(cfg),
            sigma,
            horizon,
            prior_var: prior_std * prior_std,
            terms,
            head: TimeCache::default(),
        }
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
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig, sigma: SigmaFn, horizon: f64) -> Self {
        Self(LerpCtrl::with_terms(
            p,
            dim,
            cfg,
            sigma,
            horizon,
            1.0,
            LerpTerms::Target,
        ))
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
    ) -> Self {
        Self(LerpCtrl::with_terms(
            p,
            dim,
            cfg,
            sigma,
            horizon,
            prior_std,
            LerpTerms::Prior,
        ))
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
            fn fork(&self) -> Option<Box<dyn Control + Send>> {
                Some(Box::new(Self(self.0.forked())))
            }
        }
    };
}

delegate_control!(LerpTargetCtrl);
delegate_control!(LerpPriorCtrl);

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
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig, sigma: SigmaFn) -> Self {
        Self {
            net: FourierMlp::new(&(p / "net"), dim, 1, &cfg.mlp),
            clips: Clips::new(cfg),
            sigma,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fourier::tests::{max_abs_diff, randomize};
    use tch::nn::VarStore;

    const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

    fn vp_sigma() -> SigmaFn {
        // vp_10: σ(t) = sqrt(β(T − t)), β(s) = 0.1 + 9.9 s / T, T = 1.
        std::sync::Arc::new(|t: f64| (0.1 + 9.9 * (1.0 - t)).sqrt())
    }

    fn loop_eval(c: &dyn Control, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let n = x.size()[0] / ts.len() as i64;
        let parts: Vec<Tensor> = ts
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                let xs = x.narrow(0, k as i64 * n, n);
                let ss = score.map(|s| s.narrow(0, k as i64 * n, n));
                c.eval(t, &xs, ss.as_ref())
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// eval_many agrees with a loop of eval, and the parameters get gradients through it.
    fn check_many_and_grads(c: &dyn Control, vs: &VarStore, d: i64, with_score: bool) {
        randomize(vs);
        let ts = [0.0, 0.3, 0.9];
        let x = Tensor::randn([6, d], CPU) * 2.0;
        let score = Tensor::randn([6, d], CPU) * 3.0;
        let score = with_score.then_some(&score);
        let many = c.eval_many(&ts, &x, score);
        let looped = loop_eval(c, &ts, &x, score);
        assert_eq!(many.size(), vec![6, d]);
        let scale = looped.abs().max().double_value(&[]);
        assert!(scale > 1e-3, "trivial control");
        assert!(
            max_abs_diff(&many, &looped) < 1e-5 * (1.0 + scale),
            "eval_many != loop"
        );
        let mut params = c.parameters();
        assert_eq!(params.len(), vs.trainable_variables().len());
        for p in &mut params {
            p.zero_grad();
        }
        (many * Tensor::randn([6, d], CPU))
            .sum(Kind::Float)
            .backward();
        let mut nonzero = 0;
        for p in &params {
            let g = p.grad();
            if g.defined() && g.abs().max().double_value(&[]) > 0.0 {
                nonzero += 1;
            }
        }
        // All but at most one (Φ's output bias does not enter ∇_x Φ) get a gradient.
        assert!(
            nonzero >= params.len() - 1,
            "{nonzero} of {} nonzero",
            params.len()
        );
    }

    #[test]
    fn clipped_ctrl() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let c = ClippedCtrl::new(&vs.root(), 2, &CtrlConfig::default());
        let x = Tensor::randn([4, 2], CPU);
        assert_eq!(c.eval(0.1, &x, None).abs().max().double_value(&[]), 0.0);
        assert!(!c.needs_target_score());
        // Clipping is active on a large output and scales with the factor.
        tch::no_grad(|| {
            let vars = vs.variables();
            let _ = vars["net.out.bias"].shallow_clone().fill_(30.0);
        });
        assert!((c.eval(0.1, &x, None) - 10.0).abs().max().double_value(&[]) < 1e-6);
        c.set_clip_factor(2.0);
        assert!((c.eval(0.1, &x, None) - 20.0).abs().max().double_value(&[]) < 1e-6);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, false);
    }

    #[test]
    fn score_ctrl_at_init_and_clip_factor() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let c = ScoreCtrl::new(&vs.root(), 2, &CtrlConfig::default());
        assert!(c.needs_target_score());
        let x = Tensor::randn([3, 2], CPU);
        let score = Tensor::from_slice(&[1.0f32, -2.0, 30.0, -40.0, 5.0, 0.5]).reshape([3, 2]);
        let u = c.eval(2.5, &x, Some(&score));
        let expect = score.clamp(-10.0, 10.0) * 0.01;
        assert!(max_abs_diff(&u, &expect) < 1e-7);
        // Clip factor 5: clip at 50, so the large entries pass unclipped.
        c.set_clip_factor(5.0);
        let u5 = c.eval(2.5, &x, Some(&score));
        assert!(max_abs_diff(&u5, &(&score * 0.01)) < 1e-7);
        assert!(max_abs_diff(&u5, &u) > 0.1);
        let u5m = c.eval_many(&[2.5], &x, Some(&score));
        assert!(max_abs_diff(&u5m, &u5) < 1e-7);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, true);
    }

    #[test]
    fn score_ctrl_per_dim_scale() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = CtrlConfig {
            scale_per_dim: true,
            ..Default::default()
        };
        let c = ScoreCtrl::new(&vs.root(), 3, &cfg);
        assert_eq!(c.scale().out_dim(), 3);
        check_many_and_grads(&c, &vs, 3, true);
    }

    #[test]
    #[should_panic(expected = "needs the target score")]
    fn score_ctrl_without_score_panics() {
        let vs = VarStore::new(Device::Cpu);
        let c = ScoreCtrl::new(&vs.root(), 2, &CtrlConfig::default());
        let _ = c.eval(0.0, &Tensor::zeros([2, 2], CPU), None);
    }

    #[test]
    fn lerp_ctrl_at_init() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let prior_std = 2.0;
        let c = LerpCtrl::new(
            &vs.root(),
            2,
            &CtrlConfig::default(),
            vp_sigma(),
            1.0,
            prior_std,
        );
        assert!(c.needs_target_score());
        let x = Tensor::from_slice(&[1.0f32, -60.0, 3.0, 0.2]).reshape([2, 2]);
        let score = Tensor::from_slice(&[25.0f32, 1.0, -4.0, 0.0]).reshape([2, 2]);
        let ts = [0.25, 0.8];
        for &t in &ts {
            let u = c.eval(t, &x, Some(&score));
            let lerp = (&x / -(prior_std * prior_std)) * (1.0 - t) + &score * t;
            let sig = (0.1 + 9.9 * (1.0 - t)).sqrt();
            let expect = lerp.clamp(-10.0, 10.0) * sig;
            assert!(max_abs_diff(&u, &expect) < 1e-5, "t = {t}");
        }
        // Many-times path, with clipping active on some entries.
        let xx = Tensor::cat(&[&x, &x], 0);
        let ss = Tensor::cat(&[&score, &score], 0);
        let many = c.eval_many(&ts, &xx, Some(&ss));
        assert!(max_abs_diff(&many, &loop_eval(&c, &ts, &xx, Some(&ss))) < 1e-5);
        c.set_clip_factor(5.0);
        let t = 0.25;
        let u = c.eval(t, &x, Some(&score));
        let lerp = (&x / -4.0) * (1.0 - t) + &score * t;
        let expect = lerp.clamp(-50.0, 50.0) * (0.1 + 9.9 * (1.0 - t)).sqrt();
        assert!(max_abs_diff(&u, &expect) < 1e-5);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, true);
    }

    #[test]
    fn lerp_bridge_variants() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let sigma = || -> SigmaFn { std::sync::Arc::new(|_t: f64| 1.0) };
        let cfg = CtrlConfig::default();
        let u = LerpTargetCtrl::new(&(vs.root() / "u"), 2, &cfg, sigma(), 1.0);
        let v = LerpPriorCtrl::new(&(vs.root() / "v"), 2, &cfg, sigma(), 1.0, 1.0);
        assert!(u.needs_target_score());
        assert!(!v.needs_target_score());
        let x = Tensor::randn([3, 2], CPU);
        let score = Tensor::randn([3, 2], CPU);
        let t = 0.3;
        let uu = u.eval(t, &x, Some(&score));
        let vv = v.eval(t, &x, None);
        assert!(max_abs_diff(&uu, &(&score * t)) < 1e-6);
        assert!(max_abs_diff(&vv, &(&x * -(1.0 - t))) < 1e-6);
        // At initialisation u + v = σ[(t/T)∇ log ρ + (1 − t/T)∇ log p_prior].
        let sum = uu + vv;
        assert!(max_abs_diff(&sum, &(&score * t - &x * (1.0 - t))) < 1e-6);
        // v keeps its graph to x (for the divergence): ∇·v = −(1 − t)·d at init.
        let xg = x.detach().set_requires_grad(true);
        let vg = v.eval(t, &xg, None);
        let div = lv_core::control::divergence_exact(&vg, &xg);
        assert!((div + 2.0 * (1.0 - t)).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn lerp_variants_many_and_grads() {
        let vs = VarStore::new(Device::Cpu);
        let v = LerpPriorCtrl::new(&vs.root(), 2, &CtrlConfig::default(), vp_sigma(), 1.0, 1.0);
        check_many_and_grads(&v, &vs, 2, false);
        let vs2 = VarStore::new(Device::Cpu);
        let u = LerpTargetCtrl::new(&vs2.root(), 2, &CtrlConfig::default(), vp_sigma(), 1.0);
        check_many_and_grads(&u, &vs2, 2, true);
    }

    #[test]
    fn potential_ctrl_matches_finite_differences() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let cfg = CtrlConfig {
            clip_model: 1e4,
            ..Default::default()
        };
        let c = PotentialCtrl::new(&vs.root(), 2, &cfg, vp_sigma());
        // At initialisation Φ is constant: u = 0.
        let x = Tensor::randn([4, 2], CPU);
        assert_eq!(c.eval(0.5, &x, None).abs().max().double_value(&[]), 0.0);
        randomize(&vs);
        let t = 0.4;
        let u = c.eval(t, &x, None);
        assert!(
            u.abs().max().double_value(&[]) > 1e-2,
            "clip active: Φ too large"
        );
        let sig = (0.1 + 9.9 * (1.0 - t)).sqrt();
        let h = 1e-2;
        for i in 0..2 {
            let e = Tensor::zeros([4, 2], CPU).index_fill(1, &Tensor::from_slice(&[i]), h);
            let fd = tch::no_grad(|| {
                (c.potential(t, &(&x + &e)) - c.potential(t, &(&x - &e))) / (2.0 * h)
            });
            let got = u.select(1, i) / sig;
            let err = max_abs_diff(&got, &fd);
            let scale = fd.abs().max().double_value(&[]);
            assert!(
                err < 2e-3 * (1.0 + scale),
                "dim {i}: err {err}, scale {scale}"
            );
        }
        // Under no_grad the control is still computed (without a graph).
        let u_ng = tch::no_grad(|| c.eval(t, &x, None));
        assert!(!u_ng.requires_grad());
        assert!(max_abs_diff(&u_ng, &u) < 1e-6);
        // KL mode: x requiring grad keeps the path to x.
        let xg = x.detach().set_requires_grad(true);
        let ug = c.eval(t, &xg, None);
        let gx = Tensor::run_backward(&[ug.sum(Kind::Float)], &[&xg], false, false);
        assert!(gx[0].abs().max().double_value(&[]) > 0.0);
        check_many_and_grads(&c, &vs, 2, false);
        assert_eq!(c.potential_many(&[0.1, 0.2], &x).size(), vec![4]);
    }

    #[test]
    fn potential_clip_zeroes_the_control() {
        let _rng = lv_core::testing::rng_lock();
        let vs = VarStore::new(Device::Cpu);
        let c = PotentialCtrl::new(&vs.root(), 2, &CtrlConfig::default(), vp_sigma());
        randomize(&vs);
        tch::no_grad(|| {
            let _ = vs.variables()["net.out.bias"].shallow_clone().fill_(1e3);
        });
        let x = Tensor::randn([4, 2], CPU);
        let u = c.eval(0.2, &x, None);
        assert_eq!(u.abs().max().double_value(&[]), 0.0);
        assert!((c.potential(0.2, &x) - 10.0).abs().max().double_value(&[]) < 1e-6);
    }

    /// Runs only where libtorch sees a GPU: every control on CUDA, eval_many vs eval.
    #[test]
    fn cuda_smoke_if_available() {
        let _rng = lv_core::testing::rng_lock();
        if !tch::Cuda::is_available() {
            return;
        }
        let dev = Device::Cuda(0);
        let vs = VarStore::new(dev);
        let cfg = CtrlConfig::default();
        let root = vs.root();
        let controls: Vec<Box<dyn Control>> = vec![
            Box::new(ClippedCtrl::new(&(&root / "a"), 2, &cfg)),
            Box::new(ScoreCtrl::new(&(&root / "b"), 2, &cfg)),
            Box::new(LerpCtrl::new(&(&root / "c"), 2, &cfg, vp_sigma(), 1.0, 1.0)),
            Box::new(PotentialCtrl::new(&(&root / "d"), 2, &cfg, vp_sigma())),
        ];
        randomize(&vs);
        let ts = [0.1, 0.5];
        let x = Tensor::randn([8, 2], (Kind::Float, dev));
        let score = Tensor::randn([8, 2], (Kind::Float, dev));
        for c in &controls {
            let many = c.eval_many(&ts, &x, Some(&score));
            assert_eq!(many.device(), dev);
            let looped = loop_eval(c.as_ref(), &ts, &x, Some(&score));
            let scale = looped.abs().max().double_value(&[]);
            assert!(max_abs_diff(&many, &looped) < 1e-4 * (1.0 + scale));
        }
        let dir = std::env::temp_dir().join(format!("lv-nets-cuda-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        crate::checkpoint::save_var_store(&vs, &path).unwrap();
        crate::checkpoint::load_var_store(&vs, &path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let cfg: CtrlConfig =
            serde_json::from_str(r#"{"clip_model": 5.0, "mlp": {"width": 16}}"#).unwrap();
        assert_eq!(cfg.clip_model, 5.0);
        assert_eq!(cfg.clip_score, 10.0);
        assert_eq!(cfg.mlp.width, 16);
        assert_eq!(cfg.mlp.num_layers, 4);
    }
}

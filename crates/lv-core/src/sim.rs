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

use crate::control::{divergence_exact, divergence_hutchinson, Control};
use crate::method::{Method, RndForm};
use crate::prior::{gauss_log_prob, Prior};
use crate::subspace::{project_opt, ZeroCom};
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
}

impl SimOptions {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            noise_scale: 1.0,
            record: false,
            boundary_terms: true,
            keep_controls: false,
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
}

/// Calls [`Control::prepare_times`] on the controls and [`Control::clear_times`] on drop.
struct PreparedTimes<'a>(Controls<'a>);

impl<'a> PreparedTimes<'a> {
    fn new(controls: Controls<'a>, ts: &[f64]) -> Self {
        controls.u.prepare_times(ts);
        if let Some(v) = controls.v {
            v.prepare_times(ts);
        }
        Self(controls)
    }
}

impl Drop for PreparedTimes<'_> {
    fn drop(&mut self) {
        self.0.u.clear_times();
        if let Some(v) = self.0.v {
            v.clear_times();
        }
    }
}

/// Per-step scalars of [`fused_lv_update`].
#[derive(Clone, Copy, Debug)]
struct StepCoefs {
    dt: f64,
    sigma: f64,
    /// Linear drift coefficient a(t) (drift a·x).
    a: f64,
    /// Off-policy noise scale λ.
    lam: f64,
    /// Reference control scale (r = rs·x) of the reference form.
    rs: f64,
}

fn step_coefs(method: &Method, t: f64, dt: f64, lam: f64) -> StepCoefs {
    StepCoefs {
        dt,
        sigma: method.sde.sigma(t),
        a: method.sde.drift_coef(t),
        lam,
        rs: method.ref_scale(t),
    }
}

/// Read-only host view of a contiguous CPU float32 tensor.
fn host(t: &Tensor) -> &[f32] {
    assert!(
        t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous(),
        "host view needs a contiguous CPU float32 tensor"
    );
    // SAFETY: contiguous CPU float32 storage of `numel` elements, alive while `t` is.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// Mutable host view of a contiguous CPU float32 tensor. The caller must hold no other view
/// of the same storage while writing.
#[allow(clippy::mut_from_ref)]
fn host_mut(t: &Tensor) -> &mut [f32] {
    assert!(
        t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous(),
        "host view needs a contiguous CPU float32 tensor"
    );
    // SAFETY: contiguous CPU float32 storage of `numel` elements, alive while `t` is; the
    // callers write only tensors they allocated (or own, `r`) and read other tensors.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}

/// One Euler–Maruyama step of the LV simulation with kept controls (w = u numerically, no
/// graph), fused over rows: returns X_{k+1} and ∂R/∂u_k, and adds the step's R terms to `r`,
/// exactly as the tensor code of [`simulate_on`] does for each form (the quadratic term
/// Σ_j (u−r)(w − ½(u+r)) Δ or its form-3.4 analogue, and the Itô term with the implied
/// increment λΔW or λξ). Accumulates in float32 like the tensor path. It never sees an
/// inference control: kept controls require v = None (asserted in [`simulate_with_noise`]),
/// so form 3.2 here is DIS (v ≡ 0) and has no λ²σ(∇·v)Δ term.
fn fused_lv_update(
    form: RndForm,
    xk: &Tensor,
    u: &Tensor,
    xi: &Tensor,
    r: &mut Tensor,
    c: StepCoefs,
) -> (Tensor, Tensor) {
    let xk = xk.contiguous();
    let u = u.contiguous();
    let xi = xi.contiguous();
    let (xs, us, xis) = (host(&xk), host(&u), host(&xi));
    let n = r.numel();
    let d = xs.len() / n.max(1);
    let shape = [n as i64, d as i64];
    let x_t = Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
    let coef_t = Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
    let (x_next, coef, rv) = (host_mut(&x_t), host_mut(&coef_t), host_mut(r));
    let f = |v: f64| v as f32;
    match form {
        RndForm::Reference { .. } | RndForm::TimeReversal => {
            let rs = if matches!(form, RndForm::Reference { .. }) {
                f(c.rs)
            } else {
                0.0
            };
            let sq = f(c.dt.sqrt());
            let (dt, sigma, a, lam) = (f(c.dt), f(c.sigma), f(c.a), f(c.lam));
            let noise = f(c.sigma * c.lam);
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut cost, mut ito) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let (x, uu) = (xs[j], us[j]);
                    let refu = x * rs;
                    let diff = uu - refu;
                    cost += diff * (uu - (uu + refu) * 0.5);
                    let dw = xis[j] * sq;
                    ito += diff * dw;
                    x_next[j] = x + (x * a + uu * sigma) * dt + dw * noise;
                    coef[j] = dw * lam;
                }
                *ri += cost * dt;
                *ri += ito * lam;
            }
        }
        RndForm::ExpIntegrator { alpha, sigma: s } => {
            let beta = (alpha * c.dt.sqrt()).clamp(0.0, 1.0);
            let decay = f((1.0 - beta * beta).sqrt());
            let quad = f(beta * beta * s * s);
            let noise = f(s * beta * c.lam);
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut cost, mut ito) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let uu = us[j];
                    cost += uu * (uu - uu * 0.5);
                    ito += uu * xis[j];
                    x_next[j] = xs[j] * decay + uu * quad + xis[j] * noise;
                    coef[j] = xis[j] * noise;
                }
                *ri += cost * quad;
                *ri += ito * noise;
            }
        }
    }
    (x_t, coef_t)
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

/// [`simulate_on`] with given standard normal increments `noise: [steps, n, d]` (row k is
/// ξ_k of step k) instead of fresh draws from torch's generator at every step. The
/// batch-sharded trainer draws once on its thread and hands each shard its rows, so results
/// do not depend on thread scheduling. (One `[steps, n, d]` draw gives the same numbers as
/// `steps` draws of `[n, d]` when n·d is a multiple of 16, libtorch's normal-sampling block.)
pub fn simulate_with_noise(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    target: &dyn Target,
    controls: Controls<'_>,
    x0: &Tensor,
    opts: SimOptions,
    noise: Option<&Tensor>,
) -> SimOutput {
    let mode = opts.mode;
    assert!(
        opts.noise_scale == 1.0 || mode == Mode::Lv,
        "an off-policy behaviour process is only valid for the LV loss"
    );
    let lam = opts.noise_scale;
    let keep = opts.keep_controls;
    // Particle systems: states, noises and controls live in the zero-CoM subspace.
    let zc = target.zero_com();
    assert!(
        zc.is_none() || controls.v.is_none(),
        "target `{}` keeps states in the zero-centre-of-mass subspace, which methods with an \
         inference control (bridge) do not support",
        target.name()
    );
    let x0_projected = project_opt(zc, x0);
    let x0 = &x0_projected;
    assert!(
        !keep || (mode == Mode::Lv && controls.v.is_none()),
        "keep_controls needs the LV mode and no inference control"
    );
    let mut kept_u = Vec::new();
    let mut kept_c = Vec::new();
    // The kept-controls path on CPU float32 updates X and R in one host pass per step.
    let fused = keep
        && zc.is_none()
        && !opts.record
        && x0.device() == tch::Device::Cpu
        && x0.kind() == Kind::Float;
    let n = x0.size()[0];
    let d = x0.size()[1];
    let dim = d as usize;
    let opts_t = (x0.kind(), x0.device());
    let needs_score =
        controls.u.needs_target_score() || controls.v.is_some_and(|v| v.needs_target_score());
    let mut x = x0.detach();
    let mut r = Tensor::zeros([n], opts_t);
    if opts.boundary_terms && method.form == RndForm::TimeReversal && mode.prior_term() {
        r += prior_log_prob(&method.prior, &x, zc);
    }
    let steps = grid.steps();
    if let Some(z) = noise {
        assert_eq!(
            z.size(),
            [steps as i64, n, d],
            "simulate_with_noise: noise must be [steps, n, d]"
        );
    }
    // Time-only parts of the controls for all grid times at once; cleared on return.
    let _prepared = PreparedTimes::new(controls, &grid.points()[..steps]);
    let mut rec_x = Vec::new();
    let mut rec_s = Vec::new();
    let mut rec_w = Vec::new();
    let mut rec_dw = Vec::new();
    for k in 0..steps {
        let t = grid.points()[k];
        let dt = grid.dt(k);
        let sigma = method.sde.sigma(t);
        let a = method.sde.drift_coef(t);
        let xk = if mode.grad_through_x() {
            x.shallow_clone()
        } else {
            x.detach()
        };
        let score = needs_score.then(|| target.score(&xk));
        // Inference control with its x-graph for the divergence (bridge).
        let (xin, v, div) = match controls.v {
            Some(vc) => {
                let (xin, v, div) = tch::with_grad(|| {
                    let xin = if xk.requires_grad() {
                        xk.shallow_clone()
                    } else {
                        xk.detach().set_requires_grad(true)
                    };
                    let v = vc.eval(t, &xin, score.as_ref());
                    let div = if mode.eval() || controls.div == DivMode::Exact {
                        divergence_exact(&v, &xin)
                    } else {
                        divergence_hutchinson(&v, &xin)
                    };
                    (xin, v, div)
                });
                if mode.eval() {
                    (xin.detach(), Some(v.detach()), Some(div.detach()))
                } else {
                    (xin, Some(v), Some(div))
                }
            }
            None => (xk.shallow_clone(), None, None),
        };
        let mut u = project_opt(zc, &controls.u.eval(t, &xin, score.as_ref()));
        if keep {
            // The live u leaves with its graph; R is accumulated from the detached value.
            let live = u;
            u = live.detach();
            kept_u.push(live);
        }
        let w = if mode.grad_through_x() {
            u.shallow_clone()
        } else {
            u.detach()
        };
        let xi = match noise {
            Some(z) => project_opt(zc, &z.get(k as i64)),
            None => project_opt(zc, &Tensor::randn([n, d], opts_t)),
        };
        if fused {
            // Same update and R terms as below, in one host pass (no graph is needed here).
            let (x_next, coef) = fused_lv_update(
                method.form,
                &xk,
                &u,
                &xi,
                &mut r,
                step_coefs(method, t, dt, lam),
            );
            x = x_next;
            kept_c.push(coef);
            continue;
        }
        match method.form {
            RndForm::Reference { .. } => {
                let rs = method.ref_scale(t);
                let ref_u = &xk * rs;
                let diff = &u - &ref_u;
                let cost = if mode.lv_cost() {
                    rowdot(&diff, &(&w - (&u + &ref_u) * 0.5))
                } else {
                    rowdot(&diff, &diff) * 0.5
                };
                r += cost * dt;
                let dw = &xi * dt.sqrt();
                if mode.ito() {
                    r += rowdot(&diff, &dw) * lam;
                }
                x = &xk + (&xk * a + &w * sigma) * dt + dw.shallow_clone() * (sigma * lam);
                if keep {
                    kept_c.push(&dw * lam);
                }
                if opts.record {
                    rec_dw.push(dw * lam);
                }
            }
            RndForm::TimeReversal => {
                let v0 = v.as_ref();
                let s = match v0 {
                    Some(v) => &u + v,
                    None => u.shallow_clone(),
                };
                let cost = if mode.lv_cost() {
                    let half = match v0 {
                        Some(v) => (&u - v) * 0.5,
                        None => &u * 0.5,
                    };
                    rowdot(&s, &(&w - half))
                } else {
                    rowdot(&s, &s) * 0.5
                };
                r += cost * dt;
                if let Some(div) = div.as_ref() {
                    // λ²σ_k(∇·v)Δ_k: the quadratic variation of the behaviour increment
                    // (module doc); λ = 1 on-policy and in evaluation.
                    r += div * (sigma * lam * lam * dt);
                }
                if mode.eval() {
                    r -= method.sde.div_drift_integral(t, t + dt, dim);
                }
                let dw = &xi * dt.sqrt();
                if mode.ito() {
                    r += rowdot(&s, &dw) * lam;
                }
                x = &xk + (&xk * a + &w * sigma) * dt + dw.shallow_clone() * (sigma * lam);
                if keep {
                    kept_c.push(&dw * lam);
                }
                if opts.record {
                    rec_dw.push(dw * lam);
                }
            }
            RndForm::ExpIntegrator { alpha, sigma: s } => {
                let beta = (alpha * dt.sqrt()).clamp(0.0, 1.0);
                let decay = (1.0 - beta * beta).sqrt();
                let cost = if mode.lv_cost() {
                    rowdot(&u, &(&w - &u * 0.5))
                } else {
                    rowdot(&u, &u) * 0.5
                };
                r += cost * (beta * beta * s * s);
                if mode.ito() {
                    r += rowdot(&u, &xi) * (s * beta * lam);
                }
                x = &xk * decay + &w * (beta * beta * s * s) + &xi * (s * beta * lam);
                if keep {
                    kept_c.push(&xi * (s * beta * lam));
                }
                if opts.record {
                    rec_dw.push(xi * lam);
                }
            }
        }
        if opts.record {
            rec_x.push(xk.detach());
            if let Some(sc) = score {
                rec_s.push(sc.detach());
            }
            rec_w.push(w.detach());
        }
    }
    let terminal = if opts.boundary_terms {
        terminal_term(method, target, &x, zc)
    } else {
        Tensor::zeros([n], opts_t)
    };
    r += &terminal;
    let recording = opts.record.then(|| {
        let mut constant = terminal.detach();
        if opts.boundary_terms && method.form == RndForm::TimeReversal && mode.prior_term() {
            constant += prior_log_prob(&method.prior, x0, zc);
        }
        Recording {
            ts: grid.points()[..steps].to_vec(),
            xs: Tensor::cat(&rec_x, 0),
            scores: (!rec_s.is_empty()).then(|| Tensor::cat(&rec_s, 0)),
            ws: Tensor::cat(&rec_w, 0),
            dws: Tensor::cat(&rec_dw, 0),
            constant,
            noise_scale: lam,
            n,
            zero_com: zc,
        }
    });
    SimOutput {
        rnd: r,
        x_final: x,
        recording,
        kept: keep.then_some(KeptControls {
            us: kept_u,
            coefs: kept_c,
        }),
    }
}

/// The terminal part of R: log p_ref(X_N) − log ρ(X_N) (forms 3.3, 3.4) or −log ρ(X_N)
/// (form 3.2).
fn terminal_term(method: &Method, target: &dyn Target, x: &Tensor, zc: Option<ZeroCom>) -> Tensor {
    let log_rho = target.log_density(x);
    // Reference marginals N(0, std² I) of the subspace when states live in one.
    let gauss = |std: f64| match zc {
        Some(z) => gauss_log_prob(x, std) + z.gauss_log_norm_correction(std),
        None => gauss_log_prob(x, std),
    };
    match method.form {
        RndForm::TimeReversal => -log_rho,
        RndForm::Reference { .. } => gauss(1.0) - log_rho,
        RndForm::ExpIntegrator { sigma, .. } => gauss(sigma) - log_rho,
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

/// Recomputes the LV log-RND of a [`Recording`] with the live controls in one batched call
/// per control over all (t_k, X_k). Equal to the step-by-step LV R (same noises) and to its
/// gradient; the trajectory itself carries no graph.
pub fn replay_lv(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
) -> Tensor {
    replay_terms(method, grid, controls, rec, 0) + &rec.constant
}

/// The controlled part of the replayed R restricted to the time steps `k0 .. k1` (no
/// constant terms), `[n]`. Summing these over a partition of the steps and adding
/// `rec.constant` gives [`replay_lv`]. Used by the chunked replay, which backpropagates one
/// chunk at a time so that the graph of all N·n rows never exists at once.
pub fn replay_lv_steps(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
    k0: usize,
    k1: usize,
) -> Tensor {
    let n = rec.n;
    let rows = |t: &Tensor| t.narrow(0, k0 as i64 * n, (k1 - k0) as i64 * n);
    let part = Recording {
        ts: rec.ts[k0..k1].to_vec(),
        xs: rows(&rec.xs),
        scores: rec.scores.as_ref().map(rows),
        ws: rows(&rec.ws),
        dws: rows(&rec.dws),
        constant: rec.constant.shallow_clone(),
        noise_scale: rec.noise_scale,
        n,
        zero_com: rec.zero_com,
    };
    replay_terms(method, grid, controls, &part, k0)
}

fn replay_terms(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
    k0: usize,
) -> Tensor {
    let n = rec.n;
    let steps = rec.ts.len() as i64;
    let d = rec.xs.size()[1];
    let opts_t = (rec.xs.kind(), rec.xs.device());
    // Per-row coefficient columns, built on the host once per call.
    let col = |f: &dyn Fn(usize) -> f64| -> Tensor {
        let vals: Vec<f32> = (0..steps as usize).map(|k| f(k) as f32).collect();
        Tensor::from_slice(&vals)
            .to_device(rec.xs.device())
            .to_kind(rec.xs.kind())
            .repeat_interleave_self_int(n, Some(0), None)
            .unsqueeze(1)
    };
    let sum_per_traj = |per_row: Tensor| -> Tensor {
        per_row
            .reshape([steps, n])
            .sum_dim_intlist([0i64].as_slice(), false, per_row.kind())
    };
    let _ = d;
    let scores = rec.scores.as_ref();
    match method.form {
        RndForm::Reference { .. } => {
            let u = project_opt(
                rec.zero_com,
                &controls.u.eval_many(&rec.ts, &rec.xs, scores),
            );
            let rs = col(&|k| method.ref_scale(rec.ts[k]));
            let dt = col(&|k| grid.dt(k0 + k));
            let ref_u = &rec.xs * rs;
            let diff = &u - &ref_u;
            let cost = (&diff * (&rec.ws - (&u + &ref_u) * 0.5)) * dt + &diff * &rec.dws;
            let per_row = cost.sum_dim_intlist([1i64].as_slice(), false, cost.kind());
            sum_per_traj(per_row)
        }
        RndForm::TimeReversal => {
            let dt = col(&|k| grid.dt(k0 + k));
            let (xin, v, div) = match controls.v {
                Some(vc) => {
                    let xin = rec.xs.detach().set_requires_grad(true);
                    let v = vc.eval_many(&rec.ts, &xin, scores);
                    let div = match controls.div {
                        DivMode::Exact => divergence_exact(&v, &xin),
                        DivMode::Hutchinson => divergence_hutchinson(&v, &xin),
                    };
                    (xin, Some(v), Some(div))
                }
                None => (rec.xs.shallow_clone(), None, None),
            };
            let u = project_opt(rec.zero_com, &controls.u.eval_many(&rec.ts, &xin, scores));
            let (s, half) = match v.as_ref() {
                Some(v) => (&u + v, (&u - v) * 0.5),
                None => (u.shallow_clone(), &u * 0.5),
            };
            let cost = (&s * (&rec.ws - half)) * &dt + &s * &rec.dws;
            let mut per_row = cost.sum_dim_intlist([1i64].as_slice(), false, cost.kind());
            if let Some(div) = div {
                // λ²σ_k(∇·v)Δ_k, as in `simulate_with_noise` (module doc).
                let lam2 = rec.noise_scale * rec.noise_scale;
                let sig = col(&|k| lam2 * method.sde.sigma(rec.ts[k]));
                per_row += div * (sig * dt).squeeze_dim(1);
            }
            sum_per_traj(per_row)
        }
        RndForm::ExpIntegrator { alpha, sigma: s } => {
            let u = project_opt(
                rec.zero_com,
                &controls.u.eval_many(&rec.ts, &rec.xs, scores),
            );
            let b2 = col(&|k| {
                let b = (alpha * grid.dt(k0 + k).sqrt()).clamp(0.0, 1.0);
                b * b * s * s
            });
            let sb = col(&|k| s * (alpha * grid.dt(k0 + k).sqrt()).clamp(0.0, 1.0));
            let cost = (&u * (&rec.ws - &u * 0.5)) * b2 + (&u * &rec.dws) * sb;
            let per_row = cost.sum_dim_intlist([1i64].as_slice(), false, cost.kind());
            let _ = opts_t;
            sum_per_traj(per_row)
        }
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
mod tests {
    use super::*;
    use crate::control::FnControl;
    use crate::testing::{rng_lock, ScaledGauss};

    /// Scale of the inference control v(t, x) = A·tanh(x) + 0.2t (elementwise), whose
    /// divergence is ∇·v = A Σ_i (1 − tanh² x_i).
    const A: f64 = 1.0;

    fn u_fn(t: f64, x: &Tensor) -> Tensor {
        x.sin() * 0.5 + t * 0.3
    }

    fn v_fn(t: f64, x: &Tensor) -> Tensor {
        x.tanh() * A + t * 0.2
    }

    fn div_v(x: &Tensor) -> Tensor {
        (-x.tanh().square() + 1.0).sum_dim_intlist([1i64].as_slice(), false, x.kind()) * A
    }

    /// log N(x; m, s² I) per row, without the constant −(d/2) log 2π.
    fn log_normal(x: &Tensor, m: &Tensor, s2: f64) -> Tensor {
        let d = x.size()[1] as f64;
        rowdot(&(x - m), &(x - m)) * (-0.5 / s2) - 0.5 * d * s2.ln()
    }

    /// Per-trajectory values on one recorded off-policy path (float64): the exact log-ratio
    /// of the discrete kernels, and the left-point form with the ∇·v term scaled by 1 (the
    /// on-policy coefficient) or by λ².
    struct Forms {
        exact: Tensor,
        old: Tensor,
        new: Tensor,
    }

    /// Evaluates [`Forms`] on the path X_0 … X_N (`path[k]`: `[n, d]`, float64) of the
    /// bridge (drift a(t)x, scalar σ(t)) with u = `u_fn`, v = `v_fn` and behaviour noise λσ:
    /// - exact: Σ_k log N(X_{k+1}; X_k + (a_k X_k + σ_k u_k)Δ_k, σ_k²Δ_k)
    ///   − log N(X_k; X_{k+1} + (σ_{k+1} v(t_{k+1}, X_{k+1}) − a_{k+1} X_{k+1})Δ_k, σ_{k+1}²Δ_k),
    ///   the forward generative kernel against the backward Euler–Maruyama kernel of the
    ///   inference SDE (spec §1.1; v at generative time, evaluated at the step's right end);
    /// - forms: Σ_k (u_k + v_k)·(w_k − ½(u_k − v_k))Δ_k + (u_k + v_k)·ΔŴ_k + c σ_k(∇·v)_k Δ_k
    ///   with w = u, the implied increment ΔŴ_k = (ΔX_k − (a_k X_k + σ_k w_k)Δ_k)/σ_k and
    ///   c = 1 (old) or λ² (new).
    fn forms(method: &Method, path: &[Tensor], lam: f64) -> Forms {
        let pts = method.grid.points();
        let n = path[0].size()[0];
        let zeros = || Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        let (mut exact, mut old, mut new) = (zeros(), zeros(), zeros());
        for k in 0..method.grid.steps() {
            let (t0, t1, dt) = (pts[k], pts[k + 1], method.grid.dt(k));
            let (s0, s1) = (method.sde.sigma(t0), method.sde.sigma(t1));
            let (a0, a1) = (method.sde.drift_coef(t0), method.sde.drift_coef(t1));
            let (x0, x1) = (&path[k], &path[k + 1]);
            let u = u_fn(t0, x0);
            let v = v_fn(t0, x0);
            let v1 = v_fn(t1, x1);
            let fwd = log_normal(x1, &(x0 + (x0 * a0 + &u * s0) * dt), s0 * s0 * dt);
            let bwd = log_normal(x0, &(x1 + (&v1 * s1 - x1 * a1) * dt), s1 * s1 * dt);
            exact += fwd - bwd;
            let w = &u;
            let dw_hat = (x1 - x0 - (x0 * a0 + w * s0) * dt) / s0;
            let s = &u + &v;
            let left = rowdot(&s, &(w - (&u - &v) * 0.5)) * dt + rowdot(&s, &dw_hat);
            let div = div_v(x0) * (s0 * dt);
            old += &left + &div;
            new += left + div * (lam * lam);
        }
        Forms { exact, old, new }
    }

    /// Off-policy LV on the bridge (λ = 2, nonlinear v with ∇·v ≠ 0): R of the simulation
    /// and of the batched replay equals the left-point form with λ²σ(∇·v)Δ, and that form
    /// converges to the exact log-ratio of the discrete generative and inference kernels
    /// along the sampled paths as Δ → 0 (mean |error| ∝ √Δ, mean error → 0). The form with
    /// the on-policy σ(∇·v)Δ does not: its error tends to (λ² − 1)∫σ∇·v dt.
    #[test]
    fn off_policy_bridge_rnd_matches_exact_kernel_ratio() {
        let _g = rng_lock();
        let lam = 2.0;
        let n = 256;
        let d = 2;
        let target = ScaledGauss {
            dim: d,
            mean: 0.0,
            std: 1.0,
            log_z: 0.0,
        };
        let u = FnControl(u_fn);
        let v = FnControl(v_fn);
        let controls = Controls::with_v(&u, &v);
        let mut errs = Vec::new();
        for steps in [50usize, 200, 800] {
            tch::manual_seed(7);
            let method = Method::bridge(steps).unwrap();
            let x0 = method.prior.sample(n, d as i64, tch::Device::Cpu);
            let mut opts = SimOptions::new(Mode::Lv);
            opts.noise_scale = lam;
            opts.record = true;
            // Boundary terms are the same in every form; leave them out.
            opts.boundary_terms = false;
            let out = tch::no_grad(|| simulate(&method, &target, controls, &x0, opts));
            let rec = out.recording.expect("recording requested");
            let xs = rec
                .xs
                .to_kind(Kind::Double)
                .reshape([steps as i64, n, d as i64]);
            let mut path: Vec<Tensor> = (0..steps as i64).map(|k| xs.get(k)).collect();
            path.push(out.x_final.to_kind(Kind::Double));
            let f = forms(&method, &path, lam);
            let rnd = out.rnd.to_kind(Kind::Double);
            let max_abs = |a: &Tensor| a.abs().max().double_value(&[]);
            let mean_abs = |a: &Tensor| a.abs().mean(Kind::Double).double_value(&[]);
            let gap = max_abs(&(&rnd - &f.new));
            assert!(gap < 2e-3, "N = {steps}: simulated R − λ²-form = {gap}");
            if steps == 50 {
                // The batched replay (same recording) carries λ too; one grid suffices.
                let replayed = replay_lv(&method, &method.grid, controls, &rec);
                let gap = max_abs(&(replayed.detach().to_kind(Kind::Double) - &rnd));
                assert!(gap < 2e-3, "N = {steps}: replayed R − simulated R = {gap}");
            }
            let e_new = mean_abs(&(&f.new - &f.exact));
            let e_old = mean_abs(&(&f.old - &f.exact));
            let bias_new = (&f.new - &f.exact).mean(Kind::Double).double_value(&[]);
            eprintln!(
                "N = {steps}: mean |R − exact|: λ² form {e_new:.4}, old form {e_old:.4}; \
                 mean (R − exact), λ² form {bias_new:.4}"
            );
            errs.push((e_new, e_old, bias_new));
        }
        let (coarse, fine) = (errs[0], errs[2]);
        assert!(
            fine.0 < coarse.0 / 2.5 && fine.0 < 0.25 && fine.2.abs() < 0.05,
            "the λ² form must converge to the exact kernel ratio: {errs:?}"
        );
        assert!(
            fine.1 > 0.8 * coarse.1 && fine.1 > 5.0 * fine.0,
            "the on-policy ∇·v coefficient leaves a bias (λ² − 1)∫σ∇·v dt: {errs:?}"
        );
    }
}

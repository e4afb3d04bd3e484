//! Euler–Maruyama simulation of the generative SDE with accumulation of the log-RND
//! R = log dP_{X^u}/dP_{Y^v}(X^w) − log Z (spec §3), step by step or as a batched replay.
//!
//! Conventions:
//! - Left-point (Itô) evaluation at (t_k, X_k); one ΔW_k = √Δ_k ξ_k per step drives both the
//!   state and the Itô term.
//! - The trajectory is driven by w: w = u (KL, evaluation; gradient through X), or
//!   w = stopgrad(u) (LV; X carries no graph and the loss sees the live u at X_k).
//! - **Off-policy behaviour** (LV only): the state may be driven by a wider noise,
//!   X_{k+1} = X_k + (μ_k + σ_k w_k)Δ_k + λσ_k ΔW_k with λ ≥ 1. The discrete-time log-RND of
//!   the generative vs the reference transition kernels (both with variance σ_k²Δ_k) on such a
//!   path is the usual LV expression with ΔW_k replaced by the *implied* generative increment
//!   ΔŴ_k = (X_{k+1} − X_k − (μ_k + σ_k w_k)Δ_k)/σ_k = λΔW_k:
//!   Σ_k (u_k − r_k)·(w_k − ½(u_k + r_k))Δ_k + (u_k − r_k)·ΔŴ_k (form 3.3), and likewise with
//!   u + v and w − ½(u − v) for form 3.2 and with β_k²σ² and σβ_k λξ_k for form 3.4. LV is a
//!   valid divergence for any such path measure (spec §2, "off-policy view"); KL is not.

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
/// network evaluations of the simulation, no second forward pass.
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
/// increment λΔW or λξ). Accumulates in float32 like the tensor path.
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
                    r += div * (sigma * dt);
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
                let sig = col(&|k| method.sde.sigma(rec.ts[k]));
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

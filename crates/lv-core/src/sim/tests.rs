//! Tests of the simulation against exact kernel ratios.

use super::{replay_lv, rowdot, simulate, Controls, Mode, SimOptions};
use crate::control::FnControl;
use crate::method::Method;
use crate::testing::{rng_lock, ScaledGauss};
use tch::{Kind, Tensor};

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

/// PIS with a reference other than the paper's (σ²T = 5): with the zero control and the
/// target N(0, σ²T I) — the reference's own terminal law — R ≡ −log Z on every path.
#[test]
fn pis_reference_terminal_law_is_n_0_sigma2_t() {
    let _g = rng_lock();
    let method = Method::pis_with(5f64.sqrt(), 1.0, 20).unwrap();
    let target = ScaledGauss {
        dim: 2,
        mean: 0.0,
        std: 5f64.sqrt(),
        log_z: 0.7,
    };
    let zero = FnControl(|_t: f64, x: &Tensor| x.zeros_like());
    let x0 = method
        .prior
        .sample(512, 2, tch::Device::Cpu)
        .to_kind(Kind::Double);
    for mode in [Mode::Lv, Mode::EvalIto] {
        let out = tch::no_grad(|| {
            simulate(
                &method,
                &target,
                Controls::new(&zero),
                &x0,
                SimOptions::new(mode),
            )
        });
        let gap = (&out.rnd + 0.7).abs().max().double_value(&[]);
        assert!(gap < 1e-9, "{mode:?}: max |R + log Z| = {gap}");
    }
}

/// One method per step kernel: PIS and DIS (the Euler forms), DDS (the exponential
/// integrator) and RSMC's ou_dds (its OU kernel).
fn every_step_kernel(steps: usize) -> [Method; 4] {
    [
        Method::pis(steps).unwrap(),
        Method::dis(steps).unwrap(),
        Method::dds(steps).unwrap(),
        Method::ou_dds(steps, 1.5, 6.0).unwrap(),
    ]
}

/// max|a − b| / (1 + max|b|), in float64.
fn rel_gap(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / (1.0 + b.abs().max().double_value(&[]))
}

/// [`super::simulate_with_noise`] on the method's grid without a graph, with `x0` and the
/// increments `noise` converted to `kind`.
fn with_noise(
    method: &Method,
    target: &dyn crate::Target,
    u: &dyn crate::Control,
    x0: &Tensor,
    noise: &Tensor,
    kind: Kind,
    opts: SimOptions,
) -> super::SimOutput {
    tch::no_grad(|| {
        super::simulate_with_noise(
            method,
            &method.grid,
            target,
            Controls::new(u),
            &x0.to_kind(kind),
            opts,
            Some(&noise.to_kind(kind)),
        )
    })
}

/// The fused host step of an evaluation (CPU float32, no inference control) gives the tensor
/// code's X_N and R: the same simulation in float64 (tensor path) from the same prior
/// draws and noise, for every step kernel (PIS and DIS Euler forms, DDS's exponential
/// integrator, RSMC's OU kernel), with and without the Itô term.
#[test]
fn fused_eval_step_matches_tensor_path() {
    let _g = rng_lock();
    let (n, d, steps) = (64i64, 3usize, 30usize);
    let target = ScaledGauss {
        dim: d,
        mean: 0.3,
        std: 1.2,
        log_z: 0.0,
    };
    let u = FnControl(u_fn);
    for method in &every_step_kernel(steps) {
        tch::manual_seed(3);
        let x0 = method.prior.sample(n, d as i64, tch::Device::Cpu);
        let noise = Tensor::randn([steps as i64, n, d as i64], (Kind::Float, tch::Device::Cpu));
        for mode in [Mode::EvalIto, Mode::EvalNoIto] {
            let opts = SimOptions {
                fused_eval: true,
                ..SimOptions::new(mode)
            };
            let run = |kind: Kind| with_noise(method, &target, &u, &x0, &noise, kind, opts);
            let before = super::fused::FUSED_WU_STEPS.with(|c| c.get());
            let fused = run(Kind::Float);
            let taken = super::fused::FUSED_WU_STEPS.with(|c| c.get()) - before;
            assert_eq!(
                taken, steps,
                "{:?}: the fused step was not taken",
                method.form
            );
            let tensor = run(Kind::Double);
            let (gx, gr) = (
                rel_gap(&fused.x_final, &tensor.x_final),
                rel_gap(&fused.rnd, &tensor.rnd),
            );
            assert!(
                gx < 1e-5 && gr < 1e-5,
                "{:?} {mode:?}: X_N gap {gx}, R gap {gr}",
                method.form
            );
        }
        // The Itô term is in the fused R: the two modes differ.
        let r = |mode| {
            let opts = SimOptions {
                fused_eval: true,
                ..SimOptions::new(mode)
            };
            with_noise(method, &target, &u, &x0, &noise, Kind::Float, opts).rnd
        };
        let ito = (r(Mode::EvalIto) - r(Mode::EvalNoIto)).abs().max();
        assert!(
            ito.double_value(&[]) > 1e-3,
            "{:?}: no Itô term",
            method.form
        );
    }
}

/// A control u = `u_fn` that "tapes" its evaluations as the adjoint path needs (leaves that
/// require grad) and answers [`crate::Control::tape_vjp`] analytically
/// (J_uᵀδ = δ ⊙ ½cos x), recording the cotangents δ_k it receives.
struct LeafControl {
    xs: std::cell::RefCell<Vec<Tensor>>,
    deltas: std::cell::RefCell<Vec<Tensor>>,
}

impl crate::Control for LeafControl {
    fn eval(&self, t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        self.xs.borrow_mut().push(x.detach());
        u_fn(t, x).detach().set_requires_grad(true)
    }
    fn tape_vjp(&self, delta: &Tensor) -> Option<crate::control::TapeVjp> {
        let x = self.xs.borrow_mut().pop()?;
        self.deltas.borrow_mut().push(delta.detach().copy());
        Some(crate::control::TapeVjp {
            x: delta * x.cos() * 0.5,
            score: None,
        })
    }
}

/// The adjoint KL path's host passes (CPU float32: the fused forward step and the fused
/// backward recursion) against the tensor code (the same simulation and backward in
/// float64): X_N, R and every cotangent δ_k = ∂L/∂u_k the control receives, for the four
/// step kernels, KL and KL-Itô; the fused forward is taken on every step.
#[test]
fn fused_adjoint_steps_match_tensor_path() {
    let _g = rng_lock();
    let (n, d, steps) = (48i64, 3usize, 20usize);
    let target = ScaledGauss {
        dim: d,
        mean: 0.3,
        std: 1.2,
        log_z: 0.0,
    };
    for method in &every_step_kernel(steps) {
        tch::manual_seed(5);
        let x0 = method.prior.sample(n, d as i64, tch::Device::Cpu);
        let noise = Tensor::randn([steps as i64, n, d as i64], (Kind::Float, tch::Device::Cpu));
        let g = Tensor::rand([n], (Kind::Float, tch::Device::Cpu)) + 0.5;
        for mode in [Mode::Kl, Mode::KlIto] {
            let run = |kind: Kind| {
                let c = LeafControl {
                    xs: Default::default(),
                    deltas: Default::default(),
                };
                let before = super::fused::FUSED_WU_STEPS.with(|c| c.get());
                let opts = SimOptions {
                    adjoint: true,
                    ..SimOptions::new(mode)
                };
                let out = with_noise(method, &target, &c, &x0, &noise, kind, opts);
                let mut fused = super::fused::FUSED_WU_STEPS.with(|c| c.get()) - before;
                let rec = out.adjoint.expect("adjoint recording");
                let before = super::adjoint::fused::STEPS.with(|c| c.get());
                rec.backward(method, &target, &c, &g.to_kind(kind));
                fused += super::adjoint::fused::STEPS.with(|c| c.get()) - before;
                let deltas = c.deltas.into_inner();
                (out.x_final, out.rnd, deltas, fused)
            };
            let (x32, r32, d32, fused) = run(Kind::Float);
            let (x64, r64, d64, tensor) = run(Kind::Double);
            // Forward and backward: one host pass each per step in float32, none in float64.
            assert_eq!(
                (fused, tensor),
                (2 * steps, 0),
                "{:?} {mode:?}",
                method.form
            );
            assert!(
                rel_gap(&x32, &x64) < 1e-5,
                "{:?} {mode:?}: X_N",
                method.form
            );
            assert!(rel_gap(&r32, &r64) < 1e-5, "{:?} {mode:?}: R", method.form);
            assert_eq!(d32.len(), steps);
            for (k, (a, b)) in d32.iter().zip(&d64).enumerate() {
                let e = rel_gap(a, b);
                assert!(
                    e < 1e-4,
                    "{:?} {mode:?}: δ at step {k} differs by {e}",
                    method.form
                );
            }
        }
    }
}

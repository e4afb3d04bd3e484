//! The step-by-step simulation: Euler–Maruyama (or exponential-integrator) steps of the
//! generative SDE with R accumulated from each step's [`StepKernel`].

use super::fused::{fused_lv_update, fused_wu_update};
use super::kernel::StepKernel;
use super::{
    prior_log_prob, rowdot, terminal_term, Controls, DivMode, KeptControls, Mode, Recording,
    SimOptions, SimOutput,
};
use crate::control::{divergence_exact, divergence_hutchinson};
use crate::method::{Method, RndForm};
use crate::subspace::project_opt;
use crate::target::Target;
use tch::{Kind, Tensor};

/// Calls [`crate::control::Control::prepare_times`] on the controls and
/// [`crate::control::Control::clear_times`] on drop.
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

/// [`super::simulate_on`] with given standard normal increments `noise: [steps, n, d]` (row k
/// is ξ_k of step k) instead of fresh draws from torch's generator at every step. The
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
    let adjoint = opts.adjoint;
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
    assert!(
        !adjoint || (mode.grad_through_x() && controls.v.is_none() && zc.is_none() && !keep),
        "the adjoint recording needs a KL mode, no inference control and no subspace"
    );
    let mut adj_steps = Vec::new();
    let mut kept_u = Vec::new();
    let mut kept_c = Vec::new();
    // The kept-controls path on CPU float32 updates X and R in one host pass per step.
    let host_batch =
        zc.is_none() && !opts.record && x0.device() == tch::Device::Cpu && x0.kind() == Kind::Float;
    let fused = keep && host_batch;
    // Evaluations without an inference control update X and R in one host pass per step too.
    let fused_eval = opts.fused_eval && mode.eval() && host_batch && controls.v.is_none();
    // So does the adjoint KL path's forward (no inference control or subspace, asserted).
    let fused_adjoint = adjoint && host_batch;
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
        let kernel = StepKernel::new(method, t, dt, lam);
        let xk = if mode.grad_through_x() && !adjoint {
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
        if adjoint {
            // The tape holds this evaluation; its backward comes from the adjoint.
            assert!(
                u.requires_grad() && u.is_leaf(),
                "adjoint recording: the control did not tape its evaluation at t = {t}"
            );
            u = u.detach();
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
            let (x_next, coef) = fused_lv_update(kernel, &xk, &u, &xi, &mut r);
            x = x_next;
            kept_c.push(coef);
            continue;
        }
        if fused_adjoint {
            let ito_noise = kernel.ito_noise(&xi);
            let x_next = fused_wu_update(kernel, &xk, &u, &xi, &mut r, mode.ito());
            adj_steps.push(super::adjoint::AdjointStep {
                kernel,
                x: xk,
                u,
                ito_noise,
            });
            x = x_next;
            continue;
        }
        if fused_eval {
            x = fused_wu_update(kernel, &xk, &u, &xi, &mut r, mode.ito());
            if method.form == RndForm::TimeReversal {
                r -= method.sde.div_drift_integral(t, t + dt, dim);
            }
            continue;
        }
        // The reference control r_k of the form (kernel module doc).
        let ref_u = match method.form {
            RndForm::Reference { .. } => Some(&xk * kernel.ref_scale()),
            RndForm::TimeReversal => v.as_ref().map(|v| -v),
            RndForm::ExpIntegrator { .. } | RndForm::OuDds { .. } => None,
        };
        let (diff, mean) = match &ref_u {
            Some(r) => (&u - r, (&u + r) * 0.5),
            None => (u.shallow_clone(), &u * 0.5),
        };
        let cost = if mode.lv_cost() {
            rowdot(&diff, &(&w - mean))
        } else {
            rowdot(&diff, &diff) * 0.5
        };
        r += cost * kernel.quad();
        if let Some(div) = div.as_ref() {
            // λ²σ_k(∇·v)Δ_k: the quadratic variation of the behaviour increment
            // (module doc); λ = 1 on-policy and in evaluation.
            r += div * kernel.div_coef();
        }
        if mode.eval() && method.form == RndForm::TimeReversal {
            r -= method.sde.div_drift_integral(t, t + dt, dim);
        }
        let ito_noise = kernel.ito_noise(&xi);
        if mode.ito() {
            r += rowdot(&diff, &ito_noise) * kernel.ito_scale();
        }
        x = kernel.advance(&xk, &w, &ito_noise);
        if adjoint {
            adj_steps.push(super::adjoint::AdjointStep {
                kernel,
                x: xk.shallow_clone(),
                u: u.shallow_clone(),
                ito_noise: ito_noise.shallow_clone(),
            });
        }
        if keep {
            kept_c.push(&ito_noise * kernel.ito_scale());
        }
        if opts.record {
            rec_dw.push(&ito_noise * kernel.ito_scale());
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
    let adjoint = adjoint.then(|| super::adjoint::AdjointRecord {
        steps: adj_steps,
        x_final: x.shallow_clone(),
        ito: mode.ito(),
    });
    SimOutput {
        rnd: r,
        x_final: x,
        recording,
        kept: keep.then_some(KeptControls {
            us: kept_u,
            coefs: kept_c,
        }),
        adjoint,
    }
}

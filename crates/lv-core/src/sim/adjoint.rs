//! The adjoint backward of a KL-family simulation with the control in tape mode: the
//! gradient through the states without an autograd graph of the trajectory.
//!
//! The forward pass ([`super::SimOptions::adjoint`]) runs without a graph, the control taping
//! each evaluation u_k = u(t_k, X_k, ∇log ρ(X_k)). With the step
//! X_{k+1} = d_k X_k + e_k u_k + (noise) (d_k = 1 + a_kΔ_k and e_k = σ_kΔ_k for the Euler
//! forms, the decay and gain of the linear ones, [`super::kernel::StepKernel`]) and the
//! step's part of R,
//!
//! R_k = q_k ½|u_k − r_k|² + [KL-Itô] s_k (u_k − r_k)·ξ̃_k,  r_k = ρ_k X_k,
//!
//! (q_k the quadratic multiplier, s_k ξ̃_k the Itô increment, ρ_k the reference-control scale,
//! 0 outside form 3.3), a loss L(R) with g = ∂L/∂R per trajectory, and the terminal part T(X_N)
//! of R, the adjoint a_k = ∂L/∂X_k runs backwards from a_N = g ∇T(X_N):
//!
//! - c_k = q_k (u_k − r_k) + [KL-Itô] s_k ξ̃_k  (= ∂R_k/∂u_k = −∂R_k/∂r_k);
//! - δ_k = ∂L/∂u_k = g c_k + e_k a_{k+1};
//! - a_k = d_k a_{k+1} − ρ_k g c_k + J_uᵀ δ_k, where J_uᵀ δ_k is the control's input
//!   cotangent ([`crate::Control::tape_vjp`]: the network's and the x terms'), plus
//!   H_{log ρ}(X_k) ∂L/∂score when the target's score stays in the graph of x
//!   ([`crate::Target::score_in_graph`]; otherwise the score is a constant input, as on the
//!   graph path).
//!
//! Each tape_vjp call also adds the parameter gradients of ⟨δ_k, u_k⟩, so after the last
//! one [`crate::Control::finish_tape`] completes ∇_θ L: the gradient of the graph path, with
//! one trunk backward per step and no graph of the trajectory.

use super::kernel::StepKernel;
use super::terminal_term;
use crate::control::Control;
use crate::method::Method;
use crate::target::Target;
use tch::{Kind, Tensor};

/// What the adjoint needs of one step (detached tensors).
pub(super) struct AdjointStep {
    pub(super) kernel: StepKernel,
    /// X_k, `[n, d]`.
    pub(super) x: Tensor,
    /// u_k (the value), `[n, d]`.
    pub(super) u: Tensor,
    /// ξ̃_k = [`StepKernel::ito_noise`], `[n, d]`.
    pub(super) ito_noise: Tensor,
}

/// The record of a KL-family simulation for [`AdjointRecord::backward`] (module docs).
pub struct AdjointRecord {
    pub(super) steps: Vec<AdjointStep>,
    /// X_N, `[n, d]`.
    pub(super) x_final: Tensor,
    /// Whether R has the Itô term (KL-Itô).
    pub(super) ito: bool,
}

impl AdjointRecord {
    /// Runs the adjoint (module docs) for g = ∂L/∂R (`[n]`): `control` (in tape mode since
    /// the simulation) receives the parameter gradients of every step through
    /// [`Control::tape_vjp`]; the caller then calls [`Control::finish_tape`].
    pub fn backward(self, method: &Method, target: &dyn Target, control: &dyn Control, g: &Tensor) {
        let g = g.detach().to_kind(Kind::Float).unsqueeze(1);
        let hvp = target.score_in_graph() && control.needs_target_score();
        let mut a = terminal_grad(method, target, &self.x_final, &g);
        let host = host_f32(&g) && host_f32(&a);
        tch::no_grad(|| {
            for st in self.steps.into_iter().rev() {
                let (decay, gain) = st.kernel.state_derivatives();
                let rs = st.kernel.ref_scale();
                // On CPU float32 the same recursion runs in two host passes around the
                // control's backward.
                let fused = host && [&st.x, &st.u, &st.ito_noise].iter().all(|t| host_f32(t));
                let (delta, gc) = if fused {
                    fused::delta(&st, self.ito, &g, &a)
                } else {
                    let diff = if rs != 0.0 {
                        &st.u - &st.x * rs
                    } else {
                        st.u.shallow_clone()
                    };
                    let mut c = diff * st.kernel.quad();
                    if self.ito {
                        c += &st.ito_noise * st.kernel.ito_scale();
                    }
                    let gc = c * &g;
                    (&gc + &a * gain, gc)
                };
                let vjp = control
                    .tape_vjp(&delta)
                    .expect("adjoint: one taped control evaluation per step");
                let mut next = if fused {
                    fused::next(decay, rs, &a, &vjp.x, &gc)
                } else {
                    let mut next = &a * decay + vjp.x;
                    if rs != 0.0 {
                        next -= &gc * rs;
                    }
                    next
                };
                if hvp {
                    if let Some(ds) = &vjp.score {
                        next += score_vjp(target, &st.x, ds);
                    }
                }
                a = next;
            }
        });
    }
}

/// g ∇T(X_N) of the terminal part T of R (autograd of one target evaluation).
fn terminal_grad(method: &Method, target: &dyn Target, x: &Tensor, g: &Tensor) -> Tensor {
    tch::with_grad(|| {
        let xl = x.detach().set_requires_grad(true);
        let t = terminal_term(method, target, &xl, None);
        let s = (t * g.squeeze_dim(1)).sum(Kind::Float);
        grad_of(&s, &xl)
    })
}

/// (∂score/∂x)ᵀ v = H_{log ρ}(x) v: the target's closed form ([`Target::score_hvp`]) where it
/// has one, else autograd through its score (which stays in the graph of x for the targets
/// that ask for it).
fn score_vjp(target: &dyn Target, x: &Tensor, v: &Tensor) -> Tensor {
    if let Some(h) = target.score_hvp(x, v) {
        return h;
    }
    tch::with_grad(|| {
        let xl = x.detach().set_requires_grad(true);
        let s = (target.score(&xl) * v).sum(Kind::Float);
        grad_of(&s, &xl)
    })
}

fn grad_of(s: &Tensor, x: &Tensor) -> Tensor {
    Tensor::run_backward(&[s], &[x], false, false)
        .into_iter()
        .next()
        .expect("one gradient")
}

/// Whether `t` is a CPU float32 tensor (the fused passes' operands).
fn host_f32(t: &Tensor) -> bool {
    t.device() == tch::Device::Cpu && t.kind() == Kind::Float
}

/// The adjoint step of [`AdjointRecord::backward`] on CPU float32 in host passes: the same
/// terms as the tensor code, each row's in its own loop (float32, rounded like the tensor
/// code's products and sums).
pub(super) mod fused {
    use super::AdjointStep;
    use crate::sim::fused::{host, host_mut};
    use tch::{Kind, Tensor};

    /// (δ_k, g c_k) with c_k = q_k(u_k − rs·X_k) [+ s_k ξ̃_k] and δ_k = g c_k + e_k a_{k+1}.
    pub(super) fn delta(st: &AdjointStep, ito: bool, g: &Tensor, a: &Tensor) -> (Tensor, Tensor) {
        #[cfg(test)]
        STEPS.with(|c| c.set(c.get() + 1));
        let (x, u, xi) = (
            st.x.contiguous(),
            st.u.contiguous(),
            st.ito_noise.contiguous(),
        );
        let (g, a) = (g.contiguous(), a.contiguous());
        let (xs, us, xis, gs, as_) = (host(&x), host(&u), host(&xi), host(&g), host(&a));
        let n = gs.len();
        let d = us.len() / n.max(1);
        let f = |v: f64| v as f32;
        let (_, gain) = st.kernel.state_derivatives();
        let (rs, quad, gain) = (f(st.kernel.ref_scale()), f(st.kernel.quad()), f(gain));
        let ito_scale = f(st.kernel.ito_scale());
        let delta = Tensor::empty([n as i64, d as i64], (Kind::Float, tch::Device::Cpu));
        let gc = Tensor::empty([n as i64, d as i64], (Kind::Float, tch::Device::Cpu));
        let (ds, gcs) = (host_mut(&delta), host_mut(&gc));
        for (i, &gi) in gs.iter().enumerate() {
            for j in i * d..(i + 1) * d {
                let diff = if rs != 0.0 { us[j] - xs[j] * rs } else { us[j] };
                let mut c = diff * quad;
                if ito {
                    c += xis[j] * ito_scale;
                }
                let v = c * gi;
                gcs[j] = v;
                ds[j] = v + as_[j] * gain;
            }
        }
        (delta, gc)
    }

    #[cfg(test)]
    thread_local! {
        /// Calls of [`delta`] on this thread (tests check that the host passes are taken).
        pub(in crate::sim) static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// a_k = d_k a_{k+1} + J_uᵀδ_k − rs·g c_k (the H·∂L/∂score term is added by the caller).
    pub(super) fn next(decay: f64, rs: f64, a: &Tensor, jx: &Tensor, gc: &Tensor) -> Tensor {
        let (a, jx) = (a.contiguous(), jx.contiguous());
        let (as_, js, gcs) = (host(&a), host(&jx), host(gc));
        let (decay, rs) = (decay as f32, rs as f32);
        let out = Tensor::empty(a.size(), (Kind::Float, tch::Device::Cpu));
        let os = host_mut(&out);
        for (((o, &av), &jv), &gv) in os.iter_mut().zip(as_).zip(js).zip(gcs) {
            let v = av * decay + jv;
            *o = if rs != 0.0 { v - gv * rs } else { v };
        }
        out
    }
}
